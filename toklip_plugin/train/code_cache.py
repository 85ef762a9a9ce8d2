"""Tokenize a data set once, train the token encoder many epochs: the ``cache`` data source.

``toklip-train --config NAME --build-cache OUT_DIR [overrides]`` reads the config's training data (webdataset
shards or a CSV/JSONL file) once, through the frozen VQ, the text tokenizer and, when the loss distils, the
frozen teacher, and writes ``codes``, ``text`` and ``teacher_pooled`` / ``teacher_tokens`` into a cache
directory (the format, its identity metadata and its checks: :mod:`.cache_file`). Training with
``data.kind=cache data.train=OUT_DIR`` then skips image decoding, the VQ encoder and the teacher. Samples
that fail to decode (or fall below ``data.min_size``), and those whose teacher targets are not finite, are
skipped and counted, as in training. Only the
frozen parts are built: no student, optimizer or process group. A cache holds one view of each image,
through the evaluation transform: training from it has no random-crop augmentation.

The build streams: rows go to disk in chunks of ``chunk_bytes``, so memory does not grow with the data set.
Under ``torchrun`` (or with ``rank`` / ``world_size``) each process reads a disjoint part of the source, its
own shards when there are at least as many shards as processes, else every ``world_size``-th record, and
writes its own chunks; the cache reads back in the source's order whatever the number of processes.
"""
from __future__ import annotations

import dataclasses
import itertools
import os
from pathlib import Path
from typing import Any, Iterator, Optional

import torch

from ..factory import create_vq, get_tokenizer
from ..io import SKIPPABLE_ERRORS, expand_shards
from ..models.teacher import build_teacher
from ..progress import ProgressBar
from ..transforms import image_transform
from .cache_file import DEFAULT_CHUNK_BYTES, RECORD_KEY, TEACHER_KEYS, CacheWriter, cache_identity, finite_rows
from .config import DataSection, TrainConfig
from .data import SampleDecoder, source_records
from .distributed import pick_device
from .student import load_configured_vq
from .targets import FrozenTargets

__all__ = ["build_code_cache", "frozen_image_targets", "rank_records"]


def frozen_image_targets(config: TrainConfig, local_rank: int = 0) -> FrozenTargets:
    """The frozen VQ and, when the loss distils, the teacher of ``config``: no text tower, no student."""
    model_config, device = config.model_config(), pick_device(config.run.device, local_rank)
    vq = create_vq(model_config, seed=config.run.seed)  # the trainer's VQ when no checkpoint is named
    load_configured_vq(vq, config)
    loss = config.loss
    distils = loss.distill_weight > 0 or loss.token_distill_weight > 0
    teacher = build_teacher(config.teacher, model_config, config.run.seed).to(device) if distils else None
    return FrozenTargets(vq.to(device).eval(), None, teacher, loss.distill_weight > 0, loss.token_distill_weight > 0,
                         config.run.precision)


def build_code_cache(config: TrainConfig, out: str | Path, batch_size: int = 64, rank: Optional[int] = None,
                     world_size: Optional[int] = None, chunk_bytes: int = DEFAULT_CHUNK_BYTES) -> dict[str, Any]:
    """Write this rank's part of the code cache of ``config``'s training data into the directory ``out``.

    ``rank`` / ``world_size`` default to torchrun's ``RANK`` / ``WORLD_SIZE`` (0 / 1 without). Returns
    ``{"path", "samples", "skipped", "chunks"}`` for this rank.
    """
    rank = int(os.environ.get("RANK", 0)) if rank is None else rank
    world_size = int(os.environ.get("WORLD_SIZE", 1)) if world_size is None else world_size
    targets = frozen_image_targets(config, int(os.environ.get("LOCAL_RANK", 0)))
    model_config = config.model_config()
    writer = CacheWriter(out, cache_identity(config, targets.vq, targets.teacher), rank, world_size, chunk_bytes,
                         source=f"{config.data.kind}:{config.data.train}")
    decoder = SampleDecoder(config.data, image_transform(model_config.image_size), get_tokenizer(model_config))
    decoded = _Decoded(rank_records(config.data, rank, world_size), decoder)
    bar = ProgressBar(desc=f"code cache (rank {rank} of {world_size})", unit="img", dynamic_ncols=True)
    for batch in _batches(iter(decoded), batch_size):
        image_targets = targets.image_targets({"images": batch["images"].to(targets.device)})
        rows = _finite_only({**{key: value.cpu() for key, value in image_targets.items() if value is not None},
                             "text": batch["text"], RECORD_KEY: batch[RECORD_KEY]})
        decoded.skipped += len(batch["text"]) - len(rows["text"])
        writer.add(rows)
        bar.update(len(batch["text"]))
        bar.set_postfix(skipped=decoded.skipped)
    bar.close()
    if not writer.chunks and not writer.held_rows:
        raise RuntimeError(f"no usable sample in {config.data.train!r} for rank {rank} of {world_size} "
                           f"({decoded.skipped} skipped)")
    manifest = writer.close(decoded.skipped)
    return {"path": str(out), "samples": manifest["samples"], "skipped": decoded.skipped,
            "chunks": len(manifest["chunks"])}


def _finite_only(rows: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The rows whose teacher targets are finite (a teacher overflowing in fp16 gives inf): the others would only
    make training steps non-finite, so they are skipped like samples that fail to decode."""
    keep = torch.ones(len(rows["text"]), dtype=torch.bool)
    for key in TEACHER_KEYS:
        if key in rows:
            keep &= finite_rows(rows[key])
    return rows if bool(keep.all()) else {key: value[keep] for key, value in rows.items()}


def rank_records(data: DataSection, rank: int, world_size: int) -> Iterator[tuple[int, Any]]:
    """``(position, record)`` for the records of ``rank``: its shards (``shard << 32 | position in shard``) when
    there are at least ``world_size`` of them, else every ``world_size``-th record (row number for CSV/JSONL)."""
    if data.kind != "wds":
        yield from ((i, record) for i, record in enumerate(source_records(data)) if i % world_size == rank)
        return
    shards = expand_shards(data.train)
    by_shard = len(shards) >= world_size
    numbered = ((s << 32 | i, record) for s, shard in enumerate(shards) if not by_shard or s % world_size == rank
                for i, record in enumerate(source_records(dataclasses.replace(data, train=shard))))
    yield from (item for i, item in enumerate(numbered) if by_shard or i % world_size == rank)


class _Decoded:
    """Decoded samples of ``(position, record)`` pairs, with their ``record`` position; ``skipped`` counts the
    ones that failed to decode so far."""

    def __init__(self, records: Iterator[tuple[int, Any]], decoder: SampleDecoder):
        self.records, self.decoder, self.skipped = records, decoder, 0

    def __iter__(self) -> Iterator[dict[str, torch.Tensor]]:
        for position, record in self.records:
            try:
                yield {**self.decoder(record), RECORD_KEY: torch.tensor(position)}
            except SKIPPABLE_ERRORS:
                self.skipped += 1


def _batches(samples: Iterator[dict[str, torch.Tensor]], batch_size: int) -> Iterator[dict[str, torch.Tensor]]:
    """Stacked ``images`` / ``text`` / ``record`` of ``batch_size`` samples at a time (the last may be short)."""
    chunk = list(itertools.islice(samples, batch_size))
    while chunk:
        yield {key: torch.stack([s[key] for s in chunk]) for key in ("images", "text", RECORD_KEY)}
        chunk = list(itertools.islice(samples, batch_size))
