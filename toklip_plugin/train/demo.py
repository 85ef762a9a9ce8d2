"""``toklip-demo``: the whole TokLIP recipe end to end on a CPU, in minutes, with no downloads.

1. Generate an image-caption data set of coloured shapes (train shards + a held-out split).
2. Train a small SigLIP-style teacher on pixels (timm ViT, map pooling + open_clip text tower).
3. Tokenize every image once with the frozen VQ (a code cache) and cache the teacher's pooled
   embeddings: both are frozen, so the student steps only run the token encoder.
4. Train ``toklip-tiny`` students with ``toklip-train``'s Trainer: encoder initialised from the
   teacher's ViT blocks, text tower copied from the teacher and frozen, sigmoid loss + distillation;
   plus ablations without distillation and from random initialisation.
5. Print zero-shot top-1 and retrieval R@1 on the held-out split; write loss curves and a t-SNE
   of student vs teacher embeddings as PNG.
"""
from __future__ import annotations

import argparse
import json
import math
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F
from safetensors.torch import save_file
from tqdm import tqdm

from ..evaluation.features import plot_tsne
from ..factory import create_model, get_tokenizer, resolve_config
from ..models.toklip import TokLIP
from ..models.vq import VQModel
from ..transforms import image_transform
from .config import LossSection, load_train_config
from .evaluate import embedding_metrics
from .loop import Trainer
from .losses import TokLIPLoss
from .synthetic import Sample, class_names, class_prompt, make_samples, write_shards
from .teacher import SigLIPTeacher, build_small_teacher

__all__ = ["DemoSettings", "main"]

TEACHER_TIMM_KWARGS = {"embed_dim": 64, "depth": 2, "num_heads": 4, "mlp_ratio": 4.0}
# name -> train-config overrides on top of configs/train/toklip-tiny.yaml
STUDENTS = {
    "TokLIP student (init + distill)": ("student", []),
    "ablation: no distillation": ("no-distill", ["loss.distill_weight=0"]),
    "ablation: random init": ("random-init", ["model.init=null"]),
}


@dataclass(frozen=True)
class DemoSettings:
    train_size: int = 2000
    test_size: int = 400
    teacher_steps: int = 1200
    student_steps: int = 400
    batch_size: int = 64
    seed: int = 0

    @classmethod
    def quick(cls) -> "DemoSettings":
        return cls(train_size=600, test_size=200, teacher_steps=200, student_steps=150)


@dataclass
class Split:
    samples: list[Sample]
    images: torch.Tensor  # [n, 3, S, S] in [-1, 1]
    text: torch.Tensor  # [n, L] token ids of the captions
    labels: torch.Tensor
    caption_ids: torch.Tensor  # equal ids <=> equal captions


def make_split(samples: list[Sample], tokenizer, transform, caption_index: dict[str, int]) -> Split:
    captions = [s.caption for s in samples]
    for caption in captions:
        caption_index.setdefault(caption, len(caption_index))
    return Split(samples, torch.stack([transform(s.image) for s in samples]), tokenizer(captions),
                 torch.tensor([s.label for s in samples]), torch.tensor([caption_index[c] for c in captions]))


# teacher ---------------------------------------------------------------------------------------
def train_teacher(model_config, train: Split, settings: DemoSettings) -> tuple[SigLIPTeacher, list[float]]:
    """Train the SigLIP-style teacher on pixels with the sigmoid loss (plain loop, AdamW, cosine)."""
    teacher = build_small_teacher(TEACHER_TIMM_KWARGS, model_config, seed=settings.seed)
    loss_fn = TokLIPLoss(LossSection(contrastive="sigmoid", distill_weight=0.0))
    optimizer = torch.optim.AdamW(teacher.parameters(), lr=1e-3, weight_decay=0.05)
    scheduler = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=1e-3, total_steps=settings.teacher_steps,
                                                    pct_start=0.1)
    generator = torch.Generator().manual_seed(settings.seed)
    losses = []
    teacher.train()
    for _ in tqdm(range(settings.teacher_steps), desc="teacher", dynamic_ncols=True):
        idx = torch.randint(len(train.labels), (settings.batch_size,), generator=generator)
        image_emb = teacher.encode_image(_augment(train.images[idx], generator))
        loss = loss_fn(image_emb, teacher.encode_text(train.text[idx]), teacher.logit_scale, teacher.logit_bias)["total"]
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        scheduler.step()
        losses.append(loss.item())
    return teacher.requires_grad_(False).eval(), losses


