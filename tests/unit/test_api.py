"""Public API: names, configs, transforms, tokenizers, input checks."""
from __future__ import annotations

import json

import pytest
import torch
import yaml
from PIL import Image

import toklip_plugin as tp


def test_list_models_has_the_named_configs():
    assert {"toklip-s", "toklip-l", "toklip-b16", "toklip-tiny"} <= set(tp.list_models())


@pytest.mark.parametrize("name,size,grid,tokens,width,depth", [
    ("toklip-l", 384, 24, 576, 1152, 27),
    ("toklip-s", 256, 16, 256, 1152, 27),
    ("toklip-b16", 256, 16, 256, 768, 12),
])
def test_named_config_sizes(name, size, grid, tokens, width, depth):
    c = tp.resolve_config(name)
    assert (c.image_size, c.grid_size, c.num_tokens) == (size, grid, tokens)
    assert (c.encoder.width, c.encoder.depth, c.encoder.causal) == (width, depth, True)
    assert c.vq.codebook_size == 16384 and c.vq.codebook_embed_dim == 8 and c.vq.downsample == 16


def test_model_exposes_sizes(tiny_model):
    assert (tiny_model.image_size, tiny_model.grid_size, tiny_model.num_tokens) == (128, 8, 64)


def test_unknown_name_lists_known_models():
    with pytest.raises(ValueError, match="toklip-tiny"):
        tp.load_toklip("toklip-xxl")


def test_config_file_and_unknown_keys(tmp_path, tiny_config):
    data = tiny_config.to_dict()
    data["encoder"]["causal"] = False
    path = tmp_path / "mine.yaml"
    path.write_text(yaml.safe_dump(data))
    model = tp.load_toklip(path, random_weights=True)
    assert model.config.encoder.causal is False and model.config.name == "toklip-tiny"
    data["encoder"]["depthh"] = 3
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps(data))
    with pytest.raises(ValueError, match=r"unknown key\(s\) \['depthh'\] in encoder"):
        tp.load_toklip(bad)


def test_config_rejects_image_size_off_the_grid(tiny_config):
    with pytest.raises(ValueError, match="multiple of the VQ downsample factor 16"):
        tiny_config.replace(image_size=100)


@pytest.mark.parametrize("mode,size", [("L", (50, 70)), ("RGBA", (300, 200)), ("P", (128, 128)), ("RGB", (129, 400))])
def test_transform_accepts_any_mode_and_size(mode, size):
    image = Image.new(mode, size)
    out = tp.get_transform("toklip-tiny")(image)
    assert out.shape == (3, 128, 128) and out.dtype == torch.float32
    assert out.min() >= -1 and out.max() <= 1


def test_transform_maps_pixels_to_minus_one_one():
    out = tp.get_transform("toklip-tiny")(Image.new("RGB", (128, 128), (255, 0, 128)))
    assert torch.allclose(out[:, 0, 0], torch.tensor([1.0, -1.0, 128 / 255 * 2 - 1]), atol=1e-6)


@pytest.mark.parametrize("shape", [(2, 3, 64, 64), (2, 1, 128, 128), (2, 4, 128, 128), (3, 128, 128)])
def test_wrong_image_batch_says_expected_size(tiny_model, shape):
    with pytest.raises(ValueError, match=r"\[B, 3, 128, 128\]"):
        tiny_model.tokenize(torch.zeros(shape))


def test_codes_of_wrong_length_are_rejected(tiny_model):
    with pytest.raises(ValueError, match="at most 64 codes"):
        tiny_model.encode_codes(torch.zeros(1, 65, dtype=torch.long))
    with pytest.raises(ValueError, match="exactly 64 codes"):
        tiny_model.decode_codes(torch.zeros(1, 10, dtype=torch.long))


def test_decode_rejects_codes_outside_codebook(tiny_model):
    with pytest.raises(ValueError, match=r"\[0, 1024\).*from 1024 to 1024"):
        tiny_model.decode_codes(torch.full((1, 64), 1024))


