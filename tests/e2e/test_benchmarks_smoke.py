"""``python -m benchmarks.run --smoke``: every benchmark workload still runs and reports sane numbers.

Not a speed test: the smoke setting uses tiny batches and one repeat, so only the report is
checked (the rows each workload promises, finite positive values, shares within [0, 1]),
never a timing. It runs as users run it: a subprocess from the repository root.
"""
from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
TRAIN = "train step toklip-tiny b2"
SAMPLE = "sample tiny GPT + tiny encoder 64 tok"
UNIFIED = "unified tiny Qwen2 + toklip-tiny encoder 16 codes"
# (workload, ours, baseline) of the smoke plan, in the order run.py runs the workloads
EXPECTED_ROWS = [
    ("encode toklip-tiny b2", "fused causal", "explicit -inf mask"),
    ("token encoder toklip-tiny b2", "fused causal", "explicit -inf mask"),
    ("token encoder toklip-tiny b2", "fused causal", "bidirectional"),
    ("LLaVA tower toklip-tiny b2", "TokLIP tower", "LLaVA CLIP tower"),
    ("LLaVA tower toklip-tiny b2", "TokLIP codes given", "LLaVA CLIP tower"),
    (TRAIN, "grad checkpointing", "no checkpointing"),  # images/s
    (TRAIN, "grad checkpointing", "no checkpointing"),  # peak MiB
    (TRAIN, "bf16 autocast", "fp32"),
    (TRAIN, "vq share of the step", "whole step"),
    (TRAIN, "text share of the step", "whole step"),
    (TRAIN, "teacher share of the step", "whole step"),
    (TRAIN, "student share of the step", "whole step"),
    (SAMPLE, "fused + KV-cached encoder", "plain LlamaGen"),
    (SAMPLE, "fused + KV-cached encoder", "fused, prefix re-encode"),
    ("GFLOPs/img toklip-tiny", "token encoder", "frozen VQ encoder"),
    ("encode toklip-tiny b2", "achieved GFLOP/s", "measured matmul GFLOP/s"),
    ("resume toklip-tiny at step 3 b2", "data cursors", "replay past samples"),
    (UNIFIED, "TokLIP feedback, KV-cached encoder", "re-encode the prefix"),
    (UNIFIED, "TokLIP feedback, KV-cached encoder", "no TokLIP feedback"),
]


@pytest.mark.slow
def test_benchmark_run_smoke_reports_every_workload_with_finite_positive_values(tmp_path):
    rows_file = tmp_path / "rows.json"
    result = subprocess.run([sys.executable, "-m", "benchmarks.run", "--smoke", "--json", str(rows_file)],
                            cwd=ROOT, capture_output=True, text=True, timeout=900)
    assert result.returncode == 0, result.stderr[-3000:]
    rows = json.loads(rows_file.read_text())["rows"]
    assert [(r["workload"], r["ours"], r["baseline"]) for r in rows] == EXPECTED_ROWS
    for r in rows:
        values = [r["ours_value"], r["baseline_value"], r["ratio"]]
        assert all(math.isfinite(v) for v in values), r
        if r["unit"] == "share":
            assert 0.0 <= r["ours_value"] <= 1.0 and r["baseline_value"] == 1.0, r
        else:
            assert all(v > 0 for v in values), r
    table = result.stdout.strip().splitlines()[-len(rows):]  # the table is printed last, one line per row
    assert [line.split("|")[1].strip() for line in table] == [workload for workload, _, _ in EXPECTED_ROWS]
