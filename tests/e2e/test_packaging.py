"""Packaging: every package folder is listed, and a non-editable install finds its data."""
from __future__ import annotations

import subprocess
import sys
import tomllib
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def test_every_package_folder_is_listed_in_pyproject():
    listed = set(tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"])
    on_disk = {".".join(p.parent.relative_to(ROOT).parts) for p in (ROOT / "toklip_plugin").rglob("__init__.py")}
    mapped = {"toklip_plugin.configs", "toklip_plugin.patches"}
    assert listed == on_disk | mapped


@pytest.mark.slow
def test_wheel_ships_configs_and_works_outside_the_checkout(tmp_path):
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w",
                    str(tmp_path / "dist"), str(ROOT)], check=True)
    wheel = next((tmp_path / "dist").glob("toklip_plugin-*.whl"))
    names = zipfile.ZipFile(wheel).namelist()
    for name in ("toklip-s", "toklip-l", "toklip-b16", "toklip-tiny"):
        assert f"toklip_plugin/configs/models/{name}.json" in names
    subprocess.run([sys.executable, "-m", "pip", "install", "--no-deps", "-q", "--target", str(tmp_path / "site"),
                    str(wheel)], check=True)
    probe = "import toklip_plugin as tp; print(tp.__file__); print(','.join(tp.list_models()))"
    out = subprocess.run([sys.executable, "-c", probe], cwd=tmp_path, capture_output=True, text=True, check=True,
                         env={"PYTHONPATH": str(tmp_path / "site"), "PATH": "/usr/bin:/bin"}).stdout.splitlines()
    assert out[0].startswith(str(tmp_path / "site"))
    assert set(out[1].split(",")) >= {"toklip-s", "toklip-l", "toklip-b16", "toklip-tiny"}
