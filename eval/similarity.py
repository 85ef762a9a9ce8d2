"""TokLIP vs SigLIP teacher cosine similarity and t-SNE (Section 3.3, Figure 3): ``toklip-eval similarity`` (options: --help; commands for the paper: eval/README.md)."""
import sys

from toklip_plugin.evaluation.cli import main

if __name__ == "__main__":
    sys.exit(main(["similarity", *sys.argv[1:]]))
