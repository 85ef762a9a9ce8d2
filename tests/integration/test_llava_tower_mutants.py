"""The LLaVA towers' gaps found by mutation testing (issue 15, ``llava_tower`` group): the tower-name forms,
LLaVA's defaults for settings a config leaves out, the kept VQ decoder, the host syncs of a forward, and the
VQ-16 tower's names, device map and builder."""
from __future__ import annotations

import json
from types import SimpleNamespace

import pytest
import torch
from helpers.hub_cache import fake_commit, use_offline_cache, write_snapshot
from test_llava_tower import patched_llava, tower_args  # noqa: F401  (LLaVA patched first; LLaVA's args)
from test_llava_vq16_tower import vq_file  # noqa: F401  (a random full-size VQ-16 checkpoint)

import toklip_plugin as tp
import toklip_plugin.models.toklip as toklip_module
from toklip_plugin.integrations.llava.tower import (
    RANDOM_INIT_SEED,
    SELECT_FEATURES,
    TokLIPVisionTower,
    VQ16VisionTower,
    _device_from_map,
    parse_tower_name,
    parse_vq_tower_name,
)


def semantic_tokens(model, images):
    return model.encode_codes(model.tokenize(images))


def seeded_random_tiny():
    """The model a ``toklip-tiny`` tower must be: toklip-tiny's config at the tower's seed."""
    return tp.create_model(tp.resolve_config("toklip-tiny"), seed=RANDOM_INIT_SEED).eval()


# TokLIP tower names -------------------------------------------------------------------------------
def test_an_unknown_name_lists_the_known_names_comma_separated():
    with pytest.raises(ValueError) as err:
        parse_tower_name("toklip-xl")
    assert f"known names: {', '.join(tp.list_models())};" in str(err.value)


@pytest.mark.parametrize("suffix", [".pt", ".pth", ".bin", ".safetensors"])
def test_a_weight_file_of_each_usual_kind_after_toklip_colon_is_refused_asking_for_the_config_name(tmp_path, suffix):
    path = tmp_path / f"weights{suffix}"
    with pytest.raises(ValueError) as err:
        parse_tower_name(f"toklip:{path}")
    assert f"a weight file does not say which config it fits; name the config, e.g. toklip-l:{path}" in str(err.value)


def test_a_config_without_weights_after_toklip_colon_gives_the_towers_seeded_random_model(tmp_path, images):
    """A config name or a config file says which model, not which weights: random ones, at the tower's seed."""
    config = tp.resolve_config("toklip-tiny")
    config_file = tmp_path / "tiny.json"
    config_file.write_text(json.dumps(config.to_dict()))
    expected = semantic_tokens(seeded_random_tiny(), images)
    for source in ("toklip-tiny", str(config_file)):
        assert parse_tower_name(f"toklip:{source}") == (config, None)
        tower = TokLIPVisionTower(f"toklip:{source}", tower_args())
        torch.testing.assert_close(tower(images), expected, rtol=0, atol=0)


def test_a_hub_repo_after_toklip_colon_gives_the_repos_weights(tmp_path, monkeypatch, images):
    cache = use_offline_cache(monkeypatch, tmp_path / "hf")
    trained = tp.create_model(tp.resolve_config("toklip-tiny"), seed=7).eval()
    trained.save_pretrained(tmp_path / "pushed")
    write_snapshot(cache, "org/tower", fake_commit("tower"), tmp_path / "pushed")
    tower = TokLIPVisionTower("toklip:hf-hub:org/tower", tower_args())
    torch.testing.assert_close(tower(images), semantic_tokens(trained, images), rtol=0, atol=0)


def test_only_the_released_configs_ask_for_released_weights():
    """TokLIP_S_256.pt and TokLIP_L_384.pt are the released weights (the module docstring's table)."""
    weights = {name: parse_tower_name(name)[1] for name in tp.list_models()}
    assert weights == {name: "released" if name in ("toklip-s", "toklip-l") else None for name in tp.list_models()}


# LLaVA's settings ---------------------------------------------------------------------------------
def test_args_without_the_feature_settings_give_llavas_defaults_the_final_semantic_tokens(images):
    reference = seeded_random_tiny()
    tower = TokLIPVisionTower("toklip-tiny", SimpleNamespace())  # a config saved before the settings existed
    torch.testing.assert_close(tower(images), semantic_tokens(reference, images), rtol=0, atol=0)
    assert tower.hidden_size == reference.width


