"""Fixtures shared by the integration tests."""
from __future__ import annotations

from pathlib import Path

import pytest

from helpers.llava_copies import pristine_copy


@pytest.fixture
def pristine_llava(tmp_path) -> Path:
    """A copy of the installed llava package with our patches taken out: a target the patch tests may break."""
    return pristine_copy(tmp_path)
