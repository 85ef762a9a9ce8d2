"""The TokLIP LLaVA vision tower: features, LLaVA's tower surface, image processing, bad input."""
from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest
import torch
from helpers.llava_fixtures import require_patched_llava
from PIL import Image

import toklip_plugin as tp
from toklip_plugin.integrations.llava.tower import RANDOM_INIT_SEED, TokLIPVisionTower


@pytest.fixture(scope="module", autouse=True)
def patched_llava():
    """Patch before the first ``import llava`` of the session, so that the patched modules load."""
    require_patched_llava()


def tower_args(**overrides) -> SimpleNamespace:
    """What LLaVA passes: ModelArguments at training time, the model config when re-opening."""
    return SimpleNamespace(**{"mm_vision_select_layer": -1, "mm_vision_select_feature": "patch", **overrides})


@pytest.fixture
def reference():
    """The model the ``toklip-tiny`` tower must be: toklip-tiny's config at the tower's seed."""
    return tp.create_model(tp.resolve_config("toklip-tiny"), seed=RANDOM_INIT_SEED).eval()


def test_tower_features_are_the_semantic_tokens_of_the_images(reference, images):
    tower = TokLIPVisionTower("toklip-tiny", tower_args())
    expected = reference.encode_codes(reference.tokenize(images))
    torch.testing.assert_close(tower(images), expected, rtol=0, atol=0)
    assert tower.hidden_size == expected.shape[-1] == reference.width


def test_select_layer_indexes_hidden_states_like_llava_does_for_clip(reference, images):
    tower = TokLIPVisionTower("toklip-tiny", tower_args(mm_vision_select_layer=-2))
    expected = reference.encode_codes(reference.tokenize(images), layer=-2)
    torch.testing.assert_close(tower(images), expected, rtol=0, atol=0)


def test_fusion_appends_the_vq_code_embeddings(reference, images):
    tower = TokLIPVisionTower("toklip-tiny", tower_args(mm_vision_select_feature="semantic_vq"))
    codes = reference.tokenize(images)
    expected = torch.cat([reference.encode_codes(codes), reference.vq.quantize.codebook()[codes]], dim=-1)
    torch.testing.assert_close(tower(images), expected, rtol=0, atol=0)
    assert tower.hidden_size == reference.width + reference.config.vq.codebook_embed_dim


def test_list_input_gives_one_feature_map_per_image(images):
    tower = TokLIPVisionTower("toklip-tiny", tower_args())
    per_image = tower(list(images))
    assert [f.shape for f in per_image] == [(1, tower.num_patches, tower.hidden_size)] * len(images)
    torch.testing.assert_close(torch.cat(per_image), tower(images), rtol=1e-5, atol=1e-5)


def test_features_come_back_in_the_dtype_of_the_images(images):
    tower = TokLIPVisionTower("toklip-tiny", tower_args())  # float32 tower, as LLaVA leaves it on CPU
    assert tower(images.to(torch.bfloat16)).dtype == torch.bfloat16
    assert tower([images[0].half()])[0].dtype == torch.float16


def test_delay_loaded_tower_creates_no_parameters_until_load_model(images):
    with torch.device("meta"):  # what from_pretrained(low_cpu_mem_usage=True) does to LLaVA's __init__
        tower = TokLIPVisionTower("toklip-tiny", tower_args(), delay_load=True)
    assert not tower.is_loaded and list(tower.parameters()) == [] and list(tower.buffers()) == []
    assert tower.hidden_size == 64 and tower.config.image_size == 128  # readable before loading
    tower.load_model(device_map="cpu")
    assert tower.is_loaded and tower.device.type == "cpu"
    assert tower(images).shape == (len(images), tower.num_patches, tower.hidden_size)


def test_loaded_tower_is_frozen_unless_unfreeze_is_asked():
    frozen = TokLIPVisionTower("toklip-tiny", tower_args())
    assert not any(p.requires_grad for p in frozen.parameters())
    unfrozen = TokLIPVisionTower("toklip-tiny", tower_args(unfreeze_mm_vision_tower=True), delay_load=True)
    assert unfrozen.is_loaded  # as CLIPVisionTower: unfreezing loads at once
    trainable = {n.split(".")[1] for n, p in unfrozen.named_parameters() if p.requires_grad}
    assert trainable == {"encoder"}  # the VQ tokenizer stays frozen


