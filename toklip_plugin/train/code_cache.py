"""Tokenize a data set once, train the token encoder many epochs: the ``cache`` data file.

``toklip-train --config NAME --build-cache OUT.safetensors [overrides]`` reads the config's
training data (webdataset shards or a CSV/JSONL file) once, in file order, through the frozen
VQ, the text tokenizer and, when the loss distils, the frozen teacher, and writes ``codes``,
``text`` and ``teacher_pooled`` / ``teacher_tokens``. Training with ``data.kind=cache
data.train=OUT.safetensors`` then skips image decoding, the VQ encoder and the teacher. Samples
that fail to decode are skipped and counted, as in training.
"""
from __future__ import annotations

import itertools
from pathlib import Path
from typing import Any, Iterator

import torch
from safetensors.torch import save_file
from tqdm import tqdm

from ..factory import get_tokenizer
from ..transforms import image_transform
from .config import TrainConfig
from .data import SAMPLE_ERRORS, Decoder, source_records
from .loop import Trainer

__all__ = ["build_code_cache"]

# cache key <- Trainer.image_targets key
_TARGET_KEYS = {"codes": "codes", "teacher_pooled": "teacher_emb", "teacher_tokens": "teacher_tokens"}


def build_code_cache(config: TrainConfig, out: str | Path, batch_size: int = 64) -> dict[str, Any]:
    """Write the code cache of ``config``'s training data to ``out``; ``{"path", "samples", "skipped"}``."""
    trainer = Trainer(config)
    model = trainer.model
    decoder = Decoder(config.data, image_transform(model.image_size), get_tokenizer(model.config))
    parts: dict[str, list[torch.Tensor]] = {"text": []}
    decoded, bar = _Decoded(source_records(config.data), decoder), tqdm(desc="code cache", unit="img",
                                                                         dynamic_ncols=True)
    for batch in _batches(iter(decoded), batch_size):
        targets = trainer.image_targets({"images": batch["images"].to(trainer.env.device)})
        for key, name in _TARGET_KEYS.items():
            if targets[name] is not None:
                parts.setdefault(key, []).append(targets[name].cpu())
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

    def __init__(self, records: Iterator[Any], decoder: Decoder):
        self.records, self.decoder, self.skipped = records, decoder, 0

    def __iter__(self) -> Iterator[dict[str, torch.Tensor]]:
        for record in self.records:
            try:
                yield self.decoder(record)
            except SAMPLE_ERRORS:
                self.skipped += 1


def _batches(samples: Iterator[dict[str, torch.Tensor]], batch_size: int) -> Iterator[dict[str, torch.Tensor]]:
    """Stacked ``images`` / ``text`` of ``batch_size`` samples at a time (the last batch may be short)."""
    chunk = list(itertools.islice(samples, batch_size))
    while chunk:
        yield {key: torch.stack([s[key] for s in chunk]) for key in ("images", "text")}
        chunk = list(itertools.islice(samples, batch_size))
