#!/usr/bin/env bash
# Train one class-conditional GPT on the extracted codes with LlamaGen's train_c2i.py.
#   bash configs/llamagen/train_c2i.sh GPT SIZE EPOCHS RUN [extra train_c2i.py flags]
# GPT: GPT-B-toklip, GPT-L-toklip, ... (fused with TokLIP; TOKLIP_FUSION picks the fusion, default
# concat) or LlamaGen's plain GPT-B, GPT-L, ... (the VQ-16 baseline rows). Checkpoints go to
# $WORK/runs/RUN/results (and LlamaGen's required cloud copy to $WORK/runs/RUN/cloud), every
# CKPT_EPOCHS epochs; the last one is the run's final step. A run with checkpoints resumes from
# its latest. Every other hyper-parameter is LlamaGen's default (global batch 256, lr 1e-4, AdamW
# wd 0.05, betas 0.9/0.95, grad clip 1.0, bf16, class dropout 0.1, EMA off); the paper states
# only the epochs. Multi-node: set nnodes/node_rank/master_addr as LlamaGen's own script does.
set -euo pipefail
source "$(dirname "$0")/env.sh"
GPT=${1:?GPT-B-toklip, GPT-L-toklip, GPT-B or GPT-L}; SIZE=${2:?image size: 256 or 384}
EPOCHS=${3:?epochs}; RUN=${4:?run name}; shift 4
EVERY=$(( EPOCHS % CKPT_EPOCHS == 0 ? CKPT_EPOCHS : EPOCHS ))
ENV=()
if is_toklip "$GPT"; then
  ENV=(TOKLIP_CHECKPOINT="${TOKLIP_CHECKPOINT:-$(toklip_ckpt "$SIZE")}" TOKLIP_FUSION="${TOKLIP_FUSION:-concat}")
fi
RESUME=()
LATEST=$(latest_checkpoint "$RUN")
if [[ -n "$LATEST" ]]; then RESUME=(--gpt-ckpt "$LATEST"); fi
cd "$LLAMAGEN_ROOT"
run env "${ENV[@]}" torchrun --nnodes=1 --nproc_per_node="$NPROC" --master_port=12345 autoregressive/train/train_c2i.py \
  --gpt-model "$GPT" --image-size "$SIZE" --code-path "$(code_path "$SIZE")" \
  --epochs "$EPOCHS" --global-batch-size "$GLOBAL_BATCH" --ckpt-every $(( EVERY * STEPS_PER_EPOCH )) \
  --results-dir "$(run_dir "$RUN")/results" --cloud-save-path "$(run_dir "$RUN")/cloud" "${RESUME[@]}" "$@"
