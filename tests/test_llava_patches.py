"""``toklip-patch llava`` on a copy of the installed llava-torch: apply, re-apply, drift, revert.

The original bytes are checked against the sha256 sums in llava-torch's own wheel RECORD, so
"revert restores the original" is measured against the package as published, not against a
copy we made ourselves.
"""
from __future__ import annotations

import base64
import hashlib
import shutil
from importlib import metadata
from pathlib import Path

import pytest

from toklip_plugin.patching import PatchError, apply_patches, find_target, main, patch_files, revert_patches


def published_hashes() -> dict[str, str]:
    """``{relative path: urlsafe-b64 sha256}`` of llava's .py files, from the wheel's RECORD."""
    record = metadata.distribution("llava-torch").read_text("RECORD")
    rows = (line.split(",") for line in record.splitlines())
    return {path: digest.split("=", 1)[1] for path, digest, *_ in rows if path.endswith(".py") and digest}


def file_hash(path: Path) -> str:
    return base64.urlsafe_b64encode(hashlib.sha256(path.read_bytes()).digest()).rstrip(b"=").decode()


def tree_hashes(root: Path) -> dict[str, str]:
    return {p.relative_to(root).as_posix(): file_hash(p) for p in sorted((root / "llava").rglob("*.py"))}


@pytest.fixture
def pristine_llava(tmp_path) -> Path:
    """A copy of the installed llava package with our patches taken out (if the venv has them)."""
    shutil.copytree(find_target("llava", None) / "llava", tmp_path / "llava",
                    ignore=shutil.ignore_patterns("__pycache__"))
    revert_patches("llava", tmp_path)
    return tmp_path


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
