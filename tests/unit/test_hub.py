"""The Hugging Face Hub in and out: ``hf-hub:`` ids read from a real cache layout offline, model cards,
``push_to_hub`` through huggingface_hub's own ``HfApi`` (its network calls replaced by spies)."""
from __future__ import annotations

import json
import warnings
from pathlib import Path

import pytest
import torch
import yaml
from huggingface_hub import HfApi, ModelCard, scan_cache_dir
from safetensors import safe_open

import toklip_plugin as tp
from toklip_plugin import checkpoints as ckpt
from toklip_plugin.hub import HubDownloadError, HubRef, parse_hub_id
from toklip_plugin.models.text import build_tokenizer

from helpers.hub_cache import fake_commit, point_refs, use_offline_cache, write_snapshot
from helpers.weights import spread_weights

REPO = "org/name"


@pytest.fixture
def hub_cache(tmp_path, monkeypatch):
    return use_offline_cache(monkeypatch, tmp_path / "hf")


def _pushed_folder(model, path: Path, repo_id: str = REPO) -> Path:
    """What ``model.push_to_hub(repo_id)`` uploads: ``save_pretrained`` with the repo named in the card."""
    model.save_pretrained(path, model_card={"repo_id": repo_id})
    return path


def _outputs(model, images):
    text = build_tokenizer(model.config.tokenizer, model.config.text["context_length"])(["a red cube", "a dog"])
    with torch.no_grad():
        return model.encode_image(images), model.encode_text(text)


def _assert_same_outputs(a, b, images):
    for x, y in zip(_outputs(a, images), _outputs(b, images)):
        assert torch.equal(x, y)


def test_a_pushed_folder_in_the_hub_cache_loads_offline_with_identical_outputs(hub_cache, tmp_path, tiny_model,
                                                                               images):
    commit = fake_commit("first")
    write_snapshot(hub_cache, REPO, commit, _pushed_folder(spread_weights(tiny_model, 3), tmp_path / "push"))
    (repo,) = scan_cache_dir(hub_cache).repos  # huggingface_hub reads the layout as its own
    (revision,) = repo.revisions
    assert repo.repo_id == REPO and revision.commit_hash == commit and revision.refs == {"main"}
    assert {f.file_name for f in revision.files} == {"config.json", "model.safetensors", "README.md"}
    with warnings.catch_warnings():
        warnings.simplefilter("error", tp.RandomWeightsWarning)  # weights from a repo are not random
        loaded = tp.load_toklip(f"hf-hub:{REPO}")
    _assert_same_outputs(loaded, tiny_model, images)
    assert tp.resolve_config(f"hf-hub:{REPO}") == tiny_model.config
    assert tp.get_transform(f"hf-hub:{REPO}")  # the config alone is enough for transforms and tokenizers
    assert tp.get_tokenizer(f"hf-hub:{REPO}")(["a dog"]).shape == (1, tiny_model.config.text["context_length"])


@pytest.mark.slow
def test_a_pinned_revision_loads_that_snapshot_by_commit_or_by_tag(hub_cache, tmp_path, tiny_config, images):
    old, new = (spread_weights(tp.create_model(tiny_config, seed=s), s).eval() for s in (1, 2))
    old_commit, new_commit = fake_commit("v1"), fake_commit("v2")
    write_snapshot(hub_cache, REPO, old_commit, _pushed_folder(old, tmp_path / "old"), refs=("v1",))
    write_snapshot(hub_cache, REPO, new_commit, _pushed_folder(new, tmp_path / "new"), refs=("main",))
    point_refs(hub_cache, REPO, {"refs/pr/1": old_commit})
    _assert_same_outputs(tp.load_toklip(f"hf-hub:{REPO}"), new, images)
    _assert_same_outputs(tp.load_toklip(f"hf-hub:{REPO}@{old_commit}"), old, images)
    _assert_same_outputs(tp.load_toklip(f"hf-hub:{REPO}@v1"), old, images)
    _assert_same_outputs(tp.load_toklip(f"hf-hub:{REPO}@refs%2Fpr%2F1"), old, images)
    _assert_same_outputs(tp.load_toklip(f"hf-hub:{REPO}@{new_commit}"), new, images)


def test_a_repo_missing_from_the_cache_says_what_to_download_and_where(hub_cache):
    with pytest.raises(HubDownloadError) as err:
        tp.load_toklip("hf-hub:org/absent@v2")
    message = str(err.value)
    assert "huggingface-cli download org/absent config.json model.safetensors --revision v2" in message
    assert "HF_HOME" in message and str(hub_cache) in message and "HF_HUB_OFFLINE=1" in message
    assert isinstance(err.value, FileNotFoundError)


