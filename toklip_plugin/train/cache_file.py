"""The code-cache format: what ``toklip-train --build-cache`` writes and ``data.kind=cache`` reads.

A cache holds one row per sample: ``codes [N, T]`` (VQ code ids), ``text [N, L]`` (token ids) and, when the
loss distils, ``teacher_pooled [N, E]`` / ``teacher_tokens [N, M, C]``. It is either

- a directory written by the builder, one build over ``W`` ranks (W = 1 for a single process)::

      r00000-of-00002-c00000.safetensors   rank 0's rows, chunk 0 (at most ``chunk_bytes`` of rows)
      r00000-of-00002-c00001.safetensors   ...
      r00000-of-00002.json                 rank 0's manifest: its chunk files and row counts, written last

  Each rank writes only its own files, so the ranks need no collective; the cache is complete when
  every rank's manifest is there. Chunks also hold ``record [N]``, the position of the sample's
  record in the source (the row number, or ``shard << 32 | position in shard``): the reader puts the
  rows in that order, so a cache built over any number of ranks reads back as the one-process build;
- or a single safetensors file (an older build, or one written by hand).

Every chunk carries the cache's :class:`CacheIdentity` in its safetensors metadata (JSON under
``toklip_cache``): the VQ, the teacher when teacher targets are stored, the tokenizer, the image size and
the config that decided the targets. The VQ and the teacher are identified by a SHA-256 of their state
dicts, not of a checkpoint file: the hash covers a VQ built without a checkpoint (a seeded random one, as
in tests), gives the same identity to the same weights in another file, format or place, and the
trainer computes it from the modules it already holds, without reading a checkpoint again.

Reading validates every chunk: required keys, rows of equal length, integer ``codes`` / ``text`` inside
the codebook / vocabulary; non-finite teacher targets are named in a warning (the builder never writes
them: it skips such samples; the trainer skips the steps they reach). :func:`check_cache_for_run`
refuses a cache whose identity is not the run's. A file without identity metadata still reads, with a
warning.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import re
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

import torch
import torch.nn as nn
from safetensors import safe_open
from safetensors.torch import save_file

from ..io import atomic_path
from .config import TrainConfig

__all__ = ["CacheError", "CacheIdentity", "CacheWriter", "FORMAT_VERSION", "cache_identity", "check_cache_for_run",
           "check_identity", "finite_rows", "module_sha256", "read_cache_identity", "read_code_cache"]

FORMAT_VERSION = 1
METADATA_KEY = "toklip_cache"
REQUIRED_KEYS = ("codes", "text")
TEACHER_KEYS = ("teacher_pooled", "teacher_tokens")
RECORD_KEY = "record"
DEFAULT_CHUNK_BYTES = 256 * 2**20
_REBUILD = ("Rebuild it with this run's config: toklip-train --config CONFIG --build-cache NEW_DIR [the run's "
            "overrides], then train with data.kind=cache data.train=NEW_DIR")


class CacheError(ValueError):
    """A code cache that cannot be used: malformed, incomplete, or built for other frozen parts."""


@dataclass(frozen=True)
class CacheIdentity:
    """What the rows of a cache depend on; stored in every chunk, compared with the run's by the trainer."""

    vq: dict  # model (config name), checkpoint, codebook_size, sha256 (of the state dict)
    teacher: Optional[dict]  # config, sha256, targets (the teacher keys stored); None: no teacher targets
    text: dict  # tokenizer, context_length, vocab_size
    image_size: int
    num_tokens: int
    target_config: dict  # the config parts that decided the targets (see cache_identity)
    target_config_sha256: str
    format: int = FORMAT_VERSION

    def to_json(self) -> str:
        return json.dumps(dataclasses.asdict(self), sort_keys=True)

    @classmethod
    def from_json(cls, text: str, where: Any) -> "CacheIdentity":
        data = json.loads(text)
        if data.get("format", 0) > FORMAT_VERSION:
            raise CacheError(f"code cache {where} has format {data['format']}, newer than this toklip-plugin reads "
                             f"({FORMAT_VERSION}); upgrade toklip-plugin or rebuild the cache")
        return cls(**data)


