"""The trainer end to end on tiny data: frozen parts, corrupt shards, DDP over torchrun, SIGKILL + resume."""
from __future__ import annotations

import io
import json
import os
import signal
import subprocess
import sys
import tarfile
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from toklip_plugin.checkpoints import load_any_checkpoint
from toklip_plugin.factory import create_model, get_tokenizer, load_toklip
from toklip_plugin.train.state import latest_checkpoint, load_checkpoint, save_checkpoint
from toklip_plugin.train.config import load_train_config
from toklip_plugin.train import Trainer
from toklip_plugin.train.optim import cosine_with_warmup
from toklip_plugin.train.student import build_student
from toklip_plugin.models.teacher import build_teacher
from toklip_plugin.demo.synthetic import make_samples, write_csv, write_shards

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def code_cache(tmp_path_factory) -> Path:
    """Precomputed codes, caption ids and teacher targets for 64 samples (the trainer's ``cache`` kind)."""
    gen = torch.Generator().manual_seed(0)
    captions = [f"a photo of thing {i % 7}" for i in range(64)]
    path = tmp_path_factory.mktemp("cache") / "train.safetensors"
    save_file({"codes": torch.randint(0, 1024, (64, 64), generator=gen),
               "text": get_tokenizer("toklip-tiny")(captions),
               "teacher_pooled": torch.randn(64, 64, generator=gen)}, str(path))
    return path


def _cache_args(cache: Path, out: Path, *extra: str) -> list[str]:
    return ["data.kind=cache", f"data.train={cache}", f"run.output_dir={out}", *extra]


def _run_cli(args: list[str], nproc: int = 1, **popen) -> subprocess.Popen:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    launcher = ([sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}"]
                if nproc > 1 else [sys.executable])
    return subprocess.Popen([*launcher, "-m", "toklip_plugin.train.cli", "--config", "toklip-tiny", *args],
                            env=env, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, **popen)


def _finish(proc: subprocess.Popen) -> str:
    output, _ = proc.communicate(timeout=300)
    assert proc.returncode == 0, output[-3000:]
    return output


def _losses(run: Path) -> dict[int, float]:
    """Step -> total loss; a step logged twice (replayed after a resume) keeps its last value."""
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    return {row["step"]: row["total"] for row in rows}


def test_cosine_schedule_warms_up_linearly_then_decays_to_zero():
    assert [cosine_with_warmup(s, 4, 12) for s in range(4)] == [0.25, 0.5, 0.75, 1.0]
    assert cosine_with_warmup(8, 4, 12) == pytest.approx(0.5)
    assert cosine_with_warmup(12, 4, 12) == pytest.approx(0.0)


def test_only_token_encoder_and_logits_train_while_vq_text_and_teacher_stay_frozen(tmp_path):
    samples = make_samples(8, seed=1)
    csv_path = write_csv(samples, tmp_path / "data")
    config = load_train_config("toklip-tiny", [f"data.train={csv_path}", f"run.output_dir={tmp_path / 'run'}",
                                               "optim.steps=2", "optim.batch_size=4", "optim.warmup_steps=1"])
    trainer = Trainer(config)
    frozen_before = {k: v.clone() for k, v in trainer.model.state_dict().items() if k.startswith(("vq.", "text."))}
    teacher_before = {k: v.clone() for k, v in trainer.teacher.state_dict().items()}
    encoder_before = {k: v.clone() for k, v in trainer.model.encoder.state_dict().items()}
    in_optimizer = {id(p) for group in trainer.optimizer.param_groups for p in group["params"]}
    trainable = {id(p) for p in trainer.model.encoder.parameters()} | {id(trainer.model.logit_scale),
                                                                      id(trainer.model.logit_bias)}
    assert in_optimizer == trainable
    trainer.fit()
    assert not trainer.model.vq.training and not trainer.model.text.training and not trainer.teacher.training
    for key, value in trainer.model.state_dict().items():
        if key in frozen_before:
            assert torch.equal(value, frozen_before[key]), key
    for key, value in trainer.teacher.state_dict().items():
        assert torch.equal(value, teacher_before[key]), key
    changed = [k for k, v in trainer.model.encoder.state_dict().items() if not torch.equal(v, encoder_before[k])]
    assert any(k.startswith("blocks.") for k in changed) and any(k.startswith("code_mlp.") for k in changed)
    assert any(k.startswith("attn_pool.") for k in changed)
    # the export loads back through the public API, in both formats
    exported = load_toklip(tmp_path / "run" / "export" / "toklip")
    released = create_model(exported.config)
    load_any_checkpoint(released, tmp_path / "run" / "export" / "toklip_released.pt")
    for key, value in trainer.model.state_dict().items():
        assert torch.equal(exported.state_dict()[key], value) and torch.equal(released.state_dict()[key], value)


