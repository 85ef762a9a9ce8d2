"""The unified model's training data path and set-up in LLaVA's train.py (issue 14): the ``qwen_2_unified``
template's input ids and labels, caption dropout, the converted base, and what ``initialize_vision_tokenizer``
sets up. Real LLaVA and transformers, a tiny Qwen2 with a byte-level BPE tokenizer, toklip-tiny."""
from __future__ import annotations

import dataclasses
import json
import os
import random
import shlex
import subprocess
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

IGNORE, UNDERSTAND, DRAW = -100, -200, -201
CAPTION = "a red square on a white background"
T2I = [{"from": "human", "value": CAPTION}, {"from": "gpt", "value": "<image>"}]
I2T = [{"from": "human", "value": "<image>\nDescribe the picture briefly."}, {"from": "gpt", "value": CAPTION}]


def template(dropout: float = 0.0):
    from llava.conversation import conv_templates

    import toklip_plugin.integrations.llava.unified  # noqa: F401  (registers the templates, as LLaVA's lookup does)

    return dataclasses.replace(conv_templates["qwen_2_unified"], caption_dropout=dropout)


def preprocess(conv, source, tokenizer):
    out = conv.preprocess([source], tokenizer, has_image=True)
    return out["input_ids"][0].tolist(), out["labels"][0].tolist()


def ids_of(tokenizer, text: str) -> list[int]:
    return tokenizer(text, add_special_tokens=False).input_ids


# the template --------------------------------------------------------------------------------
def test_an_image_in_the_assistant_turn_is_a_labelled_generation_placeholder_then_a_learned_turn_end(tokenizer):
    from toklip_plugin.integrations.llava.image_generation import generation_prompt

    ids, labels = preprocess(template(), T2I, tokenizer)
    end = ids_of(tokenizer, "<|im_end|>\n")
    prompt = ids_of(tokenizer, generation_prompt(CAPTION))  # what sampling feeds before BOI
    assert ids == prompt + [DRAW] + end
    assert labels == [IGNORE] * len(prompt) + [DRAW] + end


def test_an_image_in_the_user_turn_stays_an_unlabelled_understanding_placeholder_as_in_qwen_2(tokenizer):
    from llava.conversation import conv_templates

    ours = preprocess(template(), I2T, tokenizer)
    assert ours == preprocess(conv_templates["qwen_2"], I2T, tokenizer)
    ids, labels = ours
    assert ids.count(UNDERSTAND) == 1 and labels[ids.index(UNDERSTAND)] == IGNORE and DRAW not in ids


def test_a_dropped_caption_renders_exactly_the_unconditional_sampling_prompt(tokenizer):
    from toklip_plugin.integrations.llava.image_generation import generation_prompt

    ids, labels = preprocess(template(dropout=1.0), T2I, tokenizer)
    unconditional = ids_of(tokenizer, generation_prompt(""))
    end = ids_of(tokenizer, "<|im_end|>\n")
    assert ids == unconditional + [DRAW] + end
    assert labels == [IGNORE] * len(unconditional) + [DRAW] + end
    assert not set(ids_of(tokenizer, CAPTION)) <= set(ids)


def test_captions_drop_at_the_configured_rate_and_only_in_text_to_image_samples(tokenizer):
    conditional = preprocess(template(), T2I, tokenizer)[0]
    conv = template(dropout=0.3)
    random.seed(0)
    dropped = sum(preprocess(conv, T2I, tokenizer)[0] != conditional for _ in range(400))
    assert 0.24 < dropped / 400 < 0.36  # binomial(400, 0.3): sd 0.023
    always = template(dropout=1.0)
    chat = I2T + [{"from": "human", "value": "Draw it."}, {"from": "gpt", "value": "<image>"}]
    for source in (I2T, chat):
        assert preprocess(always, source, tokenizer) == preprocess(template(), source, tokenizer)


