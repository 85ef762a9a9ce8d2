"""``toklip-eval``: the paper's evaluations (toklip_plugin.evaluation.cli) and CLIP_benchmark on TokLIP.

    toklip-eval zeroshot --model toklip-l --data /data/imagenet/val                 # see evaluation/cli.py
    toklip-eval clip-benchmark eval --model toklip-l --pretrained released --dataset imagenet1k ...

``clip-benchmark`` hands the rest of the command line, unchanged, to CLIP_benchmark's own command line with
the ``toklip`` model type registered (toklip_plugin.integrations.clip_benchmark, also reachable as
``python -m toklip_plugin.integrations.clip_benchmark``). The dispatch lives here, above both, because
evaluation does not import the integrations.
"""
from __future__ import annotations

import sys
from typing import Optional, Sequence

from .evaluation import cli as evaluation_cli
from .integrations import clip_benchmark

__all__ = ["CLIP_BENCHMARK", "main"]

CLIP_BENCHMARK = "clip-benchmark"
_DELEGATED = {CLIP_BENCHMARK: "CLIP_benchmark's own CLI and metrics on TokLIP; its flags, unchanged "
                              "(toklip-eval clip-benchmark eval --help)"}


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    if args[:1] == [CLIP_BENCHMARK]:
        return clip_benchmark.main(args[1:])
    return evaluation_cli.run(evaluation_cli.build_parser(_DELEGATED).parse_args(args))


if __name__ == "__main__":
    sys.exit(main())
