"""Every benchmark in one run: our path and its baseline side by side, with their ratio.

    python -m benchmarks.run                 # CPU: toklip-tiny and toklip-b16, a few minutes
    python -m benchmarks.run --quick         # toklip-tiny only
    python -m benchmarks.run --smoke         # toklip-tiny, tiny batches, one repeat: does every workload run?
    python -m benchmarks.run --device cuda --gpu   # the full-size set that benchmarks/gpu.sh runs

Workloads: tokenizer encode (fused causal SDPA vs the original explicit-mask path vs LLaVA's
CLIP tower of the same width and token count), a training step (with and without gradient
checkpointing, fp32 and bf16), LlamaGen sampling (fused GPT with the KV-cached encoder vs
plain sampling vs re-encoding the prefix), and model FLOPs per image against the measured
matmul rate, and the seconds a resumed training run takes to its first step (data cursors vs
replaying the samples before the checkpoint), and the unified LLaVA-Qwen2's image codes/s (TokLIP
feedback with the KV-cached encoder vs re-encoding the prefix vs no feedback; ``unified_generate.py``).
The table is printed last; ``--json`` also writes the rows.
"""
from __future__ import annotations

import argparse
import functools
import json
import platform
import subprocess
import sys
import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Optional

import torch

from benchmarks import encode, flops, generate, llava_tower, resume, train_step, unified_generate
from benchmarks.common import print_table
from toklip_plugin.threads import torch_threads

# what each workload runs: encode / llava / flops (model, batch), train (model, batch or None for
# train_step's default), generate (setup, tokens), resume (step resumed at, batch), unified (shape, codes, rounds:
# the Qwen2-0.5B-sized round takes minutes on a CPU, so it runs once whatever --repeats says)
PLANS = {
    "full": {"encode": [("toklip-tiny", 8), ("toklip-b16", 8)], "llava": [("toklip-tiny", 4), ("toklip-b16", 4)],
             "train": [("toklip-tiny", None), ("toklip-b16", None)],
             "generate": [("tiny", 256), ("gpt-b", 256), ("gpt-b", 576)],
             "flops": [("toklip-tiny", 8), ("toklip-b16", 8)], "resume": [(100, 8), (10_000, 8)],
             "unified": [("tiny", 64, 3), ("qwen2-0.5b", 64, 1)]},
    "quick": {"encode": [("toklip-tiny", 8)], "llava": [("toklip-tiny", 4)], "train": [("toklip-tiny", None)],
              "generate": [("tiny", 256)], "flops": [("toklip-tiny", 8)], "resume": [(100, 8), (1_000, 8)],
              "unified": [("tiny", 64, 3)]},
    "smoke": {"encode": [("toklip-tiny", 2)], "llava": [("toklip-tiny", 2)], "train": [("toklip-tiny", 2)],
              "generate": [("tiny", 64)], "flops": [("toklip-tiny", 2)], "resume": [(3, 2)],
              "unified": [("tiny", 16, 1)]},
    "gpu": {"encode": [("toklip-l", 64)], "llava": [], "train": [("toklip-l", None)],
            "generate": [("gpt-b-so400m", 576), ("gpt-b", 576)], "flops": [("toklip-l", 64)], "resume": [],
            "unified": []},  # needs a patched LLaVA, which gpu.sh does not install (so does "llava")
}


@dataclass
class Row:
    workload: str
    ours: str
    baseline: str
    ours_value: float
    baseline_value: float
    unit: str
    better: str = "higher"  # which direction of ours/baseline is good; "" for a plain measurement

    @property
    def ratio(self) -> float:
        return self.ours_value / self.baseline_value


@functools.lru_cache(maxsize=None)
def encode_seconds(name: str, batch: int, repeats: int, device: str, dtype: torch.dtype) -> dict[str, float]:
    """``encode.measure``, once per setting: the encode and FLOP rows share the timings."""
    return encode.measure(name, batch, repeats, device, dtype)


def encode_rows(name: str, batch: int, repeats: int, device: str, dtype: torch.dtype) -> list[Row]:
    s = encode_seconds(name, batch, repeats, device, dtype)
    per_s = lambda path: batch / (s["vq"] + s[path])
    return [
        Row(f"encode {name} b{batch}", "fused causal", "explicit -inf mask", per_s("fused"), per_s("explicit"),
            "img/s"),
        Row(f"token encoder {name} b{batch}", "fused causal", "explicit -inf mask", batch / s["fused"],
            batch / s["explicit"], "img/s"),
        Row(f"token encoder {name} b{batch}", "fused causal", "bidirectional", batch / s["fused"],
            batch / s["bidirectional"], "img/s"),
    ]


def llava_rows(name: str, batch: int, repeats: int) -> list[Row]:
    with tempfile.TemporaryDirectory() as folder:
        r = llava_tower.measure(name, batch, repeats, Path(folder))
    label = f"LLaVA tower {name} b{batch}"
    return [Row(label, "TokLIP tower", "LLaVA CLIP tower", r["tower"], r["clip"], "img/s"),
            Row(label, "TokLIP codes given", "LLaVA CLIP tower", r["encoder"], r["clip"], "img/s")]


