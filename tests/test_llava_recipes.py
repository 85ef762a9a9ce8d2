"""The launch scripts in configs/llava/: every flag is one LLaVA's train.py accepts, and the two
stages fit together as the paper's LLaVA-1.5 recipe (checked with ``DRY_RUN=1``, no GPU)."""
from __future__ import annotations

import json
import os
import shlex
import subprocess
from pathlib import Path

import pytest
from llava_fixtures import patch_installed_llava

from toklip_plugin.integrations.llava.tower import parse_tower_name

LLAVA_CONFIGS = Path(__file__).resolve().parents[1] / "configs" / "llava"
RECIPES = {"toklip-l_qwen2.5-7b.sh": ("toklip-l", "qwen_2"), "toklip-s_vicuna-7b.sh": ("toklip-s", "v1")}
NUM_GPUS = 8
STAGES = {"pretrain": dict(zero=2, global_batch=256, lr=1e-3), "finetune": dict(zero=3, global_batch=128, lr=2e-5)}


def dry_run(stage: str, recipe: str, tmp_path: Path):
    """The parsed LLaVA arguments of ``bash configs/llava/STAGE.sh RECIPE`` (printed, not run)."""
    env = {**os.environ, "DRY_RUN": "1", "NUM_GPUS": str(NUM_GPUS), "OUTPUT_ROOT": str(tmp_path)}
    out = subprocess.run(["bash", str(LLAVA_CONFIGS / f"{stage}.sh"), str(LLAVA_CONFIGS / recipe)],
                         env=env, capture_output=True, text=True, check=True).stdout
    argv = shlex.split(out)
    assert argv[:4] == ["deepspeed", "--num_gpus", str(NUM_GPUS), "--module"]
    assert argv[4] in ("llava.train.train", "llava.train.train_mem")
    from llava.train.train import DataArguments, ModelArguments, TrainingArguments
    from transformers import HfArgumentParser

    args, unknown = HfArgumentParser((ModelArguments, DataArguments, TrainingArguments)).parse_known_args(argv[5:])
    assert unknown == [], f"flags LLaVA's train.py does not know: {unknown}"
    return args


@pytest.fixture(scope="module", autouse=True)
def patched_llava():
    patch_installed_llava()


@pytest.mark.parametrize("recipe", sorted(RECIPES))
@pytest.mark.parametrize("stage", sorted(STAGES))
def test_stage_flags_are_llava_flags_with_the_paper_settings(stage, recipe, tmp_path):
    args = dry_run(stage, recipe, tmp_path)
    tower, version = RECIPES[recipe]
    setting = STAGES[stage]
    assert args.vision_tower == tower and parse_tower_name(tower)[0].name == tower
    assert args.mm_projector_type == "mlp2x_gelu"
    assert args.version == ("plain" if stage == "pretrain" else version)
    assert args.tune_mm_mlp_adapter == (stage == "pretrain")
    assert json.loads(Path(args.deepspeed).read_text())["zero_optimization"]["stage"] == setting["zero"]
    assert args.per_device_train_batch_size * args.gradient_accumulation_steps * NUM_GPUS == setting["global_batch"]
    assert args.learning_rate == setting["lr"]


@pytest.mark.parametrize("recipe", sorted(RECIPES))
def test_finetune_starts_from_the_pretrained_projector_and_saves_where_llava_can_load(recipe, tmp_path):
    pretrain, finetune = dry_run("pretrain", recipe, tmp_path), dry_run("finetune", recipe, tmp_path)
    assert finetune.pretrain_mm_mlp_adapter == str(Path(pretrain.output_dir) / "mm_projector.bin")
    assert "llava" in Path(finetune.output_dir).name
    assert finetune.image_aspect_ratio == "pad"
