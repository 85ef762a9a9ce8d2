"""``toklip-train run.push_to_hub=ORG/NAME``: the end of a run uploads its export, model card included, through
huggingface_hub's real ``HfApi`` (its network calls replaced by spies); a failed upload loses nothing."""
from __future__ import annotations

from pathlib import Path

import torch
from huggingface_hub import HfApi, ModelCard
from safetensors.torch import save_file

import toklip_plugin as tp
from toklip_plugin.factory import get_tokenizer
from toklip_plugin.train import Trainer, load_train_config

REPO = "org/tiny-run"


def _cache(path: Path) -> Path:
    """32 cached training samples: codes, caption ids, teacher targets."""
    gen = torch.Generator().manual_seed(0)
    save_file({"codes": torch.randint(0, 1024, (32, 64), generator=gen),
               "text": get_tokenizer("toklip-tiny")([f"a photo of thing {i % 5}" for i in range(32)]),
               "teacher_pooled": torch.randn(32, 64, generator=gen)}, str(path))
    return path


def _trainer(cache: Path, out: Path, *overrides: str, eval_fn=None) -> Trainer:
    config = load_train_config("toklip-tiny", ["data.kind=cache", f"data.train={cache}", f"run.output_dir={out}",
                                               "optim.batch_size=8", "optim.warmup_steps=1", "run.report_to=none",
                                               *overrides])
    return Trainer(config, eval_fn=eval_fn)


def _files(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def _spy_uploads(monkeypatch, fail: bool = False) -> list:
    uploads = []

    def create_repo(self, repo_id, **kwargs):
        uploads.append(("create_repo", repo_id))

    def upload_folder(self, *, repo_id, folder_path, **kwargs):
        if fail:
            raise ConnectionError("network unreachable")
        uploads.append(("upload_folder", repo_id, _files(Path(folder_path)), kwargs["commit_message"]))
        return f"https://huggingface.co/{repo_id}/commit/1"

    monkeypatch.setattr(HfApi, "create_repo", create_repo)
    monkeypatch.setattr(HfApi, "upload_folder", upload_folder)
    return uploads


def test_a_run_resumed_with_push_to_hub_uploads_its_export_with_data_and_results_in_the_card(tmp_path, monkeypatch):
    uploads = _spy_uploads(monkeypatch)
    cache, out = _cache(tmp_path / "cache.safetensors"), tmp_path / "run"
    _trainer(cache, out, "optim.steps=1").fit()
    assert uploads == []  # no push asked for
    evaluate = lambda model: {"zeroshot_top1": 0.25, "t2i_r1": 0.5}  # noqa: E731
    _trainer(cache, out, "optim.steps=2", f"run.push_to_hub={REPO}", "run.eval_every=2", eval_fn=evaluate).fit()
    export = out / "export" / "toklip"
    assert [u[:2] for u in uploads] == [("create_repo", REPO), ("upload_folder", REPO)]
    _, _, files, message = uploads[1]
    assert files == _files(export) and sorted(files) == ["README.md", "config.json", "model.safetensors"]
    assert message == "toklip-train run: step 2"
    card = ModelCard.load(export / "README.md")
    assert card.data.toklip_eval_results == {"eval_step": 2, "zeroshot_top1": 0.25, "t2i_r1": 0.5}
    assert f"- `{cache}`" in card.text and f'load_toklip("hf-hub:{REPO}")' in card.text


def test_a_failed_upload_keeps_the_export_and_prints_the_command_that_retries_it(tmp_path, monkeypatch, capsys):
    _spy_uploads(monkeypatch, fail=True)
    out = tmp_path / "run"
    trainer = _trainer(_cache(tmp_path / "cache.safetensors"), out, "optim.steps=1", f"run.push_to_hub={REPO}")
    trainer.fit()  # returns: the training itself succeeded
    export = out / "export" / "toklip"
    err = capsys.readouterr().err
    assert f"uploading {export} to the Hub repo {REPO} failed (ConnectionError: network unreachable)" in err
    assert f"retry with: huggingface-cli upload {REPO} {export} . --commit-message 'toklip-train run: step 1'" in err
    loaded = tp.load_toklip(export)
    assert torch.equal(loaded.encoder.pos_embed, trainer.model.encoder.pos_embed.detach().cpu())
