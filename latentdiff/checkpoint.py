"""The one module that loads and saves models, and :class:`Model`, the loaded model that a
:class:`~latentdiff.pipeline.Pipeline` generates with.

* :func:`load_model` — a model's components from None (the default model), a diffusers folder, a single LDM
  checkpoint file, or a Hugging Face Hub id (``owner/name``: :func:`model_path`). Format conversion is
  :mod:`latentdiff.interop`'s; this module decides where a model comes from.
* :class:`Model` — the components with where they came from: :meth:`Model.load`, :meth:`Model.save`,
  :meth:`Model.export_single_file`; a layout checkpoint (layout ControlNet or GLIGEN layers, told apart and
  validated by its ``condition.json``: :meth:`Model.attach_layout`), a segmentation ControlNet
  (:meth:`Model.attach_segmap`) and LoRA files (:meth:`Model.load_loras`) attached to it; its device and
  speed options (:meth:`Model.to`, :meth:`Model.optimize`).
* :func:`schedule_from_scheduler_config` / :func:`scheduler_config_from_schedule` — a model's
  ``scheduler_config.json`` to latentdiff's :class:`~latentdiff.diffusion.schedule.Schedule` and back;
  :func:`sampler_overrides`, the settings of it that each sampler takes.
* :func:`companion` — where a model folder keeps a companion (the layout or segmentation checkpoint, the
  classifier, the CLIP image tower): registered in its ``latentdiff.json`` under ``"companions"`` (role →
  subfolder) by :func:`register_companions` and :func:`install_companion`, else found under the names
  training has always written (``COMPANION_FOLDERS``), so folders written before the map keep working.
* :func:`resolve_device` — the ``--device`` option to a torch device.
"""
from __future__ import annotations

import inspect
import json
import os
import re
import shutil
from functools import cached_property
from pathlib import Path
from typing import Sequence

import torch

from latentdiff import lora
from latentdiff.config import ScheduleConfig
from latentdiff.diffusion.sampling import make_scheduler, scheduler_class
from latentdiff.diffusion.schedule import Schedule
from latentdiff.errors import UserError
from latentdiff.interop import EXTRA_FILE, PICKLE_SUFFIXES, Components, load_components, save_diffusers
from latentdiff.interop import export_single_file as export_components
from latentdiff.limits import Limits
from latentdiff.models.control import NUM_CLASSES, layout_controlnet_config, load_fitting_controlnet
from latentdiff.models.gligen import MAX_BOXES, load_gligen
from latentdiff.provenance import model_sha256
from latentdiff.quiet import quiet_libraries
from latentdiff.speed import optimized

DEFAULT_MODEL_DIR = Path(__file__).parent / "assets" / "default_model"
# Used when a model's latentdiff.json has no "generate_defaults"; DPM-Solver++(2M) converges in ~25 steps.
GENERATE_DEFAULTS = {"sampler": "dpm++", "steps": 25, "guidance": 4.0}
# owner/name as the Hub spells repository ids; a path with more parts, or a weight file's name, is not one.
HUB_ID = re.compile(r"[A-Za-z0-9][\w.-]*/[\w.-]+")
# What a diffusers model needs from a Hub repository: configs, tokenizer files and the components' safetensors
# (not the single-file checkpoints many repositories also carry at their root).
HUB_FILES = ["*.json", "*.txt", "*/*.safetensors"]
# Keys of a model's scheduler config that shape the timestep grid; passed to every sampler that takes them.
SCHEDULER_KEYS = ("timestep_spacing", "steps_offset", "set_alpha_to_one")
# A model folder's companions by role, and the subfolders a folder without a "companions" map keeps them in
# (the first found is used: a layout ControlNet before GLIGEN's layers).
COMPANION_FOLDERS = {"layout": ("layout_controlnet", "gligen"), "segmap": ("controlnet",),
                     "classifier": ("classifier",), "clip": ("clip",)}


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


# --- where a model comes from ----------------------------------------------------------------------------

def model_path(path: str | Path | None, *, allow_unsafe_pickle: bool = False) -> Path:
    """The local path of a model: the default model's folder for None; a Hub id (``owner/name``, not an
    existing local path) resolved through the Hugging Face cache, downloading it unless ``HF_HUB_OFFLINE`` is
    set; anything else as given."""
    if path is None:
        if not (DEFAULT_MODEL_DIR / "model_index.json").is_file():
            raise UserError(f"no default model is installed (expected {DEFAULT_MODEL_DIR}); pass --model PATH "
                            f"(a diffusers folder or a .safetensors checkpoint)")
        return DEFAULT_MODEL_DIR
    if isinstance(path, str) and not Path(path).exists() and is_hub_id(path):
        return hub_snapshot(path, allow_unsafe_pickle=allow_unsafe_pickle)
    return Path(path)


