#!/usr/bin/env bash
# Sample with LlamaGen's sample_c2i_ddp.py: PNGs, then the .npz LlamaGen's ADM evaluator reads
# (arr_0: uint8 [N, 256, 256, 3]; 384 px samples are resized to 256 as LlamaGen evaluates them).
#   bash configs/llamagen/sample_c2i.sh GPT SIZE CKPT RUN [NUM_SAMPLES] [extra sample_c2i_ddp.py flags]
# NUM_SAMPLES: 50000 (default, Table 4) or 10000 (Table 7). cfg 2.5, top-k 0 (all codes), top-p 1.0,
# temperature 1.0. Fused GPTs decode with TokLIP's VQ and read TOKLIP_FUSION (it must be the one
# they were trained with); plain GPTs decode with LlamaGen's VQ-16 from VQ_CKPT (the same VQ).
# Writes $WORK/runs/RUN/samples/<LlamaGen's folder name>.npz for fid.sh.
set -euo pipefail
source "$(dirname "$0")/env.sh"
GPT=${1:?GPT model}; SIZE=${2:?image size: 256 or 384}; CKPT=${3:?GPT checkpoint}; RUN=${4:?run name}
NUM=${5:-50000}; shift $(( $# < 5 ? $# : 5 ))
if is_toklip "$GPT"; then
  ENV=(TOKLIP_CHECKPOINT="${TOKLIP_CHECKPOINT:-$(toklip_ckpt "$SIZE")}" TOKLIP_FUSION="${TOKLIP_FUSION:-concat}")
  VQ=(--vq-model toklip --vq-ckpt "$(toklip_ckpt "$SIZE")")
else
  ENV=()
  VQ=(--vq-model VQ-16 --vq-ckpt "$VQ_CKPT")
fi
cd "$LLAMAGEN_ROOT"
run env "${ENV[@]}" torchrun --nnodes=1 --nproc_per_node="$NPROC" --master_port=12346 autoregressive/sample/sample_c2i_ddp.py \
  "${VQ[@]}" --gpt-model "$GPT" --gpt-ckpt "$CKPT" --image-size "$SIZE" --image-size-eval 256 \
  --cfg-scale 2.5 --top-k 0 --top-p 1.0 --temperature 1.0 --num-fid-samples "$NUM" \
  --sample-dir "$(run_dir "$RUN")/samples" "$@"
