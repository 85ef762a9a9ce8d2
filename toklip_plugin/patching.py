"""``toklip-patch llava|llamagen``: apply, check or revert our small upstream patches, all or none.

Each upstream has a folder ``patches/<upstream>/`` of ``NN-name.patch`` files (unified
diffs with ``a/`` ``b/`` prefixes, paths relative to the folder that holds the upstream's
top-level package: site-packages or the checkout root). Per patch:

- already applied (the reverse applies cleanly): skipped, so patching twice is a no-op;
- applies cleanly: applied;
- left over: a file the patch creates is there, byte for byte, and the rest of the patch is not
  (``pip install --force-reinstall`` restores the files a wheel ships and keeps the ones we
  added): refused, naming the file to delete; ``--revert`` deletes it;
- neither: upstream has drifted; nothing is written and the error names the file.

A run is a transaction. ``git apply`` writes the patched files into a scratch copy; they are
then moved into the target one at a time (each an atomic rename) and, if one cannot be
written, the ones already moved are put back, so the target ends with every patch or none.
An exclusive lock (``flock`` on the upstream's top-level folder) makes a second concurrent run
wait for the first and then find its work done.

``--revert`` undoes the applied patches in reverse order, restoring the original bytes.
"""
from __future__ import annotations

import argparse
import fcntl
import importlib.util
import os
import shutil
import subprocess
import sys
import tempfile
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Iterator

from .io import atomic_path
from .resources import data_dir

__all__ = ["UPSTREAMS", "PatchError", "PatchState", "patch_files", "find_target", "apply_patches", "revert_patches",
           "patch_status", "main"]

# upstream -> the top-level folder its patches' paths start with (used to find and check the target)
UPSTREAMS = {"llava": "llava", "llamagen": "autoregressive"}
# how to get an upstream's original files back, named in the messages that need it
RESTORE_HINTS = {"llava": "pip install --force-reinstall --no-deps llava-torch==1.2.2.post1",
                 "llamagen": "git checkout -- . in the LlamaGen checkout"}


class PatchError(RuntimeError):
    pass


@dataclass(frozen=True)
class PatchState:
    patch: Path
    files: tuple[str, ...]
    state: str  # "applied", "clean" (can be applied), "leftover" or "drifted"
    leftovers: tuple[str, ...] = ()  # state "leftover": the files of ours to delete


def patch_files(upstream: str) -> list[Path]:
    if upstream not in UPSTREAMS:
        raise PatchError(f"unknown upstream {upstream!r}; choose one of {sorted(UPSTREAMS)}")
    folder = Path(str(data_dir("patches") / upstream))
    return sorted(folder.glob("*.patch"))


def find_target(upstream: str, target: str | Path | None) -> Path:
    """The folder the patch paths are relative to. For LLaVA, default to the installed package."""
    top = UPSTREAMS[upstream]
    if target is None:
        if upstream != "llava":
            raise PatchError(f"{upstream} is not an installed package: pass --target <checkout root>")
        spec = importlib.util.find_spec("llava")
        if spec is None or not spec.submodule_search_locations:
            raise PatchError("no installed 'llava' package found: pip install --no-deps llava-torch==1.2.2.post1, "
                             "or pass --target <LLaVA checkout>")
        return Path(list(spec.submodule_search_locations)[0]).parent
    target = Path(target).resolve()
    if target.name == top and not (target / top).is_dir():
        target = target.parent  # the package folder itself was given
    if not (target / top).is_dir():
        raise PatchError(f"{target} does not look like a {upstream} tree: no '{top}/' folder in it")
    return target


# reading patches and running git -------------------------------------------------------------
def _git_apply(target: Path, patch: Path, *flags: str) -> subprocess.CompletedProcess:
    # --unidiff-zero is not used: every patch carries context, which is what detects drift.
    return subprocess.run(
        ["git", "apply", *flags, str(patch.resolve())], cwd=target, capture_output=True, text=True,
        env={**os.environ, "GIT_CEILING_DIRECTORIES": str(target.parent)},
    )


def _touched_files(patch: Path) -> tuple[str, ...]:
    lines = patch.read_text().splitlines()
    return tuple(line[len("+++ b/"):] for line in lines if line.startswith("+++ b/"))


def _created_files(patch: Path) -> tuple[str, ...]:
    lines = patch.read_text().splitlines()
    return tuple(new[len("+++ b/"):] for old, new in zip(lines, lines[1:])
                 if old == "--- /dev/null" and new.startswith("+++ b/"))


