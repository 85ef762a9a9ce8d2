"""Results as a JSON file and a markdown table (the paper's tables are rows of these)."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Mapping

__all__ = ["markdown_table", "write_results"]


def _cell(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4f}"
    return str(value)


def markdown_table(results: Mapping[str, Any]) -> str:
    """One row of scalar results (lists and dicts are left to the JSON file)."""
    scalars = {k: v for k, v in results.items() if isinstance(v, (str, int, float, bool))}
    header = "| " + " | ".join(scalars) + " |"
    rule = "|" + "|".join("---" for _ in scalars) + "|"
    row = "| " + " | ".join(_cell(v) for v in scalars.values()) + " |"
    return "\n".join([header, rule, row]) + "\n"


def write_results(results: Mapping[str, Any], output_dir: str | Path, name: str) -> tuple[Path, Path]:
    """Write ``NAME.json`` and ``NAME.md`` under ``output_dir``; return their paths."""
    out = Path(output_dir)
    out.mkdir(parents=True, exist_ok=True)
    json_path, md_path = out / f"{name}.json", out / f"{name}.md"
    json_path.write_text(json.dumps(results, indent=2, default=str) + "\n")
    md_path.write_text(markdown_table(results))
    return json_path, md_path
