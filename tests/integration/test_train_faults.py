"""Training never loses good work: non-finite steps, changed configs, concurrent runs, broken checkpoints."""
from __future__ import annotations

import itertools
import json
import math
import re
from pathlib import Path
from typing import Any

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from safetensors.torch import save_file

from toklip_plugin.demo.synthetic import make_samples, write_csv
from toklip_plugin.factory import get_tokenizer
from toklip_plugin.train import Trainer, load_train_config
from toklip_plugin.train.config import TrainConfig
from toklip_plugin.train.data import SampleStream, StreamPosition
from toklip_plugin.train.distributed import DistEnv
from toklip_plugin.train.state import (ResumeError, RunLock, list_checkpoints, load_checkpoint, restore_rng,
                                       save_checkpoint)


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
                                               "run.keep_last=5", "run.report_to=none", *overrides])
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


def test_new_training_data_in_a_finished_run_directory_is_refused_not_silently_reexported(tmp_path):
    first, second = _write_cache(tmp_path / "first.safetensors"), _write_cache(tmp_path / "second.safetensors")
    _trainer(first, tmp_path / "run", "optim.steps=2").fit()
    saved_config = (tmp_path / "run" / "config.yaml").read_text()
    exported = (tmp_path / "run" / "export" / "toklip_released.pt").read_bytes()
    with pytest.raises(ResumeError, match=re.escape(f"data.train: '{first}' -> '{second}'")):
        _trainer(second, tmp_path / "run", "optim.steps=2").fit()
    assert (tmp_path / "run" / "config.yaml").read_text() == saved_config  # still names the data it was trained on
    assert (tmp_path / "run" / "export" / "toklip_released.pt").read_bytes() == exported  # not re-exported


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


def _ids(batch: dict) -> list[tuple[int, ...]]:
    """The cached samples of a batch, each named by its row of codes (64 random codes: unique)."""
    return [tuple(row) for row in batch["codes"].tolist()]


def _first_checkpoint(cache: Path, out: Path) -> dict:
    """The state a 1-step run writes (real weights and optimizer), to be resumed or rewritten."""
    _trainer(cache, out, "optim.steps=1").fit()
    return load_checkpoint(list_checkpoints(out / "checkpoints")[-1])


def test_a_two_rank_checkpoint_resumes_on_one_process_with_the_rest_of_the_epoch(tmp_path):
    cache = _write_cache(tmp_path / "cache.safetensors")
    state = _first_checkpoint(cache, tmp_path / "run")
    config = _trainer(cache, tmp_path / "unused").config
    seen, cursors = [], []
    for rank in (0, 1):  # what 2 ranks read in 2 steps of 8 (4 each), from the real stream
        position = StreamPosition.start(rank, 2, 1)
        for batch in itertools.islice(SampleStream(config.data, lambda r: r, 4, position, config.run.seed), 2):
            seen += _ids(batch)
            position = position.after(batch["cursor"])
        cursors += position.cursors
    data = {"batches": 2, "skipped": 0, "workers": 1, "next_worker": 0, "cursors": cursors}
    save_checkpoint(tmp_path / "run" / "checkpoints", 2,
                    {**state, "step": 2, "world_size": 2, "data": data, "rng": state["rng"] * 2}, keep_last=5)
    resumed = _trainer(cache, tmp_path / "run", "optim.steps=8")
    assert resumed.resume() and resumed.step == 2
    batches = resumed.batches()
    for _ in range(6):  # 48 samples: the rest of the 64-sample epoch
        seen += _ids(next(batches))
    assert len(seen) == len(set(seen)) == 64  # every sample once: none repeated, none lost


def test_a_checkpoint_without_data_cursors_replays_with_a_warning_and_needs_its_world_size(tmp_path):
    cache = _write_cache(tmp_path / "cache.safetensors")
    state = _first_checkpoint(cache, tmp_path / "run")
    expected = list(itertools.islice(_trainer(cache, tmp_path / "unused").batches(), 3))
    legacy = {**state, "step": 2, "data": {"batches": 2, "skipped": 0}}  # what an older version saved
    save_checkpoint(tmp_path / "run" / "checkpoints", 2, legacy, keep_last=5)
    resumed = _trainer(cache, tmp_path / "run", "optim.steps=8")
    with pytest.warns(UserWarning, match="no data cursors.*replaying the stream up to batch 2"):
        assert resumed.resume()
    assert _ids(next(resumed.batches())) == _ids(expected[2])
    save_checkpoint(tmp_path / "run" / "checkpoints", 3, {**legacy, "step": 3, "world_size": 2}, keep_last=5)
    with pytest.raises(ResumeError, match="written by 2 ranks before data cursors were saved"):
        _trainer(cache, tmp_path / "run", "optim.steps=8").resume()


