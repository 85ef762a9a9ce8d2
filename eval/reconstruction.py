"""TokLIP vs plain VQ reconstructions: identity check, PSNR / SSIM / rFID: ``toklip-eval reconstruction`` (options: --help; commands for the paper: eval/README.md)."""
import sys

from toklip_plugin.evaluation.cli import main

if __name__ == "__main__":
    sys.exit(main(["reconstruction", *sys.argv[1:]]))
