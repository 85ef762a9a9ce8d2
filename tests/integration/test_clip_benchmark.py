"""CLIP_benchmark's own command line and metrics score TokLIP as toklip-eval does, on local data built here."""
from __future__ import annotations

import json

import pytest
import torch
from open_clip.zero_shot_metadata import SIMPLE_IMAGENET_TEMPLATES
from PIL import Image

from helpers.weights import spread_weights

import toklip_plugin as tp
from toklip_plugin import eval_command
from toklip_plugin.evaluation.cli import main as toklip_eval
from toklip_plugin.integrations import clip_benchmark as launcher
from toklip_plugin.train.state import export_model

CLASSES = {"red_square": 2, "blue_circle": 3, "green_star": 2, "grey_cloud": 4, "pink_heart": 3, "white_moon": 2}
CAPTIONS = [["a small red kite", "red kite over a field"], ["two blue boats", "boats on a blue lake"],
            ["a green door", "an old green door"], ["grey rocks on a beach", "a pile of grey rocks"],
            ["a pink flower", "one pink flower in a pot"], ["snow on a white roof", "a white roof in winter"]]
DEVICE = "cuda" if torch.cuda.is_available() else "cpu"  # CLIP_benchmark picks cuda when there is one


def _random_image(g: torch.Generator, height: int, width: int) -> Image.Image:
    return Image.fromarray((torch.rand(height, width, 3, generator=g) * 255).to(torch.uint8).numpy())


@pytest.fixture(autouse=True)
def offline(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")


@pytest.fixture(scope="module")
def weights(tmp_path_factory):
    model = spread_weights(tp.create_model(tp.resolve_config("toklip-tiny"), seed=11), seed=12)
    return export_model(model, tmp_path_factory.mktemp("weights"))["released"]


@pytest.fixture
def class_folder(tmp_path):
    """ImageNet's val layout (ROOT/val/<class>/<image>), which CLIP_benchmark reads as imagenet1k-unverified."""
    g = torch.Generator().manual_seed(0)
    for name, count in CLASSES.items():
        (tmp_path / "cls" / "val" / name).mkdir(parents=True)
        for i in range(count):
            _random_image(g, 150, 170).save(tmp_path / "cls" / "val" / name / f"{i}.png")
    return tmp_path / "cls"


@pytest.fixture
def retrieval_set(tmp_path):
    """Images with two captions each, as CLIP_benchmark's Flickr annotation and as toklip-eval's caption JSON."""
    g = torch.Generator().manual_seed(1)
    root = tmp_path / "ret"
    root.mkdir()
    lines, rows = ["image,caption"], []
    for i, captions in enumerate(CAPTIONS):
        _random_image(g, 140, 128 + 8 * i).save(root / f"{i}.jpg")
        lines += [f"{i}.jpg,{c}" for c in captions]
        rows.append({"image": f"{i}.jpg", "caption": captions})
    (root / "flickr_test.txt").write_text("\n".join(lines) + "\n")
    (root / "captions.json").write_text(json.dumps(rows))
    return root


# CLIP_benchmark's command line, reached through the launcher module and through ``toklip-eval clip-benchmark``
ENTRY_POINTS = {"python -m launcher": launcher.main,
                "toklip-eval clip-benchmark": lambda argv: eval_command.main(["clip-benchmark", *argv])}


def _clip_benchmark(tmp_path, weights, *argv, entry: str = "python -m launcher") -> dict:
    output = tmp_path / "clip_benchmark.json"
    assert ENTRY_POINTS[entry](["eval", "--model", "toklip-tiny", "--pretrained", str(weights), "--no_amp",
                          "--num_workers", "0", "--batch_size", "5", "--quiet", "--output", str(output), *argv]) == 0
    return json.loads(output.read_text())["metrics"]


def _toklip_eval(tmp_path, weights, *argv) -> dict:
    assert toklip_eval([*argv, "--model", "toklip-tiny", "--checkpoint", str(weights), "--device", DEVICE,
                        "--workers", "0", "--batch-size", "5", "--output-dir", str(tmp_path / "ours"),
                        "--name", "ours"]) == 0
    return json.loads((tmp_path / "ours" / "ours.json").read_text())


@pytest.mark.slow
@pytest.mark.parametrize("entry", list(ENTRY_POINTS))
def test_clip_benchmark_zero_shot_equals_toklip_eval(tmp_path, weights, class_folder, entry):
    templates = [template("{c}") for template in SIMPLE_IMAGENET_TEMPLATES]  # toklip-eval's --templates simple
    names = [name.replace("_", " ") for name in sorted(CLASSES)]  # toklip-eval names a class after its folder
    (tmp_path / "templates.json").write_text(json.dumps({"imagenet1k-unverified": templates}))
    (tmp_path / "classnames.json").write_text(json.dumps({"imagenet1k-unverified": names}))
    theirs = _clip_benchmark(tmp_path, weights, "--dataset", "imagenet1k-unverified", "--dataset_root",
                             str(class_folder), "--task", "zeroshot_classification",
                             "--custom_template_file", str(tmp_path / "templates.json"),
                             "--custom_classname_file", str(tmp_path / "classnames.json"), entry=entry)
    ours = _toklip_eval(tmp_path, weights, "zeroshot", "--data", str(class_folder / "val"), "--templates", "simple")
    assert ours["images"] == sum(CLASSES.values())
    assert theirs["acc1"] == pytest.approx(ours["top1"], abs=1e-6)
    assert theirs["acc5"] == pytest.approx(ours["top5"], abs=1e-6)


@pytest.mark.slow
def test_clip_benchmark_retrieval_equals_toklip_eval(tmp_path, weights, retrieval_set):
    theirs = _clip_benchmark(tmp_path, weights, "--dataset", "flickr30k", "--dataset_root", str(retrieval_set),
                             "--annotation_file", str(retrieval_set / "flickr_test.txt"),
                             "--task", "zeroshot_retrieval", "--recall_k", "1", "5")
    ours = _toklip_eval(tmp_path, weights, "retrieval", "--annotation", str(retrieval_set / "captions.json"),
                        "--image-root", str(retrieval_set))
    assert ours["images"] == len(CAPTIONS) and ours["texts"] == 2 * len(CAPTIONS)
    for k in (1, 5):
        assert theirs[f"image_retrieval_recall@{k}"] == pytest.approx(ours[f"t2i_r{k}"], abs=1e-6)
        assert theirs[f"text_retrieval_recall@{k}"] == pytest.approx(ours[f"i2t_r{k}"], abs=1e-6)


def test_the_toklip_model_type_needs_weights(tmp_path):
    with pytest.raises(ValueError, match="no released weights"):
        launcher.load_toklip_for_clip_benchmark("toklip-tiny", None)
    with pytest.raises(FileNotFoundError, match="laion400m_e32"):  # CLIP_benchmark's default --pretrained
        launcher.load_toklip_for_clip_benchmark("toklip-tiny", "laion400m_e32")
