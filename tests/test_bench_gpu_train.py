"""bench/gpu_train.py runs here in its --tiny mode, so the GPU run of issue #10 starts from a tested script."""
import json

from conftest import load_script


def _bench():
    return load_script("bench/gpu_train.py")


def test_tiny_run_times_both_loops_on_both_unets(tmp_path):
    bench = _bench()
    out = tmp_path / "train.json"
    assert bench.main(["--tiny", "--variants", "plain,latentdiff", "--out", str(out)]) == 0
    rows = json.loads(out.read_text())["rows"]
    assert [(r["case"].split()[0], r["loop"]) for r in rows] == [
        ("default", "plain"), ("default", "latentdiff"), ("SD", "plain"), ("SD", "latentdiff")]
    for r in rows:
        assert r["steps_per_s"] > 0 and r["samples_per_s"] == r["steps_per_s"] * r["batch"]
        assert r["speedup_vs_plain"] > 0
    assert [r["speedup_vs_plain"] for r in rows if r["loop"] == "plain"] == [1.0, 1.0]
    assert all(r["warmup_s"] > 0 for r in rows if r["loop"] == "latentdiff")


def test_budget_skips_cases_instead_of_overrunning():
    rows = _bench().measure(tiny=True, budget_s=0.0, variants=("plain",))
    assert len(rows) == 2 and all("skipped" in r for r in rows)
