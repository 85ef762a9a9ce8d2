"""``toklip-generate``: draw images from captions with a unified LLaVA-Qwen2 checkpoint (issue 14).

    toklip-generate --model DIR "a red circle on blue" -o out.png
    toklip-generate --model DIR "a red circle" "a blue square" -o drawn/      # drawn/000.png, drawn/001.png
    toklip-generate --model DIR --prompts-file captions.txt -o drawn/ --codes drawn/codes.pt --seed 0

The checkpoint is what ``configs/llava/unified.sh`` trains (``model_type`` ``llava_qwen2_unified``); it is
opened with :func:`~.loading.load_llava_model` (LLaVA's ``load_pretrained_model``) and sampled with
:func:`~.image_generation.generate_image`, ``--batch-size`` prompts per call and one generator, seeded by
``--seed``, for the whole run (so what a seed draws depends on the batch size too). The decoded images, in
the VQ's range of about [-1, 1], are clamped and rounded to 8-bit RGB.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Optional, Sequence

import torch

from ...io import atomic_path, atomic_torch_save
from ...precision import parse_dtype
from ...progress import ProgressBar
from ...transforms import to_uint8_images

__all__ = ["main", "build_parser", "check_device", "check_unified_checkpoint", "output_paths", "draw"]

PROG = "toklip-generate"
TRAIN_HINT = "train one with configs/llava/unified.sh (configs/llava/README.md, 'The unified model')"


def check_unified_checkpoint(model_dir: Path) -> None:
    """Refuse, with the fix, a folder that is not a trained unified checkpoint (before loading any weights)."""
    if not model_dir.is_dir():
        raise FileNotFoundError(f"--model {model_dir}: no such directory; give the folder a unified LLaVA-Qwen2 "
                                f"checkpoint was saved to, or {TRAIN_HINT}")
    config_file = model_dir / "config.json"
    if not config_file.is_file():
        raise ValueError(f"--model {model_dir} has no config.json, so it is not a saved model; {TRAIN_HINT}")
    from .loading import require_patched_llava

    require_patched_llava()
    from .unified import LlavaQwen2UnifiedConfig

    model_type = json.loads(config_file.read_text()).get("model_type")
    if model_type != LlavaQwen2UnifiedConfig.model_type:
        raise ValueError(f"--model {model_dir} is a {model_type!r} checkpoint, not a unified LLaVA-Qwen2 "
                         f"({LlavaQwen2UnifiedConfig.model_type!r}), so it has no image head to draw with; {TRAIN_HINT}")
    if not LlavaQwen2UnifiedConfig.from_pretrained(model_dir).has_generation:
        raise ValueError(f"--model {model_dir} is a converted base without an image head yet (unified_base writes "
                         "it for stage 1): train it with configs/llava/unified_stage1.sh first")


def check_device(device: str) -> None:
    """Refuse, before loading anything, a device string torch does not parse or a CUDA device this machine lacks."""
    try:
        kind = torch.device(device).type
    except RuntimeError:
        raise ValueError(f"--device {device!r} is not a device torch knows; give cpu, cuda or cuda:N") from None
    if kind == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"--device {device}: torch sees no CUDA device on this machine; use --device cpu")


def output_paths(output: Path, count: int) -> list[Path]:
    """One PNG per prompt: ``output`` itself for one prompt and a ``.png`` name, else ``output/NNN.png``."""
    if output.suffix.lower() == ".png":
        if count != 1:
            raise ValueError(f"-o {output} names one PNG but {count} prompts give {count} images: "
                             f"pass a folder, e.g. -o {output.with_suffix('')}/")
        if not output.parent.is_dir():
            raise FileNotFoundError(f"the folder of -o {output} does not exist; create {output.parent} first")
        return [output]
    if output.exists() and not output.is_dir():
        raise ValueError(f"-o {output} is a file without the .png suffix: name a .png file (one prompt) or a folder")
    return [output / f"{i:03d}.png" for i in range(count)]


def read_prompts(args: argparse.Namespace) -> list[str]:
    prompts = list(args.prompts)
    if args.prompts_file is not None:
        lines = Path(args.prompts_file).read_text(encoding="utf-8").splitlines()
        prompts += [line.strip() for line in lines if line.strip()]
    if not prompts:
        raise ValueError("no prompts: give captions as arguments or --prompts-file FILE (one per line)")
    return prompts


def save_png(pixels: torch.Tensor, path: Path) -> None:
    """``[S, S, 3]`` uint8 -> ``path``, written whole or not at all."""
    from PIL import Image

    with atomic_path(path) as tmp:
        Image.fromarray(pixels.numpy()).save(tmp, format="PNG")


def draw(args: argparse.Namespace, prompts: list[str], paths: list[Path]) -> torch.Tensor:
    """Generate and save every prompt's image, batch by batch; the codes ``[len(prompts), N]``."""
    from .image_generation import generate_image
    from .loading import load_llava_model

    tokenizer, model, _, _ = load_llava_model(args.model, device=args.device,
                                              dtype=None if args.dtype is None else parse_dtype(args.dtype))
    generator = None if args.seed is None else torch.Generator(device=model.device).manual_seed(args.seed)
    codes = []
    with ProgressBar(total=len(prompts), desc=PROG, unit="img") as bar:
        for start in range(0, len(prompts), args.batch_size):
            batch = prompts[start:start + args.batch_size]
            drawn = generate_image(model, tokenizer, batch, cfg_scale=args.cfg_scale, temperature=args.temperature,
                                   top_k=args.top_k, top_p=args.top_p, generator=generator)
            for pixels, path in zip(to_uint8_images(drawn.images), paths[start:start + len(batch)]):
                save_png(pixels, path)
            codes.append(drawn.codes.cpu())
            bar.update(len(batch))
    return torch.cat(codes)


