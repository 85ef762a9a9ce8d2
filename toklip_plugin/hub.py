"""The Hugging Face Hub, in and out, through ``huggingface_hub``'s public API (no HTTP of our own).

In: ``hf-hub:`` ids, spelled the way ``huggingface_hub.HfFileSystem`` spells repo paths:

- ``hf-hub:ORG/NAME`` or ``hf-hub:ORG/NAME@REVISION``: a whole repo. As a model source it must be in our
  layout (``config.json`` + ``model.safetensors``, what ``save_pretrained`` and ``push_to_hub`` write).
- ``hf-hub:ORG/NAME/PATH`` or ``hf-hub:ORG/NAME@REVISION/PATH``: one file of a repo, for ``checkpoint=`` /
  ``vq_checkpoint=`` next to the config it fits, e.g. a released-layout ``.pt``
  (``load_toklip("toklip-l", checkpoint="hf-hub:TencentARC/TokLIP/TokLIP_L_384.pt")``).

REVISION is a branch, a tag or a commit; one holding ``/`` (``refs/pr/1``) is written URL-encoded
(``refs%2Fpr%2F1``), as ``HfFileSystem`` writes it. Files come through the Hugging Face cache (``HF_HOME`` /
``HF_HUB_CACHE``); offline (``HF_HUB_OFFLINE=1``) a repo, revision or file that is not cached fails with the
``huggingface-cli download`` command that fetches it.

Out: :func:`upload_folder` creates the repo when needed and uploads one folder as one commit.
"""
from __future__ import annotations

import urllib.parse
from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Sequence, Union

__all__ = ["PREFIX", "HubRef", "HubDownloadError", "is_hub_id", "parse_hub_id", "download_file", "download_repo",
           "upload_folder", "download_command"]

PREFIX = "hf-hub:"
_USAGE = ("write hf-hub:ORG/NAME, hf-hub:ORG/NAME@REVISION (a branch, tag or commit) or "
          "hf-hub:ORG/NAME[@REVISION]/FILE (one file of the repo)")


class HubDownloadError(FileNotFoundError):
    """A Hub repo or file that is neither in the Hugging Face cache nor downloadable now."""


@dataclass(frozen=True)
class HubRef:
    """What an ``hf-hub:`` id names: a repo, at a revision (None: ``main``), and maybe one file in it."""

    repo_id: str
    revision: Optional[str] = None
    filename: Optional[str] = None

    def __str__(self) -> str:
        revision = f"@{urllib.parse.quote(self.revision, safe='')}" if self.revision else ""
        return f"{PREFIX}{self.repo_id}{revision}" + (f"/{self.filename}" if self.filename else "")


def is_hub_id(source: object) -> bool:
    """Whether ``source`` is an ``hf-hub:`` id (a ``str``; a ``Path`` is always a local path)."""
    return isinstance(source, str) and source.startswith(PREFIX)


def parse_hub_id(source: str) -> HubRef:
    """``hf-hub:ORG/NAME[@REVISION][/FILE]`` -> :class:`HubRef`; ValueError naming the spelling otherwise."""
    if not is_hub_id(source):
        raise ValueError(f"{source!r} is not a Hugging Face Hub id; {_USAGE}")
    org, _, rest = source[len(PREFIX):].partition("/")
    name_revision, _, filename = rest.partition("/")
    name, at, revision = name_revision.partition("@")
    if not org or not name or (at and not revision) or filename.endswith("/"):
        raise ValueError(f"{source!r} is not a valid Hugging Face Hub id; {_USAGE}")
    return HubRef(f"{org}/{name}", urllib.parse.unquote(revision) if at else None, filename or None)


def download_command(repo_id: str, filenames: Sequence[str], revision: Optional[str]) -> str:
    """The ``huggingface-cli`` line that puts ``filenames`` of ``repo_id`` at ``revision`` into the cache."""
    pinned = f" --revision {revision}" if revision else ""
    return f"huggingface-cli download {repo_id} {' '.join(filenames)}{pinned}"


def _not_found(repo_id: str, filenames: Sequence[str], revision: Optional[str], err: Optional[BaseException],
               also: str) -> HubDownloadError:
    from huggingface_hub import constants

    why = f"{type(err).__name__}: {str(err).splitlines()[0][:200]}" if err else "the cached snapshot lacks them"
    offline = " (offline mode, HF_HUB_OFFLINE=1)" if constants.HF_HUB_OFFLINE else ""
    return HubDownloadError(
        f"{', '.join(filenames)} of the Hugging Face repo {repo_id} at revision {revision or 'main'} is not in the "
        f"Hugging Face cache ({constants.HF_HUB_CACHE}) and could not be downloaded{offline} ({why}). On a machine "
        f"with network access run `{download_command(repo_id, filenames, revision)}`, then copy that machine's "
        "Hugging Face cache (HF_HOME, default ~/.cache/huggingface) here or point HF_HOME (or HF_HUB_CACHE) at a "
        f"copy of it{also}")


def download_file(repo_id: str, filename: str, revision: Optional[str] = None, also: str = "") -> Path:
    """The local path of one file of a Hub repo (from the cache, else downloaded). ``also``: more ways to get
    the file, appended to the error message."""
    from huggingface_hub import hf_hub_download

    try:
        return Path(hf_hub_download(repo_id, filename, revision=revision))
    except Exception as err:  # offline, unknown repo or revision, no permission: all end the same way for the user
        raise _not_found(repo_id, [filename], revision, err, also) from err


def download_repo(repo_id: str, filenames: Sequence[str], revision: Optional[str] = None, also: str = "") -> Path:
    """The local snapshot folder of a Hub repo at one revision holding ``filenames`` (all of them, or an error).

    One ``snapshot_download`` resolves the revision once, so a branch that moves meanwhile cannot mix files
    of two commits; offline it is the cached snapshot the ref (or the commit) names.
    """
    from huggingface_hub import snapshot_download

    try:
        folder = Path(snapshot_download(repo_id, revision=revision, allow_patterns=list(filenames)))
    except Exception as err:
        raise _not_found(repo_id, filenames, revision, err, also) from err
    missing = [name for name in filenames if not (folder / name).is_file()]
    if missing:
        raise _not_found(repo_id, missing, revision, None, also)
    return folder


def upload_folder(folder: Union[str, Path], repo_id: str, *, revision: Optional[str] = None,
                  private: Optional[bool] = None, commit_message: str = "Upload TokLIP model",
                  token: Optional[str] = None) -> str:
    """Create ``repo_id`` if it does not exist (``private`` applies only then), make the branch ``revision``
    if given, and upload ``folder``'s files to it in one commit; returns the commit URL."""
    from huggingface_hub import HfApi

    api = HfApi(token=token)
    api.create_repo(repo_id, private=private, exist_ok=True)
    if revision:
        api.create_branch(repo_id, branch=revision, exist_ok=True)
    commit = api.upload_folder(repo_id=repo_id, folder_path=str(folder), revision=revision,
                               commit_message=commit_message)
    return str(getattr(commit, "commit_url", commit))
