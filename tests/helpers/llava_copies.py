"""Copies of the installed llava package for patch tests, and the hashes of llava-torch as published."""
from __future__ import annotations

import base64
import hashlib
import shutil
from importlib import metadata
from pathlib import Path

from toklip_plugin.patching import find_target, revert_patches


def published_hashes() -> dict[str, str]:
    """``{relative path: urlsafe-b64 sha256}`` of llava's .py files, from the wheel's RECORD."""
    record = metadata.distribution("llava-torch").read_text("RECORD")
    rows = (line.split(",") for line in record.splitlines())
    return {path: digest.split("=", 1)[1] for path, digest, *_ in rows if path.endswith(".py") and digest}


def file_hash(path: Path) -> str:
    return base64.urlsafe_b64encode(hashlib.sha256(path.read_bytes()).digest()).rstrip(b"=").decode()


def tree_hashes(root: Path) -> dict[str, str]:
    return {p.relative_to(root).as_posix(): file_hash(p) for p in sorted((root / "llava").rglob("*.py"))}


def pristine_copy(tmp_path: Path) -> Path:
    """A copy of the installed llava package in ``tmp_path`` with our patches taken out (if the venv has them)."""
    shutil.copytree(find_target("llava", None) / "llava", tmp_path / "llava",
                    ignore=shutil.ignore_patterns("__pycache__"))
    revert_patches("llava", tmp_path)
    return tmp_path
