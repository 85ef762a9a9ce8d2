"""Shared fixtures: tiny random TokLIP models and images (no downloads)."""
from __future__ import annotations

import importlib.util

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


def pytest_configure(config):
    """Patch the installed LLaVA before any test module imports it (``toklip-patch llava``, idempotent).

    A module imported before the patch keeps LLaVA's unpatched functions for the whole session,
    so this cannot wait for a fixture.
    """
    if importlib.util.find_spec("llava") is not None:
        from llava_fixtures import patch_installed_llava

        patch_installed_llava()
