"""``toklip_plugin.threads.torch_threads``: the demos' ``--threads`` and the sampling benchmarks' one thread."""
from __future__ import annotations

import pytest
import torch

from toklip_plugin.threads import torch_threads


@pytest.fixture
def two_threads():
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    yield
    torch.set_num_threads(before)


def test_the_block_runs_with_the_count_and_the_callers_setting_comes_back(two_threads):
    with torch_threads(1):
        assert torch.get_num_threads() == 1
    assert torch.get_num_threads() == 2


def test_none_leaves_torchs_setting_alone(two_threads):
    with torch_threads(None):
        assert torch.get_num_threads() == 2
    assert torch.get_num_threads() == 2


def test_the_setting_comes_back_when_the_block_raises(two_threads):
    with pytest.raises(KeyError), torch_threads(1):
        raise KeyError("inside")
    assert torch.get_num_threads() == 2


@pytest.mark.parametrize("count", [0, -1])
def test_a_count_below_one_is_refused_before_anything_changes(two_threads, count):
    with pytest.raises(ValueError, match=f"at least 1, got {count}"), torch_threads(count):
        pass
    assert torch.get_num_threads() == 2