def train_rows(name: str, batch: Optional[int], steps: int, device: str) -> list[Row]:
    base, ckpt, bf16 = (train_step.measure_in_subprocess(name, checkpointing, steps, device, precision, batch)
                        for checkpointing, precision in ((False, "fp32"), (True, "fp32"), (False, "bf16")))
    label = f"train step {name} b{base['batch']}"
    return [
        Row(label, "grad checkpointing", "no checkpointing", ckpt["images_per_s"], base["images_per_s"], "img/s"),
        Row(label, "grad checkpointing", "no checkpointing", ckpt["peak_mib"], base["peak_mib"], "MiB", "lower"),
        Row(label, "bf16 autocast", "fp32", bf16["images_per_s"], base["images_per_s"], "img/s"),
        *[Row(label, f"{part} share of the step", "whole step", base[f"{part}_share"], 1.0, "share", "")
          for part in ("vq", "text", "teacher", "student")],
    ]


def generate_rows(setup: str, tokens: int, steps: int, repeats: int, device: str, dtype: torch.dtype) -> list[Row]:
    with torch_threads(1 if device == "cpu" else None):  # per-token matmuls gain little from threads
        r = generate.bench(generate.SETUPS[setup], tokens, 1, steps, repeats, device, dtype)
    label = f"sample {generate.SETUPS[setup].name} {tokens} tok"
    return [Row(label, "fused + KV-cached encoder", "plain LlamaGen", r["cached"], r["plain"], "codes/s"),
            Row(label, "fused + KV-cached encoder", "fused, prefix re-encode", r["cached"], r["reencode"], "codes/s")]


def unified_rows(shape: str, codes: int, rounds: int, device: str, dtype: torch.dtype) -> list[Row]:
    with torch_threads(1 if device == "cpu" else None):  # per-token matmuls gain little from threads
        r = unified_generate.bench(unified_generate.SHAPES[shape], codes, rounds, device, dtype)
    label = f"unified {unified_generate.SHAPES[shape].name} {codes} codes"
    return [Row(label, "TokLIP feedback, KV-cached encoder", "re-encode the prefix", r["cached"], r["reencode"],
                "codes/s"),
            Row(label, "TokLIP feedback, KV-cached encoder", "no TokLIP feedback", r["cached"], r["no_feedback"],
                "codes/s")]


def flops_rows(name: str, batch: int, repeats: int, device: str, dtype: torch.dtype) -> list[Row]:
    f = flops.encode_flops(name, device)
    s = encode_seconds(name, batch, repeats, device, dtype)
    achieved = batch * (f["vq_gflops"] + f["encoder_gflops"]) / (s["vq"] + s["fused"])
    peak = flops.matmul_gflops(device, dtype)
    return [Row(f"GFLOPs/img {name}", "token encoder", "frozen VQ encoder", f["encoder_gflops"], f["vq_gflops"],
                "GFLOP", ""),
            Row(f"encode {name} b{batch}", "achieved GFLOP/s", "measured matmul GFLOP/s", achieved, peak, "GFLOP/s")]


def resume_rows(at: int, batch: int) -> list[Row]:
    with tempfile.TemporaryDirectory() as folder:
        s = resume.measure(at, batch, Path(folder))
    return [Row(f"resume toklip-tiny at step {at} b{batch}", "data cursors", "replay past samples", s["cursors"],
                s["replay"], "s to 1st step", "lower")]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    size = parser.add_mutually_exclusive_group()
    size.add_argument("--quick", action="store_true", help="toklip-tiny only")
    size.add_argument("--smoke", action="store_true",
                      help="toklip-tiny, tiny batches, one repeat, 64-token sampling: checks that every workload runs")
    size.add_argument("--gpu", action="store_true", help="full-size models (toklip-l, GPT-B at 576 tokens)")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--json", type=Path, default=None, help="also write the rows here")
    parser.add_argument("--skip", nargs="*", default=[], choices=sorted(PLANS["full"]))
    args = parser.parse_args()
    plan = PLANS["gpu" if args.gpu else "quick" if args.quick else "smoke" if args.smoke else "full"]
    repeats, decode_steps = (1, 2) if args.smoke else (args.repeats, 16)
    dtype = torch.bfloat16 if args.gpu else torch.float32
    runners = {
        "encode": lambda item: encode_rows(*item, repeats, args.device, dtype),
        "llava": lambda item: llava_rows(*item, repeats),
        "train": lambda item: train_rows(*item, repeats, args.device),
        "generate": lambda item: generate_rows(*item, decode_steps, repeats, args.device, dtype),
        "flops": lambda item: flops_rows(*item, repeats, args.device, dtype),
        "resume": lambda item: resume_rows(*item),
        "unified": lambda item: unified_rows(*item, args.device, dtype),
    }
    rows: list[Row] = []
    for workload, items in plan.items():
        for item in items if workload not in args.skip else []:
            print(f"running {workload} {item} ...", file=sys.stderr, flush=True)
            rows.extend(runners[workload](item))
    report(rows, {"torch": torch.__version__, "device": args.device, "threads": torch.get_num_threads(),
                  "dtype": str(dtype), "machine": platform.processor() or platform.machine(), "git": _git_commit()},
           args.json)


def report(rows: list[Row], env: dict, json_path: Optional[Path]) -> None:
    """The table on stdout (last), and the rows with their ratios as JSON when asked."""
    if json_path:
        json_path.write_text(json.dumps({"env": env, "rows": [asdict(r) | {"ratio": r.ratio} for r in rows]},
                                        indent=2))
    print(", ".join(f"{k} {v}" for k, v in env.items()))
    print_table(["workload", "ours", "baseline", "ours value", "baseline value", "unit", "ours/baseline", "better"],
                [[r.workload, r.ours, r.baseline, r.ours_value, r.baseline_value, r.unit, r.ratio, r.better]
                 for r in rows])


def _git_commit() -> str:
    out = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=Path(__file__).resolve().parent,
                         capture_output=True, text=True)
    return out.stdout.strip() or "unknown"


if __name__ == "__main__":
    main()
