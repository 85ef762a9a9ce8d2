#!/usr/bin/env bash
# One table row: train a GPT, sample from its final checkpoint, FID with LlamaGen's evaluator.
#   bash configs/llamagen/row.sh GPT SIZE EPOCHS NUM_SAMPLES [RUN]
# GPT: GPT-B-toklip / GPT-L-toklip (fused; TOKLIP_FUSION, default concat) or GPT-B / GPT-L (the
# VQ-16 baseline). RUN defaults to GPT_SIZEpx_EPOCHSep[_FUSION]. Each step is skipped when its
# output exists (final checkpoint, samples .npz, .fid.json), so rerunning a table resumes it.
set -euo pipefail
HERE="$(cd "$(dirname "$0")" && pwd)"
source "$HERE/env.sh"
GPT=${1:?GPT model}; SIZE=${2:?image size}; EPOCHS=${3:?epochs}; NUM=${4:?number of samples}
SUFFIX=""
if is_toklip "$GPT"; then export TOKLIP_FUSION="${TOKLIP_FUSION:-concat}"; SUFFIX="_$TOKLIP_FUSION"; fi
RUN=${5:-${GPT}_${SIZE}px_${EPOCHS}ep$SUFFIX}
DIR=$(run_dir "$RUN")

CKPT=$(final_checkpoint "$RUN" "$EPOCHS")
if [[ -z "$CKPT" ]]; then
  bash "$HERE/train_c2i.sh" "$GPT" "$SIZE" "$EPOCHS" "$RUN"
  CKPT=$(final_checkpoint "$RUN" "$EPOCHS")
  # a dry run trains nothing: name the checkpoint LlamaGen's first experiment folder would hold
  [[ -n "$CKPT" || "${DRY_RUN:-0}" != 1 ]] || CKPT="$DIR/results/000-$GPT/checkpoints/$(printf '%07d' $(( EPOCHS * STEPS_PER_EPOCH ))).pt"
  [[ -n "$CKPT" ]] || { echo "no checkpoint of step $(( EPOCHS * STEPS_PER_EPOCH )) in $DIR/results" >&2; exit 1; }
fi

SAMPLES=$(ls -t "$DIR"/samples/*.npz 2>/dev/null | head -1 || true)
if [[ -z "$SAMPLES" ]]; then
  bash "$HERE/sample_c2i.sh" "$GPT" "$SIZE" "$CKPT" "$RUN" "$NUM"
  SAMPLES=$(ls -t "$DIR"/samples/*.npz 2>/dev/null | head -1 || true)
  [[ -n "$SAMPLES" || "${DRY_RUN:-0}" != 1 ]] || SAMPLES="$DIR/samples/SAMPLES.npz"
  [[ -n "$SAMPLES" ]] || { echo "sample_c2i_ddp.py wrote no .npz in $DIR/samples" >&2; exit 1; }
fi
[[ -f "${SAMPLES%.npz}.fid.json" ]] || bash "$HERE/fid.sh" "$SAMPLES"
