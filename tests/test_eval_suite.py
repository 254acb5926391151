"""The evaluation suite: each section's numbers on an oracle pipe whose behaviour is known exactly, the
bits/dim plumbing on a tiny model, and `latentdiff eval` end to end on a tiny model (report, skips, errors)."""
import json
import shutil

import numpy as np
import pytest
import torch
from test_eval import OraclePipe, _obj

from latentdiff.cli import main
from latentdiff.data.shapes import Scene, held_out_prompts, render
from latentdiff.eval.suite import SUITES, Context, ImageBank, Job, RealSet, Suite, class_share, run_suite

SHAPE_NAMES = ("circle", "square", "triangle")


class SweepOracle:
    """A pipe that draws exactly what is asked when w ≥ 3 and steps ≥ 10, and the relation flipped
    otherwise; with classifier guidance (c, s ≥ 10) on the empty prompt it draws one large red c, and
    otherwise one large red square."""

    device, dtype = torch.device("cpu"), torch.float32

    def __init__(self):
        self.calls = []

    def resolve(self, steps=None, guidance=None, sampler=None, height=None, width=None):
        return dict(steps=steps or 25, guidance=4.0 if guidance is None else guidance, sampler=sampler or "dpm++",
                    height=64, width=64)

    def sample_rows(self, rows, *, steps, guidance, sampler, height, width, guide=None, **kw):
        self.calls.append(len(rows))
        return [(r.prompt, guidance >= 3 and steps >= 10, guide) for r in rows]

    def decode_latents(self, latents):
        out = []
        for prompt, right, guide in latents:
            if prompt == "":
                shape = guide[0] if guide is not None and guide[1] >= 10 else "square"
                spec = type("S", (), {"shape": shape, "colour": "red", "size": "large"})
                out.append(render(Scene(20, (_obj(spec, "center"),)))[0])
            else:
                out.append(np.asarray(OraclePipe(wrong=not right).generate([prompt])[0]))
        return np.stack(out)


class FakeClassifier:
    def classes(self, head):
        return SHAPE_NAMES if head == "shape" else ("red", "blue")


def _ctx(pipe, suite, tmp_path, prompts):
    bank = ImageBank(pipe, suite.batch_size, lambda key: key, None)
    return Context(pipe=pipe, suite=suite, out=tmp_path, bank=bank, bar=None, real=RealSet(64), sampler="dpm++",
                   steps=25, guidance=4.0, prompts=prompts, classifier=FakeClassifier())


def test_sections_report_exactly_what_the_oracle_does(tmp_path):
    prompts = [p for p in held_out_prompts() if " of " in p][:4] + held_out_prompts()[:2]
    suite = Suite("t", accuracy_images=2, guidance=(1.0, 2.0, 4.0), guidance_stride=1, guidance_images=2,
                  samplers=("ddim", "euler"), sampler_steps=(5, 10), sampler_stride=1, sampler_images=1,
                  cg_scales=(0.0, 3.0, 10.0), cg_images=3, batch_size=5)
    pipe = SweepOracle()
    res = run_suite(_ctx(pipe, suite, tmp_path, prompts), ["accuracy", "guidance", "samplers", "classifier"],
                    progress=False)
    assert res["accuracy"]["any_match"]["accuracy"] == 1.0 and res["accuracy"]["two_relation"]["n"] == 8
    rel = {r["guidance"]: r["two_relation"]["accuracy"] for r in res["guidance"]["results"]}
    assert rel == {1.0: 0.0, 2.0: 0.0, 4.0: 1.0}
    steps = {(r["sampler"], r["steps"]): r["two_relation"]["accuracy"] for r in res["samplers"]["results"]}
    assert steps == {("ddim", 5): 0.0, ("ddim", 10): 1.0, ("euler", 5): 0.0, ("euler", 10): 1.0}
    share = {(r["class"], r["scale"]): r["all"]["accuracy"] for r in res["classifier"]["results"]}
    assert share == {("circle", 0.0): 0.0, ("circle", 3.0): 0.0, ("circle", 10.0): 1.0,
                     ("square", 0.0): 1.0, ("square", 3.0): 1.0, ("square", 10.0): 1.0,
                     ("triangle", 0.0): 0.0, ("triangle", 3.0): 0.0, ("triangle", 10.0): 1.0}
    # Each distinct image is drawn once: the w = 4 sweep and the dpm++ images are the accuracy section's,
    # s = 0 is one set for all classes, and nothing is drawn twice.
    accuracy = 6 * 2
    guidance = 2 * 6 * 2  # w = 1, 2
    samplers = 2 * 2 * 6
    classifier = 3 + 3 * 2 * 3  # s = 0 shared, s = 3, 10 per class
    assert res["_totals"]["images"] == sum(pipe.calls) == accuracy + guidance + samplers + classifier
    assert res["_totals"]["nfe"] == (25 * 2 * accuracy + (25 + 50) * 6 * 2 + (5 + 10) * 2 * 2 * 6
                                     + 25 * classifier)
    for png in ("accuracy_samples", "guidance_sweep", "guidance_samples", "sampler_sweep", "classifier_sweep"):
        assert (tmp_path / f"{png}.png").is_file()


