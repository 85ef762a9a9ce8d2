"""open_clip's API over TokLIP and the open_clip / timm registration: gaps found by mutation testing (issue 15,
item 3, for issue 12's modules). tests/MUTATION.md lists the mutants these kill."""
from __future__ import annotations

import json
import uuid

import pytest
import timm
import torch

import toklip_plugin as tp
from toklip_plugin.integrations.open_clip import registry, trunk
from toklip_plugin.train.state import export_model


@pytest.fixture
def released_file(tmp_path, tiny_config):
    return export_model(tp.create_model(tiny_config, seed=3).eval(), tmp_path / "export")["released"]


# open_clip_api ------------------------------------------------------------------------------------------------
def test_both_constructors_put_the_model_on_the_device_given(released_file):
    """``meta`` stands for any device other than the CPU default on a machine without an accelerator."""
    model, _, _ = tp.create_model_and_transforms("toklip-tiny", pretrained=released_file, device="meta")
    assert {p.device.type for p in model.parameters()} == {"meta"}
    model, _ = tp.create_model_from_pretrained("toklip-tiny", pretrained=released_file, device="meta")
    assert {p.device.type for p in model.parameters()} == {"meta"}


def test_create_model_from_pretrained_loads_the_file_given_for_a_config_without_released_weights(released_file,
                                                                                                images):
    source = tp.load_toklip("toklip-tiny", checkpoint=released_file)
    model = tp.create_model_from_pretrained("toklip-tiny", pretrained=released_file, return_transform=False)
    with torch.no_grad():
        torch.testing.assert_close(model.encode_image(images), source.encode_image(images), rtol=0, atol=0)


def test_refusing_random_weights_says_what_to_pass_and_how_to_get_random_weights_on_purpose():
    with pytest.raises(ValueError) as err:
        tp.create_model_from_pretrained("toklip-tiny")
    assert str(err.value).endswith("pass pretrained= a released-layout .pt, a saved TokLIP directory or a .safetensors "
                                   "file (or use create_model_and_transforms(..., pretrained=None) for random weights)")


# registry: open_clip model configs ------------------------------------------------------------------------------
def test_a_hub_tokenizer_without_kwargs_gets_empty_tokenizer_kwargs_plus_its_pinned_revision(tiny_config):
    plain = tiny_config.replace(tokenizer={"kind": "hf", "name": "org/tok"})
    assert registry.open_clip_model_config(plain, "t")["text_cfg"]["tokenizer_kwargs"] == {}
    pinned = tiny_config.replace(tokenizer={"kind": "hf", "name": "org/tok", "revision": "abc"})
    assert registry.open_clip_model_config(pinned, "t")["text_cfg"]["tokenizer_kwargs"] == {"revision": "abc"}


def test_model_configs_are_written_into_a_new_nested_folder_and_the_written_files_returned(tmp_path):
    folder = tmp_path / "a" / "b"
    written = registry.write_model_configs(folder)
    assert sorted(written) == sorted(folder.glob("*.json"))
    assert sorted(p.stem for p in written) == sorted(registry.open_clip_models())
    assert all(isinstance(json.loads(p.read_text())["vision_cfg"], dict) for p in written)


# trunk: timm entry points ---------------------------------------------------------------------------------------
def test_the_trunk_entry_point_builds_random_weights_by_default():
    assert trunk.create_trunk("toklip-tiny").image_size == 128


def test_a_newly_registered_timm_name_builds_its_config_and_honours_or_refuses_timms_arguments():
    """A fresh name each time: timm's registry lives for the whole process."""
    name = f"toklip_tiny_probe_{uuid.uuid4().hex[:8]}"
    trunk.register_timm_models({name: "toklip-tiny"})
    assert timm.is_model(name)
    built = timm.create_model(name, num_classes=0, global_pool="map")
    assert isinstance(built, trunk.TokLIPTrunk) and built.image_size == 128
    with pytest.raises(ValueError, match="no timm weights"):
        timm.create_model(name, pretrained=True)
    with pytest.raises(ValueError, match="global_pool='map'"):
        timm.create_model(name, global_pool="avg")
    entrypoint = getattr(trunk, name)  # a module attribute, callable as timm's own entry points are
    assert isinstance(entrypoint(), trunk.TokLIPTrunk) and "'toklip-tiny'" in entrypoint.__doc__


def test_the_trunks_errors_say_how_to_load_weights_and_what_it_lacks():
    with pytest.raises(ValueError) as err:
        trunk.create_trunk("toklip-tiny", pretrained=True)
    assert str(err.value).endswith("load TokLIP weights with open_clip.create_model_and_transforms('toklip-tiny', "
                                   "pretrained=FILE) or toklip_plugin.load_toklip(name, checkpoint=FILE)")
    with pytest.raises(TypeError) as err:
        trunk.create_trunk("toklip-tiny", drop_path_rate=0.1)
    assert str(err.value).endswith("does not support ['drop_path_rate'] (the trunk has no stochastic depth or patch "
                                   "dropout)")


# trunk: dtypes --------------------------------------------------------------------------------------------------
def test_a_bfloat16_trunk_takes_float32_images(images):
    model = trunk.create_trunk("toklip-tiny").eval().to(torch.bfloat16)
    with torch.no_grad():
        torch.testing.assert_close(model(images), model(images.to(torch.bfloat16)), rtol=0, atol=0)


def test_a_float32_vq_drives_a_bfloat16_encoder_as_the_float32_trunk_does(images):
    torch.manual_seed(0)
    model = trunk.create_trunk("toklip-tiny").eval()
    with torch.no_grad():
        want = model(images)
        model.to(torch.bfloat16).vq.float()
        got = model(images)
    assert got.dtype == torch.bfloat16
    torch.testing.assert_close(got.float(), want, rtol=0.05, atol=0.05)
