"""Images/s and peak memory of one TokLIP training step, and where its time goes.

    python benchmarks/train_step.py                       # toklip-tiny and toklip-b16, CPU
    python benchmarks/train_step.py --models toklip-tiny --batch 16 --steps 5

Each (model, gradient checkpointing) pair runs in its own process so that peak memory (max RSS on
CPU, ``max_memory_allocated`` on CUDA) belongs to that setting alone. A step is the trainer's own
``Trainer.train_step`` on random images: VQ tokenisation, frozen text tower, frozen teacher at its
resolution, token encoder forward/backward, AdamW. Weights are random (no downloads); the teacher
of toklip-b16 is open_clip's ViT-B-16-SigLIP2-256 architecture. The split of a step: the frozen VQ
tokenizer, text tower and teacher are each timed alone on a batch of the same size (``vq_share``,
``text_share``, ``teacher_share``); the rest, ``student_share``, is the token encoder's forward and
backward and the optimizer.
"""
from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time
from typing import Callable

import torch

TEACHERS = {"toklip-tiny": ["teacher.timm_kwargs={embed_dim: 64, depth: 2, num_heads: 4}"],
            "toklip-b16": ["teacher.open_clip=ViT-B-16-SigLIP2-256"],
            "toklip-l": ["teacher.open_clip=ViT-SO400M-16-SigLIP2-384"]}  # benchmarks/gpu.sh
SHARES = ("vq", "text", "teacher", "student")  # the parts of a step, as shares of its time


def measure(model: str, checkpointing: bool, batch: int, steps: int, device: str, precision: str = "fp32") -> dict:
    from toklip_plugin.train.config import load_train_config
    from toklip_plugin.train.loop import Trainer

    config = load_train_config("toklip-tiny", [
        f"model.name={model}", *TEACHERS[model], f"optim.batch_size={batch}", f"run.device={device}",
        f"run.grad_checkpointing={str(checkpointing).lower()}", f"run.precision={precision}", "run.output_dir=unused",
        "run.text_cache_size=0"])  # random captions never repeat: the step runs the text tower
    trainer = Trainer(config)
    trainer.wrapped.train()
    size, context = trainer.model.image_size, trainer.model.config.text["context_length"]
    dev = trainer.env.device

    def batches():
        while True:
            yield {"images": torch.rand(batch, 3, size, size, device=dev) * 2 - 1,
                   "text": torch.randint(0, 1000, (batch, context), device=dev), "skipped": torch.tensor(0)}

    stream = batches()
    trainer.train_step(stream)  # warm-up
    if dev.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    # the frozen parts of a step, each timed alone on a fresh batch; the rest is the student
    parts = {"vq": lambda b: trainer.model.tokenize(b["images"]),
             "text": lambda b: trainer.model.encode_text(b["text"]),
             "teacher": lambda b: trainer.teacher.image_features(b["images"])}
    step_times, part_times = [], {name: [] for name in parts}
    for _ in range(steps):
        step_times.append(_timed(lambda: trainer.train_step(stream), dev))
        probe = next(stream)
        for name, part in parts.items():
            with torch.no_grad(), trainer._autocast():
                part_times[name].append(_timed(lambda: part(probe), dev))
    step = _median(step_times)
    shares = {f"{name}_share": _median(times) / step for name, times in part_times.items()}
    shares["student_share"] = max(0.0, 1.0 - sum(shares.values()))  # forward, backward and AdamW
    peak = (torch.cuda.max_memory_allocated() if dev.type == "cuda"
            else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024)
    return {"model": model, "grad_ckpt": checkpointing, "precision": precision, "batch": batch,
            "images_per_s": batch / step, "step_s": step, "peak_mib": peak / 2**20, **shares}


def _timed(fn: Callable[[], object], device: torch.device) -> float:
    start = time.perf_counter()
    fn()
    _sync(device)
    return time.perf_counter() - start


def _median(values: list[float]) -> float:
    return sorted(values)[len(values) // 2]


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", nargs="+", default=["toklip-tiny", "toklip-b16"], choices=sorted(TEACHERS))
    parser.add_argument("--batch", type=int, default=None, help="default: 16 for tiny, 4 for b16")
    parser.add_argument("--steps", type=int, default=3, help="timed steps (the median is reported)")
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    parser.add_argument("--precision", default="fp32", choices=["fp32", "bf16", "fp16"])
    parser.add_argument("--one", nargs=2, metavar=("MODEL", "CKPT"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.one:
        model, ckpt = args.one
        batch = args.batch or (16 if model == "toklip-tiny" else 4)
        print(json.dumps(measure(model, ckpt == "1", batch, args.steps, args.device, args.precision)))
        return
    print(f"{'model':<12} {'grad ckpt':>9} {'batch':>5} {'images/s':>9} {'step s':>8} {'peak MiB':>9} "
          + " ".join(f"{name + ' share':>13}" for name in SHARES))
    for model in args.models:
        for ckpt in ("0", "1"):
            cmd = [sys.executable, __file__, "--one", model, ckpt, "--steps", str(args.steps), "--device", args.device,
                   "--precision", args.precision]
            if args.batch:
                cmd += ["--batch", str(args.batch)]
            row = json.loads(subprocess.run(cmd, check=True, capture_output=True, text=True).stdout.splitlines()[-1])
            print(f"{row['model']:<12} {str(row['grad_ckpt']):>9} {row['batch']:>5} {row['images_per_s']:>9.2f} "
                  f"{row['step_s']:>8.3f} {row['peak_mib']:>9.0f} "
                  + " ".join(f"{row[name + '_share']:>13.1%}" for name in SHARES))


if __name__ == "__main__":
    main()
