"""Fuzzing the record parser of `latentdiff replay` (issue #31): a PNG's record is input anyone can craft.

1. The parser alone (`Record.from_json` with the CLI's limits), thousands of seeded cases: every field set to
   boundary values of every JSON type, missing fields, random nested junk in one to four fields, the known
   `extra` sections (layout, segmap, classifier guidance, speed, checkpoints) broken inside, and the JSON text
   itself cut, spliced, nested thousands deep or given 5000-digit numbers. Each case ends in either a record
   whose every field has the type and range replay relies on (checked here independently of the parser), or
   a one-line `UserError` naming the source; in bounded time and memory (tracemalloc).
2. The whole `latentdiff replay` command on a sample of those records (the tiny model; the sampler loop is
   replaced by a probe): each is a one-line error with exit status 2, or reaches sampling with a batch, a size
   and a latent within the limits; never a traceback; bounded time and resident memory.
"""
import dataclasses
import json
import math
import random
import resource
import time
import tracemalloc

import pytest
from PIL.PngImagePlugin import PngInfo

from latentdiff.cli import main
from latentdiff.errors import UserError
from latentdiff.limits import Limits
from latentdiff.provenance import Record

LIMITS = Limits()  # the CLI's defaults, as replay uses them
SAMPLERS = ("ddpm", "ddim", "dpm++", "euler")
FIELDS = [f.name for f in dataclasses.fields(Record)]
BOUNDARY = [
    None, True, False, 0, 1, -1, 2, 3, 4, 7, 8, 31, 32, 33, 127, 128, 129, 999, 1000, 1001, 2047, 2048, 2049, 4096,
    10**6, 2**31 - 1, 2**31, 2**53 + 1, 2**63 - 2, 2**63 - 1, 2**63, 2**64, -2**63, -2**64, 10**100,
    0.0, -0.0, 0.5, 1.5, 32.0, 1e308, -1e308, 5e-324, math.nan, math.inf, -math.inf,
    "", " ", "0", "25", "32", "ddim", "dpm++", "cpu", "cuda", "cuda:99999999999999999999", "a\x00b", "\ud800",
    "\udcff", "x" * 20_000, "é✓𝄞" * 100, "../../etc/passwd", "a\nb",
    [], [1], ["a"], [None], ["a", "b"], [[[]]], {}, {"a": 1}, {"path": "x", "scale": 1, "sha256": "y"},
]
SECTIONS = {  # valid `extra` sections, to be broken one key at a time
    "layout": {"boxes": [{"phrase": "a red circle", "box": [0.1, 0.1, 0.5, 0.5]}], "scale": 3.0,
               "region_phrases": True, "regional_text": 0.5},
    "segmap": {"sha256": "0" * 64, "classes": [0, 1], "scale": 1.0},
    "classifier_guidance": {"class": "circle", "scale": 5.0, "classifier_path": "/nowhere/classifier"},
    "speed": {"dtype": "bf16", "attention": "eager", "threads": 2},
    "spatial_checkpoints": {"layout": "/nowhere/layout", "segmap": "/nowhere/controlnet"},
    "inpaint": {"mode": "blend"},
}


def rand_str(rng: random.Random, most: int = 40) -> str:
    spans = [(0x20, 0x7E), (0x00, 0x1F), (0x7F, 0x9F), (0xA0, 0x2FFF), (0xD800, 0xDFFF), (0xE000, 0xFFFF),
             (0x10000, 0x10FFFF)]
    out = []
    for _ in range(rng.randrange(most)):
        lo, hi = spans[rng.randrange(len(spans))] if rng.random() < 0.3 else spans[0]
        out.append(chr(rng.randint(lo, hi)))
    return "".join(out)


def junk(rng: random.Random, depth: int = 0):
    """A random JSON value: any type, boundary numbers, hostile strings, nested lists and objects."""
    kind = rng.randrange(9 if depth < 3 else 6)
    if kind == 0:
        return BOUNDARY[rng.randrange(len(BOUNDARY))]
    if kind == 1:
        return rng.choice([-1, 1]) * int(2 ** rng.uniform(0, 70))
    if kind == 2:
        return rng.choice([math.nan, math.inf, -math.inf, rng.gauss(0, 1) * 10 ** rng.randint(-5, 300)])
    if kind == 3:
        return rand_str(rng)
    if kind == 4:
        return rng.choice([None, True, False])
    if kind == 5:
        return rng.choice(SAMPLERS)
    if kind in (6, 7):
        return [junk(rng, depth + 1) for _ in range(rng.randrange(5))]
    return {rand_str(rng, 8): junk(rng, depth + 1) for _ in range(rng.randrange(4))}