def test_unfrozen_tower_passes_gradients_to_the_token_encoder(images):
    tower = TokLIPVisionTower("toklip-tiny", tower_args(unfreeze_mm_vision_tower=True))
    tower(images).sum().backward()
    assert tower.toklip.encoder.pos_embed.grad is not None


def test_tower_has_the_members_llava_reads(images):
    tower = TokLIPVisionTower("toklip-tiny", tower_args())
    cfg = tp.resolve_config("toklip-tiny")
    assert (tower.num_patches, tower.num_patches_per_side) == (cfg.num_tokens, cfg.grid_size)
    assert tower.dummy_feature.shape == (1, cfg.encoder.width)
    assert tower.dtype == torch.float32 and tower.device.type == "cpu"
    tower.to(dtype=torch.bfloat16)  # what LLaVA's train.py does
    assert tower(images).dtype == images.dtype
    assert tower.toklip.text is None and tower.toklip.vq.decoder is None  # no dead weight in the LLM


def test_saved_toklip_directory_is_a_tower_source(tmp_path, images):
    trained = tp.create_model(tp.resolve_config("toklip-tiny"), seed=7).eval()
    trained.save_pretrained(tmp_path / "my-toklip")
    tower = TokLIPVisionTower(f"toklip:{tmp_path / 'my-toklip'}", tower_args())
    torch.testing.assert_close(tower(images), trained.encode_codes(trained.tokenize(images)), rtol=0, atol=0)


def test_named_config_with_a_weight_file(tmp_path, images):
    trained = tp.create_model(tp.resolve_config("toklip-tiny"), seed=3).eval()
    trained.save_pretrained(tmp_path)
    tower = TokLIPVisionTower(f"toklip-tiny:{tmp_path / 'model.safetensors'}", tower_args())
    torch.testing.assert_close(tower(images), trained.encode_codes(trained.tokenize(images)), rtol=0, atol=0)


