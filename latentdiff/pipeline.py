"""Text-to-image generation: prompt → conditions → guided denoiser → sampler → VAE decode.

>>> from latentdiff import Pipeline
>>> pipe = Pipeline.load(None)                 # the default model; or a folder / .safetensors path
>>> images = pipe.generate("a red circle", seed=0, num_images=4)

Nothing here re-implements a sampler: the U-Net and a :class:`~latentdiff.conditioning.Conditioning`
become a conditional model (:func:`~latentdiff.conditioning.unet_model`), classifier-free guidance wraps
it into a denoiser (:func:`~latentdiff.diffusion.guidance.classifier_free_guidance`) and
:func:`latentdiff.diffusion.sampling.sample` runs it.

Seeds: the images of a call are numbered k = 0, 1, … (prompt-major) and image k starts from noise drawn
on the CPU by its own generator seeded with ``seed + k`` — so a seed means the same start on any device
and an image does not depend on how many others are drawn with it. Each image's seed is in its record.

Prompts longer than the tokenizer's 77 tokens are truncated, as in Stable Diffusion, with a
:class:`PromptTruncatedWarning` naming the dropped words.

Limits: every call is bounded by ``pipe.limits`` (a :class:`latentdiff.limits.Limits`: image side, images
per call, steps, latent pixels per batch, prompt length), checked before any tensor is allocated; prompts
are checked as text before they reach the tokenizer. Front ends set ``pipe.limits`` from their flags.
"""
from __future__ import annotations

import math
import operator
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch
from torch import Tensor

from latentdiff.conditioning import Conditioning, unet_model
from latentdiff.diffusion.schedule import Schedule
from latentdiff.errors import UserError
from latentdiff.limits import DEFAULT_BATCH, MAX_SEED, Limits, check_int

DEFAULT_MODEL_DIR = Path(__file__).parent / "assets" / "default_model"
# Used when a model's latentdiff.json has no "generate_defaults"; DPM-Solver++(2M) converges in ~25 steps.
GENERATE_DEFAULTS = {"sampler": "dpm++", "steps": 25, "guidance": 4.0}
MAX_BATCH = DEFAULT_BATCH  # images per forward pass unless batch_size says otherwise (or they exceed the limits)
# Keys of a model's scheduler config that shape the timestep grid; passed to every sampler that takes them.
SCHEDULER_KEYS = ("timestep_spacing", "steps_offset", "set_alpha_to_one")


class PromptTruncatedWarning(UserWarning):
    """A prompt was longer than the text encoder's context and its end was dropped."""


@dataclass(frozen=True)
class Row:
    """One image to draw: its prompt, negative prompt and seed."""

    prompt: str
    negative_prompt: str
    seed: int


def resolve_device(device: str | torch.device | None) -> torch.device:
    """'auto' → cuda when available, else cpu; 'cpu', 'cuda', 'cuda:N' as given."""
    if device is None or str(device) == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    name = str(device)
    if name != "cpu" and not name.startswith("cuda"):
        raise UserError(f"--device {name}: expected cpu, cuda or auto")
    try:
        dev = torch.device(name)
    except RuntimeError:
        raise UserError(f"--device {name}: expected cpu, cuda or auto") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise UserError(f"--device {name}: CUDA is not available on this machine")
    return dev


def schedule_from_scheduler_config(cfg: dict) -> Schedule:
    """The :class:`Schedule` a diffusers scheduler config describes (trained_betas, or beta_schedule with
    beta_start/beta_end; zero-terminal-SNR rescaling applied as diffusers does)."""
    from latentdiff.config import ScheduleConfig

    kinds = {"linear": "linear", "scaled_linear": "scaled_linear", "squaredcos_cap_v2": "cosine"}
    name = cfg.get("beta_schedule", "linear")
    prediction = cfg.get("prediction_type", "epsilon")
    if cfg.get("trained_betas") is not None:
        betas = torch.tensor(cfg["trained_betas"], dtype=torch.float32).double()
        schedule = Schedule.from_betas(betas, kinds.get(name, "custom"), prediction)
    elif name in kinds:
        schedule = Schedule.from_config(ScheduleConfig(
            kind=kinds[name], num_timesteps=int(cfg.get("num_train_timesteps", 1000)),
            beta_start=float(cfg.get("beta_start", 1e-4)), beta_end=float(cfg.get("beta_end", 0.02)),
            prediction=prediction))
    else:
        raise UserError(f"scheduler config: unsupported beta_schedule '{name}'")
    if cfg.get("rescale_betas_zero_snr"):
        from diffusers.schedulers.scheduling_ddim import rescale_zero_terminal_snr

        schedule = Schedule.from_betas(rescale_zero_terminal_snr(schedule.betas).double(), schedule.kind, prediction)
    return schedule


