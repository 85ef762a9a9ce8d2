"""A Qwen2 base for training the unified model (:mod:`.unified`) with LLaVA's own train.py.

LLaVA picks its model class from the checkpoint's ``model_type`` (``llava.plugins.find_language_model``):
a plain Qwen2 base says ``qwen2`` and would get the understanding-only class. ``write_unified_base``
writes a directory whose ``config.json`` is a :class:`~.unified.LlavaQwen2UnifiedConfig`
(``model_type`` ``llava_qwen2_unified`` plus the generation settings) and whose other files (weights,
tokenizer, generation config) are symbolic links to the base's, so it costs no disk::

    python -m toklip_plugin.integrations.llava.unified_base Qwen/Qwen2.5-7B-Instruct checkpoints/qwen2.5-7b-unified
    python -m llava.train.train --model_name_or_path checkpoints/qwen2.5-7b-unified --version qwen_2_unified ...

The generation sizes (codebook, tokens per image, feature width, BOI/EOI ids) stay empty: train.py's set-up
fills them in from the vision tower it builds.
"""
from __future__ import annotations

import argparse
import os
from pathlib import Path
from typing import Optional, Sequence, Union

__all__ = ["write_unified_base", "main"]


def _local_dir(base: Union[str, Path]) -> Path:
    """A local directory, or a Hugging Face Hub repo id fetched into (or found in) the Hub cache."""
    if Path(base).is_dir():
        return Path(base)
    from huggingface_hub import snapshot_download

    return Path(snapshot_download(str(base)))


def write_unified_base(base: Union[str, Path], out: Union[str, Path], *, gen_fusion: str = "concat",
                       gen_weight: float = 1.0, gen_prompt_dropout: float = 0.1) -> Path:
    """Write ``out``: ``base``'s Qwen2 files as links and a unified ``config.json`` with these settings."""
    from transformers import AutoConfig

    from ...models.fusion import FUSIONS
    from .unified import LlavaQwen2UnifiedConfig, LlavaQwen2UnifiedForCausalLM

    if gen_fusion not in FUSIONS:
        raise ValueError(f"unknown gen_fusion {gen_fusion!r}; choose one of {', '.join(FUSIONS)}")
    if not 0.0 <= gen_prompt_dropout < 1.0:
        raise ValueError(f"gen_prompt_dropout must be in [0, 1), got {gen_prompt_dropout}")
    source, out = _local_dir(base), Path(out)
    qwen2 = AutoConfig.from_pretrained(source)
    if qwen2.model_type != "qwen2":
        raise ValueError(f"{base} is a {qwen2.model_type!r} model; the unified model starts from a Qwen2 / Qwen2.5 "
                         "language model (model_type 'qwen2')")
    config = LlavaQwen2UnifiedConfig(**{**qwen2.to_dict(), "gen_fusion": gen_fusion, "gen_weight": gen_weight,
                                        "gen_prompt_dropout": gen_prompt_dropout})
    config.architectures = [LlavaQwen2UnifiedForCausalLM.__name__]
    out.mkdir(parents=True, exist_ok=True)
    for file in sorted(source.iterdir()):
        link = out / file.name
        if file.name != "config.json" and file.is_file() and not link.exists():
            os.symlink(file.resolve(), link)
    config.save_pretrained(out)
    return out


def main(argv: Optional[Sequence[str]] = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("base", help="a Qwen2 / Qwen2.5 directory or Hugging Face Hub id")
    parser.add_argument("out", help="the directory to write (pass it as --model_name_or_path)")
    parser.add_argument("--gen-fusion", default="concat", help="how a code's embedding and TokLIP feature fuse")
    parser.add_argument("--gen-weight", type=float, default=1.0, help="loss = text CE + GEN_WEIGHT x image-code CE")
    parser.add_argument("--gen-prompt-dropout", type=float, default=0.1,
                        help="probability of training a text-to-image sample without its caption (for CFG)")
    args = parser.parse_args(argv)
    out = write_unified_base(args.base, args.out, gen_fusion=args.gen_fusion, gen_weight=args.gen_weight,
                             gen_prompt_dropout=args.gen_prompt_dropout)
    print(out)


if __name__ == "__main__":
    main()
