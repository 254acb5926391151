"""Thin script for `python train.py CONFIG` and `accelerate launch ... train.py CONFIG`."""
import sys

from latentdiff.cli import main

if __name__ == "__main__":
    sys.exit(main(["train", *sys.argv[1:]]))
