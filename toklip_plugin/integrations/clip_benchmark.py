"""CLIP_benchmark (PyPI ``clip-benchmark``) on TokLIP, through CLIP_benchmark's own command line and code.

    python -m toklip_plugin.integrations.clip_benchmark eval --model toklip-l --pretrained released \\
        --dataset imagenet1k --dataset_root /data/imagenet --recall_k 1 5 10

takes CLIP_benchmark's flags unchanged: this module adds a ``toklip`` model type to CLIP_benchmark's table
of loaders (``clip_benchmark.models.TYPE2FUNC``: a loader returns ``(model, transform, tokenizer)``) and runs
CLIP_benchmark's ``main``. ``eval`` without ``--model_type`` uses ``toklip``.

The ``toklip`` loader is :func:`toklip_plugin.create_model_from_pretrained`: ``--model`` is a TokLIP name,
saved directory or config file; ``--pretrained`` is ``released`` (the config's released weights, found in
``$TOKLIP_HOME`` or the Hugging Face cache, never random weights), a released-layout ``.pt`` or one of our
directories / ``.safetensors``; ``--model_cache_dir`` is not used. Images get TokLIP's transform ([-1, 1]).
CLIP_benchmark's ``open_clip`` model type also builds TokLIP (``toklip_plugin`` registers its configs with
open_clip), but with open_clip's default OpenAI normalisation, which TokLIP was not trained with.
"""
from __future__ import annotations

import sys
from typing import Callable, Optional, Sequence

import torch

from ..factory import get_tokenizer
from ..open_clip_api import create_model_from_pretrained

__all__ = ["MODEL_TYPE", "load_toklip_for_clip_benchmark", "register", "main"]

MODEL_TYPE = "toklip"


def load_toklip_for_clip_benchmark(model_name: str, pretrained: str, cache_dir: Optional[str] = None,
                                   device: str | torch.device = "cpu") -> tuple[torch.nn.Module, Callable, Callable]:
    """CLIP_benchmark's loader contract: ``(model, transform, tokenizer)`` for ``--model`` / ``--pretrained``."""
    model, transform = create_model_from_pretrained(model_name, pretrained, device=device)
    return model, transform, get_tokenizer(model_name)


def register() -> None:
    """Add the ``toklip`` model type to CLIP_benchmark (idempotent).

    Its command line checks ``--model_type`` against the list ``clip_benchmark.models.MODEL_TYPES`` it
    imported, so the list is extended in place.
    """
    from clip_benchmark import models

    models.TYPE2FUNC[MODEL_TYPE] = load_toklip_for_clip_benchmark
    if MODEL_TYPE not in models.MODEL_TYPES:
        models.MODEL_TYPES.append(MODEL_TYPE)
    _repair_topk_accuracy()


def _repair_topk_accuracy() -> None:
    """CLIP_benchmark 1.6.2's zero-shot ``accuracy`` converts a one-element array with ``float()``, which numpy >= 2.4
    refuses (LAION-AI/CLIP_benchmark#147, open), so every zero-shot run fails. Where it fails on a probe, put in
    :func:`_topk_accuracy`, the same count done on a 0-dimensional sum; a fixed CLIP_benchmark is left alone."""
    from clip_benchmark.metrics import zeroshot_classification

    try:
        zeroshot_classification.accuracy(torch.zeros(1, 1), torch.zeros(1, dtype=torch.long))
    except TypeError:
        zeroshot_classification.accuracy = _topk_accuracy


def _topk_accuracy(output: torch.Tensor, target: torch.Tensor, topk: Sequence[int] = (1,)) -> list[float]:
    """Share of samples whose target is among the ``k`` highest ``output`` scores, for each ``k`` in ``topk``."""
    hits = output.topk(max(topk), dim=1).indices == target.view(-1, 1)
    return [int(hits[:, :k].sum()) / len(target) for k in topk]


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Run CLIP_benchmark's ``main`` with ``argv`` (default: this process's arguments)."""
    register()
    from clip_benchmark.cli import main as clip_benchmark_main

    args = list(sys.argv[1:] if argv is None else argv)
    if args[:1] == ["eval"] and not any(a == "--model_type" or a.startswith("--model_type=") for a in args):
        args += ["--model_type", MODEL_TYPE]
    saved, sys.argv = sys.argv, ["clip_benchmark", *args]  # CLIP_benchmark's parser reads sys.argv
    try:
        clip_benchmark_main()
    finally:
        sys.argv = saved
    return 0


if __name__ == "__main__":
    sys.exit(main())
