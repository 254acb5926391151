"""Inference speed options: they change how the networks run, never what the sampler does.

>>> pipe = Pipeline.load(path, device="cuda").optimize(Speed.fast())      # or .optimize(dtype="fp16", ...)
>>> pipe = Pipeline.load(path, device="cpu").optimize(auto=True)           # what this machine supports

A :class:`Speed` value names the options; :func:`apply` (what :meth:`Pipeline.optimize` calls) changes the
U-Net and VAE in place — dtype, memory format, attention processors, fused q/k/v projections,
``torch.compile`` — and returns what the denoiser calls in place of the U-Net: the U-Net itself, or a
:class:`GraphedUNet` that replays a CUDA graph of its whole forward. The sampler still sees one denoiser
``(x_t, t) -> ε̂``; classifier-free guidance already runs the conditional and unconditional passes as one
batched forward, and the sampling loop keeps the latents on the device with no host synchronisation
per step (the timesteps and the scheduler's σ's stay on the CPU and enter device maths as scalars), so
captured forwards replay back to back.

Every option is off by default (the plain path). Applying options twice changes nothing; applying more
options later adds them. The first call after ``compile`` / ``cuda_graph`` pays for compilation and
capture (per input shape); see docs/performance.md for what each option buys on an H200.

``auto`` (:func:`auto_options`) picks the options this machine supports and that measured faster than the
plain path here: on a CPU that computes bf16 natively (:func:`cpu_bf16_kind`), bf16 weights with the classic
attention processor, and the threads the process may use; on any other CPU only the threads.
"""
from __future__ import annotations

import math
import os
import platform
import subprocess
from dataclasses import dataclass, fields, replace
from typing import Any

import torch
from torch import Tensor

from latentdiff.config import COMPILE_MODES
from latentdiff.errors import UserError
from latentdiff.limits import MAX_THREADS

DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}
ATTENTION = ("default", "sdpa", "eager")


@dataclass(frozen=True)
class Speed:
    """How the networks run at inference. Defaults: the plain path.

    * ``dtype`` — "fp32" | "fp16" | "bf16": every network's weights and compute (None keeps the pipeline's).
      The sampler's state and scheduler maths stay float32; the U-Net's output is cast back at its boundary.
    * ``channels_last`` — NHWC memory format for the U-Net's and VAE's convolutions (tensor-core friendly).
    * ``attention`` — "default" keeps the model's processors (diffusers picks SDPA on torch 2), "sdpa" sets
      torch's ``scaled_dot_product_attention`` (flash / memory-efficient kernels) explicitly, "eager" the
      plain matmul-softmax-matmul (for comparisons).
    * ``fuse_qkv`` — one projection matmul for q, k and v (diffusers' ``fuse_qkv_projections``).
    * ``compile`` — a ``torch.compile`` mode for the U-Net (None: not compiled); ``compile_vae`` compiles
      the VAE decoder with the same mode. On a CPU inductor runs with weight freezing and its C++ wrapper
      (:func:`cpu_inductor_options`).
    * ``cuda_graph`` — capture the U-Net forward in a CUDA graph per input shape and replay it
      (:class:`GraphedUNet`): no per-kernel launch cost. Needs a CUDA device and static shapes (which
      sampling has: every step has the same batch and size).
    * ``threads`` — ``torch.set_num_threads`` for the process's CPU work (None leaves it as it is). It is
      process-wide: other pipelines in the process run with it too.
    * ``auto`` — add the options this machine supports (:func:`auto_options`; options given beside it win).
      :meth:`Pipeline.optimize` resolves it into those options, so records name what ran, never ``auto``.
    """

    dtype: str | None = None
    channels_last: bool = False
    attention: str = "default"
    fuse_qkv: bool = False
    compile: str | None = None
    compile_vae: bool = False
    cuda_graph: bool = False
    threads: int | None = None
    auto: bool = False

    def __post_init__(self):
        if self.compile is True:
            object.__setattr__(self, "compile", "default")
        elif self.compile is False:
            object.__setattr__(self, "compile", None)
        if self.dtype is not None and self.dtype not in DTYPES:
            raise UserError(f"speed dtype {self.dtype!r}: expected one of {', '.join(DTYPES)}")
        if self.attention not in ATTENTION:
            raise UserError(f"speed attention {self.attention!r}: expected one of {', '.join(ATTENTION)}")
        if self.compile is not None and self.compile not in COMPILE_MODES:
            raise UserError(f"speed compile {self.compile!r}: expected a torch.compile mode "
                            f"({', '.join(COMPILE_MODES)}), True or None")
        if self.threads is not None and (isinstance(self.threads, bool) or not isinstance(self.threads, int)
                                         or not 1 <= self.threads <= MAX_THREADS):
            raise UserError(f"speed threads {self.threads!r}: expected a whole number in 1..{MAX_THREADS}")
        for f in ("channels_last", "fuse_qkv", "compile_vae", "cuda_graph", "auto"):
            if not isinstance(getattr(self, f), bool):
                raise UserError(f"speed {f} {getattr(self, f)!r}: expected True or False")
        if self.fuse_qkv and self.attention == "eager":
            raise UserError("speed fuse_qkv needs SDPA attention (attention 'default' or 'sdpa'), not 'eager'")
        if self.compile_vae and self.compile is None:
            raise UserError("speed compile_vae needs a compile mode (compile=...)")
        if self.cuda_graph and self.compile == "reduce-overhead":
            raise UserError("speed cuda_graph with compile 'reduce-overhead': that mode captures CUDA graphs "
                            "itself; use one or the other")

    @classmethod
    def fast(cls, dtype: str = "fp16", compile: str | None = "default") -> "Speed":
        """Every option that pays on a GPU: half precision, channels-last, fused SDPA attention, a
        compiled U-Net replayed as a CUDA graph."""
        return cls(dtype=dtype, channels_last=True, attention="sdpa", fuse_qkv=True, compile=compile,
                   cuda_graph=True)

    def describe(self) -> dict[str, Any]:
        """The options that differ from the plain path (for records and tables)."""
        plain = Speed()
        return {f.name: getattr(self, f.name) for f in fields(self) if getattr(self, f.name) != getattr(plain, f.name)}


