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
- our own directory: ``config.json`` + ``model.safetensors`` (+ an optional ``README.md`` model card), staged
  and swapped in whole; on the Hub, a repo holding that directory (``hf-hub:ORG/NAME[@REVISION]``).

Loading is strict: a mismatch names the missing and unexpected keys and the config.
Pickles are read with ``torch.load(weights_only=True)``; one that needs arbitrary code is
refused; safetensors and ``torch.save`` files are told apart by their first bytes. Files not on disk are
looked up in ``$TOKLIP_HOME`` and then on the Hub, at the revision (and with the sha256) the config pins;
``hf-hub:`` ids (:mod:`toklip_plugin.hub`) name a Hub repo or one file in it.
"""
from __future__ import annotations

import errno
import glob
import hashlib
import json
import os
import pickle
import shutil
import stat
import sys
import tempfile
from pathlib import Path
from typing import Any, Mapping, Union

import torch
import torch.nn as nn
from safetensors.torch import load_file, save_file

from . import hub
from .config import TokLIPConfig, config_from_dict
from .io import current_umask, fsync_directory
from .model_card import ModelCardInfo, card_info, render_model_card

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
    "download_pretrained",
    "CONFIG_NAME",
    "WEIGHTS_NAME",
    "CARD_NAME",
]

CONFIG_NAME = "config.json"
WEIGHTS_NAME = "model.safetensors"
CARD_NAME = "README.md"  # the Hugging Face model card
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
    """Load a safetensors file or a ``torch.save`` file (read with ``weights_only=True``), told apart by their
    first bytes, not their suffix: a safetensors file named ``.bin`` or ``.pt`` is no pickle."""
    path = Path(path)
    if _file_format(path) == "safetensors":
        return load_file(str(path))
    try:
        # an open file, not the path: torch.load hands any path ending in .safetensors to safetensors
        with torch.serialization.safe_globals(_numpy_scalar_globals()), open(path, "rb") as f:
            return torch.load(f, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as err:
        raise CheckpointError(
            f"refusing to load {path}: it needs arbitrary code to unpickle ({str(err).splitlines()[0]}). "
            "Only tensors, dicts and plain values are accepted (torch.load(weights_only=True)); "
            "re-save the state dict alone, or convert it to safetensors, in an environment you trust"
        ) from err


def _file_format(path: Path) -> str:
    """``"safetensors"`` (an 8-byte little-endian header length, then the JSON header's ``{``) or ``"torch"``
    (``torch.save``'s zip, ``PK``, or a legacy pickle, protocol byte 0x80); anything else is refused here."""
    with open(path, "rb") as f:
        head = f.read(9)
    size = path.stat().st_size
    if len(head) == 9 and head[8:] == b"{" and 0 < int.from_bytes(head[:8], "little") <= size - 8:
        return "safetensors"
    if head[:2] == b"PK" or head[:1] == b"\x80":
        return "torch"
    raise CheckpointError(
        f"{path} is neither a safetensors file nor a torch.save file (it is {size} bytes long and starts with "
        f"{head[:8]!r}); it may be truncated, empty or another format: download or export it again")


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
    """A local path for ``source``: a path; an ``hf-hub:ORG/NAME[@REVISION]/FILE`` id (that file, through the
    Hugging Face cache) or ``hf-hub:ORG/NAME[@REVISION]`` (the repo's snapshot folder, in our layout); or a config
    ``weights`` entry ``{"repo_id", "filename"}`` (plus ``revision``, a Hub commit or tag, and ``sha256``, the
    file's digest) looked up in ``$TOKLIP_HOME`` (default ``~/.cache/toklip``), then in the Hugging Face cache /
    Hub at that revision. A file found either way is checked against ``sha256`` when the entry names one."""
    if hub.is_hub_id(source):
        ref = hub.parse_hub_id(source)
        return hub.download_file(ref.repo_id, ref.filename, ref.revision) if ref.filename else download_pretrained(
            source)
    if not isinstance(source, Mapping):
        path = Path(source).expanduser()
        if not path.exists():
            raise FileNotFoundError(f"weight file {path} does not exist")
        return path
    repo_id, filename, revision = source["repo_id"], source["filename"], source.get("revision")
    home = Path(os.environ.get(HOME_ENV, Path.home() / ".cache" / "toklip")).expanduser()
    local = home / filename
    path = local if local.exists() else _hub_download(repo_id, filename, revision, local)
    if source.get("sha256"):
        _check_sha256(path, source["sha256"], f"{repo_id}/{filename}@{revision or 'main'}")
    return path


def _hub_download(repo_id: str, filename: str, revision: str | None, local: Path) -> Path:
    return hub.download_file(repo_id, filename, revision,
                             also=f"; or copy the file to {local} (${HOME_ENV}), or pass its path explicitly")


_RELEASED_LAYOUT_HINT = (
    ". A repo of released-layout .pt files (such as TencentARC/TokLIP) has no config.json: load one of its files "
    "with the config it fits, e.g. load_toklip('toklip-l', checkpoint='released') (the file the config names) or "
    "load_toklip('toklip-l', checkpoint='hf-hub:TencentARC/TokLIP/TokLIP_L_384.pt')")


def download_pretrained(source: str, files: tuple[str, ...] = (CONFIG_NAME, WEIGHTS_NAME)) -> Path:
    """The local snapshot folder of an ``hf-hub:ORG/NAME[@REVISION]`` repo in our layout, holding ``files``."""
    ref = hub.parse_hub_id(source)
    if ref.filename:
        raise ValueError(f"{source!r} names one file of a repo, not a TokLIP repo: a model source is "
                         f"hf-hub:{ref.repo_id}[@REVISION]; pass a weight file as checkpoint= with the config it fits")
    return hub.download_repo(ref.repo_id, files, ref.revision, also=_RELEASED_LAYOUT_HINT)


def _check_sha256(path: Path, expected: str, what: str) -> None:
    """Refuse a weight file whose SHA-256 is not the one its config entry pins."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    found = digest.hexdigest()
    if found != expected.lower():
        raise CheckpointError(
            f"{path} ({what}) has SHA-256 {found}, but the config pins {expected}: the file is corrupt, incomplete "
            "or another version. Delete it and download it again at the pinned revision; if the upstream file "
            "changed on purpose, check the new one and update the config's revision and sha256")


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
def save_pretrained(model: nn.Module, directory: str | Path,
                    model_card: Union[bool, Mapping[str, Any], ModelCardInfo] = False) -> None:
    """Write ``config.json`` + ``model.safetensors`` so that ``directory`` always holds one whole model.

    ``model_card`` (True, or :class:`~toklip_plugin.model_card.ModelCardInfo` fields as a mapping) also writes
    ``README.md``, a Hugging Face model card, in the same swap; without it a ``README.md`` already in
    ``directory`` is kept (so is every other file besides the model's own).

    The files are written and fsynced in a staging directory beside ``directory``
    (``.NAME.staging-*``, other files of ``directory`` hard-linked in), which then takes its place in
    one step: an atomic exchange of the two directories where Linux offers one (``renameat2``), else
    ``directory -> .NAME.previous``, staging -> ``directory``, the first rename undone if the second
    fails. A crash between those two leaves the old model whole in ``.NAME.previous``; the next save
    puts it back first and removes staging directories left by crashes. One writer per directory.
    """
    directory = Path(os.path.abspath(directory))
    if directory.exists() and not directory.is_dir():
        raise FileExistsError(f"{directory} exists and is not a directory; save_pretrained writes a directory")
    directory.parent.mkdir(parents=True, exist_ok=True)
    _recover_interrupted_save(directory)
    staged = Path(tempfile.mkdtemp(prefix=f".{directory.name}.staging-", dir=directory.parent))
    try:
        _write_model_files(model, staged, card_info(model_card))
        _carry_over_other_files(directory, staged)
        os.chmod(staged, _directory_mode(directory))  # mkdtemp makes 0700
        _swap_in(staged, directory)
    finally:
        shutil.rmtree(staged, ignore_errors=True)  # the old model after an exchange; nothing after a rename
    fsync_directory(directory.parent)


def _write_model_files(model: nn.Module, folder: Path, card: ModelCardInfo | None) -> None:
    tensors = {k: v.detach().contiguous().cpu() for k, v in model.state_dict().items()}
    save_file(tensors, str(folder / WEIGHTS_NAME), metadata={"format": "pt", "toklip_config": model.config.name})
    (folder / CONFIG_NAME).write_text(json.dumps(model.config.to_dict(), indent=2))
    if card is not None:
        (folder / CARD_NAME).write_text(render_model_card(model.config, card))
    for name in (WEIGHTS_NAME, CONFIG_NAME) + ((CARD_NAME,) if card is not None else ()):
        os.chmod(folder / name, 0o666 & ~current_umask())  # safetensors creates its file 0600
        with open(folder / name, "rb") as f:
            os.fsync(f.fileno())
    fsync_directory(folder)


def _carry_over_other_files(directory: Path, staged: Path) -> None:
    """Hard-link what else ``directory`` holds (a model card, ...) into the staging directory: every entry the
    staging directory does not hold a new version of."""
    if not directory.is_dir():
        return
    for entry in directory.iterdir():
        if os.path.lexists(staged / entry.name):
            continue
        if entry.is_dir() and not entry.is_symlink():
            shutil.copytree(entry, staged / entry.name, symlinks=True, copy_function=os.link)
        else:
            os.link(entry, staged / entry.name, follow_symlinks=False)


def _backup_path(directory: Path) -> Path:
    return directory.with_name(f".{directory.name}.previous")


def _recover_interrupted_save(directory: Path) -> None:
    """Put back the old model a crash left in ``.NAME.previous``; remove leftover staging directories."""
    backup = _backup_path(directory)
    if backup.exists() and not directory.exists():
        os.rename(backup, directory)
    elif backup.exists():
        shutil.rmtree(backup)
    for stale in directory.parent.glob(f".{glob.escape(directory.name)}.staging-*"):
        shutil.rmtree(stale, ignore_errors=True)


def _directory_mode(directory: Path) -> int:
    """The mode ``directory`` keeps when replaced: its own, or for a new one 0777 less the umask."""
    if directory.is_dir():
        return stat.S_IMODE(directory.stat().st_mode)
    return 0o777 & ~current_umask()


def _swap_in(staged: Path, directory: Path) -> None:
    """Make ``staged`` be ``directory``; afterwards ``staged`` holds the old one (or nothing)."""
    if not directory.exists():
        os.rename(staged, directory)
    elif not _exchange(staged, directory):
        backup = _backup_path(directory)
        os.rename(directory, backup)
        try:
            os.rename(staged, directory)
        except BaseException:
            os.rename(backup, directory)
            raise
        shutil.rmtree(backup)


def _exchange(a: Path, b: Path) -> bool:
    """Swap two paths atomically (Linux ``renameat2(RENAME_EXCHANGE)``); False where the system or the file
    system cannot (other kernels, some network file systems)."""
    if not sys.platform.startswith("linux"):
        return False
    import ctypes

    renameat2 = getattr(ctypes.CDLL(None, use_errno=True), "renameat2", None)
    if renameat2 is None:
        return False
    at_fdcwd, rename_exchange = -100, 2
    if renameat2(at_fdcwd, os.fsencode(a), at_fdcwd, os.fsencode(b), rename_exchange) == 0:
        return True
    code = ctypes.get_errno()
    if code in (errno.EINVAL, errno.ENOSYS, errno.EOPNOTSUPP):
        return False
    raise OSError(code, os.strerror(code), str(a), None, str(b))


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
