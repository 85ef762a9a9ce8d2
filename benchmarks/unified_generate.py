"""Image-generation speed of the unified LLaVA-Qwen2 (issue 14): TokLIP feedback with the encoder's KV cache,
vs re-encoding the code prefix at every step, vs the same LLM without TokLIP feedback.

    python -m benchmarks.unified_generate                          # tiny and Qwen2-0.5B-sized, 64 codes
    python -m benchmarks.unified_generate --shapes tiny --repeats 3

Codes/s = codes of one image / seconds of ``sample_image_codes`` (what ``generate_image`` runs before
decoding): the prompt's prefill, then one LLM step per code with classifier-free guidance (scale 4, a
conditional and an unconditional row), top-k 0, top-p 1, temperature 1. Three ways of reading a code back,
all in that same loop, on the same weights:

- **cached**: the model as it is: one TokLIP encoder step per code against the encoder's own KV cache
  (``feedback_encoder`` / ``embed_code_step``);
- **re-encode**: ``feedback_encoder`` swapped for one that re-runs the full causal encoder over the whole code
  prefix at every step (``benchmarks.generate.ReencodingTokenEncoder``) and keeps its last feature;
- **no feedback**: ``embed_code_step`` swapped for the code embedding alone (no encoder, no fusion): the
  same LLM generating plain VQ codes.

Random weights, fp32, one image (two LLM rows) per call; the best of ``--repeats`` rounds that interleave the
three (``benchmarks.run`` runs the tiny shape three rounds, the Qwen2-0.5B-sized one once). The text vocabulary is small (only the prompt reads it; the image head is the codebook's 16384). The
Qwen2-0.5B shape is the LLM body of Qwen2-0.5B (hidden 896, 24 layers, 14 heads, 2 KV heads, MLP 4864) with
a TokLIP-L-sized (SigLIP2 So400m) encoder on a grid of 64 codes, to stay within minutes on a CPU.
"""
from __future__ import annotations

import argparse
import json
import tempfile
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import torch

import toklip_plugin as tp
from benchmarks.common import best_time, print_table
from benchmarks.generate import ReencodingTokenEncoder, toklip_config_for
from toklip_plugin.config import EncoderConfig

TEXT_VOCAB, PROMPT_TOKENS, CFG = 1024, 16, 4.0
VARIANTS = ("cached", "reencode", "no_feedback")


@dataclass(frozen=True)
class Shape:
    """A unified model's size: the Qwen2 LLM body and the TokLIP encoder of its tower."""

    name: str
    llm: dict  # Qwen2Config size fields
    toklip: str  # the named TokLIP config whose encoder the tower has

    @property
    def encoder(self) -> EncoderConfig:
        return tp.resolve_config(self.toklip).encoder


SHAPES = {
    "tiny": Shape("tiny Qwen2 + toklip-tiny encoder",
                  dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                       num_key_value_heads=2), "toklip-tiny"),
    "qwen2-0.5b": Shape("Qwen2-0.5B + So400m encoder (toklip-l)",
                        dict(hidden_size=896, intermediate_size=4864, num_hidden_layers=24, num_attention_heads=14,
                             num_key_value_heads=2), "toklip-l"),
}


def unified_model(shape: Shape, tokens: int, folder: Path):
    """A random unified model of ``shape`` whose TokLIP tower has ``tokens`` codes per image, in eval mode."""
    from toklip_plugin.integrations.llava.unified import LlavaQwen2UnifiedConfig, LlavaQwen2UnifiedForCausalLM

    toklip = toklip_config_for(shape.encoder, tokens)
    tower = folder / f"{toklip.name}-{tokens}.json"
    tower.write_text(json.dumps(toklip.to_dict()))
    config = LlavaQwen2UnifiedConfig(
        vocab_size=TEXT_VOCAB, tie_word_embeddings=False, **shape.llm,
        image_codebook_size=toklip.vq.codebook_size, image_tokens=toklip.num_tokens,
        image_feature_size=toklip.encoder.width, image_start_token_id=TEXT_VOCAB - 2, image_end_token_id=TEXT_VOCAB - 1,
        mm_vision_tower=f"toklip:{tower}", mm_hidden_size=toklip.encoder.width, mm_projector_type="mlp2x_gelu",
        mm_vision_select_layer=-1, mm_vision_select_feature="patch")
    torch.manual_seed(0)
    model = LlavaQwen2UnifiedForCausalLM(config)
    model.get_vision_tower().load_model()
    return model.eval()


@contextmanager
def feedback(model, variant: str) -> Iterator[None]:
    """The model reading its codes back the ``variant`` way (see the module docstring) inside the block."""
    toklip = model.vision_toklip()
    if variant == "reencode":
        model.feedback_encoder = lambda: ReencodingTokenEncoder(toklip.encoder, toklip.vq.quantize.codebook())
    elif variant == "no_feedback":
        model.embed_code_step = lambda encoder, codes, position: model.code_embed(codes)
    try:
        yield
    finally:
        for name in ("feedback_encoder", "embed_code_step"):
            model.__dict__.pop(name, None)  # back to the class's methods


def bench(shape: Shape, tokens: int, repeats: int, device: str = "cpu",
          dtype: torch.dtype = torch.float32) -> dict[str, float]:
    """Codes/s of each of :data:`VARIANTS` for one image with CFG."""
    from toklip_plugin.integrations.llava.image_generation import sample_image_codes

    with tempfile.TemporaryDirectory() as folder:
        model = unified_model(shape, tokens, Path(folder)).to(device, dtype)
    prompts = torch.randint(0, TEXT_VOCAB - 2, (2, PROMPT_TOKENS), generator=torch.Generator().manual_seed(0))
    prompts, mask = prompts.to(device), torch.ones_like(prompts, device=device)

    def run() -> None:
        sample_image_codes(model, prompts, mask, cfg_scale=CFG, generator=torch.Generator(device).manual_seed(0))

    best = {variant: float("inf") for variant in VARIANTS}
    for _ in range(repeats):
        for variant in VARIANTS:
            with feedback(model, variant):
                best[variant] = min(best[variant], best_time(run, repeats=1, warmup=0))
    return {variant: tokens / seconds for variant, seconds in best.items()}


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--shapes", default="tiny,qwen2-0.5b", help=f"comma-separated, from {', '.join(SHAPES)}")
    parser.add_argument("--tokens", type=int, default=64, help="codes per image (a square: 64, 256, 576)")
    parser.add_argument("--repeats", type=int, default=1,
                        help="rounds; the best round counts (a Qwen2-0.5B-sized round: about 1.5 CPU-minutes)")
    parser.add_argument("--threads", type=int, default=1,
                        help="torch threads (default 1, as benchmarks.generate: per-token steps gain little)")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    print(f"CPU, {args.threads} thread(s), one image (+1 CFG row), fp32; codes/s, best of {args.repeats} rounds "
          "(higher is better)\n")
    rows = []
    for name in args.shapes.split(","):
        r = bench(SHAPES[name], args.tokens, args.repeats)
        rows.append([SHAPES[name].name, args.tokens, r["cached"], r["reencode"], r["no_feedback"],
                     f"{r['cached'] / r['reencode']:.2f}x", f"{r['cached'] / r['no_feedback']:.2f}x"])
    print_table(["shape", "codes", "KV-cached feedback", "re-encode prefix", "no feedback", "cached / re-encode",
                 "cached / no feedback"], rows)


if __name__ == "__main__":
    main()
