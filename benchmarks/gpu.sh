#!/usr/bin/env bash
# The prepared GPU run (one lent H200; under 8 minutes; the table is printed last).
#
#   bash benchmarks/gpu.sh            # from the repository root on the GPU machine
#
# Full-size workloads in bf16, each beside its plain baseline (python -m benchmarks.run --gpu):
#   - toklip-l encode at batch 64: fused causal SDPA vs the original explicit -inf mask, and the
#     achieved GFLOP/s against the measured bf16 matmul rate;
#   - one training step of toklip-l with the SigLIP2 So400m/16-384 teacher: gradient
#     checkpointing vs none, bf16 vs fp32, and the share of the step in the frozen parts;
#   - GPT-B-toklip sampling at 576 tokens (So400m encoder, KV-cached) vs plain GPT-B sampling vs
#     re-encoding the prefix, and the same with a ViT-B-sized encoder.
# Random weights: speed does not depend on them, and the machine cannot download.
set -euo pipefail
cd "$(dirname "$0")/.."
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || true
if ! python -c "import toklip_plugin" 2>/dev/null; then
    python -m pip install -q -e ".[train]"
fi
python -c "import torch; assert torch.cuda.is_available(), 'no CUDA device visible'; print(torch.__version__, torch.cuda.get_device_name())"
mkdir -p "${OUT:-gpu_results}"
timeout 460 python -m benchmarks.run --gpu --device cuda --repeats 3 --json "${OUT:-gpu_results}/gpu_bench.json" \
    2> "${OUT:-gpu_results}/gpu_bench.log"
