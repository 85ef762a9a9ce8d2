#!/usr/bin/env bash
# The paper's Table 4 rows (LlamaGen c2i with TokLIP): GPT-B and GPT-L, at 256 and 384 px, one after
# another: extract codes, train, sample, FID. Each stage is also runnable on its own (see the scripts).
#   bash configs/llamagen/table4.sh [GPT-B|GPT-L] [256|384]   # default: all four rows
set -euo pipefail
HERE="$(cd "$(dirname "$0")" && pwd)"
source "$HERE/env.sh"
for SIZE in ${2:-256 384}; do
  [ -d "$(code_path "$SIZE")" ] || bash "$HERE/extract_codes.sh" "$SIZE"
  for MODEL in ${1:-GPT-B GPT-L}; do
    bash "$HERE/train_c2i.sh" "$MODEL" "$SIZE"
    CKPT=$(ls -t "$WORK"/results/*-"$MODEL-toklip"/checkpoints/*.pt | head -1)
    bash "$HERE/sample_c2i.sh" "$MODEL" "$SIZE" "$CKPT"
    bash "$HERE/fid.sh" "$(ls -t "$WORK"/samples/"$MODEL-toklip"-*.npz | head -1)"
  done
done
