"""The data stream: ranks split the global batch, resuming with workers continues the same order."""
from __future__ import annotations

import itertools
import json
import re
import tarfile
from pathlib import Path

import pytest
import torch

from toklip_plugin.factory import get_tokenizer
from toklip_plugin.train.config import DataSection
from toklip_plugin.io import expand_shards
from toklip_plugin.train.data import (DamagedShard, SampleDecoder, SampleStream, StreamPosition, build_loader,
                                      resume_position, source_records)
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


def _position_after(batches: list[dict], workers: int) -> StreamPosition:
    """What the trainer keeps: the cursor of the last batch consumed from each worker."""
    position = StreamPosition.start(0, 1, max(workers, 1))
    for batch in batches:
        position = position.after(batch["cursor"])
    return position


@pytest.mark.parametrize("workers", [0, 2])
def test_resuming_continues_the_uninterrupted_batches_crops_and_skip_counts(tmp_path, workers):
    samples = make_samples(20, seed=2)
    samples[1::5] = make_samples(4, seed=6, size=64)  # 4 of 20 below min_size: skipped and counted
    pattern = write_shards(samples, tmp_path, per_shard=4)
    config = DataSection(kind="wds", train=pattern, shuffle_buffer=4, workers=workers, min_size=100)
    full = _batches(config, 2, StreamPosition(), 12, train_transform(128))
    assert sum(int(b["skipped"]) for b in full) > 0
    for k in (3, 8):  # 8: into the second epoch (16 usable samples in one)
        torch.manual_seed(1234)  # the process RNG differs from the first run's: crops must not depend on it
        resumed = _batches(config, 2, _position_after(full[:k], workers), 12 - k, train_transform(128))
        for expected, got in zip(full[k:], resumed, strict=True):
            assert sorted(expected) == sorted(got)
            assert all(torch.equal(expected[key], got[key]) for key in expected)  # images, text, skipped, cursor
    uncropped = _batches(DataSection(kind="wds", train=pattern, shuffle_buffer=4, min_size=100), 2, StreamPosition(), 1)
    assert not torch.equal(full[0]["images"], uncropped[0]["images"])  # the crops were random


def test_resuming_decodes_no_sample_before_its_position(tmp_path):
    write_csv(make_samples(24, seed=7), tmp_path)
    config = DataSection(kind="csv", train=str(tmp_path / "samples.csv"))
    decoder = SampleDecoder(config, TRANSFORM, TOKENIZER)
    decoded = []

    def counting(record):
        decoded.append(record["caption"])
        return decoder(record)

    full = list(itertools.islice(SampleStream(config, counting, 4, seed=3), 5))
    decoded.clear()
    position = _position_after(full[:4], 0)
    resumed = next(iter(SampleStream(config, counting, 4, position, seed=3)))
    assert len(decoded) == 4  # the 16 samples before the position were passed over undecoded
    assert torch.equal(resumed["text"], full[4]["text"])


def test_images_below_min_size_are_skipped_and_counted(tmp_path):
    small, large = make_samples(3, seed=4, size=64), make_samples(5, seed=5, size=160)
    pattern = write_shards(small + large, tmp_path, per_shard=8)  # one shard, 3 small images among 8
    config = DataSection(kind="wds", train=pattern, shuffle_buffer=1, min_size=100)
    batches = _batches(config, 5, StreamPosition(), 2)  # one epoch: the 5 large images, then the next epoch
    assert sum(int(b["skipped"]) for b in batches) == 2 * 3
    kept = _batches(DataSection(kind="wds", train=pattern, shuffle_buffer=1, min_size=64), 8, StreamPosition(), 1)
    assert int(kept[0]["skipped"]) == 0  # a side equal to min_size is kept


def _numbered_rows(tmp_path, count: int) -> DataSection:
    path = tmp_path / "rows.jsonl"
    path.write_text("".join(json.dumps({"image": "unused.png", "caption": str(i)}) + "\n" for i in range(count)))
    return DataSection(kind="jsonl", train=str(path))


def _row_ids(record: dict) -> dict[str, torch.Tensor]:
    return {"id": torch.tensor(int(record["caption"]))}


def _read(config: DataSection, position: StreamPosition, batches: int) -> tuple[list[int], StreamPosition]:
    """The row ids a rank reads in ``batches`` batches of 4 from ``position``, and its position after them."""
    ids = []
    for batch in itertools.islice(SampleStream(config, _row_ids, 4, position, seed=3), batches):
        ids += batch["id"].tolist()
        position = position.after(batch["cursor"])
    return ids, position


