"""``toklip-demo --quick`` end to end: shards, code cache, teacher, students over seeds, table, pictures."""
from __future__ import annotations

import contextlib
import io
import json
import statistics
import tarfile

import pytest
import torch
import yaml
from PIL import Image

from toklip_plugin import create_model, image_transform, load_toklip, resolve_config
from toklip_plugin.demo.report import paper_ordering, summarize
from toklip_plugin.demo.run import MAIN, STUDENTS, TEACHER, DemoSettings, Frozen, cache_from_shards, main
from toklip_plugin.demo.synthetic import class_names
from toklip_plugin.demo.vq import patch_statistics_vq
from toklip_plugin.train.cache_file import read_code_cache


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    """One ``--quick`` run shared by the tests below: its output folder, results and printed report."""
    out = tmp_path_factory.mktemp("demo")
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        main(["--quick", "--threads", "1", "--out", str(out)])  # one thread: predictable on a shared CI machine
    return out, json.loads((out / "results.json").read_text()), printed.getvalue()


def _shard_members(folder, suffix):
    names = []
    for shard in sorted(folder.glob("train-*.tar")):
        with tarfile.open(shard) as tar:
            names += [m.name for m in tar.getmembers() if m.name.endswith(suffix)]
    return names


@pytest.mark.slow
def test_quick_demo_trains_a_student_far_above_chance_and_writes_its_outputs(demo):
    out, results, printed = demo
    rows, chance = results["rows"], 1 / len(class_names())
    student = rows[MAIN]["mean"]
    assert student["zeroshot_top1"] > 4 * chance
    assert student["t2i_r1"] > 4 * chance
    assert rows[TEACHER]["mean"]["zeroshot_top1"] > 4 * chance
    assert "ablation: random init" in printed and "zero-shot top-1" in printed
    for picture in ("loss_curves.png", "tsne_student_vs_teacher.png"):
        assert (out / picture).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    # the exported student tokenizes pixels with the demo's VQ and pools like the trained student
    exported = load_toklip(out / "students" / "seed0" / "student" / "export" / "toklip")
    images = torch.rand(2, 3, 128, 128) * 2 - 1
    assert exported.encode_image(images).shape == (2, exported.config.embed_dim)


@pytest.mark.slow
def test_demo_prints_every_student_row_as_mean_and_std_over_three_different_seeds(demo):
    _, results, printed = demo
    assert results["student_seeds"] == [0, 1, 2]
    for name in STUDENTS:
        row = results["rows"][name]
        assert row["seeds"] == [0, 1, 2]
        top1 = [seed["zeroshot_top1"] for seed in row["per_seed"]]
        assert row["mean"]["zeroshot_top1"] == pytest.approx(sum(top1) / 3)
        assert row["std"]["zeroshot_top1"] == pytest.approx(statistics.stdev(top1))
        assert len({json.dumps(seed, sort_keys=True) for seed in row["per_seed"]}) == 3  # the seeds differ
        line = next(line for line in printed.splitlines() if line.startswith(name))
        assert f"{100 * row['mean']['t2i_r1']:.1f} ± {100 * row['std']['t2i_r1']:.1f}%" in line
    assert "paper's ordering" in printed


@pytest.mark.slow
def test_demo_students_train_on_the_code_cache_with_the_paper_objective(demo):
    out, results, _ = demo
    expected = {"student": (1000, "teacher"), "no-distill": (0, "teacher"), "random-init": (1000, None)}
    for folder, (distill_weight, init) in expected.items():
        for seed in (0, 1, 2):
            config = yaml.safe_load((out / "students" / f"seed{seed}" / folder / "config.yaml").read_text())
            assert config["loss"]["contrastive"] == "infonce"
            assert config["loss"]["distill_weight"] == distill_weight
            assert config["model"]["init"] == init
            assert config["run"]["seed"] == seed
            assert (config["data"]["kind"], config["data"]["train"]) == ("cache", results["training_cache"]["path"])


