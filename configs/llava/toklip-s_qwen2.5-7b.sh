# Recipe: TokLIP-S (256 px, 256 tokens) + Qwen2.5-7B-Instruct, the paper's Table 1 TokLIP-S row.
# Sourced by the stage scripts. Tower weights: TokLIP_S_256.pt in $TOKLIP_HOME or the Hub.
RUN_NAME=llava-toklip-s-qwen2.5-7b
LLM=Qwen/Qwen2.5-7B-Instruct
CONV_VERSION=qwen_2
VISION_TOWER=toklip-s