def speed_from(speed: Speed | None = None, **options) -> Speed:
    """A :class:`Speed` from a value and/or keyword options (unknown keywords are one-line errors)."""
    names = {f.name for f in fields(Speed)}
    unknown = sorted(set(options) - names)
    if unknown:
        raise UserError(f"unknown speed option {unknown[0]!r}; expected one of {', '.join(sorted(names))}")
    return replace(speed or Speed(), **options)


SPEC_WORDS = ("auto", "fast", "fp32", "fp16", "bf16", "channels_last", "sdpa", "eager", "fuse_qkv",
              "compile[=MODE]", "compile_vae", "cuda_graph", "threads=N")


def parse_speed(text: str, flag: str = "--speed") -> Speed:
    """A :class:`Speed` from a comma list such as ``auto``, ``fast``, ``fp16,channels_last,compile`` or
    ``bf16,compile=max-autotune,cuda_graph`` (the command line's ``--speed``); later words add to earlier."""
    options: dict[str, Any] = {}
    for word in (w.strip() for w in text.split(",")):
        name, _, value = word.partition("=")
        if name == "auto" and not value:
            options["auto"] = True
        elif name == "threads" and value:
            if not value.isdigit():
                raise UserError(f"{flag} {text!r}: threads={value!r}: expected a whole number")
            options["threads"] = int(value)
        elif name == "fast":
            options.update(Speed.fast().describe())
        elif name in DTYPES:
            options["dtype"] = name
        elif name in ("sdpa", "eager"):
            options["attention"] = name
        elif name in ("channels_last", "fuse_qkv", "compile_vae", "cuda_graph") and not value:
            options[name] = True
        elif name == "compile":
            options["compile"] = value or "default"
        else:
            raise UserError(f"{flag} {text!r}: unknown word {word!r}; expected a comma list of "
                            f"{', '.join(SPEC_WORDS)}")
    return speed_from(**options)


def speed_option(text: str | None, flag: str = "--speed") -> Speed | None:
    """A front end's ``--speed`` value: None (the plain float32 path) for None or ``plain``, else
    :func:`parse_speed`."""
    return None if text is None or text.strip() == "plain" else parse_speed(text, flag)


