#!/usr/bin/env bash
# The unified model (issue 14): stage 1 (unified_stage1.sh) then stage 2 (unified_stage2.sh).
#   bash configs/llava/unified.sh [RECIPE]     # default: TokLIP-L/384 + Qwen2.5-7B-Instruct
# Settings: unified_common.sh, common.sh (DRY_RUN=1 prints).
set -euo pipefail
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
RECIPE="${1:-$HERE/toklip-l_qwen2.5-7b.sh}"
bash "$HERE/unified_stage1.sh" "$RECIPE"
bash "$HERE/unified_stage2.sh" "$RECIPE"
