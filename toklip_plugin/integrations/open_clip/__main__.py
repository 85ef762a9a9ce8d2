"""``python -m toklip_plugin.integrations.open_clip [DIR]``: regenerate the open_clip model configs
(``configs/open_clip/*.json`` by default) from the TokLIP configs, after a change in ``configs/models/``."""
import sys
from pathlib import Path

from .registry import model_config_dir, write_model_configs

for written in write_model_configs(Path(sys.argv[1]) if len(sys.argv) > 1 else model_config_dir()):
    print(f"wrote {written}")
