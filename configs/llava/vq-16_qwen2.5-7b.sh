# Recipe: the plain VQ-16 tower at 256 px (256 tokens of l2-normalised 8-d code embeddings, no token
# encoder) + Qwen2.5-7B-Instruct: Table 1's VQGAN baseline beside TokLIP-S/256. The VQ is the one
# inside the released TokLIPs (LlamaGen's vq_ds16_t2i.pt, $TOKLIP_HOME or the Hub); another file:
# VISION_TOWER=vq-16:/path/to/vq.pt.
RUN_NAME=llava-vq-16-qwen2.5-7b
LLM=Qwen/Qwen2.5-7B-Instruct
CONV_VERSION=qwen_2
VISION_TOWER=vq-16
