"""The demo's report: held-out numbers as mean +- std over seeds, the paper's ordering, plots.

A row is one model (teacher, student, ablations) with one metrics dict per seed; the summary of a
row adds the mean and the sample standard deviation (n - 1) over its seeds. ``results.json`` holds
both, so a reader can recompute every printed number.
"""
from __future__ import annotations

import json
import statistics
from pathlib import Path
from typing import Any, Mapping, Sequence

__all__ = ["METRICS", "summarize", "paper_ordering", "format_table", "format_ordering", "plot_losses",
           "write_results"]

METRICS = {"zeroshot_top1": "zero-shot top-1", "t2i_r1": "T->I R@1", "i2t_r1": "I->T R@1"}
NAME_WIDTH, CELL_WIDTH = 36, 16


def summarize(per_seed: Mapping[int, Mapping[str, float]]) -> dict[str, Any]:
    """``{seed: metrics}`` -> ``{"seeds", "per_seed", "mean", "std"}`` (std 0 for a single seed)."""
    seeds = sorted(per_seed)
    values = {m: [per_seed[s][m] for s in seeds] for m in METRICS}
    return {"seeds": seeds, "per_seed": [dict(per_seed[s]) for s in seeds],
            "mean": {m: statistics.fmean(v) for m, v in values.items()},
            "std": {m: statistics.stdev(v) if len(v) > 1 else 0.0 for m, v in values.items()}}


def paper_ordering(rows: Mapping[str, Mapping[str, Any]], main: str, ablations: Sequence[str]) -> dict[str, Any]:
    """Per metric: whether ``main`` has the best mean of the students, its margin over the best ablation,
    and whether that margin exceeds the larger of the two standard deviations."""
    out = {}
    for metric in METRICS:
        rival = max(ablations, key=lambda name: rows[name]["mean"][metric])
        margin = rows[main]["mean"][metric] - rows[rival]["mean"][metric]
        spread = max(rows[main]["std"][metric], rows[rival]["std"][metric])
        out[metric] = {"best": margin > 0, "margin": margin, "closest_ablation": rival,
                       "margin_exceeds_std": abs(margin) > spread}
    return out


def format_table(rows: Mapping[str, Mapping[str, Any]], chance: float) -> str:
    """One line per row: the mean +- std of each metric over the row's seeds."""
    header = f"{'model (held-out split)':<{NAME_WIDTH}} {'seeds':>5}" + "".join(
        f" {title:>{CELL_WIDTH}}" for title in METRICS.values())
    lines = [header, "-" * len(header)]
    for name, row in rows.items():
        cells = "".join(f" {_mean_std(row, m):>{CELL_WIDTH}}" for m in METRICS)
        lines.append(f"{name:<{NAME_WIDTH}} {len(row['seeds']):>5}{cells}")
    lines.append(f"{'chance':<{NAME_WIDTH}} {'':>5} {chance:>{CELL_WIDTH}.1%}")
    return "\n".join(lines)


def _mean_std(row: Mapping[str, Any], metric: str) -> str:
    mean = f"{100 * row['mean'][metric]:.1f}"
    return f"{mean}%" if len(row["seeds"]) == 1 else f"{mean} ± {100 * row['std'][metric]:.1f}%"


def format_ordering(ordering: Mapping[str, Mapping[str, Any]], main: str) -> str:
    """The footer: does the paper's ordering (``main`` best) show, metric by metric?"""
    parts = []
    for metric, o in ordering.items():
        verdict = "yes" if o["best"] else f"no ({o['closest_ablation']} is higher)"
        size = "larger" if o["margin_exceeds_std"] else "smaller"
        parts.append(f"{METRICS[metric]}: {verdict}, margin {100 * o['margin']:+.1f} points, {size} than the std")
    shows = all(o["best"] and o["margin_exceeds_std"] for o in ordering.values())
    summary = "shows on every metric" if shows else "does not show clearly on every metric"
    return f"paper's ordering ({main} best) {summary} at toy scale:\n  " + "\n  ".join(parts)


def plot_losses(path: Path, teacher_losses: Sequence[float], run_dirs: Mapping[str, Sequence[Path]]) -> None:
    """Teacher loss per step (left); each student row's total loss, one line per seed (right)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4))
    left.plot(teacher_losses)
    left.set(title="teacher (sigmoid loss, pixels)", xlabel="step", ylabel="loss", yscale="log")
    for (name, dirs), color in zip(run_dirs.items(), plt.rcParams["axes.prop_cycle"].by_key()["color"]):
        for i, run_dir in enumerate(dirs):
            logged = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
            right.plot([r["step"] for r in logged], [r["total"] for r in logged], color=color, alpha=0.7,
                       label=name if i == 0 else None)
    right.set(title="toklip-tiny students (total loss, codes; one line per seed)", xlabel="step", yscale="log")
    right.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def write_results(path: Path, **sections: Any) -> None:
    path.write_text(json.dumps(sections, indent=2, default=str) + "\n")