@contextmanager
def _scratch_copy(root: Path, files: Iterable[str]) -> Iterator[Path]:
    """A temporary folder holding copies of those of ``files`` that exist under ``root``."""
    with tempfile.TemporaryDirectory(prefix="toklip-patch-") as tmp:
        for rel in files:
            if (root / rel).is_file():
                (Path(tmp) / rel).parent.mkdir(parents=True, exist_ok=True)
                shutil.copy2(root / rel, Path(tmp) / rel)
        yield Path(tmp)


def _read(path: Path) -> bytes | None:
    return path.read_bytes() if path.is_file() else None


# states ------------------------------------------------------------------------------------
def _leftovers(root: Path, patch: Path) -> tuple[str, ...]:
    """The files ``patch`` creates that are in ``root`` exactly as it creates them, when they alone keep it
    from applying (the rest of the patch is not in)."""
    present = tuple(rel for rel in _created_files(patch) if (root / rel).exists())
    if not present:
        return ()
    with _scratch_copy(root, [rel for rel in _touched_files(patch) if rel not in present]) as scratch:
        if _git_apply(scratch, patch).returncode:
            return ()
        if all(_read(root / rel) == _read(scratch / rel) for rel in present):
            return present
    return ()


def _state(root: Path, patch: Path) -> PatchState:
    files = _touched_files(patch)
    if _git_apply(root, patch, "--check", "-R").returncode == 0:
        return PatchState(patch, files, "applied")
    if _git_apply(root, patch, "--check").returncode == 0:
        return PatchState(patch, files, "clean")
    leftovers = _leftovers(root, patch)
    return PatchState(patch, files, "leftover" if leftovers else "drifted", leftovers)


def patch_status(upstream: str, target: Path) -> list[PatchState]:
    return [_state(target, patch) for patch in patch_files(upstream)]


def _refuse_drift(upstream: str, states: list[PatchState]) -> None:
    drifted = [s for s in states if s.state == "drifted"]
    if drifted:
        details = "; ".join(f"{s.patch.name} -> {', '.join(s.files)}" for s in drifted)
        raise PatchError(
            f"{upstream} has drifted from the version our patches were written for; nothing was changed. "
            f"These files do not match (modified locally or a different upstream version): {details}. "
            f"To start again from the original files: {RESTORE_HINTS[upstream]}"
        )


def _refuse_leftovers(upstream: str, root: Path, states: list[PatchState]) -> None:
    files = [rel for s in states for rel in s.leftovers]
    if files:
        raise PatchError(
            f"left over from an earlier toklip-patch: {', '.join(files)} (a reinstall restores the files "
            f"{upstream} ships and keeps the ones our patches added); nothing was changed. Delete "
            f"{'it' if len(files) == 1 else 'them'} (rm {' '.join(str(root / rel) for rel in files)}) or run "
            f"toklip-patch {upstream} --revert, then run toklip-patch {upstream} again."
        )


# the transaction ---------------------------------------------------------------------------
@contextmanager
def _locked(root: Path, upstream: str) -> Iterator[None]:
    """Hold an exclusive ``flock`` on the upstream's top-level folder; a second run waits here, saying so.

    Locking the folder itself leaves no lock file behind. A file system that refuses to lock folders
    (NFS emulates flock with byte-range locks, which need a file open for writing) gets a warning."""
    folder = (root / UPSTREAMS[upstream]).resolve()
    fd = os.open(folder, os.O_RDONLY)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            print(f"toklip-patch: waiting for another toklip-patch run on {folder}", file=sys.stderr)
            fcntl.flock(fd, fcntl.LOCK_EX)
        except OSError as err:
            print(f"toklip-patch: warning: cannot lock {folder} ({err}); make sure no other toklip-patch runs "
                  "on it now", file=sys.stderr)
        yield
    finally:
        os.close(fd)  # releases the lock


def _stage(scratch: Path, states: list[PatchState], reverse: bool) -> None:
    """Apply (or reverse) ``states`` in order inside ``scratch``; a leftover's files are deleted."""
    for s in states:
        for rel in s.leftovers:
            (scratch / rel).unlink()
        if s.state != "leftover":
            result = _git_apply(scratch, s.patch, *(["-R"] if reverse else []))
            if result.returncode:
                raise PatchError(f"{'reverting' if reverse else 'applying'} {s.patch.name} failed; nothing was "
                                 f"changed: {result.stderr.strip()}")


def _write(path: Path, data: bytes | None) -> None:
    if data is None:
        path.unlink(missing_ok=True)
    else:
        with atomic_path(path) as tmp:
            tmp.write_bytes(data)


