"""Driver run in a subprocess by test_llava_unified_training.py: LLaVA's own train.py on the unified model.

``python unified_pipeline.py SPEC.json`` where SPEC has ``runs`` (``{"name", "argv"}``, each run through
``llava.train.train.train()`` exactly as ``python -m llava.train.train ARGV`` would), ``model_dir`` (the
output to re-open), ``caption``, ``question``, ``image`` and ``report`` (where the JSON report goes).

The Trainer logs only the total loss, so each run carries a callback (added to transformers' default
callbacks, LLaVA's code is untouched) that measures the text and image losses of the model on the whole
training set, collated by LLaVA's own dataset and collator, before the first step and after the last one
(same caption dropout draws both times), the names of the trainable parameters, and the image head's
largest gradient at every optimizer step. After training it re-opens ``model_dir`` with
``load_llava_model`` (LLaVA's ``load_pretrained_model``), draws an image and answers a question.
"""
from __future__ import annotations

import json
import random
import sys

import torch
from transformers import TrainerCallback

GENERATION_MODULES = ("image_head", "code_embed", "gen_fusion")


def dataset_losses(model, dataloader, bf16: bool) -> dict:
    """Text and image losses of ``model`` on every training sample in one batch (eval mode, fixed dropout draws)."""
    state = random.getstate()
    random.seed(0)
    dataset = dataloader.dataset
    batch = dataloader.collate_fn([dataset[i] for i in range(len(dataset))])
    random.setstate(state)
    model.eval()
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
        out = model(**batch)
    model.train()
    return {"text": out.text_loss.item(), "image": out.image_loss.item()}


class LossProbe(TrainerCallback):
    def __init__(self):
        self.record: dict = {}

    def on_train_begin(self, args, state, control, model=None, train_dataloader=None, **kwargs):
        self.loader = train_dataloader
        self.record = {"before": dataset_losses(model, train_dataloader, args.bf16), "head_grad": [],
                       "trainable": sorted(n for n, p in model.named_parameters() if p.requires_grad)}

    def on_pre_optimizer_step(self, args, state, control, model=None, **kwargs):
        grad = model.image_head.weight.grad
        self.record["head_grad"].append(0.0 if grad is None else grad.abs().max().item())

    def on_train_end(self, args, state, control, model=None, **kwargs):
        self.record["after"] = dataset_losses(model, self.loader, args.bf16)


def reopen_and_use(spec: dict) -> dict:
    """Draw an image from a caption and answer a question about an image with the saved model."""
    from llava.mm_utils import process_images
    from llava_pipeline import prompt_ids  # this script's folder is on sys.path
    from PIL import Image

    from toklip_plugin.integrations.llava import conversation_mode, load_llava_model
    from toklip_plugin.integrations.llava.image_generation import generate_image

    tokenizer, model, image_processor, _ = load_llava_model(spec["model_dir"], device="cpu")
    drawn = generate_image(model, tokenizer, [spec["caption"]], cfg_scale=2.0, top_k=50,
                           generator=torch.Generator().manual_seed(0))
    image = process_images([Image.open(spec["image"]).convert("RGB")], image_processor, model.config).to(model.dtype)
    answer = model.generate(prompt_ids(tokenizer, conversation_mode(model)), images=image, do_sample=False,
                            max_new_tokens=4, min_new_tokens=4, pad_token_id=tokenizer.pad_token_id, use_cache=True)
    toklip = model.vision_toklip()
    return {"model_class": type(model).__name__, "codes": drawn.codes.tolist(), "image_shape": list(drawn.images.shape),
            "decodes_like_the_tower": torch.allclose(drawn.images, toklip.decode_codes(drawn.codes)),
            "finite_image": bool(torch.isfinite(drawn.images).all()), "answer": answer[0].tolist(),
            "span_tokens": [model.config.image_start_token_id, model.config.image_end_token_id]}


def main(spec_path: str) -> None:
    import transformers.trainer
    from llava.train.train import train

    spec = json.loads(open(spec_path).read())
    probe = LossProbe()
    transformers.trainer.DEFAULT_CALLBACKS.append(probe)
    report = {"runs": {}}
    for run in spec["runs"]:
        sys.argv = ["llava/train/train.py", *run["argv"]]
        train()
        report["runs"][run["name"]] = probe.record
    report["reopened"] = reopen_and_use(spec)
    with open(spec["report"], "w") as f:
        json.dump(report, f)


if __name__ == "__main__":
    main(sys.argv[1])
