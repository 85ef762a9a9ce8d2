"""The ``toklip`` command line: info and encode."""
from __future__ import annotations

import numpy as np
import torch
from PIL import Image

import toklip_plugin as tp
from toklip_plugin.cli import main


def test_info_prints_parts_and_token_count(capsys):
    assert main(["info", "toklip-tiny"]) == 0
    out = capsys.readouterr().out
    model = tp.create_model(tp.resolve_config("toklip-tiny"))
    assert "8x8 = 64 tokens" in out
    for part in ("vq", "encoder", "text"):
        count = sum(p.numel() for p in getattr(model, part).parameters())
        assert f"{count:,d}" in out
    assert f"{sum(p.numel() for p in model.parameters()):,d}" in out


def test_encode_writes_codes_and_embeddings_and_skips_unreadable(tmp_path, capsys):
    rng = np.random.default_rng(0)
    for i in range(3):
        Image.fromarray(rng.integers(0, 255, (90 + 10 * i, 140, 3), dtype=np.uint8)).save(tmp_path / f"{i}.png")
    (tmp_path / "broken.jpg").write_bytes(b"not an image")
    model_dir = tmp_path / "model"
    tp.create_model(tp.resolve_config("toklip-tiny"), seed=3).save_pretrained(model_dir)
    out_file = tmp_path / "codes.pt"
    assert main(["encode", str(tmp_path), "--model", str(model_dir), "-o", str(out_file), "--batch-size", "2",
                 "--device", "cpu"]) == 0
    assert "skipped 1 unreadable" in capsys.readouterr().out
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
