"""Rank 0's training metrics: ``metrics.jsonl`` (one line per logged step), TensorBoard, optional W&B."""
from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

__all__ = ["MetricLogger"]


class MetricLogger:
    def __init__(self, out: Path, tensorboard: bool, wandb: bool, config: dict[str, Any]):
        self.file = open(out / "metrics.jsonl", "a")
        self.tb = None
        if tensorboard:
            from torch.utils.tensorboard import SummaryWriter

            self.tb = SummaryWriter(str(out / "tensorboard"))
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
