"""Every on-disk format TokLIP reads or writes, in one place.

- the released TokLIP ``.pt`` (an open_clip CustomTextCLIP whose timm trunk wraps the
  LlamaGen VQ): ``visual.trunk.{vq,vq_table,vq_mapping,pos_embed,blocks,norm,attn_pool}``,
  ``text.*``, ``logit_scale``, ``logit_bias``; maybe under ``state_dict`` with ``module.``;
- LlamaGen VQ checkpoints (``{"ema"|"model"|"state_dict": ...}``, LlamaGen's key names);
- SigLIP2 weights from timm / open_clip, to initialise the token encoder and text tower;
- our own directory: ``config.json`` + ``model.safetensors``, written atomically.

Loading is strict: a mismatch names the missing and unexpected keys and the config.
Pickles are read with ``torch.load(weights_only=True)``; one that needs arbitrary code is
refused. Files not on disk are looked up in ``$TOKLIP_HOME`` and then on the Hub.
"""
from __future__ import annotations

import json
import os
import pickle
import tempfile
from pathlib import Path
from typing import Any, Mapping

import torch
import torch.nn as nn
from safetensors.torch import load_file, save_file

from .config import TokLIPConfig, config_from_dict

__all__ = [
    "CheckpointError",
    "safe_load",
    "unwrap_state_dict",
    "released_to_native",
    "native_to_released",
    "load_released_checkpoint",
    "load_vq_checkpoint",
    "vq_state_dict",
    "load_any_checkpoint",
    "read_pretrained_config",
    "init_from_siglip2",
    "save_pretrained",
    "load_pretrained_dir",
    "load_state_dict_strict",
    "resolve_weight_file",
    "CONFIG_NAME",
    "WEIGHTS_NAME",
]

CONFIG_NAME = "config.json"
WEIGHTS_NAME = "model.safetensors"
HOME_ENV = "TOKLIP_HOME"

# released key prefix -> our key prefix; the first match wins, so specific prefixes come first.
_RELEASED_PREFIXES = (
    ("visual.trunk.vq_table.", "encoder.code_mlp.fc1."),
    ("visual.trunk.vq_mapping.", "encoder.code_mlp.fc2."),
    ("visual.trunk.vq.", "vq."),
    ("visual.trunk.", "encoder."),
    ("text.", "text."),
    ("logit_scale", "logit_scale"),
    ("logit_bias", "logit_bias"),
)


class CheckpointError(RuntimeError):
    """A checkpoint that cannot be read or does not fit the model."""


# reading files -------------------------------------------------------------------------
def safe_load(path: str | Path) -> Any:
    """Load a ``.safetensors`` file or a pickle with ``weights_only=True``."""
    path = Path(path)
    if path.suffix == ".safetensors":
        return load_file(str(path))
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as err:
        raise CheckpointError(
            f"refusing to load {path}: it needs arbitrary code to unpickle ({str(err).splitlines()[0]}). "
            "Only tensors, dicts and plain values are accepted (torch.load(weights_only=True)); "
            "re-save the state dict alone, or convert it to safetensors, in an environment you trust"
        ) from err


def unwrap_state_dict(obj: Any, preferred: tuple[str, ...] = ("state_dict", "model", "module")) -> dict:
    """Find the tensor dict inside a training checkpoint and strip DDP ``module.`` prefixes."""
    while isinstance(obj, Mapping) and not _is_state_dict(obj):
        key = next((k for k in preferred if k in obj), None)
        if key is None:
            raise CheckpointError(f"no state dict found; top-level keys are {sorted(obj)[:20]}")
        obj = obj[key]
    if not isinstance(obj, Mapping):
        raise CheckpointError(f"expected a state dict, found {type(obj).__name__}")
    if obj and all(k.startswith("module.") for k in obj):
        obj = {k[len("module."):]: v for k, v in obj.items()}
    return dict(obj)


def _is_state_dict(obj: Mapping) -> bool:
    return bool(obj) and all(isinstance(v, torch.Tensor) for v in obj.values())


def resolve_weight_file(source: str | Path | Mapping[str, str]) -> Path:
    """A local path for ``source``: a path, or ``{"repo_id", "filename"}`` looked up in
    ``$TOKLIP_HOME`` (default ``~/.cache/toklip``), then the Hugging Face cache / Hub."""
    if not isinstance(source, Mapping):
        path = Path(source).expanduser()
        if not path.exists():
            raise FileNotFoundError(f"weight file {path} does not exist")
        return path
    repo_id, filename = source["repo_id"], source["filename"]
    home = Path(os.environ.get(HOME_ENV, Path.home() / ".cache" / "toklip")).expanduser()
    local = home / filename
    if local.exists():
        return local
    from huggingface_hub import hf_hub_download

    try:
        return Path(hf_hub_download(repo_id, filename))
    except Exception as err:  # offline, unknown repo, no permission: all end the same way for the user
        raise FileNotFoundError(
            f"{filename} not found. Looked in {local} (${HOME_ENV}) and the Hugging Face cache, and the Hub "
            f"download of {repo_id}/{filename} failed ({type(err).__name__}: {str(err).splitlines()[0][:200]}). "
            f"Download it on a machine with network access (huggingface-cli download {repo_id} {filename}) "
            f"and copy it to {local}, or pass its path explicitly"
        ) from err


