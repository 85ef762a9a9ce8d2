"""Tokenize a data set once, train the token encoder many epochs: the ``cache`` data file.

``toklip-train --config NAME --build-cache OUT.safetensors [overrides]`` reads the config's
training data (webdataset shards or a CSV/JSONL file) once, in file order, through the frozen
VQ, the text tokenizer and, when the loss distils, the frozen teacher, and writes ``codes``,
``text`` and ``teacher_pooled`` / ``teacher_tokens``. Training with ``data.kind=cache
data.train=OUT.safetensors`` then skips image decoding, the VQ encoder and the teacher. Samples
that fail to decode (or fall below ``data.min_size``) are skipped and counted, as in training.
Only the frozen parts are built: no student, optimizer or process group. A cache holds one view of
each image, through the evaluation transform: training from it has no random-crop augmentation.
"""
from __future__ import annotations

import itertools
from pathlib import Path
from typing import Any, Iterator

import torch
from safetensors.torch import save_file
from tqdm import tqdm

from ..factory import create_vq, get_tokenizer
from ..io import SKIPPABLE_ERRORS
from ..models.teacher import build_teacher
from ..transforms import image_transform
from .config import TrainConfig
from .data import SampleDecoder, source_records
from .distributed import pick_device
from .student import load_configured_vq
from .targets import FrozenTargets

__all__ = ["build_code_cache", "frozen_image_targets"]


def frozen_image_targets(config: TrainConfig) -> FrozenTargets:
    """The frozen VQ and, when the loss distils, the teacher of ``config``: no text tower, no student."""
    model_config, device = config.model_config(), pick_device(config.run.device)
    vq = create_vq(model_config, seed=config.run.seed)  # the trainer's VQ when no checkpoint is named
    load_configured_vq(vq, config)
    loss = config.loss
    distils = loss.distill_weight > 0 or loss.token_distill_weight > 0
    teacher = build_teacher(config.teacher, model_config, config.run.seed).to(device) if distils else None
    return FrozenTargets(vq.to(device).eval(), None, teacher, loss.distill_weight > 0, loss.token_distill_weight > 0,
                         config.run.precision)


def build_code_cache(config: TrainConfig, out: str | Path, batch_size: int = 64) -> dict[str, Any]:
    """Write the code cache of ``config``'s training data to ``out``; ``{"path", "samples", "skipped"}``."""
    targets = frozen_image_targets(config)
    model_config = config.model_config()
    decoder = SampleDecoder(config.data, image_transform(model_config.image_size), get_tokenizer(model_config))
    parts: dict[str, list[torch.Tensor]] = {"text": []}
    decoded = _Decoded(source_records(config.data), decoder)
    bar = tqdm(desc="code cache", unit="img", dynamic_ncols=True)
    for batch in _batches(iter(decoded), batch_size):
        for key, value in targets.image_targets({"images": batch["images"].to(targets.device)}).items():
            if value is not None:
                parts.setdefault(key, []).append(value.cpu())
        parts["text"].append(batch["text"])
        bar.update(len(batch["text"]))
        bar.set_postfix(skipped=decoded.skipped)
    bar.close()
    if not parts["text"]:
        raise RuntimeError(f"no usable sample in {config.data.train!r} ({decoded.skipped} failed to decode)")
    Path(out).parent.mkdir(parents=True, exist_ok=True)
    tensors = {key: torch.cat(chunks).contiguous() for key, chunks in parts.items()}
    save_file(tensors, str(out))
    return {"path": str(out), "samples": len(tensors["text"]), "skipped": decoded.skipped}


class _Decoded:
    """Decoded samples of ``records``; ``skipped`` counts the ones that failed to decode so far."""

    def __init__(self, records: Iterator[Any], decoder: SampleDecoder):
        self.records, self.decoder, self.skipped = records, decoder, 0

    def __iter__(self) -> Iterator[dict[str, torch.Tensor]]:
        for record in self.records:
            try:
                yield self.decoder(record)
            except SKIPPABLE_ERRORS:
                self.skipped += 1


def _batches(samples: Iterator[dict[str, torch.Tensor]], batch_size: int) -> Iterator[dict[str, torch.Tensor]]:
    """Stacked ``images`` / ``text`` of ``batch_size`` samples at a time (the last batch may be short)."""
    chunk = list(itertools.islice(samples, batch_size))
    while chunk:
        yield {key: torch.stack([s[key] for s in chunk]) for key in ("images", "text")}
        chunk = list(itertools.islice(samples, batch_size))