def module_sha256(module: nn.Module) -> str:
    """SHA-256 over a module's state dict: names, dtypes, shapes and bytes, in name order."""
    digest = hashlib.sha256()
    for name, tensor in sorted(module.state_dict().items()):
        flat = tensor.detach().cpu().contiguous().reshape(-1)
        digest.update(f"{name}:{flat.dtype}:{tuple(tensor.shape)};".encode())
        digest.update(flat.view(torch.uint8).numpy())
    return digest.hexdigest()


def _sha256_json(data: Any) -> str:
    return hashlib.sha256(json.dumps(data, sort_keys=True).encode()).hexdigest()


def cache_identity(config: TrainConfig, vq: nn.Module, teacher: Optional[nn.Module]) -> CacheIdentity:
    """The identity of the targets ``config`` makes with these frozen ``vq`` and ``teacher`` (the teacher is
    part of it only when the loss distils, which is when the builder stores teacher targets)."""
    model, loss = config.model_config(), config.loss
    weights = {"teacher_pooled": loss.distill_weight, "teacher_tokens": loss.token_distill_weight}
    teacher_keys = [key for key, weight in weights.items() if weight > 0]
    if teacher_keys and teacher is None:
        raise ValueError("the loss distils towards a teacher, but no teacher was given")
    text = {"tokenizer": dict(model.tokenizer), "context_length": model.text["context_length"],
            "vocab_size": model.text["vocab_size"]}
    target_config = {"vq": model.to_dict()["vq"], "vq_checkpoint": config.model.vq_checkpoint,
                     "image_size": model.image_size, "text": text, "teacher_targets": teacher_keys,
                     "teacher": dataclasses.asdict(config.teacher) if teacher_keys else None,
                     "precision": config.run.precision}
    return CacheIdentity(
        vq={"model": model.name, "checkpoint": config.model.vq_checkpoint, "codebook_size": model.vq.codebook_size,
            "sha256": module_sha256(vq)},
        teacher=({"config": dataclasses.asdict(config.teacher), "sha256": module_sha256(teacher),
                  "targets": teacher_keys} if teacher_keys else None),
        text=text, image_size=model.image_size, num_tokens=model.num_tokens,
        target_config=target_config, target_config_sha256=_sha256_json(target_config))


# comparing with the run ----------------------------------------------------------------------------
def check_cache_for_run(config: TrainConfig, vq: nn.Module, teacher: Optional[nn.Module]) -> None:
    """Refuse a ``data.kind=cache`` source built with other frozen parts than ``vq`` / ``teacher`` (the run's);
    a cache without identity metadata is checked against the run's codebook and vocabulary only."""
    if config.data.kind != "cache":
        return
    run = cache_identity(config, vq, teacher)
    cached = read_cache_identity(config.data.train)
    if cached is not None:
        check_identity(config.data.train, cached, run)
        return
    _read_chunk(Path(config.data.train), run)  # a file without identity: its rows checked against the run's sizes