def is_hub_id(name: str) -> bool:
    """Whether ``name`` reads as a Hugging Face Hub repository id (owner/name) rather than a file's path."""
    return HUB_ID.fullmatch(name) is not None and not name.lower().endswith((".safetensors", *PICKLE_SUFFIXES))


def hub_snapshot(repo_id: str, *, allow_unsafe_pickle: bool = False) -> Path:
    """The folder of ``repo_id``'s snapshot in the Hugging Face cache (``HF_HUB_CACHE``), downloaded when
    online as diffusers' ``from_pretrained`` does; offline, an id missing from the cache is a one-line error."""
    from huggingface_hub import constants, snapshot_download
    from huggingface_hub.errors import HFValidationError, LocalEntryNotFoundError, RepositoryNotFoundError

    offline = os.environ.get("HF_HUB_OFFLINE", "").strip().lower() not in ("", "0", "false", "no", "off")
    cache = constants.HF_HUB_CACHE
    patterns = HUB_FILES + (["*/*.bin"] if allow_unsafe_pickle else [])
    try:
        return Path(snapshot_download(repo_id, cache_dir=cache, local_files_only=offline, allow_patterns=patterns))
    except LocalEntryNotFoundError:
        if not offline:
            raise UserError(f"{repo_id}: model not found: not a local path, and the Hugging Face Hub could not be "
                            f"reached to download it") from None
        raise UserError(f"{repo_id}: model not found: not a local path, and the Hugging Face Hub id is not in the "
                        f"local Hugging Face cache ({cache}); this machine is offline (HF_HUB_OFFLINE)") from None
    except RepositoryNotFoundError:
        raise UserError(f"{repo_id}: model not found: not a local path, nor a repository of the Hugging Face Hub "
                        f"this machine may read") from None
    except HFValidationError:
        raise UserError(f"{repo_id}: model not found") from None


def load_model(path: str | Path | None, *, config: str | Path | None = None,
               allow_unsafe_pickle: bool = False) -> Components:
    """A model's components, frozen for inference (``eval()``, no gradients), from :func:`model_path`'s
    answer for ``path`` (``config``: see :func:`latentdiff.interop.load_components`)."""
    comps = load_components(model_path(path, allow_unsafe_pickle=allow_unsafe_pickle), config=config,
                            allow_unsafe_pickle=allow_unsafe_pickle)
    for m in (comps.unet, comps.vae, comps.text_encoder):
        m.eval().requires_grad_(False)
    return comps


# --- a model folder's companions -------------------------------------------------------------------------

def _folder_of(model) -> Path | None:
    """The folder of ``model`` (a :class:`Model` or a path), or None when it has none (in memory, one file)."""
    path = getattr(model, "path", model)
    return Path(path) if path is not None and Path(path).is_dir() else None


def companion_map(folder: str | Path) -> dict[str, str]:
    """The ``"companions"`` map (role → subfolder) of a model folder's ``latentdiff.json``; {} without one.
    A map that is not roles naming subfolders of the folder is a one-line error naming the file."""
    file = Path(folder) / EXTRA_FILE
    if not file.is_file():
        return {}
    try:
        companions = json.loads(file.read_text(encoding="utf-8")).get("companions", {})
    except (ValueError, AttributeError):
        raise UserError(f"{file}: not a JSON object") from None
    if not isinstance(companions, dict):
        raise UserError(f"{file}: companions: expected an object of role -> subfolder")
    for role, sub in companions.items():
        if role not in COMPANION_FOLDERS:
            raise UserError(f"{file}: companions: unknown role {role!r}; expected {', '.join(COMPANION_FOLDERS)}")
        if not isinstance(sub, str) or not sub or Path(sub).is_absolute() or ".." in Path(sub).parts:
            raise UserError(f"{file}: companions.{role}: {sub!r}: expected a subfolder of the model folder")
    return dict(companions)


def companion(model, role: str) -> Path | None:
    """The folder of ``model``'s companion ``role`` (layout, segmap, classifier, clip), or None: the subfolder
    its ``latentdiff.json`` registers for the role, else the first of ``COMPANION_FOLDERS[role]`` that exists.
    ``model``: a :class:`Model` or a model folder; a model without a folder has no companions."""
    if role not in COMPANION_FOLDERS:
        raise ValueError(f"unknown companion role {role!r}")
    folder = _folder_of(model)
    if folder is None:
        return None
    registered = companion_map(folder).get(role)
    for name in ((registered,) if registered else ()) + COMPANION_FOLDERS[role]:
        if (folder / name).is_dir():
            return folder / name
    return None


