"""The LlamaGen integration inside a real LlamaGen checkout (``LLAMAGEN_ROOT``; skipped without one).

The checkout is copied to a temporary folder and patched there; LlamaGen code runs in
subprocesses with the copy as working directory and ``PYTHONPATH``, as its README has it.
"""
from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import toklip_plugin as tp
from toklip_plugin.checkpoints import native_to_released
from toklip_plugin.config import VQConfig
from toklip_plugin.integrations.llamagen.fused import GPT_models
from toklip_plugin.integrations.llamagen.gpt import GPT_SIZES
from toklip_plugin.patching import apply_patches, patch_status, revert_patches

ROOT = os.environ.get("LLAMAGEN_ROOT")
pytestmark = [
    pytest.mark.llamagen,
    pytest.mark.skipif(not ROOT, reason="set LLAMAGEN_ROOT to a LlamaGen checkout to run these"),
]
SOURCES = ("*.py", "*.md", "*.txt", "*.sh")  # enough of the checkout to run its scripts


@pytest.fixture(scope="module")
def checkout(tmp_path_factory) -> Path:
    """A patched copy of the checkout."""
    copy = tmp_path_factory.mktemp("llamagen") / "LlamaGen"
    shutil.copytree(ROOT, copy, ignore=lambda d, names: [n for n in names if _skip(Path(d) / n)])
    apply_patches("llamagen", copy)
    return copy


def _skip(path: Path) -> bool:
    return path.name == ".git" or (path.is_file() and not any(path.match(p) for p in SOURCES))


def run_in(checkout: Path, args: list[str], env: dict | None = None, timeout: int = 1800) -> str:
    result = subprocess.run([sys.executable, *args], cwd=checkout, capture_output=True, text=True, timeout=timeout,
                            env={**os.environ, "PYTHONPATH": str(checkout), **(env or {})})
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return result.stdout


def test_patches_apply_once_and_revert_to_the_original_bytes(tmp_path):
    copy = tmp_path / "LlamaGen"
    shutil.copytree(ROOT, copy, ignore=lambda d, names: [n for n in names if _skip(Path(d) / n)])
    touched = {f for s in patch_status("llamagen", copy) for f in s.files}
    before = {f: (copy / f).read_bytes() for f in touched if (copy / f).exists()}
    assert apply_patches("llamagen", copy)
    assert apply_patches("llamagen", copy) == []
    assert {s.state for s in patch_status("llamagen", copy)} == {"applied"}
    revert_patches("llamagen", copy)
    assert {f: (copy / f).read_bytes() for f in touched if (copy / f).exists()} == before


DRIVER = r"""
import json, sys, torch
from tokenizer.tokenizer_image.vq_model import VQ_models
from autoregressive.models.gpt import GPT_models, ModelArgs, Transformer
from autoregressive.models.generate import generate
from toklip_plugin.integrations.llamagen.fused import TokLIPTransformer
from toklip_plugin.integrations.llamagen.gpt import Transformer as OurTransformer, model_args
from toklip_plugin.integrations.llamagen.sampling import generate as our_generate
from toklip_plugin.integrations.llamagen.vq import TokLIPVQModel

toklip_dir = sys.argv[1]
out = {"vq_names": sorted(VQ_models), "gpt_names": sorted(GPT_models)}
kw = dict(vocab_size=1024, block_size=64, num_classes=10, cls_token_num=1, model_type="c2i")
tiny = dict(n_layer=2, n_head=4, dim=64)
torch.manual_seed(0)
vq = VQ_models["toklip"](codebook_size=1024, codebook_embed_dim=8).eval()
gpt = GPT_models["GPT-B-toklip"](toklip=toklip_dir, **tiny, **kw).eval()
out["types"] = [isinstance(vq, TokLIPVQModel), isinstance(gpt, TokLIPTransformer)]
with torch.no_grad():
    gpt.output.weight.normal_(std=0.5)
    gpt.fusion.proj.weight.normal_(std=0.2)
cond = torch.tensor([1, 5])
torch.manual_seed(1)
codes = generate(gpt, cond, 64, cfg_scale=2.5, cfg_interval=-1, temperature=1.0, top_k=0, top_p=1.0, sample_logits=True)
torch.manual_seed(1)
ours = our_generate(gpt, cond, 64, cfg_scale=2.5, temperature=1.0, top_k=0, top_p=1.0)
images = vq.decode_code(codes, [2, 8, 8, 8])
out.update(codes_dtype=str(codes.dtype), codes_shape=list(codes.shape), codes_max=int(codes.max()),
           same_as_our_driver=bool(torch.equal(codes, ours)), distinct_codes=int(codes.unique().numel()),
           images_shape=list(images.shape), images_finite=bool(torch.isfinite(images).all()))

# LlamaGen's own GPT and our re-implementation, same weights: same logits
no_dropout = dict(token_dropout_p=0.0, resid_dropout_p=0.0, ffn_dropout_p=0.0)  # class dropout stays 0.1
upstream = Transformer(ModelArgs(**tiny, **kw, **no_dropout)).train()
ours_plain = OurTransformer(model_args("GPT-B", **tiny, **kw, **no_dropout)).train()
with torch.no_grad():
    upstream.output.weight.normal_(std=0.5)
ours_plain.load_state_dict(upstream.state_dict(), strict=True)
z = torch.randint(0, 1024, (3, 64))
torch.manual_seed(3); a, loss_a = upstream(cond_idx=torch.tensor([0, 1, 2]), idx=z[:, :-1], targets=z)
torch.manual_seed(3); b, loss_b = ours_plain(cond_idx=torch.tensor([0, 1, 2]), idx=z[:, :-1], targets=z)
out["plain_max_diff"] = float((a - b).abs().max())
out["loss_diff"] = float((loss_a - loss_b).abs())
upstream.eval(); ours_plain.eval()
torch.manual_seed(2); ca = generate(upstream, cond, 64, cfg_scale=2.5, top_k=0, top_p=1.0)
torch.manual_seed(2); cb = generate(ours_plain, cond, 64, cfg_scale=2.5, top_k=0, top_p=1.0)
out["plain_generate_equal"] = bool(torch.equal(ca, cb))
print("RESULT" + json.dumps(out))
"""


