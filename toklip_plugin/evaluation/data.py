"""Evaluation data by path: class folders (ImageNet val), webdataset shards, caption annotations.

Every loader yields :class:`Batch` es. A file that cannot be read as an image is skipped and
reported in ``Batch.skipped`` (path and reason) instead of stopping a 50,000-image run.

Caption annotations (COCO Karpathy 5K test, Flickr30K 1K test) are read in the layouts they
are distributed in: Karpathy's ``dataset_coco.json`` / ``dataset_flickr30k.json``
(``{"images": [{"filepath", "filename", "split", "sentences": [{"raw"}]}]}``), the
ALBEF/BLIP ``coco_karpathy_test.json`` / ``flickr30k_test.json``
(``[{"image": "val2014/x.jpg", "caption": [...]}]``), and Flickr30K's
``results_20130124.token`` (``name.jpg#k<TAB>caption``).
"""
from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterator, Optional, Sequence, Union

import torch
from torch.utils.data import DataLoader, Dataset, IterableDataset

from ..io import IMAGE_SUFFIXES, SKIPPABLE_ERRORS, WDS_IMAGE_KEYS, expand_shards, is_image_file, open_image

__all__ = [
    "Batch",
    "ImageFiles",
    "WebDatasetImages",
    "make_loader",
    "class_folder",
    "read_classnames",
    "read_captions",
    "image_files",
]

WNID = re.compile(r"^n\d{8}$")
PathLike = Union[str, Path]


@dataclass
class Skipped:
    name: str
    reason: str


@dataclass
class Batch:
    images: torch.Tensor  # [B, 3, S, S]
    targets: torch.Tensor  # [B] class label or image index
    skipped: list[Skipped] = field(default_factory=list)


class ImageFiles(Dataset):
    """Image files with one integer target each (a class label, or the image's own index)."""

    def __init__(self, paths: Sequence[Path], transform: Callable, targets: Optional[Sequence[int]] = None):
        self.paths = list(paths)
        self.targets = list(range(len(self.paths))) if targets is None else list(targets)
        self.transform = transform

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i: int):
        try:
            return open_image(self.paths[i], self.transform), self.targets[i]
        except SKIPPABLE_ERRORS as err:
            return Skipped(str(self.paths[i]), f"{type(err).__name__}: {err}")


class WebDatasetImages(IterableDataset):
    """ImageNet-style webdataset shards: an image (``jpg``/``jpeg``/``png``/``webp``) and a ``cls`` label per sample."""

    def __init__(self, shards: str, transform: Callable):
        self.shards = expand_shards(shards)  # refuses missing shards and globs that match nothing
        self.transform = transform

    def __iter__(self) -> Iterator:
        from webdataset import split_by_worker, tarfile_to_samples

        urls = split_by_worker([{"url": url} for url in self.shards])
        for sample in tarfile_to_samples()(urls):
            yield self._decode(sample)

    def _decode(self, sample: dict):
        name = f"{sample.get('__url__')}:{sample.get('__key__')}"
        try:
            data = next((sample[e] for e in WDS_IMAGE_KEYS if e in sample), None)
            if data is None or "cls" not in sample:
                raise ValueError(f"sample needs an image ({'/'.join(WDS_IMAGE_KEYS)}) and a cls label, has {sorted(sample)}")
            return open_image(data, self.transform), int(sample["cls"].decode().strip())
        except SKIPPABLE_ERRORS as err:
            return Skipped(name, f"{type(err).__name__}: {err}")


def collate(items: list) -> Optional[Batch]:
    kept = [item for item in items if not isinstance(item, Skipped)]
    skipped = [item for item in items if isinstance(item, Skipped)]
    if not kept:
        return Batch(torch.empty(0), torch.empty(0, dtype=torch.long), skipped)
    return Batch(torch.stack([image for image, _ in kept]), torch.tensor([t for _, t in kept]), skipped)


def make_loader(dataset: Dataset, batch_size: int, workers: int = 0) -> DataLoader:
    """A DataLoader of :class:`Batch` es in dataset order."""
    return DataLoader(dataset, batch_size=batch_size, num_workers=workers, collate_fn=collate, shuffle=False)


