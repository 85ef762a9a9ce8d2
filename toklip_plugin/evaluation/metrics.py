"""Zero-shot classification, image-text retrieval and reconstruction metrics over tensors.

One implementation for every caller: ``toklip-eval`` (ImageNet, COCO, Flickr30K) and the
trainer's demo evaluation. Ranking follows the COCO / CLIP retrieval protocol: a query is
answered within the top k when *any* of its correct candidates is (an image with five
captions is retrieved if one of them is). Ties count against the model: a correct candidate is
ahead of a wrong one only if it scores strictly higher, so a collapsed model whose embeddings
are all equal scores 0, not 100%.
"""
from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F

__all__ = [
    "first_hit_rank",
    "recall_at_k",
    "zero_shot_accuracy",
    "retrieval_recall",
    "caption_positives",
    "psnr",
    "ssim",
]


def first_hit_rank(scores: torch.Tensor, positives: torch.Tensor, chunk: int = 1024) -> torch.Tensor:
    """0-based rank of each query's best correct candidate: the number of wrong candidates scoring at least as high.

    ``scores`` and ``positives`` are ``[queries, candidates]``; every query needs a positive.
    """
    if scores.shape != positives.shape:
        raise ValueError(f"scores {tuple(scores.shape)} and positives {tuple(positives.shape)} differ in shape")
    if not positives.any(dim=1).all():
        missing = (~positives.any(dim=1)).nonzero().flatten()[:10].tolist()
        raise ValueError(f"queries {missing} have no correct candidate; drop them before ranking")
    ranks = []
    for s, p in zip(scores.float().split(chunk), positives.bool().split(chunk)):
        best = s.masked_fill(~p, float("-inf")).amax(dim=1, keepdim=True)
        ranks.append(((s >= best) & ~p).sum(dim=1))
    return torch.cat(ranks)


def recall_at_k(scores: torch.Tensor, positives: torch.Tensor, ks: Sequence[int]) -> dict[int, float]:
    """Share of queries with a correct candidate among their top ``k`` (see :func:`first_hit_rank`)."""
    rank = first_hit_rank(scores, positives)
    return {k: (rank < k).float().mean().item() for k in ks}


def zero_shot_accuracy(image_emb: torch.Tensor, class_emb: torch.Tensor, labels: torch.Tensor,
                       topk: Sequence[int] = (1, 5)) -> dict[str, float]:
    """Top-k accuracy of classifying images by their most similar class embedding: ``{"top1": ..., "top5": ...}``.

    ``class_emb`` is ``[classes, E]`` (e.g. the mean of prompt embeddings per class).
    """
    scores = F.normalize(image_emb.float(), dim=-1) @ F.normalize(class_emb.float(), dim=-1).t()
    positives = F.one_hot(labels.long(), num_classes=class_emb.shape[0]).bool()
    return {f"top{k}": v for k, v in recall_at_k(scores, positives, topk).items()}


def retrieval_recall(image_emb: torch.Tensor, text_emb: torch.Tensor, positives: torch.Tensor,
                     ks: Sequence[int] = (1, 5, 10)) -> dict[str, float]:
    """Image->text (``i2t_rK``, the paper's TR@K) and text->image (``t2i_rK``, IR@K) recall.

    ``positives[t, i]`` is True when text ``t`` describes image ``i``.
    """
    sim = F.normalize(text_emb.float(), dim=-1) @ F.normalize(image_emb.float(), dim=-1).t()
    i2t = recall_at_k(sim.t(), positives.t(), ks)
    t2i = recall_at_k(sim, positives, ks)
    return {**{f"i2t_r{k}": v for k, v in i2t.items()}, **{f"t2i_r{k}": v for k, v in t2i.items()}}


def caption_positives(captions: Sequence[Sequence[str]]) -> tuple[list[str], torch.Tensor]:
    """Captions per image -> (every caption, in order; ``positives [texts, images]``).

    Text ``t`` is correct for image ``i`` when the same string is among ``i``'s captions, so a
    caption that several images share (COCO has a few) is not a wrong answer for any of them.
    """
    texts = [text for per_image in captions for text in per_image]
    owners: dict[str, list[int]] = {}
    for image, per_image in enumerate(captions):
        for text in set(per_image):
            owners.setdefault(text, []).append(image)
    positives = torch.zeros(len(texts), len(captions), dtype=torch.bool)
    for t, text in enumerate(texts):
        positives[t, owners[text]] = True
    return texts, positives


def psnr(images: torch.Tensor, references: torch.Tensor) -> torch.Tensor:
    """Per-image PSNR in dB for images in [0, 1], ``[B, C, H, W]``; identical images give ``inf``."""
    mse = (images.float() - references.float()).pow(2).flatten(1).mean(dim=1)
    return 10 * torch.log10(1.0 / mse)


def ssim(images: torch.Tensor, references: torch.Tensor, window: int = 11, sigma: float = 1.5) -> torch.Tensor:
    """Per-image SSIM (Wang et al. 2004: Gaussian window 11 / sigma 1.5, K1 0.01, K2 0.03) for images in [0, 1].

    Computed in float64: the local variances are differences of nearly equal moments.
    """
    x, y = images.double(), references.double()
    channels = x.shape[1]
    coords = torch.arange(window, dtype=torch.float64) - (window - 1) / 2
    g = torch.exp(-coords**2 / (2 * sigma**2))
    g = g / g.sum()
    kernel = (g[:, None] * g[None, :]).expand(channels, 1, window, window).to(x.device)

    def blur(t: torch.Tensor) -> torch.Tensor:
        return F.conv2d(t, kernel, groups=channels)

    mu_x, mu_y = blur(x), blur(y)
    var_x = blur(x * x) - mu_x**2
    var_y = blur(y * y) - mu_y**2
    cov = blur(x * y) - mu_x * mu_y
    c1, c2 = 0.01**2, 0.03**2
    index = ((2 * mu_x * mu_y + c1) * (2 * cov + c2)) / ((mu_x**2 + mu_y**2 + c1) * (var_x + var_y + c2))
    return index.flatten(1).mean(dim=1).float()
