"""``toklip-eval``: the paper's evaluations, one subcommand each, results as JSON + markdown.

    toklip-eval zeroshot       --model toklip-l --checkpoint released --data /data/imagenet/val
    toklip-eval retrieval      --model toklip-l --checkpoint released --annotation dataset_coco.json --image-root /data/coco
    toklip-eval similarity     --model toklip-s --checkpoint released --images DIR --teacher ViT-SO400M-16-SigLIP2-256 --teacher-pretrained webli
    toklip-eval reconstruction --model toklip-l --checkpoint released --images DIR --reference-vq vq_ds16_t2i.pt
"""
from __future__ import annotations

import argparse
import dataclasses
import sys
from pathlib import Path
from typing import Mapping, Optional, Sequence

import torch

from ..checkpoints import CheckpointError, load_vq_checkpoint
from ..factory import get_tokenizer, get_transform, load_toklip
from ..models.teacher import TeacherConfig, build_teacher
from ..models.vq import VQModel
from ..precision import AMP_DTYPES
from ..weight_options import add_weight_options, checkpoint_to_load
from .data import ImageFiles, WebDatasetImages, class_folder, image_files, make_loader, read_captions, read_classnames
from .results import markdown_table, write_results

__all__ = ["main", "run", "build_parser"]


def _load_model(args: argparse.Namespace):
    return load_toklip(args.model, checkpoint=args.checkpoint, vq_checkpoint=args.vq_checkpoint, device=args.device,
                       random_weights=args.random_weights)


def _labelled_images(path: str, transform, args: argparse.Namespace):
    """(loader, class names, number of images or None) for a class folder or webdataset shards."""
    if Path(path).is_dir():
        paths, labels, classnames = class_folder(path)
        if not paths:
            raise FileNotFoundError(f"no image files in the class subfolders of {path}")
        loader = make_loader(ImageFiles(paths, transform, labels), args.batch_size, args.workers)
        return loader, classnames, len(paths)
    from open_clip.zero_shot_metadata import IMAGENET_CLASSNAMES

    return make_loader(WebDatasetImages(path, transform), args.batch_size, args.workers), list(IMAGENET_CLASSNAMES), None


def _image_folder(path: str, transform, args: argparse.Namespace):
    """(loader, class names, count) for a class folder, or a flat folder / .txt list (every label 0)."""
    root = Path(path)
    if root.is_dir() and any(p.is_dir() for p in root.iterdir()):
        return _labelled_images(path, transform, args)
    files = image_files(path)
    return make_loader(ImageFiles(files, transform, [0] * len(files)), args.batch_size, args.workers), None, len(files)


def cmd_zeroshot(args: argparse.Namespace) -> dict:
    from .zero_shot import TEMPLATES, evaluate_zero_shot

    loader, classnames, total = _labelled_images(args.data, get_transform(args.model), args)
    model = _load_model(args)
    if args.classnames:
        classnames = read_classnames(args.classnames)
    return evaluate_zero_shot(model, get_tokenizer(model.config, args.tokenizer_path), loader, classnames,
                              torch.device(args.device), TEMPLATES[args.templates], args.amp, total=total)


def cmd_retrieval(args: argparse.Namespace) -> dict:
    from .retrieval import evaluate_retrieval

    pairs = read_captions(args.annotation, args.image_root, args.split)
    model = _load_model(args)
    return evaluate_retrieval(model, get_tokenizer(model.config, args.tokenizer_path), pairs,
                              get_transform(args.model), torch.device(args.device), args.batch_size,
                              args.workers, args.amp)


def _teacher(args: argparse.Namespace, model):
    if args.teacher_config:
        from ..train.config import load_train_config  # a CLI may reach across layers: the teacher section

        section = load_train_config(args.teacher_config).teacher
        if args.teacher_checkpoint:
            section = dataclasses.replace(section, checkpoint=args.teacher_checkpoint)
    elif args.teacher:
        section = TeacherConfig(open_clip=args.teacher, pretrained=args.teacher_pretrained)
    else:
        raise ValueError("name the teacher: --teacher ViT-SO400M-16-SigLIP2-256 (open_clip) "
                         "or --teacher-config a training config with its teacher section")
    return build_teacher(section, model.config).to(args.device)


def cmd_similarity(args: argparse.Namespace) -> dict:
    from .features import plot_tsne, teacher_similarity

    loader, classnames, total = _image_folder(args.images, get_transform(args.model), args)
    model = _load_model(args)
    teacher = _teacher(args, model)
    summary, features = teacher_similarity(model, teacher, loader, torch.device(args.device), args.amp, total)
    if not args.no_tsne:
        plot = plot_tsne(features, features["labels"], Path(args.output_dir) / f"{args.name or 'similarity'}_tsne.png",
                         classnames=classnames)
        summary["tsne_plot"] = str(plot)
    return summary


