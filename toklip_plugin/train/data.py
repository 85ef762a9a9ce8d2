"""Training data: an endless, deterministic, resumable stream of batches for one rank.

Sources:
- ``wds``: webdataset tar shards in the img2dataset layout (``jpg``/``png``/``webp`` + ``txt`` or
  ``json`` caption), given as globs and brace lists joined by ``::``;
- ``csv`` / ``jsonl``: one row per sample with an image path and a caption;
- ``cache``: a safetensors file of precomputed tensors (``codes``, ``text``, optionally
  ``teacher_pooled``), e.g. the demo's code cache: the frozen VQ and teacher run once, not every step.

The stream is a function of (seed, epoch, rank, world size, worker): every epoch is reshuffled
with its own seed, ranks and workers read disjoint slices, and epochs follow each other without
end, so every rank yields the same number of batches. A sample that fails to decode is skipped
and counted; each batch carries the count of samples skipped since the previous one. Resuming
at batch ``k`` replays the stream up to ``k`` without running any model.
"""
from __future__ import annotations

import contextlib
import csv
import json
import random
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence

import torch
from PIL import Image
from safetensors.torch import load_file
from torch.utils.data import DataLoader, IterableDataset, get_worker_info

from ..io import SKIPPABLE_ERRORS, WDS_IMAGE_KEYS, expand_shards, open_image
from .config import DataSection

__all__ = ["StreamPosition", "SampleStream", "SampleDecoder", "build_loader", "read_rows", "source_records"]


@dataclass(frozen=True)
class StreamPosition:
    """Where a rank's stream is: ``rank`` of ``world_size``, after ``batches`` batches."""

    rank: int = 0
    world_size: int = 1
    batches: int = 0


def read_rows(path: str, kind: str) -> list[dict]:
    """Rows of a CSV (with a header) or JSONL file."""
    with open(path, newline="") as f:
        if kind == "csv":
            return list(csv.DictReader(f))
        return [json.loads(line) for line in f if line.strip()]


def source_records(config: DataSection) -> Iterator[Any]:
    """Every record of an image source once, in file order: rows as listed, shards as expanded."""
    if config.kind in ("csv", "jsonl"):
        yield from read_rows(config.train, config.kind)
    elif config.kind == "wds":
        from webdataset import tariterators

        yield from tariterators.tarfile_samples([{"url": u} for u in expand_shards(config.train)])
    else:
        raise ValueError(f"data.kind={config.kind} holds no images to read; give the webdataset or CSV/JSONL source")


class SampleStream(IterableDataset):
    """One rank's endless batch stream (see the module docstring)."""

    def __init__(
        self,
        config: DataSection,
        decode: Callable[[Any], dict[str, torch.Tensor]],
        batch_size: int,
        position: StreamPosition = StreamPosition(),
        seed: int = 0,
    ):
        self.config = config
        self.decode = decode
        self.batch_size = batch_size
        self.position = position
        self.seed = seed
        self.cache = load_file(config.train) if config.kind == "cache" else None
        self.rows = read_rows(config.train, config.kind) if config.kind in ("csv", "jsonl") else None
        self.shards = expand_shards(config.train) if config.kind == "wds" else None

    # records: what a slot (rank x worker) reads in one epoch, before decoding ------------------
    def _records(self, epoch: int, slot: int, num_slots: int) -> Iterator[Any]:
        rng = random.Random(f"{self.seed}-{epoch}")
        if self.shards is None:
            size = len(self.rows) if self.rows is not None else len(next(iter(self.cache.values())))
            order = list(range(size))
            rng.shuffle(order)
            for index in order[slot::num_slots]:
                yield self.rows[index] if self.rows is not None else {k: v[index] for k, v in self.cache.items()}
            return
        yield from self._shard_records(rng, slot, num_slots)

    def _shard_records(self, rng: random.Random, slot: int, num_slots: int) -> Iterator[dict]:
        """Shards split over slots when there are enough of them, else samples split by index."""
        from webdataset import filters, tariterators

        shards = list(self.shards)
        rng.shuffle(shards)
        if len(shards) >= num_slots:
            samples = tariterators.tarfile_samples([{"url": u} for u in shards[slot::num_slots]])
        else:
            every = tariterators.tarfile_samples([{"url": u} for u in shards])
            samples = (s for i, s in enumerate(every) if i % num_slots == slot)
        local_rng = random.Random(f"{rng.random()}-{slot}")
        yield from filters._shuffle(iter(samples), bufsize=self.config.shuffle_buffer,
                                    initial=self.config.shuffle_buffer, rng=local_rng)

    # batches -------------------------------------------------------------------------------
    def __iter__(self) -> Iterator[dict[str, torch.Tensor]]:
        info = get_worker_info()
        workers, slot_in_rank = (info.num_workers, info.id) if info else (1, 0)
        pos = self.position
        # After resuming at batch k the DataLoader asks worker 0 first, but batch k belongs to
        # worker k % workers: rotate the roles so the batch order is the uninterrupted one.
        worker = (slot_in_rank + pos.batches) % workers
        to_skip = len(range(worker, pos.batches, workers))
        slot, num_slots = pos.rank * workers + worker, pos.world_size * workers
        for index, batch in enumerate(self._batches(slot, num_slots)):
            if index >= to_skip:
                yield batch

    def _batches(self, slot: int, num_slots: int) -> Iterator[dict[str, torch.Tensor]]:
        buffer: list[dict[str, torch.Tensor]] = []
        skipped, epoch = 0, 0
        while True:
            usable = 0
            for index, record in enumerate(self._records(epoch, slot, num_slots)):
                try:
                    with _sample_rng(self.seed, epoch, slot, index):
                        buffer.append(self.decode(record))
                except SKIPPABLE_ERRORS:
                    skipped += 1
                    continue
                usable += 1
                if len(buffer) == self.batch_size:
                    yield _collate(buffer, skipped)
                    buffer, skipped = [], 0
            if usable == 0:
                raise RuntimeError(f"data source {self.config.train!r} gave no usable sample to slot {slot} "
                                   f"of {num_slots} in epoch {epoch} (empty, or every sample failed to decode)")
            epoch += 1


