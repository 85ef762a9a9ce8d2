"""``toklip-demo --quick`` end to end: data, teacher, code cache, students, table, pictures."""
from __future__ import annotations

import json

import pytest
import torch

from toklip_plugin import load_toklip
from toklip_plugin.train.demo import main, patch_statistics_vq
from toklip_plugin.train.synthetic import class_names
from toklip_plugin.factory import create_model, resolve_config


@pytest.mark.slow
def test_quick_demo_trains_a_student_far_above_chance_and_writes_its_outputs(tmp_path, capsys):
    main(["--quick", "--out", str(tmp_path)])
    printed = capsys.readouterr().out
    rows = json.loads((tmp_path / "results.json").read_text())
    chance = 1 / len(class_names())
    student = rows["TokLIP student (init + distill)"]
    assert student["zeroshot_top1"] > 4 * chance
    assert student["t2i_r1"] > 4 * chance
    assert rows["teacher (tiny SigLIP on pixels)"]["zeroshot_top1"] > 4 * chance
    assert "ablation: random init" in printed and "zero-shot top-1" in printed
    for picture in ("loss_curves.png", "tsne_student_vs_teacher.png"):
        assert (tmp_path / picture).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    # the exported student tokenizes pixels with the demo's VQ and pools like the trained student
    exported = load_toklip(tmp_path / "students" / "student" / "export" / "toklip")
    images = torch.rand(2, 3, 128, 128) * 2 - 1
    assert exported.encode_image(images).shape == (2, exported.config.embed_dim)


def test_demo_vq_codes_follow_patch_colour():
    """The demo's stand-in VQ maps equal-colour patches to equal latents and different colours apart."""
    model = create_model(resolve_config("toklip-tiny"), seed=0)
    patch_statistics_vq(model.vq)
    images = torch.full((1, 3, 128, 128), -0.8)
    images[:, 0, :16, :16] = 0.9  # one red-ish patch in the top-left corner
    latents = model.vq.quant_conv(model.vq.encoder(images))[0].flatten(1).t()  # [64 patches, 8]
    assert torch.allclose(latents[1], latents[63], atol=1e-4)
    assert (latents[0] - latents[1]).abs().max() > 0.1
