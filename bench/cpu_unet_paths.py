"""Which way of running the default model's U-Net forward is fastest on this CPU? (issue #30)

    OMP_WAIT_POLICY=PASSIVE .venv/bin/python bench/cpu_unet_paths.py [--model PATH] [--batch 2,8]
        [--variants fp32-sdpa,bf16-eager,bf16-compile-freeze,...] [--rounds 7] [--json out.json]

One process, the model's U-Net at its latent size, random inputs of the sampler's batch (2 = one image with
guidance, 8 = four), no autograd. Each variant is a copy of the U-Net prepared one way; after a warm-up
(which for a compiled variant is its compilation, timed and reported separately), the variants are timed
in interleaved rounds of ``--forwards`` forwards each and the median per-forward time is reported with its
ratio to ``fp32-sdpa`` (stock diffusers' path: float32 weights, SDPA attention). ``max diff`` is the largest
absolute difference of a variant's output from fp32-sdpa's on the same inputs (the output is v or ε, of
order 1). The header names the CPU (``lscpu``'s model name) and its native bf16.

Variants (a name is dtype-attention[-cl][-compile[-freeze][-cpp][-autotune][-noguard]][-split]: cl channels-last;
compile torch.compile (inductor), freeze its weight freezing (constant folding, oneDNN weight prepacking), cpp its C++
wrapper (no Python between kernels), autotune mode="max-autotune" (C++ GEMM templates, AMX where present),
noguard calls after the first without dynamo's guard checks (skip_guard_eval_unsafe, as latentdiff.speed does);
split: the batch in two halves (guidance's conditional and unconditional halves), run at the same time by two
threads of one core each instead of one batch over both cores (measured: slower; BENCHMARKS.md)):
  fp32-sdpa, fp32-eager, bf16-sdpa, bf16-eager, bf16-eager-cl, bf16-eager-compile,
  bf16-eager-compile-freeze, fp32-sdpa-compile-freeze, bf16-sdpa-compile-freeze, autocast-eager
"""
from __future__ import annotations

import argparse
import copy
import json
import os
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import torch  # noqa: E402

DEFAULT_VARIANTS = ("fp32-sdpa,fp32-eager,bf16-sdpa,bf16-eager,bf16-eager-cl,autocast-eager,"
                    "fp32-sdpa-compile-freeze,bf16-eager-compile-freeze,bf16-sdpa-compile-freeze")


def prepare(unet, name: str):
    """A callable ``(x, t, ctx) -> output`` for variant ``name`` (its own copy of ``unet``)."""
    from diffusers.models.attention_processor import AttnProcessor, AttnProcessor2_0

    parts = name.split("-")
    kind, attention, rest = parts[0], parts[1], set(parts[2:])
    unknown = rest - {"cl", "compile", "freeze", "cpp", "autotune", "noguard", "split"}
    if kind not in ("fp32", "bf16", "autocast") or attention not in ("sdpa", "eager") or unknown:
        raise SystemExit(f"unknown variant {name!r} (see --help)")
    net = copy.deepcopy(unet).eval()
    net.set_attn_processor(AttnProcessor2_0() if attention == "sdpa" else AttnProcessor())
    dtype = torch.bfloat16 if kind == "bf16" else torch.float32
    net = net.to(dtype)
    if "cl" in rest:
        net = net.to(memory_format=torch.channels_last)
    if "compile" in rest:
        net = torch.compile(net, dynamic=False, mode="max-autotune" if "autotune" in rest else None)

    def call(x, t, ctx):
        if kind == "autocast":
            with torch.autocast("cpu", dtype=torch.bfloat16):
                return net(x, t, encoder_hidden_states=ctx, return_dict=False)[0].float()
        return net(x.to(dtype), t, encoder_hidden_states=ctx.to(dtype), return_dict=False)[0].float()

    if "compile" in rest:  # the graph compiles at its first call, under this variant's inductor settings
        compiled = {"done": False}

        def with_settings(x, t, ctx, _call=call, _freeze="freeze" in rest, _cpp="cpp" in rest,
                          _noguard="noguard" in rest):
            import torch._inductor.config as inductor_config

            if _noguard and compiled["done"]:  # every call has the first one's shapes
                with torch.compiler.set_stance("default", skip_guard_eval_unsafe=True):
                    return _call(x, t, ctx)
            inductor_config.freezing, inductor_config.cpp_wrapper = _freeze, _cpp
            out = _call(x, t, ctx)
            compiled["done"] = True
            return out
        call = with_settings
    return _split(call) if "split" in rest else call


