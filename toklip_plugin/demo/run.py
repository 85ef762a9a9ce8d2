"""``toklip-demo``: the whole TokLIP recipe end to end on a CPU, in minutes, with no downloads.

1. Generate an image-caption data set of coloured shapes; write the training split as webdataset
   shards and keep a held-out split.
2. Train a small SigLIP-style teacher on pixels and set up the frozen VQ (hand-set encoder,
   k-means codebook); both stand in for the paper's off-the-shelf SigLIP2 and VQ-16 and are
   shared by every student seed.
3. ``build_code_cache`` (``toklip-train --build-cache``) reads the shards through the webdataset
   loader, the frozen VQ, the tokenizer and the teacher, once.
4. Train ``toklip-tiny`` students with ``toklip-train``'s Trainer on that cache, with the paper's
   objective (softmax InfoNCE, no bias, + 1000 x MSE of the l2-normalised pooled embeddings):
   encoder initialised from the teacher's ViT with distillation, and the two ablations (no
   distillation; random initialisation), each over several seeds.
5. Print zero-shot top-1 and retrieval R@1 on the held-out split as mean +- std over the seeds,
   say whether the paper's ordering shows, write ``results.json``, loss curves and a t-SNE of
   student vs teacher embeddings.
"""
from __future__ import annotations

import argparse
import dataclasses
import shutil
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Sequence

import torch
from safetensors.torch import save_file

from .. import TokLIP, TokLIPConfig, get_tokenizer, image_transform
from ..evaluation.features import plot_tsne
from ..evaluation.heldout import EVAL_CACHE_KEYS, embedding_metrics
from ..models.teacher import SigLIPTeacher
from ..models.vq import VQModel
from ..threads import torch_threads
from ..train import Trainer, TrainConfig, build_code_cache, load_train_config
from . import report
from .synthetic import Sample, class_names, class_prompt, make_samples, write_shards
from .teacher import teacher_image_embeddings, train_teacher
from .vq import build_demo_vq

__all__ = ["DemoSettings", "run_demo", "cache_from_shards", "main"]

TRAIN_CONFIG = "toklip-tiny"
# The paper's objective (Eq. 2 and the official distillation), passed explicitly so the demo does not
# depend on the config's defaults; an InfoNCE model has no logit_bias (the teacher, a SigLIP, keeps its own).
OBJECTIVE = ("loss.contrastive=infonce", "loss.distill_weight=1000", "model.overrides={init_logit_bias: null}")
TEACHER = "teacher (tiny SigLIP on pixels)"
PerSeed = dict[str, dict[int, dict[str, float]]]  # row -> seed -> held-out metrics
MAIN = "TokLIP student (init + distill)"
# row name -> (run folder, overrides on top of OBJECTIVE)
STUDENTS = {
    MAIN: ("student", ()),
    "ablation: no distillation": ("no-distill", ("loss.distill_weight=0",)),
    "ablation: random init": ("random-init", ("model.init=null",)),
}


@dataclass(frozen=True)
class DemoSettings:
    train_size: int = 2000
    test_size: int = 400
    per_shard: int = 500
    teacher_steps: int = 1200
    student_steps: int = 300
    batch_size: int = 64
    seed: int = 0  # data, teacher and VQ; the students use seed, seed + 1, ...
    seeds: int = 3

    @classmethod
    def quick(cls) -> "DemoSettings":
        return cls(train_size=500, test_size=200, per_shard=200, teacher_steps=300, student_steps=100)

    @property
    def student_seeds(self) -> list[int]:
        return list(range(self.seed, self.seed + self.seeds))


@dataclass
class Split:
    images: torch.Tensor  # [n, 3, S, S] in [-1, 1]
    text: torch.Tensor  # [n, L] token ids of the captions
    labels: torch.Tensor
    caption_ids: torch.Tensor  # equal ids <=> equal captions


