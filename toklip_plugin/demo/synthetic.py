"""A generated image-caption data set: coloured shapes on coloured backgrounds.

No downloads: images are drawn with PIL from a seed. Each image shows one shape of a colour
(the class, e.g. "red circle") at a random size and place on a noisy background; its caption
names the class and, half the time, the size and background too. Used by the demo and the tests,
written in the trainer's own input formats (webdataset shards, CSV).
"""
from __future__ import annotations

import csv
import io
import random
import tarfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

__all__ = ["SHAPES", "COLORS", "Sample", "class_names", "class_prompt", "make_samples",
           "write_shards", "write_csv"]

SHAPES = ("square", "triangle", "cross", "bar")
COLORS = {"red": (220, 40, 40), "green": (40, 170, 60), "blue": (40, 80, 220),
          "yellow": (235, 210, 40), "white": (245, 245, 245)}
BACKGROUNDS = {"black": (20, 20, 20), "gray": (120, 120, 120), "brown": (110, 80, 50)}


@dataclass(frozen=True)
class Sample:
    image: Image.Image
    caption: str
    label: int  # index into class_names()


def class_names() -> list[str]:
    return [f"{color} {shape}" for shape in SHAPES for color in COLORS]


def class_prompt(name: str) -> str:
    return f"a photo of a {name}"


def _draw_shape(draw: ImageDraw.ImageDraw, shape: str, box: tuple[int, int, int, int], fill) -> None:
    x0, y0, x1, y1 = box
    w, h = (x1 - x0) // 3, (y1 - y0) // 3
    if shape == "bar":
        draw.rectangle((x0, y0 + h, x1, y1 - h), fill=fill)
    elif shape == "square":
        draw.rectangle(box, fill=fill)
    elif shape == "triangle":
        draw.polygon([((x0 + x1) // 2, y0), (x1, y1), (x0, y1)], fill=fill)
    else:
        draw.rectangle((x0 + w, y0, x1 - w, y1), fill=fill)
        draw.rectangle((x0, y0 + h, x1, y1 - h), fill=fill)


def _make_one(rng: random.Random, size: int) -> Sample:
    names = class_names()
    label = rng.randrange(len(names))
    color, shape = names[label].split(" ")
    background = rng.choice(list(BACKGROUNDS))
    noise = np.random.default_rng(rng.randrange(2**32)).normal(0, 12, (size, size, 3))
    pixels = np.clip(np.array(BACKGROUNDS[background], dtype=np.float64) + noise, 0, 255).astype(np.uint8)
    image = Image.fromarray(pixels)
    big = rng.random() < 0.5
    extent = int(size * (rng.uniform(0.6, 0.8) if big else rng.uniform(0.4, 0.55)))
    x0, y0 = rng.randrange(0, size - extent), rng.randrange(0, size - extent)
    jitter = tuple(max(0, min(255, c + rng.randint(-20, 20))) for c in COLORS[color])
    _draw_shape(ImageDraw.Draw(image), shape, (x0, y0, x0 + extent, y0 + extent), jitter)
    if rng.random() < 0.5:
        caption = class_prompt(names[label])
    else:
        caption = f"a {'big' if big else 'small'} {color} {shape} on a {background} background"
    return Sample(image, caption, label)


def make_samples(count: int, seed: int, size: int = 128) -> list[Sample]:
    rng = random.Random(seed)
    return [_make_one(rng, size) for _ in range(count)]


def _png_bytes(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def write_shards(samples: list[Sample], directory: str | Path, per_shard: int, prefix: str = "shard") -> str:
    """Webdataset shards (``png`` + ``txt`` + ``cls``) like img2dataset's; returns their brace pattern."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    count = (len(samples) + per_shard - 1) // per_shard
    for shard in range(count):
        with tarfile.open(directory / f"{prefix}-{shard:05d}.tar", "w") as tar:
            for i, sample in enumerate(samples[shard * per_shard:(shard + 1) * per_shard], shard * per_shard):
                for ext, data in (("png", _png_bytes(sample.image)), ("txt", sample.caption.encode()),
                                  ("cls", str(sample.label).encode())):
                    _add_member(tar, f"{i:08d}.{ext}", data)
    return str(directory / f"{prefix}-{{00000..{count - 1:05d}}}.tar")


def _add_member(tar: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    tar.addfile(info, io.BytesIO(data))


def write_csv(samples: list[Sample], directory: str | Path) -> Path:
    """PNG files plus ``samples.csv`` (columns ``image``, ``caption``, ``label``)."""
    directory = Path(directory)
    (directory / "images").mkdir(parents=True, exist_ok=True)
    path = directory / "samples.csv"
    with open(path, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["image", "caption", "label"])
        for i, sample in enumerate(samples):
            name = f"images/{i:06d}.png"
            sample.image.save(directory / name)
            writer.writerow([name, sample.caption, sample.label])
    return path
