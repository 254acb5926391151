"""Thin script for `python inference.py "PROMPT" ...` (the same as `latentdiff generate`)."""
import sys

from latentdiff.cli import main

if __name__ == "__main__":
    sys.exit(main(["generate", *sys.argv[1:]]))
