"""LLaVA's own train.py trains the unified LLaVA-Qwen2 (issue 14) on mixed data, on CPU.

The commands of ``configs/llava/unified.sh`` for a tiny recipe (a random Qwen2 and toklip-tiny), with
CPU-sized overrides: the base conversion through its command line, then LLaVA's ``train()`` in one
subprocess (``unified_pipeline.py``):

1. stage 1 from the base (``--freeze_backbone True``): captions both ways (image -> caption, caption -> image);
2. stage 2 from stage 1: instruction answers, a text-only chat and caption -> image samples, everything but
   the tower training;
3. from stage 1 again, understanding samples only;

then ``load_llava_model`` (LLaVA's ``load_pretrained_model``) re-opens stage 2, draws an image and answers.
The losses are measured by the pipeline on the whole training set before the first and after the last step.
"""
from __future__ import annotations

import json
import math
import os
import shlex
import subprocess
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch
from helpers.llava_fixtures import (ANSWERS, CAPTIONS, QUESTIONS, build_tiny_llm, require_patched_llava, run_python,
                                    write_images)
from safetensors.torch import load_file

import toklip_plugin as tp
from toklip_plugin.integrations.llava.tower import RANDOM_INIT_SEED

pytestmark = pytest.mark.slow

PIPELINE = Path(__file__).resolve().parents[1] / "helpers" / "unified_pipeline.py"
LLAVA_CONFIGS = Path(__file__).resolve().parents[2] / "configs" / "llava"
GENERATION = ("image_head.", "code_embed.", "gen_fusion.")
VOCAB_ROWS = ("model.embed_tokens.weight", "lm_head.weight")
# CPU-sized overrides of the recipe's flags (train.py's parser keeps the last value of a repeated flag)
CPU_OVERRIDES = ["--gradient_checkpointing", "False", "--dataloader_num_workers", "0", "--per_device_train_batch_size",
                 "2", "--gradient_accumulation_steps", "1", "--model_max_length", "256", "--warmup_ratio", "0",
                 "--lr_scheduler_type", "constant", "--learning_rate", "2e-3", "--save_strategy", "no", "--seed", "0"]


def understanding(images: list[str]) -> list[dict]:
    return [{"id": f"u{i}", "image": image, "conversations": [
        {"from": "human", "value": "<image>\nDescribe the picture briefly."},
        {"from": "gpt", "value": CAPTIONS[i]}]} for i, image in enumerate(images)]


def generation(images: list[str]) -> list[dict]:
    """Text to image in LLaVA's format: the target image in "image", ``<image>`` as the assistant turn."""
    return [{"id": f"g{i}", "image": image, "conversations": [
        {"from": "human", "value": CAPTIONS[i]}, {"from": "gpt", "value": "<image>"}]} for i, image in enumerate(images)]


def instructions(images: list[str]) -> list[dict]:
    records = [{"id": f"q{i}", "image": image, "conversations": [
        {"from": "human", "value": f"{QUESTIONS[i]}\n<image>"}, {"from": "gpt", "value": ANSWERS[i]}]}
        for i, image in enumerate(images[:3])]
    return records + [{"id": "text", "conversations": [
        {"from": "human", "value": QUESTIONS[0]}, {"from": "gpt", "value": CAPTIONS[0]}]}]


@dataclass
class Pipeline:
    base: Path
    dirs: dict[str, Path]
    report: dict
    image_size: int


def recipe_commands(recipe: Path, env: dict) -> list[list[str]]:
    """The commands ``bash configs/llava/unified.sh RECIPE`` runs (printed with ``DRY_RUN=1``)."""
    out = subprocess.run(["bash", str(LLAVA_CONFIGS / "unified.sh"), str(recipe)], capture_output=True, text=True,
                         env={**os.environ, "DRY_RUN": "1", "NUM_GPUS": "1", **env}, check=True).stdout
    return [shlex.split(line) for line in out.splitlines() if line.strip()]


