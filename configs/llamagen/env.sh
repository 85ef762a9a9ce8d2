# Shared settings for the LlamaGen + TokLIP recipes (paper Table 4). Source it; override by exporting first.
#   LLAMAGEN_ROOT  a LlamaGen checkout, patched once with: toklip-patch llamagen --target "$LLAMAGEN_ROOT"
#   IMAGENET_TRAIN ImageNet-1k train folder (class sub-folders)
#   WORK           where codes, checkpoints and samples go
#   TOKLIP_HOME    folder holding TokLIP_S_256.pt / TokLIP_L_384.pt (else they are fetched from the Hub)
#   NPROC          GPUs per node
: "${LLAMAGEN_ROOT:?set LLAMAGEN_ROOT to a LlamaGen checkout}"
: "${IMAGENET_TRAIN:=/data/imagenet/train}"
: "${WORK:=$PWD/toklip_llamagen}"
: "${TOKLIP_HOME:=$HOME/.cache/toklip}"
: "${NPROC:=8}"
export LLAMAGEN_ROOT IMAGENET_TRAIN WORK TOKLIP_HOME NPROC
export PYTHONPATH="$LLAMAGEN_ROOT${PYTHONPATH:+:$PYTHONPATH}"  # LlamaGen's scripts import from its root

# 256 px -> 16x16 codes -> TokLIP-S; 384 px -> 24x24 codes -> TokLIP-L. The fused GPT picks the
# same TokLIP from block_size; TOKLIP_CHECKPOINT / TOKLIP_MODEL override it, TOKLIP_FUSION picks
# concat (default, the paper's choice), sum or weighted_sum.
toklip_ckpt() { case "$1" in 256) echo "$TOKLIP_HOME/TokLIP_S_256.pt" ;; 384) echo "$TOKLIP_HOME/TokLIP_L_384.pt" ;;
  *) echo "image size must be 256 or 384, got $1" >&2; return 1 ;; esac; }
# LlamaGen's dataset needs "flip" in the code path (it holds the flipped copies too)
code_path() { echo "$WORK/imagenet_code_c2i_flip_ten_crop_$1"; }
