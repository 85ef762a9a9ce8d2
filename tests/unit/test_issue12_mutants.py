"""Gaps that mutation testing found in the modules issue 12 added or changed (issue 15, item 3): the Hub and
model-card modules, the commands' weight options and progress lines, the experiment logs, open_clip's API.
Each test names what it pins; tests/MUTATION.md lists the mutants they kill."""
from __future__ import annotations

import argparse
import ast
import errno
import gc
import hashlib
import io
import os
import re
import sys
from pathlib import Path

import pytest
import torch
import yaml
from helpers.hub_cache import fake_commit, use_offline_cache, write_snapshot
from huggingface_hub import HfApi, constants
from huggingface_hub.hf_api import CommitInfo
from open_clip.model import CLIPTextCfg, CLIPVisionCfg, CustomTextCLIP
from tqdm import tqdm

import toklip_plugin as tp
from toklip_plugin import checkpoints as ckpt
from toklip_plugin import eval_command, hub, model_card, progress, weight_options
from toklip_plugin.config import EncoderConfig

# checkpoints: OpenCLIP ViT initialisation -------------------------------------------------------------------
_IMAGE, _WIDTH, _EMBED = 64, 64, 32
_TEXT = {"context_length": 16, "vocab_size": 49408, "width": 32, "heads": 4, "layers": 1}


def _layer_scale_clip() -> CustomTextCLIP:
    """open_clip's CLIP with its text tower under ``text.*`` (CustomTextCLIP), LayerScale in the image blocks
    (``ls_1.gamma``, which TokLIP's blocks have no place for) and a logit bias; every weight random."""
    torch.manual_seed(0)
    vision = CLIPVisionCfg(layers=2, width=_WIDTH, head_width=16, patch_size=16, image_size=_IMAGE, ls_init_value=0.1)
    model = CustomTextCLIP(_EMBED, vision, CLIPTextCfg(**_TEXT), init_logit_bias=-10.0)
    with torch.no_grad():
        for param in model.parameters():
            param.add_(0.1 * torch.randn_like(param))
    return model.eval()


def _class_token_config(text: dict = _TEXT):
    tiny = tp.resolve_config("toklip-tiny")
    encoder = EncoderConfig(width=_WIDTH, depth=2, heads=4, mlp_ratio=4.0, causal=True, mapping="codebook",
                            class_token="last", pool="tok", norm_pre=True, proj=True, act="gelu", norm_eps=1e-5)
    return tiny.replace(name="openclip-test", image_size=_IMAGE, embed_dim=_EMBED, encoder=encoder, text=text,
                        init_logit_bias=-10.0)


def test_open_clip_text_under_text_and_the_logit_bias_are_copied_and_layer_scale_is_dropped_and_listed():
    clip = _layer_scale_clip()
    theirs = clip.state_dict()
    model = tp.create_model(_class_token_config(), seed=1)
    report = ckpt.init_from_open_clip(model, theirs)
    layer_scale = [k for k in theirs if ".ls_" in k]
    assert len(layer_scale) == 4
    assert report["dropped"] == ["visual.conv1.weight", *layer_scale]
    assert report["resampled"] == []  # the same 4x4 grid: the position table is copied, class row moved last
    assert sorted(report["copied"]) == sorted(set(theirs) - {"visual.conv1.weight", *layer_scale})
    ours = model.state_dict()
    for key in [k for k in theirs if k.startswith("text.")] + ["logit_bias", "logit_scale"]:
        assert torch.equal(ours[key], theirs[key]), key


def test_without_the_text_tower_only_the_image_encoder_is_copied_and_the_rest_is_listed_as_dropped():
    clip = _layer_scale_clip()
    theirs = clip.state_dict()
    model = tp.create_model(_class_token_config(), seed=1)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    report = ckpt.init_from_open_clip(model, theirs, include_text=False)
    ours = model.state_dict()
    text_side = [k for k in theirs if k.startswith("text.")] + ["logit_scale", "logit_bias"]
    assert set(text_side) <= set(report["dropped"])
    for key in text_side:  # untouched
        assert torch.equal(ours[key], before[key]), key
    assert torch.equal(ours["encoder.proj"], theirs["visual.proj"])
    assert torch.equal(ours["encoder.blocks.1.attn.qkv.weight"], theirs["visual.transformer.resblocks.1.attn.in_proj_weight"])
    assert all(isinstance(key, str) for key in report["dropped"])