@dataclass
class Frozen:
    """Where the frozen parts the students read by path are: teacher and VQ weights, the two caches."""

    teacher: Path
    vq: Path
    eval_cache: Path
    train_cache: Path


def make_splits(samples: Sequence[Sample], train_size: int, model_config: TokLIPConfig) -> tuple[Split, Split]:
    """The training and held-out splits as tensors, captions numbered across both."""
    tokenizer, transform = get_tokenizer(model_config), image_transform(model_config.image_size)
    index: dict[str, int] = {}
    for sample in samples:
        index.setdefault(sample.caption, len(index))

    def split(part: Sequence[Sample]) -> Split:
        return Split(torch.stack([transform(s.image) for s in part]), tokenizer([s.caption for s in part]),
                     torch.tensor([s.label for s in part]), torch.tensor([index[s.caption] for s in part]))

    return split(samples[:train_size]), split(samples[train_size:])


def demo_train_config(frozen: Frozen, *overrides: str) -> TrainConfig:
    """``configs/train/toklip-tiny.yaml`` with the demo's frozen parts, the paper's objective and ``overrides``."""
    return load_train_config(TRAIN_CONFIG, [f"teacher.checkpoint={frozen.teacher}",
                                            f"model.vq_checkpoint={frozen.vq}", *OBJECTIVE, *overrides])


def cache_from_shards(frozen: Frozen, shards: str, out: Path) -> dict:
    """``toklip-train --build-cache``: the shards through the webdataset loader, frozen VQ and teacher."""
    return build_code_cache(demo_train_config(frozen, "data.kind=wds", f"data.train={shards}"), out)


def write_eval_cache(path: Path, vq: VQModel, test: Split, class_text: torch.Tensor) -> torch.Tensor:
    """The held-out cache the trainer's evaluation hook reads (:data:`EVAL_CACHE_KEYS`); returns its codes."""
    with torch.no_grad():
        codes = torch.cat([vq.tokenize(chunk) for chunk in test.images.split(64)])
    tensors = {"codes": codes, "text": test.text, "labels": test.labels, "caption_ids": test.caption_ids,
               "class_text": class_text}
    path.parent.mkdir(parents=True, exist_ok=True)
    save_file({key: tensors[key].contiguous() for key in EVAL_CACHE_KEYS}, str(path))
    return codes


def train_student(frozen: Frozen, run_dir: Path, overrides: Sequence[str], seed: int,
                  settings: DemoSettings) -> tuple[dict[str, float], TokLIP]:
    """One student trained by ``toklip-train``'s Trainer on the code cache: its held-out metrics, scored by
    the trainer's own evaluation hook (``run.eval_data``) after the last step, and the trained model."""
    steps = settings.student_steps
    config = demo_train_config(
        frozen, "data.kind=cache", f"data.train={frozen.train_cache}", f"run.output_dir={run_dir}",
        f"run.eval_data={frozen.eval_cache}", f"run.eval_every={steps}", f"run.save_every={steps}",
        "run.keep_last=1", "run.log_every=5", f"run.seed={seed}", f"optim.steps={steps}",
        f"optim.batch_size={settings.batch_size}", "optim.lr=1e-3", "optim.warmup_steps=20",
        "optim.weight_decay=0.05", *overrides)
    trainer = Trainer(config)
    last = trainer.fit()
    return {metric: last[metric] for metric in report.METRICS}, trainer.model.eval()


@torch.no_grad()
def student_image_embeddings(model: TokLIP, codes: torch.Tensor) -> torch.Tensor:
    return torch.cat([model.pool_tokens(model.encode_codes(chunk)) for chunk in codes.split(256)])


def write_training_shards(out: Path, settings: DemoSettings, model_config: TokLIPConfig) -> tuple[str, Split, Split]:
    """The data set: training split as webdataset shards (their brace pattern) plus both splits as tensors."""
    samples = make_samples(settings.train_size + settings.test_size, settings.seed, model_config.image_size)
    shards = write_shards(samples[: settings.train_size], out / "data", per_shard=settings.per_shard, prefix="train")
    print(f"[demo] {settings.train_size} training samples written to {shards}; {settings.test_size} held out")
    return (shards, *make_splits(samples, settings.train_size, model_config))


