"""The plain VQ-16 LLaVA vision tower (``--vision_tower vq-16``, the paper's Table 1 baseline rows).

Every test uses a full-size LlamaGen VQ-16 with random weights, written here in LlamaGen's
checkpoint layout (``{"model": state_dict}``) with a codebook that is *not* unit-norm, as a real
one need not be; images are 64 px so that the encoder runs in well under a second.
"""
from __future__ import annotations

import json
import math
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from helpers.llava_fixtures import build_tiny_llm, require_patched_llava, run_python, write_dataset
from PIL import Image
from safetensors.torch import load_file

import toklip_plugin as tp
from toklip_plugin.config import VQConfig
from toklip_plugin.integrations.llava.tower import VQ16VisionTower, parse_vq_tower_name
from toklip_plugin.models.vq import VQModel

SIZE = 64
PIPELINE = Path(__file__).resolve().parents[1] / "helpers" / "llava_pipeline.py"


@pytest.fixture(scope="module", autouse=True)
def patched_llava():
    require_patched_llava()


@pytest.fixture(scope="module")
def vq_file(tmp_path_factory) -> Path:
    """A LlamaGen VQ-16 checkpoint with random weights and code vectors of random lengths."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        vq = VQModel(VQConfig())
        with torch.no_grad():
            weight = vq.quantize.embedding.weight
            weight.mul_(torch.rand(weight.shape[0], 1) * 3 + 0.1)
    path = tmp_path_factory.mktemp("vq") / "vq_ds16_random.pt"
    torch.save({"model": vq.state_dict()}, path)
    return path


@pytest.fixture(scope="module")
def pixels() -> torch.Tensor:
    g = torch.Generator().manual_seed(1)
    return torch.rand(2, 3, SIZE, SIZE, generator=g) * 2 - 1


def expected_features(vq_file: Path, images: torch.Tensor) -> torch.Tensor:
    """Nearest code by cosine similarity, then its l2-normalised codebook row, from the raw weights."""
    state = torch.load(vq_file, weights_only=True)["model"]
    reference = VQModel(VQConfig())
    reference.load_state_dict(state)
    with torch.no_grad():
        latent = reference.quant_conv(reference.encoder(images))  # [B, 8, h, w]
    vectors = F.normalize(latent.flatten(2).transpose(1, 2), dim=-1)  # raster order: r * w + c
    codebook = F.normalize(state["quantize.embedding.weight"], dim=-1)
    codes = (vectors @ codebook.T).argmax(-1)  # unit vectors: least distance = largest dot product
    return codebook[codes]


def tower_args(**overrides) -> SimpleNamespace:
    return SimpleNamespace(**{"mm_vision_select_layer": -1, "mm_vision_select_feature": "patch", **overrides})


def test_features_are_the_normalised_code_embeddings_of_the_image_codes(vq_file, pixels):
    tower = VQ16VisionTower(f"vq-16-{SIZE}:{vq_file}", tower_args())
    features = tower(pixels)
    torch.testing.assert_close(features, expected_features(vq_file, pixels), rtol=0, atol=1e-6)
    assert features.shape == (2, (SIZE // 16) ** 2, 8) == (2, tower.num_patches, tower.hidden_size)
    torch.testing.assert_close(features.norm(dim=-1), torch.ones(2, tower.num_patches))


def test_llava_builds_the_tower_from_its_own_model_arguments(vq_file, pixels):
    from llava.model.multimodal_encoder.builder import build_vision_tower
    from llava.train.train import DataArguments, ModelArguments, TrainingArguments
    from transformers import HfArgumentParser

    model_args = HfArgumentParser((ModelArguments, DataArguments, TrainingArguments)).parse_args_into_dataclasses(
        ["--vision_tower", f"vq-16-{SIZE}:{vq_file}", "--output_dir", "unused"])[0]
    tower = build_vision_tower(model_args)
    assert isinstance(tower, VQ16VisionTower) and tower.is_loaded
    torch.testing.assert_close(tower(pixels), expected_features(vq_file, pixels), rtol=0, atol=1e-6)


def test_reopened_config_rebuilds_the_tower_delay_loaded(vq_file, pixels):
    """What LLaVA does with a saved checkpoint: the config's name, delay_load, on the meta device."""
    from llava.model.multimodal_encoder.builder import build_vision_tower

    saved = SimpleNamespace(mm_vision_tower=f"vq-16-{SIZE}:{vq_file}", mm_vision_select_layer=-1,
                            mm_vision_select_feature="patch")
    with torch.device("meta"):
        tower = build_vision_tower(saved, delay_load=True)
    assert not tower.is_loaded and list(tower.parameters()) == [] and list(tower.buffers()) == []
    assert tower.hidden_size == 8 and tower.num_patches_per_side == SIZE // 16  # readable before loading
    tower.load_model(device_map="cpu")
    torch.testing.assert_close(tower(pixels), expected_features(vq_file, pixels), rtol=0, atol=1e-6)


def test_tower_is_frozen_and_keeps_only_the_encoder_side(vq_file):
    tower = VQ16VisionTower(f"vq-16-{SIZE}:{vq_file}", tower_args())
    assert not any(p.requires_grad for p in tower.parameters())
    assert tower.vq.decoder is None and tower.vq.post_quant_conv is None


def test_features_come_back_in_the_dtype_of_the_images_and_lists_give_one_map_each(vq_file, pixels):
    tower = VQ16VisionTower(f"vq-16-{SIZE}:{vq_file}", tower_args())
    assert tower(pixels.to(torch.bfloat16)).dtype == torch.bfloat16
    per_image = tower(list(pixels))
    assert [f.shape for f in per_image] == [(1, tower.num_patches, 8)] * 2
    torch.testing.assert_close(torch.cat(per_image), tower(pixels), rtol=0, atol=1e-6)