def test_an_open_clip_weight_of_another_shape_is_refused_naming_both_shapes():
    theirs = _layer_scale_clip().state_dict()
    theirs["visual.proj"] = torch.zeros(_WIDTH, 2 * _EMBED)  # a projection to another embedding width
    model = tp.create_model(_class_token_config(), seed=1)
    vq = model.config.vq
    with pytest.raises(ckpt.CheckpointError) as err:
        ckpt.init_from_open_clip(model, theirs)
    assert str(err.value) == (f"OpenCLIP weight for encoder.proj has shape ({_WIDTH}, {2 * _EMBED}), but config "
                              f"'openclip-test' (image {_IMAGE}, encoder width {_WIDTH} depth 2, mapping codebook, "
                              f"codebook {vq.codebook_size}x{vq.codebook_embed_dim}) has ({_WIDTH}, {_EMBED})")


def test_a_state_dict_without_open_clip_blocks_is_refused_pointing_at_the_siglip2_path():
    with pytest.raises(ckpt.CheckpointError) as err:
        ckpt.open_clip_vit_to_native({"visual.conv1.weight": torch.zeros(1)}, 4)
    assert str(err.value) == ("no OpenCLIP ViT blocks found in the state dict (expected "
                              "'visual.transformer.resblocks.*'; SigLIP2 weights go through init_from_siglip2)")


def test_a_model_without_a_class_token_names_the_config_to_use_instead():
    with pytest.raises(ckpt.CheckpointError, match=r"use a class-token config such as toklip-b16-openclip "
                                                   r"\(or init_from_siglip2\)$"):
        ckpt.init_from_open_clip(tp.create_model(tp.resolve_config("toklip-tiny")), _layer_scale_clip().state_dict())


# checkpoints: VQ weights inside other checkpoints, pinned digests --------------------------------------------
@pytest.mark.parametrize("layout", ["ddp module", "our whole TokLIP", "released whole TokLIP"])
def test_the_vq_loads_from_a_module_wrapper_and_from_a_whole_toklip_checkpoint(tiny_config, layout):
    source = tp.create_model(tiny_config, seed=3)
    if layout == "ddp module":
        raw = {"module": source.vq.state_dict()}
    elif layout == "our whole TokLIP":
        raw = source.state_dict()
    else:
        raw = {"state_dict": ckpt.native_to_released(source.state_dict())}
    target = tp.create_model(tiny_config, seed=4).vq
    ckpt.load_vq_checkpoint(target, raw)
    for key, value in source.vq.state_dict().items():
        assert torch.equal(target.state_dict()[key], value), key


def test_a_file_with_another_sha256_is_refused_with_the_whole_fix(tmp_path):
    path = tmp_path / "weights.pt"
    path.write_bytes(b"tampered bytes")
    with pytest.raises(ckpt.CheckpointError) as err:
        ckpt._check_sha256(path, hashlib.sha256(b"the released bytes").hexdigest(), "org/repo/weights.pt@v1")
    message = str(err.value)
    assert "the file is corrupt, incomplete or another version. Delete it and download it again at the pinned " \
           "revision; if the upstream file changed on purpose, check the new one and update the config's " \
           "revision and sha256" in message