def _run(upstream: str, root: Path, states: list[PatchState], reverse: bool) -> None:
    """Change ``root`` as ``states`` say, all or nothing: stage every file in a scratch copy, then move the
    changed ones in one by one; when one cannot be written, put back the ones moved before it."""
    owner: dict[str, str] = {}  # file -> the first patch (in ``states`` order) that touches it
    for s in states:
        for rel in s.files:
            owner.setdefault(rel, s.patch.name)
    with _scratch_copy(root, owner) as scratch:
        _stage(scratch, states, reverse)
        changes = {rel: _read(scratch / rel) for rel in owner if _read(scratch / rel) != _read(root / rel)}
    written: dict[str, bytes | None] = {}  # file -> its bytes before this run (None: it did not exist)
    for rel, data in changes.items():
        try:
            original = _read(root / rel)
            _write(root / rel, data)
        except OSError as err:
            raise PatchError(f"could not write {root / rel} ({owner[rel]}): {err}. "
                             + _roll_back(upstream, root, written, owner)) from err
        written[rel] = original


def _roll_back(upstream: str, root: Path, written: dict[str, bytes | None], owner: dict[str, str]) -> str:
    """Put the ``written`` files back as they were, last first; returns what was done, for the error message."""
    failed = []
    for rel in reversed(list(written)):
        try:
            _write(root / rel, written[rel])
        except OSError as err:
            failed.append(f"{rel} ({err})")
    patches = ", ".join(dict.fromkeys(owner[rel] for rel in written))
    if failed:
        return (f"Rolling back {patches} failed for {'; '.join(failed)}: these files are half-patched. "
                f"Restore the original files ({RESTORE_HINTS[upstream]}) and run toklip-patch again.")
    if not written:
        return f"Nothing had been written; {root} is unchanged."
    restored = [rel for rel, data in written.items() if data is not None]
    removed = [rel for rel, data in written.items() if data is None]
    files = "; ".join(part for part in (f"restored {', '.join(restored)}" if restored else "",
                                        f"removed {', '.join(removed)}" if removed else "") if part)
    return f"Rolled back {patches} ({files}): {root} is as it was before this run."


def apply_patches(upstream: str, target: str | Path | None = None) -> list[str]:
    """Apply every patch not yet applied, all or none; returns the names of the patches applied now."""
    root = find_target(upstream, target)
    with _locked(root, upstream):
        states = patch_status(upstream, root)
        _refuse_drift(upstream, states)
        _refuse_leftovers(upstream, root, states)
        todo = [s for s in states if s.state == "clean"]
        _run(upstream, root, todo, reverse=False)
    return [s.patch.name for s in todo]


def revert_patches(upstream: str, target: str | Path | None = None) -> list[str]:
    """Undo every applied patch (last first) and delete our leftover files, all or none; returns the names of
    the patches reverted."""
    root = find_target(upstream, target)
    with _locked(root, upstream):
        states = patch_status(upstream, root)
        _refuse_drift(upstream, states)
        todo = [s for s in reversed(states) if s.state in ("applied", "leftover")]
        for rel in (rel for s in todo for rel in s.leftovers):
            print(f"toklip-patch: deleting {root / rel}, left over from an earlier toklip-patch", file=sys.stderr)
        _run(upstream, root, todo, reverse=True)
    return [s.patch.name for s in todo]


def _print_status(upstream: str, target: str | Path | None) -> None:
    root = find_target(upstream, target)
    with _locked(root, upstream):
        states = patch_status(upstream, root)
    for s in states:
        extra = f"; left over: {', '.join(s.leftovers)} (delete, or --revert)" if s.leftovers else ""
        print(f"{s.state:8s} {s.patch.name}  ({', '.join(s.files)}){extra}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="toklip-patch", description=__doc__.split("\n\n")[0])
    parser.add_argument("upstream", choices=sorted(UPSTREAMS))
    parser.add_argument("--target", help="checkout root or package folder (default for llava: the installed package)")
    action = parser.add_mutually_exclusive_group()
    action.add_argument("--revert", action="store_true", help="undo the patches")
    action.add_argument("--check", action="store_true", help="only report each patch's state")
    args = parser.parse_args(argv)
    try:
        if args.check:
            _print_status(args.upstream, args.target)
            return 0
        done = (revert_patches if args.revert else apply_patches)(args.upstream, args.target)
    except PatchError as err:
        print(f"toklip-patch: error: {err}", file=sys.stderr)
        return 1
    verb = "reverted" if args.revert else "applied"
    print(f"{args.upstream}: {verb} {len(done)} patch(es)" + (f": {', '.join(done)}" if done else " (nothing to do)"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
