#!/usr/bin/env bash
# Extract ImageNet VQ-16 codes with TokLIP's VQ (identical to VQ-16 codes), ten-crop + flip as LlamaGen.
# The TokLIP rows and the VQ-16 baseline rows of a table train on the same codes.
#   bash configs/llamagen/extract_codes.sh 256|384
set -euo pipefail
source "$(dirname "$0")/env.sh"
SIZE=${1:?image size: 256 or 384}
cd "$LLAMAGEN_ROOT"
run torchrun --nnodes=1 --nproc_per_node="$NPROC" --master_port=12335 autoregressive/train/extract_codes_c2i.py \
  --vq-model toklip --vq-ckpt "$(toklip_ckpt "$SIZE")" \
  --data-path "$IMAGENET_TRAIN" --code-path "$(code_path "$SIZE")" \
  --ten-crop --crop-range 1.1 --image-size "$SIZE"