def check_identity(where: Any, cached: CacheIdentity, run: CacheIdentity) -> None:
    """Raise :class:`CacheError` naming both identities when the cache's frozen parts are not the run's; warn
    when only other target settings (e.g. the precision the teacher ran in) differ."""
    problems = []
    if (cached.vq["sha256"], cached.vq["codebook_size"]) != (run.vq["sha256"], run.vq["codebook_size"]):
        problems.append(f"VQ: the cache's is {_describe_vq(cached.vq)}, the run's is {_describe_vq(run.vq)}")
    if run.teacher is not None:
        problems += _teacher_problems(cached.teacher, run.teacher)
    for name in ("text", "image_size", "num_tokens"):
        if getattr(cached, name) != getattr(run, name):
            problems.append(f"{name}: the cache's is {getattr(cached, name)}, the run's is {getattr(run, name)}")
    if problems:
        raise CacheError(f"code cache {where} was built with other frozen parts than this run uses, so its "
                         "targets are not this run's:\n  " + "\n  ".join(problems) + f"\n{_REBUILD}")
    if cached.target_config_sha256 != run.target_config_sha256:
        changed = sorted(k for k in run.target_config if cached.target_config.get(k) != run.target_config[k])
        warnings.warn(f"code cache {where} was built under other target settings than this run's ({', '.join(changed)}"
                      f": {[cached.target_config.get(k) for k in changed]} -> {[run.target_config[k] for k in changed]}"
                      "); the VQ and teacher weights are the same, so it is used", stacklevel=2)


def _describe_vq(vq: dict) -> str:
    return (f"{vq['model']} (model.vq_checkpoint={vq['checkpoint']}, {vq['codebook_size']} codes, "
            f"weights sha256 {vq['sha256'][:12]})")


def _teacher_problems(cached: Optional[dict], run: dict) -> list[str]:
    if cached is None:
        return [f"teacher: the run distils ({', '.join(run['targets'])}) but the cache holds no teacher targets"]
    problems = []
    if cached["sha256"] != run["sha256"]:
        problems.append(f"teacher: the cache's is {cached['config']} (weights sha256 {cached['sha256'][:12]}), "
                        f"the run's is {run['config']} (weights sha256 {run['sha256'][:12]})")
    missing = sorted(set(run["targets"]) - set(cached["targets"]))
    if missing:
        problems.append(f"teacher targets: the run needs {missing}, the cache holds {cached['targets']}")
    return problems


# reading -------------------------------------------------------------------------------------------
def read_cache_identity(path: str | Path) -> Optional[CacheIdentity]:
    """The identity of a cache directory or file (metadata only, no tensors read); None for a file without one."""
    path = Path(path)
    if path.is_dir():
        return CacheIdentity(**_manifests(path)[0]["identity"])
    return _file_identity(_open(path), path)


def read_code_cache(path: str | Path) -> dict[str, torch.Tensor]:
    """The validated tensors of a cache directory or file, rows in source order (``record`` dropped)."""
    path = Path(path)
    if path.is_dir():
        manifests = _manifests(path)
        files = [path / chunk["file"] for manifest in manifests for chunk in manifest["chunks"]]
        return _assemble(files, CacheIdentity(**manifests[0]["identity"]))
    identity = _file_identity(_open(path), path)
    if identity is None:
        warnings.warn(f"code cache {path} has no identity metadata (a file not written by toklip-train "
                      "--build-cache, or by an older one): its VQ, teacher and code range cannot be checked against "
                      "the run's; rebuild it with toklip-train --build-cache to have them checked", stacklevel=2)
    return _assemble([path], identity)


def _open(path: Path):
    if not path.is_file():
        raise FileNotFoundError(f"code cache {path} does not exist; build one with toklip-train --config CONFIG "
                                f"--build-cache {path} data.train=SOURCE")
    return safe_open(str(path), "pt")


def _file_identity(handle, path: Path) -> Optional[CacheIdentity]:
    with handle as f:
        text = (f.metadata() or {}).get(METADATA_KEY)
    return None if text is None else CacheIdentity.from_json(text, path)


