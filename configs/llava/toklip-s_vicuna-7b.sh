# Recipe: TokLIP-S (256 px, 256 tokens) + Vicuna-7B v1.5 (LLaVA-1.5's own LLM). Not a paper row
# (the paper pairs both TokLIPs with Qwen2.5-7B-Instruct); kept for comparison with LLaVA-1.5's numbers.
# Sourced by pretrain.sh / finetune.sh. Tower weights: TokLIP_S_256.pt in $TOKLIP_HOME or the Hub.
RUN_NAME=llava-toklip-s-vicuna-7b
LLM=lmsys/vicuna-7b-v1.5
CONV_VERSION=v1
VISION_TOWER=toklip-s
