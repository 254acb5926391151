"""The CPU fast path (``--speed auto``, latentdiff.speed.auto_options) on tiny random models: it picks bf16 only
where the CPU's flags say the CPU computes it natively, its images stay close to float32's, the PNG records the
options it chose and replay redraws the image from them, and the plain path stays as it was."""
import json

import numpy as np
import pytest
import torch
from PIL import Image

import latentdiff.speed as speed
from latentdiff.cli import main
from latentdiff.errors import UserError
from latentdiff.speed import Speed, auto_options, cpu_threads, parse_speed, resolve_auto

GEN = dict(num_images=2, steps=4, seed=3, guidance=4.0)
AVX2 = frozenset({"sse4_2", "avx", "avx2", "fma", "f16c"})  # an AVX2-only CPU (the project's earlier EPYC)
AVX512_NO_BF16 = AVX2 | {"avx512f", "avx512bw", "avx512vl", "avx512_vnni"}
AVX512_BF16 = AVX512_NO_BF16 | {"avx512_bf16"}  # this project's AMD EPYC (family 25 model 17)
AMX = AVX512_BF16 | {"amx_bf16", "amx_tile", "amx_int8", "avx512_fp16"}  # a Xeon with AMX


def tiny(**kwargs):
    from conftest import build_tiny_pipeline

    return build_tiny_pipeline(**kwargs)


def pixels(images):
    return np.stack([np.asarray(im) for im in images]).astype(int)


def rel(a, b):
    return float((a.float() - b.float()).norm() / b.float().norm())


@pytest.fixture
def cpu(monkeypatch):
    """``cpu(flags)`` makes latentdiff.speed read ``flags`` as this CPU's /proc/cpuinfo flags."""
    def use(flags):
        monkeypatch.setattr(speed, "cpu_flags", lambda: frozenset(flags))
    return use


@pytest.fixture(scope="module")
def plain():
    """Latents and images of the plain path (float32, no options) for the prompt and seeds of GEN."""
    pipe = tiny()
    return pipe.generate_latents("a red circle", **GEN), pixels(pipe.generate("a red circle", **GEN))


@pytest.mark.parametrize("flags", [AVX2, AVX512_NO_BF16, frozenset()], ids=["avx2", "avx512-no-bf16", "unreadable"])
def test_auto_picks_nothing_bf16_on_a_cpu_without_native_bf16(cpu, flags):
    """Emulated bf16 is slower than float32: without avx512_bf16 / amx_bf16, auto keeps float32 and the
    model's attention, and sets only the threads (the record says so)."""
    cpu(flags)
    assert speed.cpu_bf16_kind() is None
    pipe = tiny().optimize(auto=True)
    assert pipe.speed == Speed(threads=cpu_threads())
    assert pipe.dtype == torch.float32 and pipe.vae.dtype == torch.float32 and pipe.text_encoder.dtype == torch.float32
    assert {type(p).__name__ for p in pipe.unet.attn_processors.values()} == {"AttnProcessor2_0"}
    record = json.loads(pipe.generate("a red circle", num_images=1, steps=1)[0].info["latentdiff"])
    assert record["dtype"] == "float32" and record["extra"]["speed"] == {"threads": cpu_threads()}


@pytest.mark.parametrize("flags, kind, attention, processor", [
    (AVX512_BF16, "avx512", "eager", "AttnProcessor"),  # measured fastest on an AMD EPYC with AVX-512-BF16
    (AMX, "amx", "sdpa", "AttnProcessor2_0"),  # and on an AMX Xeon
])
def test_auto_picks_bf16_and_the_cpus_faster_attention_where_the_cpu_computes_bf16(cpu, flags, kind, attention,
                                                                                     processor):
    cpu(flags)
    assert speed.cpu_bf16_kind() == kind
    pipe = tiny().optimize(auto=True)
    assert pipe.speed == Speed(dtype="bf16", attention=attention, threads=cpu_threads())
    assert not pipe.speed.auto and "auto" not in pipe.speed.describe()  # resolved: records name what ran
    assert pipe.dtype == torch.bfloat16 and pipe.vae.dtype == torch.bfloat16
    assert {type(p).__name__ for p in pipe.unet.attn_processors.values()} == {processor}


