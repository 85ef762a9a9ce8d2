"""The frozen text tower's LRU cache: the embeddings of encoding every batch, the tower skipped when all rows hit."""
from __future__ import annotations

import torch

from toklip_plugin.train.text_cache import TextEmbeddingCache


class CountingEncoder:
    """A stand-in text tower: row -> [sum of ids, first id]; records the rows of every call."""

    def __init__(self):
        self.calls: list[list[list[int]]] = []

    def __call__(self, rows: torch.Tensor) -> torch.Tensor:
        self.calls.append(rows.tolist())
        return torch.stack([rows.sum(dim=1), rows[:, 0]], dim=1).float()


def test_repeated_rows_are_encoded_once_and_looked_up_afterwards():
    encode, cache = CountingEncoder(), TextEmbeddingCache(size=8)
    first = torch.tensor([[1, 2], [3, 4], [1, 2]])
    assert cache(first, encode).tolist() == [[3.0, 1.0], [7.0, 3.0], [3.0, 1.0]]
    assert encode.calls == [first.tolist()]
    second = torch.tensor([[3, 4], [5, 6], [1, 2]])
    assert cache(second, encode).tolist() == [[7.0, 3.0], [11.0, 5.0], [3.0, 1.0]]
    assert (cache.hits, cache.misses) == (3, 3)  # the repeat within the first batch is a hit too
    third = torch.tensor([[5, 6], [1, 2], [3, 4], [5, 6]])
    assert cache(third, encode).tolist() == [[11.0, 5.0], [3.0, 1.0], [7.0, 3.0], [11.0, 5.0]]
    assert len(encode.calls) == 2  # a batch of known rows runs no encoder at all


def test_the_least_recently_used_row_is_dropped_beyond_the_size():
    encode, cache = CountingEncoder(), TextEmbeddingCache(size=2)
    a, b, c = torch.tensor([[1, 0]]), torch.tensor([[2, 0]]), torch.tensor([[3, 0]])
    for rows in (a, b, a, c):  # using a again makes b the least recently used when c arrives
        cache(rows, encode)
    assert len(cache.entries) == 2
    calls = len(encode.calls)
    cache(a, encode)
    assert len(encode.calls) == calls
    cache(b, encode)
    assert len(encode.calls) == calls + 1


def test_a_stored_entry_owns_its_storage_instead_of_keeping_the_batch_alive():
    cache = TextEmbeddingCache(size=8)
    batch = torch.tensor([[1, 2], [3, 4], [5, 6]])
    cache(batch, CountingEncoder())
    for entry in cache.entries.values():
        assert entry.untyped_storage().nbytes() == entry.numel() * entry.element_size()  # 2 floats, not the batch's 6