def _assemble(files: list[Path], identity: Optional[CacheIdentity]) -> dict[str, torch.Tensor]:
    """Chunks -> one tensor per key, rows ordered by ``record``; holds the output plus one chunk at a time."""
    records = [_records(f) for f in files]
    order = torch.cat(records).argsort(stable=True)
    _check_unique(torch.cat(records)[order], files)
    destination = torch.empty_like(order)
    destination[order] = torch.arange(len(order))
    out: dict[str, torch.Tensor] = {}
    start = 0
    for file, chunk_records in zip(files, records):
        tensors = _read_chunk(file, identity)
        rows = destination[start:start + len(chunk_records)]
        start += len(chunk_records)
        if out and set(tensors) != set(out):
            raise CacheError(f"code cache chunk {file} holds {sorted(tensors)}, the chunks before it {sorted(out)}; "
                             "the directory mixes builds: delete it and rebuild")
        for key, value in tensors.items():
            if key not in out:
                out[key] = torch.empty((len(order), *value.shape[1:]), dtype=value.dtype)
            elif (out[key].shape[1:], out[key].dtype) != (value.shape[1:], value.dtype):
                raise CacheError(f"code cache chunk {file}: {key} rows are {value.dtype} {tuple(value.shape[1:])}, "
                                 f"those before it {out[key].dtype} {tuple(out[key].shape[1:])}")
            out[key][rows] = value
    return out


def _records(file: Path) -> torch.Tensor:
    """The chunk's ``record`` positions; a file without them keeps its own order."""
    with safe_open(str(file), "pt") as f:
        if RECORD_KEY in f.keys():
            return f.get_tensor(RECORD_KEY).long()
        shape = f.get_slice(f.keys()[0]).get_shape() if f.keys() else []
        return torch.arange(shape[0] if shape else 0)  # no tensors, or a scalar: refused when the chunk is read


def _check_unique(sorted_records: torch.Tensor, files: list[Path]) -> None:
    repeated = sorted_records[1:][sorted_records[1:] == sorted_records[:-1]]
    if len(repeated):
        raise CacheError(f"code cache {files[0].parent}: record {int(repeated[0])} is stored twice; the directory "
                         "mixes builds: delete it and rebuild")


def _read_chunk(file: Path, identity: Optional[CacheIdentity]) -> dict[str, torch.Tensor]:
    """One file's tensors (``record`` dropped), validated against ``identity`` (None: what can be checked)."""
    with safe_open(str(file), "pt") as f:
        own = (f.metadata() or {}).get(METADATA_KEY)
        tensors = {key: f.get_tensor(key) for key in f.keys()}
    if identity is not None and own is not None and CacheIdentity.from_json(own, file) != identity:
        raise CacheError(f"code cache chunk {file} was built with other frozen parts than the rest of its cache; "
                         "the directory mixes builds: delete it and rebuild")
    validate_rows(tensors, identity, file)
    tensors.pop(RECORD_KEY, None)
    return tensors


def validate_rows(tensors: dict[str, torch.Tensor], identity: Optional[CacheIdentity], where: Any) -> None:
    """Raise :class:`CacheError` for missing keys, rows of unequal length or ids outside the codebook / vocabulary
    (the upper bound needs ``identity``); warn about non-finite teacher targets."""
    needed = list(REQUIRED_KEYS) + (list(identity.teacher["targets"]) if identity and identity.teacher else [])
    missing = [key for key in needed if key not in tensors]
    if missing:
        raise CacheError(f"code cache {where} lacks {missing}; it holds {sorted(tensors)}")
    lengths = {key: (value.shape[0] if value.ndim else None) for key, value in tensors.items()}
    if len(set(lengths.values())) > 1 or None in lengths.values():
        raise CacheError(f"code cache {where} has rows of unequal length (every tensor needs one row per sample): "
                         + ", ".join(f"{key} {n}" for key, n in sorted(lengths.items())))
    _check_ids(tensors["codes"], "codes", identity.vq["codebook_size"] if identity else None, "the VQ codebook", where)
    _check_ids(tensors["text"], "text", identity.text["vocab_size"] if identity else None, "the text vocabulary",
               where)
    if identity is not None:
        _check_width(tensors["codes"], "codes", identity.num_tokens, where)
        _check_width(tensors["text"], "text", identity.text["context_length"], where)
    for key in TEACHER_KEYS:
        if key in tensors:
            _check_finite(tensors[key], key, where)


