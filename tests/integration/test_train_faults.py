"""Training never loses good work: non-finite steps, changed configs, concurrent runs, broken checkpoints."""
from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from toklip_plugin.factory import get_tokenizer
from toklip_plugin.train import Trainer, load_train_config
from toklip_plugin.train.state import ResumeError, RunLock, list_checkpoints, load_checkpoint, save_checkpoint


def _write_cache(path: Path, nan_rows: slice = slice(0, 0)) -> Path:
    """64 cached samples (codes, caption ids, teacher targets); ``nan_rows`` of the teacher targets are NaN."""
    gen = torch.Generator().manual_seed(0)
    teacher = torch.randn(64, 64, generator=gen)
    teacher[nan_rows] = float("nan")
    save_file({"codes": torch.randint(0, 1024, (64, 64), generator=gen),
               "text": get_tokenizer("toklip-tiny")([f"a photo of thing {i % 7}" for i in range(64)]),
               "teacher_pooled": teacher}, str(path))
    return path


def _trainer(cache: Path, out: Path, *overrides: str, allow=()) -> Trainer:
    config = load_train_config("toklip-tiny", ["data.kind=cache", f"data.train={cache}", f"run.output_dir={out}",
                                               "optim.batch_size=8", "optim.warmup_steps=1", "run.save_every=1",
                                               "run.keep_last=5", "run.tensorboard=false", *overrides])
    return Trainer(config, allow_config_change=allow)


def _steps(out: Path) -> list[int]:
    return [load_checkpoint(p)["step"] for p in list_checkpoints(out / "checkpoints")]


def _metric_rows(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]


def test_a_nan_target_skips_its_step_without_touching_the_model(tmp_path):
    cache = _write_cache(tmp_path / "cache.safetensors", nan_rows=slice(0, 1))  # one sample in 64
    trainer = _trainer(cache, tmp_path / "run", "optim.steps=10")
    trainer.fit()
    rows = _metric_rows(tmp_path / "run")
    skipped = [r for r in rows if r["nonfinite"]]
    assert skipped and all(r["total"] is None for r in skipped)  # strict JSON: NaN written as null
    assert trainer.step == 10 and trainer.consumed == 10 + len(skipped)  # skipped batches stay consumed
    assert all(torch.isfinite(p).all() for p in trainer.model.encoder.parameters())
    assert _steps(tmp_path / "run")[-1] == 10


def test_nonfinite_steps_in_a_row_stop_the_run_and_keep_the_finite_checkpoints(tmp_path):
    cache = _write_cache(tmp_path / "cache.safetensors")
    _trainer(cache, tmp_path / "run", "optim.steps=2").fit()
    before = {p.name: p.read_bytes() for p in list_checkpoints(tmp_path / "run" / "checkpoints")}
    _write_cache(cache, nan_rows=slice(0, 64))  # every teacher target broken from now on
    with pytest.raises(FloatingPointError, match="not finite.*3 in a row"):
        _trainer(cache, tmp_path / "run", "optim.steps=6", "run.max_nonfinite_steps=3", "run.keep_last=2").fit()
    after = {p.name: p.read_bytes() for p in list_checkpoints(tmp_path / "run" / "checkpoints")}
    assert after == before  # nothing saved, nothing pruned
    state = load_checkpoint(list_checkpoints(tmp_path / "run" / "checkpoints")[-1])
    assert all(torch.isfinite(v).all() for v in state["model"].values() if v.is_floating_point())


def test_resuming_under_a_changed_config_is_refused_with_the_changed_keys(tmp_path):
    cache = _write_cache(tmp_path / "cache.safetensors")
    _trainer(cache, tmp_path / "run", "optim.steps=2", "optim.lr=1e-3").fit()
    saved_config = (tmp_path / "run" / "config.yaml").read_text()
    with pytest.raises(ResumeError) as refused:
        _trainer(cache, tmp_path / "run", "optim.steps=4", "optim.lr=0.5", "model.overrides={encoder: {depth: 1}}").fit()
    assert "optim.lr: 0.001 -> 0.5" in str(refused.value)
    assert "model.overrides: {} -> {'encoder': {'depth': 1}}" in str(refused.value)
    assert "optim.steps" not in str(refused.value)  # training on for longer is no config change
    assert (tmp_path / "run" / "config.yaml").read_text() == saved_config  # written only after the decision
    resumed = _trainer(cache, tmp_path / "run", "optim.steps=4", "optim.lr=0.5", allow=["optim.lr"])
    resumed.fit()
    assert resumed.step == 4 and "lr: 0.5" in (tmp_path / "run" / "config.yaml").read_text()


def test_a_second_run_on_a_locked_directory_stops_at_once_naming_the_holder(tmp_path):
    cache = _write_cache(tmp_path / "cache.safetensors")
    with RunLock(tmp_path / "run"):
        with pytest.raises(ResumeError, match=rf"in use by another run \(pid {__import__('os').getpid()}\)"):
            _trainer(cache, tmp_path / "run", "optim.steps=1").fit()
    assert not (tmp_path / "run" / "checkpoints").exists()
    _trainer(cache, tmp_path / "run", "optim.steps=1").fit()  # released: the directory is usable again


def test_an_unreadable_newest_checkpoint_falls_back_to_the_previous_one(tmp_path):
    cache = _write_cache(tmp_path / "cache.safetensors")
    _trainer(cache, tmp_path / "run", "optim.steps=3").fit()
    newest = list_checkpoints(tmp_path / "run" / "checkpoints")[-1]
    newest.write_bytes(newest.read_bytes()[: newest.stat().st_size // 2])  # truncated by a full disk
    stale = tmp_path / "run" / "checkpoints" / ".step-00000004.pt.x1y2.tmp"
    stale.write_bytes(b"half a checkpoint")
    trainer = _trainer(cache, tmp_path / "run", "optim.steps=3")
    with pytest.warns(UserWarning, match=rf"{newest.name} cannot be read"):
        trainer.fit()
    assert not stale.exists()
    assert _metric_rows(tmp_path / "run")[-1]["step"] == 3  # step 3 was trained again from step 2
    assert math.isfinite(_metric_rows(tmp_path / "run")[-1]["total"])


def test_a_checkpoint_of_another_world_size_is_refused(tmp_path):
    cache = _write_cache(tmp_path / "cache.safetensors")
    _trainer(cache, tmp_path / "run", "optim.steps=1").fit()
    state = load_checkpoint(list_checkpoints(tmp_path / "run" / "checkpoints")[-1])
    save_checkpoint(tmp_path / "run" / "checkpoints", 2, {**state, "step": 2, "world_size": 2}, keep_last=5)
    with pytest.raises(ResumeError, match="written by 2 ranks, this run has 1"):
        _trainer(cache, tmp_path / "run", "optim.steps=3").fit()
