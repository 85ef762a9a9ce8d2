"""Images/s of the TokLIP LLaVA tower vs LLaVA's own CLIP tower of the same width, depth and
token count, on CPU, in one run (random weights; the cost does not depend on them).

    python -m benchmarks.llava_tower [--models toklip-tiny toklip-b16] [--batch-size 4]

The CLIP tower is LLaVA's ``CLIPVisionTower`` over a ``CLIPVisionModel`` with patch 14 and an
image size giving the same number of patch tokens (its class token is dropped, as LLaVA does).
The TokLIP tower's extra cost is the frozen VQ encoder (pixels -> codes); the token encoder
alone (codes given) is timed too.
"""
from __future__ import annotations

import json
import tempfile
from pathlib import Path
from types import SimpleNamespace

import torch

import toklip_plugin as tp
from benchmarks.common import best_time, per_model_parser, print_table
from toklip_plugin.integrations.llava.tower import TokLIPVisionTower

CLIP_PATCH = 14
TOWER_ARGS = SimpleNamespace(mm_vision_select_layer=-1, mm_vision_select_feature="patch")


def toklip_tower(config: tp.TokLIPConfig, folder: Path) -> TokLIPVisionTower:
    """The tower for ``config`` with random weights (``toklip:<config file>``)."""
    path = folder / f"{config.name}.json"
    path.write_text(json.dumps(config.to_dict()))
    return TokLIPVisionTower(f"toklip:{path}", TOWER_ARGS).eval()


def clip_tower(config: tp.TokLIPConfig, folder: Path):
    """LLaVA's CLIP tower with TokLIP's width, depth, heads, MLP ratio and token count."""
    from llava.model.multimodal_encoder.clip_encoder import CLIPVisionTower
    from transformers import CLIPImageProcessor, CLIPVisionConfig, CLIPVisionModel

    e = config.encoder
    size = config.grid_size * CLIP_PATCH
    clip_config = CLIPVisionConfig(hidden_size=e.width, intermediate_size=int(e.width * e.mlp_ratio),
                                   num_hidden_layers=e.depth, num_attention_heads=e.heads,
                                   image_size=size, patch_size=CLIP_PATCH)
    path = folder / f"clip-like-{config.name}"
    CLIPVisionModel(clip_config).save_pretrained(path)
    CLIPImageProcessor(size={"shortest_edge": size}, crop_size={"height": size, "width": size}).save_pretrained(path)
    return CLIPVisionTower(str(path), TOWER_ARGS).eval(), size


TOWERS = {"tower": "TokLIP tower (VQ encoder + token encoder)", "encoder": "  of which token encoder (codes given)",
          "clip": "LLaVA CLIP tower"}


@torch.inference_mode()
def measure(name: str, batch_size: int, repeats: int, folder: Path) -> dict[str, float]:
    """Images/s of each of :data:`TOWERS`, and ``clip_px``, the CLIP tower's image size."""
    config = tp.resolve_config(name)
    toklip = toklip_tower(config, folder)
    images = torch.rand(batch_size, 3, config.image_size, config.image_size) * 2 - 1
    codes = toklip.toklip.tokenize(images)
    clip, size = clip_tower(config, folder)
    clip_images = torch.rand(batch_size, 3, size, size) * 2 - 1
    timed = {"tower": lambda: toklip(images), "encoder": lambda: toklip.toklip.encode_codes(codes),
             "clip": lambda: clip(clip_images)}
    return {"clip_px": size, **{part: batch_size / best_time(fn, repeats) for part, fn in timed.items()}}


def table_rows(name: str, images_per_s: dict[str, float]) -> list[list[object]]:
    config = tp.resolve_config(name)
    return [[name, label, images_per_s["clip_px"] if part == "clip" else config.image_size, config.num_tokens,
             config.encoder.width, images_per_s[part]] for part, label in TOWERS.items()]


def main() -> None:
    args = per_model_parser(__doc__, batch_size=4).parse_args()
    with tempfile.TemporaryDirectory() as folder:
        rows = [row for name in args.models
                for row in table_rows(name, measure(name, args.batch_size, args.repeats, Path(folder)))]
    print(f"CPU, {torch.get_num_threads()} threads, float32, batch {args.batch_size}, best of {args.repeats}")
    print_table(["config", "tower", "image px", "tokens", "width", "images/s"], rows)


if __name__ == "__main__":
    main()
