#!/usr/bin/env bash
# Table 1, stage 2 (LLaVA-1.5 recipe): instruction-tune projector + LLM on LLaVA-v1.5-mix-665K,
# starting from the base LLM and the stage-1 projector; tower frozen. Global batch 128, lr 2e-5,
# 1 epoch, DeepSpeed ZeRO-3 (FULL_TUNING_ARGS in common.sh).
#   bash configs/llava/finetune.sh configs/llava/toklip-l_qwen2.5-7b.sh
# The output directory's name contains "llava", which LLaVA's loader requires. Settings: common.sh.
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"

launch \
  --model_name_or_path "$LLM" \
  "${FULL_TUNING_ARGS[@]}" \
  "${INSTRUCT_DATA_ARGS[@]}" \
  --pretrain_mm_mlp_adapter "$OUTPUT_ROOT/$RUN_NAME-pretrain/mm_projector.bin" \
  --output_dir "$OUTPUT_ROOT/$RUN_NAME"
