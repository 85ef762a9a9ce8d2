"""What the benchmark modules share: the one timing helper, the table printer, the common flags."""
from __future__ import annotations

import argparse
import time
from typing import Callable, Sequence

import torch


def best_time(fn: Callable[[], object], repeats: int = 3, warmup: int = 1) -> float:
    """Best wall time of ``fn`` over ``repeats`` runs (seconds), after ``warmup`` untimed runs.

    Queued CUDA work is finished before the clock starts and before it stops, so a run's time
    is the device's time, not the time to enqueue kernels.
    """
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        _synchronize()
        start = time.perf_counter()
        fn()
        _synchronize()
        times.append(time.perf_counter() - start)
    return min(times)


def _synchronize() -> None:
    if torch.cuda.is_available():
        torch.cuda.synchronize()


def per_model_parser(doc: str, batch_size: int) -> argparse.ArgumentParser:
    """``--models``, ``--batch-size`` and ``--repeats``: the flags of a benchmark timed per TokLIP config."""
    parser = argparse.ArgumentParser(description=doc.split("\n\n")[0])
    parser.add_argument("--models", nargs="+", default=["toklip-tiny", "toklip-b16"])
    parser.add_argument("--batch-size", type=int, default=batch_size)
    parser.add_argument("--repeats", type=int, default=3)
    return parser


def print_table(headers: Sequence[str], rows: Sequence[Sequence[object]]) -> None:
    """A markdown table, so results paste straight into notes and issues."""
    cells = [[str(c) for c in headers]] + [[f"{c:.3g}" if isinstance(c, float) else str(c) for c in r] for r in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(headers))]
    line = lambda r: "| " + " | ".join(c.ljust(w) for c, w in zip(r, widths)) + " |"
    print(line(cells[0]))
    print("|" + "|".join("-" * (w + 2) for w in widths) + "|")
    for r in cells[1:]:
        print(line(r))
