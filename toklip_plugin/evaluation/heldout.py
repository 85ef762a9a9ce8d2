"""Zero-shot classification and image-text retrieval on held-out embeddings (the trainer's and the demo's
evaluation hook: a cache file of codes and caption ids instead of image files).

Retrieval counts a hit when the top result carries the *same caption* as the query (ids in
``caption_ids``), so data sets in which several images share a caption are scored fairly.
"""
from __future__ import annotations

from pathlib import Path
from typing import Callable

import torch
from safetensors.torch import load_file

from ..models.toklip import TokLIP
from .metrics import retrieval_recall, zero_shot_accuracy

__all__ = ["embedding_metrics", "cache_evaluator", "EVAL_CACHE_KEYS"]

# tensors an evaluation cache file holds (see cache_evaluator)
EVAL_CACHE_KEYS = ("codes", "text", "labels", "caption_ids", "class_text")


def embedding_metrics(image_emb: torch.Tensor, text_emb: torch.Tensor, class_emb: torch.Tensor,
                      labels: torch.Tensor, caption_ids: torch.Tensor) -> dict[str, float]:
    """Zero-shot top-1 and both retrieval R@1 (row i of ``image_emb`` and ``text_emb`` is pair i), scored by
    :mod:`toklip_plugin.evaluation.metrics`: a text is correct for every image that carries its caption."""
    positives = caption_ids[:, None] == caption_ids[None, :]  # [texts, images]
    recall = retrieval_recall(image_emb, text_emb, positives, ks=(1,))
    return {"zeroshot_top1": zero_shot_accuracy(image_emb, class_emb, labels, topk=(1,))["top1"],
            "t2i_r1": recall["t2i_r1"], "i2t_r1": recall["i2t_r1"]}


def cache_evaluator(path: str | Path, batch_size: int = 256) -> Callable[[TokLIP], dict[str, float]]:
    """An evaluation hook for the trainer over a held-out cache file of :data:`EVAL_CACHE_KEYS`."""
    data = load_file(str(path))
    missing = [k for k in EVAL_CACHE_KEYS if k not in data]
    if missing:
        raise KeyError(f"evaluation cache {path} lacks {missing}; it must hold {list(EVAL_CACHE_KEYS)}")

    @torch.no_grad()
    def evaluate(model: TokLIP) -> dict[str, float]:
        device = model.logit_scale.device
        image_emb = torch.cat([model.encode_codes_and_pool(c.to(device))[1].cpu()
                               for c in data["codes"].split(batch_size)])
        text_emb = torch.cat([model.encode_text(t.to(device)).cpu() for t in data["text"].split(batch_size)])
        class_emb = model.encode_text(data["class_text"].to(device)).cpu()
        return embedding_metrics(image_emb, text_emb, class_emb, data["labels"], data["caption_ids"])

    return evaluate
