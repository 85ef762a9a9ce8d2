"""Resume state: what a training checkpoint holds, and its files ``step-00001000.pt`` in
``<output_dir>/checkpoints``.

A state holds everything a resume needs to reproduce the uninterrupted run: trainable weights,
optimizer, scheduler, scaler, step, data position and every rank's RNG state. A file is written
under a temporary name, fsynced and then renamed (atomic on POSIX), so the newest ``step-*.pt``
is always complete: a crash mid-save leaves at worst a stray temporary file, which is never picked
as the latest. Only the newest ``keep_last`` files are kept. Files are read back with
``torch.load(weights_only=True)``.
"""
from __future__ import annotations

import fcntl
import os
import pickle
import re
import warnings
from pathlib import Path
from typing import Any, Mapping, Optional, Sequence

import torch
import torch.distributed as dist

from ..checkpoints import native_to_released, safe_load
from ..io import atomic_torch_save
from .distributed import DistEnv

__all__ = ["save_checkpoint", "latest_checkpoint", "list_checkpoints", "load_checkpoint", "load_latest_readable",
           "remove_stale_temporaries", "export_model",
           "rng_states", "restore_rng", "config_changes", "check_resume_config", "RESUMABLE_CHANGES",
           "ResumeError", "RunLock"]

# settings a resumed run may change without being asked to: where and how often it reports, how many data
# workers decode, and the run's length (training on from the last step). Everything else (model, teacher,
# data, loss, batch, optimiser, precision, seed) would make the resumed run a different run.
RESUMABLE_CHANGES = ("optim.steps", "optim.epochs", "data.workers", "run.output_dir", "run.save_every",
                     "run.keep_last", "run.log_every", "run.eval_every", "run.eval_data", "run.report_to",
                     "run.name", "run.tensorboard", "run.wandb",  # the last two: in checkpoints of older runs
                     "run.device", "run.text_cache_size", "run.max_nonfinite_steps",
                     "run.grad_checkpointing", "run.distributed", "run.collective_timeout_s",
                     "run.push_to_hub")

class ResumeError(ValueError):
    """A checkpoint that this run must not resume from (another config, other weights, other ranks)."""


_NAME = re.compile(r"^step-(\d{8})\.pt$")


def list_checkpoints(directory: str | Path) -> list[Path]:
    """Complete checkpoints in ``directory``, oldest first."""
    directory = Path(directory)
    if not directory.is_dir():
        return []
    found = [p for p in directory.iterdir() if _NAME.match(p.name)]
    return sorted(found, key=lambda p: int(_NAME.match(p.name).group(1)))


def latest_checkpoint(directory: str | Path) -> Optional[Path]:
    found = list_checkpoints(directory)
    return found[-1] if found else None


def save_checkpoint(directory: str | Path, step: int, state: dict[str, Any], keep_last: int) -> Path:
    """Write ``state`` as ``step-<step>.pt`` atomically, then prune all but the newest ``keep_last``."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    final = directory / f"step-{step:08d}.pt"
    atomic_torch_save(state, final)
    for old in list_checkpoints(directory)[:-keep_last] if keep_last > 0 else []:
        old.unlink(missing_ok=True)
    return final


def load_checkpoint(path: str | Path) -> dict[str, Any]:
    return safe_load(path)


def load_latest_readable(directory: str | Path) -> Optional[tuple[Path, dict[str, Any]]]:
    """``(path, state)`` of the newest checkpoint that reads back, trying newer to older; a file that does
    not read (truncated, empty, corrupt) is reported with a warning and skipped. ``None`` when none reads."""
    for path in reversed(list_checkpoints(directory)):
        try:
            state = load_checkpoint(path)
        except (RuntimeError, EOFError, OSError, ValueError, pickle.UnpicklingError) as err:
            warnings.warn(f"checkpoint {path} cannot be read ({type(err).__name__}: {str(err).splitlines()[0][:200]}); "
                          "falling back to the one before it", stacklevel=2)
            continue
        if isinstance(state, dict) and {"step", "model", "optimizer"} <= set(state):
            return path, state
        warnings.warn(f"checkpoint {path} is not a training state (keys {sorted(state)[:8]}); skipping it", stacklevel=2)
    return None


def remove_stale_temporaries(directory: str | Path) -> list[Path]:
    """Delete the temporary files a crash mid-save left in ``directory`` (``.step-*.tmp``); the removed paths."""
    directory = Path(directory)
    stale = sorted(directory.glob(".step-*.tmp")) if directory.is_dir() else []
    for path in stale:
        path.unlink(missing_ok=True)
    return stale


def export_model(model: torch.nn.Module, directory: str | Path, model_card: Any = False) -> dict[str, Path]:
    """Export a trained TokLIP: our ``save_pretrained`` directory (with a model card when ``model_card`` is
    given, see ``TokLIP.save_pretrained``) and the released ``.pt`` layout."""
    directory = Path(directory)
    pretrained = directory / "toklip"
    model.save_pretrained(pretrained, model_card=model_card)
    released = directory / "toklip_released.pt"
    state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    atomic_torch_save({"state_dict": native_to_released(state)}, released)
    return {"pretrained": pretrained, "released": released}


def rng_states(env: DistEnv) -> list[dict[str, Optional[torch.Tensor]]]:
    """Every rank's RNG state, gathered on every rank (a collective)."""
    local = {"cpu": torch.get_rng_state(),
             "cuda": torch.cuda.get_rng_state() if env.device.type == "cuda" else None}
    if env.world_size == 1:
        return [local]
    states: list = [None] * env.world_size
    dist.all_gather_object(states, local)
    return states


