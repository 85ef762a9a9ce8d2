"""metrics.jsonl holds each step once, also across a resume."""
from __future__ import annotations

import json

from toklip_plugin.train.metric_log import MetricLogger


def _log(out, steps, start_step=0):
    logger = MetricLogger(out, report_to=[], config={}, start_step=start_step)
    for step in steps:
        logger.log(step, {"total": float(step)})
    logger.close()


def _steps(out):
    return [json.loads(line)["step"] for line in (out / "metrics.jsonl").read_text().splitlines()]


def test_a_run_resumed_at_step_4_after_logging_6_steps_logs_each_step_once(tmp_path):
    _log(tmp_path, range(1, 7))  # interrupted after logging step 6, last checkpoint at step 4
    _log(tmp_path, range(5, 9), start_step=4)
    assert _steps(tmp_path) == list(range(1, 9))
    lines = (tmp_path / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(line)["total"] for line in lines] == [float(s) for s in range(1, 9)]


def test_a_line_cut_short_by_a_crash_is_dropped_and_a_new_run_starts_an_empty_log(tmp_path):
    _log(tmp_path, range(1, 4))
    with open(tmp_path / "metrics.jsonl", "a") as f:
        f.write('{"step": 4, "tot')  # killed mid-write
    _log(tmp_path, [4], start_step=3)
    assert _steps(tmp_path) == [1, 2, 3, 4]
    _log(tmp_path, [1], start_step=0)  # no checkpoint: the run starts over
    assert _steps(tmp_path) == [1]
