"""Sampling speed on CPU: plain LlamaGen GPT vs fused TokLIP GPT (KV-cached encoder) vs re-encoding.

    python -m benchmarks.generate                       # tiny and GPT-B-sized, 256 and 576 tokens
    python -m benchmarks.generate --models tiny --tokens 256 --repeats 1   # quicker

Codes/s = images per call / seconds per decode step, where a step is what LlamaGen's
``generate()`` does per token: one ``model([x; x], None, input_pos)`` call with classifier-free
guidance (scale 2.5, so the GPT runs on 2 x batch rows), the CFG mix and sampling (top-k 0,
top-p 1.0, temperature 1.0). The step time is the mean over ``--steps`` positions spread evenly
over the N tokens (re-encoding the prefix costs more the later the position; plain and cached
steps attend over the whole cache behind a mask, so their cost is flat), taken as the best of
``--repeats`` rounds that interleave the three models, which keeps other load on the machine
from favouring one of them. Random weights; fp32. Goal: fused+cache within 1.3x of plain.

FLOP floor = 1 + encoder Linear weights / (2 x GPT Linear weights): each step runs the
encoder on one row per image (the CFG halves share it) and the GPT on two, so no incremental
encoder can be cheaper than that; the gap above it is our per-step overhead.
"""
from __future__ import annotations

import argparse
from dataclasses import dataclass

import torch

import toklip_plugin as tp
from benchmarks.common import best_time, print_table
from toklip_plugin.config import EncoderConfig, VQConfig
from toklip_plugin.integrations.llamagen.fused import TokLIPTransformer
from toklip_plugin.integrations.llamagen.gpt import Transformer, model_args
from toklip_plugin.integrations.llamagen.sampling import guided_logits
from toklip_plugin.models.cached_encoder import CachedTokenEncoder
from toklip_plugin.models.sampling import sample_logits

VOCAB, CLASSES, CFG = 16384, 1000, 2.5


@dataclass(frozen=True)
class Setup:
    name: str
    gpt: dict  # ModelArgs size fields
    encoder: EncoderConfig


SETUPS = {
    "tiny": Setup("tiny GPT + tiny encoder", dict(n_layer=2, n_head=4, dim=64), tp.resolve_config("toklip-tiny").encoder),
    "gpt-b": Setup("GPT-B + ViT-B encoder (toklip-b16)", dict(n_layer=12, n_head=12, dim=768),
                   tp.resolve_config("toklip-b16").encoder),
    "gpt-b-so400m": Setup("GPT-B + So400m encoder (toklip-s/l)", dict(n_layer=12, n_head=12, dim=768),
                          tp.resolve_config("toklip-s").encoder),
    "gpt-l-so400m": Setup("GPT-L + So400m encoder (toklip-s/l)", dict(n_layer=24, n_head=16, dim=1024),
                          tp.resolve_config("toklip-s").encoder),
}


class ReencodingTokenEncoder(CachedTokenEncoder):
    """The naive incremental encoder: each step re-reads the whole prefix with the full causal pass."""

    def setup_cache(self, max_batch_size: int, dtype: torch.dtype) -> None:
        self.history = torch.zeros(max_batch_size, self.num_tokens, dtype=torch.long)  # ambient device

    def step(self, codes: torch.Tensor, pos: torch.Tensor) -> torch.Tensor:
        j = int(pos)
        self.history[: len(codes), j] = codes[:, 0]
        return self(self.history[: len(codes), : j + 1])[:, -1:]


def reencoding(model: TokLIPTransformer) -> TokLIPTransformer:
    """``model`` with its KV-cached encoder swapped for :class:`ReencodingTokenEncoder` (same weights)."""
    model.token_encoder = ReencodingTokenEncoder(model.token_encoder.encoder, model.token_encoder.codebook)
    return model


def toklip_config_for(encoder: EncoderConfig, tokens: int) -> tp.TokLIPConfig:
    """A TokLIP config with this encoder and grid, a VQ-16 codebook; small VQ convs and text tower (unused here)."""
    side = int(tokens**0.5)
    tiny = tp.resolve_config("toklip-tiny")
    return tiny.replace(name=f"bench-{encoder.width}", image_size=16 * side, embed_dim=encoder.width,
                        encoder=encoder, vq=VQConfig(codebook_size=VOCAB, ch=32, z_channels=64, num_res_blocks=1))


