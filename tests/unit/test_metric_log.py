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


def test_non_finite_values_are_written_as_null_and_every_metric_reaches_tensorboard(tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    logger = MetricLogger(tmp_path, report_to=["tensorboard"], config={}, start_step=0)
    logger.log(3, {"total": float("nan"), "grad_norm": float("inf"), "lr": 0.5, "nonfinite": 1})
    logger.log(4, {"total": 1.25, "grad_norm": 2.0, "lr": 0.25, "nonfinite": 0})
    logger.close()
    lines = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]  # strict JSON
    assert lines == [{"step": 3, "total": None, "grad_norm": None, "lr": 0.5, "nonfinite": 1},
                     {"step": 4, "total": 1.25, "grad_norm": 2.0, "lr": 0.25, "nonfinite": 0}]
    events = EventAccumulator(str(tmp_path / "tensorboard"))
    events.Reload()
    assert sorted(events.Tags()["scalars"]) == ["train/grad_norm", "train/lr", "train/nonfinite", "train/total"]
    assert [(e.step, e.value) for e in events.Scalars("train/lr")] == [(3, 0.5), (4, 0.25)]


def test_a_resumed_run_replaces_the_tensorboard_points_logged_after_its_checkpoint(tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    def run(steps, start_step, value):
        logger = MetricLogger(tmp_path, report_to=["tensorboard"], config={}, start_step=start_step)
        for step in steps:
            logger.log(step, {"total": value})
        logger.close()

    run(range(1, 7), 0, 1.0)  # interrupted after logging step 6, its last checkpoint at step 4
    run(range(5, 8), 4, 2.0)
    events = EventAccumulator(str(tmp_path / "tensorboard"))
    events.Reload()
    points = [(e.step, e.value) for e in events.Scalars("train/total")]
    assert points == [(1, 1.0), (2, 1.0), (3, 1.0), (4, 1.0), (5, 2.0), (6, 2.0), (7, 2.0)]
