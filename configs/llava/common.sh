# Shared by the stage scripts (pretrain.sh, finetune.sh, caption_pretrain.sh, caption_finetune.sh):
# settings, the flags every stage passes, the instruction-tuning stage, and the launcher.
# Override any of these in the environment:
#   DATA_ROOT      LLaVA's data layout (default ./playground/data, as in LLaVA's README)
#   CAPTION_DATA   Table 3 stage 1: LLaVA-format JSON of the detailed captions (README.md says how to build it)
#   CAPTION_IMAGES its image folder (default: the JSON's folder)
#   OUTPUT_ROOT    where checkpoints go (default ./checkpoints)
#   NUM_GPUS       GPUs on this node (default: all that nvidia-smi lists)
#   SELECT_FEATURE patch (the tower's tokens, default) or, for TokLIP towers, semantic_vq (+ VQ code embeddings)
#   DRY_RUN=1      print the command instead of running it
# Hyper-parameters are LLaVA-1.5's (scripts/v1_5/pretrain.sh, finetune.sh) wherever the paper
# states none of its own; each stage script says which.
set -euo pipefail
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
RECIPE="${1:?usage: $0 RECIPE.sh   (e.g. $HERE/toklip-l_qwen2.5-7b.sh)}"
source "$RECIPE"

DATA_ROOT="${DATA_ROOT:-./playground/data}"
CAPTION_DATA="${CAPTION_DATA:-$DATA_ROOT/llava_onevision_recap/recap_detailed_captions.json}"
CAPTION_IMAGES="${CAPTION_IMAGES:-$(dirname "$CAPTION_DATA")}"
OUTPUT_ROOT="${OUTPUT_ROOT:-./checkpoints}"
NUM_GPUS="${NUM_GPUS:-$( (nvidia-smi -L 2>/dev/null || true) | wc -l)}"
NUM_GPUS="$(( NUM_GPUS > 0 ? NUM_GPUS : 1 ))"
SELECT_FEATURE="${SELECT_FEATURE:-patch}"

SHARED_ARGS=(
  --vision_tower "$VISION_TOWER"
  --mm_projector_type mlp2x_gelu
  --mm_vision_select_layer -1
  --mm_vision_select_feature "$SELECT_FEATURE"
  --mm_use_im_start_end False
  --mm_use_im_patch_token False
  --bf16 True
  --tf32 True
  --num_train_epochs 1
  --eval_strategy no
  --save_strategy steps
  --save_total_limit 1
  --weight_decay 0.
  --warmup_ratio 0.03
  --lr_scheduler_type cosine
  --logging_steps 1
  --model_max_length 2048
  --gradient_checkpointing True
  --dataloader_num_workers 4
  --lazy_preprocess True
  --report_to "${REPORT_TO:-none}"
)

# gradient accumulation that keeps the paper's global batch on any number of GPUs
accumulation() {  # global_batch per_device_batch
  echo $(( $1 / ($2 * NUM_GPUS) > 0 ? $1 / ($2 * NUM_GPUS) : 1 ))
}

# Projector + LLM trained together (the tower stays frozen): LLaVA-1.5's instruction-tuning
# settings, global batch 128, lr 2e-5, 1 epoch, ZeRO-3. Table 1 stage 2 and both Table 3 stages.
FULL_TUNING_ARGS=(
  --deepspeed "$HERE/zero3.json"
  --version "$CONV_VERSION"
  --image_aspect_ratio pad
  --group_by_modality_length True
  --per_device_train_batch_size 16
  --gradient_accumulation_steps "$(accumulation 128 16)"
  --learning_rate 2e-5
  --save_steps 50000
)
# LLaVA-v1.5-mix-665K, the instruction data of Table 1 stage 2 and Table 3 stage 2
INSTRUCT_DATA_ARGS=(--data_path "$DATA_ROOT/llava_v1_5_mix665k.json" --image_folder "$DATA_ROOT")

# LLaVA's train_mem (flash-attention 2) when flash-attn is installed, else train (SDPA)
launch() {
  local module=llava.train.train_mem
  python -c "import flash_attn" 2>/dev/null || module=llava.train.train
  local cmd=(deepspeed --num_gpus "$NUM_GPUS" --module "$module" "${SHARED_ARGS[@]}" "$@")
  if [[ "${DRY_RUN:-0}" == 1 ]]; then
    printf '%q ' "${cmd[@]}"; echo
  else
    "${cmd[@]}"
  fi
}
