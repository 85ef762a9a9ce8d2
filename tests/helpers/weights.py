"""Tiny TokLIP weights for comparisons that must notice small differences."""
from __future__ import annotations

import torch


def spread_weights(model: torch.nn.Module, seed: int) -> torch.nn.Module:
    """Redraw every weight matrix of the token encoder and the text tower with std ``1 / sqrt(fan_in)``; returns
    ``model``.

    The init's std 0.02 leaves every nonlinearity nearly linear and the pooled embeddings nearly independent of the
    input (a zero-shot classifier then picks the same class for every image).
    """
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in [*model.encoder.parameters(), *model.text.parameters()]:
            if p.ndim >= 2:
                p.copy_(torch.randn(p.shape, generator=g) * p.shape[-1] ** -0.5)
    return model