def test_class_share_counts_images_whose_objects_are_all_of_the_class():
    def picture(*shapes):
        specs = [type("S", (), {"shape": s, "colour": "blue", "size": "small"}) for s in shapes]
        return render(Scene(10, tuple(_obj(sp, pos) for sp, pos in zip(specs, ("left", "right")))))[0]

    images = [picture("circle"), picture("circle", "circle"), picture("circle", "square"),
              np.full((64, 64, 3), 20, np.uint8)]
    r = class_share(images, "circle", "shape")
    assert (r["all"]["correct"], r["any"]["correct"], r["all"]["n"]) == (2, 3, 4)
    assert r["mean_objects"] == pytest.approx(5 / 4)


def test_bits_per_dim_is_paired_and_deterministic_on_a_tiny_model():
    from conftest import build_tiny_pipeline

    from latentdiff.eval.likelihood import bound_bits_per_dim

    pipe = build_tiny_pipeline()
    x0 = torch.randn(3, 4, 8, 8)
    texts = ["a red circle", "a blue square", ""]
    a = bound_bits_per_dim(pipe, x0, texts, num_t=3, seed=1, batch=2)
    b = bound_bits_per_dim(pipe, x0, texts, num_t=3, seed=1, batch=2)
    u = bound_bits_per_dim(pipe, x0, [""] * 3, num_t=3, seed=1, batch=2)
    assert a.shape == (3,) and torch.isfinite(a).all() and torch.equal(a, b)
    assert a[2] == u[2] and a[0] != u[0]  # same t and noise: only the caption differs
    assert not torch.equal(a, bound_bits_per_dim(pipe, x0, texts, num_t=3, seed=2, batch=2))


# --- the command ------------------------------------------------------------------------------------------

TINY_SUITE = Suite("quick", accuracy_images=1, guidance=(1.0, 3.0), guidance_stride=2, guidance_images=1,
                   sampler_steps=(2, 3), sampler_stride=2, sampler_images=1, cg_scales=(0.0, 50.0), cg_images=2,
                   bpd_latents=4, bpd_timesteps=2, fd_images=6, batch_size=8)


@pytest.fixture
def tiny_suite(monkeypatch):
    monkeypatch.setitem(SUITES, "quick", TINY_SUITE)


@pytest.fixture(scope="module")
def model_with_extras(tiny_model_dir, tmp_path_factory):
    """The tiny model with a clip/ image tower and a classifier/ inside, as a full model folder has them."""
    from latentdiff.models.classifier import ClassifierConfig, build_classifier, save_classifier
    from latentdiff.models.factory import ImageTowerConfig, TextConfig, build_clip

    folder = tmp_path_factory.mktemp("m") / "model"
    shutil.copytree(tiny_model_dir, folder)
    torch.manual_seed(0)
    build_clip(TextConfig(hidden_size=32, num_layers=1, num_heads=2, intermediate_size=64, projection_dim=32),
               ImageTowerConfig(hidden_size=32, num_layers=1, num_heads=2, intermediate_size=64, patch_size=16,
                                image_size=32)).save_pretrained(str(folder / "clip"))
    save_classifier(build_classifier(ClassifierConfig(block_out_channels=(8, 16), norm_num_groups=4), in_channels=4,
                                     sample_size=8, num_train_timesteps=1000, shapes=SHAPE_NAMES,
                                     colours=("red", "green")), folder / "classifier", {})
    return folder


def test_eval_command_writes_the_whole_report(model_with_extras, tmp_path, tiny_suite, capsys):
    out = tmp_path / "report"
    argv = ["eval", "--model", str(model_with_extras), "--out", str(out), "--limit", "4", "--steps", "3",
            "--sampler", "ddim", "--device", "cpu"]
    assert main(argv) == 0
    text = (out / "report.md").read_text()
    assert "Command: `latentdiff " + " ".join(argv) + "`" in text
    data = json.loads((out / "results.json").read_text())
    res, meta = data["results"], data["meta"]
    assert set(res) == {"accuracy", "guidance", "samplers", "classifier", "bpd", "fd", "_totals"}
    assert len(meta["model_sha256"]) == 64 and meta["model_sha256"] in text
    assert meta["classifier"]["path"] == "MODEL/classifier" and len(meta["classifier"]["sha256"]) == 64
    assert meta["clip"]["path"] == "MODEL/clip" and "Clip: `MODEL/clip`" in text  # not the machine's own path
    assert res["fd"]["spaces"]["clip"]["features"].startswith("CLIP image tower (MODEL/clip)")
    assert {"torch", "diffusers", "transformers", "latentdiff"} <= set(meta["versions"])
    assert meta["settings"]["cg_scales"] == [0.0, 50.0] and not meta["skipped"]
    assert res["accuracy"]["num_prompts"] == 4 and res["accuracy"]["any_match"]["n"] == 4
    assert [r["scale"] for r in res["classifier"]["results"]][:2] == [0.0, 50.0]
    assert res["bpd"]["latents"] == 4 and np.isfinite(res["bpd"]["conditional"]["mean"])
    fd = res["fd"]["spaces"]["clip"]
    assert fd["generated_vs_real"] > 0 and fd["real_vs_real"] >= 0
    for title in ("Per-attribute accuracy", "guidance sweep", "Sampler sweep", "Classifier guidance", "bits/dim",
                  "Fréchet distance"):
        assert title.lower() in text.lower(), title
    for png in ("accuracy_samples", "guidance_sweep", "sampler_sweep", "classifier_sweep", "classifier_samples",
                "fd_samples"):
        assert (out / f"{png}.png").is_file()


