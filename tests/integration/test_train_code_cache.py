"""``toklip-train --build-cache``: a data set tokenized once trains like the images it came from."""
from __future__ import annotations

import json

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import save_file

from toklip_plugin.factory import create_vq, get_tokenizer
from toklip_plugin.models.teacher import build_teacher
from toklip_plugin.train import code_cache
from toklip_plugin.train.cache_file import CacheError, check_cache_for_run, read_cache_identity, read_code_cache
from toklip_plugin.train.cli import main
from toklip_plugin.train.code_cache import build_code_cache
from toklip_plugin.train.config import load_train_config
from toklip_plugin.train import Trainer
from toklip_plugin.demo.synthetic import make_samples, write_csv, write_shards


def _losses(overrides: list[str], steps: int) -> list[float]:
    trainer = Trainer(load_train_config("toklip-tiny", overrides))
    trainer.student.train()
    batches = trainer.batches()
    return [trainer.train_step(batches)["total"] for _ in range(steps)]


def test_training_from_the_built_cache_gives_the_losses_of_training_from_the_images(tmp_path, capsys):
    csv_path = write_csv(make_samples(16, seed=3), tmp_path / "data")
    common = ["optim.batch_size=8", "optim.warmup_steps=1", f"run.output_dir={tmp_path / 'run'}"]
    cache = tmp_path / "codes"
    main(["--config", "toklip-tiny", "--build-cache", str(cache), f"data.train={csv_path}", *common])
    assert "16 samples" in capsys.readouterr().out
    stored = read_code_cache(cache)
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
    cache = tmp_path / "codes"
    main(["--config", "toklip-tiny", "--build-cache", str(cache), f"data.train={csv_path}", "loss.distill_weight=0",
          f"run.output_dir={tmp_path / 'run'}"])
    assert "3 samples, 1 skipped" in capsys.readouterr().out
    stored = read_code_cache(cache)
    assert set(stored) == {"codes", "text"} and len(stored["codes"]) == 3  # no distillation: no teacher targets
    assert torch.equal(stored["text"], get_tokenizer("toklip-tiny")([s.caption for s in samples]))  # file order


def _config(source: str, *overrides: str):
    return load_train_config("toklip-tiny", [f"data.train={source}", *overrides])


def test_a_run_whose_vq_or_teacher_is_not_the_caches_is_refused_naming_both(tmp_path):
    csv_path = write_csv(make_samples(4, seed=5), tmp_path / "data")
    cache = build_code_cache(_config(str(csv_path)), tmp_path / "codes")["path"]
    identity = read_cache_identity(cache)
    assert (identity.vq["codebook_size"], identity.text["context_length"], identity.image_size) == (1024, 16, 128)
    assert identity.teacher["targets"] == ["teacher_pooled"]  # the config distils the pooled embedding only
    same = Trainer(_config(cache, "data.kind=cache", f"run.output_dir={tmp_path / 'run'}"))
    check_cache_for_run(same.config, same.model.vq, same.teacher)  # the trainer's own VQ and teacher: accepted
    with pytest.raises(CacheError) as err:  # another seed: another random VQ and teacher, refused by the trainer
        Trainer(_config(cache, "data.kind=cache", "run.seed=1", f"run.output_dir={tmp_path / 'run1'}"))
    message = str(err.value)
    assert f"VQ: the cache's is toklip-tiny (model.vq_checkpoint=None, 1024 codes, weights sha256 " \
           f"{identity.vq['sha256'][:12]})" in message
    assert "teacher: the cache's is" in message and identity.teacher["sha256"][:12] in message
    assert "--build-cache" in message