def _augment(images: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """Random horizontal flips (captions stay true: no left/right in them)."""
    flip = torch.rand(images.shape[0], generator=generator) < 0.5
    return torch.where(flip[:, None, None, None], images.flip(-1), images)


# the demo's frozen VQ ----------------------------------------------------------------------------
GROUP_CONST = 100.0


@torch.no_grad()
def patch_statistics_vq(vq: VQModel) -> None:
    """Set a LlamaGen-layout VQ encoder so that each 16x16 patch's latent holds its mean colour and
    its top/bottom, left/right and diagonal luminance contrasts.

    No pretrained VQ-16 is reachable offline, and a randomly initialised one maps these images to
    codes that carry almost no colour or shape (a linear probe is near chance). This deterministic
    stand-in keeps LlamaGen's architecture and code path (``model.tokenize``): zeroed residual
    branches make every block an identity, the downsampling convs average, and the last one also
    takes contrasts; :func:`fit_codebook` then places the codebook on the data.
    """
    enc = vq.encoder
    for p in enc.parameters():
        p.zero_()
    rgb = range(3)
    for c in rgb:
        enc.conv_in.weight[c, c, 1, 1] = 1.0
    levels = list(enc.conv_blocks)
    for level in levels:
        for block in list(level.res):
            _identity_shortcut(block)
    for block in enc.mid:
        if hasattr(block, "nin_shortcut"):
            _identity_shortcut(block)
    for level in levels[:-2]:
        for c in rgb:
            level.downsample.conv.weight[c, c, 0:2, 0:2] = 0.25
    last = levels[-2].downsample.conv.weight  # 2x2 grid of 8x8-pixel means -> patch statistics
    for c in rgb:
        last[c, c, 0:2, 0:2] = 0.25
        last[3, c, 0, 0:2], last[3, c, 1, 0:2] = 1 / 6, -1 / 6
        last[4, c, 0:2, 0], last[4, c, 0:2, 1] = 1 / 6, -1 / 6
        last[5, c, 0, 0] = last[5, c, 1, 1] = 1 / 6
        last[5, c, 0, 1] = last[5, c, 1, 0] = -1 / 6
    # the last level's 1x1 shortcut spreads feature k to channel 4k, with constants +-C beside it, so
    # that norm_out (4 channels per group) keeps absolute values instead of normalising them away
    shortcut = levels[-1].res[0].nin_shortcut
    shortcut.weight.zero_()
    shortcut.bias.zero_()
    for k in range(6):
        shortcut.weight[4 * k, k, 0, 0] = 1.0
        shortcut.bias[4 * k + 1], shortcut.bias[4 * k + 2] = GROUP_CONST, -GROUP_CONST
        enc.norm_out.weight[4 * k] = GROUP_CONST / math.sqrt(2)
        enc.conv_out.weight[k, 4 * k, 1, 1] = 1.0
    vq.quant_conv.weight.zero_()
    vq.quant_conv.bias.zero_()
    for k in range(6):
        vq.quant_conv.weight[k, k, 0, 0] = 1.0
    vq.quant_conv.bias[6] = 0.5


def _identity_shortcut(block: nn.Module) -> None:
    if block.nin_shortcut is not None:
        n = min(block.nin_shortcut.in_channels, block.nin_shortcut.out_channels)
        block.nin_shortcut.weight[torch.arange(n), torch.arange(n), 0, 0] = 1.0


@torch.no_grad()
def vq_latents(vq: VQModel, images: torch.Tensor, batch_size: int = 64) -> torch.Tensor:
    """The VQ's pre-quantisation latents ``[n, C, h, w]`` (one encoder pass, reused for codebook and codes)."""
    return torch.cat([vq.quant_conv(vq.encoder(chunk)) for chunk in tqdm(images.split(batch_size), desc="VQ encoder",
                                                                         dynamic_ncols=True)])


@torch.no_grad()
def fit_codebook(vq: VQModel, latents: torch.Tensor, iters: int = 15, seed: int = 0,
                 max_points: int = 30000) -> None:
    """Spherical k-means of the l2-normalised latents into the VQ's codebook (what VQ training would learn)."""
    pts = F.normalize(latents.permute(0, 2, 3, 1).reshape(-1, latents.shape[1]), dim=-1)
    g = torch.Generator().manual_seed(seed)
    pts = pts[torch.randperm(len(pts), generator=g)[:max_points]]
    k = vq.quantize.n_e
    centers = pts[torch.randint(len(pts), (k,), generator=g)]
    for _ in range(iters):
        assign = (pts @ centers.t()).argmax(1)
        sums = torch.zeros_like(centers).index_add_(0, assign, pts)
        counts = torch.bincount(assign, minlength=k)[:, None]
        centers = torch.where(counts > 0, F.normalize(sums, dim=-1), centers)
    vq.quantize.embedding.weight.copy_(centers)


# caches ------------------------------------------------------------------------------------------
@torch.no_grad()
def tokenize_all(model: TokLIP, images: torch.Tensor, batch_size: int = 64) -> torch.Tensor:
    return torch.cat([model.tokenize(chunk) for chunk in tqdm(images.split(batch_size), desc="VQ codes",
                                                              dynamic_ncols=True)])


@torch.no_grad()
def teacher_embeddings(teacher: SigLIPTeacher, images: torch.Tensor, batch_size: int = 128) -> torch.Tensor:
    return torch.cat([teacher.encode_image(chunk) for chunk in images.split(batch_size)])


def write_caches(out: Path, train: Split, test: Split, train_codes: torch.Tensor, test_codes: torch.Tensor,
                 teacher: SigLIPTeacher, class_text: torch.Tensor) -> tuple[Path, Path]:
    """The trainer's ``cache`` data and the held-out evaluation cache.

    Everything frozen is computed once here: VQ codes, text embeddings (the students' text tower is
    the teacher's, copied and frozen) and the teacher's pooled embeddings.
    """
    out.mkdir(parents=True, exist_ok=True)
    train_path, eval_path = out / "train.safetensors", out / "heldout.safetensors"
    with torch.no_grad():
        text_emb = torch.cat([teacher.encode_text(chunk) for chunk in train.text.split(256)])
    save_file({"codes": train_codes, "text": train.text, "text_emb": text_emb,
               "teacher_pooled": teacher_embeddings(teacher, train.images)}, str(train_path))
    save_file({"codes": test_codes, "text": test.text, "labels": test.labels, "caption_ids": test.caption_ids,
               "class_text": class_text}, str(eval_path))
    return train_path, eval_path


# students ----------------------------------------------------------------------------------------
def train_student(overrides: list[str], run_dir: Path, paths: dict[str, Path], settings: DemoSettings) -> TokLIP:
    config = load_train_config("toklip-tiny", [
        "data.kind=cache", f"data.train={paths['train_cache']}", f"teacher.checkpoint={paths['teacher']}",
        f"model.vq_checkpoint={paths['vq']}", f"run.output_dir={run_dir}", f"run.eval_data={paths['eval_cache']}",
        f"run.eval_every={settings.student_steps // 4}", f"run.save_every={settings.student_steps}",
        "run.log_every=5", f"run.seed={settings.seed}", f"optim.steps={settings.student_steps}",
        f"optim.batch_size={settings.batch_size}", "optim.lr=1e-3", "optim.warmup_steps=20",
        "optim.weight_decay=0.05", "run.keep_last=1", *overrides])
    trainer = Trainer(config)
    trainer.fit()
    return trainer.model.eval()


@torch.no_grad()
def student_embeddings(model: TokLIP, codes: torch.Tensor) -> torch.Tensor:
    return torch.cat([model.pool_tokens(model.encode_codes(c)) for c in codes.split(256)])


# report ------------------------------------------------------------------------------------------
def format_table(rows: dict[str, dict[str, float]], chance: float) -> str:
    header = f"{'model (held-out split)':<36} {'zero-shot top-1':>15} {'T->I R@1':>9} {'I->T R@1':>9}"
    lines = [header, "-" * len(header)]
    for name, m in rows.items():
        lines.append(f"{name:<36} {m['zeroshot_top1']:>15.1%} {m['t2i_r1']:>9.1%} {m['i2t_r1']:>9.1%}")
    lines.append(f"{'chance':<36} {chance:>15.1%}")
    return "\n".join(lines)


def plot_losses(path: Path, teacher_losses: list[float], run_dirs: dict[str, Path]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4))
    left.plot(teacher_losses)
    left.set(title="teacher (sigmoid loss, pixels)", xlabel="step", ylabel="loss", yscale="log")
    for name, run_dir in run_dirs.items():
        rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
        right.plot([r["step"] for r in rows], [r["total"] for r in rows], label=name)
    right.set(title="toklip-tiny students (total loss, codes)", xlabel="step", yscale="log")
    right.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