# checkpoints: the atomic directory exchange --------------------------------------------------------------
def test_exchange_swaps_two_directories_named_by_relative_paths(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    for name in ("old", "new"):
        (tmp_path / name).mkdir()
        (tmp_path / name / f"{name}.txt").write_text(name)
    assert ckpt._exchange(Path("old"), Path("new")) is True
    assert os.listdir(tmp_path / "old") == ["new.txt"] and os.listdir(tmp_path / "new") == ["old.txt"]


def test_exchange_raises_the_systems_error_naming_both_paths(tmp_path):
    (tmp_path / "a").mkdir()
    with pytest.raises(FileNotFoundError) as err:
        ckpt._exchange(tmp_path / "a", tmp_path / "absent")
    e = err.value
    assert (e.errno, e.strerror) == (errno.ENOENT, os.strerror(errno.ENOENT))
    assert (e.filename, e.filename2) == (str(tmp_path / "a"), str(tmp_path / "absent"))


def test_exchange_returns_false_where_the_kernel_refuses_it_as_invalid(tmp_path):
    (tmp_path / "a" / "sub").mkdir(parents=True)  # a directory into its own subdirectory: EINVAL
    assert ckpt._exchange(tmp_path / "a", tmp_path / "a" / "sub") is False
    assert (tmp_path / "a" / "sub").is_dir()


# hub: ids, messages, downloads, uploads -----------------------------------------------------------------------
@pytest.mark.parametrize("ref", [hub.HubRef("org/name"), hub.HubRef("org/name", "v1"),
                                 hub.HubRef("org/name", None, "w.pt"), hub.HubRef("org/name", "refs/pr/1", "a/w.pt")])
def test_a_hub_ref_written_as_an_id_parses_back_to_itself_and_names_only_what_it_holds(ref):
    text = str(ref)
    assert hub.parse_hub_id(text) == ref
    assert text == "hf-hub:org/name" + (f"@{ref.revision.replace('/', '%2F')}" if ref.revision else "") + (
        f"/{ref.filename}" if ref.filename else "")


def test_a_plain_name_is_not_a_hub_id_and_the_error_says_how_to_write_one():
    with pytest.raises(ValueError, match=r"^'org/name' is not a Hugging Face Hub id; write hf-hub:ORG/NAME"):
        hub.parse_hub_id("org/name")


def test_the_download_command_pins_a_revision_only_when_one_is_given():
    assert hub.download_command("org/name", ["a.json", "b.pt"], None) == "huggingface-cli download org/name a.json b.pt"
    assert hub.download_command("org/name", ["a.json"], "v2") == "huggingface-cli download org/name a.json --revision v2"


@pytest.mark.parametrize("offline", [True, False])
def test_the_not_found_message_names_files_repo_revision_cause_and_the_fix(monkeypatch, offline):
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", offline)
    cause = OSError("x" * 300 + "\nsecond line")
    message = str(hub._not_found("org/name", ["config.json", "model.safetensors"], None, cause, ""))
    mode = " (offline mode, HF_HUB_OFFLINE=1)" if offline else ""
    assert message.startswith("config.json, model.safetensors of the Hugging Face repo org/name at revision main is "
                              f"not in the Hugging Face cache ({constants.HF_HUB_CACHE}) and could not be downloaded"
                              f"{mode} (OSError: {'x' * 200}). On a machine with network access run "
                              "`huggingface-cli download org/name config.json model.safetensors`, then copy")
    assert message.endswith("copy that machine's Hugging Face cache (HF_HOME, default ~/.cache/huggingface) here or "
                            "point HF_HOME (or HF_HUB_CACHE) at a copy of it")
    without_cause = str(hub._not_found("org/name", ["w.pt"], "v3", None, "; or else"))
    assert "at revision v3 is not" in without_cause and "(the cached snapshot lacks them)" in without_cause
    assert without_cause.endswith("at a copy of it; or else")


def test_a_file_that_cannot_be_downloaded_reports_huggingface_hubs_error(tmp_path, monkeypatch):
    use_offline_cache(monkeypatch, tmp_path / "hf")
    with pytest.raises(hub.HubDownloadError) as err:
        hub.download_file("org/absent", "w.pt", "v1")
    cause = err.value.__cause__
    assert cause is not None and f"({type(cause).__name__}: " in str(err.value)
    assert str(err.value).endswith("at a copy of it") and "--revision v1" in str(err.value)


def test_a_repo_that_cannot_be_downloaded_reports_the_error_and_the_other_ways_given(tmp_path, monkeypatch):
    use_offline_cache(monkeypatch, tmp_path / "hf")
    with pytest.raises(hub.HubDownloadError) as err:
        hub.download_repo("org/absent", ["config.json"])
    assert f"({type(err.value.__cause__).__name__}: " in str(err.value) and str(err.value).endswith("a copy of it")
    with pytest.raises(hub.HubDownloadError) as err:
        hub.download_repo("org/absent", ["config.json"], also="; or copy it by hand")
    assert str(err.value).endswith("at a copy of it; or copy it by hand")


def test_a_pinned_snapshot_lacking_a_file_names_that_revision_and_asks_only_for_that_file(tmp_path, monkeypatch,
                                                                                          tiny_model):
    cache = use_offline_cache(monkeypatch, tmp_path / "hf")
    folder = tmp_path / "push"
    tiny_model.save_pretrained(folder)
    (folder / "model.safetensors").unlink()
    write_snapshot(cache, "org/name", fake_commit("v2"), folder, refs=("v2",))
    with pytest.raises(hub.HubDownloadError) as err:
        hub.download_repo("org/name", ["config.json", "model.safetensors"], "v2")
    message = str(err.value)
    assert message.startswith("model.safetensors of the Hugging Face repo org/name at revision v2 is not")
    assert "`huggingface-cli download org/name model.safetensors --revision v2`" in message


def test_a_repo_download_asks_the_hub_for_the_named_files_only(tmp_path, monkeypatch, tiny_model):
    import huggingface_hub

    cache = use_offline_cache(monkeypatch, tmp_path / "hf")
    tiny_model.save_pretrained(tmp_path / "push")
    write_snapshot(cache, "org/name", fake_commit("main"), tmp_path / "push")
    real, seen = huggingface_hub.snapshot_download, []

    def recording(*args, **kwargs):  # the real download, its arguments recorded
        seen.append(kwargs.get("allow_patterns"))
        return real(*args, **kwargs)

    monkeypatch.setattr(huggingface_hub, "snapshot_download", recording)
    folder = hub.download_repo("org/name", ("config.json", "model.safetensors"))
    assert (folder / "config.json").is_file() and seen == [["config.json", "model.safetensors"]]


def test_upload_folder_returns_the_commit_url_and_uses_the_token_and_default_message(tmp_path, monkeypatch):
    """huggingface_hub's real ``HfApi.upload_folder``, its network calls (repo creation, the commit) recorded:
    it returns a ``CommitInfo`` whose string is the uploaded folder's URL; the commit's URL is the one to print."""
    calls = []

    def create_repo(self, repo_id, **kwargs):
        calls.append(("create_repo", repo_id, self.token))

    def create_commit(self, repo_id, operations, *, commit_message, **kwargs):
        calls.append(("create_commit", repo_id, self.token, commit_message, sorted(op.path_in_repo for op in operations)))
        return CommitInfo(commit_url=f"https://huggingface.co/{repo_id}/commit/abc", commit_message=commit_message,
                          commit_description="", oid="abc")

    monkeypatch.setattr(HfApi, "create_repo", create_repo)
    monkeypatch.setattr(HfApi, "create_commit", create_commit)
    (tmp_path / "up").mkdir()
    (tmp_path / "up" / "config.json").write_text("{}")
    url = hub.upload_folder(tmp_path / "up", "org/name", token="hf_secret")
    assert url == "https://huggingface.co/org/name/commit/abc"
    assert calls == [("create_repo", "org/name", "hf_secret"),
                     ("create_commit", "org/name", "hf_secret", "Upload TokLIP model", ["config.json"])]


# model card: the body ---------------------------------------------------------------------------------------
def _sections(text: str) -> dict[str, str]:
    """The card's markdown body after the front matter: heading line -> the text under it."""
    body = text.split("\n---\n", 1)[1].strip()
    parts = [part for part in body.split("\n\n#") if part]
    out = {}
    for i, part in enumerate(parts):
        heading, _, rest = (part if i == 0 else "#" + part).partition("\n\n")
        out[heading] = rest
    return out


def _table_lines(rows: dict, head: tuple[str, str]) -> list[str]:
    return [f"| {head[0]} | {head[1]} |", "|---|---|", *(f"| {k} | {v} |" for k, v in rows.items())]


def test_the_model_card_body_has_each_section_its_tables_and_a_loading_example_that_parses(tmp_path, tiny_config):
    config = tiny_config.replace(description="")
    info = model_card.ModelCardInfo(repo_id="org/name", training_data=("cc3m", "laion"), eval_results={"top1": 0.5},
                                    base_model=["a/base", "b/vq"])
    text = model_card.render_model_card(config, info)
    front = yaml.safe_load(text.split("---")[1])
    assert front["base_model"] == ["a/base", "b/vq"]
    sections = _sections(text)
    assert list(sections) == [f"# {config.name} (TokLIP)", "## How to load", "## Model", "## Base models",
                              "## Training data", "## Evaluation results"]
    assert sections[f"# {config.name} (TokLIP)"] == "A TokLIP visual tokenizer."  # no description: the default line
    load = sections["## How to load"]
    code = load.split("```python\n", 1)[1]
    assert code.endswith("\n```")
    tree = ast.parse(code[: -len("\n```")])
    loaded = {n.id for n in ast.walk(tree) if isinstance(n, ast.Name) and isinstance(n.ctx, ast.Load)}
    defined = {n.id for n in ast.walk(tree) if isinstance(n, ast.Name) and isinstance(n.ctx, ast.Store)}
    defined |= {alias.asname or alias.name for n in ast.walk(tree) if isinstance(n, ast.Import) for alias in n.names}
    assert loaded - defined == {"images"}  # the example defines every name it uses but the user's images
    assert 'model = tp.load_toklip("hf-hub:org/name")' in code and load.startswith("With the `toklip_plugin` package")
    assert sections["## Model"].splitlines() == _table_lines(front["toklip_config"], ("setting", "value"))
    assert sections["## Base models"].splitlines() == ["- [a/base](https://huggingface.co/a/base)",
                                                       "- [b/vq](https://huggingface.co/b/vq)"]
    assert sections["## Training data"].splitlines() == ["- `cc3m`", "- `laion`"]
    assert sections["## Evaluation results"].splitlines() == _table_lines({"top1": 0.5}, ("metric", "value"))


def test_the_card_opens_with_the_configs_description_when_it_has_one(tiny_config):
    text = model_card.render_model_card(tiny_config, model_card.ModelCardInfo())
    assert _sections(text)[f"# {tiny_config.name} (TokLIP)"] == tiny_config.description


def test_the_pushed_repo_fills_in_a_card_without_one_keeping_every_other_field():
    info = model_card.ModelCardInfo(training_data=("cc3m",), eval_results={"top1": 0.5}, base_model=("a/base",),
                                    license="mit")
    filled = model_card.card_info(info, repo_id="org/pushed")
    assert filled == model_card.ModelCardInfo("org/pushed", ("cc3m",), {"top1": 0.5}, ("a/base",), "mit")
    named = model_card.card_info({"repo_id": "org/own", "license": "mit"}, repo_id="org/pushed")
    assert named == model_card.ModelCardInfo(repo_id="org/own", license="mit")  # the card's own repo wins


def test_a_model_card_argument_of_another_type_is_refused_naming_the_accepted_ones():
    with pytest.raises(TypeError, match=r"^model_card must be True, False, a mapping of ModelCardInfo fields or a "
                                        r"ModelCardInfo; got str$"):
        model_card.card_info("yes")


# progress lines ----------------------------------------------------------------------------------------------
class _Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


class _Log:
    """A write-only stream (no ``isatty``, no ``flush``), as some loggers' handles are."""

    def __init__(self):
        self.lines = []

    def write(self, text: str) -> None:
        self.lines.append(text)


class _FlushCounter(io.StringIO):
    def __init__(self):
        super().__init__()
        self.flushes = 0

    def flush(self) -> None:
        self.flushes += 1


def test_is_terminal_reads_stderr_by_default_and_is_false_for_closed_or_plain_streams(monkeypatch):
    monkeypatch.setattr(sys, "stderr", _Terminal())
    assert progress.is_terminal() is True
    monkeypatch.setattr(sys, "stderr", io.StringIO())
    assert progress.is_terminal() is False
    closed = io.StringIO()
    closed.close()  # isatty on a closed stream raises ValueError
    assert progress.is_terminal(closed) is False and progress.is_terminal(_Log()) is False


@pytest.mark.parametrize("value, seconds", [("0", 0.0), ("0.5", 0.5), (" 12 ", 12.0)])
def test_an_interval_of_zero_or_a_fraction_of_a_second_is_accepted(monkeypatch, value, seconds):
    monkeypatch.setenv(progress.INTERVAL_ENV, value)
    assert progress.progress_interval() == seconds


def test_each_log_line_is_flushed_and_a_stream_without_flush_still_gets_its_lines():
    counted = _FlushCounter()
    with progress.ProgressBar(total=2, file=counted, interval=0) as bar:
        bar.update(1)
        assert counted.getvalue().count("\n") == 1 and counted.flushes >= 1
    plain = _Log()
    with progress.ProgressBar(total=2, file=plain, interval=0) as bar:
        bar.update(2)
    assert "".join(plain.lines).splitlines()[-1].startswith("100% 2/2")


# toklip-eval's dispatch and the weight options -----------------------------------------------------------------
@pytest.mark.parametrize("from_sys_argv", [False, True])
def test_toklip_eval_clip_benchmark_hands_the_rest_of_the_line_to_clip_benchmark(monkeypatch, capsys, from_sys_argv):
    argv = ["clip-benchmark", "eval", "--help"]
    monkeypatch.setattr(sys, "argv", ["toklip-eval", *argv] if from_sys_argv else ["pytest"])
    with pytest.raises(SystemExit) as done:
        eval_command.main(None if from_sys_argv else argv)
    assert done.value.code == 0
    assert "--dataset" in capsys.readouterr().out  # CLIP_benchmark's own `eval` options


def _weight_args(model: str, checkpoint=None, random_weights=False) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    parser.add_argument("--model")
    weight_options.add_weight_options(parser)
    argv = ["--model", model] + (["--checkpoint", checkpoint] if checkpoint else []) + (
        ["--random-weights"] if random_weights else [])
    return parser.parse_args(argv)


def test_the_weight_options_help_states_the_checkpoint_default_and_what_random_weights_do():
    """What ``--help`` must say (its wording is free): the default of ``--checkpoint``, and that
    ``--random-weights`` means random weights."""
    parser = argparse.ArgumentParser()
    weight_options.add_weight_options(parser)
    text = " ".join(parser.format_help().split())
    checkpoint_help = re.search(r"--checkpoint CHECKPOINT ?(.*) --random-weights ?(.*)$", text)
    assert "(default: " in checkpoint_help.group(1) and "'released'" in checkpoint_help.group(1)
    assert "random" in checkpoint_help.group(2).lower()


def test_the_weight_options_messages_say_what_to_pass(capsys, tmp_path, tiny_model):
    with pytest.raises(ValueError) as err:
        weight_options.checkpoint_to_load(_weight_args("toklip-tiny", "w.pt", True), "toklip")
    assert str(err.value) == "--checkpoint and --random-weights contradict each other: pass one of them"
    tiny_model.save_pretrained(tmp_path / "saved")
    with pytest.raises(ValueError) as err:
        weight_options.checkpoint_to_load(_weight_args(str(tmp_path / "saved"), random_weights=True), "toklip")
    assert str(err.value).endswith("drop it, (for random weights of its architecture, pass its config file as "
                                   "--model instead)")
    with pytest.raises(ValueError) as err:
        weight_options.checkpoint_to_load(_weight_args("toklip-tiny"), "toklip")
    assert str(err.value).endswith("(a released-layout .pt, a saved TokLIP directory or a .safetensors file) or "
                                   "--random-weights to run with random weights")
    assert weight_options.checkpoint_to_load(_weight_args("toklip-tiny", random_weights=True), "toklip") is None
    assert capsys.readouterr().err == ("toklip: note: --random-weights: the TokLIP weights are random, not trained; "
                                       "its outputs mean nothing\n")


def test_a_hub_repo_holds_its_own_weights_without_being_downloaded(tmp_path, monkeypatch):
    use_offline_cache(monkeypatch, tmp_path / "hf")  # an empty cache, offline: nothing could be fetched
    assert weight_options.holds_weights("hf-hub:org/name") is True
    assert weight_options.checkpoint_to_load(_weight_args("hf-hub:org/name"), "toklip") is None


# checkpoints: hf-hub ids as weight sources ---------------------------------------------------------------------
def test_a_hub_file_id_resolves_to_that_revisions_file_and_a_repo_id_to_its_snapshot(tmp_path, monkeypatch, tiny_model):
    cache = use_offline_cache(monkeypatch, tmp_path / "hf")
    for label, content in (("v1", b"old"), ("main", b"new")):
        folder = tmp_path / label
        tiny_model.save_pretrained(folder)
        (folder / "w.pt").write_bytes(content)
        write_snapshot(cache, "org/name", fake_commit(label), folder, refs=(label,))
    assert ckpt.resolve_weight_file("hf-hub:org/name@v1/w.pt").read_bytes() == b"old"
    assert ckpt.resolve_weight_file("hf-hub:org/name/w.pt").read_bytes() == b"new"
    folder = ckpt.resolve_weight_file("hf-hub:org/name@v1")
    assert folder.is_dir() and folder.name == fake_commit("v1") and (folder / "model.safetensors").is_file()


def test_a_file_id_given_as_a_model_source_is_refused_naming_the_repo_to_pass():
    with pytest.raises(ValueError, match=r"^'hf-hub:org/name/w.pt' names one file of a repo, not a TokLIP repo: a model "
                                         r"source is hf-hub:org/name\[@REVISION\]; pass a weight file as checkpoint="):
        ckpt.download_pretrained("hf-hub:org/name/w.pt")


def test_an_interval_of_zero_writes_a_line_at_every_update_however_close_together(clock):
    log = io.StringIO()
    with progress.ProgressBar(total=20, file=log, interval=0) as bar:
        for _ in range(20):
            clock[0] += 0.01  # far below tqdm's own 0.1 s refresh interval
            bar.update(1)
    counts = [re.search(r"(\d+)/20", line).group(1) for line in log.getvalue().splitlines()]
    assert counts == [str(k) for k in range(1, 21)] + ["20"]  # one per update, then the last line


def test_an_interval_below_a_second_still_bounds_lines_set_by_postfix_refreshes(clock):
    log = io.StringIO()
    bar = progress.ProgressBar(total=10, file=log, interval=0.5)
    for step in range(1, 11):  # 1 s in steps of 0.1 s, each refreshing through set_postfix
        clock[0] += 0.1
        bar.n = step
        bar.set_postfix(step=step)
    bar.close()
    assert len(log.getvalue().splitlines()) == 2 + 1  # at 0.5 s and 1.0 s, then the last line


def test_positional_arguments_after_the_iterable_reach_tqdm(clock):
    log = io.StringIO()
    for _ in progress.ProgressBar(range(3), "captions", file=log, interval=30):
        clock[0] += 1.0
    assert log.getvalue().startswith("captions: 100% 3/3")


@pytest.mark.parametrize("position", [0, 1])
@pytest.mark.parametrize("leave", [False, True])
def test_on_a_terminal_a_bar_at_any_position_is_drawn_and_closed_as_tqdm_does(clock, position, leave):
    def draw(cls) -> str:
        screen = _Terminal()
        with cls(total=5, desc="encode", file=screen, ncols=60, leave=leave, position=position) as bar:
            for _ in range(5):
                clock[0] += 0.25
                bar.update()
        return screen.getvalue()

    assert draw(progress.ProgressBar) == draw(tqdm)


def test_a_bar_refused_for_its_interval_leaves_nothing_for_the_garbage_collector_to_report(monkeypatch):
    reported = []
    monkeypatch.setattr(sys, "unraisablehook", reported.append)
    monkeypatch.setenv(progress.INTERVAL_ENV, "-1")
    with pytest.raises(ValueError, match=progress.INTERVAL_ENV):
        progress.ProgressBar(total=1, file=io.StringIO())
    gc.collect()  # the half-built bar's __del__ closes it
    assert reported == []


def test_a_run_that_slows_down_still_gets_its_line_once_the_interval_has_passed(clock):
    log = io.StringIO()
    bar = progress.ProgressBar(total=100, desc="train", file=log, interval=30)
    for _ in range(60):  # 2 updates a second: the first line at 30 s
        clock[0] += 0.5
        bar.update(1)
    for _ in range(3):  # then one update every 10 s: the next line at 60 s, not 60 updates later
        clock[0] += 10.0
        bar.update(1)
    assert [re.search(r"(\d+)/100", line).group(1) for line in log.getvalue().splitlines()] == ["60", "63"]
    bar.close()
