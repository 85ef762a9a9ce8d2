# Shared settings and helpers for the LlamaGen + TokLIP recipes (paper Tables 4 and 7). Source it;
# override by exporting first.
#   LLAMAGEN_ROOT  a LlamaGen checkout, patched once with: toklip-patch llamagen --target "$LLAMAGEN_ROOT"
#   IMAGENET_TRAIN ImageNet-1k train folder (class sub-folders)
#   WORK           where codes, runs (checkpoints, samples, FID records) go
#   TOKLIP_HOME    folder holding TokLIP_S_256.pt / TokLIP_L_384.pt (else they are fetched from the Hub)
#                  and vq_ds16_t2i.pt (VQ_CKPT, the baseline rows' decoder)
#   NPROC          GPUs per node
#   CKPT_EPOCHS    epochs between checkpoints (default 10; a run always saves at its last step)
#   FID_REFERENCE  the evaluator's reference batch (default $WORK/VIRTUAL_imagenet256_labeled.npz)
#   PYTHON         the interpreter for LlamaGen's evaluator (its TensorFlow environment; default python)
#   DRY_RUN=1      print each command instead of running it
: "${LLAMAGEN_ROOT:?set LLAMAGEN_ROOT to a LlamaGen checkout}"
: "${IMAGENET_TRAIN:=/data/imagenet/train}"
: "${WORK:=$PWD/toklip_llamagen}"
: "${TOKLIP_HOME:=$HOME/.cache/toklip}"
: "${NPROC:=8}"
: "${CKPT_EPOCHS:=10}"
: "${VQ_CKPT:=$TOKLIP_HOME/vq_ds16_t2i.pt}"
: "${FID_REFERENCE:=$WORK/VIRTUAL_imagenet256_labeled.npz}"
: "${PYTHON:=python}"
export LLAMAGEN_ROOT IMAGENET_TRAIN WORK TOKLIP_HOME NPROC CKPT_EPOCHS VQ_CKPT FID_REFERENCE PYTHON
export PYTHONPATH="$LLAMAGEN_ROOT${PYTHONPATH:+:$PYTHONPATH}"  # LlamaGen's scripts import from its root

# 256 px -> 16x16 codes -> TokLIP-S; 384 px -> 24x24 codes -> TokLIP-L. The fused GPT picks the
# same TokLIP from block_size; TOKLIP_CHECKPOINT / TOKLIP_MODEL override it, TOKLIP_FUSION picks
# concat (default, the paper's choice), sum or weighted_sum.
toklip_ckpt() { case "$1" in 256) echo "$TOKLIP_HOME/TokLIP_S_256.pt" ;; 384) echo "$TOKLIP_HOME/TokLIP_L_384.pt" ;;
  *) echo "image size must be 256 or 384, got $1" >&2; return 1 ;; esac; }
# LlamaGen's dataset needs "flip" in the code path (it holds the flipped copies too)
code_path() { echo "$WORK/imagenet_code_c2i_flip_ten_crop_$1"; }

# Steps per epoch of LlamaGen's train_c2i.py: its dataset has 1,281,167 items (ImageNet train) and
# the loader drops the last incomplete batch, so an epoch is floor(1281167 / 256) = 5004 steps at
# the default global batch 256, for any NPROC that divides 256.
GLOBAL_BATCH=256
STEPS_PER_EPOCH=$(( 1281167 / GLOBAL_BATCH ))

# A row's folder under $WORK/runs: LlamaGen's results and cloud dirs, its samples and FID record.
run_dir() { echo "$WORK/runs/$1"; }
is_toklip() { [[ "$1" == *-toklip ]]; }

# The checkpoint a run of EPOCHS epochs ends with (LlamaGen names it by its step), if it exists.
final_checkpoint() {  # RUN EPOCHS
  { ls "$(run_dir "$1")"/results/*/checkpoints/"$(printf '%07d' $(( $2 * STEPS_PER_EPOCH )))".pt 2>/dev/null || true; } | tail -1
}
# The checkpoint with the most steps so far (to resume from), if any.
latest_checkpoint() {  # RUN
  { ls "$(run_dir "$1")"/results/*/checkpoints/*.pt 2>/dev/null || true; } | awk -F/ '{print $NF, $0}' | sort | tail -1 | cut -d' ' -f2
}

# Run a command, or print it (shell-quoted, one line) with DRY_RUN=1.
run() {
  if [[ "${DRY_RUN:-0}" == 1 ]]; then printf '%q ' "$@"; echo; else "$@"; fi
}
