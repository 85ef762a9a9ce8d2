"""Experiment logs: ``run.report_to`` and ``run.name`` parse in one place; TensorBoard alone writes no W&B
files; the stored W&B run id is kept by a resume and renewed by a new run."""
from __future__ import annotations

import pytest
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from toklip_plugin.train.config import load_train_config
from toklip_plugin.train.metric_log import WANDB_ID_FILE, MetricLogger, wandb_run_id
from toklip_plugin.train.state import ResumeError, check_resume_config


@pytest.mark.parametrize("override, expected", [
    (None, ["tensorboard"]),
    ("run.report_to=[tensorboard, wandb]", ["tensorboard", "wandb"]),
    ("run.report_to=wandb", ["wandb"]),
    ("run.report_to=[wandb, wandb]", ["wandb"]),
    ("run.report_to=none", []),
    ("run.report_to=[]", []),
    ("run.report_to=null", []),
])
def test_report_to_is_a_list_of_reporters(override, expected):
    config = load_train_config("toklip-b16-base", [override] if override else [])
    assert config.run.report_to == expected


@pytest.mark.parametrize("override", ["run.report_to=[tensorboard, mlflow]", "run.report_to=comet",
                                      "run.report_to=[none]", "run.report_to=true", "run.report_to={wandb: 1}"])
def test_an_unknown_reporter_is_refused_naming_the_valid_ones(override):
    with pytest.raises(ValueError, match=r"run\.report_to.*tensorboard, wandb \(or none"):
        load_train_config("toklip-tiny", [override])


@pytest.mark.parametrize("key", ["tensorboard", "wandb"])
def test_the_replaced_flags_are_refused_naming_run_report_to(key, tmp_path):
    message = rf"run\.{key} was replaced by run\.report_to: \[{key}\]"
    with pytest.raises(ValueError, match=message):
        load_train_config("toklip-tiny", [f"run.{key}=true"])
    old_file = tmp_path / "old.yaml"
    old_file.write_text(f"base: toklip-tiny\nrun:\n  {key}: false\n")
    with pytest.raises(ValueError, match=message):
        load_train_config(old_file)


def test_the_run_name_defaults_to_the_output_directorys_name(tmp_path):
    assert load_train_config("toklip-tiny", [f"run.output_dir={tmp_path / 'exp-7'}"]).run.run_name == "exp-7"
    named = load_train_config("toklip-tiny", [f"run.output_dir={tmp_path / 'exp-7'}", "run.name=baseline"])
    assert named.run.run_name == "baseline" and named.to_dict()["run"]["name"] == "baseline"
    with pytest.raises(ValueError, match="run.name must be a non-empty name"):
        load_train_config("toklip-tiny", ["run.name=''"])


def test_a_resume_may_change_reporters_and_name_and_read_a_checkpoint_with_the_old_flags(tmp_path):
    new = load_train_config("toklip-tiny", ["run.report_to=[wandb]", "run.name=second"]).to_dict()
    old = {**new, "run": {**new["run"], "report_to": [], "name": None}}
    check_resume_config(tmp_path / "step.pt", old, new, allowed=())
    older = {**new, "run": {k: v for k, v in new["run"].items() if k not in ("report_to", "name")}}
    older["run"].update(tensorboard=False, wandb=False)  # a checkpoint written before run.report_to
    check_resume_config(tmp_path / "step.pt", older, new, allowed=())
    with pytest.raises(ResumeError, match="run.seed"):  # the check still sees other run keys
        check_resume_config(tmp_path / "step.pt", {**old, "run": {**old["run"], "seed": 1}}, new, allowed=())


def test_tensorboard_alone_writes_its_events_and_no_wandb_files(tmp_path):
    logger = MetricLogger(tmp_path, ["tensorboard"], config={}, start_step=0)
    for step in (1, 2, 3):
        logger.log(step, {"total": 0.5 * step})
    logger.close()
    events = EventAccumulator(str(tmp_path / "tensorboard"))
    events.Reload()
    assert [(e.step, e.value) for e in events.Scalars("train/total")] == [(1, 0.5), (2, 1.0), (3, 1.5)]
    assert not (tmp_path / "wandb").exists() and not (tmp_path / WANDB_ID_FILE).exists()


def test_no_reporter_writes_only_metrics_jsonl(tmp_path):
    logger = MetricLogger(tmp_path, [], config={}, start_step=0)
    logger.log(1, {"total": 1.0})
    logger.close()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["metrics.jsonl"]


def test_a_resume_keeps_the_stored_wandb_run_id_and_a_new_run_gets_a_new_one(tmp_path):
    (tmp_path / "a").mkdir()
    first = wandb_run_id(tmp_path / "a", resuming=False)
    assert (tmp_path / "a" / WANDB_ID_FILE).read_text().strip() == first
    assert len(first) == 8 and first.isalnum() and first == first.lower()
    assert wandb_run_id(tmp_path / "a", resuming=True) == first
    (tmp_path / "b").mkdir()
    other = wandb_run_id(tmp_path / "b", resuming=True)  # nothing stored yet: a new id, stored
    assert other != first and wandb_run_id(tmp_path / "b", resuming=True) == other
    restarted = wandb_run_id(tmp_path / "a", resuming=False)  # started over from step 0
    assert restarted != first and wandb_run_id(tmp_path / "a", resuming=True) == restarted
