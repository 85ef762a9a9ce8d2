#!/usr/bin/env bash
# Table 3, stage 2: instruction-tune projector + LLM on LLaVA-v1.5-mix-665K, starting from the
# stage-1 checkpoint of caption_pretrain.sh (its LLM and projector); tower frozen. Same settings
# as finetune.sh (FULL_TUNING_ARGS in common.sh).
#   bash configs/llava/caption_finetune.sh configs/llava/toklip-l_qwen2.5-7b.sh
# -> $OUTPUT_ROOT/$RUN_NAME-caption
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"

launch \
  --model_name_or_path "$OUTPUT_ROOT/$RUN_NAME-caption-stage1" \
  "${FULL_TUNING_ARGS[@]}" \
  "${INSTRUCT_DATA_ARGS[@]}" \
  --output_dir "$OUTPUT_ROOT/$RUN_NAME-caption"