def scheduler_config_from_schedule(schedule: Schedule) -> dict:
    """A DDIM scheduler config carrying the schedule's exact betas (trained_betas), so diffusers and
    latentdiff step through identical ᾱ_t."""
    from latentdiff.diffusion.sampling import make_scheduler

    cfg = dict(make_scheduler("ddim", schedule, prediction_type=schedule.prediction).config)
    names = {"linear": "linear", "scaled_linear": "scaled_linear", "cosine": "squaredcos_cap_v2"}
    cfg["beta_schedule"] = names.get(schedule.kind, "linear")  # informative; trained_betas wins
    cfg["trained_betas"] = [float(b) for b in schedule.betas.tolist()]
    cfg["_class_name"] = "DDIMScheduler"
    # Unused by "trailing" spacing; 1 keeps StableDiffusionPipeline from warning about (and rewriting) it.
    cfg["steps_offset"] = 1
    return cfg


class Pipeline:
    """A text-to-image latent diffusion model ready to sample.

    Attributes: ``unet``, ``vae``, ``text_encoder``, ``tokenizer``, ``schedule`` (:class:`Schedule`),
    ``scheduler_config`` (dict, the model's ``scheduler_config.json``), ``vae_scale_factor`` (int),
    ``scaling_factor`` (float, latents = scaling_factor · VAE mean), ``device``, ``dtype``, ``name``,
    ``path`` (None for an in-memory model), ``defaults`` (sampler, steps, guidance) and ``speed`` (the
    :class:`~latentdiff.speed.Speed` options applied by :meth:`optimize`, None for the plain path).
    """

    def __init__(self, unet, vae, text_encoder, tokenizer, schedule: Schedule,
                 scheduler_config: dict | None = None, *, name: str = "in-memory", path: Path | None = None,
                 weight_files: Sequence[Path] = (), extra: dict | None = None, is_default: bool = False):
        self.unet, self.vae, self.text_encoder, self.tokenizer = unet, vae, text_encoder, tokenizer
        self.schedule = schedule
        self.scheduler_config = dict(scheduler_config) if scheduler_config else scheduler_config_from_schedule(schedule)
        self.vae_scale_factor = 2 ** (len(vae.config.block_out_channels) - 1)
        self.scaling_factor = float(vae.config.scaling_factor)
        self.name, self.path, self.is_default = name, path, is_default
        self.weight_files = [Path(f) for f in weight_files]
        self.extra = dict(extra or {})
        self.defaults = {**GENERATE_DEFAULTS, **self.extra.get("generate_defaults", {})}
        self._sha256: str | None = None
        self._overrides: dict = {}
        self._loras: list[dict] = []
        self.controlnet = None  # a segmentation ControlNet (attach_segmap), or None
        self.layout_controlnet = None  # a layout ControlNet (attach_layout), or None: GLIGEN or no layout
        self.layout_slots = 0  # boxes the layout checkpoint takes (attach_layout); 0: no layout conditioning
        self.layout_scale = 1.0  # the layout checkpoint's default guidance scale (its condition.json), else 1
        self.region_guidance = None  # its text guidance for region phrases (condition.json), else the model's
        self.regional_text = 0.0  # its share of a layout box's text that is the box's phrase alone (condition.json)
        self.spatial_paths: dict[str, str] = {}  # "layout" / "segmap" -> checkpoint folder
        self.speed = None  # Speed options applied by optimize()
        self.limits = Limits()  # what one call may ask for (latentdiff.limits); front ends set their own
        self._unet_call = None  # what the denoiser calls in place of self.unet once optimized

    # --- construction -----------------------------------------------------------------------------

    @classmethod
    def from_components(cls, unet, vae, text_encoder, tokenizer, schedule: Schedule,
                        scheduler_config: dict | None = None) -> "Pipeline":
        """Wrap in-memory models (for example during training); nothing is copied or moved."""
        return cls(unet, vae, text_encoder, tokenizer, schedule, scheduler_config)

    @classmethod
    def load(cls, path: str | Path | None = None, device: str | torch.device = "auto",
             dtype: torch.dtype | None = None, *, config: str | Path | None = None,
             allow_unsafe_pickle: bool = False) -> "Pipeline":
        """Load a model: None for the default model, a diffusers folder, or a single LDM checkpoint file
        (``config`` names its component configs when they are not embedded; see
        :mod:`latentdiff.interop`). ``dtype`` defaults to float32."""
        from latentdiff.interop import load_components

        dev = resolve_device(device)
        is_default = path is None
        if is_default:
            path = DEFAULT_MODEL_DIR
            if not (path / "model_index.json").is_file():
                raise UserError(f"no default model is installed (expected {path}); pass --model PATH "
                                f"(a diffusers folder or a .safetensors checkpoint)")
        comps = load_components(path, config=config, allow_unsafe_pickle=allow_unsafe_pickle)
        schedule = schedule_from_scheduler_config(comps.scheduler_config)
        pipe = cls(comps.unet, comps.vae, comps.text_encoder, comps.tokenizer, schedule, comps.scheduler_config,
                   name=comps.name, path=comps.path, weight_files=comps.weight_files, extra=comps.extra,
                   is_default=is_default)
        for m in (pipe.unet, pipe.vae, pipe.text_encoder):
            m.eval().requires_grad_(False)
        return pipe.to(dev, dtype or torch.float32)

    def to(self, device: str | torch.device | None = None, dtype: torch.dtype | None = None) -> "Pipeline":
        """Move the networks (in place) to ``device`` and/or ``dtype``."""
        from latentdiff.quiet import quiet_libraries

        with quiet_libraries():  # diffusers warns about fp32-pinned modules even when there are none
            for m in (self.unet, self.vae, self.text_encoder, self.controlnet, self.layout_controlnet):
                if m is not None:
                    m.to(device=device, dtype=dtype)
        return self

    def optimize(self, speed=None, **options) -> "Pipeline":
        """Make inference faster in place: a :class:`~latentdiff.speed.Speed` value and/or its options as
        keywords (``dtype``, ``channels_last``, ``attention``, ``fuse_qkv``, ``compile``, ``compile_vae``,
        ``cuda_graph``, ``threads``; all off by default; ``auto=True``: what this machine supports, resolved
        here for the pipeline's device), added to any applied before. Apply LoRA files and layout or
        segmentation checkpoints first. See :mod:`latentdiff.speed` and docs/performance.md."""
        from latentdiff.speed import apply, resolve_auto, speed_from

        merged = resolve_auto(speed_from(speed, **options), self.device)
        if self.speed is not None:  # keep what was applied before; the new value adds to it
            merged = speed_from(self.speed, **merged.describe())
        self._unet_call = apply(self, merged)
        self.speed = merged
        return self

    def _check_not_optimized(self, what: str) -> None:
        if self.speed is not None:
            raise UserError(f"{what} after Pipeline.optimize: apply it first, then optimize")

    @property
    def device(self) -> torch.device:
        return self.unet.device

    @property
    def dtype(self) -> torch.dtype:
        return self.unet.dtype

    @property
    def weights_sha256(self) -> str:
        """SHA-256 of the loaded weight files (see :func:`latentdiff.provenance.weights_hash`)."""
        if self._sha256 is None:
            from latentdiff.provenance import weights_hash

            self._sha256 = weights_hash(self.weight_files, self.path if self.path and self.path.is_dir() else None) \
                if self.weight_files else "unsaved"
        return self._sha256

    def save(self, path: str | Path) -> Path:
        """Write a diffusers folder that ``StableDiffusionPipeline.from_pretrained(path, safety_checker=None)``
        and :meth:`load` read."""
        from latentdiff.interop import save_diffusers

        return save_diffusers(path, self.unet, self.vae, self.text_encoder, self.tokenizer, self.scheduler_config,
                              self.extra or None)

    def export_single_file(self, path: str | Path, text_layout: str = "auto") -> tuple[Path, Path]:
        """Write one .safetensors in the original LDM layout plus its diffusers config folder."""
        from latentdiff.interop import export_single_file

        return export_single_file(path, self.unet, self.vae, self.text_encoder, self.tokenizer,
                                  self.scheduler_config, self.extra or None, text_layout)

    def load_loras(self, specs: Sequence[tuple[str | Path, float]]) -> "Pipeline":
        """Apply LoRA files, each ``(path, scale)``, on top of those already applied (see
        :mod:`latentdiff.lora`; the files diffusers' ``load_lora_weights`` reads). They are recorded in each
        image's provenance, and ``replay`` applies them again."""
        from latentdiff.lora import activate, load_loras

        self._check_not_optimized("LoRA files")
        self._loras += load_loras(self.unet, self.text_encoder, [(Path(p), float(s)) for p, s in specs])
        activate(self.unet, self.text_encoder, self._loras)
        return self

    def attach_layout(self, folder: str | Path) -> "Pipeline":
        """Attach the layout checkpoint in ``folder``: a layout ControlNet (its ``condition.json`` says so;
        :mod:`latentdiff.models.control`), or GLIGEN's gated layers, which make the U-Net a gated one (see
        :mod:`latentdiff.models.gligen`; attach those before applying LoRA files)."""
        from latentdiff.models.control import layout_controlnet_config
        from latentdiff.models.gligen import MAX_BOXES, load_gligen

        self._check_not_optimized("a layout checkpoint")
        cfg = layout_controlnet_config(folder)
        if cfg is not None:
            share = cfg.get("regional_text", 0.0)
            if isinstance(share, bool) or not isinstance(share, (int, float)) or not 0.0 <= share <= 1.0:
                raise UserError(f"{Path(folder) / 'condition.json'}: regional_text {share!r}: expected a share in "
                                "[0, 1]")
            want = self.text_encoder.config.hidden_size + 1
            self.layout_controlnet = self._load_controlnet(folder, want, "layout ControlNet",
                                                           f"this model's text encoder needs {want}")
            self.layout_scale = float(cfg.get("layout_scale", 1.0))
            g = cfg.get("region_guidance")
            self.region_guidance = None if g is None else float(g)
            self.regional_text = float(share)
        else:
            if self._loras:
                raise UserError("attach the layout checkpoint before applying LoRA files")
            self.unet, cfg = load_gligen(self.unet, folder)
            self.layout_controlnet, self.layout_scale = None, 1.0  # GLIGEN replaces a layout ControlNet
            self.region_guidance, self.regional_text = None, 0.0
        self.layout_slots = int(cfg.get("max_boxes", MAX_BOXES))
        self.spatial_paths["layout"] = str(Path(folder).resolve())
        return self

    def attach_segmap(self, folder: str | Path) -> "Pipeline":
        """Attach the segmentation ControlNet saved in ``folder`` (see :mod:`latentdiff.models.control`)."""
        from latentdiff.models.control import NUM_CLASSES, layout_controlnet_config

        self._check_not_optimized("a segmentation checkpoint")
        if layout_controlnet_config(folder) is not None:
            raise UserError(f"{folder}: is a layout ControlNet; pass it as the layout checkpoint (--layout-model)")
        self.controlnet = self._load_controlnet(folder, NUM_CLASSES, "ControlNet", f"a segmentation ControlNet "
                                                f"takes {NUM_CLASSES} (the one-hot class map)")
        self.spatial_paths["segmap"] = str(Path(folder).resolve())
        return self

    def _load_controlnet(self, folder: str | Path, channels: int, what: str, expected: str):
        """A saved ControlNet that fits this model's U-Net and takes ``channels`` input channels (else a
        one-line error: "{folder}: {what} takes N input channels; {expected}"), on the pipeline's device."""
        from latentdiff.models.control import load_fitting_controlnet

        # loaded in self.dtype (a later .to(dtype) warns); the U-Net is on self.device
        return load_fitting_controlnet(folder, self.unet, channels, self.dtype,
                                       lambda n: UserError(f"{folder}: {what} takes {n} input channels; {expected}"))

    @property
    def loras(self) -> list[dict]:
        """The LoRA files applied: ``[{"path", "scale", "sha256"}, ...]``."""
        return [{k: e[k] for k in ("path", "scale", "sha256")} for e in self._loras]

    # --- conditions ---------------------------------------------------------------------------------

    @property
    def max_length(self) -> int:
        return int(self.text_encoder.config.max_position_embeddings)

    def _warn_if_truncated(self, prompt: str) -> None:
        ids = self.tokenizer(prompt, add_special_tokens=False, verbose=False).input_ids
        keep = self.max_length - 2  # <|startoftext|> … <|endoftext|>
        if len(ids) > keep:
            dropped = self.tokenizer.decode(ids[keep:]).strip()
            warnings.warn(f"prompt is longer than {self.max_length} tokens; dropped {len(ids) - keep} tokens: "
                          f"'{dropped}'", PromptTruncatedWarning, stacklevel=4)

    @torch.inference_mode()
    def encode_prompt(self, prompts: list[str]) -> Tensor:
        """The text encoder's last hidden state for each prompt, as Stable Diffusion: (B, 77, D).

        Tokens are padded to 77 with the tokenizer's pad token and truncated past 77 (with a warning). Each
        prompt is checked as text first (:func:`latentdiff.limits.check_text`)."""
        for p in dict.fromkeys(prompts):
            self.limits.check_text(p, "prompt")
            self._warn_if_truncated(p)
        tok = self.tokenizer(list(prompts), padding="max_length", max_length=self.max_length, truncation=True,
                             return_tensors="pt")
        ids = tok.input_ids.to(self.text_encoder.device)  # (B, 77)
        mask = None
        if getattr(self.text_encoder.config, "use_attention_mask", False):
            mask = tok.attention_mask.to(ids.device)
        return self.text_encoder(ids, attention_mask=mask)[0]  # (B, 77, D)

    def conditioning(self, prompts: list[str]) -> Conditioning:
        """One :class:`Conditioning` row per prompt; each distinct text is encoded once."""
        unique = list(dict.fromkeys(prompts))
        ctx = self.encode_prompt(unique)  # (U, 77, D)
        return Conditioning(context=ctx).index([unique.index(p) for p in prompts])

    # --- generation ---------------------------------------------------------------------------------

    def initial_latents(self, seeds: Sequence[int], height: int, width: int,
                        generators: list[torch.Generator] | None = None) -> Tensor:
        """x_T for each seed: (B, C, H/f, W/f) float32 on ``self.device``, drawn on the CPU by one generator
        per image (``generators``, or fresh ones seeded with ``seeds``)."""
        from latentdiff.diffusion.sampling import randn

        gens = generators or self.generators(seeds)
        return randn(self.latent_shape(len(seeds), height, width), gens, device=self.device)

    def latent_shape(self, batch: int, height: int, width: int) -> tuple[int, int, int, int]:
        """(B, C, H/f, W/f): the shape of x_T for images of height × width."""
        return (batch, self.unet.config.in_channels - self._concat_channels(),
                height // self.vae_scale_factor, width // self.vae_scale_factor)

    @staticmethod
    def generators(seeds: Sequence[int]) -> list[torch.Generator]:
        """One CPU generator per image, seeded with that image's seed."""
        return [torch.Generator("cpu").manual_seed(int(s)) for s in seeds]

    def _concat_channels(self) -> int:
        """Input channels of the U-Net beyond x_t: 0 for text-to-image, 1 + C for inpainting (mask + latents)."""
        return self.unet.config.in_channels - self.unet.config.out_channels

    @property
    def latent_channels(self) -> int:
        return int(self.unet.config.out_channels)

    @property
    def is_inpainting(self) -> bool:
        """Whether the U-Net takes diffusers' inpainting inputs: x_t, the mask and masked-image latents."""
        return self._concat_channels() == self.latent_channels + 1

    def sampler_overrides(self, sampler: str) -> dict:
        """The model's timestep-grid settings (``SCHEDULER_KEYS``) that sampler ``sampler`` accepts."""
        import inspect

        from latentdiff.diffusion.sampling import make_scheduler

        if sampler == "ddpm":
            return {}
        key = (sampler, tuple((k, repr(self.scheduler_config.get(k))) for k in SCHEDULER_KEYS))
        if key not in self._overrides:
            accepted = inspect.signature(type(make_scheduler(sampler, self.schedule)).__init__).parameters
            self._overrides[key] = {k: self.scheduler_config[k] for k in SCHEDULER_KEYS
                                    if k in self.scheduler_config and k in accepted}
        return dict(self._overrides[key])

    def make_scheduler(self, sampler: str):
        """The diffusers scheduler object our sampler ``sampler`` runs (for comparisons with diffusers)."""
        from latentdiff.diffusion.sampling import make_scheduler

        return make_scheduler(sampler, self.schedule, **self.sampler_overrides(sampler))

    @property
    def native_size(self) -> int:
        """The side in pixels the model draws by default: the U-Net's sample size × the VAE factor."""
        size = self.unet.config.sample_size * self.vae_scale_factor
        return size[0] if isinstance(size, (list, tuple)) else size

    def resolve(self, steps=None, guidance=None, sampler=None, height=None, width=None) -> dict[str, Any]:
        """Fill unset options from the model's defaults and check them (a :class:`UserError` names the bad
        value)."""
        from latentdiff.diffusion.sampling import SAMPLERS

        steps = self.defaults["steps"] if steps is None else steps
        guidance = self.defaults["guidance"] if guidance is None else guidance
        sampler = self.defaults["sampler"] if sampler is None else sampler
        size = self.native_size
        height, width = height or size, width or size
        if sampler not in SAMPLERS:
            raise UserError(f"unknown sampler '{sampler}'; expected one of {', '.join(SAMPLERS)}")
        if isinstance(steps, bool) or not isinstance(steps, int) or not 1 <= steps <= self.schedule.num_timesteps:
            raise UserError(f"steps {steps!r}: expected an integer in 1..{self.schedule.num_timesteps}")
        if isinstance(guidance, bool) or not isinstance(guidance, (int, float)) or not math.isfinite(guidance):
            raise UserError(f"guidance {guidance!r}: expected a finite number")
        for name, v in (("height", height), ("width", width)):
            if isinstance(v, bool) or not isinstance(v, int) or v <= 0 or v % self.vae_scale_factor:
                raise UserError(f"{name} {v!r}: expected a positive multiple of {self.vae_scale_factor} "
                                f"(the VAE's downscale factor)")
            self.limits.check_side(name, v)
        self.limits.check_steps(steps)
        return dict(steps=steps, guidance=float(guidance), sampler=sampler, height=height, width=width)

    def plan(self, prompt: str | list[str], negative_prompt: str | list[str] | None, num_images: int,
             seed: int) -> list[Row]:
        """The images of a call: each prompt ``num_images`` times (prompt-major), image k with seed + k.
        Checks the prompts as text and the number of images against ``self.limits`` first."""
        prompts = [prompt] if isinstance(prompt, str) else list(prompt)
        negs = negative_prompt if isinstance(negative_prompt, (list, tuple)) else [negative_prompt or ""] * len(prompts)
        if len(negs) != len(prompts):
            raise UserError(f"got {len(negs)} negative prompts for {len(prompts)} prompts")
        if isinstance(num_images, bool) or not isinstance(num_images, int) or num_images < 1:
            raise UserError(f"num_images {num_images!r}: expected a positive integer")
        self.limits.check_images(num_images, prompts=len(prompts))
        for name, texts in (("prompt", prompts), ("negative_prompt", negs)):
            for text in texts:
                self.limits.check_text(text, name)
        try:
            seed = operator.index(seed)
        except TypeError:
            raise UserError(f"seed {seed!r}: expected a whole number") from None
        check_int(seed, "seed", 0, MAX_SEED - (len(prompts) * num_images - 1))  # the last image's seed fits too
        pairs = [(p, n) for p, n in zip(prompts, negs) for _ in range(num_images)]
        return [Row(p, n, int(seed) + k) for k, (p, n) in enumerate(pairs)]

    @torch.inference_mode()
    def sample_rows(self, rows: Sequence[Row], *, steps: int, guidance: float, sampler: str, height: int,
                    width: int, progress: bool = False, latents: Tensor | None = None,
                    device: torch.device | None = None, dtype: torch.dtype | None = None,
                    inpaint=None, guide=None, spatial=None) -> Tensor:
        """Draw one batch: conditions → guided denoiser → sampler. Returns latents x_0 (B, C, h, w) fp32.
        ``latents`` replaces the seeded x_T; ``device``/``dtype`` (the U-Net's) are looked up when not given.
        ``inpaint`` (a :class:`latentdiff.inpaint.InpaintBatch`) adds the inpainting conditions, start and
        step hook; an inpainting U-Net without it repaints the whole image (text-to-image).
        ``guide`` (for example a :class:`~latentdiff.models.classifier.ClassifierGuide`) wraps the denoiser
        once more: ``guide.wrap(denoiser, schedule)``. ``spatial`` (a :class:`latentdiff.layout.Spatial`)
        adds layout and segmentation routes, guided with the nested multi-condition formula."""
        from dataclasses import replace

        from latentdiff.diffusion.guidance import classifier_free_guidance
        from latentdiff.diffusion.sampling import randn, sample

        self.check_batch(len(rows), steps, height, width)  # before any tensor is allocated
        device, dtype = device or self.device, dtype or self.dtype
        gens = self.generators([r.seed for r in rows])  # the same generators draw x_T and any later noise
        x_T = randn(self.latent_shape(len(rows), height, width), gens, device=device)
        if latents is not None:
            x_T = latents.to(device=device, dtype=torch.float32)
        cond = self.conditioning([r.prompt for r in rows])
        uncond = self.conditioning([r.negative_prompt for r in rows]) if guidance != 1.0 else None
        if self._concat_channels():
            from latentdiff.inpaint import whole_image_concat

            concat = inpaint.concat if inpaint is not None else whole_image_concat(self, len(rows), height, width)
            cond = replace(cond, concat=concat)
            uncond = None if uncond is None else replace(uncond, concat=concat)
        extra = {}
        if inpaint is not None:
            x_T, extra = inpaint.sampling(x_T, self.schedule, sampler, steps, self.sampler_overrides(sampler))
        unet = self.unet if self._unet_call is None else self._unet_call
        model = unet_model(unet, self.schedule, dtype=dtype, controlnet=self.controlnet,
                           layout_controlnet=self.layout_controlnet)
        if spatial is not None and (spatial.layout is not None or spatial.segmap is not None):
            from latentdiff.diffusion.guidance import nested_guidance
            from latentdiff.layout import guidance_chain

            self._check_spatial(spatial, height, width)
            denoiser = nested_guidance(model, *guidance_chain(self, spatial, cond, uncond, guidance, (height, width)))
        else:
            denoiser = classifier_free_guidance(model, cond, uncond, guidance)
        if guide is not None:
            guide.check(self.schedule, x_T.shape[1])
            denoiser = guide.wrap(denoiser, self.schedule)
        return sample(denoiser, self.schedule, x_T, sampler=sampler, steps=steps, generator=gens,
                      progress=progress, scheduler_config=self.sampler_overrides(sampler), **extra)

    def check_batch(self, batch: int, steps: int, height: int, width: int, recorded: bool = False) -> None:
        """One forward batch within ``self.limits``: its size, its steps and its latent pixels (``recorded``: a
        record's batch, which cannot be split)."""
        self.limits.check_images(batch, "batch_size")
        self.limits.check_steps(steps)
        self.limits.check_size(height, width)
        self.limits.check_batch(batch, height, width, self.vae_scale_factor, suggest=not recorded)

    def batch_size(self, height: int, width: int, wanted: int | None = None) -> int:
        """Images per forward pass: ``wanted`` when given (checked when drawn), else up to ``MAX_BATCH`` as
        ``self.limits.max_batch_pixels`` allows at this size."""
        return wanted or self.limits.batch_size(height, width, self.vae_scale_factor, MAX_BATCH)

    def _check_spatial(self, spatial, height: int, width: int) -> None:
        if spatial.layout is not None and not self.layout_slots:
            raise UserError("this model has no layout checkpoint (layout_controlnet/ or gligen/); pass "
                            "--layout-model DIR")
        if spatial.layout is not None and len(spatial.layout) > self.layout_slots:
            raise UserError(f"{len(spatial.layout)} layout boxes; this model supports at most {self.layout_slots}")
        if spatial.segmap is not None and self.controlnet is None:
            raise UserError("this model has no segmentation ControlNet (controlnet/); pass --segmap-model DIR")
        if spatial.segmap is not None and spatial.segmap.shape != (height, width):
            raise UserError(f"segmentation map of size {spatial.segmap.shape[1]}x{spatial.segmap.shape[0]}; the "
                            f"image is {width}x{height}")

    @torch.inference_mode()
    def decode_latents(self, latents: Tensor) -> np.ndarray:
        """VAE-decode latents (B, C, h, w) to uint8 images (B, H, W, 3): x = D(z / scaling_factor), then
        [−1, 1] → [0, 255] rounded, exactly as diffusers' image processor."""
        x = self.vae.decode(latents.to(self.vae.device, self.vae.dtype) / self.scaling_factor, return_dict=False)[0]
        x = (x.float() / 2 + 0.5).clamp(0, 1).permute(0, 2, 3, 1).cpu().numpy()  # (B, H, W, 3) in [0, 1]
        return (x * 255).round().astype(np.uint8)

    def generate_latents(self, prompt: str | list[str], negative_prompt: str | list[str] | None = None,
                         num_images: int = 1, steps: int | None = None, guidance: float | None = None,
                         sampler: str | None = None, seed: int = 0, height: int | None = None,
                         width: int | None = None, progress: bool = False,
                         batch_size: int | None = None, guide=None) -> Tensor:
        """Latents x_0 of every image of the call (N, C, h, w), drawn in batches of ``batch_size``."""
        opts = self.resolve(steps, guidance, sampler, height, width)
        rows = self.plan(prompt, negative_prompt, num_images, seed)
        bs = self.batch_size(opts["height"], opts["width"], batch_size)
        self.check_batch(min(bs, len(rows)), opts["steps"], opts["height"], opts["width"])
        return torch.cat([self.sample_rows(rows[i:i + bs], progress=progress, guide=guide, **opts)
                          for i in range(0, len(rows), bs)])

    def text_guidance(self, guidance: float | None, spatial=None) -> float | None:
        """The text guidance a call asks for: ``guidance`` when given; for region phrases (a layout bound from
        the prompt to the map, :mod:`latentdiff.regions`) the layout checkpoint's ``region_guidance`` when it
        has one; else None, the model's default."""
        if guidance is None and spatial is not None and spatial.region_phrases:
            return self.region_guidance
        return guidance

    def regional_share(self, share: float | None, layout) -> float:
        """The share of each layout box's text that is its phrase alone (regional text,
        :func:`latentdiff.layout.region_weights`) for a call with ``layout`` (None: no layout, so 0):
        ``share`` when given, else the layout checkpoint's ``regional_text`` (0 when it has none)."""
        if layout is None:
            return 0.0
        return self.regional_text if share is None else float(share)

    def generate(self, prompt: str | list[str], negative_prompt: str | list[str] | None = None,
                 num_images: int = 1, steps: int | None = None, guidance: float | None = None,
                 sampler: str | None = None, seed: int = 0, height: int | None = None, width: int | None = None,
                 progress: bool = False, batch_size: int | None = None, guide=None, spatial=None) -> list:
        """Generate images (PIL). Unset options come from the model's defaults (``self.defaults``: dpm++,
        25 steps, guidance 4.0 unless the model's latentdiff.json says otherwise) and its native size.

        Image k of the call uses seed + k; each image's provenance record (a JSON string, see
        :mod:`latentdiff.provenance`) is in ``image.info["latentdiff"]``. ``guide``: classifier guidance
        (:class:`~latentdiff.models.classifier.ClassifierGuide`), described in the record's ``extra``.
        ``spatial``: layout and/or segmentation map (:class:`latentdiff.layout.Spatial`), needing
        :meth:`attach_layout` / :meth:`attach_segmap`.
        """
        from PIL import Image

        opts = self.resolve(steps, self.text_guidance(guidance, spatial), sampler, height, width)
        rows = self.plan(prompt, negative_prompt, num_images, seed)
        bs = self.batch_size(opts["height"], opts["width"], batch_size)
        self.check_batch(min(bs, len(rows)), opts["steps"], opts["height"], opts["width"])  # before any work
        where = dict(device=self.device, dtype=self.dtype)  # diffusers' .dtype walks every module: ask once
        images = []
        for start in range(0, len(rows), bs):
            batch = rows[start:start + bs]
            pixels = self.decode_latents(self.sample_rows(batch, progress=progress, guide=guide, spatial=spatial,
                                                          **opts, **where))
            for i, px in enumerate(pixels):
                img = Image.fromarray(px)
                record = self._record_spatial(self.record(batch, i, **opts, **where, guide=guide), spatial)
                img.info["latentdiff"] = record.to_json()
                images.append(img)
        return images

    def _record_spatial(self, record, spatial):
        """``record`` with the layout / map it was drawn with and the checkpoints used, in ``extra``."""
        if spatial is not None:
            record.extra.update(spatial.describe())
            record.extra["spatial_checkpoints"] = dict(self.spatial_paths)
        return record

    def inpaint(self, prompt: str | list[str], image, mask=None, **kwargs) -> list:
        """Repaint ``image`` where ``mask`` is white: see :func:`latentdiff.inpaint.inpaint` (modes model |
        blend | auto, strength, mask_blur, resample, mask_from_alpha and the options of :meth:`generate`)."""
        from latentdiff.inpaint import inpaint

        return inpaint(self, prompt, image, mask, **kwargs)

    def record(self, batch: Sequence[Row], index: int, *, steps, guidance, sampler, height, width,
               device: torch.device | None = None, dtype: torch.dtype | None = None, guide=None):
        """The provenance :class:`~latentdiff.provenance.Record` of row ``index`` of ``batch``."""
        from latentdiff import __version__
        from latentdiff.provenance import Record

        row = batch[index]
        device, dtype = device or self.device, dtype or self.dtype
        prompts = [r.prompt for r in batch]
        negs = [r.negative_prompt for r in batch]
        return Record(
            prompt=row.prompt, negative_prompt=row.negative_prompt, seed=row.seed, sampler=sampler, steps=steps,
            guidance=guidance, height=height, width=width, model_name=self.name,
            model_path=None if self.is_default or self.path is None else str(self.path),
            model_sha256=self.weights_sha256, device=device.type, dtype=str(dtype).removeprefix("torch."),
            latentdiff_version=__version__, batch_seed=batch[0].seed, batch_size=len(batch), batch_index=index,
            batch_prompts=None if len(set(prompts)) == 1 else prompts,
            batch_negative_prompts=None if len(set(negs)) == 1 else negs, loras=self.loras or None,
            extra={**({"classifier_guidance": guide.describe()} if guide is not None else {}),
                   **({"speed": self.speed.describe()} if self.speed is not None else {})},
        )

    def replay(self, record, guide=None, segmap=None) -> Any:
        """Regenerate the image a record describes: redraw its batch and return its row. An image made with
        classifier guidance needs its ``guide`` (the CLI rebuilds it from the record); one made with a
        layout or a segmentation map needs those checkpoints attached, and the map itself as ``segmap``
        ((H, W) class ids, checked against the recorded hash); the boxes and scales come from the record."""
        from PIL import Image

        from latentdiff.layout import recorded_spatial

        spatial = recorded_spatial(record, segmap)
        if "inpaint" in record.extra:
            raise UserError("an inpainted image: replay cannot redraw it without the input image and mask; "
                            "run latentdiff inpaint again with the settings in its record")
        self._apply_recorded_loras(record.loras or [])
        n = record.batch_size
        self.limits.check_images(n, "batch_size")  # before the rows are built (read_record checks it too)
        prompts = record.batch_prompts or [record.prompt] * n
        negs = record.batch_negative_prompts or [record.negative_prompt] * n
        if len(prompts) != n or len(negs) != n or not 0 <= record.batch_index < n:
            raise UserError("the latentdiff record's batch fields are inconsistent")
        rows = [Row(p, q, record.batch_seed + i) for i, (p, q) in enumerate(zip(prompts, negs))]
        if "classifier_guidance" in record.extra and guide is None:
            raise UserError("the image was made with classifier guidance; replay needs its classifier")
        opts = self.resolve(record.steps, record.guidance, record.sampler, record.height, record.width)
        self.check_batch(n, opts["steps"], opts["height"], opts["width"], recorded=True)
        pixels = self.decode_latents(self.sample_rows(rows, guide=guide, spatial=spatial, **opts))
        img = Image.fromarray(pixels[record.batch_index])
        img.info["latentdiff"] = self._record_spatial(self.record(rows, record.batch_index, **opts, guide=guide),
                                                      spatial).to_json()
        return img

    def _apply_recorded_loras(self, recorded: list[dict]) -> None:
        """Apply the LoRA files a record names (unless this pipeline already has exactly those), checking
        that each file still has the recorded contents."""
        def key(entries):
            return [(e["sha256"], float(e["scale"])) for e in entries]

        if key(self.loras) == key(recorded):
            return
        if self._loras:
            raise UserError("this pipeline has other LoRA files applied than the record names")
        for entry in recorded:
            if not Path(entry["path"]).is_file():
                raise UserError(f"the image was made with the LoRA file {entry['path']}, which is not there any more")
        self.load_loras([(e["path"], e["scale"]) for e in recorded])
        for entry, loaded in zip(recorded, self.loras):
            if loaded["sha256"] != entry["sha256"]:
                raise UserError(f"{entry['path']}: has sha256 {loaded['sha256'][:12]}…, the image was made with "
                                f"{entry['sha256'][:12]}…")
