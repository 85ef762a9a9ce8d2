"""Training data: an endless, deterministic, resumable stream of batches for one rank.

Sources:
- ``wds``: webdataset tar shards in the img2dataset layout (``jpg``/``png``/``webp`` + ``txt`` or
  ``json`` caption), given as globs and brace lists joined by ``::``;
- ``csv`` / ``jsonl``: one row per sample with an image path and a caption;
- ``cache``: a code cache of precomputed tensors (``codes``, ``text``, optionally teacher targets;
  a directory from ``--build-cache``, or one safetensors file, see :mod:`.cache_file`), e.g. the
  demo's: the frozen VQ and teacher run once, not every step.

The stream is a function of (seed, epoch, rank, world size, worker): every epoch is reshuffled
with its own seed, ranks and workers read disjoint slices, and epochs follow each other without
end, so every rank yields the same number of batches. A *slot* is one (rank, worker) pair; it reads
its *records* (rows, cached entries, raw tar samples) in a fixed order per epoch. A sample that fails
to decode is skipped and counted; each batch carries the count of samples skipped since the previous
one. A shard that cannot be read on (truncated, corrupt, unreadable) counts as one skipped sample
each time an epoch reaches it: the samples before the damage are used (but the last one webdataset
was still assembling), the rest of the shard is skipped, and a warning names it once per process.

Resuming. Each batch carries its slot's cursor after it: ``(worker, epoch, records)``, the records
of that epoch the slot has read, skipped ones included. The trainer keeps the cursor of the last
batch it consumed from each slot and saves them all (:class:`StreamPosition`). On resume under the
same layout (ranks x workers) every slot passes over its first ``records`` records without decoding
them (csv/jsonl/cache: by index, nothing opened; shards: the raw tar records still go through the
shuffle buffer, but no image is decoded) and goes on exactly as the uninterrupted run: same
samples, same crops (drawn per sample, :func:`_sample_rng`), same skip counts, with or without
worker processes.

Under another layout (a different world size or ``data.workers``), :func:`resume_position` starts
every new slot in the newest epoch an old slot had reached, and the new slots share the ``R``
records the old ones had read in it: slot ``s`` of ``N`` passes over ``len(range(s, R, N))`` of its
own. What is kept: the epoch, the number of records read in it, and from the next epoch on the new
layout's own deterministic stream. What is not: the sample order, and which records make up the
rest of the epoch. For csv/jsonl/cache (one shuffled order dealt round-robin to the slots) the new
slots read exactly the records not yet read when the old slots had read equal shares (one worker
per rank, no skipped samples); otherwise as many records as the shares differed by are read twice in
this epoch and as many not at all. For shards, which are dealt to slots anew, the count is kept but
not the identity of the records: some may be read twice in this epoch and as many not at all. The
records an old slot still had in an older epoch are dropped.
"""
from __future__ import annotations

import contextlib
import csv
import itertools
import json
import random
import tarfile
import warnings
import zlib
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator, Mapping, Optional, Sequence

import torch
from PIL import Image
from torch.utils.data import DataLoader, IterableDataset, get_worker_info

from ..io import SKIPPABLE_ERRORS, WDS_IMAGE_KEYS, expand_shards, open_image
from .cache_file import read_code_cache
from .config import DataSection

__all__ = ["StreamPosition", "SampleStream", "SampleDecoder", "DamagedShard", "build_loader", "read_rows",
           "source_records", "resume_position", "spread_cursors"]

Cursor = tuple[int, int]  # (epoch, records of that epoch a slot has read)
# what reading a damaged shard raises: a truncated or corrupt tar, an unreadable or vanished file, a broken
# .tar.gz, a duplicate member (webdataset's ValueError)
SHARD_ERRORS = (tarfile.TarError, OSError, EOFError, zlib.error, ValueError)


@dataclass(frozen=True)
class StreamPosition:
    """Where a rank's stream starts: ``rank`` of ``world_size``; per worker of the rank, the cursor of the
    last batch consumed from it (an empty tuple: the start of the stream); ``next_worker``, whose batch comes
    next; ``batches``, how many the rank consumed. A ``None`` cursor is unknown (a checkpoint written before
    cursors were saved): that worker replays, decoding them, its share of the first ``batches`` batches."""

    rank: int = 0
    world_size: int = 1
    cursors: tuple[Optional[Cursor], ...] = ()
    next_worker: int = 0
    batches: int = 0

    @classmethod
    def start(cls, rank: int, world_size: int, workers: int) -> "StreamPosition":
        return cls(rank, world_size, ((0, 0),) * workers)

    def after(self, cursor: Sequence[int]) -> "StreamPosition":
        """The position once the batch that carried ``cursor`` (``batch["cursor"]``) is consumed."""
        worker, epoch, records = (int(v) for v in cursor)
        cursors = list(self.cursors)
        cursors[worker] = (epoch, records)
        return replace(self, cursors=tuple(cursors), next_worker=(worker + 1) % len(cursors), batches=self.batches + 1)