def _split(call):
    """``call`` on each half of the batch at once, in two threads of one OpenMP thread each: the halves'
    first call (a compiled variant's compilation) runs with one thread in force, so that its kernels are
    generated for one thread."""
    from concurrent.futures import ThreadPoolExecutor

    def one_thread(fn, *args):  # in a worker, whose OpenMP threads the pool's initializer set to one
        with torch.inference_mode():
            return fn(*args)

    pool = ThreadPoolExecutor(2, initializer=torch.set_num_threads, initargs=(1,))
    state = {"warm": False}

    def halves(x, t, ctx):
        n = x.shape[0] // 2
        if not state["warm"]:  # compile (or warm up) for the half batch, single-threaded, once
            pool.submit(one_thread, call, x[:n], t, ctx[:n]).result()
            state["warm"] = True
        a = pool.submit(one_thread, call, x[:n], t, ctx[:n])
        b = pool.submit(one_thread, call, x[n:], t, ctx[n:])
        return torch.cat([a.result(), b.result()])

    return halves


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default=None, help="model folder (default: the default model)")
    parser.add_argument("--batch", default="2,8")
    parser.add_argument("--variants", default=DEFAULT_VARIANTS)
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--forwards", type=int, default=5)
    parser.add_argument("--json", default=None)
    args = parser.parse_args(argv)

    from latentdiff.pipeline import Pipeline
    from latentdiff.speed import cpu_bf16_kind, cpu_model_name

    pipe = Pipeline.load(args.model, device="cpu")
    unet = pipe.unet.eval()
    size, ctx_len = unet.config.sample_size, pipe.tokenizer.model_max_length
    print(f"CPU: {cpu_model_name()} (native bf16: {cpu_bf16_kind()}), {torch.get_num_threads()} threads, "
          f"torch {torch.__version__}, OMP_WAIT_POLICY={os.environ.get('OMP_WAIT_POLICY')}, "
          f"{time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}", flush=True)
    names = [v.strip() for v in args.variants.split(",") if v.strip()]
    if "fp32-sdpa" not in names:
        names.insert(0, "fp32-sdpa")
    results = []
    for batch in (int(b) for b in args.batch.split(",")):
        gen = torch.Generator().manual_seed(batch)
        x = torch.randn(batch, unet.config.in_channels, size, size, generator=gen)
        ctx = torch.randn(batch, ctx_len, unet.config.cross_attention_dim, generator=gen)
        t = torch.tensor(500)
        calls, first_s, outs = {}, {}, {}
        with torch.inference_mode():
            for name in names:
                fn = prepare(unet, name)
                t0 = time.perf_counter()
                outs[name] = fn(x, t, ctx)
                first_s[name] = time.perf_counter() - t0
                for _ in range(2):
                    fn(x, t, ctx)
                calls[name] = fn
            times = {n: [] for n in names}
            for r in range(args.rounds):
                order = names if r % 2 == 0 else names[::-1]
                for name in order:
                    t0 = time.perf_counter()
                    for _ in range(args.forwards):
                        calls[name](x, t, ctx)
                    times[name].append((time.perf_counter() - t0) / args.forwards)
        base = statistics.median(times["fp32-sdpa"])
        for name in names:
            med = statistics.median(times[name])
            row = {"batch": batch, "variant": name, "ms": med * 1000, "speedup": base / med,
                   "first_s": first_s[name], "max_diff": float((outs[name] - outs["fp32-sdpa"]).abs().max())}
            results.append(row)
            print(f"batch {batch:2d}  {name:28s} {row['ms']:8.2f} ms  x{row['speedup']:.2f}  "
                  f"first call {row['first_s']:.2f} s  max diff {row['max_diff']:.3g}", flush=True)
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
