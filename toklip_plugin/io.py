"""Files in and out, one copy each: image suffixes, the errors that mean "skip this sample",
image decoding, shard lists and atomic writes.

The encode CLI, the trainer, the code-cache builder and the evaluation loaders all read images
and shards; they take these definitions from here so that one skips what the others skip.
"""
from __future__ import annotations

import glob
import io
import os
import stat
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Callable, Iterator, Union

import torch
from PIL import Image, ImageFile

__all__ = ["IMAGE_SUFFIXES", "WDS_IMAGE_KEYS", "SKIPPABLE_ERRORS", "MAX_IMAGE_PIXELS", "MAX_ASPECT_RATIO",
           "ImageRejected", "check_image_size", "check_aspect_ratio", "open_image", "is_image_file", "expand_shards",
           "atomic_path", "atomic_torch_save", "fsync_directory", "current_umask"]

# file suffixes read as images, lower case with the dot
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".webp", ".bmp", ".gif", ".tif", ".tiff")
# webdataset sample keys that may hold the image (img2dataset writes jpg; others write png / webp)
WDS_IMAGE_KEYS = tuple(suffix[1:] for suffix in IMAGE_SUFFIXES)
# errors that mean "this sample is broken" (unreadable or truncated image, a decompression bomb, an image
# refused by check_image_size, a missing field, bad JSON / UTF-8): the sample is skipped and counted, the run
# goes on. PIL raises SyntaxError for some broken PNG chunks and DecompressionBombError outside OSError.
SKIPPABLE_ERRORS = (OSError, ValueError, KeyError, TypeError, SyntaxError, Image.DecompressionBombError)
# the most pixels decoded: PIL's own default error threshold (2 x 89,478,485; 537 MB as RGB), kept here
# because importing some lmms-eval tasks raises PIL's process-wide Image.MAX_IMAGE_PIXELS to 1e9
MAX_IMAGE_PIXELS = 2 * 89_478_485
# the most elongated image used (long side / short side). The evaluation transform resizes the short side to
# S and keeps the centre S x S, so it holds S x (ratio * S) pixels and keeps 1 / ratio of the picture. Wide
# formats of web data pass (panoramas ~4:1, 970x90 banners ~11:1); a strip past 20:1 would keep under 5%
# of itself, which its caption no longer describes, and a 1 x 60000 strip would need 128 x 7.68M pixels.
MAX_ASPECT_RATIO = 20


class ImageRejected(ValueError):
    """An image too elongated (or empty) to be used; skipped like a broken one (a ValueError)."""


def check_image_size(width: int, height: int) -> None:
    """Raise before decoding an image of more than MAX_IMAGE_PIXELS pixels or one refused by
    :func:`check_aspect_ratio`."""
    if width * height > MAX_IMAGE_PIXELS:
        raise Image.DecompressionBombError(
            f"image of {width}x{height} = {width * height:,} pixels is over the limit of {MAX_IMAGE_PIXELS:,} "
            "(toklip_plugin.io.MAX_IMAGE_PIXELS): a decompression bomb, or far larger than any model input")
    check_aspect_ratio(width, height)


def check_aspect_ratio(width: int, height: int) -> None:
    """Raise ImageRejected for an empty image or a long / short side ratio above MAX_ASPECT_RATIO."""
    if min(width, height) < 1:
        raise ImageRejected(f"image of {width}x{height} has no pixels")
    if max(width, height) / min(width, height) > MAX_ASPECT_RATIO:
        raise ImageRejected(
            f"image of {width}x{height} is more elongated than {MAX_ASPECT_RATIO}:1 "
            "(toklip_plugin.io.MAX_ASPECT_RATIO): its centre crop would keep too little of it")


def is_image_file(path: Path) -> bool:
    return path.is_file() and path.suffix.lower() in IMAGE_SUFFIXES