def test_llamagen_dicts_build_our_models_and_its_generate_samples_decodable_codes(checkout, tmp_path):
    tp.create_model(tp.resolve_config("toklip-tiny"), seed=0).save_pretrained(tmp_path / "tiny")
    stdout = run_in(checkout, ["-c", DRIVER, str(tmp_path / "tiny")])
    out = json.loads(stdout.split("RESULT", 1)[1])
    assert "toklip" in out["vq_names"] and "VQ-16" in out["vq_names"]
    upstream_sizes = {name for name in out["gpt_names"] if not name.endswith("-toklip")}
    assert upstream_sizes == set(GPT_SIZES)  # our size list is LlamaGen's
    assert {f"{size}-toklip" for size in GPT_SIZES} <= set(out["gpt_names"])
    assert out["types"] == [True, True]
    assert out["codes_dtype"] == "torch.int32" and out["codes_shape"] == [2, 64] and out["codes_max"] < 1024
    assert out["distinct_codes"] > 1
    assert out["same_as_our_driver"]  # our test driver makes the calls LlamaGen's generate() makes
    assert out["images_shape"] == [2, 3, 128, 128] and out["images_finite"]
    assert out["plain_max_diff"] < 1e-4 and out["loss_diff"] < 1e-5
    assert out["plain_generate_equal"]


@pytest.mark.slow
def test_sample_c2i_script_runs_unchanged_with_toklip_vq_and_fused_gpt(checkout, tmp_path):
    """sample_c2i.py with --vq-model toklip --vq-ckpt <a TokLIP .pt> --gpt-model GPT-B-toklip."""
    config = tp.resolve_config("toklip-tiny").replace(image_size=256, vq=VQConfig(codebook_size=1024))
    toklip = tp.create_model(config, seed=0).eval()
    toklip.save_pretrained(tmp_path / "toklip256")
    released = {"state_dict": {f"module.{k}": v for k, v in native_to_released(toklip.state_dict()).items()}}
    torch.save(released, tmp_path / "toklip256.pt")
    gpt = GPT_models["GPT-B-toklip"](toklip=toklip, vocab_size=1024, block_size=256, num_classes=1000)
    args = argparse.Namespace(gpt_model="GPT-B-toklip")  # train_c2i.py saves its args in the checkpoint
    torch.save({"model": gpt.state_dict(), "steps": 1, "args": args}, tmp_path / "0000001.pt")
    stdout = run_in(checkout, [
        "autoregressive/sample/sample_c2i.py", "--vq-model", "toklip", "--vq-ckpt", str(tmp_path / "toklip256.pt"),
        "--gpt-model", "GPT-B-toklip", "--gpt-ckpt", str(tmp_path / "0000001.pt"), "--image-size", "256",
        "--codebook-size", "1024", "--precision", "none", "--cfg-scale", "2.5", "--top-k", "0", "--top-p", "1.0", "--temperature", "1.0",
    ], env={"TOKLIP_MODEL": str(tmp_path / "toklip256")})
    assert "image is saved to sample_c2i.png" in stdout
    from PIL import Image

    with Image.open(checkout / "sample_c2i.png") as image:
        assert image.size == (4 * 256 + 5 * 2, 2 * 256 + 3 * 2)  # save_image's grid, nrow=4, padding 2


@pytest.mark.parametrize("recipe", ["extract_codes.sh", "train_c2i.sh", "sample_c2i.sh"])
def test_recipes_pass_only_flags_the_llamagen_script_defines(recipe):
    text = (Path(tp.__file__).resolve().parent.parent / "configs" / "llamagen" / recipe).read_text()
    script = re.search(r"(autoregressive/\S+\.py)", text).group(1)
    defined = set(re.findall(r'add_argument\("(--[\w-]+)"', (Path(ROOT) / script).read_text()))
    used = set(re.findall(r"(?<![\w-])(--[a-z][\w-]+)", text.split(script, 1)[1]))
    assert used and used <= defined, sorted(used - defined)
