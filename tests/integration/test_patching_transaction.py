"""``toklip-patch`` as a transaction, on a copy of the installed llava-torch: a file that cannot be written
rolls every patch back, concurrent runs wait for each other, and a file of ours left over by a reinstall
is named and removed by ``--revert``."""
from __future__ import annotations

import os
import shutil
import subprocess
import threading
from contextlib import contextmanager
from pathlib import Path

import pytest

from helpers.llava_copies import published_hashes, tree_hashes
from toklip_plugin.patching import apply_patches, main, patch_files, patch_status

ALL_PATCHES = [p.name for p in patch_files("llava")]


def all_files(root: Path) -> dict[str, bytes]:
    """Every file of the llava package under ``root`` (patched or not, ours or temporary), with its bytes."""
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted((root / "llava").rglob("*")) if p.is_file()}


@contextmanager
def unwritable_folder(folder: Path):
    """``folder`` with no file created, replaced or removed in it: chmod stops a user; root, whom chmod does
    not stop, gets the immutable attribute (``chattr +i``)."""
    if os.geteuid() == 0:
        if not shutil.which("chattr") or subprocess.run(["chattr", "+i", str(folder)], capture_output=True).returncode:
            pytest.skip("running as root without chattr / CAP_LINUX_IMMUTABLE: no way to make a folder unwritable")
        undo = ["chattr", "-i", str(folder)]
    else:
        folder.chmod(0o555)
        undo = ["chmod", "755", str(folder)]
    try:
        try:
            (folder / ".probe").touch()
        except OSError:
            pass
        else:
            (folder / ".probe").unlink()
            pytest.skip(f"{folder} stayed writable")
        yield
    finally:
        subprocess.run(undo, check=True)


def test_a_file_that_cannot_be_written_rolls_back_the_patches_before_it(pristine_llava, capsys):
    before = all_files(pristine_llava)
    # patches 01 and 02 write elsewhere first; 03 is the first to write in llava/train
    with unwritable_folder(pristine_llava / "llava" / "train"):
        assert main(["llava", "--target", str(pristine_llava)]) == 1
    err = capsys.readouterr().err
    assert f"could not write {pristine_llava / 'llava/train/llava_trainer.py'} (03-trainer-compat.patch)" in err
    assert f"Rolled back {ALL_PATCHES[0]}, {ALL_PATCHES[1]} (restored " in err and "removed llava/plugins.py" in err
    assert all_files(pristine_llava) == before  # no patch, no leftover, no temporary file
    assert apply_patches("llava", pristine_llava) == ALL_PATCHES  # and it works once the folder is writable


def test_concurrent_runs_all_succeed_and_apply_the_patches_once(pristine_llava, tmp_path, capsys):
    reference = tmp_path / "reference"
    shutil.copytree(pristine_llava / "llava", reference / "llava")
    apply_patches("llava", reference)
    runs = 4
    start = threading.Barrier(runs)
    codes: list[int] = []

    def run() -> None:
        start.wait()
        codes.append(main(["llava", "--target", str(pristine_llava)]))

    threads = [threading.Thread(target=run) for _ in range(runs)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=300)
    assert codes == [0] * runs
    out = capsys.readouterr().out.splitlines()
    assert sorted(out) == sorted([f"llava: applied 4 patch(es): {', '.join(ALL_PATCHES)}"]
                                 + ["llava: applied 0 patch(es) (nothing to do)"] * (runs - 1))
    assert all_files(pristine_llava) == all_files(reference)


@pytest.fixture
def reinstalled_llava(pristine_llava, tmp_path) -> tuple[Path, Path]:
    """``(target, original)``: a patched llava tree after what ``pip install --force-reinstall llava-torch``
    does to it (every file the wheel ships written back, files it does not ship left in place), and a copy
    of the unpatched tree."""
    original = tmp_path / "original"
    shutil.copytree(pristine_llava / "llava", original / "llava")
    apply_patches("llava", pristine_llava)
    shutil.copytree(original / "llava", pristine_llava / "llava", dirs_exist_ok=True)
    return pristine_llava, original


def test_a_file_of_ours_left_by_a_reinstall_is_named_and_revert_removes_it(reinstalled_llava, capsys):
    target, original = reinstalled_llava
    leftover = target / "llava" / "plugins.py"
    assert leftover.is_file()
    before = all_files(target)

    assert main(["llava", "--target", str(target)]) == 1
    err = capsys.readouterr().err
    assert "left over from an earlier toklip-patch: llava/plugins.py" in err and f"rm {leftover}" in err
    assert "drifted" not in err
    assert all_files(target) == before
    assert [s.state for s in patch_status("llava", target)] == ["leftover", "clean", "clean", "clean"]

    assert main(["llava", "--target", str(target), "--revert"]) == 0
    assert capsys.readouterr().out.strip() == f"llava: reverted 1 patch(es): {ALL_PATCHES[0]}"
    assert all_files(target) == all_files(original)
    assert tree_hashes(target) == published_hashes()
    assert apply_patches("llava", target) == ALL_PATCHES


def test_a_left_over_file_that_was_edited_is_not_deleted(reinstalled_llava, capsys):
    target, _ = reinstalled_llava
    edited = target / "llava" / "plugins.py"
    edited.write_text(edited.read_text() + "# a local change\n")
    before = all_files(target)
    assert main(["llava", "--target", str(target), "--revert"]) == 1
    assert "drifted" in capsys.readouterr().err
    assert all_files(target) == before
