"""``load_toklip`` never hands out random weights silently: it warns unless ``random_weights=True`` says so."""
from __future__ import annotations

import warnings

import pytest
import torch

import toklip_plugin as tp
from toklip_plugin import checkpoints as ckpt


@pytest.fixture
def no_random_weights_warning():
    with warnings.catch_warnings():
        warnings.simplefilter("error", tp.RandomWeightsWarning)
        yield


def test_a_builtin_name_without_weights_warns_that_they_are_random_and_how_to_load_real_ones():
    with pytest.warns(tp.RandomWeightsWarning) as record:
        tp.load_toklip("toklip-tiny")
    (warning,) = [w for w in record if w.category is tp.RandomWeightsWarning]
    message = str(warning.message)
    assert "'toklip-tiny' has random weights" in message and "VQ tokenizer, code mapping" in message
    assert "load_toklip('hf-hub:ORG/NAME')" in message and "random_weights=True" in message
    assert "checkpoint='released'" not in message  # toklip-tiny names no released file
    assert warning.filename == __file__  # points at the caller's line
    assert issubclass(tp.RandomWeightsWarning, UserWarning)


def test_a_config_with_released_weights_names_them_in_the_warning(tiny_config):
    config = tiny_config.replace(weights={"checkpoint": {"repo_id": "TencentARC/TokLIP", "filename": "x.pt"}})
    with pytest.warns(tp.RandomWeightsWarning, match=r"load_toklip\('toklip-tiny', checkpoint='released'\)"):
        tp.load_toklip(config)


def test_a_vq_checkpoint_alone_leaves_the_rest_random_and_the_warning_says_so(tmp_path, tiny_model):
    path = tmp_path / "vq.pt"
    torch.save({"model": tiny_model.vq.state_dict()}, path)
    with pytest.warns(tp.RandomWeightsWarning, match=rf"code mapping, token encoder and text tower are random \(the "
                                                     rf"VQ comes from {path}\)"):
        model = tp.load_toklip("toklip-tiny", vq_checkpoint=path)
    assert torch.equal(model.vq.quantize.embedding.weight, tiny_model.vq.quantize.embedding.weight)


def test_random_weights_true_is_silent(no_random_weights_warning):
    tp.load_toklip("toklip-tiny", random_weights=True)


def test_weights_from_a_saved_directory_or_a_checkpoint_do_not_warn(no_random_weights_warning, tmp_path, tiny_model):
    tiny_model.save_pretrained(tmp_path / "dir")
    assert torch.equal(tp.load_toklip(tmp_path / "dir").encoder.pos_embed, tiny_model.encoder.pos_embed)
    torch.save(ckpt.native_to_released(tiny_model.state_dict()), tmp_path / "released.pt")
    tp.load_toklip("toklip-tiny", checkpoint=tmp_path / "released.pt")
