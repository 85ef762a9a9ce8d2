"""Document hooks of the ``toklip_pope_mini`` lmms-eval task (POPE's scoring, yes/no answers)."""
from __future__ import annotations

import os

from PIL import Image

TASK_DIR = os.path.dirname(os.path.abspath(__file__))


def doc_to_visual(doc: dict) -> list:
    with Image.open(os.path.join(TASK_DIR, doc["image"])) as image:
        return [image.convert("RGB")]


def doc_to_text(doc: dict, lmms_eval_specific_kwargs: dict | None = None) -> str:
    kwargs = lmms_eval_specific_kwargs or {}
    return f"{kwargs.get('pre_prompt', '')}{doc['question']}{kwargs.get('post_prompt', '')}"


def to_yes_no(text: str) -> str:
    """POPE's reduction: an answer counts as 'no' when it says no / not, else 'yes'."""
    words = text.strip().lower().replace(".", " ").replace(",", " ").split()
    return "no" if any(w in ("no", "not") for w in words) else "yes"


def process_results(doc: dict, results: list) -> dict:
    prediction = to_yes_no(results[0])
    return {"accuracy": float(prediction == doc["answer"]), "yes_ratio": float(prediction == "yes")}