def _corrupt_shard(path: Path) -> None:
    """A shard whose first two samples are broken (an unreadable PNG, a missing caption), then 8 good ones."""
    good = make_samples(8, seed=2)
    write_shards(good, path.parent / "good", per_shard=8)
    with tarfile.open(path, "w") as tar:
        def add(name: str, data: bytes) -> None:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))

        add("bad0.png", b"\x89PNG\r\n\x1a\n not an image at all")
        add("bad0.txt", b"a photo of nothing")
        buffer = io.BytesIO()
        good[0].image.save(buffer, format="PNG")
        add("bad1.png", buffer.getvalue())  # no caption
        with tarfile.open(next((path.parent / "good").glob("*.tar"))) as source:
            for member in source.getmembers():
                add(member.name, source.extractfile(member).read())


def test_a_shard_with_corrupt_samples_trains_through_and_reports_the_skips(tmp_path, capsys):
    shard = tmp_path / "broken-00000.tar"
    _corrupt_shard(shard)
    config = load_train_config("toklip-tiny", ["data.kind=wds", f"data.train={shard}", "data.shuffle_buffer=1",
                                               f"run.output_dir={tmp_path / 'run'}", "optim.steps=2",
                                               "optim.batch_size=4", "optim.warmup_steps=1"])
    metrics = Trainer(config).fit()
    assert metrics["skipped_total"] == 2
    assert torch.isfinite(torch.tensor(metrics["total"]))
    assert "2 samples skipped" in capsys.readouterr().out


def test_checkpoints_are_atomic_and_pruned(tmp_path):
    for step in (1, 2, 3):
        save_checkpoint(tmp_path, step, {"step": step}, keep_last=2)
    (tmp_path / ".step-00000004.pt.123.tmp").write_bytes(b"half a checkpoint")  # a crash mid-save
    assert sorted(p.name for p in tmp_path.glob("step-*.pt")) == ["step-00000002.pt", "step-00000003.pt"]
    assert load_checkpoint(latest_checkpoint(tmp_path))["step"] == 3


def test_sigkill_then_resume_reproduces_the_uninterrupted_losses(tmp_path, code_cache):
    common = ["optim.steps=200", "run.save_every=5", "run.keep_last=2", "optim.batch_size=8"]
    reference = _run_cli(_cache_args(code_cache, tmp_path / "ref", *common))
    killed_dir = tmp_path / "killed"
    victim = _run_cli(_cache_args(code_cache, killed_dir, *common))
    metrics, deadline = killed_dir / "metrics.jsonl", time.monotonic() + 240
    while not (metrics.exists() and len(metrics.read_text().splitlines()) >= 12) and time.monotonic() < deadline:
        time.sleep(0.02)
    victim.send_signal(signal.SIGKILL)
    victim.communicate()
    killed_at = max(_losses(killed_dir))
    assert killed_at < 200, "the run finished before it could be killed"
    resumed = _losses(killed_dir)  # before resuming: the steps the victim logged
    assert latest_checkpoint(killed_dir / "checkpoints") is not None
    _finish(_run_cli(_cache_args(code_cache, killed_dir, *common)))
    _finish(reference)
    expected, got = _losses(tmp_path / "ref"), _losses(killed_dir)
    assert sorted(got) == list(range(1, 201))
    for step in range(1, 201):
        assert abs(got[step] - expected[step]) <= 1e-6, (step, got[step], expected[step])
    assert all(abs(resumed[s] - expected[s]) <= 1e-6 for s in resumed)


