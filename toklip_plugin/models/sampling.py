"""Drawing one token from logits: temperature, top-k and nucleus (top-p) filtering.

One implementation for every sampler of the package (LlamaGen's fused GPT, the unified
LLaVA's image codes), with LlamaGen's conventions: ``top_k=0`` and ``top_p=1.0`` turn the
filters off, and top-p keeps the first token that crosses the threshold.
"""
from __future__ import annotations

from typing import Optional

import torch
import torch.nn.functional as F

__all__ = ["sample_logits"]


def sample_logits(logits: torch.Tensor, temperature: float = 1.0, top_k: int = 0, top_p: float = 1.0,
                  generator: Optional[torch.Generator] = None) -> torch.Tensor:
    """Logits ``[B, V]`` -> sampled indices ``[B, 1]``."""
    logits = logits / max(temperature, 1e-5)
    if top_k > 0:
        kth = torch.topk(logits, min(top_k, logits.shape[-1])).values[..., -1, None]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if top_p < 1.0:
        sorted_logits, order = torch.sort(logits, descending=True)
        drop = F.softmax(sorted_logits, dim=-1).cumsum(-1) > top_p
        drop[..., 1:] = drop[..., :-1].clone()  # keep the first token over the threshold
        drop[..., 0] = False
        logits = logits.masked_fill(drop.scatter(1, order, drop), float("-inf"))
    return torch.multinomial(F.softmax(logits, dim=-1), num_samples=1, generator=generator)
