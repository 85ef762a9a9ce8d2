"""A built-in model name means the built-in config wherever the command runs; a path is written as one."""
from __future__ import annotations

import dataclasses

import pytest
import torch

import toklip_plugin as tp
from toklip_plugin.config import get_model_config


@pytest.fixture
def folder_named_like_a_builtin(tmp_path, monkeypatch, tiny_config):
    monkeypatch.chdir(tmp_path)
    saved = tp.create_model(tiny_config.replace(encoder=dataclasses.replace(tiny_config.encoder, causal=False)),
                            seed=5)
    saved.save_pretrained(tmp_path / "toklip-tiny")
    return saved


def test_a_folder_named_toklip_tiny_in_the_working_directory_does_not_hide_the_builtin(folder_named_like_a_builtin):
    with pytest.warns(UserWarning, match=r"the 'toklip-tiny' in the working directory is not read \(write "
                                         r"./toklip-tiny to load it\)"):
        config = tp.resolve_config("toklip-tiny")
    assert config == get_model_config("toklip-tiny") and config.encoder.causal is True


@pytest.mark.parametrize("spelling", ["./toklip-tiny", "{cwd}/toklip-tiny"])
def test_the_folder_is_loaded_when_written_as_a_path(folder_named_like_a_builtin, tmp_path, spelling):
    model = tp.load_toklip(spelling.format(cwd=tmp_path))
    assert model.config == folder_named_like_a_builtin.config and model.config.encoder.causal is False
    assert torch.equal(model.encoder.pos_embed, folder_named_like_a_builtin.encoder.pos_embed)