@pytest.mark.parametrize("old_world,new_world", [(1, 2), (2, 1), (2, 3)])
def test_another_number_of_ranks_reads_the_rest_of_the_epoch_once(tmp_path, old_world, new_world):
    config = _numbered_rows(tmp_path, 64)
    seen, cursors = [], []
    for rank in range(old_world):  # 2 batches of 4 per old rank
        ids, position = _read(config, StreamPosition.start(rank, old_world, 1), 2)
        seen += ids
        cursors += position.cursors
    saved = {"batches": 2, "skipped": 0, "workers": 1, "next_worker": 0, "cursors": cursors}
    remaining = (64 - len(seen)) // (4 * new_world)  # batches left in the epoch, per new rank
    for rank in range(new_world):
        ids, _ = _read(config, resume_position(saved, old_world, rank, new_world, 1), remaining)
        seen += ids
    assert sorted(seen) == list(range(64))  # every record of the epoch once: none repeated, none lost


def test_a_checkpoint_without_cursors_replays_and_is_refused_on_another_number_of_ranks():
    legacy = {"batches": 5, "skipped": 2}
    with pytest.warns(UserWarning, match="replaying the stream up to batch 5"):
        position = resume_position(legacy, 2, 1, 2, 2)
    assert position == StreamPosition(1, 2, (None, None), next_worker=1, batches=5)
    with pytest.raises(ValueError, match="written by 2 ranks before data cursors were saved.*resume it with 2"):
        resume_position(legacy, 2, 0, 1, 1)


def test_a_truncated_or_empty_shard_ends_in_one_damaged_record(tmp_path):
    pattern = write_shards(make_samples(12, seed=8), tmp_path, per_shard=4)
    shards = expand_shards(pattern)
    with tarfile.open(shards[1]) as tar:  # where the third sample's image starts, read without webdataset
        members = tar.getmembers()
    third = [m for m in members if m.name.endswith(".png")][2]
    intact = {m.name.split(".")[0] for m in members if m.offset_data + m.size <= third.offset_data}
    Path(shards[1]).write_bytes(Path(shards[1]).read_bytes()[:third.offset_data + 100])
    Path(shards[2]).write_bytes(b"")
    records = list(source_records(DataSection(kind="wds", train=pattern)))
    damaged = [r for r in records if isinstance(r, DamagedShard)]
    assert [d.url for d in damaged] == shards[1:]
    assert "ReadError" in damaged[0].error
    from_second = {r["__key__"] for r in records if not isinstance(r, DamagedShard) and r["__url__"] == shards[1]}
    assert from_second <= intact and len(from_second) >= len(intact) - 1  # webdataset drops the one it assembled
    assert len(records) == 4 + len(from_second) + 2


def test_a_truncated_shard_is_skipped_and_counted_in_every_epoch(tmp_path):
    pattern = write_shards(make_samples(4, seed=9), tmp_path, per_shard=4)
    shard = Path(expand_shards(pattern)[0])
    shard.write_bytes(shard.read_bytes()[: shard.stat().st_size * 3 // 4])
    config = DataSection(kind="wds", train=pattern, shuffle_buffer=1)
    kept = [r for r in source_records(config) if not isinstance(r, DamagedShard)]
    assert kept
    with pytest.warns(UserWarning, match=f"shard {shard} is damaged"):
        batches = _batches(config, len(kept), StreamPosition(), 3)  # a batch per epoch: the samples kept
    assert [int(b["skipped"]) for b in batches] == [0, 1, 1]  # the damage ends each epoch, counted in the next batch
    assert all(b["cursor"].tolist() == [0, e, len(kept)] for e, b in enumerate(batches))


def test_missing_shards_and_files_are_refused_before_anything_is_read(tmp_path):
    pattern = write_shards(make_samples(4, seed=10), tmp_path, per_shard=2)
    for spec, missing in ((f"{pattern}::{tmp_path}/gone-000.tar", "gone-000.tar"),
                          (f"{pattern}::{tmp_path}/other-*.tar", "other-*.tar")):
        with pytest.raises(FileNotFoundError, match=rf"1 shard.*do not exist.*{re.escape(missing)}"):
            build_loader(DataSection(kind="wds", train=spec), TRANSFORM, TOKENIZER, 2, StreamPosition(), seed=3)
    for kind in ("csv", "jsonl", "cache"):
        with pytest.raises(FileNotFoundError, match="data.train=.*nothing.txt"):
            build_loader(DataSection(kind=kind, train=str(tmp_path / "nothing.txt")), TRANSFORM, TOKENIZER, 2,
                         StreamPosition(), seed=3)
