"""``toklip-generate`` in this process (issue 15's mutation group ``generate_cli``).

``test_generate_cli.py`` runs the installed console script in a subprocess, which mutmut's coverage cannot
see, and builds its checkpoints in slow tests. These tests call ``main([...])`` and the module's functions
directly against one tiny unified checkpoint (``helpers.unified_checkpoint``), and check what the script
promises (the module docstring, configs/llava/README.md "Drawing from the command line") against
expectations built another way: ``load_llava_model`` + ``generate_image`` with the same seed and batch
size, ``to_uint8_images`` for the pixels, the README's table for the defaults.
"""
from __future__ import annotations

import argparse
import locale
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from helpers.unified_checkpoint import save_tiny_unified
from PIL import Image

from toklip_plugin.integrations.llava.generate_cli import build_parser, main, output_paths, read_prompts, save_png
from toklip_plugin.transforms import to_uint8_images

CAPTIONS = ["a red square on a white background", "a blue circle", "two yellow stripes over a dark sky"]
TRAIN_HINT = "train one with configs/llava/unified.sh"
LONG_CAPTION = " ".join(["a red square"] * 200)  # ~600 tokens; the tiny Qwen2's context is 512


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory) -> Path:
    """``ROOT/llava-unified-tiny``; its plain Qwen2 LLM is beside it in ``ROOT/tiny-qwen2``."""
    return save_tiny_unified(tmp_path_factory.mktemp("unified"))


def opened(checkpoint: Path, dtype=None):
    from toklip_plugin.integrations.llava import load_llava_model

    tokenizer, model, _, _ = load_llava_model(checkpoint, device="cpu", dtype=dtype)
    return model, tokenizer


def library_draw(model_and_tokenizer, prompts: list[str], batch_size: int, generator, **sampling):
    """What ``generate_image`` gives for ``prompts``, ``batch_size`` per call, one generator for all calls."""
    from toklip_plugin.integrations.llava.image_generation import generate_image

    model, tokenizer = model_and_tokenizer
    drawn = [generate_image(model, tokenizer, prompts[i:i + batch_size], generator=generator, **sampling)
             for i in range(0, len(prompts), batch_size)]
    return torch.cat([d.codes for d in drawn]), torch.cat([d.images for d in drawn])


