"""Torch's CPU intra-op thread count, set for a block and restored after it.

The demos take ``--threads``; the sampling benchmarks run one thread on a CPU (per-token matmuls of
tiny models gain little from threads that wait for each other).
"""
from __future__ import annotations

import contextlib
from typing import Iterator, Optional

import torch

__all__ = ["torch_threads"]


@contextlib.contextmanager
def torch_threads(count: Optional[int]) -> Iterator[None]:
    """Run the block with ``count`` intra-op threads (``None``: leave torch's setting), then restore the caller's."""
    if count is not None and count < 1:
        raise ValueError(f"the thread count must be at least 1, got {count}")
    before = torch.get_num_threads()
    if count is not None:
        torch.set_num_threads(count)
    try:
        yield
    finally:
        torch.set_num_threads(before)
