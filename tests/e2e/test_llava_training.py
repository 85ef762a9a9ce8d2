"""LLaVA's own training and loading code with ``--vision_tower toklip-tiny``, on CPU.

For a tiny random Llama (Vicuna's ``v1`` template) and a tiny random Qwen2 (``qwen_2``):
LLaVA's ``train()`` runs the pretrain stage (projector only, ``--version plain``) and the
finetune stage (projector + LLM) for two steps each on synthetic images and LLaVA-format JSON;
then ``load_pretrained_model`` (and our ``load_llava_model``) re-open the finetuned output and
generate with an image. Everything runs in one subprocess per LLM (``llava_pipeline.py``);
the tests below check its outputs on disk and its report.
"""
from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch
from helpers.llava_fixtures import build_tiny_llm, require_patched_llava, run_python, write_dataset
from safetensors.torch import load_file

import toklip_plugin as tp
from toklip_plugin.integrations.llava.tower import RANDOM_INIT_SEED

pytestmark = pytest.mark.slow

PIPELINE = Path(__file__).resolve().parents[1] / "helpers" / "llava_pipeline.py"
CONV_MODE = {"llama": "vicuna_v1", "qwen2": "qwen_2"}
LLAVA_CLASS = {"llama": "LlavaLlamaForCausalLM", "qwen2": "LlavaQwen2ForCausalLM"}
SHARED_ARGS = [
    "--vision_tower", "toklip-tiny", "--mm_projector_type", "mlp2x_gelu", "--mm_vision_select_layer", "-1",
    "--mm_use_im_start_end", "False", "--mm_use_im_patch_token", "False", "--bf16", "True",
    "--per_device_train_batch_size", "2", "--max_steps", "2", "--weight_decay", "0.", "--warmup_ratio", "0",
    "--lr_scheduler_type", "constant", "--logging_steps", "1", "--model_max_length", "256",
    "--dataloader_num_workers", "0", "--lazy_preprocess", "True", "--report_to", "none",
    "--save_strategy", "steps", "--seed", "0",
]


@dataclass
class Run:
    kind: str
    pretrain_dir: Path
    finetune_dir: Path
    report: dict
    log: str


@pytest.fixture(scope="module", params=sorted(CONV_MODE))
def run(request, tmp_path_factory) -> Run:
    require_patched_llava()
    kind = request.param
    root = tmp_path_factory.mktemp(f"llava-{kind}")
    llm = build_tiny_llm(kind, root / f"tiny-{kind}")
    data = write_dataset(root / "data")
    pretrain_dir, finetune_dir = root / f"llava-{kind}-pretrain", root / f"llava-{kind}-finetune"
    inputs = ["--model_name_or_path", str(llm), "--image_folder", str(data["image_folder"])]
    pretrain = [*inputs, *SHARED_ARGS, "--version", "plain", "--data_path", str(data["pretrain"]),
                "--tune_mm_mlp_adapter", "True", "--learning_rate", "1e-3", "--save_steps", "1",
                "--output_dir", str(pretrain_dir)]
    finetune = [*inputs, *SHARED_ARGS, "--version", CONV_MODE[kind], "--data_path", str(data["finetune"]),
                "--pretrain_mm_mlp_adapter", str(pretrain_dir / "mm_projector.bin"), "--image_aspect_ratio", "pad",
                "--group_by_modality_length", "True", "--learning_rate", "1e-3", "--save_steps", "2",
                "--output_dir", str(finetune_dir)]
    spec = {"train": [pretrain, finetune], "model_dir": str(finetune_dir), "conv_mode": CONV_MODE[kind],
            "image": str(data["image_folder"] / "img0.png"), "other_image": str(data["image_folder"] / "img1.png"),
            "report": str(root / "report.json")}
    (root / "spec.json").write_text(json.dumps(spec))
    result = run_python([str(PIPELINE), str(root / "spec.json")], cwd=root)
    return Run(kind, pretrain_dir, finetune_dir, json.loads((root / "report.json").read_text()),
               result.stdout + result.stderr)


def logged_losses(output_dir: Path) -> list[float]:
    history = json.loads((output_dir / "trainer_state.json").read_text())["log_history"]
    return [entry["loss"] for entry in history if "loss" in entry]


def projector(state_dict: dict) -> dict:
    return {k.split("mm_projector.")[1]: v.float() for k, v in state_dict.items() if "mm_projector." in k}


def test_pretrain_stage_trains_the_projector_only(run):
    losses = logged_losses(run.pretrain_dir)
    assert len(losses) == 2 and all(math.isfinite(x) and x > 0 for x in losses)
    saved = torch.load(run.pretrain_dir / "mm_projector.bin", weights_only=True)
    assert saved and all("mm_projector" in k for k in saved)
    after_step_1 = projector(torch.load(run.pretrain_dir / "checkpoint-1" / "mm_projector.bin", weights_only=True))
    after_step_2 = projector(saved)
    assert any(not torch.equal(after_step_1[k], after_step_2[k]) for k in after_step_2)


def test_finetune_stage_loss_is_finite_and_every_sample_has_labels(run):
    losses = logged_losses(run.finetune_dir)
    assert len(losses) == 2 and all(math.isfinite(x) and x > 0 for x in losses)
    assert "tokenization mismatch" not in run.log  # LLaVA masks a whole sample when its arithmetic fails


def test_finetune_updates_the_projector_and_leaves_the_tower_frozen(run):
    weights = load_file(str(run.finetune_dir / "model.safetensors"))
    before = projector(torch.load(run.pretrain_dir / "mm_projector.bin", weights_only=True))
    after = projector(weights)
    assert before.keys() == after.keys()
    assert any(not torch.allclose(before[k], after[k]) for k in after)

    initial = tp.create_model(tp.resolve_config("toklip-tiny"), seed=RANDOM_INIT_SEED).to(torch.bfloat16)
    tower = {k.split("vision_tower.toklip.")[1]: v for k, v in weights.items() if "vision_tower.toklip." in k}
    assert tower and all(torch.equal(v, initial.state_dict()[k]) for k, v in tower.items())


def test_saved_config_names_the_tower_so_the_checkpoint_reopens_with_it(run):
    config = json.loads((run.finetune_dir / "config.json").read_text())
    assert config["mm_vision_tower"] == "toklip-tiny"
    assert config["mm_hidden_size"] == tp.resolve_config("toklip-tiny").encoder.width
    assert config["model_type"] == {"llama": "llava_llama", "qwen2": "llava_qwen2"}[run.kind]


@pytest.mark.parametrize("loader, dtype", [("llava_loader", "torch.float16"), ("toklip_loader", "torch.float32")])
def test_reopened_model_generates_from_an_image(run, loader, dtype):
    probe = run.report[loader]
    assert probe["model_class"] == LLAVA_CLASS[run.kind]
    assert probe["model_dtype"] == dtype
    assert len(probe["generated"]) == 4
    assert probe["image_effect"] > 0  # the logits depend on which image goes through the TokLIP tower
    if loader == "toklip_loader":
        assert probe["tower_dtype"] == dtype
