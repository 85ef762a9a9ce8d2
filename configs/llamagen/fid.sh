#!/usr/bin/env bash
# FID / IS / precision / recall with LlamaGen's copy of OpenAI's evaluator (TensorFlow; see
# $LLAMAGEN_ROOT/evaluations/c2i/README.md for its install and the reference batch download).
#   bash configs/llamagen/fid.sh $WORK/samples/<run>.npz [VIRTUAL_imagenet256_labeled.npz]
set -euo pipefail
source "$(dirname "$0")/env.sh"
SAMPLES=${1:?samples .npz from sample_c2i.sh}; REFERENCE=${2:-$WORK/VIRTUAL_imagenet256_labeled.npz}
cd "$LLAMAGEN_ROOT"
python evaluations/c2i/evaluator.py "$REFERENCE" "$SAMPLES"
