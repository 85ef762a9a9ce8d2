"""Every file the official trainer writes loads: the plain state dict with or without ``logit_bias``, its epoch
checkpoint (nested, ``module.``, optimizer with numpy learning rates, scaler), fp16 / bf16 weights; and a model
trained with InfoNCE exports and reloads without a bias and scores with a softmax."""
from __future__ import annotations

import zipfile

import numpy as np
import pytest
import torch

import toklip_plugin as tp
from toklip_plugin.checkpoints import CheckpointError, native_to_released


@pytest.fixture
def infonce_config(tiny_config):
    return tiny_config.replace(init_logit_bias=None)


@pytest.fixture
def infonce_model(infonce_config):
    return tp.create_model(infonce_config, seed=0).eval()


def _released(model: torch.nn.Module, dtype: torch.dtype = torch.float32) -> dict[str, torch.Tensor]:
    return {k: v.to(dtype) for k, v in native_to_released(model.state_dict()).items()}


def _epoch_checkpoint(state_dict: dict[str, torch.Tensor]) -> dict:
    """What open_clip_train's main.py saves after an epoch: the DDP-wrapped state dict, the AdamW state whose
    learning rate its numpy cosine schedule set (a numpy.float64), the GradScaler state."""
    param = torch.nn.Parameter(torch.ones(3))
    optimizer = torch.optim.AdamW([param], lr=1e-5, betas=(0.9, 0.95))
    param.sum().backward()
    optimizer.step()
    optimizer.param_groups[0]["lr"] = 0.5 * (1 + np.cos(np.pi * 0.25)) * 1e-5
    return {"epoch": 32, "name": "cc12m-toklip-256", "state_dict": {"module." + k: v for k, v in state_dict.items()},
            "optimizer": optimizer.state_dict(), "scaler": torch.amp.GradScaler("cpu").state_dict()}


@pytest.mark.slow
def test_official_epoch_checkpoint_and_its_fp16_copy_load_and_encode_as_the_plain_file(
        tmp_path, infonce_model, infonce_config, images):
    plain, epoch, half = tmp_path / "plain.pt", tmp_path / "epoch_32.pt", tmp_path / "epoch_32_fp16.pt"
    torch.save(_released(infonce_model), plain)
    torch.save(_epoch_checkpoint(_released(infonce_model)), epoch)
    torch.save(_epoch_checkpoint(_released(infonce_model, torch.float16)), half)
    assert "logit_bias" not in _released(infonce_model)
    with torch.no_grad():
        expected = tp.load_toklip(infonce_config, checkpoint=plain).encode_image(images)
        from_epoch = tp.load_toklip(infonce_config, checkpoint=epoch).encode_image(images)
        from_half = tp.load_toklip(infonce_config, checkpoint=half).encode_image(images)
    torch.testing.assert_close(expected, infonce_model.encode_image(images), rtol=0, atol=0)
    torch.testing.assert_close(from_epoch, expected, rtol=0, atol=0)
    assert not torch.equal(from_half, expected)  # the weights really were rounded ...
    torch.testing.assert_close(from_half, expected, rtol=2e-2, atol=2e-2)  # ... by fp16 only


def test_half_precision_weights_load_into_the_requested_dtype(tmp_path, infonce_model, infonce_config):
    path = tmp_path / "bf16.pt"
    torch.save(_released(infonce_model, torch.bfloat16), path)
    for dtype in (torch.float32, torch.bfloat16):
        loaded = tp.load_toklip(infonce_config, checkpoint=path, dtype=dtype)
        weight = loaded.encoder.blocks[0].attn.qkv.weight
        assert weight.dtype == dtype
        torch.testing.assert_close(weight, infonce_model.encoder.blocks[0].attn.qkv.weight.to(torch.bfloat16).to(dtype),
                                   rtol=0, atol=0)


