"""Driver run in a subprocess by test_llava_training.py: LLaVA's own code end to end.

``python llava_pipeline.py SPEC.json`` where SPEC has ``train`` (a list of argument lists, each
run through ``llava.train.train.train()`` exactly as ``python -m llava.train.train ARGS``
would), ``model_dir`` (the output to re-open), ``conv_mode``, ``image`` and ``other_image``
(paths), and ``report`` (where the JSON report goes). After training it re-opens the model
twice, with LLaVA's ``load_pretrained_model`` (fp16, as LLaVA's scripts get it) and with our
``load_llava_model`` (float32 on CPU), and records what the tests check.
"""
from __future__ import annotations

import json
import sys

import torch
from PIL import Image


def prompt_ids(tokenizer, conv_mode: str) -> torch.Tensor:
    from llava.constants import DEFAULT_IMAGE_TOKEN, IMAGE_TOKEN_INDEX
    from llava.conversation import conv_templates
    from llava.mm_utils import tokenizer_image_token

    conv = conv_templates[conv_mode].copy()
    conv.append_message(conv.roles[0], DEFAULT_IMAGE_TOKEN + "\nWhat is in the image?")
    conv.append_message(conv.roles[1], None)
    return tokenizer_image_token(conv.get_prompt(), tokenizer, IMAGE_TOKEN_INDEX, return_tensors="pt")[None]


def pixel_values(paths: list[str], image_processor, model) -> torch.Tensor:
    from llava.mm_utils import process_images

    images = [Image.open(p).convert("RGB") for p in paths]
    return process_images(images, image_processor, model.config).to(model.dtype)


def probe(tokenizer, model, image_processor, spec: dict) -> dict:
    """Greedy generation with an image, and how much the logits depend on the image."""
    ids = prompt_ids(tokenizer, spec["conv_mode"])
    images = pixel_values([spec["image"], spec["other_image"]], image_processor, model)
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    generated = model.generate(ids, images=images[:1], do_sample=False, max_new_tokens=4, min_new_tokens=4,
                               pad_token_id=pad, use_cache=True)
    with torch.no_grad():
        logits = [model(input_ids=ids, images=images[i:i + 1]).logits.float() for i in range(2)]
    return {
        "model_class": type(model).__name__,
        "model_dtype": str(model.dtype),
        "tower_dtype": str(model.get_vision_tower().dtype),
        "generated": generated[0].tolist(),
        "image_effect": (logits[0] - logits[1]).abs().max().item(),
    }


def main(spec_path: str) -> None:
    spec = json.loads(open(spec_path).read())
    from llava.mm_utils import get_model_name_from_path
    from llava.model.builder import load_pretrained_model
    from llava.train.train import train

    for argv in spec["train"]:
        sys.argv = ["llava/train/train.py", *argv]
        train()

    from toklip_plugin.integrations.llava import load_llava_model

    path = spec["model_dir"]
    report = {
        "llava_loader": probe(*load_pretrained_model(path, None, get_model_name_from_path(path), device="cpu")[:3],
                              spec),
        "toklip_loader": probe(*load_llava_model(path, device="cpu")[:3], spec),
    }
    with open(spec["report"], "w") as f:
        json.dump(report, f)


if __name__ == "__main__":
    main(sys.argv[1])
