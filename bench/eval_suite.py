"""Run ``latentdiff eval`` on a model in a fresh process, time it, and check issue #9's criteria.

On the default model, which ships with its classifier/ and clip/ (2 CPU cores, nothing else running):

    .venv/bin/python bench/eval_suite.py --model latentdiff/assets/default_model --out docs/eval/quick

(A new classifier: `latentdiff train-classifier configs/classifier.yaml`, ~14 min, then --classifier
runs/classifier/final.)

The report (report.md, PNGs, results.json) goes to ``--out``; this script adds ``bench.json`` there and
prints: the wall time of the whole command (start-up and model load included; criterion: ≤ 900 s for the
quick suite), the share of images of the requested shape under classifier guidance for each scale
(criterion: the mean over shapes reaches ≥ 80% at some s, from the unguided rate at s = 0), and the
other headline numbers. Exit status 1 when a criterion fails. Extra arguments after ``--`` go to
``latentdiff eval`` unchanged (for example ``-- --classifier-scales 0 3 10 30 100``).
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

BUDGET_S = 15 * 60
TARGET_SHARE = 0.8


def run_eval(args, extra: list[str]) -> float:
    cmd = [sys.executable, "-m", "latentdiff.cli", "eval", "--suite", args.suite, "--out", args.out,
           "--device", args.device]
    for flag, value in (("--model", args.model), ("--classifier", args.classifier), ("--clip", args.clip),
                        ("--inception-weights", args.inception_weights)):
        if value:
            cmd += [flag, value]
    cmd += extra
    print("running:", " ".join(cmd), flush=True)
    t0 = time.perf_counter()
    done = subprocess.run(cmd, env={**os.environ, "HF_HUB_OFFLINE": "1"})
    if done.returncode != 0:
        raise SystemExit(f"latentdiff eval failed (exit status {done.returncode}); see its message above")
    return time.perf_counter() - t0


def classifier_summary(results: dict) -> dict:
    r = results["classifier"]
    by_scale = {s: [x["all"]["accuracy"] for x in r["results"] if x["scale"] == s] for s in r["scales"]}
    means = {s: sum(v) / len(v) for s, v in by_scale.items()}
    best = max(means, key=means.get)
    return {"mean_share_by_scale": means, "unguided": means.get(0.0), "best_scale": best, "best_share": means[best],
            "per_class_at_best": {x["class"]: x["all"]["accuracy"] for x in r["results"] if x["scale"] == best}}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default=None, help="model folder (default: the default model)")
    p.add_argument("--classifier", default=None)
    p.add_argument("--clip", default=None)
    p.add_argument("--inception-weights", default=None)
    p.add_argument("--suite", default="quick")
    p.add_argument("--device", default="auto")
    p.add_argument("--out", default="docs/eval/quick")
    argv = sys.argv[1:] if argv is None else argv
    extra = argv[argv.index("--") + 1:] if "--" in argv else []
    args = p.parse_args(argv[:argv.index("--")] if "--" in argv else argv)
    seconds = run_eval(args, extra)
    data = json.loads((Path(args.out) / "results.json").read_text())
    results = data["results"]
    summary = {"suite": args.suite, "wall_s": seconds, "budget_s": BUDGET_S, "within_budget": seconds <= BUDGET_S,
               "machine": data["meta"]["machine"], "nfe": results["_totals"]["nfe"],
               "sections_s": {k: v["seconds"] for k, v in results.items() if isinstance(v, dict) and "seconds" in v}}
    ok = args.suite != "quick" or summary["within_budget"]
    if "classifier" in results:
        cg = classifier_summary(results)
        summary["classifier_guidance"] = cg
        summary["classifier_target_met"] = cg["best_share"] >= TARGET_SHARE
        ok = ok and summary["classifier_target_met"]
        print(f"classifier guidance: unguided {cg['unguided']:.1%}, best s = {cg['best_scale']:g}: "
              f"{cg['best_share']:.1%} (target ≥ {TARGET_SHARE:.0%}); per class {cg['per_class_at_best']}")
    if "accuracy" in results:
        print(f"held-out accuracy (scorer match): {results['accuracy']['any_match']['accuracy']:.1%}")
    if "fd" in results:
        for key, s in results["fd"]["spaces"].items():
            print(f"FD {key}: generated vs real {s['generated_vs_real']:.4g}, real vs real {s['real_vs_real']:.4g}")
    print(f"wall time {seconds:.0f} s (budget {BUDGET_S} s); sections: "
          + ", ".join(f"{k} {v:.0f} s" for k, v in summary["sections_s"].items()))
    (Path(args.out) / "bench.json").write_text(json.dumps(summary, indent=1) + "\n")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
