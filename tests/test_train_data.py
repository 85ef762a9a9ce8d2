"""The data stream: ranks split the global batch, resuming with workers continues the same order."""
from __future__ import annotations

import itertools
import json

import torch

from toklip_plugin.factory import get_tokenizer
from toklip_plugin.train.config import DataSection
from toklip_plugin.train.data import StreamPosition, build_loader, expand_shards
from toklip_plugin.train.synthetic import make_samples, write_csv, write_shards
from toklip_plugin.transforms import image_transform

TOKENIZER = get_tokenizer("toklip-tiny")
TRANSFORM = image_transform(128)


def _batches(config: DataSection, batch_size: int, position: StreamPosition, count: int) -> list[dict]:
    loader = build_loader(config, TRANSFORM, TOKENIZER, batch_size, position, seed=3)
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


def test_resuming_with_worker_processes_continues_the_uninterrupted_order(tmp_path):
    pattern = write_shards(make_samples(16, seed=2), tmp_path, per_shard=4)
    config = DataSection(kind="wds", train=pattern, shuffle_buffer=4, workers=2)
    full = _batches(config, 2, StreamPosition(), 10)
    resumed = _batches(config, 2, StreamPosition(batches=3), 7)
    for expected, got in zip(full[3:], resumed):
        assert torch.equal(expected["text"], got["text"]) and torch.equal(expected["images"], got["images"])