def base_record() -> dict:
    """A valid record as the tiny model writes it (the fields' types and ranges)."""
    return {"prompt": "a red circle", "negative_prompt": "", "seed": 3, "sampler": "ddim", "steps": 2,
            "guidance": 4.0, "height": 32, "width": 32, "model_name": "tiny_model", "model_path": "/nowhere/tiny",
            "model_sha256": "0" * 64, "device": "cpu", "dtype": "float32", "latentdiff_version": "0.1.0",
            "batch_seed": 3, "batch_size": 1, "batch_index": 0, "batch_prompts": None,
            "batch_negative_prompts": None, "loras": None, "record_version": 1, "extra": {}}


def cases(seed: int = 31, random_cases: int = 1500):
    """(name, record text) pairs: boundary values per field, missing fields, broken extra sections, random
    multi-field junk, and damaged JSON text."""
    rng = random.Random(seed)
    base = base_record()
    for field in FIELDS:
        for value in BOUNDARY:
            yield f"{field}={value!r:.40}", json.dumps({**base, field: value})
        yield f"without {field}", json.dumps({k: v for k, v in base.items() if k != field})
    for name, section in SECTIONS.items():
        yield f"extra.{name} valid", json.dumps({**base, "extra": {name: section}})
        for key in section:
            for value in BOUNDARY[::3]:
                broken = {**section, key: value}
                yield f"extra.{name}.{key}={value!r:.30}", json.dumps({**base, "extra": {name: broken}})
        for value in BOUNDARY[::4]:
            yield f"extra.{name}={value!r:.30}", json.dumps({**base, "extra": {name: value}})
    boxes = SECTIONS["layout"]["boxes"]
    for box in ([0.5, 0.5, 0.1, 0.1], [0, 0, 1, 2], [math.nan] * 4, [0, 0, 1], ["0", 0, 1, 1]):
        yield f"layout box {box}", json.dumps({**base, "extra": {"layout": {**SECTIONS["layout"], "boxes": [
            {**boxes[0], "box": box}]}}})
    yield "100 layout boxes", json.dumps({**base, "extra": {"layout": {**SECTIONS["layout"], "boxes": boxes * 100}}})
    for _ in range(random_cases):
        record = dict(base)
        for field in rng.sample(FIELDS, rng.randint(1, 4)):
            record[field] = junk(rng)
        yield "random", json.dumps(record)
    text = json.dumps(base)
    for _ in range(200):
        i, j = sorted(rng.randrange(len(text) + 1) for _ in range(2))
        yield "cut", text[:i] + text[j:]
        yield "spliced", text[:i] + json.dumps(junk(rng)) + text[i:]
    for top in ("[]", "null", "1", '"x"', "[" * 100_000, '{"a":' * 50_000, "1" * 5000, "NaN", ""):
        yield f"top-level {top[:12]}", top
    yield "5000-digit seed", text.replace('"seed": 3', '"seed": ' + "9" * 5000)
    yield "a 2 MB record", json.dumps({**base, "prompt": "x" * 2_000_000})
    yield "duplicate keys", text[:-1] + ', "steps": 100000000}'


