"""``toklip-train --build-cache``: a data set tokenized once trains like the images it came from."""
from __future__ import annotations

import pytest
import torch
from safetensors.torch import load_file

from toklip_plugin.factory import get_tokenizer
from toklip_plugin.train.cli import main
from toklip_plugin.train.config import load_train_config
from toklip_plugin.train import Trainer
from toklip_plugin.demo.synthetic import make_samples, write_csv


def _losses(overrides: list[str], steps: int) -> list[float]:
    trainer = Trainer(load_train_config("toklip-tiny", overrides))
    trainer.student.train()
    batches = trainer.batches()
    return [trainer.train_step(batches)["total"] for _ in range(steps)]


def test_training_from_the_built_cache_gives_the_losses_of_training_from_the_images(tmp_path, capsys):
    csv_path = write_csv(make_samples(16, seed=3), tmp_path / "data")
    common = ["optim.batch_size=8", "optim.warmup_steps=1", f"run.output_dir={tmp_path / 'run'}"]
    cache = tmp_path / "codes.safetensors"
    main(["--config", "toklip-tiny", "--build-cache", str(cache), f"data.train={csv_path}", *common])
    assert "16 samples" in capsys.readouterr().out
    stored = load_file(str(cache))
    assert stored["codes"].shape == (16, 64) and stored["teacher_pooled"].shape[0] == 16
    # the same 16 samples in the same order: the per-epoch shuffle depends only on the seed and the size
    # the cache holds one view of each image (the eval transform): compare with un-augmented image training
    from_images = _losses([f"data.train={csv_path}", "data.augment=false", *common], steps=4)
    from_cache = _losses(["data.kind=cache", f"data.train={cache}", *common], steps=4)
    assert from_cache == pytest.approx(from_images, abs=1e-5)
    assert len(set(from_images)) == 4  # the steps differ, so matching them means something


def test_samples_that_fail_to_decode_are_skipped_and_counted(tmp_path, capsys):
    samples = make_samples(3, seed=4)
    csv_path = write_csv(samples, tmp_path / "data")
    with open(csv_path, "a") as f:
        f.write("images/missing.png,a photo of nothing,0\n")
    cache = tmp_path / "codes.safetensors"
    main(["--config", "toklip-tiny", "--build-cache", str(cache), f"data.train={csv_path}", "loss.distill_weight=0",
          f"run.output_dir={tmp_path / 'run'}"])
    assert "3 samples, 1 skipped" in capsys.readouterr().out
    stored = load_file(str(cache))
    assert set(stored) == {"codes", "text"} and len(stored["codes"]) == 3  # no distillation: no teacher targets
    assert torch.equal(stored["text"], get_tokenizer("toklip-tiny")([s.caption for s in samples]))  # file order
