"""Zero-shot ImageNet classification (Table 2, IN Top1): ``toklip-eval zeroshot`` (options: --help; commands for the paper: eval/README.md)."""
import sys

from toklip_plugin.evaluation.cli import main

if __name__ == "__main__":
    sys.exit(main(["zeroshot", *sys.argv[1:]]))