def on_cpu(command: list[str], steps: int, *overrides: str) -> list[str]:
    """A ``deepspeed --num_gpus N --module M ARGS`` launch as train() arguments on CPU (no DeepSpeed, no TF32)."""
    args = command[5:]
    for flag in ("--deepspeed", "--tf32"):
        i = args.index(flag)
        del args[i:i + 2]
    return [*args, *CPU_OVERRIDES, "--max_steps", str(steps), *overrides]


def write_data(root: Path) -> dict[str, Path]:
    images = write_images(root / "images")
    in_root = [f"images/{name}" for name in images]  # stage 2's images are relative to DATA_ROOT, as 665K's are
    data = {"stage1": understanding(images) + generation(images), "stage2": instructions(in_root) + generation(in_root),
            "understanding": understanding(images)}
    for name, records in data.items():
        (root / f"{name}.json").write_text(json.dumps(records))
    return {name: root / f"{name}.json" for name in data}


@pytest.fixture(scope="module")
def pipeline(tmp_path_factory) -> Pipeline:
    """unified.sh's commands for a tiny recipe: its base conversion, then its two stages and an
    understanding-only variant of stage 2 through LLaVA's train(), in one subprocess."""
    require_patched_llava()
    root = tmp_path_factory.mktemp("unified")
    llm = build_tiny_llm("qwen2", root / "tiny-qwen2")
    data, out = write_data(root), root / "out"
    recipe = root / "tiny_recipe.sh"
    recipe.write_text(f"RUN_NAME=llava-tiny\nLLM={llm}\nCONV_VERSION=qwen_2\nVISION_TOWER=toklip-tiny\n")
    convert, stage1, stage2 = recipe_commands(recipe, {
        "DATA_ROOT": str(root), "OUTPUT_ROOT": str(out), "UNIFIED_CAPTION_DATA": str(data["stage1"]),
        "UNIFIED_CAPTION_IMAGES": str(root / "images"), "UNIFIED_MIX_DATA": str(data["stage2"]),
        "GEN_PROMPT_DROPOUT": "0.5"})
    assert convert[:3] == ["python", "-m", "toklip_plugin.integrations.llava.unified_base"]
    run_python(convert[1:], cwd=root)
    dirs = {"stage1": out / "llava-tiny-unified-stage1", "stage2": out / "llava-tiny-unified",
            "understanding": out / "llava-tiny-unified-understanding"}
    runs = {"stage1": on_cpu(stage1, 6), "stage2": on_cpu(stage2, 6),
            "understanding": on_cpu(stage2, 2, "--data_path", str(data["understanding"]), "--image_folder",
                                    str(root / "images"), "--output_dir", str(dirs["understanding"]))}
    spec = {"runs": [{"name": name, "argv": argv} for name, argv in runs.items()], "model_dir": str(dirs["stage2"]),
            "caption": CAPTIONS[1], "image": str(root / "images" / "img0.png"), "report": str(root / "report.json")}
    (root / "spec.json").write_text(json.dumps(spec))
    run_python([str(PIPELINE), str(root / "spec.json")], cwd=root, timeout=1200)
    return Pipeline(out / "llava-tiny-unified-base", dirs, json.loads((root / "report.json").read_text()),
                    tp.resolve_config("toklip-tiny").image_size)


def weights(folder: Path) -> dict[str, torch.Tensor]:
    return load_file(str(folder / "model.safetensors"))


def part(state: dict, *prefixes: str) -> dict:
    return {k: v for k, v in state.items() if k.startswith(prefixes)}


def changed(before: dict, after: dict) -> set[str]:
    assert before.keys() == after.keys()
    return {k for k in after if not torch.equal(before[k], after[k])}


