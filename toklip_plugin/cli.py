"""``toklip``: inspect a TokLIP (``info``) and turn images into codes and embeddings (``encode``)."""
from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Iterator, Sequence

import torch

from .checkpoints import CheckpointError
from .factory import create_model, get_transform, load_toklip, resolve_config
from .io import SKIPPABLE_ERRORS, atomic_torch_save, is_image_file, open_image
from .progress import ProgressBar
from .weight_options import add_weight_options, checkpoint_to_load, holds_weights

__all__ = ["main"]


def _parameter_counts(model: torch.nn.Module) -> dict[str, int]:
    parts = {name: sum(p.numel() for p in child.parameters()) for name, child in model.named_children()}
    total = sum(p.numel() for p in model.parameters())
    parts["other"] = total - sum(parts.values())  # parameters held directly: logit_scale, logit_bias
    parts["total"] = total
    return parts


def cmd_info(args: argparse.Namespace) -> int:
    """Nothing printed depends on the weight values: they are loaded (and checked against the config) only when
    ``--checkpoint`` names them or the source holds them; otherwise the model is built on the meta device."""
    config = resolve_config(args.model)
    if args.checkpoint is None and not holds_weights(args.model):
        with torch.device("meta"):  # shapes only: no memory, no initialisation (seconds saved for toklip-l)
            model = create_model(config)
        weights = "none loaded (the counts do not depend on them)"
    else:
        model, weights = load_toklip(args.model, checkpoint=args.checkpoint), args.checkpoint or str(args.model)
    print(f"{config.name}: {config.description}")
    print(f"image size {config.image_size} px, grid {config.grid_size}x{config.grid_size} = {config.num_tokens} tokens, "
          f"embedding dim {config.embed_dim}")
    e = config.encoder
    print(f"token encoder: width {e.width}, depth {e.depth}, heads {e.heads}, mlp ratio {e.mlp_ratio}, "
          f"{'causal' if e.causal else 'bidirectional'}, mapping {e.mapping}")
    v = config.vq
    print(f"VQ: codebook {v.codebook_size} x {v.codebook_embed_dim}, downsample {v.downsample}, ch {v.ch} x {list(v.ch_mult)}")
    print("parameters:")
    for name, count in _parameter_counts(model).items():
        print(f"  {name:<18s} {count:>14,d}")
    print(f"weights: {weights}")
    return 0


def _expand_images(paths: Sequence[str]) -> list[Path]:
    files: list[Path] = []
    for raw in paths:
        path = Path(raw)
        if path.is_dir():
            files.extend(sorted(p for p in path.rglob("*") if is_image_file(p)))
        elif path.is_file():
            files.append(path)
        else:
            raise FileNotFoundError(f"no such image or folder: {path}")
    return files


def _check_output(path: Path) -> None:
    """Refuse an output path that ``torch.save`` would refuse, before any image is encoded."""
    if path.is_dir():
        raise ValueError(f"-o {path} is a folder; give a file name, e.g. -o {path / 'toklip_codes.pt'}")
    if not path.parent.is_dir():
        raise FileNotFoundError(f"the folder of -o {path} does not exist; create {path.parent} first")


def _batches(files: list[Path], transform, batch_size: int, skipped: list[str]
             ) -> Iterator[tuple[list[Path], torch.Tensor, int]]:
    """Yield ``(paths, images, files consumed)``; files that cannot be used (io.SKIPPABLE_ERRORS: unreadable,
    a decompression bomb, too elongated) are recorded in ``skipped`` with the reason."""
    names, tensors, consumed = [], [], 0
    for path in files:
        consumed += 1
        try:
            tensors.append(open_image(path, transform))
            names.append(path)
        except SKIPPABLE_ERRORS as err:
            skipped.append(f"{path}: {type(err).__name__}: {err}")
            continue
        if len(tensors) == batch_size:
            yield names, torch.stack(tensors), consumed
            names, tensors, consumed = [], [], 0
    if tensors:
        yield names, torch.stack(tensors), consumed


@torch.no_grad()
def cmd_encode(args: argparse.Namespace) -> int:
    _check_output(Path(args.output))
    checkpoint = checkpoint_to_load(args, "toklip encode")
    files = _expand_images(args.images)
    if not files:
        print("toklip encode: no images found", file=sys.stderr)
        return 1
    model = load_toklip(args.model, checkpoint=checkpoint, device=args.device, random_weights=args.random_weights)
    transform = get_transform(model.config)
    skipped: list[str] = []
    out = {"paths": [], "codes": [], "image_embeddings": []}
    if args.tokens:
        out["tokens"] = []
    with ProgressBar(total=len(files), desc="encode", unit="img") as bar:
        for names, images, consumed in _batches(files, transform, args.batch_size, skipped):
            codes = model.tokenize(images.to(args.device))
            tokens, pooled = model.encode_codes_and_pool(codes, normalize=True)
            out["paths"].extend(str(p) for p in names)
            out["codes"].append(codes.cpu())
            out["image_embeddings"].append(pooled.cpu())
            if args.tokens:
                out["tokens"].append(tokens.cpu())
            bar.update(consumed)
        bar.update(len(files) - bar.n)  # skipped files after the last batch
    for reason in skipped:
        print(f"skipped {reason}", file=sys.stderr)
    if not out["paths"]:
        print("toklip encode: no usable images", file=sys.stderr)
        return 1
    result = {k: (v if k == "paths" else torch.cat(v)) for k, v in out.items()}
    result["model"] = model.config.name
    result["random_weights"] = args.random_weights
    atomic_torch_save(result, args.output)
    print(f"wrote {len(result['paths'])} images ({model.num_tokens} codes each) to {args.output}; "
          f"skipped {len(skipped)} that could not be used")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="toklip", description="TokLIP tokenizer tools")
    sub = parser.add_subparsers(dest="command", required=True)

    info = sub.add_parser("info", help="config, parameter counts per part, token count")
    info.add_argument("model", help="a name (toklip-l, ...), saved directory or config file")
    info.add_argument("--checkpoint", default=None,
                      help="weights to load and check against the config (path or 'released'; default: none)")
    info.set_defaults(func=cmd_info)

    enc = sub.add_parser("encode", help="images -> VQ codes and TokLIP embeddings, saved with torch.save")
    enc.add_argument("images", nargs="+", help="image files or folders")
    enc.add_argument("--model", default="toklip-l", help="a name (toklip-l, ...), saved directory or config file")
    add_weight_options(enc)
    enc.add_argument("--output", "-o", default="toklip_codes.pt")
    enc.add_argument("--batch-size", type=int, default=16)
    enc.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    enc.add_argument("--tokens", action="store_true", help="also save the per-token semantic features")
    enc.set_defaults(func=cmd_encode)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except (CheckpointError, FileNotFoundError, ValueError, KeyError) as err:
        print(f"toklip {args.command}: error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
