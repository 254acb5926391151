"""A shapes-world training folder whose two-object captions all name the relation between the objects.

    python scripts/relation_captions.py data/shapes-train-v2 data/shapes-train-v2-rel

The shapes world's training captions name a two-object scene's relation half of the time ("a red circle left
of a blue square") and otherwise only join the objects ("a red circle and a blue square"): 17 % of the
30,000 captions of configs/default_v2.yaml's data carry a relation. This writes a second folder with the
same images (hard links, or copies across file systems) and the same metadata, except that every two-object
"A and B" caption becomes "A <relation> B", the relation read from the objects' boxes exactly as the
generator does (:func:`latentdiff.data.shapes.relation_between` of the box centres). One-object and
three-object captions are unchanged. Box phrases written before the article fix ("a orange square") get
their article ("an orange square", as captions and ../shared/design/shapes.md have it).
"""
from __future__ import annotations

import json
import os
import shutil
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from latentdiff.data.shapes import relation_between, with_article  # noqa: E402


def centre(box: list[int]) -> tuple[float, float]:
    x0, y0, x1, y1 = box
    return (x0 + x1) / 2, (y0 + y1) / 2


def fixed_article(phrase: str) -> str:
    """"a orange square" -> "an orange square"; any other phrase unchanged."""
    words = phrase.split(" ", 1)
    return with_article(words[1]) if len(words) == 2 and words[0] in ("a", "an") else phrase


def relation_caption(record: dict) -> str:
    """The record's caption, with a two-object "A and B" caption rewritten as "A <relation> B" (the
    record's box phrases must already have their articles right)."""
    text, boxes = record["text"], record.get("boxes") or []
    if len(boxes) != 2:
        return text
    for a, b in ((boxes[0], boxes[1]), (boxes[1], boxes[0])):  # two equal phrases: either order is true
        if text == f"{a['phrase']} and {b['phrase']}":
            return f"{a['phrase']} {relation_between(centre(a['box']), centre(b['box']))} {b['phrase']}"
    return text


def place(src: Path, dst: Path) -> None:
    try:
        os.link(src, dst)
    except OSError:
        shutil.copy2(src, dst)


def main(argv: list[str]) -> int:
    if len(argv) != 2:
        print(__doc__.strip().splitlines()[2].strip(), file=sys.stderr)
        return 2
    src, dst = Path(argv[0]), Path(argv[1])
    meta = src / "metadata.jsonl"
    if not meta.is_file():
        print(f"{meta}: not found (a training folder has metadata.jsonl)", file=sys.stderr)
        return 2
    if dst.exists():
        print(f"{dst}: exists already; remove it first", file=sys.stderr)
        return 2
    tmp = dst.with_name(dst.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    lines, changed = [], 0
    for line in meta.read_text().splitlines():
        record = json.loads(line)
        if record.get("boxes"):
            record["boxes"] = [{**b, "phrase": fixed_article(b["phrase"])} for b in record["boxes"]]
        text = relation_caption(record)
        changed += text != record["text"]
        for key in ("file_name", "segmap"):
            if record.get(key):
                place(src / record[key], tmp / record[key])
        lines.append(json.dumps({**record, "text": text}))
    (tmp / "metadata.jsonl").write_text("\n".join(lines) + "\n")
    os.replace(tmp, dst)
    print(f"{dst}: {len(lines)} records, {changed} two-object captions now name their relation")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
