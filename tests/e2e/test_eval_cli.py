"""``toklip-eval`` end to end on toklip-tiny: results files, the reconstruction identity, bad input, which
weights are loaded."""
from __future__ import annotations

import importlib
import json
import tomllib
import warnings
from pathlib import Path

import huggingface_hub
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from helpers.weights import spread_weights

import toklip_plugin as tp
from toklip_plugin.checkpoints import native_to_released
from toklip_plugin.evaluation.cli import main
from toklip_plugin.evaluation.data import ImageFiles, image_files, make_loader
from toklip_plugin.evaluation.features import plot_tsne, teacher_similarity
from toklip_plugin.models.vq import VQModel
from toklip_plugin.models.teacher import build_small_teacher

COMMON = ["--model", "toklip-tiny", "--device", "cpu", "--workers", "0", "--batch-size", "4"]
RANDOM = [*COMMON, "--random-weights"]  # toklip-tiny has no released weights
ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def image_root(tmp_path):
    g = torch.Generator().manual_seed(0)
    root = tmp_path / "images"
    for i, cls in enumerate(["cat", "dog", "fish", "cat"]):
        (root / cls).mkdir(parents=True, exist_ok=True)
        pixels = (torch.rand(40, 48, 3, generator=g) * 255).to(torch.uint8).numpy()
        Image.fromarray(pixels).save(root / cls / f"{i}.png")
    (root / "dog" / "truncated.jpg").write_bytes(b"\xff\xd8\xff\xe0 cut short")
    return root


def run(capsys, *argv):
    with warnings.catch_warnings():  # weights are real or --random-weights: load_toklip must not warn on top
        warnings.simplefilter("error", tp.RandomWeightsWarning)
        code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def test_reconstruction_through_toklip_equals_the_plain_vq_model(image_root, tmp_path, capsys):
    code, out, err = run(capsys, "reconstruction", "--images", str(image_root), "--output-dir", str(tmp_path / "r"), *RANDOM)
    assert code == 0, err
    result = json.loads((tmp_path / "r" / "reconstruction.json").read_text())
    assert result["all_identical"] and result["identical_images"] == 4 and result["max_abs_diff"] == 0.0
    assert result["skipped"] == 1 and "truncated.jpg" in err
    assert 0 < result["ssim"] < 1 and result["psnr"] > 0
    assert "| reconstruction | toklip-tiny |" in (tmp_path / "r" / "reconstruction.md").read_text()


def test_reconstruction_against_other_vq_weights_reports_the_difference(image_root, tmp_path, capsys):
    torch.manual_seed(1)
    other = VQModel(tp.resolve_config("toklip-tiny").vq)
    torch.save({"model": other.state_dict()}, tmp_path / "vq_other.pt")  # LlamaGen's checkpoint layout
    listing = tmp_path / "two.txt"  # a list of images instead of a folder
    listing.write_text(f"{image_root / 'cat' / '0.png'}\n{(image_root / 'dog' / '1.png').relative_to(tmp_path)}\n")
    code, _, err = run(capsys, "reconstruction", "--images", str(listing), "--reference-vq", str(tmp_path / "vq_other.pt"),
                       "--output-dir", str(tmp_path), *RANDOM)
    assert code == 0, err
    result = json.loads((tmp_path / "reconstruction.json").read_text())
    assert result["images"] == 2 and result["identical_images"] == 0 and result["max_abs_diff"] > 0


def test_zero_shot_command_writes_json_and_markdown(image_root, tmp_path, capsys):
    code, out, err = run(capsys, "zeroshot", "--data", str(image_root), "--templates", "simple",
                         "--output-dir", str(tmp_path), "--name", "in1k", *RANDOM)
    assert code == 0, err
    result = json.loads((tmp_path / "in1k.json").read_text())
    assert (result["images"], result["classes"], result["skipped"]) == (4, 3, 1)
    assert result["top5"] == 1.0  # three classes: the true one is always within the top five
    assert result["random_weights"] is True and "the TokLIP weights are random" in err
    assert "| zeroshot | toklip-tiny |" in out


def test_teacher_similarity_matches_a_direct_computation(image_root, tmp_path):
    model = tp.create_model(tp.resolve_config("toklip-tiny"), seed=0).eval()
    teacher = build_small_teacher({"embed_dim": 64, "depth": 1, "num_heads": 4}, model.config, seed=0).eval()
    files = image_files(image_root)
    loader = make_loader(ImageFiles(files, tp.get_transform(model.config)), batch_size=3)
    summary, features = teacher_similarity(model, teacher, loader, torch.device("cpu"))
    readable = [f for f in files if f.suffix == ".png"]
    images = torch.stack([tp.get_transform(model.config)(Image.open(f)) for f in readable])
    with torch.no_grad():
        tokens = model.encode_codes(model.tokenize(images))
        t_pooled, t_tokens = teacher.image_features(images)
        pooled = F.cosine_similarity(model.pool_tokens(tokens), t_pooled, dim=-1)
        per_token = F.cosine_similarity(tokens, t_tokens, dim=-1).mean(dim=1)
    assert summary["pooled_cosine_mean"] == pytest.approx(pooled.mean().item(), abs=1e-5)
    assert summary["token_cosine_mean"] == pytest.approx(per_token.mean().item(), abs=1e-5)
    assert (summary["images"], summary["skipped"]) == (4, 1)
    png = plot_tsne(features, features["labels"], tmp_path / "tsne.png")
    assert Image.open(png).format == "PNG"