def assert_sane(r: Record, limits: Limits) -> None:
    """What replay relies on, checked independently of the parser."""
    def whole(v, lo, hi):
        return type(v) is int and lo <= v <= hi

    def text(v, most):
        return isinstance(v, str) and len(v) <= most and not any(
            ord(c) < 32 and c not in "\t\n\r" or 0x7F <= ord(c) <= 0x9F or 0xD800 <= ord(c) <= 0xDFFF for c in v)
    assert text(r.prompt, limits.max_prompt_chars) and text(r.negative_prompt, limits.max_prompt_chars)
    assert r.sampler in SAMPLERS
    assert whole(r.steps, 1, limits.max_steps)
    assert whole(r.height, 1, limits.max_side) and whole(r.width, 1, limits.max_side)
    assert type(r.guidance) in (int, float) and math.isfinite(r.guidance)
    assert whole(r.batch_size, 1, limits.max_images) and whole(r.batch_index, 0, r.batch_size - 1)
    assert whole(r.batch_seed, 0, 2**63 - r.batch_size) and r.seed == r.batch_seed + r.batch_index
    for texts in (r.batch_prompts, r.batch_negative_prompts):
        assert texts is None or (isinstance(texts, list) and len(texts) == r.batch_size and
                                 all(text(t, limits.max_prompt_chars) for t in texts))
    for name in ("model_name", "model_sha256", "device", "dtype", "latentdiff_version"):
        assert text(getattr(r, name), 1000)
    assert r.model_path is None or (text(r.model_path, 4096) and r.model_path)
    assert r.loras is None or (isinstance(r.loras, list) and all(
        isinstance(e, dict) and text(e["path"], 4096) and e["path"] and text(e["sha256"], 1000)
        and type(e["scale"]) in (int, float) and math.isfinite(e["scale"]) for e in r.loras))
    assert whole(r.record_version, 1, 1) and isinstance(r.extra, dict)
    layout = r.extra.get("layout")
    if layout is not None:
        assert isinstance(layout["boxes"], list) and 1 <= len(layout["boxes"]) <= 64
        for b in layout["boxes"]:
            x0, y0, x1, y1 = b["box"]
            assert text(b["phrase"], limits.max_prompt_chars) and 0 <= x0 < x1 <= 1 and 0 <= y0 < y1 <= 1
        assert math.isfinite(layout["scale"]) and isinstance(layout.get("region_phrases", False), bool)
        assert 0 <= layout.get("regional_text", 0.0) <= 1
    if "segmap" in r.extra:
        assert isinstance(r.extra["segmap"]["sha256"], str) and math.isfinite(r.extra["segmap"]["scale"])
    if "classifier_guidance" in r.extra:
        cg = r.extra["classifier_guidance"]
        assert isinstance(cg["class"], str) and math.isfinite(cg.get("scale", 5.0))
    if "speed" in r.extra:
        for k, v in r.extra["speed"].items():
            assert isinstance(k, str)
            assert whole(v, 1, 4096) if k == "threads" else isinstance(v, (bool, str, type(None)))
    if "spatial_checkpoints" in r.extra:
        assert all(v is None or isinstance(v, str) for v in r.extra["spatial_checkpoints"].values())


def parse(text: str):
    """('ok', record) or ('error', message); any other exception fails the test."""
    try:
        return "ok", Record.from_json(text, "fuzz.png", LIMITS)
    except UserError as exc:
        return "error", str(exc)


def test_record_parser_fuzz():
    accepted = refused = 0
    slowest, heaviest = 0.0, 0
    assert parse(json.dumps(base_record()))[0] == "ok"  # and the sampler names' module is imported, untimed
    tracemalloc.start()
    try:
        for name, text in cases():
            tracemalloc.reset_peak()
            base = tracemalloc.get_traced_memory()[0]
            start = time.perf_counter()
            outcome, value = parse(text)
            took = time.perf_counter() - start
            peak = tracemalloc.get_traced_memory()[1] - base
            slowest, heaviest = max(slowest, took), max(heaviest, peak)
            assert took < 1.0, f"{name}: {took:.2f} s"
            assert peak < 64 * 2**20, f"{name}: {peak / 2**20:.0f} MiB"
            if outcome == "ok":
                accepted += 1
                try:
                    assert_sane(value, LIMITS)
                except AssertionError:
                    raise AssertionError(f"{name}: accepted an unsafe record {text[:300]!r}") from None
            else:
                refused += 1
                assert value.startswith("fuzz.png: ") and "\n" not in value and len(value) < 400, (name, value)
    finally:
        tracemalloc.stop()
    assert accepted > 100 and refused > 2000  # both sides of the parser were exercised
    print(f"{accepted} accepted, {refused} refused; slowest {slowest * 1000:.0f} ms, peak {heaviest / 2**20:.1f} MiB")


# --- the whole command ------------------------------------------------------------------------------------

class Reached(Exception):
    """The sampler loop was reached: the record was accepted and its work set up."""


