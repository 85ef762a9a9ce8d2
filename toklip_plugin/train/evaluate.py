"""Zero-shot classification and image-text retrieval on held-out embeddings.

Retrieval counts a hit when the top result carries the *same caption* as the query (ids in
``caption_ids``), so data sets in which several images share a caption are scored fairly.
"""
from __future__ import annotations

from pathlib import Path
from typing import Callable

import torch
import torch.nn.functional as F
from safetensors.torch import load_file

from ..models.toklip import TokLIP

__all__ = ["zero_shot_top1", "retrieval_r1", "embedding_metrics", "cache_evaluator", "EVAL_CACHE_KEYS"]

# tensors an evaluation cache file holds (see cache_evaluator)
EVAL_CACHE_KEYS = ("codes", "text", "labels", "caption_ids", "class_text")


def zero_shot_top1(image_emb: torch.Tensor, class_emb: torch.Tensor, labels: torch.Tensor) -> float:
    """Share of images whose most similar class prompt is their label."""
    scores = F.normalize(image_emb, dim=-1) @ F.normalize(class_emb, dim=-1).t()
    return (scores.argmax(dim=1) == labels).float().mean().item()


def retrieval_r1(image_emb: torch.Tensor, text_emb: torch.Tensor, caption_ids: torch.Tensor) -> dict[str, float]:
    """Text->image and image->text recall@1 over paired embeddings (row i of each is pair i)."""
    sim = F.normalize(text_emb, dim=-1) @ F.normalize(image_emb, dim=-1).t()  # [texts, images]
    t2i = (caption_ids[sim.argmax(dim=1)] == caption_ids).float().mean().item()
    i2t = (caption_ids[sim.argmax(dim=0)] == caption_ids).float().mean().item()
    return {"t2i_r1": t2i, "i2t_r1": i2t}


def embedding_metrics(image_emb: torch.Tensor, text_emb: torch.Tensor, class_emb: torch.Tensor,
                      labels: torch.Tensor, caption_ids: torch.Tensor) -> dict[str, float]:
    return {"zeroshot_top1": zero_shot_top1(image_emb, class_emb, labels),
            **retrieval_r1(image_emb, text_emb, caption_ids)}


def cache_evaluator(path: str | Path, batch_size: int = 256) -> Callable[[TokLIP], dict[str, float]]:
    """An evaluation hook for the trainer over a held-out cache file of :data:`EVAL_CACHE_KEYS`."""
    data = load_file(str(path))
    missing = [k for k in EVAL_CACHE_KEYS if k not in data]
    if missing:
        raise KeyError(f"evaluation cache {path} lacks {missing}; it must hold {list(EVAL_CACHE_KEYS)}")

    @torch.no_grad()
    def evaluate(model: TokLIP) -> dict[str, float]:
        device = model.logit_scale.device
        image_emb = torch.cat([model.pool_tokens(model.encode_codes(c.to(device))).cpu()
                               for c in data["codes"].split(batch_size)])
        text_emb = torch.cat([model.encode_text(t.to(device)).cpu() for t in data["text"].split(batch_size)])
        class_emb = model.encode_text(data["class_text"].to(device)).cpu()
        return embedding_metrics(image_emb, text_emb, class_emb, data["labels"], data["caption_ids"])

    return evaluate
