"""The launch scripts in configs/llava/: every script parses, every flag is one LLaVA's train.py
accepts (parsed with LLaVA's own dataclasses), and the stages fit together as the paper's Table 1
and Table 3 recipes (checked with ``DRY_RUN=1``, no GPU); the Table 3 chain also runs on CPU
through LLaVA's own ``train()`` with tiny models."""
from __future__ import annotations

import json
import os
import re
import shlex
import subprocess
from dataclasses import fields
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from helpers.llava_fixtures import build_tiny_llm, require_patched_llava, run_python, write_dataset
from safetensors.torch import load_file

from toklip_plugin.integrations.llava.tower import parse_tower_name, parse_vq_tower_name

LLAVA_CONFIGS = Path(__file__).resolve().parents[2] / "configs" / "llava"
SCRIPTS = sorted(p.name for p in LLAVA_CONFIGS.glob("*.sh"))
RECIPES = sorted(p.name for p in LLAVA_CONFIGS.glob("*.sh") if "VISION_TOWER=" in p.read_text())
STAGES = ("pretrain", "finetune", "caption_pretrain", "caption_finetune")
NUM_GPUS = 8
QWEN = "Qwen/Qwen2.5-7B-Instruct"
PIPELINE = Path(__file__).resolve().parents[1] / "helpers" / "llava_pipeline.py"
# (zero stage, global batch, lr, data) per stage; the data paths are relative to DATA_ROOT
SETTINGS = {
    "pretrain": (2, 256, 1e-3, "LLaVA-Pretrain/blip_laion_cc_sbu_558k.json"),
    "finetune": (3, 128, 2e-5, "llava_v1_5_mix665k.json"),
    "caption_pretrain": (3, 128, 2e-5, "captions/detailed.json"),
    "caption_finetune": (3, 128, 2e-5, "llava_v1_5_mix665k.json"),
}


def recipe_vars(recipe: str) -> dict[str, str]:
    return dict(re.findall(r"^(\w+)=(\S+)$", (LLAVA_CONFIGS / recipe).read_text(), flags=re.MULTILINE))


def dry_run_commands(script: str, *args: str, env: dict | None = None) -> list[list[str]]:
    """Each ``deepspeed ...`` command ``bash configs/llava/SCRIPT ARGS`` prints with ``DRY_RUN=1``."""
    env = {**os.environ, "DRY_RUN": "1", "NUM_GPUS": str(NUM_GPUS), "DATA_ROOT": "/data",
           "CAPTION_DATA": "/data/captions/detailed.json", "OUTPUT_ROOT": "/out", **(env or {})}
    out = subprocess.run(["bash", str(LLAVA_CONFIGS / script), *args], env=env, capture_output=True, text=True,
                         check=True).stdout
    return [shlex.split(line) for line in out.splitlines() if line.strip()]


def llava_args(argv: list[str]):
    """LLaVA's own parse of a launcher command: (ModelArguments, DataArguments, TrainingArguments)."""
    assert argv[:4] == ["deepspeed", "--num_gpus", str(NUM_GPUS), "--module"]
    assert argv[4] in ("llava.train.train", "llava.train.train_mem")
    from llava.train.train import DataArguments, ModelArguments, TrainingArguments
    from transformers import HfArgumentParser

    classes = (ModelArguments, DataArguments, TrainingArguments)
    # parse_known_args, not parse_args_into_dataclasses: TrainingArguments.__post_init__ would
    # check the GPU-only settings (tf32, DeepSpeed) against this machine
    namespace, unknown = HfArgumentParser(classes).parse_known_args(argv[5:])
    assert unknown == [], f"flags LLaVA's train.py does not know: {unknown}"
    return tuple(SimpleNamespace(**{f.name: getattr(namespace, f.name) for f in fields(c) if f.init}) for c in classes)


def dry_run(stage: str, recipe: str):
    [argv] = dry_run_commands(f"{stage}.sh", str(LLAVA_CONFIGS / recipe))
    return llava_args(argv)


def tower_spec(name: str):
    """What the tower name resolves to, through LLaVA's plugin lookup (the path a real run takes)."""
    from llava.plugins import find_vision_tower

    factory = find_vision_tower(name)
    assert factory is not None, f"no llava.vision_towers entry point serves {name!r}"
    return parse_vq_tower_name(name) if name.startswith("vq-16") else parse_tower_name(name)[0]