def _check_ids(ids: torch.Tensor, key: str, size: Optional[int], what: str, where: Any) -> None:
    if ids.dtype == torch.bool or ids.is_floating_point() or ids.is_complex():
        raise CacheError(f"code cache {where}: {key} must hold integer ids, got {ids.dtype}")
    if ids.ndim != 2:
        raise CacheError(f"code cache {where}: {key} must be [samples, ids], got shape {tuple(ids.shape)}")
    if not ids.numel():
        return
    low, high = (int(v) for v in torch.aminmax(ids))
    if low < 0 or (size is not None and high >= size):
        valid = f"[0, {size})" if size is not None else "[0, ...)"
        raise CacheError(f"code cache {where}: {key} holds ids from {low} to {high}, outside {what}'s {valid}; "
                         f"the cache was built for another model or is damaged. {_REBUILD}")


def _check_width(ids: torch.Tensor, key: str, width: int, where: Any) -> None:
    if ids.shape[1] != width:
        raise CacheError(f"code cache {where}: {key} rows hold {ids.shape[1]} ids, the model takes {width}")


def finite_rows(values: torch.Tensor) -> torch.Tensor:
    """``[N]`` bools: whether every value of each row of ``values [N, ...]`` is finite."""
    return torch.isfinite(values.reshape(len(values), -1)).all(dim=1)


def _check_finite(values: torch.Tensor, key: str, where: Any) -> None:
    """Floats required; non-finite rows are named in a warning, not refused: the trainer skips the steps they fall
    in (a cache the builder writes has none: it skips such samples)."""
    if not values.is_floating_point():
        raise CacheError(f"code cache {where}: {key} must hold floats, got {values.dtype}")
    rows = (~finite_rows(values)).nonzero().flatten().tolist() if values.numel() else []
    if rows:
        warnings.warn(f"code cache {where}: {key} is not finite (NaN or inf) in {len(rows)} row(s), e.g. {rows[:5]}; "
                      "the training steps whose batches hold them will be skipped as non-finite. Rebuild the cache "
                      "with toklip-train --build-cache, which skips such samples", stacklevel=2)


# the directory layout ------------------------------------------------------------------------------
_FILE_NAME = re.compile(r"r\d{5}-of-(\d{5})")  # the files of a build: r<rank>-of-<world size>...


def _prefix(rank: int, world_size: int) -> str:
    return f"r{rank:05d}-of-{world_size:05d}"


def _manifests(directory: Path) -> list[dict]:
    """Every rank's manifest of a finished build in ``directory``, in rank order."""
    found = sorted(directory.glob("r*-of-*.json"))
    if not found:
        raise CacheError(f"{directory} holds no finished code-cache build (no r*-of-*.json manifest): the build was "
                         f"interrupted, or this is not a cache. Build it: toklip-train --config CONFIG --build-cache "
                         f"{directory} data.train=SOURCE")
    manifests = [json.loads(path.read_text()) for path in found]
    worlds = sorted({m["world_size"] for m in manifests})
    if len(worlds) > 1:
        raise CacheError(f"{directory} mixes builds over {worlds} ranks; delete it and rebuild")
    missing = sorted(set(range(worlds[0])) - {m["rank"] for m in manifests})
    if missing:
        names = ", ".join(f"{_prefix(r, worlds[0])}.json" for r in missing[:4])
        raise CacheError(f"{directory} is a build over {worlds[0]} ranks, but rank(s) {missing} have not finished "
                         f"(no {names}): run the build for them (same command, RANK set), or rebuild")
    if len({json.dumps(m["identity"], sort_keys=True) for m in manifests}) > 1:
        raise CacheError(f"the ranks of {directory} were built with other frozen parts: delete it and rebuild")
    return sorted(manifests, key=lambda m: m["rank"])