def seeded(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def png(path: Path) -> torch.Tensor:
    with Image.open(path) as image:
        assert image.format == "PNG" and image.mode == "RGB"
        return torch.from_numpy(np.asarray(image).copy())


def refusal(capsys, *argv: str) -> str:
    assert main(list(argv)) == 2
    err = capsys.readouterr().err
    assert err.splitlines()[-1].startswith("toklip-generate: error: ") and "Traceback" not in err
    return err  # a refusal while drawing comes after the progress bar's last line


# output paths ---------------------------------------------------------------------------------
def test_one_prompt_and_a_png_name_give_that_very_file_whatever_the_case_of_the_suffix(tmp_path):
    assert output_paths(tmp_path / "x.png", 1) == [tmp_path / "x.png"]
    assert output_paths(tmp_path / "Drawn.PNG", 1) == [tmp_path / "Drawn.PNG"]


def test_a_folder_name_gets_zero_padded_numbered_pngs_in_prompt_order_and_is_not_created_yet(tmp_path):
    one = output_paths(tmp_path / "drawn", 1)
    assert one == [tmp_path / "drawn" / "000.png"]
    many = output_paths(tmp_path / "drawn", 12)
    assert [p.name for p in many[:3]] + [many[-1].name] == ["000.png", "001.png", "002.png", "011.png"]
    assert len(many) == 12 and {p.parent for p in many} == {tmp_path / "drawn"}
    assert not (tmp_path / "drawn").exists()
    (tmp_path / "drawn").mkdir()
    assert output_paths(tmp_path / "drawn", 2) == [tmp_path / "drawn" / "000.png", tmp_path / "drawn" / "001.png"]


def test_a_png_name_in_a_missing_folder_is_refused_naming_the_folder_to_create(tmp_path):
    with pytest.raises(FileNotFoundError, match=f"create {tmp_path / 'missing'} first"):
        output_paths(tmp_path / "missing" / "x.png", 1)


def test_an_existing_file_without_the_png_suffix_is_refused_instead_of_used_as_a_folder(tmp_path):
    (tmp_path / "notes.txt").write_text("not a folder")
    with pytest.raises(ValueError, match="is a file without the .png suffix"):
        output_paths(tmp_path / "notes.txt", 1)


# prompts --------------------------------------------------------------------------------------
def test_prompts_file_lines_follow_the_arguments_stripped_with_blank_lines_skipped(tmp_path):
    captions = tmp_path / "captions.txt"
    captions.write_text("  a red circle  \n\n   \n\tcafé au lait\nlast line without newline", encoding="utf-8")
    args = argparse.Namespace(prompts=["first", "second"], prompts_file=str(captions))
    assert read_prompts(args) == ["first", "second", "a red circle", "café au lait", "last line without newline"]
    assert read_prompts(argparse.Namespace(prompts=[], prompts_file=str(captions)))[0] == "a red circle"
    assert read_prompts(argparse.Namespace(prompts=["only"], prompts_file=None)) == ["only"]


def test_a_prompts_file_is_read_as_utf8_whatever_the_locale(tmp_path):
    (tmp_path / "captions.txt").write_bytes("café au lait\n".encode("utf-8"))
    saved = locale.setlocale(locale.LC_CTYPE)
    locale.setlocale(locale.LC_CTYPE, "C")  # an ASCII locale, as in a bare container
    try:
        prompts = read_prompts(argparse.Namespace(prompts=[], prompts_file=str(tmp_path / "captions.txt")))
    finally:
        locale.setlocale(locale.LC_CTYPE, saved)
    assert prompts == ["café au lait"]


def test_a_prompts_file_of_blank_lines_alone_is_no_prompt(tmp_path):
    (tmp_path / "blank.txt").write_text("\n  \n\t\n")
    with pytest.raises(ValueError, match="no prompts: give captions as arguments or --prompts-file"):
        read_prompts(argparse.Namespace(prompts=[], prompts_file=str(tmp_path / "blank.txt")))


# arguments ------------------------------------------------------------------------------------
def test_defaults_are_the_ones_the_readme_documents():
    """configs/llava/README.md's table: cfg 4.0, temperature 1.0, top-k 0, top-p 1.0, no seed, batch 8."""
    args = build_parser().parse_args(["--model", "m", "a cat"])
    assert (args.cfg_scale, args.temperature, args.top_k, args.top_p, args.seed, args.batch_size) == (4.0, 1.0, 0, 1.0,
                                                                                                      None, 8)
    assert (args.output, args.codes, args.prompts_file, args.dtype) == ("toklip-generate.png", None, None, None)
    assert args.prompts == ["a cat"] and args.model == "m"
    assert args.device == ("cuda" if torch.cuda.is_available() else "cpu")


@pytest.mark.parametrize("text", ["none", "None", "NONE"])
def test_cfg_scale_none_in_any_case_turns_guidance_off(text):
    assert build_parser().parse_args(["--model", "m", "--cfg-scale", text]).cfg_scale is None


def test_cfg_scale_and_the_sampling_options_parse_as_numbers():
    args = build_parser().parse_args(["--model", "m", "--cfg-scale", "2.5", "--temperature", "0.5", "--top-k", "7",
                                      "--top-p", "0.9", "--seed", "3", "--batch-size", "1"])
    assert (args.cfg_scale, args.temperature, args.top_k, args.top_p, args.seed, args.batch_size) == (2.5, 0.5, 7, 0.9,
                                                                                                      3, 1)


@pytest.mark.parametrize("value", ["0", "-3"])
def test_a_batch_size_below_one_is_refused_by_the_parser(value, capsys):
    with pytest.raises(SystemExit) as stop:
        build_parser().parse_args(["--model", "m", "--batch-size", value])
    assert stop.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith("usage: toklip-generate ")  # the script's name, not sys.argv[0]'s (here pytest's)
    assert f"toklip-generate: error: argument --batch-size: must be at least 1, got {int(value)}" in err


def test_model_is_required(capsys):
    with pytest.raises(SystemExit) as stop:
        build_parser().parse_args(["a cat"])
    assert stop.value.code == 2 and "--model" in capsys.readouterr().err


# refusals before any weights are loaded ---------------------------------------------------------
def test_a_folder_without_config_json_is_refused_as_not_a_saved_model(tmp_path, capsys):
    (tmp_path / "empty").mkdir()
    err = refusal(capsys, "--model", str(tmp_path / "empty"), "a cat", "-o", str(tmp_path / "drawn"))
    assert f"--model {tmp_path / 'empty'} has no config.json" in err and TRAIN_HINT in err
    assert not (tmp_path / "drawn").exists()


def test_a_missing_model_leaves_no_output_folder_behind(tmp_path, capsys):
    err = refusal(capsys, "--model", str(tmp_path / "nowhere"), "a", "b", "-o", str(tmp_path / "new" / "drawn"))
    assert "no such directory" in err
    assert not (tmp_path / "new").exists()


def test_a_plain_qwen2_folder_is_refused_naming_its_model_type(checkpoint, tmp_path, capsys):
    """The fast counterpart (the fixture's own Qwen2) of the slow test of test_generate_cli.py."""
    err = refusal(capsys, "--model", str(checkpoint.parent / "tiny-qwen2"), "a cat", "-o", str(tmp_path / "x.png"))
    assert "is a 'qwen2' checkpoint, not a unified LLaVA-Qwen2 ('llava_qwen2_unified')" in err and TRAIN_HINT in err
    assert list(tmp_path.iterdir()) == []


def test_a_converted_base_is_sent_to_stage_1(checkpoint, tmp_path, capsys):
    """The fast counterpart (the fixture's own Qwen2 converted) of the slow test of test_generate_cli.py."""
    from toklip_plugin.integrations.llava.unified_base import write_unified_base

    base = write_unified_base(checkpoint.parent / "tiny-qwen2", tmp_path / "base")
    err = refusal(capsys, "--model", str(base), "a cat", "-o", str(tmp_path / "x.png"))
    assert "without an image head yet" in err and "configs/llava/unified_stage1.sh" in err
    assert not (tmp_path / "x.png").exists()


def test_an_llava_without_our_plugins_module_is_refused_naming_toklip_patch(checkpoint, tmp_path, capsys,
                                                                            monkeypatch):
    """In-process twin of the subprocess-only unpatched-LLaVA test: ``llava.plugins`` (what ``toklip-patch llava``
    adds) made unimportable."""
    monkeypatch.setitem(sys.modules, "llava.plugins", None)
    err = refusal(capsys, "--model", str(checkpoint), "a cat", "-o", str(tmp_path / "x.png"))
    assert "not patched for plugins" in err and "toklip-patch llava" in err
    assert not (tmp_path / "x.png").exists()


def test_a_codes_file_in_a_missing_folder_is_refused_before_drawing(checkpoint, tmp_path, capsys):
    """The fast counterpart (module checkpoint) of the slow in-process test of test_generate_cli.py."""
    err = refusal(capsys, "--model", str(checkpoint), "a cat", "-o", str(tmp_path / "drawn"),
                  "--codes", str(tmp_path / "missing" / "codes.pt"))
    assert f"the folder of --codes {tmp_path / 'missing' / 'codes.pt'} does not exist" in err
    assert not (tmp_path / "drawn" / "000.png").exists()


def test_an_unknown_dtype_is_refused_naming_the_choices(checkpoint, tmp_path, capsys):
    err = refusal(capsys, "--model", str(checkpoint), "a cat", "-o", str(tmp_path / "x.png"), "--dtype", "float13")
    assert "dtype must be one of" in err and "'float13'" in err
    assert not (tmp_path / "x.png").exists()


# drawing ----------------------------------------------------------------------------------------
def test_main_writes_the_pngs_codes_and_report_generate_image_gives(checkpoint, tmp_path, capsys):
    """In-process twin of the subprocess test: 3 captions, 2 per call (a full and a half batch)."""
    out, codes_file = tmp_path / "drawn", tmp_path / "codes.pt"
    assert main(["--model", str(checkpoint), *CAPTIONS, "-o", str(out), "--seed", "7", "--cfg-scale", "2.5",
                 "--top-k", "40", "--top-p", "0.95", "--temperature", "0.9", "--batch-size", "2",
                 "--codes", str(codes_file)]) == 0
    model_and_tokenizer = opened(checkpoint)
    codes, images = library_draw(model_and_tokenizer, CAPTIONS, 2, seeded(7), cfg_scale=2.5, top_k=40, top_p=0.95,
                                 temperature=0.9)
    assert len(set(map(tuple, codes.tolist()))) == 3  # three different images to tell apart
    assert sorted(p.name for p in out.iterdir()) == ["000.png", "001.png", "002.png"]
    assert torch.equal(torch.stack([png(out / f"00{i}.png") for i in range(3)]), to_uint8_images(images))
    saved = torch.load(codes_file, weights_only=True)
    assert set(saved) == {"prompts", "codes"} and saved["prompts"] == CAPTIONS
    assert saved["codes"].dtype == torch.long and torch.equal(saved["codes"], codes)
    tokens = model_and_tokenizer[0].config.image_tokens
    captured = capsys.readouterr()
    assert captured.out == f"wrote 3 image(s) of {tokens} codes to {out}; codes to {codes_file}\n"
    last_progress_line = captured.err.splitlines()[-1]  # written when the bar closes (stderr is not a terminal)
    assert last_progress_line.startswith("toklip-generate: 100%") and " 3/3 " in last_progress_line


def test_one_prompt_into_a_png_name_with_cfg_none_on_the_default_device(checkpoint, tmp_path, capsys):
    """In-process twin of the subprocess test (no --device: the default must work on this machine)."""
    target = tmp_path / "one.png"
    assert main(["--model", str(checkpoint), CAPTIONS[1], "-o", str(target), "--seed", "3", "--cfg-scale",
                 "none"]) == 0
    model_and_tokenizer = opened(checkpoint)
    _, images = library_draw(model_and_tokenizer, CAPTIONS[1:2], 1, seeded(3), cfg_scale=None)
    _, guided = library_draw(model_and_tokenizer, CAPTIONS[1:2], 1, seeded(3), cfg_scale=4.0)
    assert [p.name for p in tmp_path.iterdir()] == ["one.png"]
    assert torch.equal(png(target)[None], to_uint8_images(images))
    assert not torch.equal(to_uint8_images(images), to_uint8_images(guided))  # 'none' is not the default scale
    tokens = model_and_tokenizer[0].config.image_tokens
    assert capsys.readouterr().out == f"wrote 1 image(s) of {tokens} codes to {target}\n"


def test_the_default_batch_and_batches_of_one_draw_what_generate_image_draws_in_those_batches(checkpoint,
                                                                                             tmp_path):
    model_and_tokenizer = opened(checkpoint)
    for batch_size, flag in [(3, []), (1, ["--batch-size", "1"])]:  # default 8 > 3 captions: one call
        out = tmp_path / f"b{batch_size}"
        assert main(["--model", str(checkpoint), *CAPTIONS, "-o", str(out), "--seed", "5", "--codes",
                     str(tmp_path / f"b{batch_size}.pt"), *flag]) == 0
        codes, images = library_draw(model_and_tokenizer, CAPTIONS, batch_size, seeded(5))
        assert torch.equal(torch.load(tmp_path / f"b{batch_size}.pt", weights_only=True)["codes"], codes)
        assert torch.equal(torch.stack([png(out / f"00{i}.png") for i in range(3)]), to_uint8_images(images))
    assert not torch.equal(torch.load(tmp_path / "b1.pt", weights_only=True)["codes"],
                           torch.load(tmp_path / "b3.pt", weights_only=True)["codes"])


def test_without_a_seed_the_draw_follows_torchs_global_generator(checkpoint, tmp_path):
    torch.manual_seed(11)
    assert main(["--model", str(checkpoint), CAPTIONS[0], "-o", str(tmp_path / "x.png"), "--codes",
                 str(tmp_path / "x.pt")]) == 0
    torch.manual_seed(11)
    codes, _ = library_draw(opened(checkpoint), CAPTIONS[:1], 1, None)
    assert torch.equal(torch.load(tmp_path / "x.pt", weights_only=True)["codes"], codes)


def test_dtype_opens_the_model_in_that_dtype(checkpoint, tmp_path):
    assert main(["--model", str(checkpoint), CAPTIONS[0], "-o", str(tmp_path / "x.png"), "--seed", "1",
                 "--dtype", "bfloat16"]) == 0
    _, low = library_draw(opened(checkpoint, torch.bfloat16), CAPTIONS[:1], 1, seeded(1))
    _, full = library_draw(opened(checkpoint), CAPTIONS[:1], 1, seeded(1))
    assert torch.equal(png(tmp_path / "x.png")[None], to_uint8_images(low))
    assert not torch.equal(to_uint8_images(low), to_uint8_images(full))


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
def test_cuda_on_a_machine_without_it_is_refused_with_the_fix_before_loading(checkpoint, tmp_path, capsys):
    err = refusal(capsys, "--model", str(checkpoint), "a cat", "-o", str(tmp_path / "x.png"), "--device", "cuda:0")
    assert "--device cuda:0: torch sees no CUDA device" in err and "use --device cpu" in err
    assert not (tmp_path / "x.png").exists()


def test_an_unknown_device_is_refused_naming_the_ones_to_give(checkpoint, tmp_path, capsys):
    err = refusal(capsys, "--model", str(checkpoint), "a cat", "-o", str(tmp_path / "x.png"), "--device", "gpu0")
    assert "--device 'gpu0' is not a device torch knows; give cpu, cuda or cuda:N" in err
    assert not (tmp_path / "x.png").exists()


def test_nested_output_folders_are_created_and_an_existing_one_is_reused(checkpoint, tmp_path):
    out = tmp_path / "a" / "b"
    for _ in range(2):
        assert main(["--model", str(checkpoint), "a cat", "-o", str(out), "--seed", "0"]) == 0
        assert [p.name for p in out.iterdir()] == ["000.png"]


def test_a_too_long_caption_in_a_later_batch_stops_with_the_fix_and_writes_no_codes(checkpoint, tmp_path, capsys):
    err = refusal(capsys, "--model", str(checkpoint), "a cat", LONG_CAPTION, "-o", str(tmp_path / "drawn"),
                  "--batch-size", "1", "--codes", str(tmp_path / "codes.pt"))
    assert "shorten the caption" in err
    assert not (tmp_path / "codes.pt").exists()


# PNG writes ---------------------------------------------------------------------------------------
def test_a_png_is_written_whole_with_the_given_pixels(tmp_path):
    pixels = torch.randint(0, 256, (5, 7, 3), generator=seeded(0), dtype=torch.uint8)
    save_png(pixels, tmp_path / "x.png")
    assert torch.equal(png(tmp_path / "x.png"), pixels)
    assert [p.name for p in tmp_path.iterdir()] == ["x.png"]


def test_a_failed_png_write_leaves_the_old_file_untouched_and_no_temporary_file(tmp_path):
    (tmp_path / "x.png").write_bytes(b"old")
    with pytest.raises(OSError, match="cannot write mode F as PNG"):  # fails once the file is open (PIL truncates it)
        save_png(torch.zeros(5, 7, dtype=torch.float32), tmp_path / "x.png")
    assert (tmp_path / "x.png").read_bytes() == b"old"
    assert [p.name for p in tmp_path.iterdir()] == ["x.png"]
