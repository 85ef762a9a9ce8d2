"""Resume latency: seconds from a resumed ``toklip-train`` start to its first optimizer step.

    python -m benchmarks.resume                      # toklip-tiny, resumed at step 100 and 10,000
    python -m benchmarks.resume --at 100 1000 --batch-size 8

The run trains ``toklip-tiny`` on a synthetic webdataset shard set (128 samples in 8 shards, so a
resume at step 10,000 of batch 8 lies 625 epochs in). Its checkpoint at step ``N`` is written once
per setting, then a new :class:`Trainer` is timed from construction through ``resume()`` to the
end of its first ``train_step``, in two ways:

- **data cursors**: the checkpoint holds every data slot's ``(epoch, records)`` cursor, and the
  resumed stream passes over the records before it without decoding them (the current trainer);
- **replay**: the checkpoint holds only the batch count, as checkpoints did before cursors were
  saved; the stream decodes and transforms every sample up to batch ``N`` and drops it (the
  trainer's behaviour before cursors, still its fallback for such checkpoints).

Both resume the same model and optimizer state; only the data position differs.
"""
from __future__ import annotations

import argparse
import tempfile
import time
import warnings
from pathlib import Path

from benchmarks.common import print_table
from toklip_plugin.demo.synthetic import make_samples, write_shards
from toklip_plugin.train import Trainer, load_train_config
from toklip_plugin.train.state import save_checkpoint

SAMPLES, PER_SHARD = 128, 16


def _config(data: str, out: Path, batch: int, steps: int):
    return load_train_config("toklip-tiny", [
        "data.kind=wds", f"data.train={data}", "data.shuffle_buffer=16", f"optim.batch_size={batch}",
        f"optim.steps={steps}", "optim.warmup_steps=1", f"run.output_dir={out}", "run.device=cpu",
        "run.precision=fp32", "run.report_to=none", "run.save_every=1000000"])


def _cursor_after(batches: int, batch: int) -> list[int]:
    """The one slot's (epoch, records) after ``batches`` batches: every synthetic sample decodes, so the slot has
    consumed ``batches * batch`` records, ``SAMPLES`` per epoch (a batch may span two epochs)."""
    consumed = batches * batch
    return [(consumed - 1) // SAMPLES, (consumed - 1) % SAMPLES + 1]


def write_checkpoint(data: str, out: Path, at: int, batch: int, cursors: bool) -> None:
    """A checkpoint at step ``at`` of a one-process run: the state of a fresh trainer with the position of step
    ``at`` (with or without data cursors)."""
    trainer = Trainer(_config(data, out, batch, at + 1))
    state = trainer.state()
    state["step"] = at
    state["data"] = {"batches": at, "skipped": 0}
    if cursors:
        state["data"].update(workers=1, next_worker=0, cursors=[_cursor_after(at, batch)])
    save_checkpoint(out / "checkpoints", at, state, keep_last=1)


def seconds_to_first_step(data: str, out: Path, at: int, batch: int) -> float:
    """Wall time from building the trainer to the end of its first step after resuming at step ``at``."""
    start = time.perf_counter()
    trainer = Trainer(_config(data, out, batch, at + 1))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the replay setting's "no data cursors" warning
        if not trainer.resume():
            raise RuntimeError(f"no checkpoint in {out}")
    trainer.student.train()
    trainer.train_step(trainer.batches())
    return time.perf_counter() - start


def measure(at: int, batch: int, workdir: Path) -> dict[str, float]:
    """``{"cursors": s, "replay": s}`` for a resume at step ``at``."""
    data = write_shards(make_samples(SAMPLES, seed=0), workdir / "data", per_shard=PER_SHARD)
    seconds = {}
    for setting in ("cursors", "replay"):
        out = workdir / f"run-{setting}-{at}"
        write_checkpoint(data, out, at, batch, cursors=setting == "cursors")
        seconds[setting] = seconds_to_first_step(data, out, at, batch)
    return seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--at", type=int, nargs="+", default=[100, 10_000], help="steps to resume at")
    parser.add_argument("--batch-size", type=int, default=8)
    args = parser.parse_args()
    rows = []
    with tempfile.TemporaryDirectory() as folder:
        for at in args.at:
            s = measure(at, args.batch_size, Path(folder))
            rows.append([f"resume toklip-tiny at step {at} b{args.batch_size}", s["cursors"], s["replay"],
                         s["replay"] / s["cursors"]])
    print_table(["workload", "data cursors s", "replay s", "replay / cursors"], rows)


if __name__ == "__main__":
    main()
