"""AdamW with timm / open_clip's weight-decay groups and a cosine schedule with linear warm-up."""
from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn as nn

from .config import OptimSection

__all__ = ["cosine_with_warmup", "param_groups", "build_optimizer"]


def cosine_with_warmup(step: int, warmup: int, total: int) -> float:
    """LR multiplier: linear warm-up to 1 over ``warmup`` steps, then cosine decay to 0 at ``total``."""
    if step < warmup:
        return (step + 1) / warmup
    progress = (step - warmup) / max(1, total - warmup)
    return 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))


def param_groups(module: nn.Module, weight_decay: float, decay_pos_embed: bool = False) -> list[dict[str, Any]]:
    """No weight decay on biases, norms and logit scale/bias (as timm, open_clip), nor on the position
    embedding unless ``decay_pos_embed`` (the official TokLIP trainer decays it: open_clip_train exempts
    only tensors of rank < 2 and names holding bn, ln, bias or logit_scale)."""
    decay, no_decay = [], []
    for name, param in module.named_parameters():
        if param.requires_grad:
            exempt = param.ndim < 2 or ("pos_embed" in name and not decay_pos_embed)
            (no_decay if exempt else decay).append(param)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


def build_optimizer(module: nn.Module, config: OptimSection, total_steps: int
                    ) -> tuple[torch.optim.Optimizer, torch.optim.lr_scheduler.LRScheduler]:
    """AdamW over ``module``'s trainable parameters and its per-step LR schedule over ``total_steps``."""
    optimizer = torch.optim.AdamW(param_groups(module, config.weight_decay, config.decay_pos_embed), lr=config.lr,
                                  betas=config.betas, eps=config.eps)
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda step: cosine_with_warmup(step, config.warmup_steps, total_steps))
    return optimizer, scheduler
