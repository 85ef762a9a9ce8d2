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


# strict loading: one wrong key is enough -------------------------------------------------------
def saved_with(tmp_path, model, layout: str, edit) -> tuple[str, dict]:
    """``model``'s weights after ``edit(state)``, saved as a released ``.pt`` or as our directory;
    returns ``load_toklip``'s arguments for it."""
    if layout == "released":
        state = released_layout(model)
        edit(state, "visual.trunk.")
        torch.save(state, tmp_path / "edited.pt")
        return "toklip-tiny", {"checkpoint": tmp_path / "edited.pt"}
    from safetensors.torch import save_file

    model.save_pretrained(tmp_path / "run")
    state = {k: v.clone() for k, v in model.state_dict().items()}
    edit(state, "encoder.")
    save_file(state, str(tmp_path / "run" / "model.safetensors"))
    return tmp_path / "run", {}


def refusal(tmp_path, model, layout: str, edit) -> str:
    """The message with which ``load_toklip`` refuses ``model``'s weights after ``edit``."""
    name, kwargs = saved_with(tmp_path, model, layout, edit)
    with pytest.raises(ckpt.CheckpointError) as err:
        tp.load_toklip(name, **kwargs)
    return str(err.value)


@pytest.mark.parametrize("layout", ["released", "directory"])
def test_a_checkpoint_missing_one_key_is_refused_naming_it(tmp_path, tiny_model, layout):
    def drop_final_norm(state, prefix):
        del state[prefix + "norm.weight"]

    message = refusal(tmp_path, tiny_model, layout, drop_final_norm)
    assert "missing keys (1): encoder.norm.weight\n" in message
    assert "unexpected keys (0): none" in message and "wrong shapes (0): none" in message


@pytest.mark.parametrize("layout", ["released", "directory"])
def test_a_checkpoint_with_one_extra_key_is_refused_naming_it(tmp_path, tiny_model, layout):
    def add_a_stray_tensor(state, prefix):
        state[prefix + "extra.weight"] = torch.zeros(3)

    message = refusal(tmp_path, tiny_model, layout, add_a_stray_tensor)
    assert "unexpected keys (1): encoder.extra.weight\n" in message
    assert "missing keys (0): none" in message and "wrong shapes (0): none" in message


# gaps found by mutation testing (tests/MUTATION.md) ---------------------------------------------
def test_a_released_key_outside_every_known_prefix_is_reported_under_its_own_name(tmp_path, tiny_model):
    state = released_layout(tiny_model)
    state["visual.proj"] = torch.zeros(2)  # an open_clip head TokLIP does not have
    with pytest.raises(ckpt.CheckpointError, match=r"unexpected keys \(1\): visual\.proj\n"):
        ckpt.load_released_checkpoint(tiny_model, state)


def test_load_released_checkpoint_reads_a_file_path(tmp_path, tiny_config, tiny_model):
    torch.save({"state_dict": released_layout(tiny_model)}, tmp_path / "released.pt")
    target = tp.create_model(tiny_config, seed=5)
    ckpt.load_released_checkpoint(target, tmp_path / "released.pt")
    assert all(torch.equal(v, tiny_model.state_dict()[k]) for k, v in target.state_dict().items())


def test_a_long_list_of_missing_keys_shows_twelve_and_counts_the_rest(tiny_model):
    state = tiny_model.state_dict()
    dropped = sorted(k for k in state if k.startswith("encoder.blocks."))[:14]
    assert len(dropped) == 14
    with pytest.raises(ckpt.CheckpointError) as err:
        ckpt.load_state_dict_strict(tiny_model, {k: v for k, v in state.items() if k not in dropped}, "the test")
    assert f"missing keys (14): {', '.join(dropped[:12])}, ... (2 more)\n" in str(err.value)
    with pytest.raises(ckpt.CheckpointError) as err:  # exactly twelve: all shown, nothing "more"
        ckpt.load_state_dict_strict(tiny_model, {k: v for k, v in state.items() if k not in dropped[:12]}, "the test")
    assert f"missing keys (12): {', '.join(dropped[:12])}\n" in str(err.value)


def test_a_weight_file_that_does_not_exist_is_named(tmp_path):
    with pytest.raises(FileNotFoundError, match=f"weight file {tmp_path / 'nope.pt'} does not exist"):
        ckpt.resolve_weight_file(tmp_path / "nope.pt")


