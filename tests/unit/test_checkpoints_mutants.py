"""checkpoints.py: gaps found by mutation testing in the part of the group run that finished after the third
round's report (file formats told apart by their first bytes, numpy scalars, pinned digests, save_pretrained's
staging and carried-over files). tests/MUTATION.md lists the mutants these kill."""
from __future__ import annotations

import os
import tempfile

import numpy as np
import pytest
import torch
from safetensors.torch import save_file

from toklip_plugin import checkpoints as ckpt

_NOT_A_CHECKPOINT = "is neither a safetensors file nor a torch.save file"


# safe_load: the format from the first bytes --------------------------------------------------------------------
def test_a_file_whose_first_bytes_read_as_a_small_length_but_lack_the_header_brace_is_refused(tmp_path):
    path = tmp_path / "weights.bin"
    path.write_bytes((5).to_bytes(8, "little") + b"hello world")  # 5 <= size - 8, but no "{" after the length
    with pytest.raises(ckpt.CheckpointError, match=_NOT_A_CHECKPOINT):
        ckpt.safe_load(path)


def test_a_safetensors_file_without_tensors_is_its_header_alone_and_loads_empty(tmp_path):
    path = tmp_path / "empty.safetensors"
    save_file({}, str(path))
    assert int.from_bytes(path.read_bytes()[:8], "little") == path.stat().st_size - 8  # nothing after the header
    assert ckpt.safe_load(path) == {}


def test_a_safetensors_file_cut_inside_its_header_is_refused_as_truncated(tmp_path):
    whole = tmp_path / "whole.safetensors"
    save_file({"w": torch.arange(6.0)}, str(whole))
    header_length = int.from_bytes(whole.read_bytes()[:8], "little")
    cut = tmp_path / "cut.safetensors"
    cut.write_bytes(whole.read_bytes()[:8 + header_length - 4])
    with pytest.raises(ckpt.CheckpointError, match=f"{_NOT_A_CHECKPOINT}.*it may be truncated"):
        ckpt.safe_load(cut)


def test_a_file_in_torchs_legacy_pickle_format_loads(tmp_path):
    path = tmp_path / "legacy.pt"
    torch.save({"w": torch.arange(3.0)}, path, _use_new_zipfile_serialization=False)
    assert path.read_bytes()[:1] == b"\x80"  # a pickle protocol byte, no zip
    assert torch.equal(ckpt.safe_load(path)["w"], torch.arange(3.0))


SCALAR_TYPES = [np.bool_, np.int8, np.int16, np.int32, np.int64, np.uint8, np.uint16, np.uint32, np.uint64,
                np.float16, np.float32, np.float64, np.longdouble, np.complex64, np.complex128, np.clongdouble]


@pytest.mark.parametrize("scalar_type", SCALAR_TYPES, ids=lambda t: t.__name__)
def test_a_numpy_scalar_of_any_numeric_type_loads(tmp_path, scalar_type):
    path = tmp_path / "state.pt"
    value = scalar_type(1)
    torch.save({"lr": value, "w": torch.zeros(1)}, path)
    loaded = ckpt.safe_load(path)["lr"]
    assert type(loaded) is scalar_type and loaded == value


# resolve_weight_file: the pinned digest ---------------------------------------------------------------------------
def test_a_pinned_digest_without_a_revision_names_the_file_at_main(tmp_path, monkeypatch):
    monkeypatch.setenv(ckpt.HOME_ENV, str(tmp_path))
    (tmp_path / "w.pt").write_bytes(b"other bytes")
    source = {"repo_id": "org/repo", "filename": "w.pt", "sha256": "0" * 64}
    with pytest.raises(ckpt.CheckpointError, match="org/repo/w.pt@main"):
        ckpt.resolve_weight_file(source)


# save_pretrained --------------------------------------------------------------------------------------------------
def test_save_pretrained_writes_no_model_card_unless_asked(tmp_path, tiny_model):
    ckpt.save_pretrained(tiny_model, tmp_path / "run")
    assert sorted(p.name for p in (tmp_path / "run").iterdir()) == ["config.json", "model.safetensors"]


def test_the_model_is_staged_beside_its_directory_not_in_the_temporary_folder(tmp_path, tiny_model, monkeypatch):
    """The exchange of two directories works within one file system only; the system's temporary folder may be on
    another one (here: one that does not exist)."""
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path / "no-such-tmp"))
    tiny_model.save_pretrained(tmp_path / "run")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["run"]


def test_a_stray_file_named_like_a_staging_directory_does_not_stop_a_save(tmp_path, tiny_model):
    (tmp_path / ".run.staging-notes").write_text("not a directory")
    tiny_model.save_pretrained(tmp_path / "run")
    assert (tmp_path / "run" / "model.safetensors").is_file()


def test_other_files_are_carried_over_as_hard_links_and_symlinks_stay_symlinks(tmp_path, tiny_model):
    run = tmp_path / "run"
    tiny_model.save_pretrained(run)
    extras = [f"notes-{i}.txt" for i in range(20)]  # many, so that some are listed after the model's own files
    for name in extras:
        (run / name).write_text(name)
    (run / "latest").symlink_to("notes-0.txt")
    (run / "extra" / "v1").mkdir(parents=True)
    (run / "extra" / "data.bin").write_bytes(b"data")
    (run / "extra" / "link").symlink_to("data.bin")
    (run / "extra" / "current").symlink_to("v1", target_is_directory=True)
    carried = [*extras, "extra/data.bin"]
    inodes = [(run / name).stat().st_ino for name in carried]
    tiny_model.save_pretrained(run)
    assert [(run / name).stat().st_ino for name in carried] == inodes  # the same files, not copies
    assert os.readlink(run / "latest") == "notes-0.txt"
    assert os.readlink(run / "extra" / "link") == "data.bin"
    assert os.readlink(run / "extra" / "current") == "v1"  # not a copy of the directory it points at
