"""``toklip-generate`` (issue 14): the console script draws PNGs from a saved unified checkpoint.

The checkpoint is a tiny unified LLaVA-Qwen2 with a toklip-tiny tower (``helpers.unified_checkpoint``).
The script runs as a user runs it, installed console script in a subprocess; what it writes is checked
against the library in this process: ``load_llava_model`` + ``generate_image`` with the same seed give the
codes, and the decoded images, clamped to [-1, 1] and mapped to 0..255 by hand, give the pixels.
"""
from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from helpers.llava_copies import pristine_copy
from helpers.llava_fixtures import build_tiny_llm
from helpers.unified_checkpoint import TOWER_ARGS, save_tiny_unified
from PIL import Image

import toklip_plugin as tp
from toklip_plugin.integrations.llava.generate_cli import main

SCRIPT = Path(sys.executable).with_name("toklip-generate")
CAPTIONS = ["a red square on a white background", "a blue circle", "two yellow stripes over a dark sky"]
TRAIN_HINT = "train one with configs/llava/unified.sh"


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory) -> Path:
    return save_tiny_unified(tmp_path_factory.mktemp("unified"))


@pytest.fixture(scope="module")
def opened(checkpoint):
    """The checkpoint opened in this process as a user of the library opens it."""
    from toklip_plugin.integrations.llava import load_llava_model

    tokenizer, model, _, _ = load_llava_model(checkpoint, device="cpu")
    return model, tokenizer


