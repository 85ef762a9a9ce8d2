"""Model FLOPs per image (counted by ``torch.utils.flop_counter``) and the machine's matmul rate.

    python -m benchmarks.flops [--models toklip-tiny toklip-b16]
"""
from __future__ import annotations

import argparse

import torch
from torch.utils.flop_counter import FlopCounterMode

import toklip_plugin as tp
from benchmarks.common import best_time, print_table


def counted_flops(fn) -> int:
    with FlopCounterMode(display=False) as counter:
        fn()
    return counter.get_total_flops()


def encode_flops(name: str, device: str = "cpu") -> dict[str, float]:
    """GFLOPs of one image through the frozen VQ encoder and through the token encoder + pool."""
    config = tp.resolve_config(name)
    model = tp.create_model(config, seed=0).to(device).eval().requires_grad_(False)
    image = torch.rand(1, 3, config.image_size, config.image_size, device=device) * 2 - 1
    codes = model.tokenize(image)
    return {"vq_gflops": counted_flops(lambda: model.tokenize(image)) / 1e9,
            "encoder_gflops": counted_flops(lambda: model.pool_tokens(model.encode_codes(codes))) / 1e9}


def matmul_gflops(device: str = "cpu", dtype: torch.dtype = torch.float32, n: int = 2048, repeats: int = 5) -> float:
    """Measured GFLOP/s of a square ``n x n`` matmul: the ceiling the models are compared with."""
    a = torch.randn(n, n, device=device, dtype=dtype)
    b = torch.randn(n, n, device=device, dtype=dtype)
    return 2 * n**3 / best_time(lambda: a @ b, repeats) / 1e9


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", nargs="+", default=["toklip-tiny", "toklip-b16"])
    args = parser.parse_args()
    rows = [[name, f["vq_gflops"], f["encoder_gflops"], f"{100 * f['vq_gflops'] / sum(f.values()):.0f}%"]
            for name in args.models for f in [encode_flops(name)]]
    print_table(["model", "VQ encoder GFLOPs/img", "token encoder GFLOPs/img", "VQ share of FLOPs"], rows)
    print(f"matmul fp32: {matmul_gflops():.1f} GFLOP/s on {torch.get_num_threads()} threads")


if __name__ == "__main__":
    main()
