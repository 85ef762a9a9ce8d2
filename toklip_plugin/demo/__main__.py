"""``python -m toklip_plugin.demo`` is ``toklip-demo``."""
from .run import main

main()