def build_frozen_parts(out: Path, settings: DemoSettings, config: TrainConfig,
                       train: Split) -> tuple[Frozen, SigLIPTeacher, VQModel, list[float]]:
    """Train the teacher (``config.teacher``'s shape, which the trainer rebuilds from the saved weights), set up
    the VQ and save both: one run shared by every student seed. Also returns the teacher's loss per step."""
    model_config = config.model_config()
    teacher, losses = train_teacher(config.teacher.timm_kwargs, model_config, train.images, train.text,
                                    settings.teacher_steps, settings.batch_size, settings.seed)
    vq = build_demo_vq(model_config, train.images, settings.seed)
    frozen = Frozen(out / "teacher.safetensors", out / "vq.safetensors", out / "cache" / "heldout.safetensors",
                    out / "cache" / "train")
    save_file({k: v.contiguous() for k, v in teacher.state_dict().items()}, str(frozen.teacher))
    save_file(vq.state_dict(), str(frozen.vq))
    return frozen, teacher, vq, losses


@torch.no_grad()
def evaluate_teacher(teacher: SigLIPTeacher, test: Split,
                     class_text: torch.Tensor) -> tuple[dict[str, float], torch.Tensor]:
    """The teacher's held-out metrics on pixels, and its held-out image embeddings."""
    image_emb = teacher_image_embeddings(teacher, test.images)
    metrics = embedding_metrics(image_emb, teacher.encode_text(test.text), teacher.encode_text(class_text),
                                test.labels, test.caption_ids)
    return metrics, image_emb


def train_students(out: Path, frozen: Frozen, settings: DemoSettings) -> tuple[PerSeed, dict[str, list[Path]], TokLIP]:
    """Every student row at every seed: ``{row: {seed: metrics}}``, ``{row: [run dirs]}`` and the first
    seed's main student."""
    per_seed: PerSeed = {name: {} for name in STUDENTS}
    run_dirs: dict[str, list[Path]] = {name: [] for name in STUDENTS}
    shutil.rmtree(out / "students", ignore_errors=True)  # a rerun trains afresh instead of resuming
    first_main = None
    for i, seed in enumerate(settings.student_seeds):
        for name, (folder, overrides) in STUDENTS.items():
            print(f"[demo] seed {seed} ({i + 1}/{settings.seeds}): {name}")
            run_dirs[name].append(out / "students" / f"seed{seed}" / folder)
            per_seed[name][seed], model = train_student(frozen, run_dirs[name][-1], overrides, seed, settings)
            first_main = first_main or (model if name == MAIN else None)
    return per_seed, run_dirs, first_main


def run_demo(out: Path, settings: DemoSettings) -> dict:
    """The whole demo (module docstring); returns what it writes to ``results.json``."""
    start = time.perf_counter()
    config = load_train_config(TRAIN_CONFIG, OBJECTIVE)  # the students' model and teacher
    class_text = get_tokenizer(config.model_config())([class_prompt(name) for name in class_names()])
    shards, train, test = write_training_shards(out, settings, config.model_config())
    frozen, teacher, vq, teacher_losses = build_frozen_parts(out, settings, config, train)
    test_codes = write_eval_cache(frozen.eval_cache, vq, test, class_text)
    cache = cache_from_shards(frozen, shards, frozen.train_cache)
    print(f"[demo] code cache: {cache['samples']} samples from the shards ({cache['skipped']} skipped)")
    teacher_metrics, teacher_emb = evaluate_teacher(teacher, test, class_text)
    per_seed, run_dirs, main_student = train_students(out, frozen, settings)
    rows = {TEACHER: report.summarize({settings.seed: teacher_metrics}),
            **{name: report.summarize(per_seed[name]) for name in STUDENTS}}
    ordering = report.paper_ordering(rows, MAIN, [name for name in STUDENTS if name != MAIN])
    _write_pictures(out, teacher_losses, run_dirs, teacher_emb, student_image_embeddings(main_student, test_codes),
                    test.labels, settings.seed)
    results = {"settings": dataclasses.asdict(settings), "objective": list(OBJECTIVE),
               "student_seeds": settings.student_seeds, "shared_by_seeds": ["data", "teacher", "vq"],
               "training_cache": {**cache, "shards": shards, "samples_written": settings.train_size},
               "rows": rows, "paper_ordering": ordering, "seconds": round(time.perf_counter() - start, 1)}
    _print_report(out, results, 1 / len(class_names()))
    report.write_results(out / "results.json", **results)
    return results