def run_script(*args: str, cwd: Path, env: dict | None = None) -> subprocess.CompletedProcess:
    threads = str(torch.get_num_threads())  # the same float reductions as this process
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false", "OMP_NUM_THREADS": threads,
           **(env or {})}
    return subprocess.run([str(SCRIPT), *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=600)


def expected_pixels(images: torch.Tensor) -> np.ndarray:
    """[-1, 1] -> 0..255 by hand: x = -1 is 0, x = 1 is 255, rounded to the nearest level (float32, ties to even)."""
    unit = (np.clip(images.numpy(), -1, 1) + np.float32(1)) / np.float32(2)
    return np.rint(unit * np.float32(255)).astype(np.uint8).transpose(0, 2, 3, 1)


def png(path: Path) -> np.ndarray:
    with Image.open(path) as image:
        assert image.mode == "RGB"
        return np.asarray(image)


def library_draw(opened, prompts: list[str], seed: int, batch_size: int, **sampling):
    """What generate_image gives for ``prompts``, ``batch_size`` per call, one generator seeded once."""
    from toklip_plugin.integrations.llava.image_generation import generate_image

    model, tokenizer = opened
    generator = torch.Generator().manual_seed(seed)
    drawn = [generate_image(model, tokenizer, prompts[i:i + batch_size], generator=generator, **sampling)
             for i in range(0, len(prompts), batch_size)]
    return torch.cat([d.codes for d in drawn]), torch.cat([d.images for d in drawn])


@pytest.mark.slow
def test_script_writes_one_tower_sized_png_per_prompt_with_the_pixels_generate_image_draws(checkpoint, opened,
                                                                                         tmp_path):
    run = run_script("--model", str(checkpoint), *CAPTIONS, "-o", str(tmp_path / "drawn"), "--seed", "7",
                     "--cfg-scale", "2.5", "--top-k", "40", "--top-p", "0.95", "--temperature", "0.9",
                     "--batch-size", "2", "--codes", str(tmp_path / "codes.pt"), cwd=tmp_path)
    assert run.returncode == 0, run.stderr[-4000:]
    size = tp.resolve_config("toklip-tiny").image_size  # the tower's image size
    codes, images = library_draw(opened, CAPTIONS, seed=7, batch_size=2, cfg_scale=2.5, top_k=40, top_p=0.95,
                                 temperature=0.9)
    saved = torch.load(tmp_path / "codes.pt", weights_only=True)
    assert saved["prompts"] == CAPTIONS
    assert torch.equal(saved["codes"], codes)
    assert len(set(map(tuple, codes.tolist()))) == 3  # three different images to tell apart
    written = [png(tmp_path / "drawn" / f"{i:03d}.png") for i in range(3)]
    assert sorted(p.name for p in (tmp_path / "drawn").iterdir()) == ["000.png", "001.png", "002.png"]
    assert all(w.shape == (size, size, 3) for w in written)
    np.testing.assert_array_equal(np.stack(written), expected_pixels(images))
    assert f"wrote 3 image(s) of {codes.shape[1]} codes" in run.stdout


@pytest.mark.slow
def test_one_prompt_writes_the_named_png_and_cfg_none_samples_the_conditional_rows_alone(checkpoint, opened,
                                                                                      tmp_path):
    run = run_script("--model", str(checkpoint), CAPTIONS[1], "-o", "one.png", "--seed", "3", "--cfg-scale", "none",
                     cwd=tmp_path)
    assert run.returncode == 0, run.stderr[-4000:]
    _, images = library_draw(opened, CAPTIONS[1:2], seed=3, batch_size=1, cfg_scale=None)
    _, guided = library_draw(opened, CAPTIONS[1:2], seed=3, batch_size=1, cfg_scale=4.0)
    assert [p.name for p in tmp_path.iterdir()] == ["one.png"]
    np.testing.assert_array_equal(png(tmp_path / "one.png")[None], expected_pixels(images))
    assert not np.array_equal(expected_pixels(images), expected_pixels(guided))  # 'none' is not the default scale


# refusals, each naming the problem and the fix ---------------------------------------------------
def refusal(capsys, *argv: str) -> str:
    assert main(list(argv)) == 2
    return capsys.readouterr().err


def test_a_missing_model_directory_is_named_with_how_to_train_one(tmp_path, capsys):
    err = refusal(capsys, "--model", str(tmp_path / "nowhere"), "a cat", "-o", str(tmp_path / "x.png"))
    assert f"--model {tmp_path / 'nowhere'}: no such directory" in err and TRAIN_HINT in err
    assert not (tmp_path / "x.png").exists()


@pytest.mark.slow
def test_a_plain_llava_or_qwen2_checkpoint_is_refused_as_not_unified(tmp_path, capsys):
    from toklip_plugin.integrations.llava.qwen2 import LlavaQwen2ForCausalLM

    llm = build_tiny_llm("qwen2", tmp_path / "tiny-qwen2")
    llava = LlavaQwen2ForCausalLM.from_pretrained(llm)
    llava.get_model().initialize_vision_modules(TOWER_ARGS)
    llava.save_pretrained(tmp_path / "llava-qwen2")
    for folder, model_type in [(tmp_path / "llava-qwen2", "llava_qwen2"), (llm, "qwen2")]:
        err = refusal(capsys, "--model", str(folder), "a cat", "-o", str(tmp_path / "x.png"))
        assert f"is a '{model_type}' checkpoint, not a unified LLaVA-Qwen2 ('llava_qwen2_unified')" in err
        assert TRAIN_HINT in err
    assert not (tmp_path / "x.png").exists()


@pytest.mark.slow
def test_a_converted_base_without_an_image_head_is_sent_to_stage_1(tmp_path, capsys):
    from toklip_plugin.integrations.llava.unified_base import write_unified_base

    base = tmp_path / "base"
    write_unified_base(build_tiny_llm("qwen2", tmp_path / "tiny-qwen2"), base)
    err = refusal(capsys, "--model", str(base), "a cat", "-o", str(tmp_path / "x.png"))
    assert "without an image head yet" in err and "configs/llava/unified_stage1.sh" in err


def test_several_prompts_into_one_png_name_are_refused_with_the_folder_form(tmp_path, capsys):
    err = refusal(capsys, "--model", str(tmp_path), "a", "b", "-o", str(tmp_path / "x.png"))
    assert f"-o {tmp_path / 'x.png'} names one PNG but 2 prompts give 2 images: pass a folder, e.g. -o {tmp_path / 'x'}/" in err


def test_no_prompt_at_all_is_refused(tmp_path, capsys):
    err = refusal(capsys, "--model", str(tmp_path), "-o", str(tmp_path / "x.png"))
    assert "no prompts: give captions as arguments or --prompts-file FILE" in err


@pytest.mark.slow
def test_a_codes_file_in_a_missing_folder_is_refused_before_drawing(checkpoint, tmp_path, capsys):
    err = refusal(capsys, "--model", str(checkpoint), "a cat", "-o", str(tmp_path / "x.png"),
                  "--codes", str(tmp_path / "missing" / "codes.pt"))
    assert f"the folder of --codes {tmp_path / 'missing' / 'codes.pt'} does not exist" in err
    assert not (tmp_path / "x.png").exists()


@pytest.mark.slow
def test_a_caption_longer_than_the_context_is_refused_without_a_traceback(checkpoint, tmp_path, capsys):
    err = refusal(capsys, "--model", str(checkpoint), " ".join(["a red square"] * 200), "-o", str(tmp_path / "x.png"))
    assert re.search(r"toklip-generate: error: a prompt of \d+ tokens .* shorten the caption", err)
    assert "Traceback" not in err and not (tmp_path / "x.png").exists()


@pytest.mark.slow
def test_an_unpatched_llava_is_named_with_the_patch_command(checkpoint, tmp_path):
    """The script under a copy of the installed LLaVA with our patches taken out (first on the path)."""
    copy = pristine_copy(tmp_path / "unpatched")
    run = run_script("--model", str(checkpoint), "a cat", "-o", "x.png", cwd=tmp_path, env={"PYTHONPATH": str(copy)})
    assert run.returncode == 2, run.stderr[-4000:]
    assert "LLaVA is not installed or not patched for plugins" in run.stderr
    assert "toklip-patch llava" in run.stderr and "Traceback" not in run.stderr
    assert not (tmp_path / "x.png").exists()


def test_uint8_conversion_maps_the_vq_range_onto_0_to_255_and_clamps_outside_it():
    from toklip_plugin.transforms import to_uint8_images

    values = torch.tensor([-1.5, -1.0, -0.999, 0.0, 0.5, 1.0, 1.2])
    images = values.view(1, 1, 1, -1).expand(1, 3, 1, -1)
    pixels = to_uint8_images(images)
    assert pixels.shape == (1, 1, 7, 3) and pixels.dtype == torch.uint8
    # 127.5 * (x + 1): 0, 0, 0.1275 -> 0, 127.5 -> 128 (half up or even: 128 either way), 191.25 -> 191, 255, 255
    assert pixels[0, 0, :, 0].tolist() == [0, 0, 0, 128, 191, 255, 255]
    assert torch.equal(pixels[..., 0], pixels[..., 2])