def auto_options(device: str | torch.device = "cpu", flags: frozenset[str] | None = None) -> dict[str, Any]:
    """The options ``auto`` turns on for ``device`` (``flags``: the CPU's, read from /proc/cpuinfo when None).

    CPU: the threads this process may use (:func:`cpu_threads`) and, where the CPU computes bf16 natively
    (:func:`cpu_bf16_kind`), bf16 weights with the attention that measured fastest on that kind: on an AMD
    EPYC with AVX-512-BF16 the classic processor ("eager"), where a 25-step generate of the default model ran
    1.2x (1 image) to 1.4x (4 images) faster than stock diffusers in float32 (with SDPA in bf16 1.2x at 4
    images, with autocast over fp32 weights 1.05x at 1 image); on an AMX Xeon SDPA, 1.01x (1 image) and 1.25x
    (4 images) against the classic processor's 1.00x and 1.12x (BENCHMARKS.md). Left out because they did not
    pay for one generate: channels-last (slower in bf16 on the EPYC, 1.02x / 1.04x a forward on the Xeon) and
    ``torch.compile`` (its first call takes 45-100 s, more than a generate saves; add ``compile`` for a
    long-running process). Without native bf16, bf16 is emulated and slower than float32,
    so only the threads are set.
    CUDA: :meth:`Speed.fast` without compilation, in bf16 where the GPU computes it, else fp16 (not measured
    by this module's author; see docs/performance.md for the GPU options).
    """
    if torch.device(device).type == "cuda":
        half = "bf16" if torch.cuda.is_bf16_supported(including_emulation=False) else "fp16"
        return Speed.fast(dtype=half, compile=None).describe()
    options: dict[str, Any] = {"threads": cpu_threads()}
    kind = cpu_bf16_kind(flags)
    if kind is not None:
        options.update(dtype="bf16", attention="sdpa" if kind == "amx" else "eager")
    return options


def resolve_auto(speed: Speed, device: str | torch.device, flags: frozenset[str] | None = None) -> Speed:
    """``speed`` with ``auto`` replaced by :func:`auto_options` for ``device``; options given beside ``auto``
    win (``auto,fp32``: auto's threads and attention in float32). Without ``auto``, ``speed`` itself."""
    if not speed.auto:
        return speed
    given = {k: v for k, v in speed.describe().items() if k != "auto"}
    chosen = auto_options(device, flags)
    if given.get("fuse_qkv") and "attention" not in given:
        chosen.pop("attention", None)  # fused q/k/v runs SDPA
    if given.get("compile") == "reduce-overhead":
        chosen.pop("cuda_graph", None)  # that mode captures CUDA graphs itself
    return Speed(**{**chosen, **given})


def optimized(pipe, speed: Speed | None = None, **options) -> tuple[Speed, Any]:
    """What :meth:`Pipeline.optimize` applies: a :class:`Speed` value and/or its options as keywords
    (``dtype``, ``channels_last``, ``attention``, ``fuse_qkv``, ``compile``, ``compile_vae``, ``cuda_graph``,
    ``threads``; all off by default; ``auto=True``: what this machine supports, resolved for ``pipe``'s
    device), added to the options applied before (``pipe.speed``), applied to ``pipe`` in place
    (:func:`apply`; LoRA files and layout or segmentation checkpoints must be applied first). Returns (the
    options now in effect, the U-Net callable the denoiser should use). See docs/performance.md."""
    merged = resolve_auto(speed_from(speed, **options), pipe.device)
    if pipe.speed is not None:  # keep what was applied before; the new value adds to it
        merged = speed_from(pipe.speed, **merged.describe())
    return merged, apply(pipe, merged)


def apply(pipe, speed: Speed):
    """Apply ``speed`` to ``pipe``'s networks in place; return the U-Net callable the denoiser should use.
    ``auto`` must have been resolved (:func:`resolve_auto`; :meth:`Pipeline.optimize` does)."""
    if speed.auto:
        raise UserError("speed auto: resolve it for the pipeline's device first (Pipeline.optimize does)")
    if speed.cuda_graph and pipe.device.type != "cuda":
        raise UserError(f"speed cuda_graph needs a CUDA device; the pipeline is on {pipe.device.type}")
    if speed.threads is not None and torch.get_num_threads() != speed.threads:
        torch.set_num_threads(speed.threads)
    if speed.dtype is not None:
        pipe.to(dtype=DTYPES[speed.dtype])
    nets = [m for m in (pipe.unet, pipe.vae, pipe.controlnet, pipe.layout_controlnet) if m is not None]
    if speed.channels_last:
        for m in nets:
            m.to(memory_format=torch.channels_last)
    if speed.attention != "default":
        _set_attention(nets, speed.attention)
    if speed.fuse_qkv:
        for m in (pipe.unet, pipe.vae):
            if getattr(m, "original_attn_processors", None) is None:  # not fused yet
                m.fuse_qkv_projections()
    if speed.compile is not None:
        _compile(pipe.unet, speed.compile)
        if speed.compile_vae:
            _compile(pipe.vae.decoder, speed.compile)
    return GraphedUNet(pipe.unet) if speed.cuda_graph else pipe.unet