def _write_pictures(out: Path, teacher_losses, run_dirs, teacher_emb, student_emb, labels, seed: int) -> None:
    report.plot_losses(out / "loss_curves.png", teacher_losses, run_dirs)
    shown = slice(0, 300)  # the paper's Figure 3: t-SNE of teacher and student image embeddings
    plot_tsne({"teacher": teacher_emb[shown], "TokLIP student": student_emb[shown]}, labels[shown],
              out / "tsne_student_vs_teacher.png", names=("teacher", "TokLIP student"), seed=seed)


def _print_report(out: Path, results: dict, chance: float) -> None:
    seeds = ", ".join(map(str, results["student_seeds"]))
    text = "\n".join([
        report.format_table(results["rows"], chance), "",
        (f"students: mean ± std (n-1) over seeds {seeds}; the teacher and the VQ are one run shared by every "
         "seed (as the paper's off-the-shelf SigLIP2 and VQ-16)"),
        report.format_ordering(results["paper_ordering"], MAIN)])
    (out / "results.txt").write_text(text + "\n")
    print("\n" + text)
    print(f"\n[demo] wrote {out / 'results.json'}, {out / 'loss_curves.png'}, {out / 'tsne_student_vs_teacher.png'}; "
          f"the first seed's student is exported under {out / 'students'}; {results['seconds']:.0f} s")


def main(argv: Optional[Sequence[str]] = None) -> None:
    argv = sys.argv[1:] if argv is None else list(argv)
    if argv[:1] == ["unified"]:  # toklip-demo unified: needs LLaVA, so imported only when asked for
        from .unified import main as unified_main

        return unified_main(argv[1:])
    parser = argparse.ArgumentParser(prog="toklip-demo", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter,
                                     epilog="toklip-demo unified [--quick] [--out DIR] [--threads N]: the unified "
                                            "LLaVA-Qwen2 that reads and draws the shapes (toklip-demo unified --help)")
    parser.add_argument("--out", default="toklip-demo-out", help="output folder (default: %(default)s)")
    parser.add_argument("--quick", action="store_true", help="a smaller setting (two or three minutes), for CI")
    parser.add_argument("--seed", type=int, default=0, help="seed of the data, teacher and VQ; the first student seed")
    parser.add_argument("--seeds", type=int, default=3, help="student seeds per row (default: %(default)s)")
    parser.add_argument("--threads", type=int, default=None,
                        help="torch CPU threads (default: torch's). The models are tiny: on a busy machine "
                             "--threads 1 is many times faster than threads that wait for each other")
    args = parser.parse_args(argv)
    for name in ("seeds", "threads"):
        if getattr(args, name) is not None and getattr(args, name) < 1:
            parser.error(f"--{name} must be at least 1, got {getattr(args, name)}")
    settings = DemoSettings.quick() if args.quick else DemoSettings()
    with torch_threads(args.threads):
        run_demo(Path(args.out), dataclasses.replace(settings, seed=args.seed, seeds=args.seeds))


if __name__ == "__main__":
    main()