def open_image(source: Union[str, Path, bytes], transform: Callable[[Image.Image], torch.Tensor]) -> torch.Tensor:
    """Decode an image file or encoded bytes fully and apply ``transform``; raises one of SKIPPABLE_ERRORS.

    The size is checked (:func:`check_image_size`) from the header, before any pixel is decoded. A truncated or
    corrupt file raises even when a library has set PIL's process-wide ``ImageFile.LOAD_TRUNCATED_IMAGES``
    (importing lmms-eval does): that switch would turn a broken sample into grey pixels trained on as an image.
    """
    with Image.open(io.BytesIO(source) if isinstance(source, bytes) else source) as image:
        check_image_size(*image.size)
        with _strict_decoding():
            image.load()
        return transform(image)


@contextmanager
def _strict_decoding() -> Iterator[None]:
    """PIL's ``LOAD_TRUNCATED_IMAGES`` off inside the block, restored after (a process-wide switch: a thread
    decoding at the same moment sees it off too)."""
    before = ImageFile.LOAD_TRUNCATED_IMAGES
    ImageFile.LOAD_TRUNCATED_IMAGES = False
    try:
        yield
    finally:
        ImageFile.LOAD_TRUNCATED_IMAGES = before


def expand_shards(spec: str) -> list[str]:
    """``"a/{000..009}.tar::b/*.tar"`` -> sorted list of shard paths (brace lists and globs).

    A listed local path that does not exist, or a glob that matches nothing, is refused here, naming them,
    rather than when a data loader reaches it hours later (remote ``pipe:`` / ``scheme://`` URLs are not checked).
    """
    from webdataset.shardlists import expand_urls

    shards: list[str] = []
    missing: list[str] = []
    for url in expand_urls(spec):
        found = sorted(glob.glob(url)) if any(c in url for c in "*?[") else [url]
        remote = "://" in url or url.startswith("pipe:")
        missing.extend([url] if not found else [] if remote else [f for f in found if not os.path.isfile(f)])
        shards.extend(found)
    if missing:
        raise FileNotFoundError(f"{len(missing)} shard(s) of {spec!r} do not exist (a missing file, or a glob that "
                                f"matches nothing): {', '.join(missing[:10])}; fix the list (paths, globs or brace "
                                "lists joined by '::')")
    return shards


@contextmanager
def atomic_path(final: Union[str, Path]) -> Iterator[Path]:
    """A temporary path beside ``final`` to write to; on success it is fsynced and renamed over ``final``.

    A crash inside the block leaves ``final`` untouched (``os.replace`` is atomic on POSIX) and the
    temporary file removed.
    """
    final = Path(final)
    mode = _replacement_mode(final)
    fd, tmp = tempfile.mkstemp(prefix=f".{final.name}.", suffix=".tmp", dir=final.parent)
    os.close(fd)
    try:
        os.chmod(tmp, mode)  # mkstemp makes 0600
        yield Path(tmp)
        with open(tmp, "rb") as f:
            os.fsync(f.fileno())
        os.replace(tmp, final)
        fsync_directory(final.parent)
    finally:
        Path(tmp).unlink(missing_ok=True)


def _replacement_mode(final: Path) -> int:
    """The permission bits ``final`` keeps when replaced: its own, or for a new file 0666 less the umask."""
    try:
        return stat.S_IMODE(final.stat().st_mode)
    except FileNotFoundError:
        return 0o666 & ~current_umask()


def current_umask() -> int:
    """The process's umask (reading it means setting it, so it is set back at once)."""
    umask = os.umask(0)
    os.umask(umask)
    return umask


def fsync_directory(folder: Path) -> None:
    """Make a rename in ``folder`` survive a power cut."""
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def atomic_torch_save(obj: object, final: Union[str, Path]) -> None:
    """``torch.save`` to ``final`` through :func:`atomic_path`."""
    with atomic_path(final) as tmp:
        torch.save(obj, tmp)
