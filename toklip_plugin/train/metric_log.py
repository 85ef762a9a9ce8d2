"""Rank 0's training metrics: ``metrics.jsonl`` (one line per logged step), TensorBoard, optional W&B.

A run resumed at step ``s`` repeats the steps after ``s`` that an interrupted run had logged; the logger
drops those lines (and TensorBoard events) on opening, so the file holds each step once.
"""
from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

from ..io import atomic_path

__all__ = ["MetricLogger"]


class MetricLogger:
    """``start_step``: the step the run starts from (the resumed checkpoint's; 0 for a new run)."""

    def __init__(self, out: Path, tensorboard: bool, wandb: bool, config: dict[str, Any], start_step: int = 0):
        path = out / "metrics.jsonl"
        _truncate_after(path, start_step)
        self.file = open(path, "a")
        self.tb = None
        if tensorboard:
            from torch.utils.tensorboard import SummaryWriter

            # events of steps after start_step, from the run that was interrupted, are discarded
            self.tb = SummaryWriter(str(out / "tensorboard"), purge_step=start_step + 1 if start_step else None)
        self.wandb = None
        if wandb:
            import wandb as wandb_module

            self.wandb = wandb_module.init(project="toklip", dir=str(out), config=config)

    def log(self, step: int, metrics: dict[str, float]) -> None:
        """One line of strict JSON: a non-finite value is written as null (JSON has no NaN)."""
        finite = {k: (v if not isinstance(v, float) or math.isfinite(v) else None) for k, v in metrics.items()}
        self.file.write(json.dumps({"step": step, **finite}, allow_nan=False) + "\n")
        self.file.flush()
        if self.tb:
            for name, value in metrics.items():
                self.tb.add_scalar(f"train/{name}", value, step)
        if self.wandb:
            self.wandb.log(metrics, step=step)

    def close(self) -> None:
        self.file.close()
        if self.tb:
            self.tb.close()
        if self.wandb:
            self.wandb.finish()


def _truncate_after(path: Path, step: int) -> None:
    """Keep the lines of ``path`` up to ``step`` (and drop a line cut short by a crash); rewritten atomically."""
    if not path.exists():
        return
    kept, dropped = [], 0
    for line in path.read_text().splitlines():
        try:
            entry_step = json.loads(line)["step"]
        except (ValueError, KeyError, TypeError):
            entry_step = None
        if entry_step is not None and entry_step <= step:
            kept.append(line + "\n")
        else:
            dropped += 1
    if dropped:
        with atomic_path(path) as tmp:
            tmp.write_text("".join(kept))