def _set_attention(nets, kind: str) -> None:
    """Set every attention processor to SDPA or eager; modules already so (or fused, which is SDPA) are
    left alone, so a compiled module is not invalidated by applying the same options again."""
    from diffusers.models.attention_processor import AttnProcessor, AttnProcessor2_0

    target = AttnProcessor2_0 if kind == "sdpa" else AttnProcessor
    for m in nets:
        if getattr(m, "original_attn_processors", None) is not None:  # fused q/k/v: SDPA already
            if kind != "sdpa":
                raise UserError(f"speed attention '{kind}': the q/k/v projections are fused (they need SDPA)")
            continue
        if any(type(p) is not target for p in m.attn_processors.values()):
            m.set_attn_processor(target())


def _compile(module: torch.nn.Module, mode: str) -> None:
    """``module.compile(mode=..., dynamic=False)`` in place (the module keeps its identity, attributes and state
    dict). Static shapes: sampling calls the U-Net with one shape per batch, and a new batch size gets its own
    specialised kernels instead of turning the first compiled graph into a slower dynamic-shape one."""
    done = getattr(module, "_latentdiff_compile_mode", None)
    if done == mode:
        return
    if done is not None:
        raise UserError(f"speed compile: the {type(module).__name__} is already compiled with mode '{done}'")
    if next(module.parameters()).device.type == "cpu":
        module.compile(dynamic=False)
        module._compiled_call_impl = _under_inductor_config(module, module._compiled_call_impl,
                                                            cpu_inductor_options(mode))
    else:
        module.compile(mode=mode, dynamic=False)
    module._latentdiff_compile_mode = mode


def _under_inductor_config(module: torch.nn.Module, call, options: dict[str, bool]):
    """``module``'s compiled ``call``, run with inductor's config patched by ``options`` while it may compile,
    and without dynamo's guard checks once its inputs are of a kind it has run before.

    Compilation happens inside the first calls, so that is where the settings must be in force; torch.compile's
    own ``options=`` did not switch freezing on (measured: 20.8 ms a forward and no packed weights, against
    14.3 ms with the config patched), and a process-wide setting would also freeze a training run's validation
    graphs, whose weights go on changing. Dynamo checks every compiled call's guards (each parameter's and
    input's properties) before it runs the graph: ~1-2 ms of a 10-13 ms U-Net forward on a 2-core AMX Xeon
    (BENCHMARKS.md). A call whose :func:`_call_key` (inputs' shapes, dtypes and strides, other arguments, grad
    and autocast modes, the module's training flag) was seen before runs under ``skip_guard_eval_unsafe``,
    which checks only the guards that tell the cached graphs apart; a new key takes the checked path (and
    compiles if it must). What the key does not see, a change to the module itself, is refused after
    compilation (:func:`apply` compiles last, and LoRA files are refused after optimize)."""
    import torch._inductor.config as inductor_config

    seen: set = set()

    def patched(*args, **kwargs):
        key = _call_key(module, args, kwargs)
        if key in seen:
            with torch.compiler.set_stance("default", skip_guard_eval_unsafe=True):
                return call(*args, **kwargs)
        with inductor_config.patch(options):
            out = call(*args, **kwargs)
        seen.add(key)
        return out

    return patched