# image processing -----------------------------------------------------------------------------
def test_process_images_pad_squares_with_the_mean_and_maps_to_minus_one_one():
    from llava.mm_utils import process_images

    tower = TokLIPVisionTower("toklip-tiny", tower_args(), delay_load=True)
    size = tower.config.image_size
    tall = Image.fromarray(np.full((size, size // 2, 3), 255, dtype=np.uint8))  # white, half as wide as tall
    pixels = process_images([tall], tower.image_processor, SimpleNamespace(image_aspect_ratio="pad"))
    assert pixels.shape == (1, 3, size, size)
    fill = (int(0.5 * 255) / 255 - 0.5) / 0.5  # LLaVA pads with image_mean * 255
    quarter = size // 4
    torch.testing.assert_close(pixels[..., : quarter - 2], torch.full_like(pixels[..., : quarter - 2], fill))
    torch.testing.assert_close(pixels[..., quarter + 2: -quarter - 2], torch.ones_like(pixels[..., quarter + 2: -quarter - 2]))


def test_square_processing_matches_toklip_transform():
    from llava.mm_utils import process_images

    tower = TokLIPVisionTower("toklip-tiny", tower_args(), delay_load=True)
    image = Image.fromarray(np.random.default_rng(0).integers(0, 256, (200, 160, 3), dtype=np.uint8))
    pixels = process_images([image], tower.image_processor, SimpleNamespace(image_aspect_ratio="square"))
    expected = tp.get_transform("toklip-tiny")(image)[None]
    assert pixels.shape == expected.shape
    assert (pixels - expected).abs().mean() < 0.02  # PIL vs torchvision bicubic differ by rounding only


def test_anyres_processing_gives_the_base_image_and_its_crops_at_the_tower_size(images):
    from llava.mm_utils import process_images

    tower = TokLIPVisionTower("toklip-tiny", tower_args())
    size = tower.config.image_size
    wide = Image.fromarray(np.zeros((size, 2 * size, 3), dtype=np.uint8))
    cfg = SimpleNamespace(image_aspect_ratio="anyres", image_grid_pinpoints=[[size, 2 * size], [2 * size, size]])
    pixels = process_images([wide], tower.image_processor, cfg)
    assert pixels.shape == (1, 3, 3, size, size)  # base image + two crops
    assert tower(pixels[0]).shape == (3, tower.num_patches, tower.hidden_size)


# LLaVA's builder --------------------------------------------------------------------------------
def test_llava_build_vision_tower_hands_toklip_names_to_the_plugin():
    from llava.model.multimodal_encoder.builder import build_vision_tower

    cfg = SimpleNamespace(mm_vision_tower="toklip-tiny", mm_vision_select_layer=-1)
    tower = build_vision_tower(cfg, delay_load=True)
    assert isinstance(tower, TokLIPVisionTower) and not tower.is_loaded
    with pytest.raises(ValueError, match="Unknown vision tower: toklipper"):  # a prefix match, not a substring
        build_vision_tower(SimpleNamespace(mm_vision_tower="toklipper", mm_vision_select_layer=-1))


# bad input ------------------------------------------------------------------------------------
def test_unknown_toklip_name_lists_the_known_ones():
    with pytest.raises(ValueError, match="toklip-xl") as err:
        TokLIPVisionTower("toklip-xl", tower_args(), delay_load=True)
    for name in tp.list_models():
        assert name in str(err.value)


def test_weight_file_without_a_config_name_says_how_to_name_it(tmp_path):
    with pytest.raises(ValueError, match="toklip-l:"):
        TokLIPVisionTower(f"toklip:{tmp_path / 'TokLIP_L_384.pt'}", tower_args(), delay_load=True)


def test_unsupported_select_feature_names_the_choices():
    with pytest.raises(ValueError, match="cls_patch.*patch, semantic_vq"):
        TokLIPVisionTower("toklip-tiny", tower_args(mm_vision_select_feature="cls_patch"), delay_load=True)


def test_missing_released_weights_say_where_they_were_looked_for(tmp_path, monkeypatch):
    from huggingface_hub import constants

    monkeypatch.setenv("TOKLIP_HOME", str(tmp_path / "home"))
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    with pytest.raises(FileNotFoundError) as err:
        TokLIPVisionTower("toklip-l", tower_args())
    assert str(tmp_path / "home" / "TokLIP_L_384.pt") in str(err.value)


def test_missing_weight_file_names_the_path(tmp_path):
    with pytest.raises(FileNotFoundError, match=str(tmp_path / "nope.pt")):
        TokLIPVisionTower(f"toklip-tiny:{tmp_path / 'nope.pt'}", tower_args())


def test_fusion_appends_the_unit_length_code_vectors_even_when_stored_rows_are_not(reference, images):
    tower = TokLIPVisionTower("toklip-tiny", tower_args(mm_vision_select_feature="semantic_vq"))
    stored = tower.toklip.vq.quantize.embedding.weight
    size = stored.shape[0]
    with torch.no_grad():  # a trained codebook stores rows of any length; only their direction is used
        stored.mul_(torch.linspace(0.25, 4.0, size)[:, None])
    codes = reference.tokenize(images)
    rows = stored.detach()[codes]
    expected = torch.cat([reference.encode_codes(codes), rows / rows.norm(dim=-1, keepdim=True)], dim=-1)
    torch.testing.assert_close(tower(images), expected, rtol=1e-5, atol=1e-5)  # rounding of the rescaled rows


def test_llava_builder_passes_the_feature_options_on_to_the_tower():
    from llava.model.multimodal_encoder.builder import build_vision_tower

    cfg = SimpleNamespace(mm_vision_tower="toklip-tiny", mm_vision_select_layer=-2,
                          mm_vision_select_feature="semantic_vq")
    tower = build_vision_tower(cfg, delay_load=True)
    cfg_tiny = tp.resolve_config("toklip-tiny")
    assert tower.select_layer == -2
    assert tower.hidden_size == cfg_tiny.encoder.width + cfg_tiny.vq.codebook_embed_dim


@pytest.mark.parametrize("device_map, expected", [
    ({"": "meta"}, "meta"),  # accelerate's form: one device for the whole model
    ("meta", "meta"),
    (None, "cpu"),
    ("auto", "cuda" if torch.cuda.is_available() else "cpu"),
    ({}, "cuda" if torch.cuda.is_available() else "cpu"),  # no entry for the root module means 'auto'
])
def test_load_model_puts_the_tower_where_llava_device_map_says(device_map, expected):
    tower = TokLIPVisionTower("toklip-tiny", tower_args(), delay_load=True)
    tower.load_model(device_map=device_map)
    assert tower.device.type == expected


def test_random_weights_are_announced_with_how_to_pass_trained_ones(caplog):
    with caplog.at_level("WARNING", logger="toklip_plugin.integrations.llava.tower"):
        TokLIPVisionTower("toklip-tiny", tower_args())
    assert caplog.messages == [f"toklip-tiny: config 'toklip-tiny' names no released weights; using random weights "
                               f"(seed {RANDOM_INIT_SEED}). Pass trained ones as toklip-tiny:/path/to/weights.pt"]
