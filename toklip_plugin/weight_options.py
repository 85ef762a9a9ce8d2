"""``--checkpoint`` and ``--random-weights``, the weight options of every command that runs a TokLIP
(``toklip encode``, ``toklip-eval``): real weights unless random ones are asked for by name.

Without either option a command loads the weights its model source holds (a saved directory, a Hub
repository) or the released weights its config names (``--checkpoint released``), and fails with the
download instructions when they are not on disk and cannot be downloaded. A config that names no released
weights (``toklip-tiny``, a config file) is refused with what to pass. ``--random-weights`` runs with
random weights and says so on stderr: numbers from random weights look like results and mean nothing.
"""
from __future__ import annotations

import argparse
import sys
from typing import Optional

from .factory import RELEASED, resolve_config, saved_directory
from .hub import is_hub_id

__all__ = ["add_weight_options", "checkpoint_to_load", "holds_weights"]


def add_weight_options(parser: argparse.ArgumentParser) -> None:
    """Add ``--checkpoint`` and ``--random-weights`` to a subcommand's parser."""
    parser.add_argument("--checkpoint", default=None,
                        help="TokLIP weights: a released-layout .pt, a saved directory, a .safetensors file, an "
                             f"hf-hub: id or '{RELEASED}' (default: the weights a saved directory or Hub repo holds, else '{RELEASED}' when "
                             "the config names released weights)")
    parser.add_argument("--random-weights", action="store_true",
                        help="run with random TokLIP weights (smoke tests; the numbers mean nothing)")


def checkpoint_to_load(args: argparse.Namespace, command: str) -> Optional[str]:
    """The ``checkpoint=`` for ``load_toklip(args.model, ...)``, chosen from ``--checkpoint`` /
    ``--random-weights``; prints the random-weights note to stderr. Raises ``ValueError`` naming the
    options when the choice is contradictory or missing."""
    if args.random_weights:
        if args.checkpoint is not None:
            raise ValueError("--checkpoint and --random-weights contradict each other: pass one of them")
        if holds_weights(args.model):
            raise ValueError(f"{args.model} holds its own weights, so --random-weights would be ignored: drop it, "
                             "(for random weights of its architecture, pass its config file as --model instead)")
        print(f"{command}: note: --random-weights: the TokLIP weights are random, not trained; "
              "its outputs mean nothing", file=sys.stderr)
        return None
    if args.checkpoint is not None or holds_weights(args.model):
        return args.checkpoint
    config = resolve_config(args.model)
    if "checkpoint" in config.weights:
        return RELEASED
    raise ValueError(f"{config.name!r} names no released weights: pass --checkpoint PATH (a released-layout .pt, "
                     "a saved TokLIP directory or a .safetensors file) or --random-weights to run with random weights")


def holds_weights(model: str) -> bool:
    """Whether the ``--model`` source brings its own weights (a saved directory, an ``hf-hub:`` repository; the
    repository is not downloaded to tell)."""
    return is_hub_id(model) or saved_directory(model) is not None