def test_a_tower_asked_to_keep_the_decoder_decodes_its_codes_as_the_model_does(images):
    """``mm_vision_keep_decoder`` (the unified model writes images through the tower's VQ)."""
    reference = seeded_random_tiny()
    tower = TokLIPVisionTower("toklip-tiny", tower_args(mm_vision_keep_decoder=True))
    codes = tower.toklip.tokenize(images)
    grid, channels = reference.config.grid_size, reference.config.vq.codebook_embed_dim
    shape = (len(images), channels, grid, grid)
    with torch.no_grad():
        decoded = tower.toklip.vq.decode_code(codes, shape)
        torch.testing.assert_close(decoded, reference.vq.decode_code(codes, shape), rtol=0, atol=0)
    assert tower.toklip.text is None and not any(p.requires_grad for p in tower.parameters())


def test_a_forward_syncs_the_host_once_for_the_pixels_and_trusts_the_vqs_own_codes(images, monkeypatch):
    """The pixel check reads the value range (one host sync); the codes come from the VQ, so no second check."""
    calls = []
    original = toklip_module._value_range
    monkeypatch.setattr(toklip_module, "_value_range", lambda values: calls.append(values.dtype) or original(values))
    for feature in SELECT_FEATURES:
        tower = TokLIPVisionTower("toklip-tiny", tower_args(mm_vision_select_feature=feature))
        calls.clear()
        tower(images)
        assert calls == [images.dtype]


@pytest.mark.parametrize("device_map, expected", [
    ("auto", "cuda"), ({}, "cuda"),  # no entry for the root module means 'auto'
    (None, "cpu"), ({"": "cpu"}, "cpu"), ("cuda:1", "cuda:1"), ({"": "cuda:0"}, "cuda:0"),
])
def test_on_a_machine_with_cuda_auto_names_cuda_and_no_device_map_the_cpu(monkeypatch, device_map, expected):
    """What a CUDA machine sees (checked here without moving anything: only the device's name)."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert _device_from_map(device_map) == expected


# the VQ-16 tower ----------------------------------------------------------------------------------
@pytest.mark.parametrize("name", ["vq-32-64", "xx-16-64", "vq-16064"])
def test_names_that_do_not_start_with_vq_16_dash_are_refused(name):
    with pytest.raises(ValueError, match=f"unknown VQ vision tower '{name}'"):
        parse_vq_tower_name(name)


@pytest.mark.parametrize("size", [1, 8, 24])
def test_a_size_that_is_not_a_multiple_of_16_is_refused_naming_the_downsampling(size):
    with pytest.raises(ValueError, match=f"the image size {size} is not a multiple of the VQ's downsampling 16"):
        parse_vq_tower_name(f"vq-16-{size}")


def test_the_vq_tower_takes_args_without_the_feature_settings():
    tower = VQ16VisionTower("vq-16-64:/nowhere/vq.pt", SimpleNamespace(), delay_load=True)
    assert not tower.is_loaded and (tower.hidden_size, tower.num_patches) == (8, 16)


@pytest.mark.parametrize("device_map, expected", [({"": "meta"}, "meta"), ("meta", "meta"), (None, "cpu")])
def test_the_vq_tower_loads_where_llavas_device_map_says(vq_file, device_map, expected):  # noqa: F811
    tower = VQ16VisionTower(f"vq-16-64:{vq_file}", tower_args(), delay_load=True)
    tower.load_model(device_map=device_map)
    assert tower.is_loaded and tower.device.type == expected


def test_the_vq_tower_moves_the_images_to_its_own_device(vq_file):  # noqa: F811
    """The meta device stands in for an accelerator: CPU images, a tower elsewhere."""
    tower = VQ16VisionTower(f"vq-16-64:{vq_file}", tower_args(), delay_load=True)
    tower.load_model(device_map="meta")
    features = tower(torch.zeros(2, 3, 64, 64))
    assert features.device.type == "meta" and features.shape == (2, 16, 8)


def test_llavas_builder_hands_the_vq_tower_its_name_and_settings():
    from llava.model.multimodal_encoder.builder import build_vision_tower

    name = "vq-16-64:/nowhere/vq.pt"
    tower = build_vision_tower(SimpleNamespace(mm_vision_tower=name), delay_load=True)
    assert tower.vision_tower_name == name  # as LLaVA's CLIP tower; the unified model names a wrong tower by it
    with pytest.raises(ValueError, match="use mm_vision_select_layer -1 .* got -2"):
        build_vision_tower(SimpleNamespace(mm_vision_tower=name, mm_vision_select_layer=-2), delay_load=True)
