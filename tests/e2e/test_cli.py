"""The ``toklip`` command line: info and encode."""
from __future__ import annotations

import os
import subprocess
import sys
import warnings
from pathlib import Path

import huggingface_hub
import numpy as np
import pytest
import torch
from PIL import Image
from helpers.images import bomb_png, broken_chunk_png, grey_png

import toklip_plugin as tp
from toklip_plugin.cli import main
from toklip_plugin import RandomWeightsWarning

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def tiny_model_dir(tmp_path):
    model_dir = tmp_path / "model"
    tp.create_model(tp.resolve_config("toklip-tiny"), seed=3).save_pretrained(model_dir)
    return model_dir


@pytest.fixture
def photos(tmp_path):
    folder = tmp_path / "photos"
    folder.mkdir()
    rng = np.random.default_rng(1)
    for i in range(2):
        Image.fromarray(rng.integers(0, 255, (70, 90, 3), dtype=np.uint8)).save(folder / f"{i}.png")
    return folder


@pytest.fixture
def no_weights_anywhere(tmp_path, monkeypatch):
    """An empty $TOKLIP_HOME and Hugging Face cache, and the Hub offline."""
    env = {"TOKLIP_HOME": str(tmp_path / "toklip_home"), "HF_HOME": str(tmp_path / "hf_home"), "HF_HUB_OFFLINE": "1"}
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)  # read at import time upstream
    return env


def test_info_prints_parts_and_token_count(capsys):
    assert main(["info", "toklip-tiny"]) == 0
    out = capsys.readouterr().out
    model = tp.create_model(tp.resolve_config("toklip-tiny"))
    assert "8x8 = 64 tokens" in out
    for part in ("vq", "encoder", "text"):
        count = sum(p.numel() for p in getattr(model, part).parameters())
        assert f"{count:,d}" in out
    assert f"{sum(p.numel() for p in model.parameters()):,d}" in out
    assert "weights: none loaded" in out


def test_info_needs_no_weights_even_for_a_released_config(no_weights_anywhere, capsys):
    assert main(["info", "toklip-l"]) == 0  # offline, nothing cached: the counts need shapes only
    out = capsys.readouterr().out
    assert "24x24 = 576 tokens" in out and "weights: none loaded" in out


def test_encode_writes_codes_and_embeddings_and_skips_unreadable(tmp_path, tiny_model_dir, capsys):
    rng = np.random.default_rng(0)
    for i in range(3):
        Image.fromarray(rng.integers(0, 255, (90 + 10 * i, 140, 3), dtype=np.uint8)).save(tmp_path / f"{i}.png")
    (tmp_path / "broken.jpg").write_bytes(b"not an image")
    model_dir = tiny_model_dir
    out_file = tmp_path / "codes.pt"
    assert main(["encode", str(tmp_path), "--model", str(model_dir), "-o", str(out_file), "--batch-size", "2",
                 "--device", "cpu"]) == 0
    assert "skipped 1 that could not be used" in capsys.readouterr().out
    result = torch.load(out_file, weights_only=True)
    assert [p.split("/")[-1] for p in result["paths"]] == ["0.png", "1.png", "2.png"]

    model = tp.load_toklip(model_dir)
    transform = tp.get_transform(model_dir)
    images = torch.stack([transform(Image.open(tmp_path / f"{i}.png")) for i in range(3)])
    with torch.no_grad():
        assert torch.equal(result["codes"], model.tokenize(images))
        assert torch.allclose(result["image_embeddings"], model.encode_image(images, normalize=True), atol=1e-6)


def test_encode_reports_missing_path(tmp_path, capsys):
    assert main(["encode", str(tmp_path / "nope.png")]) == 2
    assert "no such image or folder" in capsys.readouterr().err


