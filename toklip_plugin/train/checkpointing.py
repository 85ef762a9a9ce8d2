"""Training checkpoints: atomic files ``step-00001000.pt`` in ``<output_dir>/checkpoints``.

A checkpoint is written under a temporary name, fsynced and then renamed (atomic on POSIX), so
the newest ``step-*.pt`` is always complete: a crash mid-save leaves at worst a stray temporary
file, which is never picked as the latest. Only the newest ``keep_last`` checkpoints are kept.
Files are read back with ``torch.load(weights_only=True)``.
"""
from __future__ import annotations

import os
import re
import tempfile
from pathlib import Path
from typing import Any, Optional

import torch

from ..checkpoints import native_to_released, safe_load

__all__ = ["save_checkpoint", "latest_checkpoint", "list_checkpoints", "load_checkpoint", "export_model"]

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
    _atomic_torch_save(state, final)
    for old in list_checkpoints(directory)[:-keep_last] if keep_last > 0 else []:
        old.unlink(missing_ok=True)
    return final


def load_checkpoint(path: str | Path) -> dict[str, Any]:
    return safe_load(path)


def _atomic_torch_save(obj: Any, final: Path) -> None:
    fd, tmp = tempfile.mkstemp(prefix=f".{final.name}.", suffix=".tmp", dir=final.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            torch.save(obj, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, final)
    finally:
        Path(tmp).unlink(missing_ok=True)


def export_model(model: torch.nn.Module, directory: str | Path) -> dict[str, Path]:
    """Export a trained TokLIP: our ``save_pretrained`` directory and the released ``.pt`` layout."""
    directory = Path(directory)
    pretrained = directory / "toklip"
    model.save_pretrained(pretrained)
    released = directory / "toklip_released.pt"
    state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    _atomic_torch_save({"state_dict": native_to_released(state)}, released)
    return {"pretrained": pretrained, "released": released}
