# Recipe: TokLIP-L (384 px, 576 tokens) + Qwen2.5-7B-Instruct, the paper's Table 1 TokLIP-L row and
# the default of Table 3 (table3.sh).
# Sourced by pretrain.sh / finetune.sh. Tower weights: TokLIP_L_384.pt in $TOKLIP_HOME or the Hub.
RUN_NAME=llava-toklip-l-qwen2.5-7b
LLM=Qwen/Qwen2.5-7B-Instruct
CONV_VERSION=qwen_2
VISION_TOWER=toklip-l
