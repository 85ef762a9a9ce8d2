"""Running a model over a loader: device, mixed precision, progress bar, skipped-file bookkeeping."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Iterable, Optional

import torch

from ..precision import autocast
from ..progress import ProgressBar
from .data import Batch, Skipped

__all__ = ["Encoded", "run_batches"]


@dataclass
class Encoded:
    """Per-image outputs in loader order (float32, on CPU), their targets, and the files skipped."""

    features: dict[str, torch.Tensor]
    targets: torch.Tensor
    skipped: list[Skipped] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.targets)

    def skip_report(self) -> dict:
        return {"skipped": len(self.skipped), "skipped_files": [f"{s.name}: {s.reason}" for s in self.skipped]}


@torch.no_grad()
def run_batches(fn: Callable[[torch.Tensor], dict[str, torch.Tensor]], loader: Iterable[Batch],
                device: torch.device, amp: str = "none", desc: str = "images",
                total: Optional[int] = None) -> Encoded:
    """Apply ``fn`` (images -> named per-image tensors) to every batch; raise if no image was readable."""
    outputs: dict[str, list[torch.Tensor]] = {}
    targets, skipped = [], []
    with ProgressBar(total=total, desc=desc, unit="img") as bar:
        for batch in loader:
            skipped.extend(batch.skipped)
            if len(batch.targets):
                with autocast(device, amp):
                    result = fn(batch.images.to(device))
                for name, value in result.items():
                    outputs.setdefault(name, []).append(value.float().cpu())
                targets.append(batch.targets)
            bar.update(len(batch.targets) + len(batch.skipped))
    if not targets:
        reasons = "; ".join(f"{s.name}: {s.reason}" for s in skipped[:3])
        raise ValueError(f"no readable image among {len(skipped)} files ({reasons})")
    return Encoded({k: torch.cat(v) for k, v in outputs.items()}, torch.cat(targets), skipped)