def restore_rng(states: list[dict[str, Optional[torch.Tensor]]], env: DistEnv, seed: int) -> None:
    """Set this rank's RNG state from :func:`rng_states`' list; a rank the saving run did not have (resumed on
    more processes) is seeded from ``seed + rank``, as a fresh run seeds it."""
    if env.rank >= len(states):
        torch.manual_seed(seed + env.rank)
        return
    state = states[env.rank]
    torch.set_rng_state(state["cpu"])
    if state["cuda"] is not None and env.device.type == "cuda":
        torch.cuda.set_rng_state(state["cuda"])


def config_changes(old: Mapping[str, Any], new: Mapping[str, Any], prefix: str = "") -> dict[str, tuple[Any, Any]]:
    """``{dotted.key: (old, new)}`` for every leaf that differs between two nested config dicts."""
    changes: dict[str, tuple[Any, Any]] = {}
    for key in sorted(set(old) | set(new)):
        a, b, name = old.get(key), new.get(key), f"{prefix}{key}"
        if isinstance(a, Mapping) and isinstance(b, Mapping) and a and b:
            changes.update(config_changes(a, b, f"{name}."))
        elif a != b:
            changes[name] = (a, b)
    return changes


def check_resume_config(path: Path, old: Mapping[str, Any], new: Mapping[str, Any], allowed: Sequence[str]) -> None:
    """Refuse to resume ``path`` under a config that changes more than :data:`RESUMABLE_CHANGES` and
    ``allowed`` (keys or section prefixes the user named with ``--allow-config-change``)."""
    def permitted(key: str) -> bool:
        return key in RESUMABLE_CHANGES or any(key == a or key.startswith(f"{a}.") for a in allowed)

    refused = {k: v for k, v in config_changes(old, new).items() if not permitted(k)}
    if refused:
        lines = "\n".join(f"  {key}: {a!r} -> {b!r}" for key, (a, b) in refused.items())
        raise ResumeError(f"{path} was written under another config; resuming would silently mix two runs:\n{lines}\n"
                         f"Use a new run.output_dir, or rerun with --allow-config-change {','.join(refused)} "
                         "if the change is meant")


class RunLock:
    """An exclusive lock on a run directory (``<output_dir>/.lock`` holding the holder's pid), so that two
    runs never write one directory. ``acquire`` fails at once, naming the holder, when it is taken."""

    def __init__(self, directory: str | Path):
        self.path = Path(directory) / ".lock"
        self.file = None

    def acquire(self) -> "RunLock":
        self.path.parent.mkdir(parents=True, exist_ok=True)
        file = open(self.path, "a+")
        try:
            fcntl.flock(file, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            file.seek(0)
            holder = file.read().strip() or "unknown"
            file.close()
            raise ResumeError(f"{self.path.parent} is in use by another run (pid {holder}); wait for it to finish, "
                              "or give this run another run.output_dir") from None
        file.seek(0)
        file.truncate()
        file.write(f"{os.getpid()}\n")
        file.flush()
        self.file = file
        return self

    def release(self) -> None:
        if self.file is not None:
            fcntl.flock(self.file, fcntl.LOCK_UN)
            self.file.close()
            self.file = None

    def __enter__(self) -> "RunLock":
        return self.acquire()

    def __exit__(self, *exc: object) -> None:
        self.release()
