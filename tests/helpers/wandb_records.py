"""What W&B recorded for each offline run under a directory, read from W&B's own ``run-*.wandb`` files.

The reader (``DataStore`` and the ``Record`` protobuf) is wandb's internal one, stable across the 0.2x
releases; ``constraints/ci.txt`` pins the version the tests run with.
"""
from __future__ import annotations

import json
from pathlib import Path

from wandb.proto import wandb_internal_pb2
from wandb.sdk.internal.datastore import DataStore


def offline_runs(out: Path) -> list[dict]:
    """Each offline run under ``out/wandb``, oldest first: its folder name, run id, display name, project, config
    (without W&B's own ``_wandb`` key), the logged steps and each step's logged values (without W&B's ``_`` keys)."""
    runs = [_read_run(folder) for folder in (out / "wandb").glob("offline-run-*")]
    return sorted(runs, key=lambda run: run["start"])  # folder names have a one-second resolution


def _read_run(folder: Path) -> dict:
    store, found = DataStore(), {"folder": folder.name, "steps": [], "history": {}}
    store.open_for_scan(str(next(folder.glob("run-*.wandb"))))
    while (data := store.scan_data()) is not None:
        record = wandb_internal_pb2.Record()
        record.ParseFromString(data)
        kind = record.WhichOneof("record_type")
        if kind == "run":
            config = {item.key: json.loads(item.value_json) for item in record.run.config.update}
            config.pop("_wandb", None)
            found.update(id=record.run.run_id, name=record.run.display_name, project=record.run.project, config=config,
                         start=(record.run.start_time.seconds, record.run.start_time.nanos))
        elif kind == "history":
            items = {"/".join(item.nested_key) or item.key: json.loads(item.value_json) for item in record.history.item}
            step = int(items["_step"])
            found["steps"].append(step)
            found["history"][step] = {k: v for k, v in items.items() if not k.startswith("_")}
    return found
