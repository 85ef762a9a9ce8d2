"""A bounded LRU cache of a frozen text tower's outputs, keyed by the token-id row.

With the text tower locked (the paper's recipe) a caption's embedding never changes, and
captions repeat across epochs (and within data sets of templated captions): each distinct row is
encoded once and then looked up. The keys are taken from the host copy of the token ids, so a
lookup never waits for the device.

A batch with any new row runs the tower once on the *whole* batch, not on the new rows alone: the
tower is not batch-size invariant in floating point (rows encoded in a batch of 5 differ from the
same rows in a batch of 8 by about 1e-6 on CPU), while in a batch of the same shape a row's
embedding does not depend on its neighbours. So the cached run, and a run resumed with an empty
cache, keep the uncached run's embeddings bit for bit; the tower is skipped for batches that hit.
"""
from __future__ import annotations

from collections import OrderedDict
from typing import Callable

import torch

__all__ = ["TextEmbeddingCache"]


class TextEmbeddingCache:
    """``cache(text, encode)``: the embeddings of the ``[B, L]`` token ids ``text`` (on the host); when a row is
    not cached, one call ``encode(text)`` encodes the batch; the least recently used entries go beyond ``size``."""

    def __init__(self, size: int):
        if size <= 0:
            raise ValueError(f"a text cache needs a positive size, got {size}")
        self.size = size
        self.entries: OrderedDict[bytes, torch.Tensor] = OrderedDict()
        self.hits = self.misses = 0

    def __call__(self, text: torch.Tensor, encode: Callable[[torch.Tensor], torch.Tensor]) -> torch.Tensor:
        keys = [row.numpy().tobytes() for row in text.cpu()]
        new = {key for key in keys if key not in self.entries}
        self.misses += len(new)
        self.hits += len(keys) - len(new)
        if not new:
            return torch.stack([self._touch(key) for key in keys])
        encoded = encode(text)
        for key, value in zip(keys, encoded):
            if key in new:
                self._store(key, value)
            else:
                self._touch(key)
        return encoded

    def _touch(self, key: bytes) -> torch.Tensor:
        self.entries.move_to_end(key)
        return self.entries[key]

    def _store(self, key: bytes, value: torch.Tensor) -> None:
        self.entries[key] = value.clone()  # its own storage: a view of the batch's output would keep the batch alive
        if len(self.entries) > self.size:
            self.entries.popitem(last=False)