def test_weights_are_looked_up_in_the_user_cache_when_toklip_home_is_unset(tmp_path, monkeypatch, tiny_model):
    monkeypatch.delenv("TOKLIP_HOME", raising=False)
    monkeypatch.setenv("HOME", str(tmp_path))
    (tmp_path / ".cache" / "toklip").mkdir(parents=True)
    torch.save(released_layout(tiny_model), tmp_path / ".cache" / "toklip" / "TokLIP_tiny.pt")
    found = ckpt.resolve_weight_file({"repo_id": "nobody/none", "filename": "TokLIP_tiny.pt"})
    assert found == tmp_path / ".cache" / "toklip" / "TokLIP_tiny.pt"


def _open_clip_siglip_layout(model) -> dict:
    state = {"visual.trunk." + k[len("encoder."):]: v.clone() for k, v in model.state_dict().items()
             if k.startswith("encoder.") and not k.startswith("encoder.code_mlp")}
    state.update({k: v.clone() for k, v in model.state_dict().items() if k.startswith(("text.", "logit_"))})
    return state


def test_siglip2_keys_after_one_without_a_counterpart_are_still_copied(tiny_config):
    source, target = tp.create_model(tiny_config, seed=0), tp.create_model(tiny_config, seed=1)
    state = {"visual.trunk.patch_embed.proj.weight": torch.zeros(64, 3, 16, 16), **_open_clip_siglip_layout(source)}
    report = ckpt.init_from_siglip2(target, state)
    assert report["dropped"] == ["visual.trunk.patch_embed.proj.weight"]
    assert report["copied"] == list(state)[1:]
    assert torch.equal(target.encoder.norm.weight, source.encoder.norm.weight)


def test_siglip2_init_leaves_the_vq_alone_even_if_the_dict_carries_vq_keys(tiny_config):
    source, target = tp.create_model(tiny_config, seed=0), tp.create_model(tiny_config, seed=1)
    state = _open_clip_siglip_layout(source)
    state["vq.quant_conv.bias"] = torch.ones_like(target.vq.quant_conv.bias)  # not a SigLIP2 weight
    before = target.vq.quant_conv.bias.clone()
    report = ckpt.init_from_siglip2(target, state)
    assert "vq.quant_conv.bias" in report["dropped"] and torch.equal(target.vq.quant_conv.bias, before)


def test_a_siglip2_weight_of_the_wrong_width_is_named_with_both_shapes(tiny_model):
    state = _open_clip_siglip_layout(tiny_model)
    state["visual.trunk.norm.weight"] = torch.ones(96)
    with pytest.raises(ckpt.CheckpointError, match=r"SigLIP2 weight visual\.trunk\.norm\.weight has shape \(96,\), "
                                                   r"but encoder\.norm\.weight in config 'toklip-tiny' .* has \(64,\)"):
        ckpt.init_from_siglip2(tiny_model, state)


def test_a_state_dict_without_transformer_blocks_is_refused_saying_what_was_expected(tiny_model):
    state = {k: v for k, v in _open_clip_siglip_layout(tiny_model).items() if ".blocks." not in k}
    with pytest.raises(ckpt.CheckpointError, match=r"^no SigLIP2 transformer blocks found in the state dict "
                                                   r"\(expected 'visual\.trunk\.blocks\.\*' or 'blocks\.\*'\)$"):
        ckpt.init_from_siglip2(tiny_model, state)


def test_our_safetensors_file_and_directory_load_through_load_any_checkpoint(tmp_path, tiny_config, tiny_model):
    tiny_model.save_pretrained(tmp_path / "run")
    for source in (tmp_path / "run", tmp_path / "run" / "model.safetensors"):
        target = tp.create_model(tiny_config, seed=9)
        ckpt.load_any_checkpoint(target, source)
        assert all(torch.equal(v, tiny_model.state_dict()[k]) for k, v in target.state_dict().items()), source


@pytest.mark.parametrize("layout", ["directory", "safetensors"])
def test_a_mismatched_file_of_ours_names_the_config_it_was_loaded_for(tmp_path, tiny_config, tiny_model, layout):
    from safetensors.torch import save_file

    tiny_model.save_pretrained(tmp_path / "run")
    state = {k: v for k, v in tiny_model.state_dict().items() if k != "encoder.norm.bias"}
    save_file(state, str(tmp_path / "run" / "model.safetensors"))
    source = tmp_path / "run" if layout == "directory" else tmp_path / "run" / "model.safetensors"
    with pytest.raises(ckpt.CheckpointError, match=r"checkpoint does not fit TokLIP config 'toklip-tiny' .*\n"
                                                   r"  missing keys \(1\): encoder\.norm\.bias\n(.*\n)*"
                                                   r"Check that the checkpoint was made for this config "
                                                   r"\(or pass the matching config\)\.$"):  # no logit_bias hint
        ckpt.load_any_checkpoint(tp.create_model(tiny_config, seed=9), source)


