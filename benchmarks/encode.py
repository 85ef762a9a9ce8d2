"""Images/s of ``encode_image`` on CPU: fused causal SDPA vs explicit -inf mask vs bidirectional.

    python -m benchmarks.encode [--models toklip-tiny toklip-b16] [--batch-size 8]

Also splits the time between the frozen VQ encoder (pixels -> codes) and the token encoder.
"""
from __future__ import annotations

from dataclasses import replace

import torch

import toklip_plugin as tp
from benchmarks.common import best_time, per_model_parser, print_table

PATHS = {"fused": "fused causal (is_causal SDPA)", "explicit": "explicit -inf mask (original)",
         "bidirectional": "bidirectional"}


def causal_mask(n: int, device: torch.device, dtype: torch.dtype) -> torch.Tensor:
    return torch.full((n, n), float("-inf"), device=device, dtype=dtype).triu(1)


@torch.no_grad()
def measure(name: str, batch_size: int, repeats: int, device: str = "cpu",
            dtype: torch.dtype = torch.float32) -> dict[str, float]:
    """Seconds per batch: VQ tokenisation (``vq``) and the token encoder + pool along each path."""
    config = tp.resolve_config(name)
    causal = tp.create_model(config, seed=0).to(device, dtype).eval()
    bidir = tp.create_model(config.replace(encoder=replace(config.encoder, causal=False)), seed=0).to(device, dtype).eval()
    images = (torch.rand(batch_size, 3, config.image_size, config.image_size) * 2 - 1).to(device, dtype)
    codes = causal.tokenize(images)
    mask = causal_mask(config.num_tokens, images.device, dtype)
    encode = {
        "fused": lambda: causal.pool_tokens(causal.encode_codes(codes)),
        "explicit": lambda: causal.pool_tokens(causal.encode_codes(codes, attn_mask=mask)),
        "bidirectional": lambda: bidir.pool_tokens(bidir.encode_codes(codes)),
    }
    seconds = {"vq": best_time(lambda: causal.tokenize(images), repeats)}
    seconds.update({path: best_time(fn, repeats) for path, fn in encode.items()})
    return seconds


def table_rows(name: str, batch_size: int, seconds: dict[str, float]) -> list[list[object]]:
    rows = []
    for path, label in PATHS.items():
        total = seconds["vq"] + seconds[path]
        rows.append([name, label, batch_size / total, batch_size / seconds[path],
                     (seconds["vq"] + seconds["fused"]) / total, f"{100 * seconds['vq'] / total:.0f}%"])
    return rows


def main() -> None:
    args = per_model_parser(__doc__, batch_size=8).parse_args()
    rows = [row for name in args.models
            for row in table_rows(name, args.batch_size, measure(name, args.batch_size, args.repeats))]
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, batch {args.batch_size}")
    print_table(["model", "attention path", "encode_image img/s", "token encoder img/s", "speed vs fused",
                 "VQ share"], rows)


if __name__ == "__main__":
    main()