# the converted base --------------------------------------------------------------------------------
def test_the_converted_base_is_picked_as_the_unified_class_and_loads_the_qwen2_weights(qwen2_dir, tmp_path):
    from llava.model import LlavaLlamaForCausalLM
    from llava.plugins import find_language_model
    from safetensors.torch import load_file

    from toklip_plugin.integrations.llava.unified import LlavaQwen2UnifiedForCausalLM
    from toklip_plugin.integrations.llava.unified_base import write_unified_base

    out = write_unified_base(qwen2_dir, tmp_path / "base", gen_weight=0.5, gen_prompt_dropout=0.2)
    config = json.loads((out / "config.json").read_text())
    assert config["model_type"] == "llava_qwen2_unified"
    assert (config["gen_weight"], config["gen_prompt_dropout"], config["gen_fusion"]) == (0.5, 0.2, "concat")
    assert config["hidden_size"] == json.loads((qwen2_dir / "config.json").read_text())["hidden_size"]
    assert find_language_model(str(out), LlavaLlamaForCausalLM) is LlavaQwen2UnifiedForCausalLM
    assert (out / "model.safetensors").is_symlink() and (out / "tokenizer_config.json").exists()
    model = LlavaQwen2UnifiedForCausalLM.from_pretrained(out, torch_dtype=torch.float32)
    reference = load_file(str(qwen2_dir / "model.safetensors"))
    assert all(torch.equal(model.state_dict()[k], v) for k, v in reference.items())
    assert not model.config.has_generation  # sized by train.py's set-up, from the tower


def test_a_base_that_is_not_qwen2_is_refused(tmp_path):
    from toklip_plugin.integrations.llava.unified_base import write_unified_base

    (tmp_path / "llama").mkdir()
    (tmp_path / "llama" / "config.json").write_text(json.dumps({"model_type": "llama", "hidden_size": 64}))
    with pytest.raises(ValueError, match="'llama' model; the unified model starts from a Qwen2"):
        write_unified_base(tmp_path / "llama", tmp_path / "out")


# train.py's set-up ---------------------------------------------------------------------------------
def model_args(**changes) -> SimpleNamespace:
    """What LLaVA's train.py passes (its ModelArguments)."""
    return SimpleNamespace(**{"vision_tower": "toklip-tiny", "mm_vision_select_layer": -1,
                              "mm_vision_select_feature": "patch", "pretrain_mm_mlp_adapter": None,
                              "mm_patch_merge_type": "flat", "mm_projector_type": "mlp2x_gelu",
                              "mm_use_im_start_end": False, "mm_use_im_patch_token": False,
                              "tune_mm_mlp_adapter": False, "freeze_backbone": False, **changes})


def set_up(qwen2_dir, tmp_path, version: str, **changes):
    """train.py's order: load, freeze_backbone, pick the template, vision modules, initialize_vision_tokenizer."""
    from llava import conversation as conversation_lib
    from transformers import AutoTokenizer

    from toklip_plugin.integrations.llava.unified import LlavaQwen2UnifiedForCausalLM
    from toklip_plugin.integrations.llava.unified_base import write_unified_base

    args = model_args(**changes)
    base = write_unified_base(qwen2_dir, tmp_path / "base", gen_prompt_dropout=0.25)
    model = LlavaQwen2UnifiedForCausalLM.from_pretrained(base, torch_dtype=torch.float32)
    tokenizer = AutoTokenizer.from_pretrained(base, use_fast=False)
    if args.freeze_backbone:
        model.model.requires_grad_(False)
    conversation_lib.default_conversation = conversation_lib.conv_templates[version]
    model.get_model().initialize_vision_modules(args)
    model.initialize_vision_tokenizer(args, tokenizer=tokenizer)
    return model, conversation_lib.default_conversation


@pytest.fixture
def restore_template():
    from llava import conversation as conversation_lib

    saved = conversation_lib.default_conversation
    yield
    conversation_lib.default_conversation = saved


def test_train_setup_builds_the_generation_modules_and_gives_the_template_the_configs_dropout(
        qwen2_dir, tmp_path, restore_template):
    model, conv = set_up(qwen2_dir, tmp_path, "qwen_2_unified")
    assert model.config.has_generation and model.config.image_tokens == 64
    assert conv.caption_dropout == 0.25
    assert all(p.requires_grad for p in model.image_head.parameters())


def test_stage1_freeze_backbone_trains_only_the_projector_and_the_generation_modules(
        qwen2_dir, tmp_path, restore_template):
    model, _ = set_up(qwen2_dir, tmp_path, "qwen_2_unified", freeze_backbone=True)
    trainable = {name.split(".")[0] if not name.startswith("model.") else ".".join(name.split(".")[:2])
                 for name, p in model.named_parameters() if p.requires_grad}
    assert trainable == {"model.mm_projector", "image_head", "code_embed", "gen_fusion"}


