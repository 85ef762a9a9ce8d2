"""Checkpoint formats: released TokLIP layout, our directory, SigLIP2 init, refusal of bad files."""
from __future__ import annotations

import os

import huggingface_hub
import pytest
import torch
from timm.models.vision_transformer import VisionTransformer

import toklip_plugin as tp
from toklip_plugin import checkpoints as ckpt


def released_layout(model) -> dict:
    """Our weights under the released TokLIP key names, spelled out by hand from the design doc."""
    renames = {
        "encoder.code_mlp.fc1.": "visual.trunk.vq_table.",
        "encoder.code_mlp.fc2.": "visual.trunk.vq_mapping.",
        "vq.": "visual.trunk.vq.",
        "encoder.": "visual.trunk.",
    }
    out = {}
    for key, value in model.state_dict().items():
        new = key
        for ours, theirs in renames.items():
            if key.startswith(ours):
                new = theirs + key[len(ours):]
                break
        out[new] = value.clone()
    return out


def _outputs(model, images, text):
    with torch.no_grad():
        return model.encode_image(images, normalize=True), model.encode_text(text, normalize=True)


def test_released_checkpoint_loads_strictly_with_identical_outputs(tmp_path, tiny_config, images):
    source = tp.create_model(tiny_config, seed=0).eval()
    state = released_layout(source)
    expected_families = {"visual.trunk.vq", "visual.trunk.vq_table", "visual.trunk.vq_mapping", "visual.trunk.pos_embed",
                         "visual.trunk.blocks", "visual.trunk.norm", "visual.trunk.attn_pool", "text", "logit_scale",
                         "logit_bias"}
    families = {k.split(".")[0] if not k.startswith("visual.") else ".".join(k.split(".")[:3]) for k in state}
    assert families == expected_families
    path = tmp_path / "TokLIP_tiny.pt"
    torch.save({"state_dict": {"module." + k: v for k, v in state.items()}, "epoch": 3}, path)

    loaded = tp.load_toklip("toklip-tiny", checkpoint=path)
    fresh = tp.create_model(tiny_config, seed=1).eval()
    text = tp.get_tokenizer("toklip-tiny")(["a red circle", "a blue square", "a green star"])
    want_img, want_txt = _outputs(source, images, text)
    got_img, got_txt = _outputs(loaded, images, text)
    assert torch.equal(got_img, want_img) and torch.equal(got_txt, want_txt)
    assert not torch.equal(_outputs(fresh, images, text)[0], want_img)  # the load did something


def test_export_to_released_layout_round_trips(tiny_model):
    exported = ckpt.native_to_released(tiny_model.state_dict())
    assert exported.keys() == released_layout(tiny_model).keys()
    assert ckpt.released_to_native(exported).keys() == tiny_model.state_dict().keys()


def test_mismatched_checkpoint_names_keys_and_config(tmp_path, tiny_model):
    state = released_layout(tiny_model)
    del state["visual.trunk.norm.weight"]
    state["visual.trunk.extra.weight"] = torch.zeros(1)
    state["visual.trunk.pos_embed"] = torch.zeros(1, 16, 64)
    path = tmp_path / "bad.pt"
    torch.save(state, path)
    with pytest.raises(ckpt.CheckpointError) as err:
        tp.load_toklip("toklip-tiny", checkpoint=path)
    message = str(err.value)
    assert "encoder.norm.weight" in message and "encoder.extra.weight" in message
    assert "encoder.pos_embed: checkpoint (1, 16, 64) vs model (1, 64, 64)" in message
    assert "toklip-tiny" in message


class NotATensor:
    def __reduce__(self):
        return (os.getcwd, ())


def test_pickle_needing_code_is_refused(tmp_path):
    path = tmp_path / "evil.pt"
    torch.save({"state_dict": {"x": torch.zeros(1)}, "payload": NotATensor()}, path)
    with pytest.raises(ckpt.CheckpointError, match="arbitrary code"):
        tp.load_toklip("toklip-tiny", checkpoint=path)


def test_save_pretrained_round_trip(tmp_path, tiny_model, images):
    tiny_model.save_pretrained(tmp_path / "run")
    assert sorted(p.name for p in (tmp_path / "run").iterdir()) == ["config.json", "model.safetensors"]
    loaded = tp.load_toklip(tmp_path / "run")
    text = tp.get_tokenizer(tmp_path / "run")(["a photo"])
    a, b = _outputs(tiny_model, images, text), _outputs(loaded, images, text)
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
    assert loaded.config == tiny_model.config


