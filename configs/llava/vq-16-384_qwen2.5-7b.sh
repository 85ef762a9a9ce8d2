# Recipe: the plain VQ-16 tower at 384 px (576 tokens) + Qwen2.5-7B-Instruct: Table 1's VQGAN
# baseline beside TokLIP-L/384 (same VQ as vq-16_qwen2.5-7b.sh, same number of tokens as TokLIP-L).
RUN_NAME=llava-vq-16-384-qwen2.5-7b
LLM=Qwen/Qwen2.5-7B-Instruct
CONV_VERSION=qwen_2
VISION_TOWER=vq-16-384
