#!/usr/bin/env bash
# Train a class-conditional fused GPT (code embedding + TokLIP feature, concat fusion) on the codes.
#   bash configs/llamagen/train_c2i.sh GPT-B|GPT-L 256|384 [extra train_c2i.py flags]
# Hyper-parameters are LlamaGen's train_c2i.py defaults (300 epochs, global batch 256, lr 1e-4,
# AdamW wd 0.05, betas 0.9/0.95, EMA off); multi-node: set nnodes/node_rank/master_addr as LlamaGen's
# scripts/autoregressive/train_c2i.sh does.
set -euo pipefail
source "$(dirname "$0")/env.sh"
MODEL=${1:?GPT-B or GPT-L}; SIZE=${2:?image size: 256 or 384}; shift 2
export TOKLIP_CHECKPOINT="${TOKLIP_CHECKPOINT:-$(toklip_ckpt "$SIZE")}"
cd "$LLAMAGEN_ROOT"
torchrun --nnodes=1 --nproc_per_node="$NPROC" --master_port=12345 autoregressive/train/train_c2i.py \
  --gpt-model "$MODEL-toklip" --image-size "$SIZE" --code-path "$(code_path "$SIZE")" \
  --results-dir "$WORK/results" --cloud-save-path "$WORK/cloud" "$@"
