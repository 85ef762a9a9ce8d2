#!/usr/bin/env bash
# The paper's Table 7 (fusion ablation): GPT-B at 384 px (TokLIP-L codes), 50 epochs, FID over
# 10,000 samples with LlamaGen's evaluator; the VQ-16 baseline and the three fusions of the code
# embedding with TokLIP's feature: concat, sum, weighted_sum.
#   bash configs/llamagen/table7.sh
# Settings: env.sh (DRY_RUN=1 prints the commands).
set -euo pipefail
HERE="$(cd "$(dirname "$0")" && pwd)"
source "$HERE/env.sh"
[[ -d "$(code_path 384)" ]] || bash "$HERE/extract_codes.sh" 384
bash "$HERE/row.sh" GPT-B 384 50 10000
for FUSION in concat sum weighted_sum; do
  TOKLIP_FUSION=$FUSION bash "$HERE/row.sh" GPT-B-toklip 384 50 10000
done