def _shard_source(tmp_path, samples) -> str:
    return write_shards(samples, tmp_path / "shards", per_shard=2)  # 5 samples: shards of 2, 2 and 1


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["csv", "wds"])  # wds: three shards, split by shard; csv: split by row
def test_ranks_build_disjoint_parts_whose_union_is_the_one_process_build(tmp_path, kind):
    samples = make_samples(5, seed=6)
    source = str(write_csv(samples, tmp_path / "data")) if kind == "csv" else _shard_source(tmp_path, samples)
    config = _config(source, f"data.kind={kind}", "loss.distill_weight=0")
    whole = read_code_cache(build_code_cache(config, tmp_path / "one", rank=0, world_size=1)["path"])
    parts = [build_code_cache(config, tmp_path / "two", rank=rank, world_size=2) for rank in (0, 1)]
    split = read_code_cache(tmp_path / "two")
    assert all(part["samples"] > 0 for part in parts) and sum(part["samples"] for part in parts) == 5
    assert set(split) == set(whole) == {"codes", "text"}
    assert all(torch.equal(split[key], whole[key]) for key in whole)  # same rows, in the source's order
    assert torch.equal(whole["text"], get_tokenizer("toklip-tiny")([s.caption for s in samples]))


@pytest.mark.slow
def test_the_build_writes_full_chunks_while_it_still_reads_the_source(tmp_path, monkeypatch):
    samples = make_samples(5, seed=7)
    csv_path, out = write_csv(samples, tmp_path / "data"), tmp_path / "codes"
    row_bytes = 8 * (64 + 16 + 1)  # int64 codes (8x8 grid), caption ids (context 16) and record of toklip-tiny
    chunks_on_disk: list[int] = []

    def watched(data):  # the chunk files on disk as each record is read
        for record in source_records(data):
            chunks_on_disk.append(len(list(out.glob("*.safetensors"))))
            yield record

    source_records = code_cache.source_records
    monkeypatch.setattr(code_cache, "source_records", watched)
    built = build_code_cache(_config(str(csv_path), "loss.distill_weight=0"), out, batch_size=2,
                             chunk_bytes=2 * row_bytes + row_bytes // 2)
    # each batch of two rows fills a chunk, which is on disk before the next batch's records are read
    assert chunks_on_disk == [0, 0, 1, 1, 2] and built["chunks"] == 3
    manifest = json.loads((out / "r00000-of-00001.json").read_text())
    assert [chunk["rows"] for chunk in manifest["chunks"]] == [2, 2, 1]
    for chunk in manifest["chunks"]:
        with safe_open(str(out / chunk["file"]), "pt") as f:
            assert f.get_slice("codes").get_shape()[0] == chunk["rows"]
    stored = read_code_cache(out)
    assert stored["codes"].shape == (5, 64) and stored["codes"].dtype == torch.int64  # the row size assumed above
    assert torch.equal(stored["text"], get_tokenizer("toklip-tiny")([s.caption for s in samples]))


def test_samples_whose_teacher_targets_are_not_finite_are_skipped_not_stored(tmp_path):
    csv_path = write_csv(make_samples(2, seed=8), tmp_path / "data")
    config = _config(str(csv_path))
    teacher = build_teacher(config.teacher, config.model_config(), config.run.seed)
    weights = {key: value.clone() for key, value in teacher.state_dict().items()}
    weights = {key: value.fill_(float("nan")) if value.is_floating_point() else value for key, value in weights.items()}
    save_file(weights, str(tmp_path / "nan_teacher.safetensors"))
    with pytest.raises(RuntimeError, match=r"no usable sample .* \(2 skipped\)"):  # every target is NaN
        build_code_cache(_config(str(csv_path), f"teacher.checkpoint={tmp_path / 'nan_teacher.safetensors'}"),
                         tmp_path / "codes")


def test_a_cache_without_identity_is_checked_against_the_runs_codebook(tmp_path):
    config = _config(str(tmp_path / "old.safetensors"), "data.kind=cache", "loss.distill_weight=0")
    codes = torch.zeros(3, 64, dtype=torch.long)
    codes[2, 5] = 1024  # toklip-tiny's codebook has 1024 codes
    save_file({"codes": codes, "text": get_tokenizer("toklip-tiny")(["a", "b", "c"])}, config.data.train)
    with pytest.raises(CacheError, match=r"codes holds ids from 0 to 1024, outside the VQ codebook's \[0, 1024\)"):
        check_cache_for_run(config, create_vq(config.model_config(), seed=0), None)

