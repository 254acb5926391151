"""bench/gpu_sd15.py --tiny: the GPU benchmark's code run on the CPU with tiny SD-like models, so that the
script is known to work before any GPU time is spent (the CUDA-only levels are skipped with a reason)."""
import json
import sys

import pytest
import torch
from conftest import load_script


@pytest.fixture(scope="module")
def bench():
    module = load_script("bench/gpu_sd15.py", register=True)  # its dataclass looks its module up
    yield module
    sys.modules.pop("gpu_sd15", None)


@pytest.fixture(scope="module")
def result(bench, tmp_path_factory):
    out = tmp_path_factory.mktemp("bench") / "tiny.json"
    returned = bench.main(["--tiny", "--out", str(out)])
    saved = json.loads(out.read_text())
    assert saved["sections"].keys() == returned["sections"].keys()
    return saved


def test_every_section_ran_without_errors(result, bench):
    assert list(result["sections"]) == list(bench.SECTIONS) == ["peak", "generate", "unet", "train", "cache"]
    assert result["sections"]["cache"][0]["skipped"] == "latentdiff was not compiled"  # --tiny leaves compile out
    for name, rows in result["sections"].items():
        assert rows and not [r for r in rows if "error" in r], name
    assert "tiny" in result["meta"]["mode"] and result["meta"]["device"] == "cpu"
    assert result["meta"]["parameters"]["unet"] > 0 and result["total_s"] > 0


def test_peak_is_a_positive_rate(result):
    (row,) = result["sections"]["peak"]
    assert row["tflops"] > 0 and row["ms"] > 0


def test_generate_rows_time_the_same_images(result, bench):
    rows = result["sections"]["generate"]
    stock = {r["batch"]: r for r in rows if r["pipeline"] == "stock" and r["level"] == "diffusers"}
    assert set(stock) == {1, 4}
    for r in stock.values():
        assert r["s_per_image"] > 0 and r["first_s"] > 0 and r["pixel_std"] > 1
    plain = {r["batch"]: r for r in rows if r.get("level") == "plain"}
    assert set(plain) == {1, 4}
    for n, r in plain.items():
        assert r["max_px_diff"] <= 2  # the same weights, latents and scheduler: the same images
        assert r["speedup_vs_stock"] == pytest.approx(stock[n]["s_per_image"] / r["s_per_image"])
    measured = [r["level"] for r in rows if r["pipeline"] == "latentdiff" and "s_per_image" in r]
    assert measured[:2] == ["plain", "plain"] and {"+channels_last", "+fuse_qkv"} <= set(measured)
    skipped = {r["level"]: r["skipped"] for r in rows if "skipped" in r}
    assert skipped["+cuda_graph"] == "needs a CUDA device" and "+compile" not in [r.get("level") for r in rows]
    for r in rows:
        if "max_px_diff" in r:
            assert r["max_px_diff"] <= 2, r["level"]  # every float32 level draws the stock images
    assert result["checks"]["batch1_speedup_vs_stock"] > 0 and result["checks"]["batch1_target"] == 3.0


def test_unet_flops_are_counted_per_sample(result):
    rows = result["sections"]["unet"]
    assert {(r["runner"], r["batch"]) for r in rows} == {(w, n) for w in ("stock eager", "latentdiff") for n in (2, 8)}
    flops = {r["gflop_per_sample"] for r in rows}
    assert len({round(f, 6) for f in flops}) == 1 and flops.pop() > 0  # FLOPs per sample do not depend on batch
    for r in rows:
        assert r["ms"] > 0 and r["tflops"] > 0 and 0 < r["pct_of_peak"]


def test_budget_and_added_sections(bench, tmp_path, monkeypatch):
    """A section registered in SECTIONS runs like the others; once the budget is spent, the rest are
    skipped and the JSON still says so."""
    monkeypatch.setitem(bench.SECTIONS, "extra", lambda b: [{"what": "added", "left_s": b.left()}])
    out = tmp_path / "r.json"
    result = bench.main(["--tiny", "--out", str(out), "--sections", "extra,peak", "--budget-s", "60"])
    assert result["sections"]["extra"][0]["what"] == "added" and result["sections"]["peak"][0]["tflops"] > 0
    spent = bench.main(["--tiny", "--out", str(out), "--sections", "peak", "--budget-s", "0"])
    assert spent["sections"]["peak"] == [{"skipped": "budget spent"}]
    assert json.loads(out.read_text())["sections"]["peak"] == [{"skipped": "budget spent"}]
    with pytest.raises(SystemExit):
        bench.main(["--tiny", "--sections", "nope"])