@pytest.mark.parametrize("engine", ["ddp", "fsdp"])
def test_torchrun_two_ranks_match_one_process_with_the_same_global_batch(tmp_path, code_cache, engine):
    # a small lr: Adam turns reduction-order noise in near-zero gradients into steps of up to lr
    common = ["optim.steps=4", "run.save_every=4", "optim.batch_size=8", "optim.warmup_steps=1", "optim.lr=1e-4"]
    single = _run_cli(_cache_args(code_cache, tmp_path / "one", *common))
    double = _run_cli(_cache_args(code_cache, tmp_path / "two", *common, f"run.distributed={engine}"), nproc=2)
    _finish(single)
    _finish(double)
    one = load_checkpoint(latest_checkpoint(tmp_path / "one" / "checkpoints"))
    two = load_checkpoint(latest_checkpoint(tmp_path / "two" / "checkpoints"))
    assert one["step"] == two["step"] == 4
    assert set(one["model"]) == set(two["model"]) and any(".encoder.blocks." in k for k in one["model"])
    for key in one["model"]:
        torch.testing.assert_close(two["model"][key], one["model"][key], rtol=1e-4, atol=1e-5, msg=key)
    config = load_train_config("toklip-tiny", _cache_args(code_cache, tmp_path / "unused"))
    initial = build_student(config, build_teacher(config.teacher, config.model_config(), config.run.seed)).state_dict()
    final = {k.removeprefix("model."): v for k, v in one["model"].items()}  # keys of the wrapped student
    moved = [k for k in final if k.startswith("encoder.") and not torch.allclose(final[k], initial[k])]
    assert moved, "training did not change the parameters, so the comparison would prove nothing"


def _train_in_process(code_cache: Path, out: Path, *overrides: str) -> Trainer:
    trainer = Trainer(load_train_config("toklip-tiny", _cache_args(code_cache, out, "optim.steps=3",
                                                                   "run.save_every=3", *overrides)))
    trainer.fit()
    return trainer


def test_gradient_accumulation_matches_the_full_batch_for_a_per_sample_loss(tmp_path, code_cache):
    """Distillation is a mean over samples, so 2 micro-batches of 4 must give the batch-of-8 step."""
    distill_only = ("loss.contrastive=none", "optim.batch_size=8", "optim.lr=1e-4")
    full = _train_in_process(code_cache, tmp_path / "full", *distill_only)
    accumulated = _train_in_process(code_cache, tmp_path / "accum", *distill_only, "optim.accum_steps=2")
    for (name, a), b in zip(full.model.encoder.state_dict().items(), accumulated.model.encoder.state_dict().values()):
        torch.testing.assert_close(b, a, rtol=1e-4, atol=1e-6, msg=name)


def test_bf16_autocast_with_gradient_checkpointing_trains(tmp_path, code_cache):
    trainer = _train_in_process(code_cache, tmp_path / "bf16", "run.precision=bf16", "run.grad_checkpointing=true")
    assert trainer.model.encoder.grad_checkpointing
    assert all(torch.isfinite(p).all() for p in trainer.model.encoder.parameters())
    assert trainer.step == 3


def test_the_text_cache_gives_the_uncached_losses_and_hits_for_repeated_captions(tmp_path, code_cache):
    """The fixture's 64 captions are 7 distinct ones and it holds no ``text_emb``: the frozen text tower runs."""
    losses, trainers = {}, {}
    for size in (0, 1024):
        trainer = Trainer(load_train_config("toklip-tiny", _cache_args(code_cache, tmp_path / str(size),
                                                                       f"run.text_cache_size={size}")))
        trainer.student.train()
        batches = trainer.batches()
        losses[size] = [trainer.train_step(batches)["total"] for _ in range(4)]
        trainers[size] = trainer
    assert trainers[0].targets.text_cache is None
    cache = trainers[1024].targets.text_cache
    assert (cache.misses, cache.hits) == (7, 4 * 8 - 7)
    assert losses[1024] == losses[0]  # bit for bit: a batch with a new caption encodes the whole batch
    assert len(set(losses[0])) == 4
