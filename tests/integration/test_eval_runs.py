"""The evaluation runners on real files, with a model whose answers are known by construction.

``ColourModel`` embeds an image as its mean RGB colour and a text as the RGB vector of the colour
word in it, so which class / caption is nearest follows from the pixels; the runners (loaders,
batching, skipping, prompt ensembling, ranking) are the ones ``toklip-eval`` uses.
"""
from __future__ import annotations

import io
import json
import tarfile

import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from toklip_plugin import image_transform
from toklip_plugin.evaluation.data import (
    ImageFiles, WebDatasetImages, class_folder, image_files, make_loader, read_captions,
)
from toklip_plugin.evaluation.retrieval import evaluate_retrieval
from toklip_plugin.evaluation.zero_shot import evaluate_zero_shot

COLOURS = {"red": (1.0, 0.0, 0.0), "green": (0.0, 1.0, 0.0), "blue": (0.0, 0.0, 1.0), "teal": (0.0, 0.6, 0.8)}
CPU = torch.device("cpu")
TRANSFORM = image_transform(16)


class ColourModel(torch.nn.Module):
    def encode_image(self, images: torch.Tensor, normalize: bool = False) -> torch.Tensor:
        emb = ((images + 1) / 2).mean(dim=(2, 3))
        return F.normalize(emb, dim=-1) if normalize else emb

    def encode_text(self, vectors: torch.Tensor, normalize: bool = False) -> torch.Tensor:
        return F.normalize(vectors, dim=-1) if normalize else vectors


def colour_tokenizer(texts: list[str]) -> torch.Tensor:
    return torch.tensor([next(COLOURS[w] for w in t.replace(".", " ").split() if w in COLOURS) for t in texts])


def save_png(path, rgb) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (20, 12), rgb).save(path)


# (folder, colour, rank of the true class among blue / green / red)
ZERO_SHOT_IMAGES = [
    ("blue", (0, 0, 255), 0),
    ("blue", (0, 255, 200), 1),      # greener than blue
    ("green", (0, 255, 0), 0),
    ("red", (255, 0, 0), 0),
    ("red", (255, 255, 0), 1),       # ties red with green: a tie counts against the model
    ("red", (200, 255, 230), 2),     # green, then blue, then red
]


@pytest.fixture
def class_root(tmp_path):
    root = tmp_path / "val"
    for i, (folder, rgb, _) in enumerate(ZERO_SHOT_IMAGES):
        save_png(root / folder / f"{i}.png", rgb)
    (root / "red" / "broken.png").write_bytes(b"\x89PNG but not really")
    return root


def test_zero_shot_on_a_class_folder_gives_the_known_accuracy_and_counts_unreadable_files(class_root):
    paths, labels, classnames = class_folder(class_root)
    assert classnames == ["blue", "green", "red"]
    loader = make_loader(ImageFiles(paths, TRANSFORM, labels), batch_size=4)
    result = evaluate_zero_shot(ColourModel(), colour_tokenizer, loader, classnames, CPU, topk=(1, 2, 3))
    assert (result["top1"], result["top2"], result["top3"]) == (0.5, pytest.approx(5 / 6), 1.0)
    assert result["images"] == 6 and result["templates"] == 80
    assert result["skipped"] == 1 and "broken.png" in result["skipped_files"][0]


def test_zero_shot_reads_webdataset_shards_and_skips_broken_samples(tmp_path):
    shard = tmp_path / "val-000.tar"
    with tarfile.open(shard, "w") as tar:
        def add(name: str, data: bytes) -> None:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))

        for i, (folder, rgb, _) in enumerate(ZERO_SHOT_IMAGES):
            png = io.BytesIO()
            Image.new("RGB", (20, 12), rgb).save(png, format="PNG")
            add(f"{i:04d}.png", png.getvalue())
            add(f"{i:04d}.cls", str(["blue", "green", "red"].index(folder)).encode())
        add("9999.jpg", b"not a jpeg")
        add("9999.cls", b"0")
    loader = make_loader(WebDatasetImages(str(shard), TRANSFORM), batch_size=4)
    result = evaluate_zero_shot(ColourModel(), colour_tokenizer, loader, ["blue", "green", "red"], CPU, topk=(1, 2, 3))
    assert (result["top1"], result["top2"], result["top3"]) == (0.5, pytest.approx(5 / 6), 1.0)
    assert result["skipped"] == 1


