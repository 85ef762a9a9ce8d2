"""The integrations accept ``hf-hub:`` ids: the LLaVA tower (``--vision_tower toklip:hf-hub:ORG/NAME``), the fused
LlamaGen GPT's TokLIP (``$TOKLIP_MODEL`` or ``toklip=``) and a LLaVA checkpoint opened by lmms-eval's
``toklip_llava``, all read offline from a Hugging Face cache laid out as huggingface_hub lays it out."""
from __future__ import annotations

import copy
import json
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from helpers.hub_cache import fake_commit, use_offline_cache, write_snapshot
from helpers.llava_fixtures import build_tiny_llm, require_patched_llava
from helpers.weights import spread_weights

import toklip_plugin as tp
from toklip_plugin.checkpoints import native_to_released

REPO = "org/tiny"


@pytest.fixture
def published(tmp_path, monkeypatch):
    """A trained-looking toklip-tiny saved to ``tmp_path/dir``, the same pushed as ``REPO``, and its
    released-layout file in the repo ``org/released``; the Hugging Face cache offline."""
    cache = use_offline_cache(monkeypatch, tmp_path / "hf")
    model = spread_weights(tp.create_model(tp.resolve_config("toklip-tiny"), seed=5), 5).eval()
    model.save_pretrained(tmp_path / "dir")
    model.save_pretrained(tmp_path / "push", model_card={"repo_id": REPO})
    write_snapshot(cache, REPO, fake_commit("tiny"), tmp_path / "push")
    (tmp_path / "released").mkdir()
    torch.save({"state_dict": native_to_released(model.state_dict())}, tmp_path / "released" / "TokLIP_tiny.pt")
    write_snapshot(cache, "org/released", fake_commit("released"), tmp_path / "released")
    return SimpleNamespace(model=model, directory=tmp_path / "dir")


def _tower_args():
    return SimpleNamespace(mm_vision_select_layer=-1, mm_vision_select_feature="patch")


def test_the_llava_tower_reads_a_hub_repo_as_it_reads_the_directory(published, images):
    require_patched_llava()
    from toklip_plugin.integrations.llava.tower import TokLIPVisionTower

    from_dir = TokLIPVisionTower(f"toklip:{published.directory}", _tower_args())(images)
    assert not torch.equal(from_dir, TokLIPVisionTower("toklip-tiny", _tower_args())(images))  # not the random tower
    assert torch.equal(TokLIPVisionTower(f"toklip:hf-hub:{REPO}", _tower_args())(images), from_dir)
    released = TokLIPVisionTower("toklip-tiny:hf-hub:org/released/TokLIP_tiny.pt", _tower_args())
    assert torch.equal(released(images), from_dir)


@pytest.mark.parametrize("how", ["environment", "argument"])
def test_the_fused_llamagen_gpt_reads_its_toklip_from_a_hub_repo(published, monkeypatch, how):
    from toklip_plugin.integrations.llamagen.fused import GPT_models, load_frozen_toklip

    kwargs = dict(n_layer=2, n_head=4, dim=64, vocab_size=1024, block_size=64, num_classes=10, cls_token_num=1,
                  model_type="c2i")
    if how == "environment":
        monkeypatch.setenv("TOKLIP_MODEL", f"hf-hub:{REPO}")  # what LlamaGen's scripts leave to us
    else:
        kwargs["toklip"] = f"hf-hub:{REPO}"
    gpt = GPT_models["GPT-B-toklip"](**kwargs)
    codes = torch.randint(0, 1024, (2, 64), generator=torch.Generator().manual_seed(0))
    expected = load_frozen_toklip(published.directory, None, 64).encode_codes(codes)
    assert torch.equal(expected, published.model.encode_codes(codes))
    assert torch.equal(load_frozen_toklip(f"hf-hub:{REPO}", None, 64).encode_codes(codes), expected)
    own = {k: v for k, v in published.model.encoder.state_dict().items()}
    assert all(torch.equal(v, own[k]) for k, v in gpt.token_encoder.encoder.state_dict().items())


def _llava_checkpoint(root: Path, vision_tower: str) -> Path:
    """A tiny LLaVA-Llama built as LLaVA's train.py builds one with ``--vision_tower``, saved without the tower
    weights (as LLaVA saves a frozen tower): re-opening it rebuilds the tower from ``mm_vision_tower`` alone."""
    from llava.model import LlavaLlamaForCausalLM
    from transformers import AutoTokenizer

    llm = build_tiny_llm("llama", root / "llm")
    model = LlavaLlamaForCausalLM.from_pretrained(llm)
    model.get_model().initialize_vision_modules(SimpleNamespace(
        vision_tower=vision_tower, mm_vision_select_layer=-1, mm_vision_select_feature="patch",
        pretrain_mm_mlp_adapter=None, mm_projector_type="mlp2x_gelu", mm_patch_merge_type="flat"))
    model.config.update(dict(image_aspect_ratio="pad", mm_use_im_start_end=False, mm_use_im_patch_token=False))
    out = root / "llava-toklip-hub"
    model.save_pretrained(out, state_dict={k: v for k, v in model.state_dict().items() if "vision_tower" not in k})
    AutoTokenizer.from_pretrained(llm, use_fast=False).save_pretrained(out)
    return out


@pytest.mark.slow
def test_lmms_eval_opens_a_llava_checkpoint_whose_tower_is_a_hub_id(published, tmp_path, images):
    require_patched_llava()
    from toklip_plugin.integrations.lmms_eval.model import TokLIPLlava

    checkpoint = _llava_checkpoint(tmp_path, f"toklip:hf-hub:{REPO}")
    assert json.loads((checkpoint / "config.json").read_text())["mm_vision_tower"] == f"toklip:hf-hub:{REPO}"
    lmm = TokLIPLlava(pretrained=str(checkpoint), device="cpu")
    tower = lmm.model.get_vision_tower()
    rounded = copy.deepcopy(published.model).half().float()  # LLaVA's builder casts every tower to float16
    with torch.no_grad():
        assert torch.equal(tower(images), rounded.encode_codes(rounded.tokenize(images)))
