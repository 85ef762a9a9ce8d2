"""``toklip-patch llava|llamagen``: apply, check or revert our small upstream patches.

Each upstream has a folder ``patches/<upstream>/`` of ``NN-name.patch`` files (unified
diffs with ``a/`` ``b/`` prefixes, paths relative to the folder that holds the upstream's
top-level package: site-packages or the checkout root). ``git apply`` does the work, so
no file is ever half-patched. Per patch:

- already applied (the reverse applies cleanly): skipped, so patching twice is a no-op;
- applies cleanly: applied;
- neither: upstream has drifted; nothing is written and the error names the file.

``--revert`` undoes the applied patches in reverse order, restoring the original bytes.
"""
from __future__ import annotations

import argparse
import importlib.util
import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

from .resources import data_dir

__all__ = ["UPSTREAMS", "PatchError", "patch_files", "find_target", "apply_patches", "revert_patches", "patch_status", "main"]

# upstream -> the top-level folder its patches' paths start with (used to find and check the target)
UPSTREAMS = {"llava": "llava", "llamagen": "autoregressive"}


class PatchError(RuntimeError):
    pass


@dataclass(frozen=True)
class PatchState:
    patch: Path
    files: tuple[str, ...]
    state: str  # "applied", "clean" (can be applied) or "drifted"


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


def _git_apply(target: Path, patch: Path, *flags: str) -> subprocess.CompletedProcess:
    # --unidiff-zero is not used: every patch carries context, which is what detects drift.
    return subprocess.run(
        ["git", "apply", *flags, str(patch.resolve())], cwd=target, capture_output=True, text=True,
        env={**os.environ, "GIT_CEILING_DIRECTORIES": str(target.parent)},
    )


def _touched_files(patch: Path) -> tuple[str, ...]:
    lines = patch.read_text().splitlines()
    return tuple(line[len("+++ b/"):] for line in lines if line.startswith("+++ b/"))


def patch_status(upstream: str, target: Path) -> list[PatchState]:
    states = []
    for patch in patch_files(upstream):
        if _git_apply(target, patch, "--check", "-R").returncode == 0:
            state = "applied"
        elif _git_apply(target, patch, "--check").returncode == 0:
            state = "clean"
        else:
            state = "drifted"
        states.append(PatchState(patch, _touched_files(patch), state))
    return states


def _refuse_drift(upstream: str, states: list[PatchState]) -> None:
    drifted = [s for s in states if s.state == "drifted"]
    if drifted:
        details = "; ".join(f"{s.patch.name} -> {', '.join(s.files)}" for s in drifted)
        raise PatchError(
            f"{upstream} has drifted from the version our patches were written for; nothing was changed. "
            f"These files do not match (modified locally or a different upstream version): {details}"
        )


def apply_patches(upstream: str, target: str | Path | None = None) -> list[str]:
    """Apply every patch not yet applied; returns the names of the patches applied now."""
    root = find_target(upstream, target)
    states = patch_status(upstream, root)
    _refuse_drift(upstream, states)
    applied = []
    for s in states:
        if s.state == "clean":
            result = _git_apply(root, s.patch)
            if result.returncode:
                raise PatchError(f"applying {s.patch.name} failed: {result.stderr.strip()}")
            applied.append(s.patch.name)
    return applied


def revert_patches(upstream: str, target: str | Path | None = None) -> list[str]:
    """Undo every applied patch (last first); returns the names of the patches reverted."""
    root = find_target(upstream, target)
    states = patch_status(upstream, root)
    _refuse_drift(upstream, states)
    reverted = []
    for s in reversed(states):
        if s.state == "applied":
            result = _git_apply(root, s.patch, "-R")
            if result.returncode:
                raise PatchError(f"reverting {s.patch.name} failed: {result.stderr.strip()}")
            reverted.append(s.patch.name)
    return reverted


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
            root = find_target(args.upstream, args.target)
            for s in patch_status(args.upstream, root):
                print(f"{s.state:8s} {s.patch.name}  ({', '.join(s.files)})")
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