def test_interrupted_save_leaves_previous_files_intact(tmp_path, tiny_config, monkeypatch):
    target = tmp_path / "run"
    tp.create_model(tiny_config, seed=0).save_pretrained(target)
    before = {p.name: p.read_bytes() for p in target.iterdir()}

    def crash_midway(tensors, filename, metadata=None):
        with open(filename, "wb") as f:
            f.write(b"partial")
        raise KeyboardInterrupt("power cut")

    monkeypatch.setattr(ckpt, "save_file", crash_midway)
    with pytest.raises(KeyboardInterrupt):
        tp.create_model(tiny_config, seed=1).save_pretrained(target)
    after = {p.name: p.read_bytes() for p in target.iterdir()}
    assert after == before  # same files, same bytes, no temporary leftovers
    tp.load_toklip(target)


def test_init_from_timm_siglip_layout(tiny_model):
    e = tiny_model.config.encoder
    teacher = VisionTransformer(img_size=64, patch_size=16, embed_dim=e.width, depth=e.depth, num_heads=e.heads,
                                class_token=False, global_pool="map", num_classes=0, act_layer="gelu_tanh")
    report = ckpt.init_from_siglip2(tiny_model, teacher.state_dict())
    assert report["dropped"] == ["patch_embed.proj.weight", "patch_embed.proj.bias"]
    assert report["resampled"] == ["pos_embed"]  # a 4x4 grid resampled to the 8x8 grid
    assert tiny_model.encoder.pos_embed.shape == (1, 64, e.width)
    for key, value in teacher.state_dict().items():
        if key.startswith(("blocks.", "norm.", "attn_pool.")):
            assert torch.equal(tiny_model.state_dict()["encoder." + key], value), key


def test_init_from_open_clip_layout_copies_text_and_logits(tiny_config):
    source, target = tp.create_model(tiny_config, seed=0), tp.create_model(tiny_config, seed=1)
    state = {"visual.trunk." + k[len("encoder."):]: v for k, v in source.state_dict().items()
             if k.startswith("encoder.") and not k.startswith("encoder.code_mlp")}
    state.update({k: v for k, v in source.state_dict().items() if k.startswith("text.") or k.startswith("logit_")})
    state["visual.trunk.patch_embed.proj.weight"] = torch.zeros(64, 3, 16, 16)
    before = {k: v.clone() for k, v in target.state_dict().items()}
    report = ckpt.init_from_siglip2(target, state)
    assert report["dropped"] == ["visual.trunk.patch_embed.proj.weight"] and not report["resampled"]
    for key, value in target.state_dict().items():
        untouched = key.startswith(("vq.", "encoder.code_mlp."))  # SigLIP2 has no VQ and no code MLP
        assert torch.equal(value, before[key] if untouched else source.state_dict()[key]), key


def test_missing_weight_offline_says_where_it_looked(tmp_path, monkeypatch):
    monkeypatch.setenv("TOKLIP_HOME", str(tmp_path / "home"))
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)  # read at import time upstream
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "hf"))
    with pytest.raises(FileNotFoundError) as err:
        ckpt.resolve_weight_file({"repo_id": "TencentARC/TokLIP", "filename": "TokLIP_L_384.pt"})
    message = str(err.value)
    assert str(tmp_path / "home" / "TokLIP_L_384.pt") in message and "huggingface-cli download" in message


def test_weight_found_in_toklip_home(tmp_path, monkeypatch, tiny_model):
    monkeypatch.setenv("TOKLIP_HOME", str(tmp_path))
    torch.save(released_layout(tiny_model), tmp_path / "TokLIP_tiny.pt")
    spec = {"repo_id": "nobody/none", "filename": "TokLIP_tiny.pt"}
    assert ckpt.resolve_weight_file(spec) == tmp_path / "TokLIP_tiny.pt"
    config = tiny_model.config.replace(weights={"checkpoint": spec})
    loaded = tp.load_toklip(config, checkpoint="released")
    assert torch.equal(loaded.encoder.pos_embed, tiny_model.encoder.pos_embed)


def test_released_requested_but_config_names_none():
    with pytest.raises(ValueError, match="names no released checkpoint"):
        tp.load_toklip("toklip-tiny", checkpoint="released")
