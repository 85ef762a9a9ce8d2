"""W&B (offline, the real ``wandb``): a resumed ``toklip-train`` logs under the run id of the run it resumes,
a new run directory gets a new one; the progress output of a run whose stderr is a file is a few lines."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from helpers.wandb_records import offline_runs

from toklip_plugin.demo.synthetic import make_samples, write_csv
from toklip_plugin.progress import INTERVAL_ENV
from toklip_plugin.train.metric_log import WANDB_ID_FILE


def _train(data: Path, out: Path, steps: int, home: Path) -> subprocess.CompletedProcess:
    """A tiny ``toklip-train`` process reporting to W&B offline (its stdout and stderr are pipes, not a terminal)."""
    env = {**os.environ, "WANDB_MODE": "offline", "WANDB_CONFIG_DIR": str(home / "config"),
           "WANDB_CACHE_DIR": str(home / "cache"), "WANDB_DATA_DIR": str(home / "data"), INTERVAL_ENV: "3600"}
    args = [sys.executable, "-m", "toklip_plugin.train.cli", "--config", "toklip-tiny", f"data.train={data}",
            f"run.output_dir={out}", f"optim.steps={steps}", "optim.warmup_steps=1", "run.report_to=[wandb]",
            "run.name=tiny-wandb"]
    done = subprocess.run(args, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    return done


@pytest.mark.slow
def test_a_resumed_run_logs_under_the_same_wandb_run_and_a_new_directory_gets_a_new_one(tmp_path):
    data = write_csv(make_samples(16, seed=0), tmp_path / "data")
    first = _train(data, tmp_path / "run", 2, tmp_path)  # stopped at step 2 (its last checkpoint)
    resumed = _train(data, tmp_path / "run", 4, tmp_path)  # the same command, run on to step 4
    runs = offline_runs(tmp_path / "run")
    assert len(runs) == 2
    run_id = runs[0]["id"]
    assert [r["id"] for r in runs] == [run_id, run_id] and all(r["folder"].endswith(f"-{run_id}") for r in runs)
    assert [r["name"] for r in runs] == ["tiny-wandb", "tiny-wandb"]
    assert [r["steps"] for r in runs] == [[1, 2], [3, 4]]
    assert (tmp_path / "run" / WANDB_ID_FILE).read_text().strip() == run_id

    _train(data, tmp_path / "other", 2, tmp_path)
    (other,) = offline_runs(tmp_path / "other")
    assert other["id"] != run_id

    for process, bar, steps in ((first, "tiny-wandb (train)", 2), (resumed, "tiny-wandb (resumed)", 4)):
        lines = [line for line in process.stderr.split("\n") if bar in line]
        assert len(lines) == 1 and "\r" not in lines[0]  # not a redraw per step: one last line
        assert f"100% {steps}/{steps}" in lines[0]