def companion_folders(model) -> list[Path]:
    """Every companion folder ``model`` (a :class:`Model` or a folder) carries: those its map registers, then
    those under ``COMPANION_FOLDERS``' names (a GLIGEN folder beside the layout ControlNet, say), each once."""
    folder = _folder_of(model)
    if folder is None:
        return []
    names = [*companion_map(folder).values(), *(n for names in COMPANION_FOLDERS.values() for n in names)]
    return [folder / n for n in dict.fromkeys(names) if (folder / n).is_dir()]


def register_companions(folder: str | Path, companions: dict[str, str], *, replace: bool = False) -> None:
    """Record companions (role → subfolder) in model folder ``folder``'s ``latentdiff.json``, added to those
    registered (``replace``: instead of them); the file's other settings are kept."""
    before = companion_map(folder)  # checks the file
    file = Path(folder) / EXTRA_FILE
    info = json.loads(file.read_text(encoding="utf-8")) if file.is_file() else {}
    info["companions"] = {**({} if replace else before), **companions}
    file.write_text(json.dumps(info, indent=2, sort_keys=True) + "\n", encoding="utf-8")


def install_companion(source: str | Path, model_dir: str | Path, role: str, name: str | None = None) -> Path:
    """Copy a trained companion folder into ``model_dir`` as subfolder ``name`` (default: its own name),
    replacing one there, and register it as the model's ``role``; the installed folder."""
    if role not in COMPANION_FOLDERS:
        raise ValueError(f"unknown companion role {role!r}")
    dest = Path(model_dir) / (name or Path(source).name)
    if dest.exists():
        shutil.rmtree(dest)
    shutil.copytree(source, dest)
    register_companions(model_dir, {role: dest.name})
    return dest


# --- the scheduler config ----------------------------------------------------------------------------------

def schedule_from_scheduler_config(cfg: dict) -> Schedule:
    """The :class:`Schedule` a diffusers scheduler config describes (trained_betas, or beta_schedule with
    beta_start/beta_end; zero-terminal-SNR rescaling applied as diffusers does)."""
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
    cfg = dict(make_scheduler("ddim", schedule, prediction_type=schedule.prediction).config)
    names = {"linear": "linear", "scaled_linear": "scaled_linear", "cosine": "squaredcos_cap_v2"}
    cfg["beta_schedule"] = names.get(schedule.kind, "linear")  # informative; trained_betas wins
    cfg["trained_betas"] = [float(b) for b in schedule.betas.tolist()]
    cfg["_class_name"] = "DDIMScheduler"
    # Unused by "trailing" spacing; 1 keeps StableDiffusionPipeline from warning about (and rewriting) it.
    cfg["steps_offset"] = 1
    return cfg


def sampler_overrides(scheduler_config: dict, sampler: str) -> dict:
    """The model's timestep-grid settings (``SCHEDULER_KEYS`` of its scheduler config) that sampler
    ``sampler``'s diffusers scheduler accepts; none for ddpm, whose grid is every timestep."""
    if sampler == "ddpm":
        return {}
    accepted = inspect.signature(scheduler_class(sampler).__init__).parameters
    return {k: scheduler_config[k] for k in SCHEDULER_KEYS if k in scheduler_config and k in accepted}


# --- the loaded model ----------------------------------------------------------------------------------------