def cmd_reconstruction(args: argparse.Namespace) -> dict:
    from .reconstruction import evaluate_reconstruction

    files = image_files(args.images)
    model = _load_model(args)
    vq = VQModel(model.config.vq)
    if args.reference_vq:
        load_vq_checkpoint(vq, args.reference_vq)
    else:
        vq.load_state_dict(model.vq.state_dict())
    vq = vq.to(args.device).eval()
    loader = make_loader(ImageFiles(files, get_transform(model.config)), args.batch_size, args.workers)
    fid_dir = Path(args.output_dir) / f"{args.name or 'reconstruction'}_images" if args.fid else None
    return evaluate_reconstruction(model, vq, loader, torch.device(args.device), args.amp, fid_dir, len(files))


def _common(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", default="toklip-l", help="a name (toklip-s, toklip-l, ...), saved directory or config file")
    add_weight_options(parser)
    parser.add_argument("--vq-checkpoint", default=None, help="LlamaGen VQ weights for TokLIP's VQ part (file or 'released')")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--workers", type=int, default=4, help="DataLoader worker processes")
    parser.add_argument("--amp", choices=sorted(AMP_DTYPES), default="none", help="mixed precision autocast dtype")
    parser.add_argument("--output-dir", default="eval_results")
    parser.add_argument("--name", default=None, help="results file stem (default: the subcommand)")


def build_parser(delegated: Optional[Mapping[str, str]] = None) -> argparse.ArgumentParser:
    """The parser of the evaluations; ``delegated`` (name -> one-line help) lists in ``--help`` subcommands that
    the caller runs itself, before parsing (``toklip-eval clip-benchmark``, toklip_plugin.eval_command)."""
    parser = argparse.ArgumentParser(prog="toklip-eval", description=__doc__.split("\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)

    zs = sub.add_parser("zeroshot", help="zero-shot classification top-1/top-5 (ImageNet-1k val, Table 2)")
    zs.add_argument("--data", required=True, help="class-subfolder root (ImageNet val) or webdataset shards (jpg + cls)")
    zs.add_argument("--classnames", default=None, help="file with one class name per line, in label order")
    zs.add_argument("--templates", choices=["openai", "simple"], default="openai", help="open_clip prompt set")
    zs.add_argument("--tokenizer-path", default=None, help="local folder of the text tokenizer (offline use)")
    zs.set_defaults(func=cmd_zeroshot)

    rt = sub.add_parser("retrieval", help="image<->text recall@1/5/10 (COCO 5K / Flickr30K 1K test, Table 2)")
    rt.add_argument("--annotation", required=True, help="dataset_coco.json, coco_karpathy_test.json, results_20130124.token, ...")
    rt.add_argument("--image-root", default="", help="folder the annotation's image paths are relative to")
    rt.add_argument("--split", default="test", help="split to use from a Karpathy-format file ('' for all)")
    rt.add_argument("--tokenizer-path", default=None, help="local folder of the text tokenizer (offline use)")
    rt.set_defaults(func=cmd_retrieval)

    sim = sub.add_parser("similarity", help="TokLIP vs SigLIP teacher cosine similarity + t-SNE (Figure 3)")
    sim.add_argument("--images", required=True,
                     help="an image folder (class subfolders colour the t-SNE) or a .txt list of image paths")
    sim.add_argument("--teacher", default=None, help="open_clip teacher name, e.g. ViT-SO400M-16-SigLIP2-256")
    sim.add_argument("--teacher-pretrained", default=None, help="open_clip pretrained tag or weight file")
    sim.add_argument("--teacher-config", default=None, help="a toklip-train config whose teacher section to use")
    sim.add_argument("--teacher-checkpoint", default=None, help="teacher weights for --teacher-config")
    sim.add_argument("--no-tsne", action="store_true", help="skip the t-SNE plot")
    sim.set_defaults(func=cmd_similarity)

    rc = sub.add_parser("reconstruction", help="TokLIP vs plain VQ reconstructions: identity check, PSNR/SSIM (rFID)")
    rc.add_argument("--images", required=True, help="an image folder or a .txt list of image paths")
    rc.add_argument("--reference-vq", default=None,
                    help="LlamaGen VQ checkpoint for the plain model (default: a copy of TokLIP's own VQ weights)")
    rc.add_argument("--fid", action="store_true", help="also write the images and compute rFID (torch-fidelity / clean-fid)")
    rc.set_defaults(func=cmd_reconstruction)

    for p in (zs, rt, sim, rc):
        _common(p)
    for name, help_line in (delegated or {}).items():
        sub.add_parser(name, help=help_line, add_help=False)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    return run(build_parser().parse_args(argv))


def run(args: argparse.Namespace) -> int:
    """Run the parsed evaluation subcommand; write and print its results."""
    try:
        args.checkpoint = checkpoint_to_load(args, f"toklip-eval {args.command}")  # before any data is read
        results = args.func(args)
    except (CheckpointError, FileNotFoundError, ValueError, KeyError) as err:
        print(f"toklip-eval {args.command}: error: {err}", file=sys.stderr)
        return 2
    results = {"task": args.command, "model": args.model, "checkpoint": args.checkpoint,
               "random_weights": args.random_weights, **results}
    json_path, md_path = write_results(results, args.output_dir, args.name or args.command)
    for skipped in results.get("skipped_files", []):
        print(f"skipped unreadable image {skipped}", file=sys.stderr)
    print(markdown_table(results))
    print(f"wrote {json_path} and {md_path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
