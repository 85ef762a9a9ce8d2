"""Shared fixtures (tiny random TokLIP models and images, no downloads) and the folder markers.

The installed LLaVA is patched once, by setup (``make setup-all`` runs ``toklip-patch llava``); tests that
need it check it with ``helpers.llava_fixtures.require_patched_llava``.
"""
from __future__ import annotations

import pytest
import torch

import toklip_plugin as tp

FOLDER_MARKERS = ("unit", "integration", "e2e")


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


def pytest_collection_modifyitems(config, items):
    """The folder is the kind of test: ``unit``, ``integration`` or ``e2e`` (``-m unit`` runs the fast core)."""
    for item in items:
        kind = next((part for part in item.path.parts[::-1] if part in FOLDER_MARKERS), None)
        if kind:
            item.add_marker(getattr(pytest.mark, kind))
