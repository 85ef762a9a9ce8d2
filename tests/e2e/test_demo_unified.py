"""``toklip-demo unified --quick`` through its console script: LLaVA's train() on the demo's shapes both ways,
then the two accuracies, the grid and the checkpoint it leaves behind."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from helpers.llava_fixtures import require_patched_llava
from PIL import Image
from safetensors.torch import load_file

import toklip_plugin as tp
from toklip_plugin.demo.synthetic import class_names, class_prompt, make_samples
from toklip_plugin.demo.unified import UnifiedSettings
from toklip_plugin.demo.unified_eval import LABEL_HEIGHT
from toklip_plugin.models.teacher import build_teacher
from toklip_plugin.train import load_train_config

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def demo(tmp_path_factory) -> tuple[Path, dict]:
    """One ``toklip-demo unified --quick`` run in a clean process: its output folder and results.json."""
    require_patched_llava()
    out = tmp_path_factory.mktemp("unified") / "out"
    script = Path(sys.executable).with_name("toklip-demo")
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    result = subprocess.run([str(script), "unified", "--quick", "--threads", "1", "--out", str(out)],
                            cwd=out.parent, env=env, capture_output=True, text=True, timeout=3600, check=False)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-6000:]
    assert "generation: teacher zero-shot top-1" in result.stdout and "chance" in result.stdout
    return out, json.loads((out / "results.json").read_text())


def test_results_hold_both_accuracies_as_fractions_and_the_chance_of_twenty_classes(demo):
    _, results = demo
    for key in ("generation_accuracy", "understanding_accuracy"):
        assert 0.0 <= results[key] <= 1.0, (key, results[key])
    assert results["chance"] == pytest.approx(1 / 20)
    assert results["understanding_accuracy"] == results["understanding"]["class"]


def test_the_quick_run_learns_to_name_the_colour_of_held_out_images(demo):
    """Colour is in every code (the demo VQ's patch means): the quick setting's 60 LLaVA steps name it for most
    held-out images (chance 1/5). An understanding path that carries no image signal (e.g. an untrained tower,
    whose output barely varies across images) stays near chance here, and so does one fed the wrong image."""
    _, results = demo
    assert results["understanding"]["colour"] >= 0.6, results["understanding"]
    assert results["understanding_accuracy"] > 2 * results["chance"], results["understanding"]


def test_the_tower_is_a_trained_toklip_student_whose_held_out_scores_are_recorded(demo):
    out, results = demo
    assert Path(results["tower"]) == out / "student" / "export" / "toklip"
    assert (out / "student" / "checkpoints").is_dir()  # toklip-train's own run folder
    assert set(results["tower_heldout"]) == {"zeroshot_top1", "t2i_r1", "i2t_r1"}
    assert results["tower_heldout"]["zeroshot_top1"] > results["chance"]


def test_grid_png_holds_rows_by_cols_images_of_the_tower_size_with_caption_bands(demo):
    out, _ = demo
    quick = UnifiedSettings.quick()
    size = tp.resolve_config("toklip-tiny").image_size
    with Image.open(out / "generated_grid.png") as grid:
        assert grid.format == "PNG"
        assert grid.size == (quick.grid_cols * size, quick.grid_rows * (size + LABEL_HEIGHT))


def test_checkpoint_reopens_with_load_llava_model_as_the_unified_model(demo):
    from toklip_plugin.integrations.llava import load_llava_model

    _, results = demo
    tokenizer, model, _, _ = load_llava_model(results["checkpoint"], device="cpu")
    assert type(model).__name__ == "LlavaQwen2UnifiedForCausalLM"
    assert model.config.has_generation and model.config.image_tokens == 64
    assert len(tokenizer) <= model.get_input_embeddings().num_embeddings


@torch.no_grad()
def test_generation_accuracy_recomputed_from_the_saved_codes_equals_the_reported_one(demo):
    out, results = demo
    quick = UnifiedSettings.quick()
    saved = load_file(str(out / "generated.safetensors"))
    codes, labels = saved["codes"], saved["labels"]
    samples = make_samples(quick.train_size + quick.test_size, quick.seed, 128)[quick.train_size:]
    assert codes.shape == (quick.test_size, 64) and labels.tolist() == [s.label for s in samples]
    config = load_train_config("toklip-tiny", [f"teacher.checkpoint={out / 'teacher.safetensors'}"])
    teacher = build_teacher(config.teacher, config.model_config())
    tower = tp.load_toklip(results["tower"])
    images = tower.vq.decode_code(codes.reshape(-1), (len(codes), 8, 8, 8)).clamp(-1, 1)
    image_emb = torch.nn.functional.normalize(teacher.encode_image(images), dim=-1)
    prompts = tp.get_tokenizer("toklip-tiny")([class_prompt(name) for name in class_names()])
    class_emb = torch.nn.functional.normalize(teacher.encode_text(prompts), dim=-1)
    predicted = (image_emb @ class_emb.t()).argmax(dim=1)
    assert results["generation_accuracy"] == pytest.approx((predicted == labels).float().mean().item(), abs=1e-9)
