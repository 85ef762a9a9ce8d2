"""The ``toklip`` command line: info and encode."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image
from helpers.images import bomb_png, broken_chunk_png, grey_png

import toklip_plugin as tp
from toklip_plugin.cli import main


@pytest.fixture
def tiny_model_dir(tmp_path):
    model_dir = tmp_path / "model"
    tp.create_model(tp.resolve_config("toklip-tiny"), seed=3).save_pretrained(model_dir)
    return model_dir


def test_info_prints_parts_and_token_count(capsys):
    assert main(["info", "toklip-tiny"]) == 0
    out = capsys.readouterr().out
    model = tp.create_model(tp.resolve_config("toklip-tiny"))
    assert "8x8 = 64 tokens" in out
    for part in ("vq", "encoder", "text"):
        count = sum(p.numel() for p in getattr(model, part).parameters())
        assert f"{count:,d}" in out
    assert f"{sum(p.numel() for p in model.parameters()):,d}" in out


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
