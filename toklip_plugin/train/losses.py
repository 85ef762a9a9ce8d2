"""TokLIP's training objective: contrastive image-text loss plus distillation to a teacher.

The contrastive terms are open_clip's own ``SigLipLoss`` (sigmoid, every rank's images against
every rank's texts through its neighbour exchange / gather with gradient) and ``ClipLoss``
(softmax InfoNCE, local rows against gathered columns with gradient). Both give a per-rank loss
whose mean over ranks equals the single-process loss on the concatenated batch, which is what
DDP's gradient averaging needs.
"""
from __future__ import annotations

from typing import Optional

import torch
import torch.nn as nn
import torch.nn.functional as F
from open_clip.loss import ClipLoss, SigLipLoss

from .config import LossSection

__all__ = ["TokLIPLoss", "align_tokens"]


class TokLIPLoss(nn.Module):
    """Weighted sum of contrastive, pooled-embedding MSE and all-token MSE terms.

    ``forward`` returns a dict with the weighted terms and their sum under ``"total"``.
    """

    def __init__(self, config: LossSection, rank: int = 0, world_size: int = 1):
        super().__init__()
        self.config = config
        if config.contrastive == "sigmoid":
            self.contrastive = SigLipLoss(rank=rank, world_size=world_size, dist_impl=config.sigmoid_dist_impl)
        elif config.contrastive == "infonce":
            self.contrastive = ClipLoss(local_loss=True, gather_with_grad=True, rank=rank, world_size=world_size)
        else:
            self.contrastive = None

    def forward(
        self,
        image_emb: torch.Tensor,
        text_emb: torch.Tensor,
        logit_scale: torch.Tensor,
        logit_bias: torch.Tensor,
        tokens: Optional[torch.Tensor] = None,
        teacher_emb: Optional[torch.Tensor] = None,
        teacher_tokens: Optional[torch.Tensor] = None,
    ) -> dict[str, torch.Tensor]:
        cfg = self.config
        terms: dict[str, torch.Tensor] = {}
        if self.contrastive is not None:
            img, txt = F.normalize(image_emb.float(), dim=-1), F.normalize(text_emb.float(), dim=-1)
            bias = logit_bias if cfg.contrastive == "sigmoid" else None
            terms["contrastive"] = cfg.contrastive_weight * self.contrastive(img, txt, logit_scale.exp(), bias)
        if cfg.distill_weight > 0:
            _require(teacher_emb, "distill_weight > 0 needs the teacher's pooled embedding")
            terms["distill"] = cfg.distill_weight * F.mse_loss(image_emb.float(), teacher_emb.float())
        if cfg.token_distill_weight > 0:
            _require(tokens, "token_distill_weight > 0 needs the student's tokens")
            _require(teacher_tokens, "token_distill_weight > 0 needs the teacher's tokens")
            target = align_tokens(teacher_tokens, tokens.shape[1])
            terms["token_distill"] = cfg.token_distill_weight * F.mse_loss(tokens.float(), target.float())
        if not terms:
            raise ValueError("the loss has no terms: set loss.contrastive or a distillation weight")
        terms["total"] = sum(terms.values())
        return terms


def align_tokens(teacher_tokens: torch.Tensor, num_tokens: int) -> torch.Tensor:
    """Resample a teacher's square token grid ``[B, M, d]`` to ``num_tokens`` positions (bilinear)."""
    b, m, d = teacher_tokens.shape
    if m == num_tokens:
        return teacher_tokens
    src, dst = round(m**0.5), round(num_tokens**0.5)
    if src * src != m or dst * dst != num_tokens:
        raise ValueError(f"cannot align {m} teacher tokens to {num_tokens} student tokens: both must be square grids")
    grid = teacher_tokens.transpose(1, 2).reshape(b, d, src, src)
    grid = F.interpolate(grid, size=(dst, dst), mode="bilinear", align_corners=False)
    return grid.flatten(2).transpose(1, 2)


def _require(value: Optional[torch.Tensor], message: str) -> None:
    if value is None:
        raise ValueError(message)