def test_a_refused_pickle_says_what_is_accepted_and_how_to_convert(tmp_path):
    torch.save({"payload": NotATensor()}, tmp_path / "evil.pt")
    with pytest.raises(ckpt.CheckpointError) as err:
        ckpt.safe_load(tmp_path / "evil.pt")
    message = str(err.value)
    assert "). Only tensors, dicts and plain values are accepted (torch.load(weights_only=True)); re-save" in message
    assert message.endswith("re-save the state dict alone, or convert it to safetensors, in an environment you trust")


def test_a_container_without_a_state_dict_lists_its_top_level_keys(tmp_path):
    keys = [f"k{i:02d}" for i in range(25)]
    with pytest.raises(ckpt.CheckpointError, match=r"no state dict found; top-level keys are \['k00', .*'k19'\]$"):
        ckpt.unwrap_state_dict({k: 1 for k in keys})
    with pytest.raises(ckpt.CheckpointError, match="expected a state dict, found list"):
        ckpt.unwrap_state_dict({"state_dict": [1, 2]})


def test_a_directory_without_config_or_weights_says_which_file_is_missing(tmp_path):
    with pytest.raises(FileNotFoundError, match=f"{tmp_path} is not a TokLIP directory: config.json is missing"):
        ckpt.read_pretrained_config(tmp_path)
    with pytest.raises(FileNotFoundError, match=f"{tmp_path} has config.json but no model.safetensors"):
        ckpt.load_pretrained_dir(None, tmp_path)


def test_save_pretrained_creates_missing_parents_and_tags_the_weights(tmp_path, tiny_model):
    from safetensors import safe_open

    tiny_model.save_pretrained(tmp_path / "a" / "b" / "run")
    with safe_open(str(tmp_path / "a" / "b" / "run" / "model.safetensors"), "pt") as f:
        assert f.metadata() == {"format": "pt", "toklip_config": "toklip-tiny"}  # "pt": what HF loaders check


def test_a_plain_or_in_memory_vq_state_dict_loads_and_a_list_is_refused(tiny_config):
    from toklip_plugin.models.vq import VQModel

    source, target = VQModel(tiny_config.vq), VQModel(tiny_config.vq)
    ckpt.load_vq_checkpoint(target, source.state_dict())  # a dict, not a file: no safe_load
    assert torch.equal(target.quant_conv.weight, source.quant_conv.weight)
    assert ckpt.vq_state_dict(source.state_dict()).keys() == source.state_dict().keys()
    with pytest.raises(ckpt.CheckpointError, match="expected a state dict, found list"):
        ckpt.vq_state_dict([source.state_dict()])


def test_a_vq_checkpoint_that_does_not_fit_names_the_vq_config(tiny_config):
    from toklip_plugin.models.vq import VQModel

    vq = VQModel(tiny_config.vq)
    state = {k: v for k, v in vq.state_dict().items() if k != "quant_conv.bias"}
    c = tiny_config.vq
    with pytest.raises(ckpt.CheckpointError, match=rf"does not fit the LlamaGen VQ model \(codebook "
                                                   rf"{c.codebook_size}x{c.codebook_embed_dim}, ch_mult"):
        ckpt.load_vq_checkpoint(vq, state)


def test_weights_in_the_hugging_face_cache_are_found_offline(tmp_path, monkeypatch, tiny_model):
    """A real huggingface_hub cache layout (refs/main -> snapshots/<commit>/file), read in offline mode."""
    monkeypatch.setenv("TOKLIP_HOME", str(tmp_path / "home"))
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "hf"))
    repo = tmp_path / "hf" / "models--nobody--none"
    commit = "0" * 40
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text(commit)
    (repo / "snapshots" / commit).mkdir(parents=True)
    torch.save(released_layout(tiny_model), repo / "snapshots" / commit / "TokLIP_tiny.pt")
    found = ckpt.resolve_weight_file({"repo_id": "nobody/none", "filename": "TokLIP_tiny.pt"})
    assert found == repo / "snapshots" / commit / "TokLIP_tiny.pt"


# files told apart by their first bytes, not their suffix ---------------------------------
def test_a_safetensors_file_named_bin_loads_as_safetensors(tmp_path, tiny_model):
    from safetensors.torch import save_file

    path = tmp_path / "model.bin"
    save_file({k: v.contiguous() for k, v in tiny_model.state_dict().items()}, str(path))
    loaded = tp.load_toklip("toklip-tiny", checkpoint=path)  # was refused as a pickle needing code
    assert torch.equal(loaded.encoder.pos_embed, tiny_model.encoder.pos_embed)