# main ----------------------------------------------------------------------------------------------
def run_demo(out: Path, settings: DemoSettings) -> dict[str, dict[str, float]]:
    start = time.perf_counter()
    torch.manual_seed(settings.seed)
    model_config = resolve_config("toklip-tiny")
    tokenizer, transform = get_tokenizer(model_config), image_transform(model_config.image_size)
    samples = make_samples(settings.train_size + settings.test_size, settings.seed, model_config.image_size)
    shards = write_shards(samples[: settings.train_size], out / "data", per_shard=500, prefix="train")
    print(f"[demo] {settings.train_size} training samples in {shards}; {settings.test_size} held out")
    caption_index: dict[str, int] = {}
    train = make_split(samples[: settings.train_size], tokenizer, transform, caption_index)
    test = make_split(samples[settings.train_size:], tokenizer, transform, caption_index)
    class_text = tokenizer([class_prompt(name) for name in class_names()])

    teacher, teacher_losses = train_teacher(model_config, train, settings)
    paths = {"teacher": out / "teacher.safetensors", "vq": out / "vq.safetensors"}
    save_file({k: v.contiguous() for k, v in teacher.state_dict().items()}, str(paths["teacher"]))
    vq_owner = create_model(model_config, seed=settings.seed)  # holds the students' frozen VQ
    patch_statistics_vq(vq_owner.vq)
    train_latents = vq_latents(vq_owner.vq, train.images)
    fit_codebook(vq_owner.vq, train_latents, seed=settings.seed)
    save_file(vq_owner.vq.state_dict(), str(paths["vq"]))
    train_codes = vq_owner.vq.quantize.nearest_codes(train_latents).flatten(1)  # == tokenize(train.images)
    test_codes = tokenize_all(vq_owner, test.images)
    paths["train_cache"], paths["eval_cache"] = write_caches(out / "cache", train, test, train_codes, test_codes,
                                                             teacher, class_text)

    with torch.no_grad():
        teacher_test = teacher_embeddings(teacher, test.images)
        rows = {"teacher (tiny SigLIP on pixels)": embedding_metrics(
            teacher_test, teacher.encode_text(test.text), teacher.encode_text(class_text), test.labels,
            test.caption_ids)}
    run_dirs, student_test = {}, {}
    shutil.rmtree(out / "students", ignore_errors=True)  # a rerun trains afresh instead of resuming
    for name, (folder, overrides) in STUDENTS.items():
        run_dirs[name] = out / "students" / folder
        print(f"[demo] training {name}")
        student = train_student(overrides, run_dirs[name], paths, settings)
        student_test[name] = student_embeddings(student, test_codes)
        with torch.no_grad():
            rows[name] = embedding_metrics(student_test[name], student.encode_text(test.text),
                                           student.encode_text(class_text), test.labels, test.caption_ids)

    plot_losses(out / "loss_curves.png", teacher_losses, run_dirs)
    main_student = next(iter(STUDENTS))
    shown = slice(0, 300)  # the paper's Figure 3: t-SNE of teacher and student image embeddings
    plot_tsne({"teacher": teacher_test[shown], "TokLIP student": student_test[main_student][shown]},
              test.labels[shown], out / "tsne_student_vs_teacher.png", names=("teacher", "TokLIP student"),
              seed=settings.seed)
    table = format_table(rows, 1 / len(class_names()))
    (out / "results.txt").write_text(table + "\n")
    (out / "results.json").write_text(json.dumps(rows, indent=2))
    print("\n" + table)
    print(f"\n[demo] wrote {out / 'loss_curves.png'}, {out / 'tsne_student_vs_teacher.png'}, {out / 'results.json'}; "
          f"trained tokenizer exported to {run_dirs[main_student] / 'export'}; {time.perf_counter() - start:.0f} s")
    return rows


def main(argv: Optional[Sequence[str]] = None) -> None:
    parser = argparse.ArgumentParser(prog="toklip-demo", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default="toklip-demo-out", help="output folder (default: %(default)s)")
    parser.add_argument("--quick", action="store_true", help="a smaller setting (about a minute or two), for CI")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    settings = DemoSettings.quick() if args.quick else DemoSettings()
    run_demo(Path(args.out), DemoSettings(**{**settings.__dict__, "seed": args.seed}))


if __name__ == "__main__":
    main()
