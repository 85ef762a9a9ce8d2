"""Sampling speed on CPU: plain LlamaGen GPT vs fused TokLIP GPT (KV-cached encoder) vs re-encoding.

    python benchmarks/generate.py                       # tiny and GPT-B-sized, 256 and 576 tokens
    python benchmarks/generate.py --models tiny --tokens 256 --batch 1   # quicker

Codes/s counts generated codes (batch x tokens), with classifier-free guidance (scale 2.5,
so the GPT runs on 2 x batch rows), top-k 0, top-p 1.0, temperature 1.0, random weights.
``plain`` and ``fused+cache`` generate whole images through the same driver as LlamaGen's
``generate()``. ``re-encode`` (the encoder re-reads the whole prefix at every step) costs
O(N^2), so it is timed on ``--reencode-steps`` decode steps at evenly spaced positions and
extrapolated to all N steps (step cost does not depend on the codes, only on the position).
Goal: fused+cache within 1.3x of plain.
"""
from __future__ import annotations

import argparse
import time
from dataclasses import dataclass

import torch

import toklip_plugin as tp
from toklip_plugin.config import EncoderConfig, VQConfig
from toklip_plugin.integrations.llamagen.fused import TokLIPTransformer
from toklip_plugin.integrations.llamagen.gpt import Transformer, model_args
from toklip_plugin.integrations.llamagen.sampling import generate

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


class ReencodingTransformer(TokLIPTransformer):
    """The naive fused GPT: at every decode step the encoder re-reads the whole prefix."""

    def setup_caches(self, max_batch_size: int, max_seq_length: int, dtype: torch.dtype) -> None:
        super().setup_caches(max_batch_size, max_seq_length, dtype)
        self.history = torch.zeros(max_batch_size, self.block_size, dtype=torch.long)

    def _decode_features(self, idx: torch.Tensor, input_pos: torch.Tensor) -> torch.Tensor:
        rows = len(idx) // 2 if self.cfg_halves else len(idx)
        j = int(input_pos) - self.cls_token_num
        self.history[:rows, j] = idx[:rows, 0]
        features = self.toklip(self.history[:rows, : j + 1])[:, -1:]
        return features.repeat(len(idx) // rows, 1, 1)


def toklip_for(encoder: EncoderConfig, tokens: int) -> tp.TokLIP:
    """A random TokLIP with this encoder and grid; small VQ convs and text tower (unused here)."""
    side = int(tokens**0.5)
    tiny = tp.resolve_config("toklip-tiny")
    config = tiny.replace(name=f"bench-{encoder.width}", image_size=16 * side, embed_dim=encoder.width,
                          encoder=encoder, vq=VQConfig(codebook_size=VOCAB, ch=32, z_channels=64, num_res_blocks=1))
    return tp.create_model(config, seed=0).eval()


def timed_generate(model: Transformer, batch: int, tokens: int) -> float:
    cond = torch.arange(batch) % CLASSES
    generate(model, cond, 8, cfg_scale=CFG)  # warm-up
    start = time.perf_counter()
    generate(model, cond, tokens, cfg_scale=CFG)
    return batch * tokens / (time.perf_counter() - start)


@torch.no_grad()
def timed_reencode(model: ReencodingTransformer, batch: int, tokens: int, steps: int) -> float:
    """Codes/s extrapolated from ``steps`` decode steps at evenly spaced positions."""
    cond = torch.cat([torch.arange(batch) % CLASSES, torch.full((batch,), CLASSES)])
    model.setup_caches(2 * batch, 1 + tokens, torch.float32)
    start = time.perf_counter()
    model(None, cond, torch.arange(1))
    prefill = time.perf_counter() - start
    x = torch.randint(0, VOCAB, (batch, 1)).repeat(2, 1)
    positions = [int(tokens * (i + 0.5) / steps) for i in range(steps)]
    start = time.perf_counter()
    for p in positions:
        model(x, None, torch.tensor([1 + p], dtype=torch.int))
    per_step = (time.perf_counter() - start) / steps
    return batch * tokens / (prefill + (tokens - 1) * per_step)


def bench(setup: Setup, tokens: int, batch: int, reencode_steps: int) -> dict:
    kwargs = dict(vocab_size=VOCAB, block_size=tokens, num_classes=CLASSES, **setup.gpt)
    torch.manual_seed(0)
    plain = Transformer(model_args("GPT-B", **kwargs)).eval()
    toklip = toklip_for(setup.encoder, tokens)
    fused = TokLIPTransformer(model_args("GPT-B", **kwargs), toklip).eval()
    reencode = ReencodingTransformer(model_args("GPT-B", **kwargs), toklip).eval()
    return {
        "plain": timed_generate(plain, batch, tokens),
        "cached": timed_generate(fused, batch, tokens),
        "reencode": timed_reencode(reencode, batch, tokens, reencode_steps),
    }


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", default="tiny,gpt-b", help=f"comma-separated, from {', '.join(SETUPS)}")
    parser.add_argument("--tokens", default="256,576", help="comma-separated grid sizes in tokens (squares)")
    parser.add_argument("--batch", type=int, default=2, help="images per generate() call (x2 rows with CFG)")
    parser.add_argument("--reencode-steps", type=int, default=12, help="decode steps timed for re-encode")
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    print(f"CPU, {args.threads} threads, batch {args.batch}, cfg {CFG}, fp32; codes/s (higher is better)\n")
    print(f"| {'setup':38s} | tokens | plain | fused+cache | fused re-encode | cache / plain | re-encode / plain |")
    print(f"|{'-' * 40}|--------|-------|-------------|-----------------|---------------|-------------------|")
    for name in args.models.split(","):
        for tokens in (int(t) for t in args.tokens.split(",")):
            r = bench(SETUPS[name], tokens, args.batch, args.reencode_steps)
            print(f"| {SETUPS[name].name:38s} | {tokens:6d} | {r['plain']:5.1f} | {r['cached']:11.1f} | "
                  f"{r['reencode']:15.1f} | {r['plain'] / r['cached']:12.2f}x | {r['plain'] / r['reencode']:16.2f}x |",
                  flush=True)


if __name__ == "__main__":
    main()
