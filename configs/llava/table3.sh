#!/usr/bin/env bash
# The paper's Table 3 recipe: stage 1 (caption_pretrain.sh: projector + LLM on LLaVA-OneVision's
# detailed captions) then stage 2 (caption_finetune.sh: projector + LLM on 665K).
#   bash configs/llava/table3.sh [RECIPE]     # default: TokLIP-L/384 + Qwen2.5-7B-Instruct
# Settings: common.sh (CAPTION_DATA, CAPTION_IMAGES; DRY_RUN=1 prints).
set -euo pipefail
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
RECIPE="${1:-$HERE/toklip-l_qwen2.5-7b.sh}"
bash "$HERE/caption_pretrain.sh" "$RECIPE"
bash "$HERE/caption_finetune.sh" "$RECIPE"
