"""save_pretrained swaps a whole staged directory in: a crash at any point leaves the old or the new model,
never new weights under an old config, and the next save cleans up after it."""
from __future__ import annotations

import dataclasses
import hashlib
import os
import shutil
import stat

import pytest
import torch
from safetensors.torch import load_file

import toklip_plugin as tp
from toklip_plugin import checkpoints as ckpt


def _files(directory):
    """What ``directory`` holds: each file's bytes, ``model.safetensors`` as its tensors (the order of the
    safetensors metadata is not stable from one save to the next)."""
    out = {}
    for path in sorted(directory.iterdir()):
        if path.name == "model.safetensors":
            out[path.name] = {k: hashlib.sha256(v.numpy().tobytes()).hexdigest() for k, v in load_file(str(path)).items()}
        elif path.is_file():
            out[path.name] = path.read_bytes()
    return out


@pytest.fixture
def old_and_new(tiny_config, tmp_path):
    """Two models whose weights have the same shapes but whose configs differ (causal or not): new weights
    under the old config would load without a complaint, which is the failure to rule out."""
    old = tp.create_model(tiny_config, seed=0)
    new = tp.create_model(tiny_config.replace(encoder=dataclasses.replace(tiny_config.encoder, causal=False)), seed=1)
    references = {}
    for name, model in (("old", old), ("new", new)):
        model.save_pretrained(tmp_path / "reference" / name)
        references[name] = _files(tmp_path / "reference" / name)
    return old, new, references


def _crash_on_call(monkeypatch, owner, name: str, n: int, after: bool) -> None:
    """Make the n-th call of ``owner.name`` raise KeyboardInterrupt, before or after doing its work."""
    real, calls = getattr(owner, name), []

    def wrapper(*args, **kwargs):
        calls.append(args)
        if len(calls) == n and not after:
            raise KeyboardInterrupt(f"power cut before {name} #{n}")
        result = real(*args, **kwargs)
        if len(calls) == n and after:
            raise KeyboardInterrupt(f"power cut after {name} #{n}")
        return result

    monkeypatch.setattr(owner, name, wrapper)


# (swap, where the crash hits, which model the directory then holds)
CRASHES = [
    ("exchange", (ckpt, "_exchange", 1, False), "old"),
    ("exchange", (ckpt, "_exchange", 1, True), "new"),
    ("exchange", (shutil, "rmtree", 1, False), "new"),  # the old model stays behind in the staging directory
    ("two renames", (os, "rename", 1, False), "old"),  # directory -> .previous fails
    ("two renames", (os, "rename", 2, False), "old"),  # staged -> directory fails: the first rename is undone
    ("two renames", (shutil, "rmtree", 1, False), "new"),  # .previous is left behind
]


@pytest.mark.parametrize("swap, crash, holds", CRASHES, ids=[f"{s}-{c[1]}{c[2]}-{'after' if c[3] else 'before'}"
                                                             for s, c, _ in CRASHES])
def test_an_interrupted_save_leaves_the_whole_old_or_the_whole_new_model(
        tmp_path, monkeypatch, old_and_new, swap, crash, holds):
    old, new, references = old_and_new
    target = tmp_path / "run"
    old.save_pretrained(target)
    if swap == "two renames":  # a system without renameat2 (other kernels, some network file systems)
        monkeypatch.setattr(ckpt, "_exchange", lambda a, b: False)
    with monkeypatch.context() as patch:
        _crash_on_call(patch, *crash)
        with pytest.raises(KeyboardInterrupt):
            new.save_pretrained(target)
    assert _files(target) == references[holds]
    loaded, expected = tp.load_toklip(target), {"old": old, "new": new}[holds]
    assert loaded.config == expected.config
    assert all(torch.equal(v, expected.state_dict()[k]) for k, v in loaded.state_dict().items())
    new.save_pretrained(target)  # the next save puts things right and removes what the crash left
    assert _files(target) == references["new"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["reference", "run"]


def test_a_kill_between_the_two_renames_keeps_the_old_model_whole_and_the_next_save_recovers(
        tmp_path, monkeypatch, old_and_new):
    """Without an atomic exchange, a kill (no Python exception handler runs) between moving the old directory
    aside and renaming the staged one in leaves no directory, but the old model whole beside it."""
    old, new, references = old_and_new
    target = tmp_path / "run"
    old.save_pretrained(target)
    monkeypatch.setattr(ckpt, "_exchange", lambda a, b: False)
    with monkeypatch.context() as patch:
        _crash_on_call(patch, os, "rename", 1, after=True)
        with pytest.raises(KeyboardInterrupt):
            new.save_pretrained(target)
    assert not target.exists() and _files(tmp_path / ".run.previous") == references["old"]
    new.save_pretrained(target)
    assert _files(target) == references["new"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["reference", "run"]


def test_a_staging_directory_left_by_an_earlier_crash_is_removed(tmp_path, old_and_new):
    old, new, references = old_and_new
    stale = tmp_path / ".run.staging-abc123"
    stale.mkdir()
    (stale / "model.safetensors").write_bytes(b"half written")
    new.save_pretrained(tmp_path / "run")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["reference", "run"]
    assert _files(tmp_path / "run") == references["new"]


@pytest.mark.parametrize("umask, directory_mode, file_mode", [(0o027, 0o750, 0o640), (0o022, 0o755, 0o644)])
def test_the_saved_directory_and_files_honour_the_umask(tmp_path, tiny_model, umask, directory_mode, file_mode):
    previous = os.umask(umask)
    try:
        tiny_model.save_pretrained(tmp_path / "run")
    finally:
        os.umask(previous)
    assert stat.S_IMODE((tmp_path / "run").stat().st_mode) == directory_mode  # not mkdtemp's 0700
    for name in ("config.json", "model.safetensors"):
        assert stat.S_IMODE((tmp_path / "run" / name).stat().st_mode) == file_mode


def test_other_files_in_the_directory_survive_a_save(tmp_path, old_and_new):
    old, new, references = old_and_new
    old.save_pretrained(tmp_path / "run")
    (tmp_path / "run" / "README.md").write_text("model card")
    (tmp_path / "run" / "extra").mkdir()
    (tmp_path / "run" / "extra" / "notes.txt").write_text("notes")
    new.save_pretrained(tmp_path / "run")
    assert (tmp_path / "run" / "README.md").read_text() == "model card"
    assert (tmp_path / "run" / "extra" / "notes.txt").read_text() == "notes"
    assert {k: v for k, v in _files(tmp_path / "run").items() if k in references["new"]} == references["new"]


def test_saving_over_a_file_is_refused_naming_it(tmp_path, tiny_model):
    (tmp_path / "run").write_text("not a directory")
    with pytest.raises(FileExistsError, match=f"{tmp_path / 'run'} exists and is not a directory"):
        tiny_model.save_pretrained(tmp_path / "run")
