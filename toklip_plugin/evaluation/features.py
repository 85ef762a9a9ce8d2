"""Feature analysis (the paper's Section 3.3 / Figure 3): how close TokLIP's features are to its SigLIP teacher's.

For every image: the cosine similarity of the pooled embeddings, and the mean over grid positions
of the per-token cosine similarity (the teacher's token grid is resampled to TokLIP's when their
resolutions differ, by the same function that makes the all-token distillation target). The pooled features of TokLIP, the teacher and the raw VQ codes (the
mean code vector) are kept for a t-SNE plot.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Optional, Sequence

import torch
import torch.nn.functional as F

from ..models.teacher import resample_token_grid
from .runtime import run_batches

__all__ = ["teacher_similarity", "plot_tsne"]


def _features(model, teacher, images: torch.Tensor) -> dict[str, torch.Tensor]:
    codes = model.tokenize(images)
    tokens, pooled = model.encode_codes_and_pool(codes)
    t_pooled, t_tokens = teacher.image_features(images)
    if t_tokens.shape[-1] != tokens.shape[-1]:
        raise ValueError(f"teacher width {t_tokens.shape[-1]} differs from TokLIP's {tokens.shape[-1]}; "
                         "compare a TokLIP with the teacher it was distilled from")
    t_tokens = resample_token_grid(t_tokens, tokens.shape[1])
    return {
        "pooled_cosine": F.cosine_similarity(pooled, t_pooled, dim=-1),
        "token_cosine": F.cosine_similarity(tokens, t_tokens, dim=-1).mean(dim=1),
        "toklip": pooled,
        "teacher": t_pooled,
        "vq": model.vq.quantize.codebook()[codes].mean(dim=1),
    }


def teacher_similarity(model, teacher, loader, device: torch.device, amp: str = "none",
                       total: Optional[int] = None) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
    """(summary, per-image features and labels) for TokLIP ``model`` vs ``teacher`` (``image_features(images)``
    returning ``(pooled, tokens)``, e.g. ``toklip_plugin.models.teacher.SigLIPTeacher``)."""
    encoded = run_batches(lambda x: _features(model, teacher, x), loader, device, amp, desc="similarity", total=total)
    f = encoded.features
    summary = {
        "pooled_cosine_mean": f["pooled_cosine"].mean().item(),
        "pooled_cosine_std": f["pooled_cosine"].std().item() if len(encoded) > 1 else 0.0,
        "token_cosine_mean": f["token_cosine"].mean().item(),
        "token_cosine_std": f["token_cosine"].std().item() if len(encoded) > 1 else 0.0,
        "images": len(encoded),
        **encoded.skip_report(),
    }
    return summary, {**f, "labels": encoded.targets}


def plot_tsne(features: dict[str, torch.Tensor], labels: torch.Tensor, path: str | Path,
              names: Sequence[str] = ("vq", "toklip", "teacher"), classnames: Optional[Sequence[str]] = None,
              seed: int = 0) -> Path:
    """One t-SNE panel per feature set, points coloured by label; written as a PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from sklearn.manifold import TSNE

    n = len(labels)
    if n < 3:
        raise ValueError(f"t-SNE needs at least 3 images, got {n}")
    fig, axes = plt.subplots(1, len(names), figsize=(4 * len(names), 4), squeeze=False)
    for ax, name in zip(axes[0], names):
        points = TSNE(n_components=2, perplexity=min(30.0, (n - 1) / 3), init="pca", random_state=seed
                      ).fit_transform(F.normalize(features[name], dim=-1).numpy())
        scatter = ax.scatter(points[:, 0], points[:, 1], c=labels.numpy(), cmap="tab20", s=8)
        ax.set_title(name)
        ax.set_xticks([])
        ax.set_yticks([])
    if classnames is not None and len(classnames) <= 20:
        handles = scatter.legend_elements()[0]
        fig.legend(handles, [classnames[i] for i in sorted(set(labels.tolist()))], loc="lower center",
                   ncol=min(len(handles), 5), fontsize=8)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=150, bbox_inches="tight")
    plt.close(fig)
    return path