def test_flop_count_of_the_sd15_unet_is_the_published_one(bench):
    """The counting the unet section uses gives SD 1.5's 803 GFLOP per sample at 512² (64² latents, 77
    tokens), the issue's reference figure; counted on the meta device, so no memory and no time."""
    from diffusers import UNet2DConditionModel

    from latentdiff.interop import sd_config_dir

    cfg = UNet2DConditionModel.load_config(str(sd_config_dir("sd1")), subfolder="unet")
    with torch.device("meta"):
        unet = UNet2DConditionModel.from_config(cfg).half()
        x, ctx = torch.randn(2, 4, 64, 64, dtype=torch.half), torch.randn(2, 77, 768, dtype=torch.half)
        t = torch.full((2,), 500)
    assert bench.count_flops(unet, x, t, ctx) / 2 == pytest.approx(803.27e9, rel=1e-3)


@pytest.mark.slow
def test_compiled_level_and_warm_cache_on_the_cpu(bench, tmp_path):
    """The compile level and the cache section, run on the CPU (minutes here with a cold inductor cache):
    compilation shows in the first call and the compiled pipeline draws stock's images. (Whether the
    warm-cache call is cheaper depends on what earlier runs left in the on-disk cache, so it is not asserted.)"""
    result = bench.main(["--tiny", "--out", str(tmp_path / "c.json"), "--sections", "generate,unet,cache",
                         "--levels", "plain,+compile"])
    rows = result["sections"]["generate"] + result["sections"]["cache"]
    assert not [r for r in rows if "error" in r]
    compiled = [r for r in rows if r.get("level") == "+compile"]
    assert {r["batch"] for r in compiled} == {1, 4}
    for r in compiled:
        assert r["options"]["compile"] == "default" and r["max_px_diff"] <= 2 and r["first_s"] > r["s_per_call"]
    for r in result["sections"]["unet"]:  # the shapes generation compiled for: no recompilation (seconds)
        assert r["first_ms"] < 5 * r["ms"] + 100, r
    (warm,) = result["sections"]["cache"]
    assert warm["first_s"] > 0 and warm["max_px_diff"] <= 2


def test_a_failing_level_is_reported_and_the_next_goes_on_from_the_last_good_one(bench, tmp_path, monkeypatch):
    levels = [("plain", {}, ()), ("+fuse_qkv", dict(attention="sdpa", fuse_qkv=True), ()),
              ("broken", dict(attention="eager"), ()),  # fused q/k/v need SDPA: optimize refuses
              ("+channels_last", dict(channels_last=True), ())]
    monkeypatch.setattr(bench, "LEVELS", levels)
    result = bench.main(["--tiny", "--out", str(tmp_path / "r.json"), "--sections", "generate"])
    rows = {r["level"]: r for r in result["sections"]["generate"] if r["pipeline"] == "latentdiff"}
    assert "fuse_qkv needs SDPA" in rows["broken"]["error"]
    after = rows["+channels_last"]
    assert after["options"] == {"dtype": "fp32", "attention": "sdpa", "fuse_qkv": True, "channels_last": True}
    assert "error" not in after
    assert after["max_px_diff"] <= 2 and after["batch"] == 4  # the last level also draws the large batch


def test_train_section_times_both_loops(result):
    rows = result["sections"]["train"]
    assert {(r["case"].split()[0], r["loop"]) for r in rows} == {
        (c, v) for c in ("default", "SD") for v in ("plain", "latentdiff")}
    assert all(r["samples_per_s"] > 0 for r in rows)
    assert result["checks"]["train_default_unet_best_steps_per_s"] > 0
    assert result["checks"]["train_sd15_speedup_vs_plain"] > 0
