# Shared by the unified-model stage scripts (unified_stage1.sh, unified_stage2.sh): common.sh, plus
#   UNIFIED_CAPTION_DATA   stage 1: captions both ways, LLaVA-format JSON (README.md says how to build it)
#   UNIFIED_CAPTION_IMAGES its image folder (default: LCS-558K's images)
#   UNIFIED_MIX_DATA       stage 2: instructions + text-to-image samples, images relative to DATA_ROOT
#   GEN_WEIGHT             loss = text CE + GEN_WEIGHT x image-code CE (default 1.0)
#   GEN_PROMPT_DROPOUT     caption dropout for classifier-free guidance (default 0.1)
#   GEN_FUSION             how a code's embedding and its TokLIP feature fuse (default concat)
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"

UNIFIED_CAPTION_DATA="${UNIFIED_CAPTION_DATA:-$DATA_ROOT/unified/captions_both_ways.json}"
UNIFIED_CAPTION_IMAGES="${UNIFIED_CAPTION_IMAGES:-$DATA_ROOT/LLaVA-Pretrain/images}"
UNIFIED_MIX_DATA="${UNIFIED_MIX_DATA:-$DATA_ROOT/unified/mix665k_text_to_image.json}"
UNIFIED_BASE="$OUTPUT_ROOT/$RUN_NAME-unified-base"   # the LLM with a unified config.json (links to its files)
UNIFIED_STAGE1="$OUTPUT_ROOT/$RUN_NAME-unified-stage1"

# every unified run: the template that builds generation samples, ZeRO-2 (the TokLIP feedback encoder
# reads the tower's weights outside the tower's forward, the only place that gathers them under ZeRO-3)
UNIFIED_ARGS=(--version qwen_2_unified --deepspeed "$HERE/zero2.json" --image_aspect_ratio pad)

# write $UNIFIED_BASE from $LLM (printed only with DRY_RUN=1)
convert_base() {
  local cmd=(python -m toklip_plugin.integrations.llava.unified_base "$LLM" "$UNIFIED_BASE"
             --gen-weight "${GEN_WEIGHT:-1.0}" --gen-prompt-dropout "${GEN_PROMPT_DROPOUT:-0.1}"
             --gen-fusion "${GEN_FUSION:-concat}")
  if [[ "${DRY_RUN:-0}" == 1 ]]; then
    printf '%q ' "${cmd[@]}"; echo
  else
    "${cmd[@]}"
  fi
}
