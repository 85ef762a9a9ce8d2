#!/usr/bin/env bash
# Table 1, stage 1 (LLaVA-1.5 recipe): train the 2-layer MLP projector on LLaVA-Pretrain-558K
# (LCS-558K); LLM and tower frozen. Global batch 256, lr 1e-3, 1 epoch, DeepSpeed ZeRO-2.
#   bash configs/llava/pretrain.sh configs/llava/toklip-l_qwen2.5-7b.sh
# Needs: pip install --no-deps llava-torch==1.2.2.post1; pip install "toklip-plugin[llava]" deepspeed;
# toklip-patch llava. Settings: see common.sh.
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"

launch \
  --model_name_or_path "$LLM" \
  --deepspeed "$HERE/zero2.json" \
  --version plain \
  --data_path "$DATA_ROOT/LLaVA-Pretrain/blip_laion_cc_sbu_558k.json" \
  --image_folder "$DATA_ROOT/LLaVA-Pretrain/images" \
  --tune_mm_mlp_adapter True \
  --per_device_train_batch_size 32 \
  --gradient_accumulation_steps "$(accumulation 256 32)" \
  --learning_rate 1e-3 \
  --save_steps 24000 \
  --output_dir "$OUTPUT_ROOT/$RUN_NAME-pretrain"
