"""A small class-conditional sampler that drives a GPT the way LlamaGen's ``generate()`` does.

LlamaGen cannot be imported here, but tests and ``benchmarks.generate`` must exercise the
fused GPT through the same calls its ``autoregressive/models/generate.py`` makes:

1. CFG doubles the batch with null-class rows: ``[cond; num_classes]``;
2. ``setup_caches(rows, 1 + N, tok_embeddings.weight.dtype)`` under ``torch.device``;
3. prefill ``model(None, cond, arange(1))``;
4. N - 1 decode calls ``model([x; x], cond_idx=None, input_pos=tensor([p], int32))``, with
   ``input_pos`` incremented **in place** after each call;
5. CFG mixes ``uncond + (cond - uncond) * scale``; sampling with temperature, top-k, top-p
   (:func:`toklip_plugin.models.sampling.sample_logits`).
"""
from __future__ import annotations

import torch

from ...models.sampling import sample_logits

__all__ = ["generate", "guided_logits"]


def guided_logits(model, idx, cond_idx, input_pos, cfg_scale: float) -> torch.Tensor:
    """One prefill or decode call; with CFG the ``[cond; uncond]`` halves are mixed."""
    logits, _ = model(idx, cond_idx=cond_idx, input_pos=input_pos)
    if cfg_scale <= 1.0:
        return logits
    cond_logits, uncond_logits = torch.split(logits, len(logits) // 2, dim=0)
    return uncond_logits + (cond_logits - uncond_logits) * cfg_scale


@torch.no_grad()
def generate(model, cond: torch.Tensor, max_new_tokens: int, cfg_scale: float = 1.0,
             temperature: float = 1.0, top_k: int = 0, top_p: float = 1.0) -> torch.Tensor:
    """Class labels ``[B]`` -> int32 codes ``[B, max_new_tokens]`` (c2i, one condition token)."""
    cfg = cfg_scale > 1.0
    cond_combined = torch.cat([cond, torch.full_like(cond, model.num_classes)]) if cfg else cond
    with torch.device(cond.device):
        model.setup_caches(max_batch_size=len(cond_combined), max_seq_length=1 + max_new_tokens,
                           dtype=model.tok_embeddings.weight.dtype)
    seq = torch.empty((len(cond), max_new_tokens), dtype=torch.int, device=cond.device)
    sampling = dict(temperature=temperature, top_k=top_k, top_p=top_p)
    token = sample_logits(guided_logits(model, None, cond_combined, torch.arange(1, device=cond.device), cfg_scale)[:, -1],
                          **sampling)
    seq[:, :1] = token
    input_pos = torch.tensor([1], device=cond.device, dtype=torch.int)
    for i in range(1, max_new_tokens):
        x = torch.cat([token, token]) if cfg else token
        token = sample_logits(guided_logits(model, x, None, input_pos, cfg_scale)[:, -1], **sampling)
        input_pos += 1  # in place, as upstream: the model must not keep a reference to it
        seq[:, i:i + 1] = token
    return seq