@pytest.mark.parametrize("bad", [1024, -1, 10**6])
def test_codes_outside_the_codebook_are_refused_naming_the_values_found_and_the_valid_range(tiny_model, bad):
    codes = torch.randint(0, 1024, (2, 64), generator=torch.Generator().manual_seed(0))
    codes[1, 7] = bad
    low, high = min(bad, int(codes.min())), max(bad, int(codes.max()))  # the extremes the message must report
    expected = rf"codes must lie in \[0, 1024\), the VQ codebook of toklip-tiny; got values from {low} to {high}"
    with pytest.raises(ValueError, match=expected):
        tiny_model.encode_codes(codes)
    with pytest.raises(ValueError, match=expected):
        tiny_model.encode_codes_and_pool(codes)


def test_non_integer_codes_are_refused_naming_their_dtype_and_values(tiny_model):
    codes = torch.zeros(1, 64)
    codes[0, 3] = 3.5
    with pytest.raises(ValueError, match=r"integer codes .* in \[0, 1024\).*got torch.float32 holding values from "
                                         r"0.0 to 3.5"):
        tiny_model.encode_codes(codes)


def test_uint8_images_are_refused_saying_how_to_convert(tiny_model):
    images = torch.full((1, 3, 128, 128), 255, dtype=torch.uint8)
    images[0, 0, 0, 0] = 3
    with pytest.raises(ValueError, match=r"float images in \[-1, 1\], got torch.uint8 with values from 3 to 255; "
                                         r"convert them .*images.float\(\) / 127.5 - 1"):
        tiny_model.tokenize(images)


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), -float("inf")])
def test_nonfinite_pixels_are_refused_with_their_count(tiny_model, images, bad):
    broken = images.clone()
    broken[1, 2, 5, 5] = broken[2, 0, 0, 0] = bad
    with pytest.raises(ValueError, match=r"images hold 2 NaN or infinite value\(s\)"):
        tiny_model.tokenize(broken)
    with pytest.raises(ValueError, match="NaN or infinite"):
        tiny_model.encode_image(broken)


def test_tiny_tokenizer_is_offline_bpe(tiny_config):
    ids = tp.get_tokenizer("toklip-tiny")(["a red circle", "x"])
    assert ids.shape == (2, tiny_config.text["context_length"]) and ids.dtype == torch.long
    assert ids[0, 0] == 49406  # open_clip's start-of-text token


def test_hub_tokenizer_without_network_explains_fix(monkeypatch, tmp_path):
    import huggingface_hub

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path))
    with pytest.raises(OSError, match="TOKLIP_TOKENIZER_PATH"):
        tp.get_tokenizer("toklip-l")


def test_end_to_end_shapes(tiny_model, images):
    codes = tiny_model.tokenize(images)
    assert codes.shape == (3, 64) and codes.dtype == torch.long
    assert codes.max() < 1024 and codes.min() >= 0
    with torch.no_grad():
        assert tiny_model.encode_codes(codes).shape == (3, 64, 64)
        emb = tiny_model.encode_image(images, normalize=True)
        assert torch.allclose(emb.norm(dim=-1), torch.ones(3), atol=1e-5)
        recon = tiny_model.decode_codes(codes)
    assert recon.shape == images.shape
    assert torch.equal(tiny_model.tokenize(images), codes)  # deterministic


def test_logits_follow_siglip_formula(tiny_model):
    img, txt = torch.randn(2, 64), torch.randn(3, 64)
    with torch.no_grad():
        tiny_model.logit_scale.fill_(1.5)
        tiny_model.logit_bias.fill_(-2.0)
        got = tiny_model.logits(img, txt)
    cos = torch.tensor([[float(torch.dot(a, b) / (a.norm() * b.norm())) for b in txt] for a in img])
    assert torch.allclose(got, torch.exp(torch.tensor(1.5)) * cos - 2.0, atol=1e-5)