def test_llavas_own_tokenizer_setup_runs_before_the_generation_setup(qwen2_dir, tmp_path, restore_template):
    """The unified ``initialize_vision_tokenizer`` extends LLaVA's: ``--mm_use_im_patch_token`` still adds LLaVA's
    patch token to the tokenizer and the embeddings (one row more than without it), then BOI/EOI come after it."""
    plain, _ = set_up(qwen2_dir, tmp_path / "plain", "qwen_2_unified")
    patched, _ = set_up(qwen2_dir, tmp_path / "patched", "qwen_2_unified", mm_use_im_patch_token=True)
    rows = plain.get_input_embeddings().num_embeddings
    assert patched.get_input_embeddings().num_embeddings == rows + 1
    assert patched.config.image_start_token_id == plain.config.image_start_token_id + 1


@pytest.mark.parametrize("version, changes, message", [
    ("qwen_2_unified", {"tune_mm_mlp_adapter": True}, "mm_projector.bin alone .* --freeze_backbone True"),
    ("qwen_2", {}, r"--version qwen_2_unified \(.*\), not 'qwen'$"),  # names the template it was given
])
def test_train_setup_refuses_flags_that_would_lose_the_image_head_or_its_data(
        qwen2_dir, tmp_path, restore_template, version, changes, message):
    with pytest.raises(ValueError, match=message):
        set_up(qwen2_dir, tmp_path, version, **changes)


def test_continuing_a_unified_checkpoint_with_a_tokenizer_without_its_span_tokens_is_refused(
        qwen2_dir, tmp_path, restore_template):
    from transformers import AutoTokenizer

    model, _ = set_up(qwen2_dir, tmp_path, "qwen_2_unified")  # has its generation modules now
    head = model.image_head.weight.detach().clone()
    plain = AutoTokenizer.from_pretrained(qwen2_dir, use_fast=False)  # the base's: no BOI/EOI
    with pytest.raises(ValueError, match="use the tokenizer saved with the checkpoint"):
        model.initialize_vision_tokenizer(model_args(), tokenizer=plain)
    plain.add_tokens(["<|vision_start|>", "<|vision_end|>"], special_tokens=True)  # as the saved tokenizer has them
    model.initialize_vision_tokenizer(model_args(), tokenizer=plain)
    assert torch.equal(model.image_head.weight, head)  # continuing keeps the trained head


# the recipes --------------------------------------------------------------------------------------
def dry_run_unified(num_gpus: int = 8) -> list[list[str]]:
    """The commands of ``bash configs/llava/unified.sh`` (default recipe: TokLIP-L/384 + Qwen2.5-7B-Instruct)."""
    configs = Path(__file__).resolve().parents[2] / "configs" / "llava"
    env = {**os.environ, "DRY_RUN": "1", "NUM_GPUS": str(num_gpus), "DATA_ROOT": "/data", "OUTPUT_ROOT": "/out"}
    out = subprocess.run(["bash", str(configs / "unified.sh")], env=env, capture_output=True, text=True,
                         check=True).stdout
    return [shlex.split(line) for line in out.splitlines() if line.strip()]


def parsed(command: list[str]):
    """LLaVA's own dataclasses' parse of a ``deepspeed --num_gpus N --module M ARGS`` command."""
    from llava.train.train import DataArguments, ModelArguments, TrainingArguments
    from transformers import HfArgumentParser

    namespace, unknown = HfArgumentParser((ModelArguments, DataArguments, TrainingArguments)).parse_known_args(
        command[5:])
    assert unknown == [], f"flags LLaVA's train.py does not know: {unknown}"
    return namespace


def test_unified_recipe_converts_qwen_then_trains_stage1_frozen_and_stage2_from_it():
    from toklip_plugin.integrations.llava.tower import parse_tower_name

    convert, stage1, stage2 = dry_run_unified()
    assert convert[:4] == ["python", "-m", "toklip_plugin.integrations.llava.unified_base", "Qwen/Qwen2.5-7B-Instruct"]
    first, second = parsed(stage1), parsed(stage2)
    assert first.model_name_or_path == convert[4] and second.model_name_or_path == first.output_dir
    assert first.freeze_backbone and not first.tune_mm_mlp_adapter and not second.freeze_backbone
    for args, lr, batch in ((first, 1e-3, 256), (second, 2e-5, 128)):
        assert args.version == "qwen_2_unified" and args.vision_tower == "toklip-l"
        assert json.loads(Path(args.deepspeed).read_text())["zero_optimization"]["stage"] == 2
        assert args.learning_rate == lr and args.per_device_train_batch_size * args.gradient_accumulation_steps * 8 == batch
        assert "llava" in Path(args.output_dir).name  # LLaVA's loader needs it in the name
        tokens = parse_tower_name(args.vision_tower)[0].num_tokens
        assert args.model_max_length >= (tokens + 2) + tokens + 64  # a drawn image, an understood one, and text
