"""A Hugging Face cache written by hand, laid out as ``huggingface_hub`` lays it out (no network).

``<cache>/models--ORG--NAME/blobs/<sha256>`` holds each file's bytes once; ``snapshots/<commit>/<path>`` is a
relative symlink to its blob; ``refs/<branch or tag>`` holds the commit a ref points at. Tests check what this
writes with ``huggingface_hub.scan_cache_dir``, the library's own reader of that layout.
"""
from __future__ import annotations

import hashlib
import os
from pathlib import Path
from typing import Mapping


def fake_commit(label: str) -> str:
    """A 40-hex commit id derived from ``label`` (stable, distinct per label)."""
    return hashlib.sha1(label.encode()).hexdigest()


def write_snapshot(cache: Path, repo_id: str, commit: str, folder: Path, refs: tuple[str, ...] = ("main",)) -> Path:
    """Put every file under ``folder`` into ``cache`` as snapshot ``commit`` of ``repo_id``; point ``refs`` at it.
    Returns the snapshot folder."""
    repo = cache / ("models--" + repo_id.replace("/", "--"))
    snapshot = repo / "snapshots" / commit
    for path in sorted(p for p in folder.rglob("*") if p.is_file()):
        data = path.read_bytes()
        blob = repo / "blobs" / hashlib.sha256(data).hexdigest()
        blob.parent.mkdir(parents=True, exist_ok=True)
        blob.write_bytes(data)
        link = snapshot / path.relative_to(folder)
        link.parent.mkdir(parents=True, exist_ok=True)
        link.symlink_to(os.path.relpath(blob, link.parent))
    point_refs(cache, repo_id, {ref: commit for ref in refs})
    return snapshot


def point_refs(cache: Path, repo_id: str, refs: Mapping[str, str]) -> None:
    """Write ``refs/<name>`` = commit for each item (a tag or branch of the cached repo)."""
    repo = cache / ("models--" + repo_id.replace("/", "--"))
    for name, commit in refs.items():
        (repo / "refs" / name).parent.mkdir(parents=True, exist_ok=True)
        (repo / "refs" / name).write_text(commit)


def use_offline_cache(monkeypatch, root: Path) -> Path:
    """Offline mode with the Hugging Face cache under ``root`` (``HF_HOME``); returns the hub cache folder.

    Sets the environment variables a user sets, and the ``huggingface_hub.constants`` they are read into when
    huggingface_hub is imported (already done by the time a test runs)."""
    from huggingface_hub import constants

    cache = root / "hub"
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(root))
    monkeypatch.setenv("HF_HUB_CACHE", str(cache))
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(cache))
    return cache
