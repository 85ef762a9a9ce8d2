"""The frozen side of a training step, as one object: VQ codes, text embeddings, teacher targets.

The trainer, the code-cache builder and the demo all take their targets from here, under one set
of key names (:data:`TARGET_KEYS`, which are also the tensor names of a code cache). A target a
batch already carries (read from a cache) is used as it is; the rest are computed by the frozen
VQ, text tower and teacher, without gradients.
"""
from __future__ import annotations

from typing import Callable, Optional

import torch
import torch.nn as nn

from ..models.teacher import Teacher
from ..models.vq import VQModel
from ..precision import autocast
from .text_cache import TextEmbeddingCache

__all__ = ["TARGET_KEYS", "FrozenTargets"]

TARGET_KEYS = ("codes", "text_emb", "teacher_pooled", "teacher_tokens")
Targets = dict[str, Optional[torch.Tensor]]


class FrozenTargets:
    """Frozen VQ (``vq.tokenize``), text tower and teacher, run under the run's precision.

    ``teacher_pooled`` / ``teacher_tokens`` say which teacher outputs the loss needs; a target that
    is not needed is ``None``. ``text_tower`` may be ``None`` for a user that only needs image targets
    (the code-cache builder).
    """

    def __init__(self, vq: VQModel, text_tower: Optional[nn.Module], teacher: Optional[Teacher],
                 teacher_pooled: bool, teacher_tokens: bool, precision: str = "fp32", text_cache_size: int = 0):
        if (teacher_pooled or teacher_tokens) and teacher is None:
            raise ValueError("the loss distils towards a teacher, but no teacher was given")
        self.vq, self.text_tower, self.teacher = vq, text_tower, teacher
        self.needs = {"teacher_pooled": teacher_pooled, "teacher_tokens": teacher_tokens}
        self.precision = precision
        # the text tower is frozen, so a caption's embedding never changes: encode each one once
        self.text_cache = TextEmbeddingCache(text_cache_size) if text_cache_size else None

    @property
    def device(self) -> torch.device:
        return self.vq.quant_conv.weight.device

    @torch.no_grad()
    def codes(self, images: torch.Tensor) -> torch.Tensor:
        """Images ``[B, 3, S, S]`` in [-1, 1] -> VQ codes ``[B, N]``."""
        return self.vq.tokenize(images.to(self.vq.quant_conv.weight.dtype))

    @torch.no_grad()
    def text(self, text_ids: torch.Tensor, host_ids: Optional[torch.Tensor] = None) -> torch.Tensor:
        """Token ids ``[B, L]`` -> text embeddings ``[B, E]``; ``host_ids`` (a CPU copy) keys the text cache."""
        if self.text_tower is None:
            raise ValueError("these frozen targets were built without a text tower")
        encode: Callable[[torch.Tensor], torch.Tensor] = self._encode_text
        if self.text_cache is not None:
            return self.text_cache(text_ids.cpu() if host_ids is None else host_ids, encode)
        return encode(text_ids)

    def _encode_text(self, text_ids: torch.Tensor) -> torch.Tensor:
        with autocast(self.device, self.precision):
            return self.text_tower(text_ids.to(self.device, non_blocking=True))

    @torch.no_grad()
    def teacher_features(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Images -> the teacher's ``(pooled [B, E], tokens [B, M, E])``."""
        with autocast(self.device, self.precision):
            return self.teacher.image_features(images)

    def image_targets(self, batch: dict[str, torch.Tensor]) -> Targets:
        """``codes`` and the teacher targets the loss needs, from the batch when cached there, else from
        its ``images``."""
        out = {key: batch.get(key) for key in ("codes", "teacher_pooled", "teacher_tokens")}
        if out["codes"] is None:
            out["codes"] = self.codes(batch["images"])
        if any(needed and out[key] is None for key, needed in self.needs.items()):
            out["teacher_pooled"], out["teacher_tokens"] = self.teacher_features(batch["images"])
        for key, needed in self.needs.items():
            out[key] = out[key] if needed else None
        return out

    def __call__(self, batch: dict[str, torch.Tensor], host_text: Optional[torch.Tensor] = None) -> Targets:
        """Every target of :data:`TARGET_KEYS` for a batch of ``images`` / ``codes`` and ``text`` ids."""
        text_emb = batch.get("text_emb")
        if text_emb is None:
            text_emb = self.text(batch["text"], host_text)
        return {**self.image_targets(batch), "text_emb": text_emb}
