"""Images/s and peak memory of one TokLIP training step, and where its time goes.

    python -m benchmarks.train_step                       # toklip-tiny and toklip-b16, CPU
    python -m benchmarks.train_step --models toklip-tiny --batch 16 --steps 5

Each (model, gradient checkpointing) pair runs in its own process so that peak memory (max RSS on
CPU, ``max_memory_allocated`` on CUDA) belongs to that setting alone. A step is the trainer's own
``Trainer.train_step`` on random images: VQ tokenisation, frozen text tower, frozen teacher at its
resolution, token encoder forward/backward, AdamW. Weights are random (no downloads); the teacher
of toklip-b16 is open_clip's ViT-B-16-SigLIP2-256 architecture. The split of a step: the frozen
targets (``Trainer.targets``: ``codes``, ``text``, ``teacher_features``, which run under the run's
precision as in the step) are each timed alone on a batch of the same size (``vq_share``,
``text_share``, ``teacher_share``); the rest, ``student_share``, is the token encoder's forward and
backward and the optimizer. Times are the best of ``--steps`` runs (at least three), after one warm-up run.
"""
from __future__ import annotations

import argparse
import itertools
import json
import resource
import subprocess
import sys
from pathlib import Path
from typing import Iterator, Optional

import torch

from benchmarks.common import best_time, print_table
from toklip_plugin.train import Trainer, load_train_config

ROOT = Path(__file__).resolve().parents[1]  # where ``python -m benchmarks.train_step`` runs
TEACHERS = {"toklip-tiny": ["teacher.timm_kwargs={embed_dim: 64, depth: 2, num_heads: 4}"],
            "toklip-b16": ["teacher.open_clip=ViT-B-16-SigLIP2-256"],
            "toklip-l": ["teacher.open_clip=ViT-SO400M-16-SigLIP2-384"]}  # benchmarks/gpu.sh
SHARES = ("vq", "text", "teacher", "student")  # the parts of a step, as shares of its time
# a share is the ratio of two best-of times: with a single run of each, one scheduler hiccup on a loaded machine
# can make a part look slower than the whole step, so even --steps 1 takes the best of three
MIN_REPEATS = 3


def measure(model: str, checkpointing: bool, batch: int, steps: int, device: str, precision: str = "fp32") -> dict:
    """One setting in this process: images/s, seconds and peak MiB of a step, and the shares of its parts."""
    trainer = Trainer(load_train_config("toklip-tiny", [
        f"model.name={model}", *TEACHERS[model], f"optim.batch_size={batch}", f"run.device={device}",
        f"run.grad_checkpointing={str(checkpointing).lower()}", f"run.precision={precision}", "run.output_dir=unused",
        "run.text_cache_size=0"]))  # random captions never repeat: the step runs the text tower
    trainer.student.train()
    stream = random_batches(trainer, batch)
    trainer.train_step(stream)  # warm-up (also allocates the optimizer state)
    if trainer.targets.device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    repeats = max(steps, MIN_REPEATS)
    step = best_time(lambda: trainer.train_step(stream), repeats=repeats, warmup=0)
    targets = trainer.targets
    probe = {key: value.to(targets.device) for key, value in next(stream).items()}
    parts = {"vq": lambda: targets.codes(probe["images"]), "text": lambda: targets.text(probe["text"]),
             "teacher": lambda: targets.teacher_features(probe["images"])}
    shares = {f"{name}_share": best_time(part, repeats=repeats) / step for name, part in parts.items()}
    shares["student_share"] = max(0.0, 1.0 - sum(shares.values()))  # forward, backward and AdamW
    return {"model": model, "grad_ckpt": checkpointing, "precision": precision, "batch": batch,
            "images_per_s": batch / step, "step_s": step, "peak_mib": _peak_bytes(trainer.targets.device) / 2**20,
            **shares}


def random_batches(trainer: Trainer, batch: int) -> Iterator[dict[str, torch.Tensor]]:
    """Endless host batches as the trainer's loader yields them: images in [-1, 1], caption ids, the skipped count
    and the data cursor (worker 0, epoch 0, records read so far)."""
    size, context = trainer.model.image_size, trainer.model.config.text["context_length"]
    for index in itertools.count(1):
        yield {"images": torch.rand(batch, 3, size, size) * 2 - 1, "text": torch.randint(0, 1000, (batch, context)),
               "skipped": torch.tensor(0), "cursor": torch.tensor([0, 0, index * batch])}


def _peak_bytes(device: torch.device) -> int:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated()
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def measure_in_subprocess(model: str, checkpointing: bool, steps: int, device: str, precision: str,
                          batch: Optional[int] = None) -> dict:
    """:func:`measure` in a fresh process, so that its peak memory is this setting's alone."""
    cmd = [sys.executable, "-m", "benchmarks.train_step", "--one", model, str(int(checkpointing)),
           "--steps", str(steps), "--device", device, "--precision", precision]
    if batch:
        cmd += ["--batch", str(batch)]
    out = subprocess.run(cmd, check=True, capture_output=True, text=True, cwd=ROOT).stdout
    return json.loads(out.splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", nargs="+", default=["toklip-tiny", "toklip-b16"], choices=sorted(TEACHERS))
    parser.add_argument("--batch", type=int, default=None, help="default: 16 for tiny, 4 for the others")
    parser.add_argument("--steps", type=int, default=3, help="timed steps (the best is reported)")
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    parser.add_argument("--precision", default="fp32", choices=["fp32", "bf16", "fp16"])
    parser.add_argument("--one", nargs=2, metavar=("MODEL", "CKPT"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.one:
        model, ckpt = args.one
        batch = args.batch or (16 if model == "toklip-tiny" else 4)
        print(json.dumps(measure(model, ckpt == "1", batch, args.steps, args.device, args.precision)))
        return
    rows = [measure_in_subprocess(model, ckpt, args.steps, args.device, args.precision, args.batch)
            for model in args.models for ckpt in (False, True)]
    print_table(["model", "grad ckpt", "batch", "images/s", "step s", "peak MiB", *(f"{n} share" for n in SHARES)],
                [[r["model"], r["grad_ckpt"], r["batch"], r["images_per_s"], r["step_s"], r["peak_mib"],
                  *(f"{r[n + '_share']:.1%}" for n in SHARES)] for r in rows])


if __name__ == "__main__":
    main()