def toklip_for(encoder: EncoderConfig, tokens: int) -> tp.TokLIP:
    """A random TokLIP of :func:`toklip_config_for`."""
    return tp.create_model(toklip_config_for(encoder, tokens), seed=0).eval()


@torch.no_grad()
def step_seconds(model: Transformer, batch: int, tokens: int, steps: int) -> float:
    """Mean seconds of one CFG decode step (call, mix, sample) over evenly spaced positions."""
    device = model.tok_embeddings.weight.device
    cond = torch.cat([torch.arange(batch) % CLASSES, torch.full((batch,), CLASSES)]).to(device)
    with device:
        model.setup_caches(2 * batch, 1 + tokens, model.tok_embeddings.weight.dtype)
    guided_logits(model, None, cond, torch.arange(1, device=device), CFG)
    first = torch.randint(0, VOCAB, (batch, 1), device=device)
    positions = [torch.tensor([1 + int((tokens - 1) * (i + 0.5) / steps)], dtype=torch.int, device=device)
                 for i in range(steps)]

    def decode() -> None:
        x = first
        for input_pos in positions:
            x = sample_logits(guided_logits(model, torch.cat([x, x]), None, input_pos, CFG)[:, -1])

    return best_time(decode, repeats=1, warmup=0) / steps


def bench(setup: Setup, tokens: int, batch: int, steps: int, repeats: int, device: str = "cpu",
          dtype: torch.dtype = torch.float32) -> dict[str, float]:
    kwargs = dict(vocab_size=VOCAB, block_size=tokens, num_classes=CLASSES, **setup.gpt)
    torch.manual_seed(0)
    toklip = toklip_for(setup.encoder, tokens)
    models = {
        "plain": Transformer(model_args("GPT-B", **kwargs)).eval(),
        "cached": TokLIPTransformer(model_args("GPT-B", **kwargs), toklip).eval(),
        "reencode": reencoding(TokLIPTransformer(model_args("GPT-B", **kwargs), toklip)).eval(),
    }
    models = {name: model.to(device, dtype) for name, model in models.items()}
    for model in models.values():
        step_seconds(model, batch, tokens, 2)  # warm-up
    best = {name: float("inf") for name in models}
    for _ in range(repeats):
        for name, model in models.items():
            best[name] = min(best[name], step_seconds(model, batch, tokens, steps))
    result = {name: batch / seconds for name, seconds in best.items()}
    # the fused step adds one encoder row per image to two GPT rows (CFG): its FLOP floor
    result["floor"] = 1 + linear_params(toklip.encoder.blocks) / (2 * linear_params(models["plain"]))
    return result


def linear_params(module: torch.nn.Module) -> int:
    """Weights that every token multiplies (Linear layers; embeddings are look-ups)."""
    return sum(m.weight.numel() for m in module.modules() if isinstance(m, torch.nn.Linear))


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", default="tiny,gpt-b", help=f"comma-separated, from {', '.join(SETUPS)}")
    parser.add_argument("--tokens", default="256,576", help="comma-separated grid sizes in tokens (squares)")
    parser.add_argument("--batch", type=int, default=1, help="images per generate() call (x2 rows with CFG)")
    parser.add_argument("--steps", type=int, default=16, help="decode steps timed per round and model")
    parser.add_argument("--repeats", type=int, default=3, help="rounds; the best round counts")
    parser.add_argument("--threads", type=int, default=1,
                        help="torch threads (default 1: per-token matmuls gain little from more, and "
                             "multi-threaded timings on a shared machine are noisy)")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    print(f"CPU, {args.threads} threads, batch {args.batch} (+{args.batch} CFG rows), fp32; "
          f"codes/s from {args.steps} steps x best of {args.repeats} rounds (higher is better)\n")
    rows = []
    for name in args.models.split(","):
        for tokens in (int(t) for t in args.tokens.split(",")):
            r = bench(SETUPS[name], tokens, args.batch, args.steps, args.repeats)
            ratios = [r["plain"] / r["cached"], r["floor"], r["plain"] / r["reencode"]]
            rows.append([SETUPS[name].name, tokens, r["plain"], r["cached"], r["reencode"],
                         *(f"{x:.2f}x" for x in ratios)])
    print_table(["setup", "tokens", "plain", "fused+cache", "fused re-encode", "cache / plain", "FLOP floor",
                 "re-encode / plain"], rows)


if __name__ == "__main__":
    main()
