"""The W&B side of ``MetricLogger`` (issue 12, item 6), in W&B's offline mode with the real ``wandb``: what W&B
recorded (run id, name, project, config, logged steps and values) is read back from its own run files.
Gaps found by mutation testing (issue 15, item 3); tests/MUTATION.md lists the mutants these kill."""
from __future__ import annotations

import json

import pytest
import wandb
from helpers.wandb_records import offline_runs

from toklip_plugin.train.metric_log import WANDB_ID_FILE, MetricLogger


@pytest.fixture
def offline_wandb(tmp_path, monkeypatch):
    """W&B offline, its config / cache / data folders (and the working directory) inside ``tmp_path``."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("WANDB_PROJECT", raising=False)
    for key, value in {"WANDB_MODE": "offline", "WANDB_SILENT": "true", "WANDB_DISABLE_GIT": "true"}.items():
        monkeypatch.setenv(key, value)
    for key, folder in {"WANDB_CONFIG_DIR": "wb-config", "WANDB_CACHE_DIR": "wb-cache", "WANDB_DATA_DIR": "wb-data",
                        "WANDB_DIR": "wb-elsewhere"}.items():
        monkeypatch.setenv(key, str(tmp_path / folder))
    yield
    wandb.teardown()  # W&B reads its environment once per process: the next test starts from its own


def _recorded(out) -> list[dict]:
    """The runs W&B recorded under ``out``: its service writes the run files out when it shuts down."""
    wandb.teardown()
    return offline_runs(out)


def _run(out, config, steps, start_step=None, name=None):
    kwargs = {} if start_step is None else {"start_step": start_step}
    logger = MetricLogger(out, ["wandb"], config, name=name, **kwargs)
    for step in steps:
        logger.log(step, {"total": step / 4, "lr": 0.01})
    logger.close()


def test_a_wandb_run_records_its_name_project_config_and_each_logged_step_in_the_output_directory(tmp_path,
                                                                                                   offline_wandb):
    out = tmp_path / "exp-3"
    out.mkdir()
    config = {"optim": {"steps": 6, "lr": 0.01}, "run": {"name": None}}
    _run(out, config, steps=[5, 7], start_step=0)
    (run,) = _recorded(out)  # under out/wandb, not W&B's default folder
    assert (run["name"], run["project"], run["config"]) == ("exp-3", "toklip", config)
    assert run["history"] == {5: {"total": 1.25, "lr": 0.01}, 7: {"total": 1.75, "lr": 0.01}}
    assert run["id"] == (out / WANDB_ID_FILE).read_text().strip() and run["folder"].endswith(run["id"])
    assert not (tmp_path / "wb-elsewhere").exists()


def test_the_run_name_and_the_wandb_project_environment_variable_are_used(tmp_path, offline_wandb, monkeypatch):
    monkeypatch.setenv("WANDB_PROJECT", "ablations")
    _run(tmp_path, {}, steps=[1], start_step=0, name="baseline")
    (run,) = _recorded(tmp_path)
    assert (run["name"], run["project"]) == ("baseline", "ablations")


def test_a_resume_from_step_1_continues_the_run_and_a_run_started_over_gets_a_new_one(tmp_path, offline_wandb):
    _run(tmp_path, {"optim": {"steps": 2}}, steps=[1], start_step=0)
    _run(tmp_path, {"optim": {"steps": 4}}, steps=[2, 3], start_step=1)  # resumed at its step-1 checkpoint
    _run(tmp_path, {"optim": {"steps": 4}}, steps=[1], start_step=0)  # started over in the same directory
    first, resumed, again = _recorded(tmp_path)
    assert resumed["id"] == first["id"] and again["id"] != first["id"]
    assert [r["steps"] for r in (first, resumed, again)] == [[1], [2, 3], [1]]
    assert resumed["config"] == {"optim": {"steps": 4}}  # the resumed run's own (longer) config


def test_wandb_is_told_to_resume_the_stored_run_id(tmp_path, offline_wandb):
    """Offline, W&B ignores ``resume`` (it cannot ask the server); online, ``resume="allow"`` is what makes a run
    started with a known id continue that run instead of failing or forking it."""
    logger = MetricLogger(tmp_path, ["wandb"], {}, start_step=0)
    try:
        assert logger.wandb.settings.resume == "allow"
    finally:
        logger.close()


def test_a_logger_opened_without_a_start_step_starts_a_new_log(tmp_path):
    (tmp_path / "metrics.jsonl").write_text("".join(json.dumps({"step": s, "total": 1.0}) + "\n" for s in (1, 2)))
    logger = MetricLogger(tmp_path, [], {})
    logger.log(1, {"total": 0.5})
    logger.close()
    assert (tmp_path / "metrics.jsonl").read_text().splitlines() == ['{"step": 1, "total": 0.5}']
