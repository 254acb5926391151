"""``latentdiff data``: make data sets. ``latentdiff data shapes`` writes the shapes world to an image folder."""
from __future__ import annotations

import argparse
import os
import re
import sys
from pathlib import Path

from latentdiff.errors import UserError

DEFAULT_NUM, ONLY_STAR_NUM = 10000, 200


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    """Register ``data`` and its ``shapes`` subcommand."""
    data = subparsers.add_parser("data", help="make data sets", description="Make data sets.")
    sub = data.add_subparsers(dest="data_command", metavar="SUBCOMMAND")
    sub.required = True
    shapes = sub.add_parser(
        "shapes",
        help="write the built-in shapes world to an image folder",
        description="Write seeded shapes-world scenes to an image folder: NNNNNN.png, NNNNNN_seg.png and "
        "metadata.jsonl (captions, boxes, segmaps). By default no star appears anywhere.",
    )
    shapes.add_argument("--out", default="data/shapes", help="output folder (default: data/shapes)")
    shapes.add_argument("--num", type=int, default=None,
                        help="number of images (default: 10000; 200 with --only-star, a fine-tuning set)")
    shapes.add_argument("--seed", type=int, default=0, help="random seed, >= 0 (default: 0)")
    shapes.add_argument("--objects", default="1-3", help="objects per image: '1', '2', '1-3', ... (default: 1-3)")
    star = shapes.add_mutually_exclusive_group()
    star.add_argument("--with-star", action="store_true", help="add the star as a fourth shape")
    star.add_argument("--only-star", action="store_true", help="every object is a star (fine-tuning set)")
    shapes.add_argument(
        "--exclude-held-out", action="store_true",
        help="leave out the held-out combinations (see docs/shapes.md) so generalisation can be measured",
    )
    shapes.add_argument("--workers", type=int, default=min(2, os.cpu_count() or 1), help="worker processes")
    shapes.add_argument("--overwrite", action="store_true", help="replace a data set already in --out")
    shapes.set_defaults(handler=run_shapes)


def parse_objects(text: str) -> tuple[int, int]:
    """'2' -> (2, 2); '1-3' -> (1, 3). Counts must lie in 1..3."""
    m = re.fullmatch(r"\s*([1-3])\s*(?:-\s*([1-3])\s*)?", text)
    if m is None or (m.group(2) and int(m.group(2)) < int(m.group(1))):
        raise UserError(f"--objects {text!r}: expected a count or range within 1-3, e.g. '1', '2' or '1-3'")
    lo = int(m.group(1))
    return lo, int(m.group(2) or lo)


def run_shapes(args: argparse.Namespace) -> int:
    """Handler of ``latentdiff data shapes``."""
    from tqdm import tqdm

    from latentdiff.data.shapes import write_dataset

    objects = parse_objects(args.objects)
    if args.num is None:
        args.num = ONLY_STAR_NUM if args.only_star else DEFAULT_NUM
    if args.num < 1:
        raise UserError(f"--num {args.num}: must be at least 1")
    if args.seed < 0:
        raise UserError(f"--seed {args.seed}: must be >= 0")
    out = Path(args.out)
    if out.exists() and not out.is_dir():
        raise UserError(f"--out {out}: exists and is not a folder")
    if (out / "metadata.jsonl").exists() and not args.overwrite:
        raise UserError(f"--out {out}: already holds a data set (metadata.jsonl); pass --overwrite to replace it")
    star = "with" if args.with_star else "only" if args.only_star else "none"
    with tqdm(total=args.num, desc="shapes", unit="img", file=sys.stderr, mininterval=0.5) as bar:
        write_dataset(out, args.num, args.seed, objects, star, args.exclude_held_out, args.workers, bar.update)
    print(f"wrote {args.num} images to {out}")
    return 0
