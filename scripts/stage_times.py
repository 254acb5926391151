"""How long each stage of a training run took on this machine, from its logs, however often it was stopped.

    .venv/bin/python scripts/stage_times.py runs/default_v2 runs/default_v2_long runs/default_v2_rel

A run's ``times.json`` adds up wall time per process, so a run stopped and resumed across sessions (or one
whose start was discarded) counts its restarts, its compilations and the steps it did twice. This reads each
stage's ``log.jsonl`` instead (one line every ``log_every`` steps, with a wall-clock ``time``). ``logged`` is
the sum of the intervals between consecutive log lines that advance the step and lie less than ``--gap``
seconds apart (the time between a stop and the next start is not, nor a start's
loading and compilation before its first log line: the number of starts is reported). A stage's ``minutes``
are its steps at the median rate of those intervals: what one uninterrupted start would take, less its
start-up and validation, and unmoved by intervals that another job on the same cores slowed down. Prints one
row per stage; ``--json`` writes them.
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path

STAGES = ("vae", "clip", "unet", "inpaint", "classifier", "layout", "segmap")


def stage_time(log: Path, gap: float) -> dict:
    """Steps reached, training seconds, steps/s and starts of one stage's ``log.jsonl``."""
    rows = []
    for n, line in enumerate(log.read_text().splitlines(), 1):
        if line.strip():
            try:
                row = json.loads(line)
                rows.append((int(row["step"]), float(row["time"])))
            except (ValueError, KeyError, TypeError) as err:
                raise SystemExit(f"{log}:{n}: not a training log line ({err})") from None
    if not rows:
        return {"from_step": 0, "steps": 0, "seconds": 0.0, "logged_seconds": 0.0, "steps_per_s": None, "starts": 0}
    seconds, per_step, starts = 0.0, [], 1
    for (step_a, time_a), (step_b, time_b) in zip(rows, rows[1:]):
        if step_b > step_a and 0 <= time_b - time_a < gap:
            seconds += time_b - time_a
            per_step.append((time_b - time_a) / (step_b - step_a))
        else:  # a stop: the next line comes from a later start (perhaps from an earlier checkpoint)
            starts += 1
    diffs = [b - a for (a, _), (b, _) in zip(rows, rows[1:]) if b > a]
    every = max(set(diffs), key=diffs.count) if diffs else rows[0][0]  # the log interval (its most common step)
    first = rows[0][0] - every  # where the stage started: 0, or the step a warm restart began at
    steps = max(step for step, _ in rows) - first
    rate = 1 / statistics.median(per_step) if per_step else None
    # the stage's time uninterrupted: its steps at the median rate of its clean intervals, so that steps a
    # restart did twice, each start's unseen first interval and intervals slowed by another job sharing the
    # cores neither add nor go missing; validation is left out with them (it is a few intervals in a hundred)
    total = steps / rate if rate else 0.0
    return {"from_step": first, "steps": steps, "seconds": round(total, 1), "logged_seconds": round(seconds, 1),
            "steps_per_s": round(rate, 3) if rate else None, "starts": starts}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("runs", nargs="+", help="training run folders (runs/NAME)")
    ap.add_argument("--gap", type=float, default=600.0,
                    help="log lines further apart than this many seconds belong to different starts (default 600)")
    ap.add_argument("--json", default=None, help="also write the rows to this file")
    args = ap.parse_args(argv)
    rows = []
    for run in map(Path, args.runs):
        logs = [(s, run / s / "log.jsonl") for s in STAGES if (run / s / "log.jsonl").is_file()]
        if not logs:
            print(f"{run}: no stage logs (expected {run}/vae/log.jsonl, .../unet/log.jsonl, ...)", file=sys.stderr)
            return 2
        for stage, log in logs:
            rows.append({"run": str(run), "stage": stage, **stage_time(log, args.gap)})
    print(f"{'run':28} {'stage':10} {'from':>6} {'steps':>7} {'minutes':>8} {'logged':>8} {'steps/s':>8} {'starts':>6}")
    for r in rows:
        rate = f"{r['steps_per_s']:.3f}" if r["steps_per_s"] else "-"
        print(f"{r['run']:28} {r['stage']:10} {r['from_step']:>6} {r['steps']:>7} {r['seconds'] / 60:>8.1f} "
              f"{r['logged_seconds'] / 60:>8.1f} {rate:>8} {r['starts']:>6}")
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
