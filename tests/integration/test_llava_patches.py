"""``toklip-patch llava`` on a copy of the installed llava-torch: apply, re-apply, drift, revert.

The original bytes are checked against the sha256 sums in llava-torch's own wheel RECORD, so
"revert restores the original" is measured against the package as published, not against a
copy we made ourselves.
"""
from __future__ import annotations

import pytest

from helpers.llava_copies import published_hashes, tree_hashes
from toklip_plugin.patching import PatchError, apply_patches, main, patch_files, revert_patches


def test_copy_without_patches_is_the_published_llava(pristine_llava):
    assert tree_hashes(pristine_llava) == published_hashes()


def test_patching_twice_is_a_no_op(pristine_llava):
    applied = apply_patches("llava", pristine_llava)
    assert applied == [p.name for p in patch_files("llava")]
    patched = tree_hashes(pristine_llava)
    assert patched != published_hashes()
    assert apply_patches("llava", pristine_llava) == []
    assert tree_hashes(pristine_llava) == patched


def test_revert_restores_the_published_bytes(pristine_llava):
    apply_patches("llava", pristine_llava)
    assert revert_patches("llava", pristine_llava) == [p.name for p in reversed(patch_files("llava"))]
    assert tree_hashes(pristine_llava) == published_hashes()


def test_locally_modified_file_is_refused_by_name_and_nothing_is_written(pristine_llava, capsys):
    builder = pristine_llava / "llava" / "model" / "multimodal_encoder" / "builder.py"
    builder.write_text(builder.read_text().replace("def build_vision_tower(", "def build_vision_tower_v2("))
    before = tree_hashes(pristine_llava)
    with pytest.raises(PatchError, match="llava/model/multimodal_encoder/builder.py"):
        apply_patches("llava", pristine_llava)
    assert main(["llava", "--target", str(pristine_llava)]) == 1
    assert "llava/model/multimodal_encoder/builder.py" in capsys.readouterr().err
    assert tree_hashes(pristine_llava) == before


def test_check_reports_each_patch_and_the_files_it_touches(pristine_llava, capsys):
    assert main(["llava", "--target", str(pristine_llava / "llava"), "--check"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == len(patch_files("llava")) and all(line.startswith("clean") for line in lines)
    assert any("llava/train/train.py" in line for line in lines)
