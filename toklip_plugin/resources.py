"""Data folders shipped with the package: ``configs/`` and ``patches/``.

In the repository they sit at the top level; an install maps them into the package
(``toklip_plugin.configs``, ``toklip_plugin.patches``, see pyproject.toml) so that a
non-editable install finds them too.
"""
from __future__ import annotations

from importlib import resources
from pathlib import Path

__all__ = ["data_dir"]


def data_dir(name: str):
    """The folder ``name`` (``"configs"`` or ``"patches"``) as an importlib Traversable / Path."""
    try:
        return resources.files(f"toklip_plugin.{name}")
    except ModuleNotFoundError:  # imported from a source checkout without installing
        return Path(__file__).resolve().parent.parent / name
