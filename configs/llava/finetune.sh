#!/usr/bin/env bash
# Stage 2 (LLaVA-1.5 recipe): instruction-tune projector + LLM on LLaVA-v1.5-mix-665K with the
# stage-1 projector; TokLIP tower frozen. Global batch 128, lr 2e-5, 1 epoch, DeepSpeed ZeRO-3.
#   bash configs/llava/finetune.sh configs/llava/toklip-l_qwen2.5-7b.sh
# The output directory's name contains "llava", which LLaVA's loader requires. Settings: common.sh.
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"

launch \
  --deepspeed "$HERE/zero3.json" \
  --version "$CONV_VERSION" \
  --data_path "$DATA_ROOT/llava_v1_5_mix665k.json" \
  --image_folder "$DATA_ROOT" \
  --pretrain_mm_mlp_adapter "$OUTPUT_ROOT/$RUN_NAME-pretrain/mm_projector.bin" \
  --image_aspect_ratio pad \
  --group_by_modality_length True \
  --per_device_train_batch_size 16 \
  --gradient_accumulation_steps "$(accumulation 128 16)" \
  --learning_rate 2e-5 \
  --save_steps 50000 \
  --output_dir "$OUTPUT_ROOT/$RUN_NAME"