def image_files(source: PathLike) -> list[Path]:
    """Image files under a folder (recursively, sorted), or listed in a ``.txt`` file (one path per
    line, relative paths against the file's folder); a missing or empty source raises."""
    source = Path(source)
    if source.is_file() and source.suffix == ".txt":
        lines = [line.strip() for line in source.read_text().splitlines() if line.strip()]
        files = [source.parent / line for line in lines]
    elif source.is_dir():
        files = sorted(p for p in source.rglob("*") if is_image_file(p))
    else:
        raise FileNotFoundError(f"{source} is neither an image folder nor a .txt list of image paths")
    if not files:
        raise FileNotFoundError(f"no image files ({', '.join(IMAGE_SUFFIXES)}) in {source}")
    return files


def read_classnames(path: PathLike) -> list[str]:
    """One class name per line."""
    return [line.strip() for line in Path(path).read_text().splitlines() if line.strip()]


def class_folder(root: PathLike) -> tuple[list[Path], list[int], list[str]]:
    """A folder of class subfolders -> (image paths, labels, class names).

    Labels follow the sorted subfolder names (torchvision's ``ImageFolder`` order). The 1000
    ImageNet synset folders (``n01440764``, ...) are named with open_clip's ImageNet class names,
    which are in that same order; other folders are named after themselves (``_`` -> space).
    """
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"image folder {root} does not exist")
    folders = sorted(p for p in root.iterdir() if p.is_dir())
    if not folders:
        raise FileNotFoundError(f"{root} has no class subfolders; expected ROOT/<class>/<image> "
                                "(ImageNet val: ROOT/n01440764/ILSVRC2012_val_00000293.JPEG, ...)")
    paths, labels = [], []
    for label, folder in enumerate(folders):
        files = sorted(p for p in folder.rglob("*") if is_image_file(p))
        paths.extend(files)
        labels.extend([label] * len(files))
    return paths, labels, _folder_classnames([f.name for f in folders])


def _folder_classnames(names: list[str]) -> list[str]:
    if len(names) == 1000 and all(WNID.match(n) for n in names):
        from open_clip.zero_shot_metadata import IMAGENET_CLASSNAMES

        return list(IMAGENET_CLASSNAMES)
    return [n.replace("_", " ") for n in names]


def read_captions(annotation: PathLike, image_root: PathLike = "", split: str = "test") -> list[tuple[Path, list[str]]]:
    """``[(image path, captions), ...]`` from a COCO / Flickr30K annotation file (see the module docstring)."""
    path, root = Path(annotation), Path(image_root)
    if not path.is_file():
        raise FileNotFoundError(
            f"annotation file {path} does not exist; pass Karpathy's dataset_coco.json / dataset_flickr30k.json, "
            "ALBEF/BLIP's coco_karpathy_test.json, or Flickr30K's results_20130124.token")
    if path.suffix == ".json":
        data = json.loads(path.read_text())
        pairs = _karpathy(data, split) if isinstance(data, dict) and "images" in data else _image_caption_rows(data)
    else:
        pairs = _token_lines(path.read_text())
    if not pairs:
        raise ValueError(f"{path} holds no images with captions" + (f" in split {split!r}" if split else ""))
    return [(root / name, captions) for name, captions in pairs]


def _karpathy(data: dict, split: str) -> list[tuple[str, list[str]]]:
    return [(str(Path(entry.get("filepath", "")) / entry["filename"]), [s["raw"].strip() for s in entry["sentences"]])
            for entry in data["images"] if not split or entry.get("split") == split]


def _group(rows: Iterator[tuple[str, str]]) -> list[tuple[str, list[str]]]:
    grouped: dict[str, list[str]] = {}
    for name, caption in rows:
        grouped.setdefault(name, []).append(caption.strip())
    return list(grouped.items())


def _image_caption_rows(rows: list) -> list[tuple[str, list[str]]]:
    if not isinstance(rows, list) or not all(isinstance(r, dict) and {"image", "caption"} <= set(r) for r in rows):
        raise ValueError("a caption JSON must be Karpathy's {'images': [...]} or a list of {'image', 'caption'} rows")
    return _group((r["image"], c) for r in rows for c in ([r["caption"]] if isinstance(r["caption"], str) else r["caption"]))


def _token_lines(text: str) -> list[tuple[str, list[str]]]:
    rows = [line.split("\t", 1) for line in text.splitlines() if line.strip()]
    if not all(len(r) == 2 for r in rows):
        raise ValueError("a caption text file needs one 'image.jpg#k<TAB>caption' per line (Flickr30K .token)")
    return _group((name.split("#", 1)[0], caption) for name, caption in rows)
