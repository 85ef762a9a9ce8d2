"""``VQ_models['toklip']`` for LlamaGen (entry point ``llamagen.vq_models``).

TokLIP does not change the codes: they are LlamaGen VQ-16 codes. So ``--vq-model toklip``
is LlamaGen's VQ-16 (our re-implementation with LlamaGen's names and contract: ``encode``,
``decode_code``, ``quantize.get_codebook_entry``) whose ``load_state_dict`` also accepts a
whole TokLIP checkpoint as ``--vq-ckpt`` and takes the VQ part out of it.
"""
from __future__ import annotations

from typing import Any, Mapping

from ...checkpoints import vq_state_dict
from ...config import VQConfig
from ...models.vq import VQModel

__all__ = ["TokLIP_VQ", "TokLIPVQModel"]


class TokLIPVQModel(VQModel):
    """LlamaGen's VQ-16, loadable from a TokLIP checkpoint (same codes as VQ-16 for the same weights)."""

    def load_state_dict(self, state_dict: Mapping[str, Any], strict: bool = True, assign: bool = False):
        return super().load_state_dict(vq_state_dict(state_dict), strict=strict, assign=assign)


def TokLIP_VQ(codebook_size: int = 16384, codebook_embed_dim: int = 8, **ignored) -> TokLIPVQModel:
    """LlamaGen's VQ factory signature; training-only kwargs (commit_loss_beta, ...) are unused."""
    return TokLIPVQModel(VQConfig(codebook_size=codebook_size, codebook_embed_dim=codebook_embed_dim))