def test_a_revision_missing_from_the_cache_names_that_revision(hub_cache, tmp_path, tiny_model):
    write_snapshot(hub_cache, REPO, fake_commit("main"), _pushed_folder(tiny_model, tmp_path / "push"))
    with pytest.raises(HubDownloadError, match=f"huggingface-cli download {REPO} config.json model.safetensors "
                                               "--revision v9"):
        tp.load_toklip(f"hf-hub:{REPO}@v9")


def test_a_cached_snapshot_without_weights_asks_for_them(hub_cache, tmp_path, tiny_model):
    folder = _pushed_folder(tiny_model, tmp_path / "push")
    (folder / "model.safetensors").unlink()  # only the config was fetched, e.g. by resolve_config
    write_snapshot(hub_cache, REPO, fake_commit("main"), folder)
    assert tp.resolve_config(f"hf-hub:{REPO}") == tiny_model.config
    with pytest.raises(HubDownloadError, match=f"download {REPO} model.safetensors"):
        tp.load_toklip(f"hf-hub:{REPO}")


def test_a_released_layout_file_in_a_hub_repo_loads_with_the_config_it_fits(hub_cache, tmp_path, tiny_model, images):
    folder = tmp_path / "released"
    folder.mkdir()
    torch.save({"state_dict": ckpt.native_to_released(tiny_model.state_dict())}, folder / "TokLIP_tiny.pt")
    write_snapshot(hub_cache, "org/released", fake_commit("r"), folder)
    loaded = tp.load_toklip("toklip-tiny", checkpoint="hf-hub:org/released/TokLIP_tiny.pt")
    _assert_same_outputs(loaded, tiny_model, images)
    with pytest.raises(HubDownloadError, match="has no config.json: load one of its files with the config it fits"):
        tp.load_toklip("hf-hub:org/released")  # no config.json: not a model source by itself


def test_hub_ids_parse_repo_revision_and_file():
    assert parse_hub_id("hf-hub:org/name") == HubRef("org/name")
    assert parse_hub_id("hf-hub:org/name@v1.0") == HubRef("org/name", "v1.0")
    assert parse_hub_id("hf-hub:org/name@refs%2Fpr%2F3/sub/w.pt") == HubRef("org/name", "refs/pr/3", "sub/w.pt")
    assert parse_hub_id("hf-hub:org/name/w.pt") == HubRef("org/name", None, "w.pt")
    assert str(HubRef("org/name", "refs/pr/3", "w.pt")) == "hf-hub:org/name@refs%2Fpr%2F3/w.pt"
    for bad in ("hf-hub:org", "hf-hub:/name", "hf-hub:org/name@", "hf-hub:org/name/dir/"):
        with pytest.raises(ValueError, match="hf-hub:ORG/NAME@REVISION"):
            parse_hub_id(bad)


# model cards ---------------------------------------------------------------------------------------------
def test_the_model_card_front_matter_holds_the_config_summary_and_the_given_results(tmp_path, tiny_model):
    results = tmp_path / "zero-shot.json"  # as toklip-eval writes it: strings, numbers and lists
    results.write_text(json.dumps({"task": "zero-shot", "top1": 0.625, "top5": 0.9, "per_class": [0.5, 0.75]}))
    tiny_model.save_pretrained(tmp_path / "m", model_card={"repo_id": REPO, "training_data": ["cc3m-wds"],
                                                           "eval_results": results, "license": "apache-2.0"})
    card = ModelCard.load(tmp_path / "m" / "README.md")
    data = card.data.to_dict()
    c = tiny_model.config
    assert data["library_name"] == "toklip-plugin" and data["license"] == "apache-2.0" and "toklip" in data["tags"]
    assert data["toklip_config"] == {
        "name": "toklip-tiny", "image_size": 128, "grid": "8x8", "tokens": 64, "encoder_width": c.encoder.width,
        "encoder_depth": c.encoder.depth, "encoder_heads": c.encoder.heads, "causal": True, "pooling": "map",
        "embed_dim": c.embed_dim, "codebook": f"{c.vq.codebook_size}x{c.vq.codebook_embed_dim}"}
    assert data["toklip_eval_results"] == {"task": "zero-shot", "top1": 0.625, "top5": 0.9}  # scalars only
    assert "base_model" not in data  # toklip-tiny names no initialisation or VQ weights
    assert f'load_toklip("hf-hub:{REPO}")' in card.text and "- `cc3m-wds`" in card.text
    assert "| top1 | 0.625 |" in card.text and "| encoder_depth | 2 |" in card.text