@contextlib.contextmanager
def _sample_rng(seed: int, epoch: int, slot: int, index: int) -> Iterator[None]:
    """Random augmentation of a sample drawn from its own seed (run seed, epoch, slot, position), not from the
    process's RNG: a resumed stream, which replays the samples before its position, crops every later sample
    as the uninterrupted run did, with or without worker processes."""
    with torch.random.fork_rng(devices=[]):
        # the CPU generator only: torch.manual_seed would also (re)seed every lazily-initialised accelerator, which
        # fork_rng(devices=[]) does not restore, and costs 15x more (a stack trace per device per sample)
        torch.default_generator.manual_seed(hash((seed, epoch, slot, index)) & (2**63 - 1))  # int tuples hash stably
        yield


def _collate(samples: Sequence[dict[str, torch.Tensor]], skipped: int) -> dict[str, torch.Tensor]:
    batch = {key: torch.stack([s[key] for s in samples]) for key in samples[0]}
    batch["skipped"] = torch.tensor(skipped)
    return batch


# decoding --------------------------------------------------------------------------------
class SampleDecoder:
    """Record -> ``{"images": [3,S,S], "text": [L]}`` (or the cached tensors); raises on a broken sample."""

    def __init__(self, config: DataSection, transform: Callable, tokenizer: Callable):
        self.config = config
        self.transform = transform
        self.tokenizer = tokenizer
        self.root = Path(config.train).parent

    def __call__(self, record: dict) -> dict[str, torch.Tensor]:
        kind = self.config.kind
        if kind == "cache":
            return record
        if kind == "wds":
            image = next((record[e] for e in WDS_IMAGE_KEYS if e in record), None)
            if image is None:
                raise KeyError(f"sample {record.get('__key__')} has no image ({'/'.join(WDS_IMAGE_KEYS)})")
            caption = self._wds_caption(record)
        else:
            path = Path(record[self.config.image_key])
            image, caption = (path if path.is_absolute() else self.root / path), record[self.config.caption_key]
        if not isinstance(caption, str) or not caption.strip():
            raise ValueError("empty caption")
        return {"images": open_image(image, self._transform), "text": self.tokenizer([caption])[0]}

    def _transform(self, image: Image.Image) -> torch.Tensor:
        if not self.config.keeps_image(image.width, image.height):  # skipped and counted like a broken sample
            raise ValueError(f"image of {image.width}x{image.height} is below data.min_size={self.config.min_size}")
        return self.transform(image)

    def _wds_caption(self, record: dict) -> str:
        if "txt" in record:
            return record["txt"].decode("utf-8")
        if "json" in record:
            return json.loads(record["json"])[self.config.caption_key]
        raise KeyError(f"sample {record.get('__key__')} has no caption (txt or json)")


def build_loader(config: DataSection, transform: Callable, tokenizer: Callable, batch_size: int,
                 position: StreamPosition, seed: int) -> DataLoader:
    """A DataLoader over one rank's :class:`SampleStream` (batching happens in the workers)."""
    stream = SampleStream(config, SampleDecoder(config, transform, tokenizer), batch_size, position, seed)
    return DataLoader(stream, batch_size=None, num_workers=config.workers,
                      persistent_workers=False, prefetch_factor=2 if config.workers else None)