def test_encode_skips_and_counts_bombs_broken_chunks_and_strips_and_writes_the_rest(tmp_path, tiny_model_dir, capsys):
    images = tmp_path / "images"
    images.mkdir()
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (90, 140, 3), dtype=np.uint8)).save(images / "ok.png")
    (images / "bomb.png").write_bytes(bomb_png())  # declares 20000 x 20000 = 400 Mpx
    (images / "chunk.png").write_bytes(broken_chunk_png())
    (images / "strip.png").write_bytes(grey_png(1, 60000))
    out_file = tmp_path / "codes.pt"
    assert main(["encode", str(images), "--model", str(tiny_model_dir), "-o", str(out_file), "--device", "cpu"]) == 0
    captured = capsys.readouterr()
    assert "wrote 1 images" in captured.out and "skipped 3 that could not be used" in captured.out
    reasons = {line.split(": ")[0].split("/")[-1]: line.split(": ")[1] for line in captured.err.splitlines()
               if line.startswith("skipped ")}
    assert reasons == {"bomb.png": "DecompressionBombError", "chunk.png": "SyntaxError", "strip.png": "ImageRejected"}
    assert [p.split("/")[-1] for p in torch.load(out_file, weights_only=True)["paths"]] == ["ok.png"]


def test_encode_refuses_a_folder_as_output_before_loading_or_encoding(tmp_path, capsys):
    Image.new("RGB", (64, 64)).save(tmp_path / "a.png")
    # the model does not exist: an error about -o proves that nothing was loaded or encoded first
    assert main(["encode", str(tmp_path), "--model", str(tmp_path / "no-model"), "-o", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert f"-o {tmp_path} is a folder" in err and str(tmp_path / "toklip_codes.pt") in err
    assert main(["encode", str(tmp_path), "--model", str(tmp_path / "no-model"), "-o",
                 str(tmp_path / "missing" / "codes.pt")]) == 2
    assert f"create {tmp_path / 'missing'} first" in capsys.readouterr().err


@pytest.mark.slow
def test_encode_defaults_to_released_toklip_l_and_without_them_offline_fails_with_download_instructions(
        tmp_path, photos, no_weights_anywhere):
    out_file = tmp_path / "codes.pt"
    done = subprocess.run([sys.executable, "-m", "toklip_plugin.cli", "encode", str(photos), "-o", str(out_file),
                           "--device", "cpu"], capture_output=True, text=True, cwd=tmp_path,
                          env={**os.environ, **no_weights_anywhere}, timeout=600)
    assert done.returncode == 2, done.stderr
    home = Path(no_weights_anywhere["TOKLIP_HOME"])
    assert "TokLIP_L_384.pt of the Hugging Face repo TencentARC/TokLIP" in done.stderr
    assert "huggingface-cli download TencentARC/TokLIP TokLIP_L_384.pt" in done.stderr
    assert f"copy the file to {home / 'TokLIP_L_384.pt'} ($TOKLIP_HOME)" in done.stderr
    assert not out_file.exists()


def test_encode_with_random_weights_runs_silently_and_says_so_on_stderr(tmp_path, photos, capsys):
    out_file = tmp_path / "codes.pt"
    with warnings.catch_warnings():
        warnings.simplefilter("error", RandomWeightsWarning)  # --random-weights is explicit: no warning on top
        assert main(["encode", str(photos), "--model", "toklip-tiny", "--random-weights", "-o", str(out_file),
                     "--device", "cpu"]) == 0
    assert "--random-weights: the TokLIP weights are random" in capsys.readouterr().err
    result = torch.load(out_file, weights_only=True)
    assert result["random_weights"] is True and len(result["paths"]) == 2


@pytest.mark.parametrize("model", ["toklip-tiny", str(ROOT / "configs" / "models" / "toklip-tiny.json")])
def test_encode_refuses_a_config_without_released_weights_naming_both_options(tmp_path, photos, model, capsys):
    out_file = tmp_path / "codes.pt"
    assert main(["encode", str(photos), "--model", model, "-o", str(out_file), "--device", "cpu"]) == 2
    err = capsys.readouterr().err
    assert "'toklip-tiny' names no released weights" in err
    assert "--checkpoint PATH" in err and "--random-weights" in err
    assert not out_file.exists()


def test_encode_refuses_random_weights_with_weights_named_or_held(tmp_path, photos, tiny_model_dir, capsys):
    argv = ["encode", str(photos), "-o", str(tmp_path / "codes.pt"), "--device", "cpu", "--random-weights"]
    assert main([*argv, "--model", "toklip-tiny", "--checkpoint", str(tiny_model_dir)]) == 2
    assert "--checkpoint and --random-weights contradict each other" in capsys.readouterr().err
    assert main([*argv, "--model", str(tiny_model_dir)]) == 2
    assert "holds its own weights, so --random-weights would be ignored" in capsys.readouterr().err
    assert not (tmp_path / "codes.pt").exists()
