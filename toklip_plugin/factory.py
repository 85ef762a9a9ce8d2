"""Names, files and configs -> models, transforms and tokenizers (open_clip's factory, for TokLIP)."""
from __future__ import annotations

import contextlib
import os
import warnings
from pathlib import Path
from typing import Callable, Iterator, Optional, Union

import torch

from . import checkpoints as ckpt
from . import hub
from .config import TokLIPConfig, get_model_config, list_models, load_config_file
from .models.text import build_tokenizer
from .models.toklip import TokLIP
from .models.vq import VQModel
from .transforms import image_transform

__all__ = ["list_models", "resolve_config", "saved_directory", "create_model", "create_vq", "load_toklip", "get_tokenizer",
           "get_transform", "RandomWeightsWarning"]

ModelSource = Union[str, Path, TokLIPConfig]
RELEASED = "released"  # checkpoint= value meaning: the released weights named in the config


class RandomWeightsWarning(UserWarning):
    """``load_toklip`` built a model whose TokLIP weights are random (no directory, Hub repo or checkpoint)."""


def resolve_config(source: ModelSource) -> TokLIPConfig:
    """A config from a name, a saved TokLIP directory, an ``hf-hub:ORG/NAME[@REVISION]`` repo in our layout
    (its ``config.json`` alone is fetched), a JSON/YAML file, or a config object.

    A built-in name wins over a file or folder of that name in the working directory, unless the argument
    is written as a path (``./toklip-tiny``, ``runs/toklip-tiny``): the same command means the same model
    wherever it runs.
    """
    if isinstance(source, TokLIPConfig):
        return source
    if _is_builtin_name(source):
        if Path(source).exists():
            warnings.warn(f"{source!r} is the built-in TokLIP config; the {source!r} in the working directory is "
                          f"not read (write ./{source} to load it)", stacklevel=2)
        return get_model_config(str(source))
    if hub.is_hub_id(source):
        return ckpt.read_pretrained_config(ckpt.download_pretrained(source, (ckpt.CONFIG_NAME,)))
    path = Path(source)
    if path.is_dir():
        return ckpt.read_pretrained_config(path)
    if path.suffix in (".json", ".yaml", ".yml") and path.is_file():
        return load_config_file(path)
    raise ValueError(f"{source!r} is neither a known TokLIP name ({', '.join(list_models())}), a saved TokLIP "
                     "directory, an hf-hub:ORG/NAME[@REVISION] repo, nor a .json/.yaml config file")


def _is_builtin_name(source: Union[str, Path]) -> bool:
    """Whether ``source`` names a built-in config: a known name not written as a path (a ``Path``, a separator
    or a leading ``.``)."""
    text = str(source)
    looks_like_path = isinstance(source, Path) or os.sep in text or "/" in text or text.startswith(".")
    return not looks_like_path and text in list_models()


def saved_directory(source: ModelSource) -> Optional[Path]:
    """The ``save_pretrained`` directory ``source`` names, if it names one rather than a config: a local
    directory, or the cached snapshot of an ``hf-hub:`` repo (downloaded when not cached)."""
    if hub.is_hub_id(source):
        return ckpt.download_pretrained(source)
    if isinstance(source, TokLIPConfig) or _is_builtin_name(source) or not Path(source).is_dir():
        return None
    return Path(source)


def create_model(config: TokLIPConfig, seed: Optional[int] = None) -> TokLIP:
    """A randomly initialised TokLIP (``seed`` makes the initialisation reproducible)."""
    with _seeded(seed):
        return TokLIP(config)


def create_vq(config: TokLIPConfig, seed: Optional[int] = None) -> VQModel:
    """The VQ of ``create_model(config, seed)`` alone, for jobs that need only the frozen tokenizer.

    TokLIP builds its VQ first, so the same seed gives the same random VQ weights (a real run loads
    a VQ checkpoint over them).
    """
    with _seeded(seed):
        return VQModel(config.vq)


@contextlib.contextmanager
def _seeded(seed: Optional[int]) -> Iterator[None]:
    """Draw from ``seed`` inside the block without touching the global RNG (no-op for ``None``)."""
    if seed is None:
        yield
        return
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        yield


