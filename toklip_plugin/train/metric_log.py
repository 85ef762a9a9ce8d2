"""Rank 0's training metrics: ``metrics.jsonl`` (one line per logged step), and the reporters of
``run.report_to``: TensorBoard (``<out>/tensorboard``) and W&B (``<out>/wandb``).

A run resumed at step ``s`` repeats the steps after ``s`` that an interrupted run had logged; the logger
drops those lines (and TensorBoard events) on opening, so the file holds each step once. W&B keeps one run
across restarts: the first run stores its id in ``<out>/wandb-run-id`` and a resumed one continues that run
(``resume="allow"``). W&B accepts only increasing steps, so steps the interrupted run had logged past its
last checkpoint keep their first values there.
"""
from __future__ import annotations

import json
import math
import os
import secrets
import string
from pathlib import Path
from typing import Any, Optional, Sequence

from ..io import atomic_path

__all__ = ["MetricLogger", "wandb_run_id", "WANDB_ID_FILE"]

WANDB_ID_FILE = "wandb-run-id"


class MetricLogger:
    """``report_to``: reporters besides ``metrics.jsonl`` ("tensorboard", "wandb"); ``start_step``: the step
    the run starts from (the resumed checkpoint's; 0 for a new run); ``name``: the W&B run's name (default:
    the name of ``out``)."""

    def __init__(self, out: Path, report_to: Sequence[str], config: dict[str, Any], start_step: int = 0,
                 name: Optional[str] = None):
        path = out / "metrics.jsonl"
        _truncate_after(path, start_step)
        self.file = open(path, "a")
        self.tb = None
        if "tensorboard" in report_to:
            from torch.utils.tensorboard import SummaryWriter

            # events of steps after start_step, from the run that was interrupted, are discarded
            self.tb = SummaryWriter(str(out / "tensorboard"), purge_step=start_step + 1 if start_step else None)
        self.wandb = None
        if "wandb" in report_to:
            import wandb

            self.wandb = wandb.init(project=os.environ.get("WANDB_PROJECT", "toklip"), name=name or out.resolve().name,
                                    id=wandb_run_id(out, resuming=start_step > 0), resume="allow", dir=str(out),
                                    config=config, allow_val_change=True)  # a resume may change the run's length

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


def wandb_run_id(out: Path, resuming: bool) -> str:
    """The W&B run id of the run in ``out``: when resuming, the one stored there; otherwise (a new run, or one
    started over from step 0) a new one, stored atomically before W&B sees it."""
    path = out / WANDB_ID_FILE
    stored = path.read_text().strip() if resuming and path.is_file() else ""
    if stored:
        return stored
    new = "".join(secrets.choice(string.ascii_lowercase + string.digits) for _ in range(8))  # W&B's own id alphabet
    with atomic_path(path) as tmp:
        tmp.write_text(new + "\n")
    return new


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
