"""Zero-shot classification (the paper's Table 2 "IN Top1"): class prompts vs pooled image embeddings."""
from __future__ import annotations

from typing import Any, Callable, Sequence

import torch
from open_clip.zero_shot_classifier import build_zero_shot_classifier
from open_clip.zero_shot_metadata import OPENAI_IMAGENET_TEMPLATES, SIMPLE_IMAGENET_TEMPLATES

from ..precision import autocast
from ..progress import is_terminal
from .metrics import zero_shot_accuracy
from .runtime import run_batches

__all__ = ["TEMPLATES", "class_embeddings", "evaluate_zero_shot"]

# open_clip's ImageNet prompt sets: the 80 OpenAI prompts (CLIP / SigLIP evaluation) or the 7 of its 'simple' set
TEMPLATES = {"openai": OPENAI_IMAGENET_TEMPLATES, "simple": SIMPLE_IMAGENET_TEMPLATES}


def class_embeddings(model, tokenizer: Callable, classnames: Sequence[str], templates: Sequence,
                     device: torch.device, amp: str = "none") -> torch.Tensor:
    """``[classes, E]``: the normalised mean of each class's normalised prompt embeddings (open_clip's recipe)."""
    with autocast(device, amp):
        weights = build_zero_shot_classifier(model, tokenizer, list(classnames), list(templates),
                                             num_classes_per_batch=10, device=device,
                                             use_tqdm=is_terminal())  # open_clip's own bar: none in a log
    return weights.float().t().cpu()


def evaluate_zero_shot(model, tokenizer: Callable, loader, classnames: Sequence[str], device: torch.device,
                       templates: Sequence = OPENAI_IMAGENET_TEMPLATES, amp: str = "none",
                       topk: Sequence[int] = (1, 5), total: int | None = None) -> dict[str, Any]:
    """Top-k accuracy of ``model`` (anything with ``encode_image`` / ``encode_text``) over a labelled loader."""
    classes = class_embeddings(model, tokenizer, classnames, templates, device, amp)
    encoded = run_batches(lambda x: {"image": model.encode_image(x, normalize=True)}, loader, device, amp,
                          desc="zero-shot", total=total)
    if int(encoded.targets.max()) >= len(classnames):
        raise ValueError(f"label {int(encoded.targets.max())} has no class name ({len(classnames)} given)")
    return {
        **zero_shot_accuracy(encoded.features["image"], classes, encoded.targets, topk),
        "images": len(encoded),
        "classes": len(classnames),
        "templates": len(templates),
        **encoded.skip_report(),
    }
