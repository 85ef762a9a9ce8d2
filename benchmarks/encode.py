"""Images/s of ``encode_image`` on CPU: fused causal SDPA vs explicit -inf mask vs bidirectional.

    python benchmarks/encode.py [--models toklip-tiny toklip-b16] [--batch-size 8]

Also splits the time between the frozen VQ encoder (pixels -> codes) and the token encoder.
"""
from __future__ import annotations

import argparse
import sys
from dataclasses import replace
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import best_time, print_table  # noqa: E402

import toklip_plugin as tp  # noqa: E402


def causal_mask(n: int) -> torch.Tensor:
    return torch.full((n, n), float("-inf")).triu(1)


@torch.no_grad()
def measure(name: str, batch_size: int, repeats: int) -> list[list[object]]:
    config = tp.resolve_config(name)
    causal = tp.create_model(config, seed=0).eval()
    bidir = tp.create_model(config.replace(encoder=replace(config.encoder, causal=False)), seed=0).eval()
    images = torch.rand(batch_size, 3, config.image_size, config.image_size) * 2 - 1
    codes = causal.tokenize(images)
    mask = causal_mask(config.num_tokens)

    t_vq = best_time(lambda: causal.tokenize(images), repeats)
    paths = {
        "fused causal (is_causal SDPA)": lambda: causal.pool_tokens(causal.encode_codes(codes)),
        "explicit -inf mask (original)": lambda: causal.pool_tokens(causal.encode_codes(codes, attn_mask=mask)),
        "bidirectional": lambda: bidir.pool_tokens(bidir.encode_codes(codes)),
    }
    t_fused = best_time(paths["fused causal (is_causal SDPA)"], repeats)
    rows = []
    for label, fn in paths.items():
        t_enc = t_fused if label.startswith("fused") else best_time(fn, repeats)
        total = t_vq + t_enc
        rows.append([name, label, batch_size / total, batch_size / t_enc, (t_vq + t_fused) / total,
                     f"{100 * t_vq / total:.0f}%"])
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", nargs="+", default=["toklip-tiny", "toklip-b16"])
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    rows = [row for name in args.models for row in measure(name, args.batch_size, args.repeats)]
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, batch {args.batch_size}")
    print_table(["model", "attention path", "encode_image img/s", "token encoder img/s", "speed vs fused",
                 "VQ share"], rows)


if __name__ == "__main__":
    main()