class CacheWriter:
    """One rank's part of a cache directory: rows arrive in batches and leave in chunk files of at most
    ``chunk_bytes`` (at least one row each), each written atomically, so at most one chunk is held at a
    time; :meth:`close` writes the rank's manifest, which makes its part visible to readers.

    Starting removes this rank's files of an earlier build in ``directory``; a directory holding a build
    over another number of ranks is refused.
    """

    def __init__(self, directory: str | Path, identity: CacheIdentity, rank: int = 0, world_size: int = 1,
                 chunk_bytes: int = DEFAULT_CHUNK_BYTES, source: str = ""):
        if not 0 <= rank < world_size:
            raise ValueError(f"rank {rank} is not in [0, {world_size}) (world_size {world_size})")
        if chunk_bytes <= 0:
            raise ValueError(f"chunk_bytes must be positive, got {chunk_bytes}")
        self.directory, self.identity, self.chunk_bytes = Path(directory), identity, chunk_bytes
        self.rank, self.world_size, self.source = rank, world_size, source
        self.prefix = _prefix(rank, world_size)
        self._prepare_directory()
        self.pending: list[dict[str, torch.Tensor]] = []
        self.held_rows, self.rows_per_chunk = 0, 0
        self.chunks: list[dict[str, Any]] = []

    def _prepare_directory(self) -> None:
        if self.directory.is_file():
            raise CacheError(f"{self.directory} is a file (a single-file cache?); give a directory for the new cache")
        self.directory.mkdir(parents=True, exist_ok=True)
        others = sorted(p.name for p in self.directory.glob("r*-of-*")
                        if (m := _FILE_NAME.match(p.name)) and int(m.group(1)) != self.world_size)
        if others:
            raise CacheError(f"{self.directory} holds a build over another number of ranks ({others[0]}, ...); "
                             "delete it or choose another directory")
        for stale in [*self.directory.glob(f"{self.prefix}*"), *self.directory.glob(f".{self.prefix}*")]:
            stale.unlink()

    def add(self, rows: dict[str, torch.Tensor]) -> None:
        """Append a batch of rows (equal first dimensions, ``record`` among them); full chunks are written."""
        count = len(rows[RECORD_KEY])
        if not self.rows_per_chunk and count:
            row_bytes = sum(v[:1].numel() * v.element_size() for v in rows.values())
            self.rows_per_chunk = max(1, self.chunk_bytes // row_bytes)
        start = 0
        while start < count:
            take = min(count - start, self.rows_per_chunk - self.held_rows)
            self.pending.append({key: value[start:start + take] for key, value in rows.items()})
            self.held_rows += take
            start += take
            if self.held_rows == self.rows_per_chunk:
                self._write_chunk()

    def _write_chunk(self) -> None:
        if not self.held_rows:
            return
        tensors = {key: torch.cat([part[key] for part in self.pending]).contiguous() for key in self.pending[0]}
        name = f"{self.prefix}-c{len(self.chunks):05d}.safetensors"
        with atomic_path(self.directory / name) as tmp:
            save_file(tensors, str(tmp), metadata={METADATA_KEY: self.identity.to_json()})
        self.chunks.append({"file": name, "rows": self.held_rows})
        self.pending, self.held_rows = [], 0

    def close(self, skipped: int = 0) -> dict[str, Any]:
        """Write the last chunk and this rank's manifest; returns the manifest."""
        self._write_chunk()
        manifest = {"format": FORMAT_VERSION, "rank": self.rank, "world_size": self.world_size,
                    "source": self.source, "samples": sum(c["rows"] for c in self.chunks), "skipped": skipped,
                    "chunks": self.chunks, "identity": dataclasses.asdict(self.identity)}
        with atomic_path(self.directory / f"{self.prefix}.json") as tmp:
            tmp.write_text(json.dumps(manifest, indent=1))
        return manifest