def test_a_torch_file_named_safetensors_loads_as_a_torch_file(tmp_path, tiny_model):
    path = tmp_path / "model.safetensors"
    torch.save(released_layout(tiny_model), path)
    loaded = tp.load_toklip("toklip-tiny", checkpoint=path)  # was a SafetensorError "header too large"
    assert torch.equal(loaded.encoder.pos_embed, tiny_model.encoder.pos_embed)


@pytest.mark.parametrize("content", [b"", b"<html>404</html>"])
def test_a_file_of_neither_format_is_named_without_calling_it_a_pickle(tmp_path, content):
    path = tmp_path / "model.pt"
    path.write_bytes(content)
    with pytest.raises(ckpt.CheckpointError, match=rf"{path} is neither a safetensors file nor a torch.save file "
                                                   rf"\(it is {len(content)} bytes long") as err:
        ckpt.safe_load(path)
    assert "arbitrary code" not in str(err.value)


# pinned downloads ------------------------------------------------------------------------
def _hub_cache(root, repo_id: str, snapshots: dict[str, bytes], main: str, filename: str = "weights.pt"):
    """A real huggingface_hub cache (refs/main -> snapshots/<commit>/file) holding one file per commit."""
    repo = root / ("models--" + repo_id.replace("/", "--"))
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text(main)
    for commit, content in snapshots.items():
        (repo / "snapshots" / commit).mkdir(parents=True)
        (repo / "snapshots" / commit / filename).write_bytes(content)
    return repo


@pytest.fixture
def offline_hub(tmp_path, monkeypatch):
    monkeypatch.setenv("TOKLIP_HOME", str(tmp_path / "home"))
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "hf"))
    return tmp_path / "hf"


def test_the_pinned_revision_is_the_one_downloaded_not_main(offline_hub):
    pinned, later = "1" * 40, "2" * 40
    repo = _hub_cache(offline_hub, "nobody/none", {pinned: b"pinned", later: b"changed upstream"}, main=later)
    found = ckpt.resolve_weight_file({"repo_id": "nobody/none", "filename": "weights.pt", "revision": pinned})
    assert found == repo / "snapshots" / pinned / "weights.pt" and found.read_bytes() == b"pinned"


def test_a_download_matching_its_pinned_sha256_is_accepted(offline_hub):
    import hashlib

    commit = "1" * 40
    _hub_cache(offline_hub, "nobody/none", {commit: b"the released bytes"}, main=commit)
    digest = hashlib.sha256(b"the released bytes").hexdigest()
    found = ckpt.resolve_weight_file({"repo_id": "nobody/none", "filename": "weights.pt", "revision": commit,
                                      "sha256": digest.upper()})  # digests compare case-insensitively
    assert found.read_bytes() == b"the released bytes"


@pytest.mark.parametrize("where", ["hub cache", "toklip home"])
def test_a_file_whose_sha256_differs_from_the_pinned_one_is_refused_naming_both(offline_hub, where):
    import hashlib

    commit, expected = "1" * 40, hashlib.sha256(b"the released bytes").hexdigest()
    if where == "hub cache":
        _hub_cache(offline_hub, "nobody/none", {commit: b"tampered bytes"}, main=commit)
    else:
        home = offline_hub.parent / "home"
        home.mkdir()
        (home / "weights.pt").write_bytes(b"tampered bytes")
    found = hashlib.sha256(b"tampered bytes").hexdigest()
    spec = {"repo_id": "nobody/none", "filename": "weights.pt", "revision": commit, "sha256": expected}
    with pytest.raises(ckpt.CheckpointError) as err:
        ckpt.resolve_weight_file(spec)
    message = str(err.value)
    assert "weights.pt" in message and f"has SHA-256 {found}" in message and f"pins {expected}" in message
    assert "download it again at the pinned revision" in message


def test_a_failed_download_names_the_revision_in_the_command_to_run(offline_hub):
    spec = {"repo_id": "nobody/none", "filename": "weights.pt", "revision": "3" * 40}
    with pytest.raises(FileNotFoundError, match=r"huggingface-cli download nobody/none weights.pt --revision 3{40}"):
        ckpt.resolve_weight_file(spec)


@pytest.mark.parametrize("name", tp.list_models())
def test_every_shipped_weight_entry_and_hub_tokenizer_names_a_revision(name):
    """A revision is a 40-hex commit, or "main" with a note saying it still has to be pinned; a sha256 is
    64 hex digits."""
    config = tp.resolve_config(name)
    entries = list(config.weights.values())
    if config.tokenizer.get("kind") == "hf":
        entries.append(config.tokenizer)
    for entry in entries:
        revision = entry["revision"]
        assert len(revision) == 40 and int(revision, 16) >= 0 or revision == "main" and "TODO pin" in entry["note"]
        assert "sha256" not in entry or len(entry["sha256"]) == 64 and int(entry["sha256"], 16) >= 0
