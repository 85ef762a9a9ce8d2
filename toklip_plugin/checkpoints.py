"""Every on-disk format TokLIP reads or writes, in one place.

- the released TokLIP ``.pt`` (an open_clip CustomTextCLIP whose timm trunk wraps the
  LlamaGen VQ): ``visual.trunk.{vq,vq_table,vq_mapping,pos_embed,blocks,norm,attn_pool}``,
  ``text.*``, ``logit_scale`` and, only for a model trained with the sigmoid loss, ``logit_bias``;
  plain, or as the official trainer's epoch checkpoint ``{"epoch", "name", "state_dict":
  {"module." + key}, "optimizer", "scaler"}``; in any floating dtype (cast on load);
- LlamaGen VQ checkpoints (``{"ema"|"model"|"state_dict": ...}``, LlamaGen's key names);
- SigLIP2 weights from timm / open_clip, to initialise the token encoder and text tower;
- OpenCLIP ViT weights (open_clip's own ``VisionTransformer`` + text transformer), to initialise
  the paper's ViT-B/16 ablation model;
- our own directory: ``config.json`` + ``model.safetensors``, written atomically.

Loading is strict: a mismatch names the missing and unexpected keys and the config.
Pickles are read with ``torch.load(weights_only=True)``; one that needs arbitrary code is
refused. Files not on disk are looked up in ``$TOKLIP_HOME`` and then on the Hub.
"""
from __future__ import annotations

import json
import os
import pickle
from pathlib import Path
from typing import Any, Mapping

import torch
import torch.nn as nn
from safetensors.torch import load_file, save_file

from .config import TokLIPConfig, config_from_dict
from .io import atomic_path

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
    "open_clip_vit_to_native",
    "init_from_open_clip",
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


# where the VQ sits inside a whole TokLIP state dict: the released layout, then ours
_VQ_PREFIXES = ("visual.trunk.vq.", "vq.")


class CheckpointError(RuntimeError):
    """A checkpoint that cannot be read or does not fit the model."""


# reading files -------------------------------------------------------------------------
def safe_load(path: str | Path) -> Any:
    """Load a ``.safetensors`` file or a pickle with ``weights_only=True``."""
    path = Path(path)
    if path.suffix == ".safetensors":
        return load_file(str(path))
    try:
        with torch.serialization.safe_globals(_numpy_scalar_globals()):
            return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as err:
        raise CheckpointError(
            f"refusing to load {path}: it needs arbitrary code to unpickle ({str(err).splitlines()[0]}). "
            "Only tensors, dicts and plain values are accepted (torch.load(weights_only=True)); "
            "re-save the state dict alone, or convert it to safetensors, in an environment you trust"
        ) from err


def _numpy_scalar_globals() -> list:
    """numpy scalars and dtypes, which are plain data: the official trainer's epoch checkpoints hold its
    learning rate as a ``numpy.float64`` in the optimizer state (its cosine schedule computes with numpy).
    Registered under the numpy 1 and numpy 2 module names, since files from either may arrive."""
    import numpy as np

    try:
        from numpy._core.multiarray import scalar
    except ImportError:  # numpy 1
        from numpy.core.multiarray import scalar
    numeric_dtypes = [type(np.dtype(code)) for code in "?bhilqBHILQefdgFDG"]  # no object dtype
    return [(scalar, "numpy.core.multiarray.scalar"), (scalar, "numpy._core.multiarray.scalar"), np.dtype,
            *numeric_dtypes]


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
            + (_LOGIT_BIAS_HINT if "logit_bias" in missing + unexpected else "")
        )
    module.load_state_dict(state_dict, strict=True)


_LOGIT_BIAS_HINT = (
    "\nA model trained with the sigmoid loss has a logit_bias, one trained with InfoNCE (the paper, the official "
    "trainer's --siglip-train) has none: set init_logit_bias in the model config (e.g. -10) or to null to match."
)


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
    """The VQ weights of a LlamaGen VQ checkpoint (``ema``, then ``model``, then ``state_dict``), or of the
    VQ inside a whole TokLIP checkpoint (the released ``visual.trunk.vq.*`` or our ``vq.*`` keys)."""
    state = unwrap_state_dict(raw, preferred=("ema", "model", "state_dict", "module"))
    for prefix in _VQ_PREFIXES:
        if any(key.startswith(prefix) for key in state):
            return {key[len(prefix):]: value for key, value in state.items() if key.startswith(prefix)}
    return state


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


# OpenCLIP ViT initialisation (the paper's ViT-B/16 ablation model) ----------------------
# open_clip ResidualAttentionBlock part -> timm Block part: the same pre-norm attention + MLP, packed qkv
_OPEN_CLIP_BLOCK_PARTS = (
    ("ln_1.", "norm1."), ("attn.in_proj_weight", "attn.qkv.weight"), ("attn.in_proj_bias", "attn.qkv.bias"),
    ("attn.out_proj.", "attn.proj."), ("ln_2.", "norm2."), ("mlp.c_fc.", "mlp.fc1."), ("mlp.c_proj.", "mlp.fc2."),
)
# CLIP keeps its text transformer at the top level (CustomTextCLIP under text.*)
_OPEN_CLIP_TEXT_PARTS = ("token_embedding.", "positional_embedding", "transformer.", "ln_final.", "text_projection")


