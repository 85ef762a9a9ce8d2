"""``toklip-train``: train a TokLIP tokenizer from a train config.

    toklip-train --config toklip-s-256 data.train='/data/laion/{00000..01023}.tar' run.output_dir=runs/s256
    torchrun --nproc_per_node 8 -m toklip_plugin.train.cli --config toklip-l-384 [key=value ...]

A run resumes from the newest checkpoint in its ``run.output_dir`` when there is one.

    toklip-train --config toklip-s-256 --build-cache codes/ data.train='/data/{00000..00099}.tar'
    toklip-train --config toklip-s-256 data.kind=cache data.train=codes/  # many epochs, no VQ
"""
from __future__ import annotations

import argparse
from typing import Optional, Sequence

from .config import list_train_configs, load_train_config
from .state import ResumeError
from .trainer import Trainer

__all__ = ["main"]


def parse_args(argv: Optional[Sequence[str]] = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="toklip-train", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", required=True,
                        help=f"a train-config YAML file or a named one ({', '.join(list_train_configs())})")
    parser.add_argument("overrides", nargs="*", metavar="section.key=value",
                        help="config overrides with YAML values, e.g. optim.lr=1e-4 run.precision=fp32")
    parser.add_argument("--print-config", action="store_true", help="print the resolved config and exit")
    parser.add_argument("--allow-config-change", metavar="KEY[,KEY]", default="",
                        help="resume output_dir although these config keys (or sections) changed since its checkpoint, "
                             "e.g. optim.lr or loss")
    parser.add_argument("--build-cache", metavar="OUT_DIR",
                        help="tokenize the config's training data once (frozen VQ, tokenizer, teacher) into a code "
                             "cache for data.kind=cache data.train=OUT_DIR (a directory of chunks; under torchrun each rank builds its part), and exit")
    return parser.parse_args(argv)


def main(argv: Optional[Sequence[str]] = None) -> None:
    args = parse_args(argv)
    try:
        config = load_train_config(args.config, args.overrides)
    except (ValueError, FileNotFoundError) as err:  # a config mistake: say what, without a traceback
        raise SystemExit(f"toklip-train: {err}") from None
    if args.print_config:
        import yaml

        print(yaml.safe_dump(config.to_dict(), sort_keys=False))
        return
    if args.build_cache:
        from .code_cache import build_code_cache

        built = build_code_cache(config, args.build_cache)
        print(f"[toklip-train] code cache {built['path']}: {built['samples']} samples, {built['skipped']} skipped "
              "because they failed to decode")
        return
    allowed = [key for key in args.allow_config_change.split(",") if key]
    try:
        Trainer(config, allow_config_change=allowed).fit()
    except ResumeError as err:  # a checkpoint this config must not resume: say why, without a traceback
        raise SystemExit(f"toklip-train: {err}") from None


if __name__ == "__main__":
    main()
