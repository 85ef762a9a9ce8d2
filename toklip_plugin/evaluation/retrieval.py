"""Image-text retrieval (the paper's Table 2 "COCO TR@1 / IR@1"): COCO 5K and Flickr30K 1K test splits."""
from __future__ import annotations

from pathlib import Path
from typing import Any, Callable, Sequence

import torch

from ..precision import autocast
from ..progress import ProgressBar
from .data import ImageFiles, make_loader
from .metrics import caption_positives, retrieval_recall
from .runtime import run_batches

__all__ = ["encode_texts", "evaluate_retrieval"]


@torch.no_grad()
def encode_texts(model, tokenizer: Callable, texts: Sequence[str], batch_size: int, device: torch.device,
                 amp: str = "none") -> torch.Tensor:
    """``[T, E]`` normalised text embeddings, float32 on CPU."""
    out = []
    for start in ProgressBar(range(0, len(texts), batch_size), desc="captions", unit="batch"):
        with autocast(device, amp):
            ids = tokenizer(list(texts[start:start + batch_size])).to(device)
            out.append(model.encode_text(ids, normalize=True).float().cpu())
    return torch.cat(out)


def evaluate_retrieval(model, tokenizer: Callable, pairs: Sequence[tuple[Path, list[str]]], transform: Callable,
                       device: torch.device, batch_size: int = 64, workers: int = 0, amp: str = "none",
                       ks: Sequence[int] = (1, 5, 10)) -> dict[str, Any]:
    """Recall@k both ways over ``[(image path, captions), ...]`` (see :func:`read_captions`).

    Unreadable images are skipped and counted; their captions leave the pool too.
    """
    texts, positives = caption_positives([captions for _, captions in pairs])
    loader = make_loader(ImageFiles([path for path, _ in pairs], transform), batch_size, workers)
    encoded = run_batches(lambda x: {"image": model.encode_image(x, normalize=True)}, loader, device, amp,
                          desc="images", total=len(pairs))
    positives = positives[:, encoded.targets]
    kept_texts = positives.any(dim=1)
    text_emb = encode_texts(model, tokenizer, [t for t, keep in zip(texts, kept_texts.tolist()) if keep],
                            batch_size, device, amp)
    return {
        **retrieval_recall(encoded.features["image"], text_emb, positives[kept_texts], ks),
        "images": len(encoded),
        "texts": int(kept_texts.sum()),
        **encoded.skip_report(),
    }
