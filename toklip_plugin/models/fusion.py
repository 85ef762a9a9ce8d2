"""Fusions of a code embedding with TokLIP's semantic feature: the input of a generating model.

A model that writes VQ codes (LlamaGen's fused GPT, the unified LLaVA) reads, at each image
position, ``fusion(code embedding [B, n, dim], TokLIP feature [B, n, width]) -> [B, n, dim]``.
Each fusion starts out ignoring the feature (``concat``: identity on the code part and zero on
the feature part; ``sum``: a zero projection; ``weighted_sum``: scalar weights (1, 0)), so a
fused model begins as the plain one and learns how much of TokLIP to read.
"""
from __future__ import annotations

import torch
import torch.nn as nn

__all__ = ["ConcatFusion", "SumFusion", "WeightedSumFusion", "FUSIONS"]


class ConcatFusion(nn.Module):
    """``[code_emb, feature] @ W``: the feature is projected into the model's width."""

    def __init__(self, dim: int, width: int):
        super().__init__()
        self.proj = nn.Linear(dim + width, dim, bias=False)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        dim = self.proj.out_features
        with torch.no_grad():  # identity on the code part, zero on the feature part
            self.proj.weight.zero_()
            self.proj.weight[:, :dim].copy_(torch.eye(dim))

    def forward(self, code_emb: torch.Tensor, feature: torch.Tensor) -> torch.Tensor:
        return self.proj(torch.cat([code_emb, feature.to(code_emb.dtype)], dim=-1))


class SumFusion(nn.Module):
    """``code_emb + proj(feature)``."""

    def __init__(self, dim: int, width: int):
        super().__init__()
        self.proj = nn.Linear(width, dim, bias=False)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        nn.init.zeros_(self.proj.weight)

    def forward(self, code_emb: torch.Tensor, feature: torch.Tensor) -> torch.Tensor:
        return code_emb + self.proj(feature.to(code_emb.dtype))


class WeightedSumFusion(nn.Module):
    """``w0 * code_emb + w1 * proj(feature)`` with learned scalars, starting at (1, 0)."""

    def __init__(self, dim: int, width: int):
        super().__init__()
        self.proj = nn.Linear(width, dim, bias=False)
        self.weights = nn.Parameter(torch.tensor([1.0, 0.0]))
        self.reset_parameters()

    def reset_parameters(self) -> None:
        nn.init.normal_(self.proj.weight, std=0.02)
        with torch.no_grad():
            self.weights.copy_(torch.tensor([1.0, 0.0]))

    def forward(self, code_emb: torch.Tensor, feature: torch.Tensor) -> torch.Tensor:
        w = self.weights.to(code_emb.dtype)
        return w[0] * code_emb + w[1] * self.proj(feature.to(code_emb.dtype))


FUSIONS = {"concat": ConcatFusion, "sum": SumFusion, "weighted_sum": WeightedSumFusion}