# strict loading ------------------------------------------------------------------------
def load_state_dict_strict(module: nn.Module, state_dict: Mapping[str, torch.Tensor], what: str) -> None:
    """``load_state_dict(strict=True)`` with an error that names keys, shapes and ``what``."""
    own = module.state_dict()
    missing = sorted(set(own) - set(state_dict))
    unexpected = sorted(set(state_dict) - set(own))
    wrong_shape = sorted(
        f"{k}: checkpoint {tuple(state_dict[k].shape)} vs model {tuple(own[k].shape)}"
        for k in set(own) & set(state_dict)
        if state_dict[k].shape != own[k].shape
    )
    if missing or unexpected or wrong_shape:
        raise CheckpointError(
            f"checkpoint does not fit {what}:\n"
            f"  missing keys ({len(missing)}): {_preview(missing)}\n"
            f"  unexpected keys ({len(unexpected)}): {_preview(unexpected)}\n"
            f"  wrong shapes ({len(wrong_shape)}): {_preview(wrong_shape)}\n"
            "Check that the checkpoint was made for this config (or pass the matching config)."
        )
    module.load_state_dict(state_dict, strict=True)


def _preview(items: list[str], limit: int = 12) -> str:
    shown = ", ".join(items[:limit])
    return shown + (f", ... ({len(items) - limit} more)" if len(items) > limit else "") if items else "none"


def _describe(config: TokLIPConfig) -> str:
    e = config.encoder
    return (f"config {config.name!r} (image {config.image_size}, encoder width {e.width} depth {e.depth}, "
            f"mapping {e.mapping}, codebook {config.vq.codebook_size}x{config.vq.codebook_embed_dim})")


# the released TokLIP layout ------------------------------------------------------------
def _rename_prefixes(state_dict: Mapping[str, torch.Tensor], pairs) -> dict[str, torch.Tensor]:
    """Replace the first matching ``(old, new)`` prefix of each key; other keys stay as they are
    (so that a strict load reports them as unexpected)."""
    out = {}
    for key, value in state_dict.items():
        old, new = next(((o, n) for o, n in pairs if key.startswith(o)), ("", ""))
        out[new + key[len(old):]] = value
    return out