def test_a_rank_the_checkpoint_did_not_have_is_seeded_from_the_run_seed_plus_its_rank():
    saved = [{"cpu": torch.Generator().manual_seed(7).get_state(), "cuda": None}]  # written by one rank
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(123)
        restore_rng(saved, DistEnv(1, 2, torch.device("cpu")), seed=5)
        assert torch.equal(torch.get_rng_state(), torch.Generator().manual_seed(5 + 1).get_state())
        restore_rng(saved, DistEnv(0, 2, torch.device("cpu")), seed=5)
        assert torch.equal(torch.get_rng_state(), saved[0]["cpu"])


# two processes on gloo (one spawn for both tests: starting a rank costs far more than its work) -------------
def _rank_main(rank: int, init_file: str, jobs: dict[str, tuple], out: dict) -> None:
    """Each ``name: (function, *args)`` of ``jobs`` as ``function(env, *args)`` on this rank of 2 (gloo)."""
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=2)
    try:
        out[rank] = {name: function(DistEnv(rank, 2, torch.device("cpu")), *args)
                     for name, (function, *args) in jobs.items()}
    finally:
        dist.destroy_process_group()


def _resume_and_read(env: DistEnv, config: TrainConfig, batches: int) -> dict[str, Any]:
    """The samples of this rank's first ``batches`` batches after resuming, and its RNG state after the resume."""
    trainer = Trainer(config, env=env)
    trainer.resume()
    rng = torch.get_rng_state()
    stream = trainer.batches()
    return {"ids": [i for _ in range(batches) for i in _ids(next(stream))], "rng": rng}


def _skipped_totals(env: DistEnv, csv_path: Path, out: Path) -> dict[str, int]:
    """skipped_total after 4 steps without a break, and after 2 steps then a resume to 4."""
    def run(directory: Path, steps: int) -> tuple[int, int]:  # (skipped_total, this rank's own count)
        config = load_train_config("toklip-tiny", [f"data.train={csv_path}", f"run.output_dir={directory}",
                                                   f"optim.steps={steps}", "optim.batch_size=8", "run.save_every=2",
                                                   "optim.warmup_steps=1", "run.report_to=none"])
        trainer = Trainer(config, env=env)
        return trainer.fit()["skipped_total"], trainer.skipped

    uninterrupted, _ = run(out / "whole", 4)
    _, before = run(out / "broken", 2)  # each rank's own count at the checkpoint
    return {"uninterrupted": uninterrupted, "before": before, "resumed": run(out / "broken", 4)[0]}


@pytest.fixture(scope="module")
def two_rank_runs(tmp_path_factory) -> dict[str, Any]:
    """A one-rank checkpoint after one step of 8 resumed by 2 ranks, reading 7 steps of 2 x 4 (the other 56 of
    the 64 samples); and a 2-rank run on images, 7 of 24 unreadable, interrupted at step 2 and resumed to 4."""
    tmp = tmp_path_factory.mktemp("two-ranks")
    cache = _write_cache(tmp / "cache.safetensors")
    state = _first_checkpoint(cache, tmp / "run")
    trainer = _trainer(cache, tmp / "run", "optim.steps=8")
    csv_path = write_csv(make_samples(24, seed=3), tmp / "data")
    for index in (0, 3, 5, 6, 9, 17, 20):
        (tmp / "data" / "images" / f"{index:06d}.png").write_bytes(b"not a png")
    jobs = {"resume": (_resume_and_read, trainer.config, 7), "skipped": (_skipped_totals, csv_path, tmp)}
    with mp.Manager() as manager:
        out = manager.dict()
        mp.start_processes(_rank_main, args=(str(tmp / "gloo-init"), jobs, out), nprocs=2, start_method="spawn")
        ranks = dict(out)
    return {"state": state, "seed": trainer.config.run.seed, "first": _ids(next(trainer.batches())),
            "resume": [ranks[r]["resume"] for r in (0, 1)], "skipped": [ranks[r]["skipped"] for r in (0, 1)]}


@pytest.mark.slow
def test_a_one_rank_checkpoint_resumes_on_two_processes_with_the_rest_of_the_epoch(two_rank_runs):
    resumed = two_rank_runs["resume"]
    seen = two_rank_runs["first"] + resumed[0]["ids"] + resumed[1]["ids"]
    assert len(seen) == len(set(seen)) == 64  # the epoch read once across the resume: none repeated, none lost
    assert torch.equal(resumed[0]["rng"], two_rank_runs["state"]["rng"][0]["cpu"])
    assert torch.equal(resumed[1]["rng"], torch.Generator().manual_seed(two_rank_runs["seed"] + 1).get_state())


@pytest.mark.slow
def test_the_skipped_count_after_a_two_rank_resume_equals_the_uninterrupted_runs(two_rank_runs):
    ranks = two_rank_runs["skipped"]
    assert ranks[0]["before"] != ranks[1]["before"]  # so restoring rank 0's count on both would show
    assert ranks[0]["resumed"] == ranks[1]["resumed"] == ranks[0]["uninterrupted"] > 0