def test_image_processor_gives_the_vq_input_at_the_named_size(vq_file):
    tower = VQ16VisionTower(f"vq-16-{SIZE}:{vq_file}", tower_args(), delay_load=True)
    white = Image.fromarray(np.full((50, 80, 3), 255, dtype=np.uint8))
    out = tower.image_processor(white, return_tensors="pt")["pixel_values"]
    assert out.shape == (1, 3, SIZE, SIZE)
    torch.testing.assert_close(out, torch.ones_like(out))  # 255 -> 1.0: pixels in [-1, 1], as the VQ reads them


def test_default_names_are_the_released_toklip_vq_at_256_and_384_px():
    plain, large = parse_vq_tower_name("vq-16"), parse_vq_tower_name("vq-16-384")
    assert (plain.image_size, plain.num_tokens) == (256, tp.resolve_config("toklip-s").num_tokens)
    assert (large.image_size, large.num_tokens) == (384, tp.resolve_config("toklip-l").num_tokens)
    released_vq = tp.resolve_config("toklip-s").weights["vq_checkpoint"]
    assert plain.weights == large.weights == released_vq  # the baseline reads the VQ that TokLIP reads
    assert parse_vq_tower_name("vq-16-384:/data/vq.pt").weights == "/data/vq.pt"


@pytest.mark.parametrize("name", ["vq-16-100", "vq-16-x", "vq-16-0", "vq-16:", "vq-160"])
def test_malformed_names_are_refused_with_the_usage(name):
    with pytest.raises(ValueError, match="vq-16-SIZE"):
        parse_vq_tower_name(name)


@pytest.mark.parametrize("override", [{"mm_vision_select_layer": -2}, {"mm_vision_select_feature": "cls_patch"},
                                      {"unfreeze_mm_vision_tower": True}])
def test_settings_the_vq_cannot_honour_are_refused(override, vq_file):
    with pytest.raises(ValueError, match="vq-16"):
        VQ16VisionTower(f"vq-16:{vq_file}", tower_args(**override), delay_load=True)


def test_missing_weight_file_fails_naming_it(tmp_path):
    with pytest.raises(FileNotFoundError, match="nowhere.pt"):
        VQ16VisionTower(f"vq-16:{tmp_path / 'nowhere.pt'}", tower_args())


@pytest.mark.slow
def test_llava_trains_and_reopens_a_qwen2_model_with_the_vq_tower(vq_file, tmp_path):
    """LLaVA's own train() (projector stage, then projector + LLM) and loaders, with ``vq-16-64:FILE``."""
    llm = build_tiny_llm("qwen2", tmp_path / "tiny-qwen2")
    data = write_dataset(tmp_path / "data")
    tower = f"vq-16-{SIZE}:{vq_file}"
    shared = ["--model_name_or_path", str(llm), "--image_folder", str(data["image_folder"]), "--vision_tower", tower,
              "--mm_projector_type", "mlp2x_gelu", "--mm_use_im_start_end", "False", "--mm_use_im_patch_token",
              "False", "--bf16", "True", "--per_device_train_batch_size", "2", "--max_steps", "2",
              "--learning_rate", "1e-3", "--lr_scheduler_type", "constant", "--logging_steps", "1", "--model_max_length", "256",
              "--dataloader_num_workers", "0", "--lazy_preprocess", "True", "--report_to", "none", "--seed", "0"]
    pretrain_dir, finetune_dir = tmp_path / "llava-vq-pretrain", tmp_path / "llava-vq-finetune"
    pretrain = [*shared, "--version", "plain", "--data_path", str(data["pretrain"]), "--tune_mm_mlp_adapter", "True",
                "--output_dir", str(pretrain_dir)]
    finetune = [*shared, "--version", "qwen_2", "--data_path", str(data["finetune"]), "--image_aspect_ratio", "pad",
                "--pretrain_mm_mlp_adapter", str(pretrain_dir / "mm_projector.bin"), "--output_dir", str(finetune_dir)]
    spec = {"train": [pretrain, finetune], "model_dir": str(finetune_dir), "conv_mode": "qwen_2",
            "image": str(data["image_folder"] / "img0.png"), "other_image": str(data["image_folder"] / "img1.png"),
            "report": str(tmp_path / "report.json")}
    (tmp_path / "spec.json").write_text(json.dumps(spec))
    run_python([str(PIPELINE), str(tmp_path / "spec.json")], cwd=tmp_path)

    config = json.loads((finetune_dir / "config.json").read_text())
    assert config["mm_vision_tower"] == tower and config["mm_hidden_size"] == 8
    weights = load_file(str(finetune_dir / "model.safetensors"))
    assert weights["model.mm_projector.0.weight"].shape[1] == 8
    source = torch.load(vq_file, weights_only=True)["model"]
    saved_tower = {k.split("vision_tower.vq.")[1]: v for k, v in weights.items() if "vision_tower.vq." in k}
    assert saved_tower and all(torch.equal(v, source[k].to(v.dtype)) for k, v in saved_tower.items())  # frozen
    losses = [e["loss"] for e in json.loads((finetune_dir / "trainer_state.json").read_text())["log_history"]
              if "loss" in e]
    assert len(losses) == 2 and all(math.isfinite(x) for x in losses)
    report = json.loads((tmp_path / "report.json").read_text())
    for probe in report.values():
        assert probe["model_class"] == "LlavaQwen2ForCausalLM" and len(probe["generated"]) == 4
        assert probe["image_effect"] > 0  # the answer depends on which image went through the VQ tower
