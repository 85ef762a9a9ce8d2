"""The demo's teacher: a tiny SigLIP-style model trained on pixels before the students see it.

TokLIP distils from (and initialises from) a pretrained SigLIP2. Offline there is none, so the
demo trains a small one first, with the trainer's own ``SigLIPTeacher`` and ``TokLIPLoss``
(sigmoid loss with bias: the teacher is a SigLIP model). Its text tower has the student's text
config, so ``model.text_init=teacher`` copies it into every student, frozen.
"""
from __future__ import annotations

from typing import Any, Mapping

import torch

from .. import TokLIPConfig
from ..models.teacher import SigLIPTeacher, build_small_teacher
from ..progress import ProgressBar
from ..train.config import LossSection
from ..train.losses import TokLIPLoss

__all__ = ["train_teacher", "teacher_image_embeddings"]


def train_teacher(timm_kwargs: Mapping[str, Any], model_config: TokLIPConfig, images: torch.Tensor,
                  text: torch.Tensor, steps: int, batch_size: int, seed: int) -> tuple[SigLIPTeacher, list[float]]:
    """Train on ``images`` ``[n, 3, S, S]`` / caption ids ``text`` ``[n, L]`` (AdamW, one-cycle schedule);
    returns the frozen teacher and its loss per step."""
    teacher = build_small_teacher(timm_kwargs, model_config, seed=seed)
    loss_fn = TokLIPLoss(LossSection(contrastive="sigmoid", distill_weight=0.0))
    optimizer = torch.optim.AdamW(teacher.parameters(), lr=1e-3, weight_decay=0.05)
    scheduler = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=1e-3, total_steps=steps, pct_start=0.1)
    generator = torch.Generator().manual_seed(seed)
    losses = []
    teacher.train()
    for _ in ProgressBar(range(steps), desc="teacher", dynamic_ncols=True):
        idx = torch.randint(len(images), (batch_size,), generator=generator)
        image_emb = teacher.encode_image(_random_flips(images[idx], generator))
        loss = loss_fn(image_emb, teacher.encode_text(text[idx]), teacher.logit_scale, teacher.logit_bias)["total"]
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        scheduler.step()
        losses.append(loss.item())
    return teacher.requires_grad_(False).eval(), losses


def _random_flips(images: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """Random horizontal flips (captions stay true: they never say left or right)."""
    flip = torch.rand(images.shape[0], generator=generator) < 0.5
    return torch.where(flip[:, None, None, None], images.flip(-1), images)


@torch.no_grad()
def teacher_image_embeddings(teacher: SigLIPTeacher, images: torch.Tensor, batch_size: int = 128) -> torch.Tensor:
    """Pooled teacher embeddings ``[n, E]`` of pixels ``[n, 3, S, S]``."""
    return torch.cat([teacher.encode_image(chunk) for chunk in images.split(batch_size)])