def released_to_native(state_dict: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Rename released TokLIP keys to ours."""
    return _rename_prefixes(state_dict, _RELEASED_PREFIXES)


def native_to_released(state_dict: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Our keys -> the released TokLIP layout (the export format for trained tokenizers)."""
    return _rename_prefixes(state_dict, [(new, old) for old, new in _RELEASED_PREFIXES])


def load_released_checkpoint(model: nn.Module, source: str | Path | Mapping[str, torch.Tensor]) -> None:
    """Load a released TokLIP checkpoint (file or state dict) into ``model``, strictly."""
    raw = safe_load(source) if isinstance(source, (str, Path)) else source
    state_dict = released_to_native(unwrap_state_dict(raw))
    load_state_dict_strict(model, state_dict, f"TokLIP {_describe(model.config)}")


# LlamaGen VQ checkpoints ---------------------------------------------------------------
def vq_state_dict(raw: Any) -> dict[str, torch.Tensor]:
    """The VQ weights of a LlamaGen VQ checkpoint: ``ema``, then ``model``, then ``state_dict``."""
    if isinstance(raw, Mapping) and not _is_state_dict(raw):
        for key in ("ema", "model", "state_dict"):
            if key in raw:
                return unwrap_state_dict(raw[key])
    return unwrap_state_dict(raw)


def load_vq_checkpoint(vq_model: nn.Module, source: str | Path | Mapping[str, Any]) -> None:
    raw = safe_load(source) if isinstance(source, (str, Path)) else source
    cfg = vq_model.config
    load_state_dict_strict(vq_model, vq_state_dict(raw),
                           f"the LlamaGen VQ model (codebook {cfg.codebook_size}x{cfg.codebook_embed_dim}, "
                           f"ch_mult {list(cfg.ch_mult)})")


# SigLIP2 initialisation ----------------------------------------------------------------
_SIGLIP_TRUNK_PARTS = ("pos_embed", "blocks.", "norm.", "attn_pool.")


def init_from_siglip2(model: nn.Module, state_dict: Mapping[str, torch.Tensor]) -> dict[str, list[str]]:
    """Initialise the token encoder (and text tower, logit scale/bias when present) from SigLIP2.

    Accepts an open_clip state dict (``visual.trunk.*``, ``text.*``) or a timm vision tower
    state dict (``pos_embed``, ``blocks.*``, ...). The patch embedding has no counterpart
    (TokLIP reads codes, not pixels) and is dropped; the position embedding is resampled to
    this model's grid. Returns what was copied, resampled and dropped.
    """
    from timm.layers import resample_abs_pos_embed

    state_dict = unwrap_state_dict(state_dict)
    is_open_clip = any(k.startswith("visual.") for k in state_dict)
    target = model.state_dict()
    report: dict[str, list[str]] = {"copied": [], "resampled": [], "dropped": []}
    update = {}
    for key, value in state_dict.items():
        if is_open_clip and key.startswith("visual.trunk."):
            ours = "encoder." + key[len("visual.trunk."):]
        elif is_open_clip and (key.startswith("text.") or key in ("logit_scale", "logit_bias")):
            ours = key
        elif not is_open_clip and key.startswith(_SIGLIP_TRUNK_PARTS):
            ours = "encoder." + key
        else:
            report["dropped"].append(key)
            continue
        if ours not in target:
            report["dropped"].append(key)
            continue
        if ours == "encoder.pos_embed" and value.shape != target[ours].shape:
            grid = model.config.grid_size
            value = resample_abs_pos_embed(value, new_size=[grid, grid], num_prefix_tokens=0)
            report["resampled"].append(key)
        if value.shape != target[ours].shape:
            raise CheckpointError(f"SigLIP2 weight {key} has shape {tuple(value.shape)}, but {ours} in "
                                  f"{_describe(model.config)} has {tuple(target[ours].shape)}")
        update[ours] = value
        report["copied"].append(key)
    if not any(k.startswith("encoder.blocks.") for k in update):
        raise CheckpointError("no SigLIP2 transformer blocks found in the state dict "
                              "(expected 'visual.trunk.blocks.*' or 'blocks.*')")
    model.load_state_dict(update, strict=False)
    return report


# our own directory format --------------------------------------------------------------
def save_pretrained(model: nn.Module, directory: str | Path) -> None:
    """Write ``config.json`` and ``model.safetensors`` so that a crash never leaves a half file.

    Both files are written under temporary names in ``directory`` first and renamed over the
    old ones only once complete (``os.replace`` is atomic on POSIX).
    """
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    tensors = {k: v.detach().contiguous().cpu() for k, v in model.state_dict().items()}
    config_text = json.dumps(model.config.to_dict(), indent=2)
    staged = []
    try:
        weights_tmp = _temp_path(directory, WEIGHTS_NAME)
        staged.append(weights_tmp)
        save_file(tensors, str(weights_tmp), metadata={"format": "pt", "toklip_config": model.config.name})
        config_tmp = _temp_path(directory, CONFIG_NAME)
        staged.append(config_tmp)
        config_tmp.write_text(config_text)
        for tmp, final in ((weights_tmp, WEIGHTS_NAME), (config_tmp, CONFIG_NAME)):
            _fsync(tmp)
            os.replace(tmp, directory / final)
    finally:
        for tmp in staged:
            tmp.unlink(missing_ok=True)


def _temp_path(directory: Path, name: str) -> Path:
    fd, path = tempfile.mkstemp(prefix=f".{name}.", suffix=".tmp", dir=directory)
    os.close(fd)
    return Path(path)


def _fsync(path: Path) -> None:
    with open(path, "rb") as f:
        os.fsync(f.fileno())


def read_pretrained_config(directory: str | Path) -> TokLIPConfig:
    path = Path(directory) / CONFIG_NAME
    if not path.is_file():
        raise FileNotFoundError(f"{directory} is not a TokLIP directory: {CONFIG_NAME} is missing")
    return config_from_dict(json.loads(path.read_text()))


def load_pretrained_dir(model: nn.Module, directory: str | Path) -> None:
    path = Path(directory) / WEIGHTS_NAME
    if not path.is_file():
        raise FileNotFoundError(f"{directory} has {CONFIG_NAME} but no {WEIGHTS_NAME}")
    load_state_dict_strict(model, load_file(str(path)), f"TokLIP {_describe(model.config)}")


def load_any_checkpoint(model: nn.Module, source: str | Path) -> None:
    """A TokLIP directory, a ``.safetensors`` of ours, or a released-layout ``.pt``."""
    path = Path(source)
    if path.is_dir():
        return load_pretrained_dir(model, path)
    raw = unwrap_state_dict(safe_load(path))
    if any(k.startswith("visual.trunk.") for k in raw):
        return load_released_checkpoint(model, raw)
    load_state_dict_strict(model, raw, f"TokLIP {_describe(model.config)}")
