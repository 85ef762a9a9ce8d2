"""Hostile images and atomic writes (``toklip_plugin.io``): bombs, broken chunks and strips are skipped by
every reader, before anything large is decoded or resized."""
from __future__ import annotations

import os
import resource
import time
from pathlib import Path

import pytest
from PIL import Image

from helpers.images import bomb_png, broken_chunk_png, grey_png
from toklip_plugin.evaluation.data import ImageFiles, Skipped
from toklip_plugin.io import (
    MAX_ASPECT_RATIO,
    ImageRejected,
    atomic_path,
    open_image,
)
from toklip_plugin.transforms import image_transform

def read_with_eval_loader(tmp_path: Path, name: str, data: bytes):
    """What the evaluation loader makes of one file: a tensor or a Skipped record."""
    path = tmp_path / name
    path.write_bytes(data)
    return ImageFiles([path], image_transform(32))[0]


def test_decompression_bomb_is_skipped_by_name_not_raised(tmp_path):
    item = read_with_eval_loader(tmp_path, "bomb.png", bomb_png())
    assert isinstance(item, Skipped)
    assert item.reason.startswith("DecompressionBombError")


def test_bomb_is_refused_even_when_a_library_raised_pils_global_limit(tmp_path, monkeypatch):
    # importing some lmms-eval tasks sets Image.MAX_IMAGE_PIXELS = 1e9 for the whole process
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1_000_000_000)
    with pytest.raises(Image.DecompressionBombError, match="400,000,000 pixels"):
        open_image(bomb_png(), image_transform(32))


def test_png_with_a_broken_chunk_is_skipped_as_a_syntax_error(tmp_path):
    item = read_with_eval_loader(tmp_path, "broken.png", broken_chunk_png())
    assert isinstance(item, Skipped)
    assert item.reason.startswith("SyntaxError")


def test_a_broken_png_is_skipped_even_when_a_library_allowed_truncated_images(tmp_path, monkeypatch):
    from PIL import ImageFile

    # importing lmms-eval (lmms_eval.api.task) sets ImageFile.LOAD_TRUNCATED_IMAGES = True for the whole process
    monkeypatch.setattr(ImageFile, "LOAD_TRUNCATED_IMAGES", True)
    item = read_with_eval_loader(tmp_path, "broken.png", broken_chunk_png())
    assert isinstance(item, Skipped) and item.reason.startswith("SyntaxError")
    assert ImageFile.LOAD_TRUNCATED_IMAGES is True  # the library's setting is left as it was


@pytest.mark.parametrize(("width", "height", "kept"), [
    (MAX_ASPECT_RATIO, 1, True), (1, MAX_ASPECT_RATIO, True), (4 * MAX_ASPECT_RATIO, 4, True),
    (MAX_ASPECT_RATIO + 1, 1, False), (1, 60000, False), (60000, 2, False),
])
def test_images_more_elongated_than_the_bound_are_skipped(tmp_path, width, height, kept):
    item = read_with_eval_loader(tmp_path, "strip.png", grey_png(width, height))
    if kept:
        assert tuple(item[0].shape) == (3, 32, 32)
    else:
        assert isinstance(item, Skipped) and item.reason.startswith("ImageRejected")


def _peak_rss_growth_of_transform(image: Image.Image, size: int) -> tuple[str, int]:
    """Run ``image_transform(size)(image)`` in a forked child; returns (outcome, how far the child's peak RSS
    rose during the call, in bytes). A fork starts its own peak from its current RSS, so what earlier tests
    did in this process cannot hide the growth."""
    transform = image_transform(size)
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:  # child: no pytest machinery, report through the pipe and leave
        before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        try:
            transform(image)
            outcome = "transformed"
        except ImageRejected:
            outcome = "rejected"
        except BaseException as err:  # noqa: BLE001 - reported to the parent
            outcome = type(err).__name__
        growth = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) * 1024
        os.write(write_end, f"{outcome} {growth}".encode())
        os._exit(0)
    os.close(write_end)
    deadline = time.monotonic() + 120
    while os.waitpid(pid, os.WNOHANG) == (0, 0):
        if time.monotonic() > deadline:
            os.kill(pid, 9)
            os.waitpid(pid, 0)
            pytest.fail("the transform of a 1 x 60000 strip ran for two minutes")
        time.sleep(0.01)
    with os.fdopen(read_end) as pipe:
        outcome, growth = pipe.read().split()
    return outcome, int(growth)


def test_eval_transform_refuses_a_strip_before_resizing_it():
    # unchecked, Resize(128) would make the 1 x 60000 strip 128 x 7,680,000 RGB pixels: +2.9 GB
    strip = Image.new("RGB", (1, 60000), (200, 10, 10))
    outcome, growth = _peak_rss_growth_of_transform(strip, 128)
    assert outcome == "rejected"
    assert growth < 64 * 2**20, f"peak RSS grew by {growth / 2**20:.0f} MiB"


def test_atomic_write_keeps_the_mode_of_the_file_it_replaces(tmp_path):
    final = tmp_path / "kept.bin"
    final.write_bytes(b"old")
    final.chmod(0o640)
    with atomic_path(final) as tmp:
        tmp.write_bytes(b"new")
    assert final.read_bytes() == b"new"
    assert final.stat().st_mode & 0o777 == 0o640


def test_atomic_write_of_a_new_file_honours_the_umask(tmp_path):
    old = os.umask(0o022)
    try:
        with atomic_path(tmp_path / "new.bin") as tmp:
            tmp.write_bytes(b"data")
    finally:
        os.umask(old)
    assert (tmp_path / "new.bin").stat().st_mode & 0o777 == 0o644
    assert [p.name for p in tmp_path.iterdir()] == ["new.bin"]


def test_strips_are_refused_before_decoding_whatever_the_transform():
    # the training transform crops before resizing; the bound still holds for it, through open_image
    with pytest.raises(ImageRejected, match="1x60000"):
        open_image(grey_png(1, 60000), lambda image: image.size)
    assert open_image(grey_png(1, MAX_ASPECT_RATIO), lambda image: image.size) == (1, MAX_ASPECT_RATIO)
