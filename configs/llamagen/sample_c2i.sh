#!/usr/bin/env bash
# Sample 50k images for FID (cfg 2.5, top-k 0, top-p 1.0, temperature 1.0), evaluated at 256 px.
#   bash configs/llamagen/sample_c2i.sh GPT-B|GPT-L 256|384 /path/to/checkpoint.pt
# Writes $WORK/samples/<run>.npz for fid.sh.
set -euo pipefail
source "$(dirname "$0")/env.sh"
MODEL=${1:?GPT-B or GPT-L}; SIZE=${2:?image size: 256 or 384}; CKPT=${3:?GPT checkpoint}; shift 3
export TOKLIP_CHECKPOINT="${TOKLIP_CHECKPOINT:-$(toklip_ckpt "$SIZE")}"
cd "$LLAMAGEN_ROOT"
torchrun --nnodes=1 --nproc_per_node="$NPROC" --master_port=12346 autoregressive/sample/sample_c2i_ddp.py \
  --vq-model toklip --vq-ckpt "$(toklip_ckpt "$SIZE")" \
  --gpt-model "$MODEL-toklip" --gpt-ckpt "$CKPT" --image-size "$SIZE" --image-size-eval 256 \
  --cfg-scale 2.5 --top-k 0 --top-p 1.0 --temperature 1.0 --num-fid-samples 50000 \
  --sample-dir "$WORK/samples" "$@"