@pytest.mark.parametrize("run", ["stage1", "stage2"])
def test_text_and_image_losses_are_finite_and_both_decrease_over_the_run(pipeline, run):
    record = pipeline.report["runs"][run]
    for loss in ("text", "image"):
        before, after = record["before"][loss], record["after"][loss]
        assert math.isfinite(before) and math.isfinite(after) and after > 0, (loss, before, after)
        assert after < before, (loss, before, after)


def test_stage1_trains_the_projector_and_the_generation_modules_and_freezes_the_language_model(pipeline):
    trainable = {name.removeprefix("model.").split(".")[0] for name in pipeline.report["runs"]["stage1"]["trainable"]}
    assert trainable == {"mm_projector", "image_head", "code_embed", "gen_fusion"}
    base = {k: v.to(torch.bfloat16) for k, v in load_file(str(pipeline.base / "model.safetensors")).items()}
    stage1 = weights(pipeline.dirs["stage1"])  # trained in bf16, like the base after --bf16 True
    vocab = len(base["model.embed_tokens.weight"])  # the BOI/EOI rows come after it
    kept = {k: stage1[k][:vocab] if k in VOCAB_ROWS else stage1[k] for k in base}
    assert not changed(base, kept)  # the body, the embeddings and the text head: bit-identical


def test_stage2_trains_the_language_model_projector_and_generation_modules(pipeline):
    stage1, stage2 = weights(pipeline.dirs["stage1"]), weights(pipeline.dirs["stage2"])
    moved = changed(stage1, stage2)
    for prefix in ("lm_head.", "model.layers.", "model.mm_projector.", *GENERATION):
        assert any(k.startswith(prefix) for k in moved), prefix


@pytest.mark.parametrize("run", ["stage1", "stage2"])
def test_the_frozen_vq_and_token_encoder_stay_bit_identical(pipeline, run):
    tower = {k.split("vision_tower.toklip.")[1]: v for k, v in weights(pipeline.dirs[run]).items()
             if "vision_tower.toklip." in k}
    initial = tp.create_model(tp.resolve_config("toklip-tiny"), seed=RANDOM_INIT_SEED).to(torch.bfloat16).state_dict()
    assert any(k.startswith("encoder.") for k in tower) and any(k.startswith("vq.quantize.") for k in tower)
    assert any(k.startswith("vq.decoder.") for k in tower)  # the unified tower keeps its decoder
    assert tower and all(torch.equal(v, initial[k]) for k, v in tower.items())


def test_understanding_only_data_gives_the_image_head_no_gradient_and_leaves_it_unchanged(pipeline):
    record = pipeline.report["runs"]["understanding"]
    assert "image_head.weight" in record["trainable"]  # it could move: nothing drives it
    assert record["head_grad"] == [0.0, 0.0]
    stage1, after = weights(pipeline.dirs["stage1"]), weights(pipeline.dirs["understanding"])
    assert not changed(part(stage1, "image_head.", "code_embed."), part(after, "image_head.", "code_embed."))
    assert changed(part(stage1, "lm_head."), part(after, "lm_head."))  # the run did train


def test_reopened_checkpoint_draws_an_image_of_n_codebook_codes_that_decodes_to_pixels(pipeline):
    reopened = pipeline.report["reopened"]
    config = tp.resolve_config("toklip-tiny")
    assert reopened["model_class"] == "LlavaQwen2UnifiedForCausalLM"
    codes = torch.tensor(reopened["codes"])
    assert codes.shape == (1, (config.image_size // 16) ** 2)
    assert 0 <= int(codes.min()) and int(codes.max()) < config.vq.codebook_size
    assert reopened["image_shape"] == [1, 3, pipeline.image_size, pipeline.image_size]
    assert reopened["decodes_like_the_tower"] and reopened["finite_image"]


def test_reopened_checkpoint_answers_a_question_about_an_image_in_text(pipeline):
    answer = pipeline.report["reopened"]["answer"]
    assert len(answer) == 4 and not set(answer) & set(pipeline.report["reopened"]["span_tokens"])