@pytest.fixture
def coco_like(tmp_path):
    images = {"red.png": (255, 0, 0), "green.png": (0, 255, 0), "blue.png": (0, 0, 255)}
    for name, rgb in images.items():
        save_png(tmp_path / "val2014" / name, rgb)
    (tmp_path / "val2014" / "gone.png").write_bytes(b"")
    captions = {"red.png": ["a red square", "red"], "green.png": ["green", "blue"], "blue.png": ["teal"],
                "gone.png": ["a picture nobody can open"]}
    karpathy = {"images": [{"filepath": "val2014", "filename": n, "split": "test", "sentences": [{"raw": c} for c in cs]}
                           for n, cs in captions.items()]
                + [{"filepath": "val2014", "filename": "train.png", "split": "train", "sentences": [{"raw": "red"}]}]}
    (tmp_path / "dataset_coco.json").write_text(json.dumps(karpathy))
    (tmp_path / "coco_karpathy_test.json").write_text(json.dumps(
        [{"image": f"val2014/{n}", "caption": cs} for n, cs in captions.items()]))
    (tmp_path / "results.token").write_text(
        "".join(f"val2014/{n}#{k}\t{c}\n" for n, cs in captions.items() for k, c in enumerate(cs)))
    return tmp_path


def test_retrieval_gives_the_known_recall_both_ways(coco_like):
    pairs = read_captions(coco_like / "dataset_coco.json", coco_like, split="test")
    result = evaluate_retrieval(ColourModel(), colour_tokenizer, pairs, TRANSFORM, CPU, batch_size=2, ks=(1, 2, 3))
    # image->text: blue.png's nearest caption is "blue" (green.png's), its own "teal" second
    assert (result["i2t_r1"], result["i2t_r2"], result["i2t_r3"]) == (pytest.approx(2 / 3), 1.0, 1.0)
    # text->image: "blue" (green.png's) finds blue.png first, then ties red.png and green.png at 0
    assert (result["t2i_r1"], result["t2i_r2"], result["t2i_r3"]) == (pytest.approx(4 / 5), pytest.approx(4 / 5), 1.0)
    # the unreadable image is skipped, and its caption leaves the pool with it
    assert (result["images"], result["texts"], result["skipped"]) == (3, 5, 1)


def test_the_three_annotation_layouts_read_the_same(coco_like):
    karpathy = read_captions(coco_like / "dataset_coco.json", coco_like)
    assert len(karpathy) == 4 and karpathy[0] == (coco_like / "val2014" / "red.png", ["a red square", "red"])
    assert read_captions(coco_like / "coco_karpathy_test.json", coco_like) == karpathy
    assert read_captions(coco_like / "results.token", coco_like) == karpathy


def test_a_missing_annotation_file_is_named(tmp_path):
    with pytest.raises(FileNotFoundError, match="nowhere.json does not exist"):
        read_captions(tmp_path / "nowhere.json")


def test_an_annotation_in_an_unknown_layout_is_refused(tmp_path):
    (tmp_path / "odd.json").write_text(json.dumps([{"file": "a.jpg", "text": "a"}]))
    with pytest.raises(ValueError, match="list of {'image', 'caption'} rows"):
        read_captions(tmp_path / "odd.json")


def test_an_image_list_resolves_relative_paths_against_its_folder(tmp_path):
    save_png(tmp_path / "a" / "x.png", (1, 2, 3))
    save_png(tmp_path / "y.png", (1, 2, 3))
    listing = tmp_path / "a" / "list.txt"
    listing.write_text(f"x.png\n\n{tmp_path / 'y.png'}\n")
    assert image_files(listing) == [tmp_path / "a" / "x.png", tmp_path / "y.png"]
    with pytest.raises(FileNotFoundError, match="neither an image folder nor a .txt list"):
        image_files(tmp_path / "missing")