def prepare(args: argparse.Namespace) -> tuple[list[str], list[Path]]:
    """The prompts and their PNG paths, once the arguments and the checkpoint are known to be usable."""
    prompts = read_prompts(args)
    paths = output_paths(Path(args.output), len(prompts))
    check_device(args.device)
    check_unified_checkpoint(Path(args.model))
    paths[0].parent.mkdir(parents=True, exist_ok=True)
    if args.codes is not None and not Path(args.codes).parent.is_dir():
        raise FileNotFoundError(f"the folder of --codes {args.codes} does not exist; create it first")
    return prompts, paths


def report(prompts: list[str], paths: list[Path], codes: torch.Tensor, codes_file: Optional[str]) -> None:
    if codes_file is not None:
        atomic_torch_save({"prompts": prompts, "codes": codes}, codes_file)
    where = paths[0] if len(paths) == 1 else paths[0].parent
    print(f"wrote {len(paths)} image(s) of {codes.shape[1]} codes to {where}"
          + (f"; codes to {codes_file}" if codes_file is not None else ""))


def _cfg_scale(text: str) -> Optional[float]:
    return None if text.lower() == "none" else float(text)


def _positive(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog=PROG, description="Draw images from captions with a unified LLaVA-Qwen2 "
                                     "checkpoint (TokLIP tokens in and out); one PNG per caption")
    parser.add_argument("prompts", nargs="*", help="captions, one image each")
    parser.add_argument("--model", required=True, help="a unified checkpoint folder (configs/llava/unified.sh)")
    parser.add_argument("--prompts-file", default=None, help="more captions, one per line")
    parser.add_argument("-o", "--output", default="toklip-generate.png",
                        help="a .png file for one caption, else a folder that gets 000.png, 001.png, ... "
                             "(default: toklip-generate.png)")
    parser.add_argument("--codes", default=None, help="also save {'prompts', 'codes' [B, N]} here (torch.save)")
    parser.add_argument("--cfg-scale", type=_cfg_scale, default=4.0,
                        help="classifier-free guidance scale, or 'none' to sample the conditional rows alone")
    parser.add_argument("--temperature", type=float, default=1.0)
    parser.add_argument("--top-k", type=int, default=0, help="0: no top-k filter")
    parser.add_argument("--top-p", type=float, default=1.0, help="1.0: no nucleus filter")
    parser.add_argument("--seed", type=int, default=None, help="seed of the sampling generator (repeatable runs)")
    parser.add_argument("--batch-size", type=_positive, default=8,
                        help="captions drawn together (2 LLM rows each with guidance)")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--dtype", default=None, help="default float32 on CPU, float16 on CUDA")
    return parser


def _fail(err: Exception) -> int:
    print(f"{PROG}: error: {err}", file=sys.stderr)
    return 2


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        prompts, paths = prepare(args)
    except (FileNotFoundError, ValueError, RuntimeError) as err:  # RuntimeError: LLaVA missing or not patched
        return _fail(err)
    try:
        codes = draw(args, prompts, paths)
    except ValueError as err:  # a caption too long for the model's context
        return _fail(err)
    report(prompts, paths, codes, args.codes)
    return 0


if __name__ == "__main__":
    sys.exit(main())
