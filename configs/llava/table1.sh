#!/usr/bin/env bash
# The paper's Table 1 rows on LLaVA-v1.5 data, one after another: for each recipe, stage 1
# (pretrain.sh: projector on LCS-558K) then stage 2 (finetune.sh: projector + LLM on 665K).
#   bash configs/llava/table1.sh                      # all four rows below
#   bash configs/llava/table1.sh configs/llava/toklip-s_qwen2.5-7b.sh   # one row
# Rows: TokLIP-S/256 and TokLIP-L/384 with Qwen2.5-7B-Instruct, and the VQGAN baseline rows
# (the plain VQ-16 tower, same VQ, at 256 and 384 px). Settings: common.sh (DRY_RUN=1 prints).
set -euo pipefail
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
ROWS=(toklip-s_qwen2.5-7b.sh toklip-l_qwen2.5-7b.sh vq-16_qwen2.5-7b.sh vq-16-384_qwen2.5-7b.sh)
if (( $# )); then RECIPES=("$@"); else RECIPES=("${ROWS[@]/#/$HERE/}"); fi
for recipe in "${RECIPES[@]}"; do
  bash "$HERE/pretrain.sh" "$recipe"
  bash "$HERE/finetune.sh" "$recipe"
done
