"""Fixtures shared by the integration tests."""
from __future__ import annotations

from pathlib import Path

import pytest

from helpers.llava_copies import pristine_copy
from helpers.llava_fixtures import build_tiny_llm, require_patched_llava


@pytest.fixture
def pristine_llava(tmp_path) -> Path:
    """A copy of the installed llava package with our patches taken out: a target the patch tests may break."""
    return pristine_copy(tmp_path)


# a tiny Qwen2 checkpoint and its tokenizer, one per test module (LLaVA Qwen2, unified model)
@pytest.fixture(scope="module")
def qwen2_dir(tmp_path_factory):
    require_patched_llava()
    return build_tiny_llm("qwen2", tmp_path_factory.mktemp("llm") / "tiny-qwen2")


@pytest.fixture(scope="module")
def tokenizer(qwen2_dir):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(qwen2_dir, use_fast=False)  # as LLaVA's train.py loads it
