#!/usr/bin/env bash
# The paper's Table 4 (LlamaGen class-conditional ImageNet generation with TokLIP): each row beside
# its VQ-16 baseline (LlamaGen's plain GPT on the same codes), concat fusion, 50,000 samples, FID
# with LlamaGen's evaluator against VIRTUAL_imagenet256_labeled.npz:
#   GPT-B 50 epochs, GPT-B 300 epochs, GPT-L 50 epochs.
#   bash configs/llamagen/table4.sh [SIZE]     # default 256 (TokLIP-S codes); 384 uses TokLIP-L
# Stages: extract_codes.sh once, then row.sh per row (train_c2i.sh, sample_c2i.sh, fid.sh).
# Settings: env.sh (DRY_RUN=1 prints the commands).
set -euo pipefail
HERE="$(cd "$(dirname "$0")" && pwd)"
source "$HERE/env.sh"
SIZE=${1:-256}
[[ -d "$(code_path "$SIZE")" ]] || bash "$HERE/extract_codes.sh" "$SIZE"
for ROW in "GPT-B 50" "GPT-B 300" "GPT-L 50"; do
  read -r MODEL EPOCHS <<< "$ROW"
  bash "$HERE/row.sh" "$MODEL" "$SIZE" "$EPOCHS" 50000
  TOKLIP_FUSION=concat bash "$HERE/row.sh" "$MODEL-toklip" "$SIZE" "$EPOCHS" 50000
done