def _call_key(module: torch.nn.Module, args: tuple, kwargs: dict) -> tuple:
    """What a static-shape compiled graph is specialised on in a call: each tensor's shape, dtype, stride,
    device and grad requirement, the values of other arguments (an object that is none of the plain kinds keys
    by identity, so it never matches another), the grad, inference and autocast modes, and ``module.training``."""
    def sig(v):
        if isinstance(v, torch.Tensor):
            return ("T", tuple(v.shape), v.dtype, v.stride(), v.device, v.requires_grad)
        if isinstance(v, (list, tuple)):
            return (type(v).__name__, *(sig(x) for x in v))
        if isinstance(v, dict):
            return ("D", *((k, sig(x)) for k, x in sorted(v.items(), key=lambda kv: str(kv[0]))))
        if v is None or isinstance(v, (bool, int, float, str)):
            return (type(v).__name__, v)
        return ("O", id(v))

    return (module.training, torch.is_grad_enabled(), torch.is_inference_mode_enabled(),
            torch.is_autocast_enabled("cpu"), sig(args), sig(kwargs))


def cpu_inductor_options(mode: str) -> dict[str, bool]:
    """Inductor options for an inference module on the CPU: weight freezing (weights folded in as constants,
    oneDNN's packed layouts made once instead of at every call) and the C++ wrapper (no Python between
    kernels); ``max-autotune`` modes add inductor's GEMM templates. On a 2-core AMX Xeon the bf16 U-Net of the
    default model ran 1.85x stock float32 compiled with freezing, 2.0x with the wrapper as well and 2.6x with
    max-autotune (BENCHMARKS.md, "On an AMX CPU"). Sampling runs without autograd, which freezing needs; the
    weights must not change afterwards (LoRA files are refused after optimize)."""
    options = {"freezing": True, "cpp_wrapper": True}
    if mode.startswith("max-autotune"):
        options["max_autotune"] = True
    return options


class _Captured:
    """One CUDA graph with its static inputs and output."""

    def __init__(self, graph, inputs: tuple[Tensor, ...], output: Tensor):
        self.graph, self.inputs, self.output = graph, inputs, output


class GraphedUNet:
    """Calls a U-Net as ``unet(x, t, encoder_hidden_states=ctx, return_dict=False)`` does, by replaying a
    CUDA graph of its forward captured for the inputs' shapes and dtypes (one graph per shape, all in one
    memory pool). The inputs are copied into the graph's static buffers, the whole forward replays as one
    launch, and the output is copied out (so it survives the next replay).

    Calls with other keyword arguments (ControlNet residuals, GLIGEN grounding) or with autograd on run
    the U-Net as it is. A graph reads the weights at the addresses it was captured with: when any weight
    has moved (``Pipeline.to``), every graph is dropped and captured again. (Weights changed in place are
    read as they are; LoRA files and checkpoints are refused after :meth:`Pipeline.optimize` anyway.)
    """

    def __init__(self, unet, warmup: int = 2):
        self.unet, self.warmup = unet, warmup
        self.graphs: dict[tuple, _Captured] = {}
        self.pool = None
        # Module.to() keeps the Parameter objects and swaps their storage, so the addresses can be read off
        # this list at every call (~0.2 ms for SD 1.5's 686 tensors; walking the modules would take 4 ms).
        self._params = list(unet.parameters())
        self._weights: tuple[int, ...] = ()  # the addresses the graphs read

    @property
    def dtype(self) -> torch.dtype:
        return self.unet.dtype

    def __call__(self, sample: Tensor, timestep: Tensor, encoder_hidden_states: Tensor, return_dict: bool = False,
                 **kwargs):
        if kwargs or return_dict or torch.is_grad_enabled() or not isinstance(timestep, Tensor):
            return self.unet(sample, timestep, encoder_hidden_states=encoder_hidden_states, return_dict=return_dict,
                             **kwargs)
        inputs = (sample, timestep, encoder_hidden_states)
        weights = tuple(w.data_ptr() for w in self._params)
        if weights != self._weights:  # moved (or first call): graphs of the old addresses would read freed memory
            self.graphs, self.pool, self._weights = {}, None, weights
        key = tuple((x.shape, x.dtype, x.device) for x in inputs)
        captured = self.graphs.get(key)
        if captured is None:
            captured = self.graphs[key] = self._capture(inputs)
        for static, x in zip(captured.inputs, inputs):
            static.copy_(x)
        captured.graph.replay()
        return (captured.output.clone(),)

    def _forward(self, x: Tensor, t: Tensor, ctx: Tensor) -> Tensor:
        return self.unet(x, t, encoder_hidden_states=ctx, return_dict=False)[0]

    def _capture(self, inputs: tuple[Tensor, ...]) -> _Captured:
        static = tuple(x.clone() for x in inputs)
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):  # warm up off the capture (cuDNN/cuBLAS choices, compilation)
            for _ in range(self.warmup):
                self._forward(*static)
        torch.cuda.current_stream().wait_stream(side)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph, pool=self.pool):
            output = self._forward(*static)
        self.pool = graph.pool()
        return _Captured(graph, static, output)


