"""TokLIP's training objective (paper Eq. 2): contrastive image-text loss plus distillation to a teacher.

The contrastive terms are open_clip's own ``ClipLoss`` (softmax InfoNCE, the paper's and the official
``--siglip-train`` objective: local rows against the global batch gathered with gradient) and
``SigLipLoss`` (sigmoid with a learned bias, an option; every rank's images against every rank's
texts through its neighbour exchange / gather with gradient). Both give a per-rank loss whose mean
over ranks equals the single-process loss on the concatenated batch, so DDP's gradient averaging
yields the exact gradient of the global-batch loss. (The official scripts leave open_clip's
``--local-loss --gather-with-grad`` off; each rank then differentiates the global loss through its
own features only, and after DDP's averaging the contrastive gradient is 1/world_size of the
global-batch one while the distillation gradient is exact. We follow the paper's loss as written.)

Distillation is the official ``DistillSimpleClipLoss`` term: ``distill_weight * MSE`` of the
l2-normalised pooled embeddings (element mean, weight 1000 in the official code), the teacher
detached. The all-token term compares every semantic token with the teacher's token at the same
grid position, each l2-normalised, or raw as the official ``DistillClipLoss`` does (``10 * MSE``)
with ``token_distill_normalize: false``.

The learned logit scale is clamped to ``[0, ln 100]`` after every optimizer step
(:func:`clamp_logit_scale`), as the official trainer does.
"""
from __future__ import annotations

import math
from typing import Optional

import torch
import torch.nn as nn
import torch.nn.functional as F
from open_clip.loss import ClipLoss, SigLipLoss

from ..models.teacher import resample_token_grid
from .config import LossSection

__all__ = ["TokLIPLoss", "normalized_mse", "clamp_logit_scale", "LOGIT_SCALE_MAX"]

LOGIT_SCALE_MAX = math.log(100)  # CLIP's cap on exp(logit_scale), kept by open_clip_train and the official code


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
            self.contrastive = ClipLoss(local_loss=True, gather_with_grad=True, cache_labels=True, rank=rank,
                                        world_size=world_size)
        else:
            self.contrastive = None

    def forward(
        self,
        image_emb: torch.Tensor,
        text_emb: torch.Tensor,
        logit_scale: torch.Tensor,
        logit_bias: Optional[torch.Tensor] = None,
        tokens: Optional[torch.Tensor] = None,
        teacher_emb: Optional[torch.Tensor] = None,
        teacher_tokens: Optional[torch.Tensor] = None,
    ) -> dict[str, torch.Tensor]:
        """``logit_bias`` is read by the sigmoid loss only (InfoNCE has none; a model's bias, if any, is unused)."""
        cfg = self.config
        terms: dict[str, torch.Tensor] = {}
        if self.contrastive is not None:
            terms["contrastive"] = cfg.contrastive_weight * self._contrastive(image_emb, text_emb, logit_scale,
                                                                              logit_bias)
        if cfg.distill_weight > 0:
            _require(teacher_emb, "distill_weight > 0 needs the teacher's pooled embedding")
            terms["distill"] = cfg.distill_weight * normalized_mse(image_emb, teacher_emb.detach())
        if cfg.token_distill_weight > 0:
            _require(tokens, "token_distill_weight > 0 needs the student's tokens")
            _require(teacher_tokens, "token_distill_weight > 0 needs the teacher's tokens")
            target = resample_token_grid(teacher_tokens.detach(), tokens.shape[1])
            token_mse = normalized_mse if cfg.token_distill_normalize else _mse
            terms["token_distill"] = cfg.token_distill_weight * token_mse(tokens, target)
        if not terms:
            raise ValueError("the loss has no terms: set loss.contrastive or a distillation weight")
        terms["total"] = sum(terms.values())
        return terms

    def _contrastive(self, image_emb: torch.Tensor, text_emb: torch.Tensor, logit_scale: torch.Tensor,
                     logit_bias: Optional[torch.Tensor]) -> torch.Tensor:
        img, txt = F.normalize(image_emb.float(), dim=-1), F.normalize(text_emb.float(), dim=-1)
        if self.config.contrastive == "infonce":
            return self.contrastive(img, txt, logit_scale.exp())
        _require(logit_bias, "loss.contrastive 'sigmoid' needs a model with a logit_bias: set init_logit_bias "
                             "(SigLIP uses -10) in the model config, or train with loss.contrastive 'infonce'")
        return self.contrastive(img, txt, logit_scale.exp(), logit_bias)


def normalized_mse(student: torch.Tensor, teacher: torch.Tensor) -> torch.Tensor:
    """Mean over every element of ``(s/|s| - t/|t|)^2``, each vector l2-normalised along its last dimension."""
    return _mse(F.normalize(student.float(), dim=-1), F.normalize(teacher.float(), dim=-1))


def _mse(student: torch.Tensor, teacher: torch.Tensor) -> torch.Tensor:
    return F.mse_loss(student.float(), teacher.float())


@torch.no_grad()
def clamp_logit_scale(model: nn.Module) -> None:
    """Clamp ``model.logit_scale`` to ``[0, ln 100]`` in place; call it after every optimizer step."""
    model.logit_scale.clamp_(0, LOGIT_SCALE_MAX)


def _require(value: Optional[torch.Tensor], message: str) -> None:
    if value is None:
        raise ValueError(message)