def spread_cursors(cursors: Sequence[Cursor], num_slots: int) -> list[Cursor]:
    """Cursors for ``num_slots`` new slots from every old slot's: the newest epoch, and the records read in it
    shared round-robin (see the module docstring for what this keeps)."""
    epoch = max(e for e, _ in cursors)
    read = sum(records for e, records in cursors if e == epoch)
    return [(epoch, len(range(slot, read, num_slots))) for slot in range(num_slots)]


def resume_position(saved: Mapping[str, Any], saved_world_size: int, rank: int, world_size: int,
                    workers: int) -> StreamPosition:
    """This rank's :class:`StreamPosition` from a checkpoint's ``state["data"]`` written by ``saved_world_size``
    ranks: its own cursors under the same layout, :func:`spread_cursors` under another one. A checkpoint
    without cursors (written before they were saved) replays the stream, with a warning, and is refused on
    another number of ranks (its position in records is unknown)."""
    cursors = saved.get("cursors")
    if cursors is None:
        if saved_world_size != world_size:
            raise ValueError(f"it was written by {saved_world_size} ranks before data cursors were saved, and this "
                             f"run has {world_size}: resume it with {saved_world_size} processes (or start a new "
                             "run.output_dir)")
        warnings.warn(f"the checkpoint holds no data cursors (written by an older version): replaying the stream up "
                      f"to batch {saved['batches']}, decoding every sample before it", stacklevel=2)
        return StreamPosition(rank, world_size, (None,) * workers, saved["batches"] % workers, saved["batches"])
    cursors = [tuple(c) for c in cursors]
    if (saved_world_size, saved["workers"]) != (world_size, workers):
        cursors = spread_cursors(cursors, world_size * workers)
        return StreamPosition(rank, world_size, tuple(cursors[rank * workers:(rank + 1) * workers]),
                              batches=saved["batches"])
    return StreamPosition(rank, world_size, tuple(cursors[rank * workers:(rank + 1) * workers]),
                          saved["next_worker"], saved["batches"])


@dataclass(frozen=True)
class DamagedShard:
    """Stands in a shard's record stream where it could not be read on; decoding it raises a skippable error,
    so it is counted like a broken sample."""

    url: str
    error: str


def read_rows(path: str, kind: str) -> list[dict]:
    """Rows of a CSV (with a header) or JSONL file."""
    with open(path, newline="") as f:
        if kind == "csv":
            return list(csv.DictReader(f))
        return [json.loads(line) for line in f if line.strip()]


def source_records(config: DataSection) -> Iterator[Any]:
    """Every record of an image source once, in file order: rows as listed, shards as expanded (a damaged
    shard ends with a :class:`DamagedShard`)."""
    if config.kind in ("csv", "jsonl"):
        yield from read_rows(config.train, config.kind)
    elif config.kind == "wds":
        yield from _shard_samples(expand_shards(config.train))
    else:
        raise ValueError(f"data.kind={config.kind} holds no images to read; give the webdataset or CSV/JSONL source")


def _shard_samples(urls: Iterable[str]) -> Iterator[Any]:
    """The samples of each shard in turn; where a shard cannot be read on, a :class:`DamagedShard`."""
    from webdataset import tariterators

    for url in urls:
        try:
            yield from tariterators.tarfile_samples([{"url": url}])
        except SHARD_ERRORS as err:
            yield DamagedShard(url, f"{type(err).__name__}: {_reason(err)}"[:300])