@pytest.mark.slow
def test_demo_training_cache_was_built_from_the_shard_files(demo):
    out, results, _ = demo
    cache_report = results["training_cache"]
    written = _shard_members(out / "data", ".png")
    assert len(written) == cache_report["samples_written"] == DemoSettings.quick().train_size
    assert cache_report["samples"] == len(written) - cache_report["skipped"]
    cache = read_code_cache(cache_report["path"])
    assert len(cache["codes"]) == len(cache["text"]) == len(cache["teacher_pooled"]) == cache_report["samples"]
    # the first cached row is the first shard's first image through the demo's saved VQ
    with tarfile.open(sorted((out / "data").glob("train-*.tar"))[0]) as tar:
        image = Image.open(tar.extractfile(written[0])).convert("RGB")
    model = load_toklip("toklip-tiny", vq_checkpoint=out / "vq.safetensors", random_weights=True)
    codes = model.tokenize(image_transform(128)(image).unsqueeze(0))
    assert torch.equal(codes[0], cache["codes"][0])


@pytest.mark.slow
def test_demo_cache_counts_a_corrupt_shard_sample_as_skipped(demo, tmp_path):
    out, _, _ = demo
    shard = tmp_path / "train-00000.tar"
    with tarfile.open(sorted((out / "data").glob("train-*.tar"))[0]) as src, tarfile.open(shard, "w") as dst:
        members = src.getmembers()
        for i, member in enumerate(members):
            data = src.extractfile(member).read()
            if i == 0:  # the first sample's PNG becomes unreadable
                data = b"not a png"
                member.size = len(data)
            dst.addfile(member, io.BytesIO(data))
    written = sum(m.name.endswith(".png") for m in members)
    frozen = Frozen(out / "teacher.safetensors", out / "vq.safetensors", out / "cache" / "heldout.safetensors",
                    tmp_path / "train")
    made = cache_from_shards(frozen, str(shard), frozen.train_cache)
    assert (made["samples"], made["skipped"]) == (written - 1, 1)
    assert len(read_code_cache(made["path"])["codes"]) == written - 1


def test_demo_vq_codes_follow_patch_colour():
    """The demo's stand-in VQ maps equal-colour patches to equal latents and different colours apart."""
    model = create_model(resolve_config("toklip-tiny"), seed=0)
    patch_statistics_vq(model.vq)
    images = torch.full((1, 3, 128, 128), -0.8)
    images[:, 0, :16, :16] = 0.9  # one red-ish patch in the top-left corner
    latents = model.vq.quant_conv(model.vq.encoder(images))[0].flatten(1).t()  # [64 patches, 8]
    assert torch.allclose(latents[1], latents[63], atol=1e-4)
    assert (latents[0] - latents[1]).abs().max() > 0.1


def test_summary_mean_and_std_match_a_hand_computation():
    per_seed = {2: {"zeroshot_top1": 0.5, "t2i_r1": 0.2, "i2t_r1": 0.1},
                0: {"zeroshot_top1": 0.3, "t2i_r1": 0.2, "i2t_r1": 0.4},
                1: {"zeroshot_top1": 0.4, "t2i_r1": 0.2, "i2t_r1": 0.1}}
    row = summarize(per_seed)
    assert row["seeds"] == [0, 1, 2]
    assert row["per_seed"][0]["i2t_r1"] == 0.4
    assert row["mean"]["zeroshot_top1"] == pytest.approx(0.4)
    assert row["std"]["zeroshot_top1"] == pytest.approx(0.1)  # sqrt(((-.1)^2 + 0 + .1^2) / 2)
    assert row["std"]["t2i_r1"] == pytest.approx(0.0)
    assert row["mean"]["i2t_r1"] == pytest.approx(0.2)
    assert summarize({0: per_seed[0]})["std"]["i2t_r1"] == 0.0


def test_paper_ordering_names_the_higher_ablation_and_weighs_the_margin_against_the_std():
    def row(mean, std):
        return {"mean": dict.fromkeys(("zeroshot_top1", "t2i_r1", "i2t_r1"), mean),
                "std": dict.fromkeys(("zeroshot_top1", "t2i_r1", "i2t_r1"), std)}

    rows = {"main": row(0.50, 0.01), "a": row(0.45, 0.02), "b": row(0.49, 0.02)}
    ordering = paper_ordering(rows, "main", ["a", "b"])["t2i_r1"]
    assert ordering["best"] and ordering["closest_ablation"] == "b"
    assert ordering["margin"] == pytest.approx(0.01)
    assert not ordering["margin_exceeds_std"]  # 0.01 < the larger std 0.02
    rows["b"] = row(0.60, 0.05)
    ordering = paper_ordering(rows, "main", ["a", "b"])["zeroshot_top1"]
    assert not ordering["best"] and ordering["closest_ablation"] == "b"
    assert ordering["margin"] == pytest.approx(-0.10) and ordering["margin_exceeds_std"]
