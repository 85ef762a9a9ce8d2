"""Stock open_clip and timm (the PyPI packages) build TokLIP by name once toklip_plugin is imported."""
from __future__ import annotations

import json
import subprocess
import sys
import warnings

import open_clip
import pytest
import timm
import torch

from helpers.weights import spread_weights

import toklip_plugin as tp
from toklip_plugin.checkpoints import native_to_released
from toklip_plugin.integrations.open_clip import registry
from toklip_plugin.train.state import export_model

OUR_NAMES = ["toklip-b16", "toklip-b16-openclip", "toklip-l", "toklip-s", "toklip-tiny"]
OFFICIAL = {"ViT-SO400M-16-SigLIP2-256-toklip": "toklip-s", "ViT-SO400M-16-SigLIP2-384-toklip": "toklip-l"}
CAPTIONS = ["a photo of a cat", "two red squares on grey", "a dog"]


@pytest.fixture
def released_file(tmp_path, tiny_config):
    """Written by the trainer's export, with weights wide enough that every nonlinearity shows."""
    source = spread_weights(tp.create_model(tiny_config, seed=7).eval(), seed=8)
    return export_model(source, tmp_path / "export")["released"]


def test_stock_open_clip_builds_toklip_tiny_from_a_released_layout_file(released_file, images):
    model, _, _ = open_clip.create_model_and_transforms("toklip-tiny", pretrained=str(released_file))
    ours = tp.load_toklip("toklip-tiny", checkpoint=released_file)
    model.eval()
    assert isinstance(model, open_clip.CustomTextCLIP)
    text = open_clip.get_tokenizer("toklip-tiny")(CAPTIONS)
    torch.testing.assert_close(text, tp.get_tokenizer("toklip-tiny")(CAPTIONS), rtol=0, atol=0)
    with torch.no_grad():
        torch.testing.assert_close(model.encode_image(images, normalize=True), ours.encode_image(images, normalize=True),
                                   rtol=0, atol=1e-5)
        torch.testing.assert_close(model.encode_text(text, normalize=True), ours.encode_text(text, normalize=True),
                                   rtol=0, atol=1e-5)
        torch.testing.assert_close(model.logit_bias, ours.logit_bias)


@pytest.mark.parametrize("name", OUR_NAMES + sorted(OFFICIAL))
def test_open_clip_config_has_our_architecture(name):
    """Parameter names and shapes of open_clip's model = our model's in the released layout (meta device)."""
    with torch.device("meta"):
        model = open_clip.create_model(name, device="meta")
        ours = tp.TokLIP(tp.resolve_config(OFFICIAL.get(name, name)))
    got = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    want = {k: tuple(v.shape) for k, v in native_to_released(ours.state_dict()).items()}
    assert got == want


def test_every_toklip_config_is_registered_and_the_shipped_json_is_current(tmp_path):
    assert set(OUR_NAMES) <= set(tp.list_models())
    assert set(tp.list_models()) | set(OFFICIAL) <= set(open_clip.list_models())
    registry.write_model_configs(tmp_path)
    shipped = {p.name: json.loads(p.read_text()) for p in registry.model_config_dir().glob("*.json")}
    generated = {p.name: json.loads(p.read_text()) for p in tmp_path.glob("*.json")}
    assert shipped == generated, "configs/open_clip is stale: run python -m toklip_plugin.integrations.open_clip"


def test_official_names_keep_the_official_timm_names_and_hub_tokenizers():
    for name, ours in OFFICIAL.items():
        config = open_clip.get_model_config(name)
        size = tp.resolve_config(ours).image_size
        assert config["vision_cfg"]["timm_model_name"] == f"vit_so400m_patch16_toklip_{size}"
        assert config["text_cfg"]["hf_tokenizer_name"] == f"timm/ViT-SO400M-16-SigLIP2-{size}"
        assert config["text_cfg"]["tokenizer_kwargs"]["clean"] == "canonicalize"
        assert "init_logit_bias" not in config  # the released TokLIP was trained with InfoNCE, without a bias


def test_registering_again_changes_nothing_and_warns_nothing():
    before = open_clip.list_models()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        registry.register()
    assert open_clip.list_models() == before


def test_timm_builds_the_trunk_and_refuses_what_it_cannot_honour():
    trunk = timm.create_model("toklip_tiny", num_classes=0, global_pool="map")
    assert trunk.image_size == 128
    with pytest.raises(ValueError, match="no timm weights"):
        timm.create_model("toklip_tiny", pretrained=True)
    with pytest.raises(ValueError, match="global_pool='map'"):
        timm.create_model("toklip_tiny", global_pool="avg")
    with pytest.raises(TypeError, match="drop_path_rate"):
        timm.create_model("toklip_tiny", drop_path_rate=0.1)


@pytest.mark.slow
def test_import_registers_without_loading_llava_or_clip_benchmark():
    probe = ("import sys, open_clip, timm, toklip_plugin; "
             "print('toklip-tiny' in open_clip.list_models(), timm.is_model('toklip_tiny'), "
             "'llava' in sys.modules, 'clip_benchmark' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True, timeout=300)
    assert out.stdout.split() == ["True", "True", "False", "False"]
