"""Shared fixtures: tiny random TokLIP models and images (no downloads)."""
from __future__ import annotations

import pytest
import torch

import toklip_plugin as tp


@pytest.fixture(scope="session")
def tiny_config():
    return tp.resolve_config("toklip-tiny")


@pytest.fixture
def tiny_model(tiny_config):
    return tp.create_model(tiny_config, seed=0).eval()


@pytest.fixture
def images(tiny_config):
    g = torch.Generator().manual_seed(1)
    s = tiny_config.image_size
    return torch.rand(3, 3, s, s, generator=g) * 2 - 1