def _open_clip_native_key(key: str) -> str | None:
    """Our key for an open_clip CLIP key (``visual.positional_embedding`` aside); None: no counterpart."""
    if key in ("logit_scale", "logit_bias") or key.startswith("text."):
        return key
    if key.startswith(_OPEN_CLIP_TEXT_PARTS):
        return "text." + key
    if not key.startswith("visual."):
        return None
    name = key[len("visual."):]
    if name.startswith("transformer.resblocks."):
        index, _, part = name[len("transformer.resblocks."):].partition(".")
        new = next((n + part[len(o):] for o, n in _OPEN_CLIP_BLOCK_PARTS if part.startswith(o)), None)
        return None if new is None else f"encoder.blocks.{index}.{new}"
    for old, new in (("ln_pre.", "norm_pre."), ("ln_post.", "norm.")):
        if name.startswith(old):
            return "encoder." + new + name[len(old):]
    return {"class_embedding": "encoder.class_embedding", "proj": "encoder.proj"}.get(name)


def _class_position_last(pos: torch.Tensor, grid: int) -> tuple[torch.Tensor, bool]:
    """open_clip's ``[1 + n*n, d]`` position table (class row first) -> ours ``[1, grid*grid + 1, d]`` (class row
    last, the official ``revise_positional_embedding``), the patch rows resampled when ``n != grid``."""
    from timm.layers import resample_abs_pos_embed

    cls, patches = pos[:1], pos[1:]
    src = round(patches.shape[0] ** 0.5)
    resample = src != grid
    if resample:
        patches = resample_abs_pos_embed(patches[None], new_size=[grid, grid], old_size=[src, src],
                                         num_prefix_tokens=0)[0]
    return torch.cat([patches, cls])[None], resample


def open_clip_vit_to_native(state_dict: Mapping[str, torch.Tensor], grid_size: int
                            ) -> tuple[dict[str, torch.Tensor], dict[str, list[str]]]:
    """An open_clip CLIP state dict whose image tower is open_clip's own ``VisionTransformer`` (``visual.conv1``,
    ``visual.class_embedding``, ``visual.transformer.resblocks.N.*``, ``visual.proj``; e.g. ``ViT-B-16``) -> our
    keys (``encoder.*``, ``text.*``, ``logit_scale``), plus a report of what was copied, resampled and dropped.

    The patch embedding ``conv1`` has no counterpart (TokLIP reads codes, not pixels) and is dropped.
    """
    report: dict[str, list[str]] = {"copied": [], "resampled": [], "dropped": []}
    native = {}
    for key, value in unwrap_state_dict(state_dict).items():
        if key == "visual.positional_embedding":
            native["encoder.pos_embed"], resampled = _class_position_last(value, grid_size)
            report["resampled" if resampled else "copied"].append(key)
            continue
        ours = _open_clip_native_key(key)
        if ours is None:
            report["dropped"].append(key)
            continue
        native[ours] = value
        report["copied"].append(key)
    if not any(k.startswith("encoder.blocks.") for k in native):
        raise CheckpointError("no OpenCLIP ViT blocks found in the state dict (expected "
                              "'visual.transformer.resblocks.*'; SigLIP2 weights go through init_from_siglip2)")
    return native, report


def init_from_open_clip(model: nn.Module, state_dict: Mapping[str, torch.Tensor],
                        include_text: bool = True) -> dict[str, list[str]]:
    """Initialise a class-token TokLIP (``toklip-b16-openclip``) from open_clip ViT weights (e.g. ``ViT-B-16``):
    the token encoder always; the text tower and logit scale too unless ``include_text=False``.

    Returns what was copied, resampled and dropped (weights the model has no place for, such as a
    ``logit_bias`` for a model without one, are dropped and listed).
    """
    if not model.config.encoder.has_class_token:
        raise CheckpointError(f"OpenCLIP ViT weights carry a class token, but {_describe(model.config)} has none; "
                              "use a class-token config such as toklip-b16-openclip (or init_from_siglip2)")
    native, report = open_clip_vit_to_native(state_dict, model.config.grid_size)
    target = model.state_dict()
    update = {}
    for key, value in native.items():
        if key not in target or (not include_text and not key.startswith("encoder.")):
            report["dropped"].append(key)
        elif value.shape != target[key].shape:
            raise CheckpointError(f"OpenCLIP weight for {key} has shape {tuple(value.shape)}, but "
                                  f"{_describe(model.config)} has {tuple(target[key].shape)}")
        else:
            update[key] = value
    model.load_state_dict(update, strict=False)
    return report


# our own directory format --------------------------------------------------------------
def save_pretrained(model: nn.Module, directory: str | Path) -> None:
    """Write ``model.safetensors`` and ``config.json`` so that a crash never leaves a half file.

    Both files are written under temporary names in ``directory`` first and renamed over the old
    ones only once both are complete (:func:`toklip_plugin.io.atomic_path`).
    """
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    tensors = {k: v.detach().contiguous().cpu() for k, v in model.state_dict().items()}
    with atomic_path(directory / WEIGHTS_NAME) as weights_tmp, atomic_path(directory / CONFIG_NAME) as config_tmp:
        save_file(tensors, str(weights_tmp), metadata={"format": "pt", "toklip_config": model.config.name})
        config_tmp.write_text(json.dumps(model.config.to_dict(), indent=2))


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
