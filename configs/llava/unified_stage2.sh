#!/usr/bin/env bash
# Unified model, stage 2: everything but the tower (LLM, projector, generation modules) on LLaVA-v1.5's
# instructions mixed with text-to-image samples (UNIFIED_MIX_DATA), from the stage-1 checkpoint.
# LLaVA-1.5's instruction-tuning settings: global batch 128, lr 2e-5, 1 epoch (ZeRO-2, see unified_common.sh).
#   bash configs/llava/unified_stage2.sh configs/llava/toklip-l_qwen2.5-7b.sh
# -> $OUTPUT_ROOT/$RUN_NAME-unified. Settings: unified_common.sh, common.sh.
source "$(dirname "${BASH_SOURCE[0]}")/unified_common.sh"

launch \
  --model_name_or_path "$UNIFIED_STAGE1" \
  "${UNIFIED_ARGS[@]}" \
  --data_path "$UNIFIED_MIX_DATA" \
  --image_folder "$DATA_ROOT" \
  --group_by_modality_length True \
  --per_device_train_batch_size 16 \
  --gradient_accumulation_steps "$(accumulation 128 16)" \
  --learning_rate 2e-5 \
  --save_steps 50000 \
  --output_dir "$OUTPUT_ROOT/$RUN_NAME-unified"
