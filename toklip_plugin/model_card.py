"""The Hugging Face model card (``README.md``) that ``save_pretrained(..., model_card=...)`` and ``push_to_hub``
write beside ``config.json`` and ``model.safetensors``.

YAML front matter (``huggingface_hub.ModelCardData``): ``library_name: toklip-plugin`` (the package that loads
the repo; the Hub counts downloads of ``config.json`` for it), tags, ``base_model`` (the Hub repos the config
names for its initialisation and its frozen VQ, unless given), ``license`` only when given, and two keys of ours:
``toklip_config`` (the config summary) and ``toklip_eval_results`` (scalar results, when given). The body repeats
them as tables and shows how to load the model.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping, Optional, Sequence, Union

from .config import TokLIPConfig

__all__ = ["ModelCardInfo", "LIBRARY_NAME", "card_info", "config_summary", "render_model_card"]

LIBRARY_NAME = "toklip-plugin"
TAGS = ("toklip", "visual-tokenizer", "vector-quantization", "clip", "zero-shot-image-classification")
# config ``weights`` entries that a model is built on: its initialisation, its frozen VQ
_BASE_MODEL_ENTRIES = ("siglip2", "open_clip", "vq_checkpoint")
_PLACEHOLDER_REPO = "ORG/NAME"


@dataclass(frozen=True)
class ModelCardInfo:
    """What a model card says beyond the config (every field optional).

    ``repo_id``: the repo the loading example names; ``training_data``: names or paths of the training data;
    ``eval_results``: ``{metric: value}`` or the path of a ``results.json`` written by ``toklip-eval``;
    ``base_model``: Hub repo ids (None: those the config names); ``license``: a Hub license id.
    """

    repo_id: Optional[str] = None
    training_data: Sequence[str] = ()
    eval_results: Union[Mapping[str, Any], str, Path, None] = None
    base_model: Optional[Sequence[str]] = None
    license: Optional[str] = None


def card_info(model_card: Union[bool, Mapping[str, Any], ModelCardInfo], repo_id: Optional[str] = None
              ) -> Optional[ModelCardInfo]:
    """``save_pretrained``'s ``model_card`` argument (False, True, a mapping of :class:`ModelCardInfo` fields or
    one) as a :class:`ModelCardInfo`, or None for no card; ``repo_id`` fills in a card that names none."""
    if model_card is False or model_card is None:
        return None
    if model_card is True:
        info = ModelCardInfo()
    elif isinstance(model_card, ModelCardInfo):
        info = model_card
    elif isinstance(model_card, Mapping):
        info = ModelCardInfo(**model_card)
    else:
        raise TypeError(f"model_card must be True, False, a mapping of ModelCardInfo fields or a ModelCardInfo; "
                        f"got {type(model_card).__name__}")
    if repo_id and not info.repo_id:
        info = ModelCardInfo(repo_id, info.training_data, info.eval_results, info.base_model, info.license)
    return info


def config_summary(config: TokLIPConfig) -> dict[str, Any]:
    """The architecture in a few numbers: what a reader of the card wants before the JSON."""
    encoder, vq = config.encoder, config.vq
    return {"name": config.name, "image_size": config.image_size, "grid": f"{config.grid_size}x{config.grid_size}",
            "tokens": config.num_tokens, "encoder_width": encoder.width, "encoder_depth": encoder.depth,
            "encoder_heads": encoder.heads, "causal": encoder.causal, "pooling": encoder.pool,
            "embed_dim": config.embed_dim, "codebook": f"{vq.codebook_size}x{vq.codebook_embed_dim}"}


def _scalar_results(results: Union[Mapping[str, Any], str, Path, None]) -> dict[str, Any]:
    if isinstance(results, (str, Path)):
        results = json.loads(Path(results).read_text())
    return {k: v for k, v in (results or {}).items() if isinstance(v, (str, int, float, bool))}


def _base_models(config: TokLIPConfig, given: Optional[Sequence[str]]) -> list[str]:
    if given is not None:
        return list(given)
    repos = [config.weights[key]["repo_id"] for key in _BASE_MODEL_ENTRIES if key in config.weights]
    return list(dict.fromkeys(repos))


def _table(rows: Mapping[str, Any], head: tuple[str, str]) -> str:
    lines = [f"| {head[0]} | {head[1]} |", "|---|---|"]
    lines += [f"| {key} | {value} |" for key, value in rows.items()]
    return "\n".join(lines)


def render_model_card(config: TokLIPConfig, info: ModelCardInfo) -> str:
    """The whole ``README.md``: front matter, then the summary, loading example, data and results."""
    from huggingface_hub import ModelCardData

    summary, results = config_summary(config), _scalar_results(info.eval_results)
    bases = _base_models(config, info.base_model)
    extra = {"toklip_config": summary, **({"toklip_eval_results": results} if results else {})}
    data = ModelCardData(library_name=LIBRARY_NAME, tags=list(TAGS), base_model=bases or None, license=info.license,
                         **extra)
    repo = info.repo_id or _PLACEHOLDER_REPO
    sections = [
        f"# {config.name} (TokLIP)\n\n{config.description or 'A TokLIP visual tokenizer.'}",
        "## How to load\n\nWith the `toklip_plugin` package installed:\n\n```python\nimport toklip_plugin as tp\n\n"
        f'model = tp.load_toklip("hf-hub:{repo}")\ncodes = model.tokenize(images)      # LlamaGen VQ-16 codes\n'
        "tokens = model.encode_codes(codes)  # causal semantic tokens\n```",
        "## Model\n\n" + _table(summary, ("setting", "value")),
    ]
    if bases:
        sections.append("## Base models\n\n" + "\n".join(f"- [{b}](https://huggingface.co/{b})" for b in bases))
    if info.training_data:
        sections.append("## Training data\n\n" + "\n".join(f"- `{name}`" for name in info.training_data))
    if results:
        sections.append("## Evaluation results\n\n" + _table(results, ("metric", "value")))
    return f"---\n{data.to_yaml()}\n---\n\n" + "\n\n".join(sections) + "\n"