def test_reports_name_files_relative_to_the_model_or_the_current_folder(tmp_path, monkeypatch):
    from latentdiff.eval.report import shown_path

    model = tmp_path / "work" / "model"
    (model / "classifier").mkdir(parents=True)
    (tmp_path / "elsewhere").mkdir()
    monkeypatch.chdir(tmp_path / "work")
    assert shown_path(model / "classifier", model) == "MODEL/classifier"
    assert shown_path("model/classifier", model) == "MODEL/classifier"
    assert shown_path(model / "classifier", None) == "model/classifier"  # inside the current folder
    assert shown_path(tmp_path / "elsewhere", model) == str(tmp_path / "elsewhere")  # outside both: as given


def test_sections_without_their_inputs_are_skipped_with_the_reason(tiny_model_dir, tmp_path, tiny_suite):
    out = tmp_path / "r"
    assert main(["eval", "--model", str(tiny_model_dir), "--out", str(out), "--sections", "accuracy,classifier,fd",
                 "--limit", "2", "--steps", "2", "--device", "cpu"]) == 0
    text = (out / "report.md").read_text()
    assert "Skipped **classifier**: no classifier: pass --classifier DIR" in text
    assert "Skipped **fd**: no feature space" in text
    assert set(json.loads((out / "results.json").read_text())["results"]) == {"accuracy", "_totals"}


def test_eval_runs_the_fast_path_by_default_and_records_it(tiny_model_dir, tmp_path, tiny_suite):
    """The suite takes `--speed auto` unless told `--speed plain`; the report names what ran."""
    from latentdiff.speed import Speed, resolve_auto

    chosen = resolve_auto(Speed(auto=True), "cpu").describe()
    for flags, expected in (([], chosen), (["--speed", "plain"], "plain (float32)")):
        out = tmp_path / f"r{len(flags)}"
        assert main(["eval", "--model", str(tiny_model_dir), "--out", str(out), "--sections", "accuracy",
                     "--limit", "1", "--steps", "2", "--device", "cpu", *flags]) == 0
        assert json.loads((out / "results.json").read_text())["meta"]["speed"] == expected
        assert f"Speed options: {expected}" in (out / "report.md").read_text()


@pytest.mark.parametrize("flags,words", [
    (["--sections", "accuracy,speed"], "--sections 'accuracy,speed': expected a comma-separated subset of"),
    (["--suite", "huge"], "--suite 'huge': expected quick or full"),
    (["--inception-weights", "/nonexistent/inception.pth"],
     "--inception-weights /nonexistent/inception.pth: file not found"),
    (["--classifier", "/nonexistent/clf"], "--classifier /nonexistent/clf: not found"),
    (["--num-images", "0"], "--num-images 0: expected a positive integer"),
    (["--sampler", "heun"], "--sampler 'heun': unknown sampler"),
    (["--speed", "turbo"], "--speed 'turbo': unknown word 'turbo'"),
])
def test_eval_flag_errors_are_one_line(tiny_model_dir, tmp_path, capsys, flags, words):
    code = main(["eval", "--model", str(tiny_model_dir), "--out", str(tmp_path), *flags])
    err = capsys.readouterr().err
    assert code == 2 and words in err and len(err.strip().splitlines()) == 1, err


def test_quick_suite_fits_the_budget_in_network_evaluations():
    """The quick suite is sized in U-Net passes: at the default model's 25 dpm++ steps it must stay under
    60,000 image-passes (≈ 6–12 ms each on the 2-core CPU for the default U-Net, so ≤ 12 minutes)."""
    quick = SUITES["quick"]
    prompts = held_out_prompts()
    jobs = set()
    for p in prompts:
        jobs |= {Job(p, j, 4.0, "dpm++", 25) for j in range(quick.accuracy_images)}
    for w in quick.guidance:
        jobs |= {Job(p, j, w, "dpm++", 25) for p in prompts[::quick.guidance_stride]
                 for j in range(quick.guidance_images)}
    for s in quick.samplers:
        for n in quick.sampler_steps:
            jobs |= {Job(p, j, 4.0, s, n) for p in prompts[::quick.sampler_stride] for j in range(quick.sampler_images)}
    for c in SHAPE_NAMES:
        for s in quick.cg_scales:
            jobs |= {Job("", j, 1.0, "dpm++", 25, (c, s) if s else None) for j in range(quick.cg_images)}
    jobs |= {Job(f"caption {i}", i, 4.0, "dpm++", 25) for i in range(quick.fd_images)}
    nfe = sum(j.nfe for j in jobs) + 2 * quick.bpd_latents * quick.bpd_timesteps
    assert nfe < 60_000, nfe
