"""COCO 5K / Flickr30K 1K image-text retrieval (Table 2, TR@1 / IR@1): ``toklip-eval retrieval`` (options: --help; commands for the paper: eval/README.md)."""
import sys

from toklip_plugin.evaluation.cli import main

if __name__ == "__main__":
    sys.exit(main(["retrieval", *sys.argv[1:]]))
