"""``toklip-demo unified``: one tiny LLaVA-Qwen2 that reads and draws the demo's shapes in TokLIP tokens.

The issue-14 model end to end on a CPU, with no downloads, through LLaVA's own ``train()``
(``toklip-patch llava`` applied):

1. The demo's data (:mod:`.synthetic`), its pixel teacher (:mod:`.teacher`) and its hand-set VQ
   (:mod:`.vq`), whose decoder is fitted here (:func:`.vq.fit_decoder`) so that codes decode to pixels.
2. The tower: a ``toklip-tiny`` TokLIP trained as ``toklip-demo`` trains its students (the training
   split as webdataset shards, ``toklip-train --build-cache``, the Trainer with the paper's objective,
   encoder initialised from the teacher), exported with ``save_pretrained`` and passed to LLaVA as
   ``--vision_tower toklip:DIR``. Trained, not merely initialised: behind an untrained code MLP the
   encoder's output varies across images by about 3% of its spread (the rest is position), and the
   LLM then learns neither direction (both accuracies at chance).
3. The LLM: a random tiny Qwen2 with a BPE tokenizer trained on the captions (:mod:`.tiny_llm`),
   converted to a unified base (:mod:`toklip_plugin.integrations.llava.unified_base`).
4. One training run of LLaVA's ``train()`` (``--version qwen_2_unified``) on LLaVA-format JSON of
   both kinds for every training image: understanding (image + :data:`.unified_eval.QUESTION` ->
   class name) and generation (caption -> image, caption dropout for guidance).
5. The checkpoint re-opened with ``load_llava_model``; images drawn from held-out captions
   (``generate_image``, classifier-free guidance) and answers given for held-out images, scored as
   :data:`.unified_eval.DEFINITIONS` says; ``generated_grid.png``, ``generated.safetensors`` (codes, labels)
   and ``results.json`` under ``--out``.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import shutil
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Sequence

import torch
from safetensors.torch import save_file

from .. import get_tokenizer
from ..integrations.llava.loading import require_patched_llava
from ..models.teacher import SigLIPTeacher
from ..threads import torch_threads
from ..train import load_train_config
from . import unified_eval as scoring
from .run import (OBJECTIVE, TRAIN_CONFIG, DemoSettings, Split, build_frozen_parts,
                  cache_from_shards, make_splits, train_student, write_eval_cache)
from .synthetic import Sample, class_names, class_prompt, make_samples, write_shards
from .tiny_llm import build_tiny_qwen2
from .vq import fit_decoder

__all__ = ["UnifiedSettings", "main", "run_unified"]

LLM_SIZE = dict(hidden_size=128, intermediate_size=384, num_hidden_layers=3, num_attention_heads=4,
                num_key_value_heads=2, max_position_embeddings=256)
CHAT_LINES = ("system user assistant You are a helpful assistant.", scoring.QUESTION)


@dataclass(frozen=True)
class UnifiedSettings:
    train_size: int = 1500
    test_size: int = 200  # held-out images (understanding) and their captions (generation)
    teacher_steps: int = 1200
    decoder_steps: int = 150
    student_steps: int = 300  # the tower: toklip-train on the code cache (batch 64)
    llava_steps: int = 400
    batch_size: int = 16  # LLaVA's per-device batch (mixed understanding and generation samples)
    learning_rate: float = 2e-3
    cfg_scale: float = 3.0
    grid_cols: int = 8
    grid_rows: int = 4
    seed: int = 0

    @classmethod
    def quick(cls) -> "UnifiedSettings":
        return cls(train_size=400, test_size=40, teacher_steps=300, decoder_steps=100, student_steps=100,
                   llava_steps=60, grid_rows=2)


def train_tower(out: Path, settings: UnifiedSettings, samples: Sequence[Sample], train: Split, test: Split,
                class_text: torch.Tensor) -> tuple[SigLIPTeacher, Path, dict]:
    """The frozen parts and the tower, as ``toklip-demo`` makes them (:mod:`.run`): teacher and VQ (its decoder
    fitted here so that codes decode to pixels), the training split as webdataset shards, the code cache, and one
    TokLIP student trained by ``toklip-train``'s Trainer, exported under ``out/student/export/toklip``.

    Returns the teacher, the tower folder and what ``results.json`` records of the tower (its held-out zero-shot
    top-1 and retrieval R@1, scored by the trainer's evaluation hook) and of the decoder fit."""
    demo = DemoSettings(train_size=settings.train_size, test_size=settings.test_size,
                        teacher_steps=settings.teacher_steps, student_steps=settings.student_steps, seed=settings.seed,
                        seeds=1)
    config = load_train_config(TRAIN_CONFIG, OBJECTIVE)
    frozen, teacher, vq, _ = build_frozen_parts(out, demo, config, train)
    print(f"[unified] fitting the VQ decoder ({settings.decoder_steps} steps)")
    decoder_losses = fit_decoder(vq, train.images, settings.decoder_steps, seed=settings.seed)
    save_file(vq.state_dict(), str(frozen.vq))  # with its fitted decoder: the tower decodes what the model draws
    write_eval_cache(frozen.eval_cache, vq, test, class_text)
    shards = write_shards(samples[:settings.train_size], out / "data" / "shards", per_shard=demo.per_shard,
                          prefix="train")
    cache_from_shards(frozen, shards, frozen.train_cache)
    print(f"[unified] training the tower: toklip-tiny on the code cache ({settings.student_steps} steps)")
    shutil.rmtree(out / "student", ignore_errors=True)  # a rerun trains afresh instead of resuming
    metrics, _ = train_student(frozen, out / "student", (), settings.seed, demo)
    record = {"tower_heldout": metrics,
              "decoder_fit": {"first_loss": decoder_losses[0], "last_loss": decoder_losses[-1]}}
    return teacher, out / "student" / "export" / "toklip", record


def llava_records(samples: Sequence[Sample], names: Sequence[str]) -> list[dict]:
    """Both directions for every image, in LLaVA's JSON format: understanding (image + question -> class name)
    and generation (caption -> the image, ``<image>`` as the assistant turn)."""
    records = []
    for i, (sample, name) in enumerate(zip(samples, names)):
        records.append({"id": f"u{i}", "image": name, "conversations": [
            {"from": "human", "value": f"<image>\n{scoring.QUESTION}"},
            {"from": "gpt", "value": scoring.answer_for(sample.label)}]})
        records.append({"id": f"g{i}", "image": name, "conversations": [
            {"from": "human", "value": sample.caption}, {"from": "gpt", "value": "<image>"}]})
    return records


def write_llava_data(folder: Path, samples: Sequence[Sample]) -> Path:
    """PNG files and ``train.json`` (:func:`llava_records`) under ``folder``; returns the JSON's path."""
    (folder / "images").mkdir(parents=True, exist_ok=True)
    names = [f"{i:06d}.png" for i in range(len(samples))]
    for sample, name in zip(samples, names):
        sample.image.save(folder / "images" / name)
    path = folder / "train.json"
    path.write_text(json.dumps(llava_records(samples, names)))
    return path


def build_llm(out: Path, samples: Sequence[Sample], seed: int) -> Path:
    """The tiny Qwen2 (tokenizer trained on the chat template's words, the question, answers and captions) as a
    unified base that LLaVA's train.py opens as ``llava_qwen2_unified``."""
    from ..integrations.llava.unified_base import write_unified_base

    corpus = [*CHAT_LINES, *class_names(), *(s.caption for s in samples)]
    llm = build_tiny_qwen2(out / "tiny-qwen2", corpus * 5, seed=seed, **LLM_SIZE)
    return write_unified_base(llm, out / "tiny-qwen2-unified-base")


def llava_arguments(base: Path, tower: Path, data: Path, output: Path, settings: UnifiedSettings) -> list[str]:
    """``python -m llava.train.train`` arguments: the recipe's (configs/llava/unified_*.sh) sized for a CPU."""
    flags = {
        "model_name_or_path": base, "version": "qwen_2_unified", "vision_tower": f"toklip:{tower}",
        "mm_projector_type": "mlp2x_gelu", "mm_vision_select_layer": -1, "mm_use_im_start_end": False,
        "mm_use_im_patch_token": False, "image_aspect_ratio": "pad", "data_path": data,
        "image_folder": data.parent / "images", "lazy_preprocess": True, "bf16": True, "output_dir": output,
        "max_steps": settings.llava_steps, "per_device_train_batch_size": settings.batch_size,
        "gradient_accumulation_steps": 1, "learning_rate": settings.learning_rate, "weight_decay": 0.0,
        "warmup_ratio": 0.05, "lr_scheduler_type": "cosine", "logging_steps": 10, "model_max_length": 256,
        "gradient_checkpointing": False, "dataloader_num_workers": 0, "save_strategy": "no", "eval_strategy": "no",
        "report_to": "none", "seed": settings.seed, "disable_tqdm": True,
    }
    return [item for key, value in flags.items() for item in (f"--{key}", str(value))]


def train_with_llava(arguments: list[str]) -> None:
    """LLaVA's ``train()`` in this process, exactly as ``python -m llava.train.train ARGUMENTS`` runs it."""
    from llava.train.train import train

    saved = sys.argv
    sys.argv = ["llava/train/train.py", *arguments]
    try:
        train()
    finally:
        sys.argv = saved


@torch.no_grad()
def draw_images(model, tokenizer, captions: Sequence[str], settings: UnifiedSettings,
                batch: int = 50) -> torch.Tensor:
    """Codes ``[n, N]`` drawn for ``captions`` with classifier-free guidance (seeded)."""
    from ..integrations.llava.image_generation import generate_image

    generator = torch.Generator().manual_seed(settings.seed)
    return torch.cat([generate_image(model, tokenizer, list(captions[i:i + batch]), cfg_scale=settings.cfg_scale,
                                     generator=generator).codes for i in range(0, len(captions), batch)])


@torch.no_grad()
def answer_questions(model, tokenizer, image_processor, samples: Sequence[Sample], batch: int = 50) -> list[str]:
    """Greedy answers to :data:`.unified_eval.QUESTION` about each sample's image."""
    from llava.constants import DEFAULT_IMAGE_TOKEN, IMAGE_TOKEN_INDEX
    from llava.conversation import conv_templates
    from llava.mm_utils import process_images, tokenizer_image_token

    from ..integrations.llava import conversation_mode

    conv = conv_templates[conversation_mode(model)].copy()
    conv.append_message(conv.roles[0], f"{DEFAULT_IMAGE_TOKEN}\n{scoring.QUESTION}")
    conv.append_message(conv.roles[1], None)
    prompt = tokenizer_image_token(conv.get_prompt(), tokenizer, IMAGE_TOKEN_INDEX, return_tensors="pt")[None]
    answers = []
    for i in range(0, len(samples), batch):
        chunk = samples[i:i + batch]
        images = process_images([s.image for s in chunk], image_processor, model.config).to(model.dtype)
        out = model.generate(prompt.expand(len(chunk), -1), images=images, do_sample=False, max_new_tokens=8,
                             pad_token_id=tokenizer.pad_token_id, use_cache=True)
        answers += tokenizer.batch_decode(out, skip_special_tokens=True)
    return answers


def evaluate_checkpoint(out: Path, checkpoint: Path, teacher: SigLIPTeacher, class_text: torch.Tensor,
                        test: Split, test_samples: Sequence[Sample], settings: UnifiedSettings) -> dict:
    """Both accuracies of the re-opened checkpoint (:mod:`.unified_eval`), the grid and the saved codes."""
    from ..integrations.llava import load_llava_model

    tokenizer, model, image_processor, _ = load_llava_model(checkpoint, device="cpu")
    toklip = model.vision_toklip()
    codes = draw_images(model, tokenizer, [s.caption for s in test_samples], settings)
    save_file({"codes": codes.contiguous(), "labels": test.labels.contiguous()}, str(out / "generated.safetensors"))
    generation, images = scoring.generated_accuracy(toklip, teacher, class_text, codes, test.labels)
    answers = answer_questions(model, tokenizer, image_processor, test_samples)
    shown = settings.grid_rows * settings.grid_cols
    scoring.image_grid(images[:shown], [s.caption for s in test_samples[:shown]],
                       settings.grid_cols).save(out / "generated_grid.png")
    with torch.no_grad():
        recon = torch.cat([toklip.decode_codes(toklip.tokenize(x)) for x in test.images.split(64)])
    return {"generation_accuracy": generation, "understanding": scoring.answer_scores(answers, test.labels.tolist()),
            "teacher_on_real_images": scoring.teacher_accuracy(teacher, class_text, test.images, test.labels),
            "teacher_on_vq_reconstructions": scoring.teacher_accuracy(teacher, class_text, recon, test.labels),
            "answers": answers[:20]}


def run_unified(out: Path, settings: UnifiedSettings) -> dict:
    """The whole demo (module docstring); returns what it writes to ``results.json``."""
    require_patched_llava()
    start = time.perf_counter()
    out.mkdir(parents=True, exist_ok=True)
    config = load_train_config(TRAIN_CONFIG, OBJECTIVE).model_config()
    samples = make_samples(settings.train_size + settings.test_size, settings.seed, config.image_size)
    train, test = make_splits(samples, settings.train_size, config)
    class_text = get_tokenizer(config)([class_prompt(name) for name in class_names()])
    teacher, tower, tower_record = train_tower(out, settings, samples, train, test, class_text)
    data = write_llava_data(out / "data", samples[:settings.train_size])
    checkpoint = out / "llava-unified-demo"
    _say(f"teacher, VQ and tower ready; LLaVA's train() for {settings.llava_steps} steps", start)
    train_with_llava(llava_arguments(build_llm(out, samples[:settings.train_size], settings.seed), tower, data,
                                     checkpoint, settings))
    _say(f"trained; drawing {settings.test_size} images and answering {settings.test_size} questions", start)
    measured = evaluate_checkpoint(out, checkpoint, teacher, class_text, test, samples[settings.train_size:], settings)
    results = {"settings": dataclasses.asdict(settings), "chance": 1 / len(class_names()), **measured,
               "definitions": scoring.DEFINITIONS,
               "understanding_accuracy": measured["understanding"]["class"],
               **tower_record,
               "checkpoint": str(checkpoint), "tower": str(tower),
               "grid": {"path": str(out / "generated_grid.png"), "rows": settings.grid_rows, "cols": settings.grid_cols,
                        "image_size": config.image_size, "label_height": scoring.LABEL_HEIGHT},
               "seconds": round(time.perf_counter() - start, 1)}
    (out / "results.json").write_text(json.dumps(results, indent=2) + "\n")
    print("\n" + format_table(results))
    return results


def _say(message: str, start: float) -> None:
    print(f"[unified] {message} ({time.perf_counter() - start:.0f} s)", flush=True)


def format_table(results: dict) -> str:
    u = results["understanding"]
    rows = [("generation: teacher zero-shot top-1 on images drawn from held-out captions",
             results["generation_accuracy"]),
            ("understanding: answer == class name, held-out images", u["class"]),
            ("  colour word right", u["colour"]), ("  shape word right", u["shape"]),
            ("reference: teacher on the real held-out images", results["teacher_on_real_images"]),
            ("reference: teacher on their VQ reconstructions", results["teacher_on_vq_reconstructions"]),
            ("reference: the tower (TokLIP student) zero-shot on their codes",
             results["tower_heldout"]["zeroshot_top1"])]
    lines = [f"{name:<78} {value:>6.1%}" for name, value in rows]
    lines.append(f"{'chance (20 classes; colour 1/5, shape 1/4)':<78} {results['chance']:>6.1%}")
    folder = Path(results["grid"]["path"]).parent
    lines.append(f"[unified] {results['settings']['test_size']} held-out samples; {results['seconds']:.0f} s; "
                 f"results.json and generated_grid.png in {folder}")
    return "\n".join(lines)


def main(argv: Optional[Sequence[str]] = None) -> None:
    parser = argparse.ArgumentParser(prog="toklip-demo unified", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default="toklip-demo-unified-out", help="output folder (default: %(default)s)")
    parser.add_argument("--quick", action="store_true", help="a smaller setting (a few minutes), for CI")
    parser.add_argument("--seed", type=int, default=0, help="seed of the data, teacher, VQ, LLM and training")
    parser.add_argument("--threads", type=int, default=None,
                        help="torch CPU threads (default: torch's); on a busy machine --threads 1 can be faster")
    args = parser.parse_args(argv)
    if args.threads is not None and args.threads < 1:
        parser.error(f"--threads must be at least 1, got {args.threads}")
    settings = UnifiedSettings.quick() if args.quick else UnifiedSettings()
    try:
        with torch_threads(args.threads):
            run_unified(Path(args.out), dataclasses.replace(settings, seed=args.seed))
    except RuntimeError as err:
        if "toklip-patch llava" not in str(err):
            raise
        parser.exit(2, f"toklip-demo unified needs LLaVA with our patches: {err}\n")