def test_similarity_command_with_a_training_config_teacher_writes_the_tsne_plot(image_root, tmp_path, capsys):
    code, out, err = run(capsys, "similarity", "--images", str(image_root), "--teacher-config", "toklip-tiny",
                         "--output-dir", str(tmp_path), *RANDOM)
    assert code == 0, err
    result = json.loads((tmp_path / "similarity.json").read_text())
    assert -1 <= result["pooled_cosine_mean"] <= 1 and result["images"] == 4
    assert Image.open(result["tsne_plot"]).size[0] > 100


@pytest.mark.parametrize("argv, message", [
    (["retrieval", "--annotation", "missing/dataset_coco.json"], "missing/dataset_coco.json does not exist"),
    (["zeroshot", "--data", "no/such/folder"], "no/such/folder"),
    (["similarity", "--images", "."], "name the teacher"),
])
def test_bad_paths_and_options_give_a_clear_error(argv, message, capsys):
    code, _, err = run(capsys, *argv, *RANDOM)
    assert code == 2 and message in err


def test_weights_of_another_config_are_refused_with_the_mismatch_named(image_root, tmp_path, capsys):
    config = tp.resolve_config("toklip-tiny")
    wide = config.replace(name="toklip-tiny-wide", embed_dim=32, encoder=type(config.encoder)(width=32, depth=2, heads=4))
    tp.create_model(wide, seed=0).save_pretrained(tmp_path / "wide")
    code, _, err = run(capsys, "zeroshot", "--data", str(image_root), "--checkpoint", str(tmp_path / "wide"), *COMMON)
    assert code == 2 and "does not fit TokLIP config 'toklip-tiny'" in err and "wrong shapes" in err
    code, _, err = run(capsys, "zeroshot", "--data", str(image_root), *COMMON[2:], "--model", "toklip-nonesuch")
    assert code == 2 and "neither a known TokLIP name" in err


@pytest.fixture
def released_tiny(tmp_path, monkeypatch):
    """toklip-tiny as a config file naming released weights (a Hub repo and file, as toklip-l's config does), with
    $TOKLIP_HOME empty and the Hub offline: (config file, where $TOKLIP_HOME would hold the weights)."""
    home = tmp_path / "toklip_home"
    monkeypatch.setenv("TOKLIP_HOME", str(home))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)  # read at import time upstream
    released = {"checkpoint": {"repo_id": "example/toklip-tiny", "filename": "toklip_tiny.pt"}}
    config = tp.resolve_config("toklip-tiny").replace(name="toklip-tiny-released", weights=released)
    path = tmp_path / "toklip-tiny-released.json"
    path.write_text(json.dumps(config.to_dict()))
    return path, home / "toklip_tiny.pt"


def test_evaluations_load_the_released_weights_the_config_names_by_default(image_root, released_tiny, tmp_path,
                                                                           capsys):
    config_file, weight_file = released_tiny
    argv = ["similarity", "--images", str(image_root), "--teacher-config", "toklip-tiny", "--no-tsne",
            *COMMON[2:], "--model", str(config_file), "--output-dir", str(tmp_path)]
    code, _, err = run(capsys, *argv)
    assert code == 2, "no weights on disk, the Hub offline: the run must stop, not go on with random weights"
    assert "huggingface-cli download example/toklip-tiny toklip_tiny.pt" in err
    assert f"copy the file to {weight_file}" in err

    model = spread_weights(tp.create_model(tp.resolve_config(config_file), seed=5), seed=6)
    weight_file.parent.mkdir()
    torch.save({"state_dict": native_to_released(model.state_dict())}, weight_file)
    results = {}
    for name, extra in {"default": [], "explicit": ["--checkpoint", str(weight_file)]}.items():
        code, _, err = run(capsys, *argv, *extra, "--name", name)
        assert code == 0, err
        results[name] = json.loads((tmp_path / f"{name}.json").read_text())
    assert results["default"]["checkpoint"] == "released" and results["default"]["random_weights"] is False
    for key in ("pooled_cosine_mean", "token_cosine_mean"):
        assert results["default"][key] == pytest.approx(results["explicit"][key], abs=1e-6)


@pytest.mark.parametrize("extra, message", [
    ([], "'toklip-tiny' names no released weights: pass --checkpoint PATH"),
    (["--random-weights", "--checkpoint", "toklip_tiny.pt"], "--checkpoint and --random-weights contradict each other"),
])
def test_evaluations_refuse_missing_or_contradictory_weight_options(image_root, tmp_path, extra, message, capsys):
    code, _, err = run(capsys, "zeroshot", "--data", str(image_root), "--output-dir", str(tmp_path), *COMMON, *extra)
    assert code == 2 and message in err and "--random-weights" in err
    assert not (tmp_path / "zeroshot.json").exists()


def test_toklip_eval_help_lists_clip_benchmark_and_the_console_script_is_the_dispatcher(capsys):
    target = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["scripts"]["toklip-eval"]
    module, _, function = target.partition(":")
    toklip_eval = getattr(importlib.import_module(module), function)
    with pytest.raises(SystemExit) as done:
        toklip_eval(["--help"])
    assert done.value.code == 0
    listing = capsys.readouterr().out
    line = next(line for line in listing.splitlines() if line.strip().startswith("clip-benchmark"))
    assert "CLIP_benchmark's own CLI" in line
    assert all(name in listing for name in ("zeroshot", "retrieval", "similarity", "reconstruction"))