def _reason(err: BaseException) -> str:
    """An error's own message: an OSError's text (its ``args[0]`` is the errno), else its first argument."""
    return getattr(err, "strerror", None) or (str(err.args[0]) if err.args else "")


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
        source = Path(config.train)  # shards are checked by expand_shards below
        if config.kind != "wds" and not (source.is_file() or config.kind == "cache" and source.is_dir()):
            raise FileNotFoundError(f"data.train={config.train!r} ({config.kind}) does not exist")
        self.cache = read_code_cache(config.train) if config.kind == "cache" else None
        self.rows = read_rows(config.train, config.kind) if config.kind in ("csv", "jsonl") else None
        self.shards = expand_shards(config.train) if config.kind == "wds" else None  # refuses missing shards

    # records: what a slot (rank x worker) reads in one epoch, before decoding ------------------
    def _records(self, epoch: int, slot: int, num_slots: int, start: int) -> Iterator[tuple[int, Any]]:
        """``(index, record)`` from the slot's ``start``-th record of ``epoch`` on; the ones before are passed over
        undecoded (rows and cache entries are not even looked up)."""
        rng = random.Random(f"{self.seed}-{epoch}")
        if self.shards is not None:
            yield from itertools.islice(enumerate(self._shard_records(rng, slot, num_slots)), start, None)
            return
        size = len(self.rows) if self.rows is not None else len(next(iter(self.cache.values())))
        order = list(range(size))
        rng.shuffle(order)
        mine = order[slot::num_slots]
        for index in range(start, len(mine)):
            row = mine[index]
            yield index, self.rows[row] if self.rows is not None else {k: v[row] for k, v in self.cache.items()}

    def _shard_records(self, rng: random.Random, slot: int, num_slots: int) -> Iterator[Any]:
        """Shards split over slots when there are enough of them, else samples split by index."""
        from webdataset import filters

        shards = list(self.shards)
        rng.shuffle(shards)
        if len(shards) >= num_slots:
            samples = _shard_samples(shards[slot::num_slots])
        else:
            samples = (s for i, s in enumerate(_shard_samples(shards)) if i % num_slots == slot)
        local_rng = random.Random(f"{rng.random()}-{slot}")
        shuffle = filters.shuffle(bufsize=self.config.shuffle_buffer, initial=self.config.shuffle_buffer, rng=local_rng)
        yield from shuffle(iter(samples))

    # batches -------------------------------------------------------------------------------
    def __iter__(self) -> Iterator[dict[str, torch.Tensor]]:
        info = get_worker_info()
        workers, slot_in_rank = (info.num_workers, info.id) if info else (1, 0)
        pos = self.position
        if pos.cursors and len(pos.cursors) != workers:
            raise ValueError(f"the position holds cursors for {len(pos.cursors)} workers, the loader has {workers}; "
                             "convert it with resume_position")
        # The DataLoader asks worker 0 first, but the next batch belongs to worker pos.next_worker: rotate the
        # roles so that the batch order is the uninterrupted one.
        worker = (slot_in_rank + pos.next_worker) % workers
        cursor = pos.cursors[worker] if pos.cursors else (0, 0)
        replay = len(range(worker, pos.batches, workers)) if cursor is None else 0  # an old checkpoint
        slot, num_slots = pos.rank * workers + worker, pos.world_size * workers
        yield from itertools.islice(self._batches(worker, slot, num_slots, cursor or (0, 0)), replay, None)

    def _batches(self, worker: int, slot: int, num_slots: int, start: Cursor) -> Iterator[dict[str, torch.Tensor]]:
        buffer: list[dict[str, torch.Tensor]] = []
        skipped, (epoch, first) = 0, start
        while True:
            usable = first > 0  # a resumed epoch: the records passed over held the usable samples before
            for index, record in self._records(epoch, slot, num_slots, first):
                try:
                    with _sample_rng(self.seed, epoch, slot, index):
                        buffer.append(self.decode(record))
                except SKIPPABLE_ERRORS:
                    skipped += 1
                    continue
                usable = True
                if len(buffer) == self.batch_size:
                    yield _collate(buffer, skipped, (worker, epoch, index + 1))
                    buffer, skipped = [], 0
            if not usable:
                raise RuntimeError(f"data source {self.config.train!r} gave no usable sample to slot {slot} "
                                   f"of {num_slots} in epoch {epoch} (empty, or every sample failed to decode)")
            epoch, first = epoch + 1, 0


@contextlib.contextmanager
def _sample_rng(seed: int, epoch: int, slot: int, index: int) -> Iterator[None]:
    """Random augmentation of a sample drawn from its own seed (run seed, epoch, slot, position), not from the
    process's RNG: a resumed stream, which passes over the records before its position, crops every later
    sample as the uninterrupted run did, with or without worker processes."""
    with torch.random.fork_rng(devices=[]):
        # the CPU generator only: torch.manual_seed would also (re)seed every lazily-initialised accelerator, which
        # fork_rng(devices=[]) does not restore, and costs 15x more (a stack trace per device per sample)
        torch.default_generator.manual_seed(hash((seed, epoch, slot, index)) & (2**63 - 1))  # int tuples hash stably
        yield


def _collate(samples: Sequence[dict[str, torch.Tensor]], skipped: int, cursor: tuple[int, int, int]
             ) -> dict[str, torch.Tensor]:
    batch = {key: torch.stack([s[key] for s in samples]) for key in samples[0]}
    batch["skipped"] = torch.tensor(skipped)
    batch["cursor"] = torch.tensor(cursor)  # (worker, epoch, records read in the epoch) after this batch
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
        if isinstance(record, DamagedShard):  # warned once per process and shard (Python's default filter)
            warnings.warn(f"shard {record.url} is damaged ({record.error}); its samples before the damage were "
                          "used, the rest of it is skipped and counted as one skipped sample", stacklevel=2)
            raise OSError(f"damaged shard {record.url}")
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