@pytest.fixture(scope="module")
def made(tiny_model_dir, tmp_path_factory):
    """A real record of the tiny model (its path and weights hash), and a folder to write crafted PNGs in."""
    from latentdiff.pipeline import Pipeline

    img = Pipeline.load(tiny_model_dir, device="cpu").generate("a red circle", steps=2, sampler="ddim", seed=3)[0]
    return json.loads(img.info["latentdiff"]), img, tmp_path_factory.mktemp("fuzz")


def e2e_cases(real: dict):
    """Records for the whole command: each field at its limits and beyond, and random junk, on a real
    record (so that what the parser accepts loads the model and sets up sampling)."""
    rng = random.Random(7)
    top = {"batch_size": LIMITS.max_images, "batch_index": LIMITS.max_images - 1,
           "seed": real["batch_seed"] + LIMITS.max_images - 1}
    yield "the largest batch", top
    yield "the largest side", {"height": LIMITS.max_side, "width": LIMITS.max_side}
    yield "the largest side, tall", {"height": LIMITS.max_side, "width": 8}
    yield "largest batch and side", {**top, "height": LIMITS.max_side, "width": LIMITS.max_side}
    yield "the most steps", {"steps": LIMITS.max_steps, "sampler": "ddpm"}
    yield "the longest prompt", {"prompt": "circle " * (LIMITS.max_prompt_chars // 7)}
    yield "batch prompts", {**top, "batch_prompts": [f"prompt {i}: ünïcödé ✓ 𝄞" for i in range(LIMITS.max_images)]}
    for field, values in {"batch_size": [0, 129, 10**6, "8", 8.0], "height": [0, 30, 2049, 10**5, -32, None],
                          "width": [2052, 3.5, [32]], "steps": [0, 1001, 10**9, True], "seed": [-1, 2**64, "3"],
                          "guidance": [math.nan, math.inf, "4", 1e308, -1e308], "sampler": ["plms", 1, None],
                          "prompt": ["\udcff", "a\x00", None, 5, "x" * 10_001], "model_path": ["a\x00b", 5, ""],
                          "loras": [[{"path": "/nowhere.safetensors", "scale": 1, "sha256": "0"}], [1], "x"],
                          "extra": [[], {"inpaint": {}}, {"speed": {"warp": True}}, {"layout": 5},
                                    {"classifier_guidance": {"class": "circle"}}, {"segmap": {"sha256": "x",
                                                                                              "scale": 1}}],
                          "record_version": [2, 0, "1"], "device": ["tpu", "cuda:99999999999999999999", 7]}.items():
        for value in values:
            yield f"{field}={value!r:.40}", {field: value}
    for _ in range(12):
        field = rng.choice(FIELDS)
        yield f"random {field}", {field: junk(rng)}


def test_replay_command_fuzz(made, monkeypatch, capsys):
    import latentdiff.diffusion.sampling as sampling

    real, img, folder = made
    shapes = []

    def probe(denoiser, schedule, x_T, **kw):
        shapes.append(tuple(x_T.shape))
        raise Reached

    monkeypatch.setattr(sampling, "sample", probe)
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    outcomes = {"error": 0, "reached": 0}
    for i, (name, changes) in enumerate(e2e_cases(real)):
        info = PngInfo()
        info.add_text("latentdiff", json.dumps({**real, **changes}))
        path = folder / f"case{i}.png"
        img.save(path, pnginfo=info)
        start = time.monotonic()
        shapes.clear()
        try:
            code = main(["replay", str(path), "--out", str(folder / "out"), "--device", "cpu"])
        except Reached:
            code = "reached"
        took = time.monotonic() - start
        out, err = capsys.readouterr()
        assert took < 20, f"{name}: {took:.1f} s"
        if code == "reached":
            outcomes["reached"] += 1
            (b, c, h, w), = shapes
            assert b <= LIMITS.max_images and b * h * w <= LIMITS.max_batch_pixels, (name, shapes)
            assert h * 4 <= LIMITS.max_side and w * 4 <= LIMITS.max_side, (name, shapes)  # the tiny VAE's f = 4
        else:
            outcomes["error"] += 1
            assert code == 2 and out == "" and err.count("\n") == 1 and "Traceback" not in err, (name, code, err)
            assert err.startswith("latentdiff replay: error: "), (name, err)
    grown = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024 - rss
    assert grown < 600, f"resident memory grew by {grown:.0f} MB"
    assert outcomes["reached"] >= 6 and outcomes["error"] >= 30, outcomes