def test_the_model_card_names_the_base_models_the_config_names(tmp_path, tiny_model):
    weights = {"siglip2": {"repo_id": "timm/ViT-SO400M-16-SigLIP2-384", "filename": "x"},
               "vq_checkpoint": {"repo_id": "peizesun/llamagen_t2i", "filename": "vq_ds16_t2i.pt"},
               "checkpoint": {"repo_id": "TencentARC/TokLIP", "filename": "TokLIP_L_384.pt"}}
    model = tp.create_model(tiny_model.config.replace(weights=weights))
    model.save_pretrained(tmp_path / "m", model_card=True)
    text = (tmp_path / "m" / "README.md").read_text()
    front = yaml.safe_load(text.split("---")[1])
    assert front["base_model"] == ["timm/ViT-SO400M-16-SigLIP2-384", "peizesun/llamagen_t2i"]
    assert "license" not in front and "toklip_eval_results" not in front
    assert 'load_toklip("hf-hub:ORG/NAME")' in text


def test_without_a_card_a_hand_written_readme_is_kept_and_with_one_it_is_replaced(tmp_path, tiny_model):
    target = tmp_path / "m"
    tiny_model.save_pretrained(target)
    assert sorted(p.name for p in target.iterdir()) == ["config.json", "model.safetensors"]
    (target / "README.md").write_text("my own notes")
    tiny_model.save_pretrained(target)
    assert (target / "README.md").read_text() == "my own notes"
    tiny_model.save_pretrained(target, model_card=True)
    assert ModelCard.load(target / "README.md").data.library_name == "toklip-plugin"


# push_to_hub ---------------------------------------------------------------------------------------------
def _files(folder: Path) -> dict[str, object]:
    """Each file's content; a .safetensors file as (metadata, tensors): safetensors writes its metadata keys in
    hash order, so two saves of one model can differ in bytes, not in content."""
    return {str(p.relative_to(folder)): _content(p) for p in sorted(folder.rglob("*")) if p.is_file()}


def _content(path: Path) -> object:
    if path.suffix != ".safetensors":
        return path.read_bytes()
    with safe_open(str(path), "pt") as f:
        return f.metadata(), {key: f.get_tensor(key).numpy().tobytes() for key in f.keys()}


@pytest.fixture
def hub_calls(monkeypatch):
    """huggingface_hub's real HfApi with its three network calls replaced by recorders."""
    calls = []

    def create_repo(self, repo_id, **kwargs):
        calls.append(("create_repo", repo_id, kwargs))

    def create_branch(self, repo_id, **kwargs):
        calls.append(("create_branch", repo_id, kwargs))

    def upload_folder(self, **kwargs):
        calls.append(("upload_folder", kwargs.pop("repo_id"), {**kwargs, "files": _files(Path(kwargs["folder_path"]))}))
        return f"https://huggingface.co/{calls[-1][1]}/commit/abc"

    for name, spy in (("create_repo", create_repo), ("create_branch", create_branch), ("upload_folder", upload_folder)):
        monkeypatch.setattr(HfApi, name, spy)
    return calls


def test_push_to_hub_uploads_exactly_what_save_pretrained_with_a_card_writes(hub_calls, tmp_path, tiny_model):
    url = tiny_model.push_to_hub(REPO, private=True, commit_message="first", model_card={"training_data": ["d"]})
    tiny_model.save_pretrained(tmp_path / "expected", model_card={"repo_id": REPO, "training_data": ["d"]})
    assert [call[:2] for call in hub_calls] == [("create_repo", REPO), ("upload_folder", REPO)]
    assert hub_calls[0][2] == {"private": True, "exist_ok": True}
    uploaded = hub_calls[1][2]
    assert uploaded["files"] == _files(tmp_path / "expected") and uploaded["revision"] is None
    assert uploaded["commit_message"] == "first" and url == f"https://huggingface.co/{REPO}/commit/abc"


def test_push_to_hub_on_a_branch_creates_it_and_commits_there(hub_calls, tiny_model):
    tiny_model.push_to_hub(REPO, revision="experiment", model_card=False)
    assert [call[:2] for call in hub_calls] == [("create_repo", REPO), ("create_branch", REPO), ("upload_folder", REPO)]
    assert hub_calls[1][2] == {"branch": "experiment", "exist_ok": True} and hub_calls[2][2]["revision"] == "experiment"
    assert sorted(hub_calls[2][2]["files"]) == ["config.json", "model.safetensors"]  # no card asked for