@pytest.fixture(scope="module", autouse=True)
def patched_llava():
    require_patched_llava()


def test_every_script_is_valid_bash():
    for script in SCRIPTS:
        result = subprocess.run(["bash", "-n", str(LLAVA_CONFIGS / script)], capture_output=True, text=True)
        assert result.returncode == 0, f"{script}: {result.stderr}"


@pytest.mark.parametrize("recipe", RECIPES)
@pytest.mark.parametrize("stage", STAGES)
def test_stage_flags_are_llava_flags_with_the_stage_settings(stage, recipe):
    model, data, training = dry_run(stage, recipe)
    wanted = recipe_vars(recipe)
    zero, global_batch, lr, data_path = SETTINGS[stage]
    assert model.vision_tower == wanted["VISION_TOWER"]
    assert tower_spec(model.vision_tower).image_size in (256, 384)
    assert model.mm_projector_type == "mlp2x_gelu" and model.mm_vision_select_layer == -1
    assert model.version == ("plain" if stage == "pretrain" else wanted["CONV_VERSION"])
    assert model.tune_mm_mlp_adapter == (stage == "pretrain")  # every other stage trains the LLM too
    assert not model.freeze_backbone
    assert json.loads(Path(training.deepspeed).read_text())["zero_optimization"]["stage"] == zero
    assert training.per_device_train_batch_size * training.gradient_accumulation_steps * NUM_GPUS == global_batch
    assert training.learning_rate == lr and training.num_train_epochs == 1
    assert data.data_path == f"/data/{data_path}"
    assert "llava" in Path(training.output_dir).name  # LLaVA's loader needs it in the name


@pytest.mark.parametrize("recipe", RECIPES)
def test_table1_finetune_starts_from_the_base_llm_and_the_pretrained_projector(recipe):
    (_, _, pretrain), (finetune_model, finetune_data, _) = dry_run("pretrain", recipe), dry_run("finetune", recipe)
    assert finetune_model.model_name_or_path == recipe_vars(recipe)["LLM"]
    assert finetune_model.pretrain_mm_mlp_adapter == str(Path(pretrain.output_dir) / "mm_projector.bin")
    assert finetune_data.image_aspect_ratio == "pad"


@pytest.mark.parametrize("recipe", RECIPES)
def test_table3_stage2_starts_from_the_stage1_checkpoint_and_stage1_from_the_base_llm(recipe):
    (model1, data1, stage1), (model2, _, stage2) = dry_run("caption_pretrain", recipe), dry_run("caption_finetune", recipe)
    assert model1.model_name_or_path == recipe_vars(recipe)["LLM"] and model1.pretrain_mm_mlp_adapter is None
    assert data1.image_folder == "/data/captions"  # CAPTION_IMAGES defaults to the JSON's folder
    assert model2.model_name_or_path == stage1.output_dir and model2.pretrain_mm_mlp_adapter is None
    assert stage2.output_dir != stage1.output_dir


def test_table1_runs_both_toklip_sizes_and_a_vq16_baseline_of_each_size_with_qwen():
    runs = [llava_args(argv) for argv in dry_run_commands("table1.sh")]
    pretrains, finetunes = runs[0::2], runs[1::2]
    assert [m.version for m, _, _ in pretrains] == ["plain"] * 4
    assert [m.pretrain_mm_mlp_adapter for m, _, _ in finetunes] == [
        str(Path(t.output_dir) / "mm_projector.bin") for _, _, t in pretrains]
    assert {m.model_name_or_path for m, _, _ in runs} == {QWEN}
    towers = {m.vision_tower: tower_spec(m.vision_tower) for m, _, _ in finetunes}
    assert sorted(towers) == ["toklip-l", "toklip-s", "vq-16", "vq-16-384"]
    assert (towers["toklip-s"].image_size, towers["toklip-l"].image_size) == (256, 384)
    # each baseline row sees the same image size and number of tokens as the TokLIP row beside it
    assert towers["vq-16"].image_size == 256 and towers["vq-16"].num_tokens == towers["toklip-s"].num_tokens
    assert towers["vq-16-384"].image_size == 384 and towers["vq-16-384"].num_tokens == towers["toklip-l"].num_tokens


