"""open_clip's API over TokLIP (create_model_and_transforms, create_model_from_pretrained, list_pretrained) and the
timm image tower (TokLIPTrunk) that stock open_clip builds for TokLIP names."""
from __future__ import annotations

import dataclasses

import huggingface_hub
import pytest
import torch
from PIL import Image

import toklip_plugin as tp
from toklip_plugin.integrations.open_clip.trunk import TokLIPTrunk
from toklip_plugin.train.state import export_model


@pytest.fixture
def released_file(tmp_path, tiny_config):
    """A released-layout .pt written by the trainer's export, and the model it came from."""
    source = tp.create_model(tiny_config, seed=3).eval()
    return export_model(source, tmp_path / "export")["released"], source


def _embeddings(model, images, texts):
    with torch.no_grad():
        return model.encode_image(images), model.encode_text(texts)


def test_create_model_and_transforms_loads_the_file_and_returns_toklip_transforms(released_file, images):
    path, source = released_file
    model, preprocess_train, preprocess_val = tp.create_model_and_transforms("toklip-tiny", pretrained=path)
    texts = tp.get_tokenizer("toklip-tiny")(["a red square", "two blue circles"])
    for got, want in zip(_embeddings(model, images, texts), _embeddings(source, images, texts)):
        torch.testing.assert_close(got, want, rtol=0, atol=0)
    assert not model.training
    # 256 x 128, black left half, white right half: the short side is already 128, so the eval transform only
    # centre-crops columns 64..191 and maps to [-1, 1] (TokLIP's range, not OpenAI's normalisation)
    halves = Image.new("RGB", (256, 128), (0, 0, 0))
    halves.paste((255, 255, 255), (128, 0, 256, 128))
    val = preprocess_val(halves)
    assert val.shape == (3, 128, 128)
    assert torch.all(val[:, :, :64] == -1.0) and torch.all(val[:, :, 64:] == 1.0)
    torch.manual_seed(0)
    assert preprocess_train(halves).shape == (3, 128, 128)


def test_precision_names_set_the_parameter_dtype(released_file):
    model, _, _ = tp.create_model_and_transforms("toklip-tiny", pretrained=released_file[0], precision="bf16")
    assert {p.dtype for p in model.parameters()} == {torch.bfloat16}


def test_create_model_from_pretrained_refuses_random_weights(tiny_config):
    with pytest.raises(ValueError, match="no released weights.*pretrained="):
        tp.create_model_from_pretrained("toklip-tiny")


def test_create_model_from_pretrained_defaults_to_the_released_file(released_file, tiny_config, tmp_path, monkeypatch,
                                                                      images):
    path, source = released_file
    config = tiny_config.replace(weights={"checkpoint": {"repo_id": "org/toklip-tiny", "filename": "tiny.pt"}})
    monkeypatch.setenv("TOKLIP_HOME", str(tmp_path / "home"))
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    with pytest.raises(FileNotFoundError, match="huggingface-cli download org/toklip-tiny tiny.pt"):
        tp.create_model_from_pretrained(config)
    (tmp_path / "home").mkdir()
    (tmp_path / "home" / "tiny.pt").write_bytes(path.read_bytes())
    model, preprocess = tp.create_model_from_pretrained(config)
    torch.testing.assert_close(model.encode_image(images), source.encode_image(images), rtol=0, atol=0)
    assert preprocess(Image.new("RGB", (64, 64))).shape == (3, 128, 128)


def test_create_model_from_pretrained_takes_a_saved_directory_without_pretrained(tmp_path, tiny_config, images):
    source = tp.create_model(tiny_config, seed=5).eval()
    source.save_pretrained(tmp_path / "mine")
    model = tp.create_model_from_pretrained(str(tmp_path / "mine"), return_transform=False)
    torch.testing.assert_close(model.encode_image(images), source.encode_image(images), rtol=0, atol=0)


def test_list_pretrained_names_the_configs_with_released_weights():
    # configs/models: toklip-s and toklip-l name TencentARC/TokLIP files; the others have no released weights
    assert sorted(tp.list_pretrained()) == [("toklip-l", "released"), ("toklip-s", "released")]
    assert sorted(tp.list_pretrained(as_str=True)) == ["toklip-l:released", "toklip-s:released"]


# TokLIPTrunk: the released checkpoint's visual.trunk, on our TokenEncoder ---------------------------------------
def _released_trunk_state(model) -> dict:
    """``visual.trunk.*`` of the released layout, written out by hand from the design doc."""
    renames = (("encoder.code_mlp.fc1.", "vq_table."), ("encoder.code_mlp.fc2.", "vq_mapping."), ("vq.", "vq."),
               ("encoder.", ""))
    out = {}
    for key, value in model.state_dict().items():
        old, new = next(((o, n) for o, n in renames if key.startswith(o)), (None, None))
        if old is not None:
            out[new + key[len(old):]] = value
    return out


ENCODER_VARIANTS = {
    "siglip2-map": {},
    "codebook-mapping": {"mapping": "codebook"},
    "openclip-class-token": {"class_token": "last", "pool": "tok", "norm_pre": True, "proj": True, "act": "gelu",
                             "norm_eps": 1e-5},
}


@pytest.mark.parametrize("variant", sorted(ENCODER_VARIANTS))
def test_trunk_has_the_released_names_and_toklips_image_embedding(tiny_config, images, variant):
    encoder = dataclasses.replace(tiny_config.encoder, **ENCODER_VARIANTS[variant])
    embed_dim = 48 if encoder.proj else tiny_config.embed_dim
    config = tiny_config.replace(encoder=encoder, embed_dim=embed_dim)
    source = tp.create_model(config, seed=1).eval()
    trunk = TokLIPTrunk(config).eval()
    trunk.load_state_dict(_released_trunk_state(source), strict=True)
    with torch.no_grad():
        torch.testing.assert_close(trunk(images), source.encode_image(images), rtol=0, atol=0)
    assert not any(p.requires_grad for p in trunk.vq.parameters())
