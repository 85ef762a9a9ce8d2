"""Precision names used across the package, in one place: ``fp32`` / ``bf16`` / ``fp16``.

Training configs, evaluation flags and the lmms-eval adapter all name a precision; this module
maps those names to dtypes and autocast contexts so that the three never disagree.
"""
from __future__ import annotations

import contextlib
from typing import ContextManager, Optional

import torch

__all__ = ["AMP_DTYPES", "DTYPES", "amp_dtype", "autocast", "parse_dtype"]

# mixed-precision names -> the autocast dtype (None: no autocast, run in the model's own dtype)
AMP_DTYPES: dict[str, Optional[torch.dtype]] = {
    "fp32": None, "none": None, "bf16": torch.bfloat16, "fp16": torch.float16,
}

# parameter dtypes, by the names Hugging Face / lmms-eval users type and by ours
DTYPES: dict[str, torch.dtype] = {
    "float32": torch.float32, "fp32": torch.float32,
    "bfloat16": torch.bfloat16, "bf16": torch.bfloat16,
    "float16": torch.float16, "fp16": torch.float16,
}


def amp_dtype(precision: str) -> Optional[torch.dtype]:
    """The autocast dtype of ``precision`` (one of :data:`AMP_DTYPES`); ``None`` for full precision."""
    if precision not in AMP_DTYPES:
        raise ValueError(f"precision must be one of {sorted(AMP_DTYPES)}; got {precision!r}")
    return AMP_DTYPES[precision]


def autocast(device: torch.device | str, precision: str) -> ContextManager:
    """``torch.autocast`` on ``device`` for ``precision``; a no-op context for fp32 / none."""
    dtype = amp_dtype(precision)
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(torch.device(device).type, dtype=dtype)


def parse_dtype(name: str | torch.dtype) -> torch.dtype:
    """A parameter dtype from its name (``float16``, ``bf16``, ...) or a ``torch.dtype``."""
    if isinstance(name, torch.dtype):
        return name
    if name not in DTYPES:
        raise ValueError(f"dtype must be one of {sorted(DTYPES)}; got {name!r}")
    return DTYPES[name]