def test_table3_trains_toklip_l_with_qwen_on_captions_then_on_665k():
    (model1, data1, stage1), (model2, data2, _) = [llava_args(argv) for argv in dry_run_commands("table3.sh")]
    assert (model1.vision_tower, model1.model_name_or_path) == ("toklip-l", QWEN)
    assert data1.data_path == "/data/captions/detailed.json" and data2.data_path == "/data/llava_v1_5_mix665k.json"
    assert not model1.tune_mm_mlp_adapter and model2.model_name_or_path == stage1.output_dir


CPU_OVERRIDES = ["--per_device_train_batch_size", "2", "--gradient_accumulation_steps", "1", "--max_steps", "2",
                 "--gradient_checkpointing", "False", "--dataloader_num_workers", "0", "--model_max_length", "256",
                 "--save_steps", "2", "--logging_steps", "1", "--seed", "0"]


def on_cpu(argv: list[str], *overrides: str) -> list[str]:
    """A launcher command as ``train()`` arguments on CPU: no DeepSpeed and TF32 (GPU only), tiny batches."""
    args = argv[5:]
    for flag in ("--deepspeed", "--tf32"):
        i = args.index(flag)
        del args[i:i + 2]
    return [*args, *CPU_OVERRIDES, *overrides]


def llm_weights(state: dict) -> dict:
    return {k: v.float() for k, v in state.items() if "vision_tower" not in k and "mm_projector" not in k}


@pytest.mark.slow
def test_table3_chain_trains_the_llm_in_stage1_and_continues_from_it_in_stage2(tmp_path):
    """table3.sh's two commands, run by LLaVA's train() with a tiny Qwen2 and toklip-tiny. Stage 1 runs
    at lr 1e-3 so that its change is plain; stage 2 runs at lr 0, so its output must *be* stage 1's."""
    llm = build_tiny_llm("qwen2", tmp_path / "tiny-qwen2")
    data = write_dataset(tmp_path / "data")
    recipe = tmp_path / "tiny_recipe.sh"
    recipe.write_text(f"RUN_NAME=llava-tiny\nLLM={llm}\nCONV_VERSION=qwen_2\nVISION_TOWER=toklip-tiny\n")
    env = {"DATA_ROOT": str(tmp_path / "data"), "CAPTION_DATA": str(data["pretrain"]),
           "CAPTION_IMAGES": str(data["image_folder"]), "OUTPUT_ROOT": str(tmp_path / "out")}
    stage1, stage2 = dry_run_commands("table3.sh", str(recipe), env=env)
    # the 665K stand-in: finetune records with image paths relative to DATA_ROOT, as 665K has them
    records = json.loads(data["finetune"].read_text())
    for record in records:
        if "image" in record:
            record["image"] = f"images/{record['image']}"
    (tmp_path / "data" / "llava_v1_5_mix665k.json").write_text(json.dumps(records))
    out1, out2 = tmp_path / "out" / "llava-tiny-caption-stage1", tmp_path / "out" / "llava-tiny-caption"
    spec = {"train": [on_cpu(stage1, "--learning_rate", "1e-3"), on_cpu(stage2, "--learning_rate", "0")],
            "model_dir": str(out2), "conv_mode": "qwen_2", "image": str(data["image_folder"] / "img0.png"),
            "other_image": str(data["image_folder"] / "img1.png"), "report": str(tmp_path / "report.json")}
    (tmp_path / "spec.json").write_text(json.dumps(spec))
    run_python([str(PIPELINE), str(tmp_path / "spec.json")], cwd=tmp_path)

    base = llm_weights(load_file(str(llm / "model.safetensors")))
    after1, after2 = load_file(str(out1 / "model.safetensors")), load_file(str(out2 / "model.safetensors"))
    trained = {k: v for k, v in llm_weights(after1).items() if k in base and not torch.equal(v, base[k].to(v.dtype).float())}
    assert any("layers" in k for k in trained)  # stage 1 trains the LLM, not only the projector
    assert any("mm_projector" in k for k in after1)
    # stage 2 re-opens stage 1 in bf16 (LLaVA's --bf16 load), so stage 1's fp32 projector is compared cast
    assert after2.keys() == after1.keys() and all(torch.equal(after2[k], after1[k].to(after2[k].dtype)) for k in after1)
    assert json.loads((out2 / "config.json").read_text())["mm_vision_tower"] == "toklip-tiny"
    assert json.loads((tmp_path / "report.json").read_text())["llava_loader"]["image_effect"] > 0
