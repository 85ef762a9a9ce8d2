"""Regenerate the tiny offline POPE-style task ``toklip_pope_mini`` (images + test.jsonl).

Each image is one coloured shape on white; each question asks whether an object is present,
half of them truthfully (POPE's balanced yes/no). Deterministic: running it again rewrites the
same bytes.

    python eval/lmms_tasks/make_toklip_pope_mini.py
"""
from __future__ import annotations

import json
from pathlib import Path

from PIL import Image, ImageDraw

TASK_DIR = Path(__file__).resolve().parent / "toklip_pope_mini"
COLORS = {"red": (220, 30, 30), "green": (30, 160, 60), "blue": (30, 60, 220), "yellow": (230, 200, 20)}
SHAPES = ("circle", "square")
SIZE = 64


def draw(color: str, shape: str) -> Image.Image:
    image = Image.new("RGB", (SIZE, SIZE), "white")
    box = (12, 12, SIZE - 12, SIZE - 12)
    pen = ImageDraw.Draw(image)
    (pen.ellipse if shape == "circle" else pen.rectangle)(box, fill=COLORS[color])
    return image


def rows() -> list[tuple[str, str, str, str]]:
    """(color, shape, asked object, answer) per image: even images asked truthfully, odd ones about another colour."""
    names = list(COLORS)
    out = []
    for i, (color, shape) in enumerate((c, s) for s in SHAPES for c in names):
        asked = color if i % 2 == 0 else names[(names.index(color) + 1) % len(names)]
        out.append((color, shape, f"{asked} {shape}", "yes" if asked == color else "no"))
    return out


def main() -> None:
    (TASK_DIR / "images").mkdir(parents=True, exist_ok=True)
    lines = []
    for i, (color, shape, asked, answer) in enumerate(rows()):
        draw(color, shape).save(TASK_DIR / "images" / f"{i}.png", optimize=True)
        lines.append(json.dumps({"question_id": i, "image": f"images/{i}.png",
                                 "question": f"Is there a {asked} in the image?", "answer": answer}))
    (TASK_DIR / "test.jsonl").write_text("\n".join(lines) + "\n")
    print(f"wrote {len(lines)} questions to {TASK_DIR}")


if __name__ == "__main__":
    main()