def test_numpy_scalars_written_by_numpy_1_or_2_load_safely(tmp_path, infonce_model, infonce_config):
    """The released epoch checkpoints were pickled with numpy 1 (``numpy.core.multiarray.scalar``)."""
    new = tmp_path / "numpy2.pt"
    torch.save(_epoch_checkpoint(_released(infonce_model)), new)
    old = tmp_path / "numpy1.pt"
    with zipfile.ZipFile(new) as source, zipfile.ZipFile(old, "w") as target:
        for item in source.infolist():
            data = source.read(item.filename)
            if item.filename.endswith("data.pkl"):
                assert b"numpy._core.multiarray" in data
                data = data.replace(b"numpy._core.multiarray", b"numpy.core.multiarray")
            target.writestr(item, data)
    for path in (new, old):
        tp.load_toklip(infonce_config, checkpoint=path)


def test_a_checkpoint_with_a_logit_bias_loads_only_into_a_model_with_one(tmp_path, tiny_model, infonce_config):
    path = tmp_path / "sigmoid.pt"
    torch.save(_released(tiny_model), path)
    tp.load_toklip(tiny_model.config, checkpoint=path)
    with pytest.raises(CheckpointError, match=r"(?s)unexpected keys \(1\): logit_bias.*init_logit_bias"):
        tp.load_toklip(infonce_config, checkpoint=path)


def test_anything_else_still_fails_naming_the_keys(tmp_path, infonce_model, infonce_config):
    state = _released(infonce_model)
    state["visual.trunk.extra.weight"] = torch.zeros(1)
    del state["visual.trunk.norm.bias"]
    path = tmp_path / "odd.pt"
    torch.save(_epoch_checkpoint(state), path)
    with pytest.raises(CheckpointError, match=r"(?s)missing keys \(1\): encoder.norm.bias.*unexpected keys \(1\): "
                                              r"encoder.extra.weight"):
        tp.load_toklip(infonce_config, checkpoint=path)


def _export_and_reload(model: tp.TokLIP, directory) -> tuple[tp.TokLIP, tp.TokLIP]:
    """Our directory format and the released layout, each reloaded."""
    model.save_pretrained(directory / "toklip")
    torch.save({"state_dict": _released(model)}, directory / "released.pt")
    return tp.load_toklip(directory / "toklip"), tp.load_toklip(model.config, checkpoint=directory / "released.pt")


def test_an_infonce_model_exports_without_a_bias_and_scores_with_a_softmax_over_scaled_cosines(
        tmp_path, infonce_model, images):
    with torch.no_grad():
        infonce_model.logit_scale.fill_(3.0)
    tokenizer = tp.get_tokenizer(infonce_model.config)
    text = tokenizer(["a red square", "a blue circle", "a green triangle"])
    for loaded in _export_and_reload(infonce_model, tmp_path):
        assert loaded.logit_bias is None
        with torch.no_grad():
            img, txt = loaded.encode_image(images, normalize=True), loaded.encode_text(text, normalize=True)
            probs = loaded.text_probs(img, txt)
        expected = torch.softmax(torch.exp(torch.tensor(3.0)) * img @ txt.t(), dim=-1)
        torch.testing.assert_close(probs, expected)
        torch.testing.assert_close(probs.sum(-1), torch.ones(len(images)))


def test_a_sigmoid_model_keeps_its_bias_through_the_round_trip_and_scores_each_pair(tmp_path, tiny_model, images):
    with torch.no_grad():
        tiny_model.logit_scale.fill_(2.0)
        tiny_model.logit_bias.fill_(-3.5)
    text = tp.get_tokenizer(tiny_model.config)(["a red square", "a blue circle"])
    for loaded in _export_and_reload(tiny_model, tmp_path):
        assert loaded.logit_bias.item() == -3.5
        with torch.no_grad():
            img, txt = loaded.encode_image(images, normalize=True), loaded.encode_text(text, normalize=True)
            probs = loaded.text_probs(img, txt)
        torch.testing.assert_close(probs, torch.sigmoid(torch.exp(torch.tensor(2.0)) * img @ txt.t() - 3.5))