def load_toklip(
    source: ModelSource = "toklip-tiny",
    checkpoint: Union[str, Path, None] = None,
    vq_checkpoint: Union[str, Path, None] = None,
    device: Union[str, torch.device] = "cpu",
    dtype: torch.dtype = torch.float32,
    random_weights: bool = False,
) -> TokLIP:
    """Build a TokLIP in eval mode.

    ``source``: a name from :func:`list_models`, a directory written by ``save_pretrained`` or an
    ``hf-hub:ORG/NAME[@REVISION]`` repo holding one (its weights are loaded), a config file or a config object.
    ``checkpoint``: a released-layout ``.pt``, one of our directories / ``.safetensors``, an ``hf-hub:`` id of
    either (``hf-hub:ORG/NAME[@REVISION]/FILE`` for one file of a repo, e.g. a released-layout ``.pt`` with the
    config it fits), or ``"released"`` for the weights named in the config (``$TOKLIP_HOME``, then the Hub).
    ``vq_checkpoint``: a LlamaGen VQ checkpoint for the VQ part (a path or ``hf-hub:`` file id), or ``"released"``.
    Without a directory, repo or checkpoint the TokLIP weights are random, as in ``open_clip.create_model``
    without ``pretrained``: that emits a :class:`RandomWeightsWarning` unless ``random_weights=True`` says it
    is meant (the flag only silences the warning).
    """
    directory = saved_directory(source)
    config = resolve_config(source if directory is None else directory)
    # find (or download) the weight files first: a missing one fails at once, not after the initialisation
    checkpoint_path = None if checkpoint is None else _weight_path(config, checkpoint, "checkpoint")
    vq_path = None if vq_checkpoint is None else _weight_path(config, vq_checkpoint, "vq_checkpoint")
    model = create_model(config)
    if directory is not None:
        ckpt.load_pretrained_dir(model, directory)
    if checkpoint_path is not None:
        ckpt.load_any_checkpoint(model, checkpoint_path)
    if vq_path is not None:
        ckpt.load_vq_checkpoint(model.vq, vq_path)
    if directory is None and checkpoint is None and not random_weights:
        warnings.warn(_random_weights_message(config, vq_checkpoint), RandomWeightsWarning, stacklevel=2)
    return model.to(device=device, dtype=dtype).eval()


def _random_weights_message(config: TokLIPConfig, vq_checkpoint: Union[str, Path, None]) -> str:
    random_parts = ("the code mapping, token encoder and text tower are random (the VQ comes from "
                    f"{vq_checkpoint})" if vq_checkpoint is not None else "the VQ tokenizer, code mapping, token "
                    "encoder and text tower are all random")
    released = (f"load_toklip({config.name!r}, checkpoint='released') (the released file the config names; it "
                "holds the VQ too), " if "checkpoint" in config.weights else "")
    return (f"TokLIP {config.name!r} has random weights: no saved directory, hf-hub repo or checkpoint was given, "
            f"so {random_parts}. For trained weights use {released}load_toklip('hf-hub:ORG/NAME'), "
            "load_toklip(DIRECTORY written by save_pretrained), or checkpoint=FILE (a released-layout .pt or our "
            ".safetensors); pass random_weights=True when random weights are meant (tests, smoke runs)")


def _weight_path(config: TokLIPConfig, value: Union[str, Path], kind: str) -> Path:
    if str(value) != RELEASED:
        return ckpt.resolve_weight_file(value)
    if kind not in config.weights:
        raise ValueError(f"config {config.name!r} names no released {kind}; pass a file path instead")
    return ckpt.resolve_weight_file(config.weights[kind])


def get_tokenizer(source: ModelSource, tokenizer_path: Optional[str] = None) -> Callable:
    """The text tokenizer matching a config (any ``source`` :func:`resolve_config` takes):
    ``tokenizer(list_of_str) -> LongTensor [B, L]``."""
    config = resolve_config(source)
    return build_tokenizer(config.tokenizer, config.text["context_length"], tokenizer_path)


def get_transform(source: ModelSource):
    """The image transform (PIL -> ``[3, S, S]`` in [-1, 1]) matching a config."""
    return image_transform(resolve_config(source).image_size)
