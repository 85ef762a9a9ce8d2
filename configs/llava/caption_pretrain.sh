#!/usr/bin/env bash
# Table 3, stage 1: train the MLP projector *and* the LLM on LLaVA-OneVision's detailed captions
# (CAPTION_DATA, README.md), from the base LLM with a new projector; tower frozen. The paper
# names the data and what trains; the rest is LLaVA-1.5's full-tuning setting (FULL_TUNING_ARGS
# in common.sh: global batch 128, lr 2e-5, 1 epoch, ZeRO-3, chat template, pad to square).
#   bash configs/llava/caption_pretrain.sh configs/llava/toklip-l_qwen2.5-7b.sh
# -> $OUTPUT_ROOT/$RUN_NAME-caption-stage1, a full LLaVA checkpoint that caption_finetune.sh starts from.
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"

launch \
  --model_name_or_path "$LLM" \
  "${FULL_TUNING_ARGS[@]}" \
  --data_path "$CAPTION_DATA" \
  --image_folder "$CAPTION_IMAGES" \
  --output_dir "$OUTPUT_ROOT/$RUN_NAME-caption-stage1"