def test_options_given_beside_auto_win(cpu):
    cpu(AVX512_BF16)
    assert parse_speed("auto") == Speed(auto=True)
    given = resolve_auto(parse_speed("auto,fp32"), "cpu")
    assert given == Speed(dtype="fp32", attention="eager", threads=cpu_threads())
    assert resolve_auto(parse_speed("auto,threads=3"), "cpu").threads == 3
    fused = resolve_auto(parse_speed("auto,fuse_qkv"), "cpu")  # fused q/k/v needs SDPA: auto's eager is dropped
    assert fused == Speed(dtype="bf16", fuse_qkv=True, threads=cpu_threads())
    assert resolve_auto(Speed(dtype="fp16"), "cpu") == Speed(dtype="fp16")  # no auto: unchanged
    with pytest.raises(UserError, match="resolve it for the pipeline's device first"):
        speed.apply(tiny(), Speed(auto=True))


def test_cpu_threads_follow_the_environment_affinity_and_quota(monkeypatch):
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    assert cpu_threads() == torch.get_num_threads()  # the environment asked: torch already follows it
    monkeypatch.delenv("OMP_NUM_THREADS")
    monkeypatch.delenv("MKL_NUM_THREADS", raising=False)
    monkeypatch.setattr(speed.os, "sched_getaffinity", lambda pid: {0, 1, 2, 3, 6}, raising=False)
    monkeypatch.setattr(speed, "_core_of", lambda cpu: cpu // 2)  # two hyperthreads per core
    monkeypatch.setattr(speed, "_cgroup_cpu_quota", lambda: None)
    assert cpu_threads() == 3  # cores 0, 1 and 3
    monkeypatch.setattr(speed, "_cgroup_cpu_quota", lambda: 2.9)
    assert cpu_threads() == 2  # rounded down: a thread more than the quota gets the group throttled
    monkeypatch.setattr(speed, "_cgroup_cpu_quota", lambda: 0.25)
    assert cpu_threads() == 1


@pytest.mark.parametrize("files, quota", [
    ({"/sys/fs/cgroup/cpu.max": "250000 100000\n"}, 2.5),  # cgroup v2, docker --cpus 2.5
    ({"/sys/fs/cgroup/cpu.max": "max 100000\n"}, None),  # v2, unlimited
    ({"/sys/fs/cgroup/cpu/cpu.cfs_quota_us": "150000\n", "/sys/fs/cgroup/cpu/cpu.cfs_period_us": "100000\n"}, 1.5),
    ({"/sys/fs/cgroup/cpu/cpu.cfs_quota_us": "-1\n", "/sys/fs/cgroup/cpu/cpu.cfs_period_us": "100000\n"}, None),
    ({"/sys/fs/cgroup/cpu.max": "garbage\n"}, None),
    ({}, None),  # no cgroup files
])
def test_cgroup_cpu_quota_is_read_from_v2_or_v1(monkeypatch, files, quota):
    import io

    def fake_open(path, *args, **kwargs):
        if path not in files:
            raise FileNotFoundError(path)
        return io.StringIO(files[path])

    monkeypatch.setattr(speed, "open", fake_open, raising=False)
    assert speed._cgroup_cpu_quota() == quota


@pytest.mark.parametrize("text, words", [("threads=x", "threads='x': expected a whole number"),
                                         ("threads=0", "speed threads 0: expected a whole number in 1..4096"),
                                         ("auto=1", "unknown word 'auto=1'")])
def test_bad_auto_and_threads_words_are_one_line_errors(text, words):
    with pytest.raises(UserError, match=words) as err:
        parse_speed(text)
    assert "\n" not in str(err.value)


def test_threads_option_sets_and_records_the_threads():
    before = torch.get_num_threads()
    want = 2 if before != 2 else 1
    try:
        pipe = tiny().optimize(threads=want)
        assert torch.get_num_threads() == want
        record = json.loads(pipe.generate("a red circle", num_images=1, steps=1)[0].info["latentdiff"])
        assert record["extra"]["speed"] == {"threads": want}
    finally:
        torch.set_num_threads(before)


def test_fast_path_images_stay_close_to_float32(cpu, plain):
    """bf16 weights (unit roundoff 3.9e-3) through 4 guided steps: the latents within 2 % relative of float32's
    and the pixels within 12/255 (the default model over 25 steps: max 23/255, mean 0.7/255, BENCHMARKS.md);
    0 < : the networks really ran in bf16."""
    latents, images = plain
    cpu(AVX512_BF16)
    pipe = tiny().optimize(auto=True)
    out = pipe.generate_latents("a red circle", **GEN)
    assert out.dtype == torch.float32 and torch.isfinite(out).all()
    assert 0 < rel(out, latents) < 2e-2
    diff = np.abs(pixels(pipe.generate("a red circle", **GEN)) - images)
    print(f"fast path vs float32 on the tiny model: max pixel difference {diff.max()}/255, mean {diff.mean():.3f}")
    assert 0 < diff.max() <= 12


def read_record(path):
    with Image.open(path) as img:
        return json.loads(img.text["latentdiff"]), img.tobytes()


def test_fast_path_is_recorded_and_replay_reproduces_it(cpu, tiny_model_dir, tmp_path, capsys):
    """generate --speed auto records the options auto chose (not 'auto'), so replay applies the same ones even
    where auto would choose others (here: replayed with the CPU flags of an AVX2-only CPU), and redraws the
    image bit for bit on the same machine."""
    cpu(AVX512_BF16)
    code = main(["generate", "a red circle", "--model", str(tiny_model_dir), "--steps", "3", "--num-images", "2",
                 "--speed", "auto", "--out", str(tmp_path), "--device", "cpu"])
    out, err = capsys.readouterr()
    assert code == 0, err
    path = out.split()[1]
    record, made = read_record(path)
    assert record["dtype"] == "bfloat16"
    assert record["extra"]["speed"] == {"dtype": "bf16", "attention": "eager", "threads": cpu_threads()}
    cpu(AVX2)
    code = main(["replay", path, "--out", str(tmp_path / "replay")])
    out, err = capsys.readouterr()
    assert code == 0 and f"identical to {path}" in out, err
    replayed, again = read_record(next((tmp_path / "replay").glob("*.png")))
    assert again == made and replayed["extra"]["speed"] == record["extra"]["speed"]


def test_plain_path_is_unchanged(cpu, plain, tiny_model_dir, tmp_path, capsys):
    """Without --speed nothing is applied: float32 networks with the model's own attention, no speed in the
    record, the same latents bit for bit before and after a fast-path pipeline ran in the same process, and
    replay of a plain image is identical."""
    latents, images = plain
    cpu(AMX)
    fast = tiny().optimize(auto=True)
    fast.generate_latents("a red circle", **GEN)
    pipe = tiny()
    assert pipe.speed is None and pipe._unet_call is None and pipe.dtype == torch.float32
    assert {type(p).__name__ for p in pipe.unet.attn_processors.values()} == {"AttnProcessor2_0"}
    assert torch.equal(pipe.generate_latents("a red circle", **GEN), latents)
    assert np.array_equal(pixels(pipe.generate("a red circle", **GEN)), images)
    code = main(["generate", "a red circle", "--model", str(tiny_model_dir), "--steps", "3", "--out", str(tmp_path),
                 "--device", "cpu"])
    out, err = capsys.readouterr()
    assert code == 0, err
    record, _ = read_record(out.split()[0])
    assert record["dtype"] == "float32" and "speed" not in record["extra"]
    code = main(["replay", out.split()[0], "--out", str(tmp_path / "replay")])
    out, err = capsys.readouterr()
    assert code == 0 and "identical to" in out, err


@pytest.mark.parametrize("value, ok", [(2, True), (4096, True), (0, False), (True, False), ("2", False),
                                       (10**9, False), (1.5, False)])
def test_records_take_a_whole_number_of_threads(value, ok):
    from latentdiff.provenance import Record

    raw = {"prompt": "a", "negative_prompt": "", "seed": 0, "sampler": "ddim", "steps": 2, "guidance": 4.0,
           "height": 32, "width": 32, "model_name": "m", "model_path": None, "model_sha256": "0" * 64,
           "device": "cpu", "dtype": "bfloat16", "latentdiff_version": "0", "batch_seed": 0, "batch_size": 1,
           "batch_index": 0, "extra": {"speed": {"dtype": "bf16", "attention": "eager", "threads": value}}}
    if ok:
        assert Record.from_json(json.dumps(raw)).extra["speed"]["threads"] == value
    else:
        with pytest.raises(UserError, match="extra.speed.threads"):
            Record.from_json(json.dumps(raw))


def test_auto_on_cuda_is_the_gpu_options_without_compilation(monkeypatch):
    """On a GPU auto is Speed.fast without torch.compile (bf16 where the GPU computes it, else fp16); the CPU
    flags play no part."""
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: True)
    assert auto_options("cuda") == Speed.fast(dtype="bf16", compile=None).describe()
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: False)
    assert auto_options("cuda:0") == Speed.fast(dtype="fp16", compile=None).describe()