def cpu_flags() -> frozenset[str]:
    """The CPU feature flags the kernel reports (/proc/cpuinfo), empty where it cannot be read."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("flags"):
                    return frozenset(line.split(":", 1)[1].split())
    except OSError:
        pass
    return frozenset()


def cpu_model_name() -> str:
    """``lscpu``'s model name (/proc/cpuinfo's where lscpu is missing), else the platform's word."""
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True, check=True).stdout
        for line in out.splitlines():
            if line.startswith("Model name:"):
                return line.split(":", 1)[1].strip()
    except (OSError, subprocess.CalledProcessError):
        pass
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def cpu_threads() -> int:
    """The intra-op threads for this process: as many as the environment asks for (``OMP_NUM_THREADS`` or
    ``MKL_NUM_THREADS`` set: torch's current number, which follows them), else one per physical core among
    the CPUs the process may run on (its affinity), capped by a cgroup CPU quota (rounded down: one thread
    more than the quota gets the whole group throttled), which torch's own default does not follow (a
    container allowed 2 CPUs of a 64-core host would otherwise run a thread per host core)."""
    if os.environ.get("OMP_NUM_THREADS") or os.environ.get("MKL_NUM_THREADS"):
        return torch.get_num_threads()
    cpus = os.sched_getaffinity(0) if hasattr(os, "sched_getaffinity") else range(os.cpu_count() or 1)
    cores = len({_core_of(cpu) for cpu in cpus})
    quota = _cgroup_cpu_quota()
    return max(1, min(cores, math.floor(quota)) if quota is not None else cores)  # down: 1.5 CPUs is 1 thread


def _core_of(cpu: int) -> tuple[str, str] | int:
    """(package, core) of logical CPU ``cpu`` (hyperthreads of one core share it), else the CPU itself."""
    base = f"/sys/devices/system/cpu/cpu{cpu}/topology/"
    try:
        with open(base + "physical_package_id") as pkg, open(base + "core_id") as core:
            return pkg.read().strip(), core.read().strip()
    except OSError:
        return cpu


def _cgroup_cpu_quota() -> float | None:
    """CPUs' worth of time the process's cgroup may use (cgroup v2 ``cpu.max`` or v1 ``cfs_quota_us``), None
    when unlimited or unknown."""
    def read(path: str) -> list[str]:
        with open(path) as f:
            return f.read().split()

    for parts in (lambda: read("/sys/fs/cgroup/cpu.max"),  # v2: "<quota> <period>" or "max <period>"
                  lambda: read("/sys/fs/cgroup/cpu/cpu.cfs_quota_us") + read("/sys/fs/cgroup/cpu/cpu.cfs_period_us")):
        try:
            quota, period = parts()
            return None if quota in ("max", "-1") else int(quota) / int(period)
        except (OSError, ValueError):  # no such file, or not two numbers
            continue
    return None


def cpu_bf16_kind(flags: frozenset[str] | None = None) -> str | None:
    """How this CPU computes bf16 matrix products natively: "amx" (AMX-BF16 tiles), "avx512" (AVX-512-BF16
    dot products), or None (no native bf16: autocast to bf16 would emulate it and run slower than fp32)."""
    flags = cpu_flags() if flags is None else flags
    if "amx_bf16" in flags:
        return "amx"
    if "avx512_bf16" in flags:
        return "avx512"
    return None


def classic_attention(module: torch.nn.Module) -> int:
    """Give every diffusers attention layer inside ``module`` the classic processor (baddbmm + softmax +
    bmm) in place of SDPA, and return how many were changed. In bf16 autocast on a CPU it trains about
    twice as fast as SDPA, whose bf16 backward is slow there (bench/cpu_train.py); the maths is the same."""
    from diffusers.models.attention_processor import Attention, AttnProcessor

    layers = [m for m in module.modules() if isinstance(m, Attention) and not isinstance(m.processor, AttnProcessor)]
    for layer in layers:  # a classic processor already there (say, one that also keeps the maps) stays
        layer.set_processor(AttnProcessor())
    return len(layers)
