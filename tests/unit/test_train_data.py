"""The data stream: ranks split the global batch, resuming with workers continues the same order."""
from __future__ import annotations

import itertools
import json

import pytest
import torch

from toklip_plugin.factory import get_tokenizer
from toklip_plugin.train.config import DataSection
from toklip_plugin.io import expand_shards
from toklip_plugin.train.data import StreamPosition, build_loader
from toklip_plugin.demo.synthetic import make_samples, write_csv, write_shards
from toklip_plugin.transforms import image_transform, train_transform

TOKENIZER = get_tokenizer("toklip-tiny")
TRANSFORM = image_transform(128)


def _batches(config: DataSection, batch_size: int, position: StreamPosition, count: int,
             transform=TRANSFORM) -> list[dict]:
    loader = build_loader(config, transform, TOKENIZER, batch_size, position, seed=3)
    return list(itertools.islice(loader, count))


def test_brace_lists_and_globs_expand_to_sorted_shards(tmp_path):
    pattern = write_shards(make_samples(6, seed=0), tmp_path, per_shard=2)
    assert expand_shards(pattern) == sorted(str(p) for p in tmp_path.glob("*.tar"))
    assert expand_shards(f"{tmp_path}/*-00000.tar::{tmp_path}/*-00002.tar") == [
        str(tmp_path / "shard-00000.tar"), str(tmp_path / "shard-00002.tar")]


def test_two_ranks_together_read_the_single_process_global_batch(tmp_path):
    rows = [{"image": f"images/{i:06d}.png", "caption": f"caption {i}"} for i in range(12)]
    write_csv(make_samples(12, seed=1), tmp_path)
    path = tmp_path / "samples.jsonl"
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    config = DataSection(kind="jsonl", train=str(path))
    single = _batches(config, 4, StreamPosition(), 5)  # crosses into the second epoch
    ranks = [_batches(config, 2, StreamPosition(rank, 2), 5) for rank in (0, 1)]
    for step, batch in enumerate(single):
        union = torch.cat([ranks[0][step]["text"], ranks[1][step]["text"]])
        assert sorted(map(tuple, union.tolist())) == sorted(map(tuple, batch["text"].tolist()))


@pytest.mark.parametrize("workers", [0, 2])
def test_resuming_continues_the_uninterrupted_order_and_random_crops(tmp_path, workers):
    pattern = write_shards(make_samples(16, seed=2), tmp_path, per_shard=4)
    config = DataSection(kind="wds", train=pattern, shuffle_buffer=4, workers=workers)
    full = _batches(config, 2, StreamPosition(), 10, train_transform(128))
    torch.manual_seed(1234)  # the process RNG differs from the first run's: crops must not depend on it
    resumed = _batches(config, 2, StreamPosition(batches=3), 7, train_transform(128))
    assert not torch.equal(full[0]["images"], _batches(config, 2, StreamPosition(), 1)[0]["images"])  # cropped
    for expected, got in zip(full[3:], resumed):
        assert torch.equal(expected["text"], got["text"]) and torch.equal(expected["images"], got["images"])


def test_images_below_min_size_are_skipped_and_counted(tmp_path):
    small, large = make_samples(3, seed=4, size=64), make_samples(5, seed=5, size=160)
    pattern = write_shards(small + large, tmp_path, per_shard=8)  # one shard, 3 small images among 8
    config = DataSection(kind="wds", train=pattern, shuffle_buffer=1, min_size=100)
    batches = _batches(config, 5, StreamPosition(), 2)  # one epoch: the 5 large images, then the next epoch
    assert sum(int(b["skipped"]) for b in batches) == 2 * 3
    kept = _batches(DataSection(kind="wds", train=pattern, shuffle_buffer=1, min_size=64), 8, StreamPosition(), 1)
    assert int(kept[0]["skipped"]) == 0  # a side equal to min_size is kept
