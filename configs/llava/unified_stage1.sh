#!/usr/bin/env bash
# Unified model (reads and writes images in TokLIP tokens), stage 1: the projector and the generation
# modules (image head, code embedding, fusion) on LCS-558K captions both ways (image -> caption and
# caption -> image); the whole language model (text head included) and the tower frozen
# (--freeze_backbone True; the whole model is saved, since LLaVA's projector-only save would drop the
# image head). LLaVA-1.5's stage-1 settings: global batch 256, lr 1e-3, 1 epoch.
#   bash configs/llava/unified_stage1.sh configs/llava/toklip-l_qwen2.5-7b.sh
# -> $OUTPUT_ROOT/$RUN_NAME-unified-base (the LLM as a unified base) and $RUN_NAME-unified-stage1.
# Settings: unified_common.sh, common.sh.
source "$(dirname "${BASH_SOURCE[0]}")/unified_common.sh"

convert_base
launch \
  --model_name_or_path "$UNIFIED_BASE" \
  "${UNIFIED_ARGS[@]}" \
  --freeze_backbone True \
  --data_path "$UNIFIED_CAPTION_DATA" \
  --image_folder "$UNIFIED_CAPTION_IMAGES" \
  --per_device_train_batch_size 32 \
  --gradient_accumulation_steps "$(accumulation 256 32)" \
  --learning_rate 1e-3 \
  --save_steps 24000 \
  --output_dir "$UNIFIED_STAGE1"