class Model:
    """A text-to-image latent diffusion model: its networks, tokenizer and noise schedule, where they came
    from, and what was attached or applied to it (layout / segmentation checkpoints, LoRA files, speed
    options). :class:`latentdiff.pipeline.Pipeline` adds generation; this class is the model itself.

    Attributes: ``unet``, ``vae``, ``text_encoder``, ``tokenizer``, ``schedule`` (:class:`Schedule`),
    ``scheduler_config`` (dict, the model's ``scheduler_config.json``), ``vae_scale_factor`` (int),
    ``scaling_factor`` (float, latents = scaling_factor · VAE mean), ``device``, ``dtype``, ``name``,
    ``path`` (None for an in-memory model), ``defaults`` (sampler, steps, guidance), ``limits`` (what one call
    may ask for) and ``speed`` (the :class:`~latentdiff.speed.Speed` options applied by :meth:`optimize`, None
    for the plain path).
    """

    def __init__(self, unet, vae, text_encoder, tokenizer, schedule: Schedule,
                 scheduler_config: dict | None = None, *, name: str = "in-memory", path: Path | None = None,
                 weight_files: Sequence[Path] = (), extra: dict | None = None, is_default: bool = False):
        self.unet, self.vae, self.text_encoder, self.tokenizer = unet, vae, text_encoder, tokenizer
        self.schedule = schedule
        self.scheduler_config = dict(scheduler_config or scheduler_config_from_schedule(schedule))
        self.vae_scale_factor = 2 ** (len(vae.config.block_out_channels) - 1)
        self.scaling_factor = float(vae.config.scaling_factor)
        self.name, self.path, self.is_default = name, path, is_default
        self.weight_files = [Path(f) for f in weight_files]
        self.extra = dict(extra or {})
        self.defaults = {**GENERATE_DEFAULTS, **self.extra.get("generate_defaults", {})}
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

    @classmethod
    def from_components(cls, unet, vae, text_encoder, tokenizer, schedule: Schedule,
                        scheduler_config: dict | None = None):
        """Wrap in-memory models (for example during training); nothing is copied or moved."""
        return cls(unet, vae, text_encoder, tokenizer, schedule, scheduler_config)

    @classmethod
    def load(cls, path: str | Path | None = None, device: str | torch.device = "auto",
             dtype: torch.dtype | None = None, *, config: str | Path | None = None,
             allow_unsafe_pickle: bool = False):
        """Load a model: None for the default model, a diffusers folder, a single LDM checkpoint file
        (``config`` names its component configs when they are not embedded; see :mod:`latentdiff.interop`) or
        a Hugging Face Hub id (:func:`model_path`). ``dtype`` defaults to float32."""
        dev = resolve_device(device)
        c = load_model(path, config=config, allow_unsafe_pickle=allow_unsafe_pickle)
        return cls(c.unet, c.vae, c.text_encoder, c.tokenizer, schedule_from_scheduler_config(c.scheduler_config),
                   c.scheduler_config, name=c.name, path=c.path, weight_files=c.weight_files, extra=c.extra,
                   is_default=path is None).to(dev, dtype or torch.float32)

    def save(self, path: str | Path) -> Path:
        """Write a diffusers folder that ``StableDiffusionPipeline.from_pretrained(path, safety_checker=None)``
        and :meth:`load` read."""
        return save_diffusers(path, self.unet, self.vae, self.text_encoder, self.tokenizer, self.scheduler_config,
                              self._saved_extra())

    def export_single_file(self, path: str | Path, text_layout: str = "auto") -> tuple[Path, Path]:
        """Write one .safetensors in the original LDM layout plus its diffusers config folder."""
        return export_components(path, self.unet, self.vae, self.text_encoder, self.tokenizer,
                                 self.scheduler_config, self._saved_extra(), text_layout)

    def _saved_extra(self) -> dict | None:
        """The ``latentdiff.json`` settings a saved copy of the components carries: not the companions map,
        which names folders beside the components that saving does not copy (:func:`register_companions`)."""
        return {k: v for k, v in self.extra.items() if k != "companions"} or None

    # --- what attaches to it ----------------------------------------------------------------------------

    def _check_not_optimized(self, what: str) -> None:
        """Weights change only before :meth:`optimize`, which may have compiled or fused the old ones."""
        if self.speed is not None:
            raise UserError(f"{what} after Pipeline.optimize: apply it first, then optimize")

    def attach_layout(self, folder: str | Path):
        """Attach the layout checkpoint in ``folder``: a layout ControlNet (its ``condition.json`` says so, and
        sets the default layout scale, region guidance and regional text share; :mod:`latentdiff.models.
        control`), or GLIGEN's gated layers, which make the U-Net a gated one (see :mod:`latentdiff.models.
        gligen`; attach those before applying LoRA files)."""
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

    def attach_segmap(self, folder: str | Path):
        """Attach the segmentation ControlNet saved in ``folder`` (see :mod:`latentdiff.models.control`)."""
        self._check_not_optimized("a segmentation checkpoint")
        if layout_controlnet_config(folder) is not None:
            raise UserError(f"{folder}: is a layout ControlNet; pass it as the layout checkpoint (--layout-model)")
        self.controlnet = self._load_controlnet(folder, NUM_CLASSES, "ControlNet", f"a segmentation ControlNet "
                                                f"takes {NUM_CLASSES} (the one-hot class map)")
        self.spatial_paths["segmap"] = str(Path(folder).resolve())
        return self

    def _load_controlnet(self, folder: str | Path, channels: int, what: str, expected: str):
        """A saved ControlNet that fits this model's U-Net and takes ``channels`` input channels (else a
        one-line error: "{folder}: {what} takes N input channels; {expected}"), on the model's device."""
        # loaded in self.dtype (a later .to(dtype) warns); the U-Net is on self.device
        return load_fitting_controlnet(folder, self.unet, channels, self.dtype,
                                       lambda n: UserError(f"{folder}: {what} takes {n} input channels; {expected}"))

    def load_loras(self, specs: Sequence[tuple[str | Path, float]]):
        """Apply LoRA files, each ``(path, scale)``, on top of those already applied (see
        :mod:`latentdiff.lora`; the files diffusers' ``load_lora_weights`` reads). They are recorded in each
        image's provenance, and ``replay`` applies them again."""
        self._check_not_optimized("LoRA files")
        self._loras += lora.load_loras(self.unet, self.text_encoder, [(Path(p), float(s)) for p, s in specs])
        lora.activate(self.unet, self.text_encoder, self._loras)
        return self

    def fuse_loras(self) -> list[dict]:
        """Bake the applied LoRA files into the weights (W ← W + scale·(α/r)·B·A) and drop the adapters, so the
        model saves, exports and loads as a plain one. Returns the fused files (path, scale, sha256)."""
        fused = self.loras
        for module, part in ((self.unet, "unet"), (self.text_encoder, "text_encoder")):
            names = [e["name"] for e in self._loras if e[part]]
            if names:
                lora.fuse(module, names)
        self._loras = []
        return fused

    @property
    def loras(self) -> list[dict]:
        """The LoRA files applied: ``[{"path", "scale", "sha256"}, ...]``."""
        return [{k: e[k] for k in ("path", "scale", "sha256")} for e in self._loras]

    # --- where it runs ----------------------------------------------------------------------------------

    def to(self, device: str | torch.device | None = None, dtype: torch.dtype | None = None):
        """Move the networks (in place) to ``device`` and/or ``dtype``."""
        with quiet_libraries():  # diffusers warns about fp32-pinned modules even when there are none
            for m in (self.unet, self.vae, self.text_encoder, self.controlnet, self.layout_controlnet):
                if m is not None:
                    m.to(device=device, dtype=dtype)
        return self

    def optimize(self, speed=None, **options):
        """Make inference faster in place (:func:`latentdiff.speed.optimized`: a :class:`~latentdiff.speed.Speed`
        value and/or its options as keywords, added to those applied before). Apply LoRA files and layout or
        segmentation checkpoints first. See :mod:`latentdiff.speed` and docs/performance.md."""
        self.speed, self._unet_call = optimized(self, speed, **options)
        return self

    @property
    def device(self) -> torch.device:
        return self.unet.device

    @property
    def dtype(self) -> torch.dtype:
        return self.unet.dtype

    # --- what it is ---------------------------------------------------------------------------------------

    @cached_property
    def weights_sha256(self) -> str:
        """SHA-256 of the loaded weight files (:func:`latentdiff.provenance.model_sha256`), computed once."""
        return model_sha256(self.weight_files, self.path)

    @property
    def native_size(self) -> int:
        """The side in pixels the model draws by default: the U-Net's sample size × the VAE factor."""
        size = self.unet.config.sample_size * self.vae_scale_factor
        return size[0] if isinstance(size, (list, tuple)) else size

    @property
    def latent_channels(self) -> int:
        return int(self.unet.config.out_channels)

    def concat_channels(self) -> int:
        """Input channels of the U-Net beyond x_t: 0 for text-to-image, 1 + C for inpainting (mask + latents)."""
        return self.unet.config.in_channels - self.unet.config.out_channels

    @property
    def is_inpainting(self) -> bool:
        """Whether the U-Net takes diffusers' inpainting inputs: x_t, the mask and masked-image latents."""
        return self.concat_channels() == self.latent_channels + 1

    def sampler_overrides(self, sampler: str) -> dict:
        """The model's timestep-grid settings that ``sampler`` takes (the module's :func:`sampler_overrides`)."""
        return sampler_overrides(self.scheduler_config, sampler)

    def make_scheduler(self, sampler: str):
        """The diffusers scheduler that runs our sampler ``sampler`` on this model's raw U-Net output: what a
        diffusers pipeline needs to draw the same images (comparisons with diffusers). Same type, timestep grid
        and settings as ours, with the model's prediction type (our denoiser converts the U-Net's output to ε̂
        first, so the scheduler inside latentdiff takes ε; a diffusers pipeline hands the scheduler the U-Net's
        v or ε as it comes)."""
        return make_scheduler(sampler, self.schedule, **{**self.sampler_overrides(sampler),
                                                         "prediction_type": self.schedule.prediction})
