"""Stable Diffusion formats in and out: diffusers folders and single-file LDM checkpoints.

Loading (:func:`load_components`), all offline:

* a **diffusers folder** (``model_index.json``, ``unet/``, ``vae/``, ``text_encoder/``, ``tokenizer/``,
  ``scheduler/``; the SD 1.x / 2.x layout that ``StableDiffusionPipeline.save_pretrained`` writes);
* a **single file** in the original LDM key layout (``model.diffusion_model.*``,
  ``first_stage_model.*``, ``cond_stage_model.transformer.*`` for CLIP or ``cond_stage_model.model.*``
  for OpenCLIP), converted by diffusers' own single-file code. Component configs come from, in order:
  an explicit ``config`` (a diffusers folder or a shipped name ``sd1 | sd2 | sd2-base``), configs
  embedded by :func:`export_single_file` in the file's safetensors metadata, a ``<stem>_config/`` folder
  next to the file, or the shipped SD 1.x / 2.x configs picked from the weights.

The CLIP tokenizer is built from open_clip_torch's vocabulary when a model does not bring one.
Pickle files (``.ckpt``, ``.pt``, ``.pth``, ``.bin``) can run code when loaded, so they are refused
unless ``allow_unsafe_pickle=True``.

Saving: :func:`save_diffusers` writes a folder that ``StableDiffusionPipeline.from_pretrained`` loads;
:func:`export_single_file` writes the LDM layout (the inverse of diffusers' loader mapping, written here)
plus a diffusers config folder for ``StableDiffusionPipeline.from_single_file(..., config=...)``.
"""
from __future__ import annotations

import json
import re
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from latentdiff.errors import UserError
from latentdiff.quiet import quiet_libraries

SD_CONFIGS = Path(__file__).parent / "assets" / "sd_configs"
SD_VARIANTS = ("sd1", "sd2", "sd2-base")
PICKLE_SUFFIXES = (".ckpt", ".pt", ".pth", ".bin")
COMPONENT_WEIGHTS = {  # component -> (safetensors name, pickle name)
    "unet": ("diffusion_pytorch_model.safetensors", "diffusion_pytorch_model.bin"),
    "vae": ("diffusion_pytorch_model.safetensors", "diffusion_pytorch_model.bin"),
    "text_encoder": ("model.safetensors", "pytorch_model.bin"),
}
EXTRA_FILE = "latentdiff.json"  # optional per-model settings (for example generate defaults)
META_PREFIX = "latentdiff."
LDM_UNET, LDM_VAE = "model.diffusion_model.", "first_stage_model."
LDM_CLIP, LDM_OPEN_CLIP = "cond_stage_model.transformer.text_model.", "cond_stage_model.model."


@dataclass
class Components:
    """What a pipeline is built from, with where it came from."""

    unet: Any
    vae: Any
    text_encoder: Any
    tokenizer: Any
    scheduler_config: dict
    name: str
    path: Path | None
    weight_files: list[Path] = field(default_factory=list)
    extra: dict = field(default_factory=dict)


def _check_pickle(path: Path, allow: bool) -> None:
    if path.suffix.lower() in PICKLE_SUFFIXES and not allow:
        raise UserError(f"{path}: a pickle file ({path.suffix}) can run arbitrary code when loaded; convert it to "
                        f".safetensors, or pass --allow-unsafe-pickle if you trust its source")


def _read_json(path: Path) -> dict:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise UserError(f"{path}: file not found") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise UserError(f"{path}: cannot read JSON ({exc})") from None
    if not isinstance(data, dict):
        raise UserError(f"{path}: expected a JSON object")
    return data


def _check_loaded(model, what: str) -> None:
    """Every parameter must have been filled from the file (diffusers leaves missing ones on 'meta')."""
    missing = [n for n, p in list(model.named_parameters()) + list(model.named_buffers()) if p.device.type == "meta"]
    if missing:
        raise UserError(f"{what}: {len(missing)} weights missing from the file, e.g. {missing[0]}")


def load_components(path: str | Path, *, config: str | Path | None = None,
                    allow_unsafe_pickle: bool = False) -> Components:
    """Load a model from a diffusers folder or a single checkpoint file (module docstring)."""
    path = Path(path)
    if not path.exists():
        raise UserError(f"{path}: model not found")
    with quiet_libraries():
        if path.is_dir():
            comps = load_diffusers_folder(path, allow_unsafe_pickle=allow_unsafe_pickle)
        else:
            comps = load_single_file(path, config=config, allow_unsafe_pickle=allow_unsafe_pickle)
    check_supported(comps.unet, path)
    return comps


def check_supported(unet, path: Path) -> None:
    """Text-to-image U-Nets (in = out channels) and inpainting U-Nets in diffusers' layout (in = 2·out + 1:
    x_t, mask, masked-image latents); no other extra inputs, no SDXL-style added conditions."""
    cfg = unet.config
    if cfg.in_channels not in (cfg.out_channels, 2 * cfg.out_channels + 1):
        raise UserError(f"{path}: a U-Net with {cfg.in_channels} input channels for {cfg.out_channels} output "
                        f"channels; only text-to-image ({cfg.out_channels}) and inpainting "
                        f"({2 * cfg.out_channels + 1}) models are supported")
    if cfg.addition_embed_type is not None or cfg.class_embed_type is not None:
        raise UserError(f"{path}: a U-Net with extra embeddings ({cfg.addition_embed_type or cfg.class_embed_type}, "
                        f"e.g. SDXL); only Stable Diffusion 1.x/2.x-style models are supported")


# --- diffusers folders ----------------------------------------------------------------------------------

def _weights_file(folder: Path, component: str, allow_pickle: bool) -> tuple[Path, str | None]:
    """(the weights file of a component, diffusers' ``variant``), preferring safetensors."""
    st_name, pkl_name = COMPONENT_WEIGHTS[component]
    sub = folder / component
    if not (sub / "config.json").is_file():
        raise UserError(f"{sub}: missing config.json (not a diffusers model folder?)")
    stem, ext = st_name.rsplit(".", 1)
    for name, variant in ((st_name, None), (f"{stem}.fp16.{ext}", "fp16")):
        if (sub / name).is_file():
            return sub / name, variant
    pkl_stem, pkl_ext = pkl_name.rsplit(".", 1)
    for name, variant in ((pkl_name, None), (f"{pkl_stem}.fp16.{pkl_ext}", "fp16")):
        if (sub / name).is_file():
            _check_pickle(sub / name, allow_pickle)
            return sub / name, variant
    raise UserError(f"{sub}: no weights file ({st_name})")


def load_diffusers_folder(folder: str | Path, *, allow_unsafe_pickle: bool = False) -> Components:
    """U-Net, VAE, text encoder, tokenizer and scheduler config of a diffusers ``StableDiffusionPipeline``
    folder. Extra folders (safety checker, feature extractor, an image tower) are ignored."""
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextModel

    folder = Path(folder)
    index = _read_json(folder / "model_index.json")
    for comp in ("unet", "vae", "text_encoder"):
        if comp not in index:
            raise UserError(f"{folder / 'model_index.json'}: no '{comp}' component")
    files = {c: _weights_file(folder, c, allow_unsafe_pickle) for c in COMPONENT_WEIGHTS}
    models = {}
    for comp, cls in (("unet", UNet2DConditionModel), ("vae", AutoencoderKL), ("text_encoder", CLIPTextModel)):
        file, variant = files[comp]
        kwargs = dict(variant=variant, use_safetensors=file.suffix == ".safetensors")
        try:
            models[comp] = _direct_load(cls, folder / comp, file)
            if models[comp] is None:
                models[comp] = cls.from_pretrained(str(folder / comp), local_files_only=True, **kwargs)
        except (OSError, ValueError, RuntimeError, KeyError, TypeError) as exc:
            raise UserError(f"{file}: cannot load the {comp} ({_first_line(exc)})") from None
        _check_loaded(models[comp], str(file))
    scheduler_file = folder / "scheduler" / "scheduler_config.json"
    scheduler_config = _read_json(scheduler_file) if scheduler_file.is_file() else {}
    extra = _read_json(folder / EXTRA_FILE) if (folder / EXTRA_FILE).is_file() else {}
    return Components(
        unet=models["unet"], vae=models["vae"], text_encoder=models["text_encoder"],
        tokenizer=_folder_tokenizer(folder), scheduler_config=scheduler_config, name=folder.resolve().name,
        path=folder.resolve(), weight_files=[f for f, _ in files.values()], extra=extra,
    )


def _direct_load(cls, sub: Path, file: Path):
    """``cls.from_pretrained(sub)`` the short way, or None where only ``from_pretrained`` will do.

    For one safetensors file whose keys are exactly the model's: build the model on the meta device from its
    config, read the file and assign its tensors. The same weights and dtypes as ``from_pretrained`` (diffusers'
    models in float32; transformers' in the config's dtype, else the file's), in eval mode, without the
    libraries' general machinery that dominates a small model's load time (transformers builds key-conversion
    tables for every model type it knows, ~0.2-0.3 s per process; diffusers moves each tensor several times;
    BENCHMARKS.md, "Start-up"). Anything else (sharded or pickle files, old key names that the libraries
    rename, buffers that are not in the file) returns None, and the caller takes ``from_pretrained``."""
    if file.suffix != ".safetensors":
        return None
    from safetensors.torch import load_file

    if hasattr(cls, "load_config"):  # diffusers
        config = cls.load_config(sub)
        with torch.device("meta"):
            model = cls.from_config(config)
        model.register_to_config(_name_or_path=str(sub))  # as from_pretrained records it
        dtype = torch.float32
    else:  # transformers
        config = cls.config_class.from_pretrained(sub, local_files_only=True)
        with torch.device("meta"):
            model = cls(config)
        dtype = getattr(config, "dtype", None)
    state = load_file(file)
    if set(state) != _state_dict_keys(model):
        return None
    if not isinstance(dtype, torch.dtype):
        dtype = next((t.dtype for t in state.values() if t.is_floating_point()), torch.float32)
    state = {k: t.to(dtype) if t.is_floating_point() else t for k, t in state.items()}
    model.load_state_dict(state, strict=True, assign=True)
    for name, buf in list(model.named_buffers()):  # non-persistent buffers were never in the file
        if buf.device.type != "meta":
            continue
        if not name.endswith("position_ids"):  # CLIP's arange(positions); any other: the library's way
            return None
        owner = model.get_submodule(name.rsplit(".", 1)[0]) if "." in name else model
        owner.register_buffer(name.rsplit(".", 1)[-1], torch.arange(buf.shape[-1]).expand(buf.shape), persistent=False)
    return model.eval()


def _state_dict_keys(model: torch.nn.Module) -> set[str]:
    """The keys ``model.state_dict()`` would have, without building it (on the meta device that takes 0.2 s
    for the default U-Net)."""
    keys = {name for name, _ in model.named_parameters(remove_duplicate=False)}
    for prefix, module in model.named_modules(remove_duplicate=False):
        for name, buf in module._buffers.items():
            if buf is not None and name not in module._non_persistent_buffers_set:
                keys.add(f"{prefix}.{name}" if prefix else name)
    return keys


def _first_line(exc: BaseException) -> str:
    """The gist of a library exception: its first line, and only the first sentence of a long one."""
    text = str(exc).strip().splitlines()
    line = text[0] if text else type(exc).__name__
    return line.split(". ")[0] if len(line) > 160 else line


def _folder_tokenizer(folder: Path):
    """The folder's tokenizer, or CLIP's (built from open_clip's vocabulary) when it has none."""
    from transformers import CLIPTokenizer

    from latentdiff.models.tokenizer import load_clip_tokenizer

    tok_dir = folder / "tokenizer"
    if (tok_dir / "tokenizer.json").is_file() or (tok_dir / "vocab.json").is_file():
        try:
            return CLIPTokenizer.from_pretrained(str(tok_dir), local_files_only=True)
        except (OSError, ValueError) as exc:
            raise UserError(f"{tok_dir}: cannot load the tokenizer ({_first_line(exc)})") from None
    tok = load_clip_tokenizer(None)
    special = tok_dir / "special_tokens_map.json"
    pad = _read_json(special).get("pad_token") if special.is_file() else None
    if isinstance(pad, dict):
        pad = pad.get("content")
    if pad and pad != tok.pad_token:
        tok.pad_token = pad
    return tok


# --- single files -----------------------------------------------------------------------------------------

def read_checkpoint(path: Path, allow_unsafe_pickle: bool = False) -> tuple[dict[str, Tensor], dict[str, str]]:
    """(state dict, safetensors metadata) of a checkpoint file; pickles only when allowed."""
    _check_pickle(path, allow_unsafe_pickle)
    try:
        if path.suffix.lower() == ".safetensors":
            from safetensors import safe_open

            with safe_open(str(path), framework="pt", device="cpu") as fh:
                meta = fh.metadata() or {}
                sd = {k: fh.get_tensor(k) for k in fh.keys()}
            return sd, meta
        if path.suffix.lower() in PICKLE_SUFFIXES:
            sd = torch.load(str(path), map_location="cpu", weights_only=False)
            while isinstance(sd, dict) and isinstance(sd.get("state_dict"), dict):
                sd = sd["state_dict"]
            if not isinstance(sd, dict):
                raise UserError(f"{path}: expected a state dict, found {type(sd).__name__}")
            return sd, {}
    except UserError:
        raise
    except Exception as exc:  # noqa: BLE001 - any reader failure is a bad file
        raise UserError(f"{path}: cannot read the checkpoint ({_first_line(exc)})") from None
    raise UserError(f"{path}: unknown model file type '{path.suffix}' (expected a folder, .safetensors or .ckpt)")


def detect_sd_variant(sd: dict[str, Tensor]) -> str:
    """'sd1' or 'sd2' from the weights (diffusers' own model-type inference); other models are errors."""
    from diffusers.loaders.single_file_utils import infer_diffusers_model_type

    if LDM_UNET + "input_blocks.0.0.weight" not in sd:
        raise UserError("not a Stable Diffusion LDM checkpoint (no model.diffusion_model.* U-Net weights)")
    kind = infer_diffusers_model_type(sd)
    if kind == "v1":
        return "sd1"
    if kind == "v2":
        return "sd2"
    raise UserError(f"a '{kind}' checkpoint; only Stable Diffusion 1.x/2.x text-to-image checkpoints are supported")


def sd_config_dir(name: str) -> Path:
    """The shipped component configs of ``sd1`` (SD 1.5), ``sd2`` (SD 2.1, 768, v) or ``sd2-base``."""
    if name not in SD_VARIANTS:
        raise UserError(f"unknown model config '{name}'; expected a folder or one of {', '.join(SD_VARIANTS)}")
    return SD_CONFIGS / name


def _config_from_metadata(meta: dict[str, str], folder: Path) -> bool:
    """Write the configs embedded by :func:`export_single_file` into ``folder``; False if there are none."""
    if META_PREFIX + "model_index" not in meta:
        return False
    targets = {"model_index": "model_index.json", "unet": "unet/config.json", "vae": "vae/config.json",
               "text_encoder": "text_encoder/config.json", "scheduler": "scheduler/scheduler_config.json",
               "special_tokens": "tokenizer/special_tokens_map.json", "extra": EXTRA_FILE}
    for key, rel in targets.items():
        if META_PREFIX + key in meta:
            (folder / rel).parent.mkdir(parents=True, exist_ok=True)
            (folder / rel).write_text(meta[META_PREFIX + key], encoding="utf-8")
    return True


def _resolve_config(path: Path, sd: dict, meta: dict, config: str | Path | None, tmp: Path) -> Path:
    if config is not None:
        cfg = Path(config)
        if cfg.is_dir():
            return cfg
        if str(config) in SD_VARIANTS:
            return sd_config_dir(str(config))
        raise UserError(f"--config {config}: not a folder nor one of {', '.join(SD_VARIANTS)}")
    if _config_from_metadata(meta, tmp):
        return tmp
    sidecar = path.with_name(path.stem + "_config")
    if (sidecar / "model_index.json").is_file():
        return sidecar
    return sd_config_dir(detect_sd_variant(sd))


def load_single_file(path: str | Path, *, config: str | Path | None = None,
                     allow_unsafe_pickle: bool = False) -> Components:
    """Load an LDM-layout checkpoint with diffusers' single-file converters (module docstring)."""
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from diffusers.loaders.single_file_utils import create_diffusers_clip_model_from_ldm
    from transformers import CLIPTextModel

    path = Path(path)
    sd, meta = read_checkpoint(path, allow_unsafe_pickle)
    with tempfile.TemporaryDirectory(prefix="latentdiff-config-") as tmp:
        cfg = _resolve_config(path, sd, meta, config, Path(tmp))
        kw = dict(config=str(cfg), local_files_only=True)
        try:
            unet = UNet2DConditionModel.from_single_file(sd, subfolder="unet", **kw)
            vae = AutoencoderKL.from_single_file(sd, subfolder="vae", **kw)
            text_encoder = create_diffusers_clip_model_from_ldm(CLIPTextModel, sd, subfolder="text_encoder", **kw)
        except UserError:
            raise
        except Exception as exc:  # noqa: BLE001 - diffusers raises many types for a mismatched file
            raise UserError(f"{path}: cannot load with the configs in {cfg} ({_first_line(exc)}); pass --config "
                            f"with the model's diffusers config folder") from None
        for model, what in ((unet, "U-Net"), (vae, "VAE"), (text_encoder, "text encoder")):
            _check_loaded(model, f"{path} ({what})")
        scheduler_config = _read_json(cfg / "scheduler" / "scheduler_config.json")
        extra = _read_json(cfg / EXTRA_FILE) if (cfg / EXTRA_FILE).is_file() else {}
        tokenizer = _folder_tokenizer(cfg)
    text_encoder.eval()
    return Components(unet=unet, vae=vae, text_encoder=text_encoder, tokenizer=tokenizer,
                      scheduler_config=scheduler_config, name=path.stem, path=path.resolve(),
                      weight_files=[path], extra=extra)


# --- saving -------------------------------------------------------------------------------------------

def model_index(inpainting: bool = False) -> dict:
    """``model_index.json`` of a ``StableDiffusionPipeline`` (``StableDiffusionInpaintPipeline`` for an
    inpainting U-Net) without safety checker."""
    import diffusers

    return {
        "_class_name": "StableDiffusionInpaintPipeline" if inpainting else "StableDiffusionPipeline",
        "_diffusers_version": diffusers.__version__,
        "feature_extractor": [None, None], "image_encoder": [None, None], "requires_safety_checker": False,
        "safety_checker": [None, None], "scheduler": ["diffusers", "DDIMScheduler"],
        "text_encoder": ["transformers", "CLIPTextModel"], "tokenizer": ["transformers", "CLIPTokenizer"],
        "unet": ["diffusers", "UNet2DConditionModel"], "vae": ["diffusers", "AutoencoderKL"],
    }


def _scheduler_class_name(scheduler_config: dict) -> str:
    import diffusers

    name = scheduler_config.get("_class_name", "DDIMScheduler")
    return name if hasattr(diffusers, name) else "DDIMScheduler"


def save_scheduler_config(scheduler_config: dict, folder: Path) -> None:
    """Write ``scheduler_config.json`` through the diffusers class it names (so the file is valid)."""
    import diffusers

    cls = getattr(diffusers, _scheduler_class_name(scheduler_config))
    cfg = {k: v for k, v in scheduler_config.items() if not k.startswith("_")}
    cls.from_config(cfg).save_pretrained(str(folder))


def write_config_folder(folder: str | Path, unet, vae, text_encoder, tokenizer, scheduler_config: dict,
                        extra: dict | None = None) -> Path:
    """A diffusers config folder without weights: what ``from_single_file(..., config=folder)`` needs."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    inpainting = unet.config.in_channels == 2 * unet.config.out_channels + 1
    index = dict(model_index(inpainting), scheduler=["diffusers", _scheduler_class_name(scheduler_config)])
    (folder / "model_index.json").write_text(json.dumps(index, indent=2, sort_keys=True) + "\n", encoding="utf-8")
    unet.save_config(str(folder / "unet"))
    vae.save_config(str(folder / "vae"))
    text_encoder.config.save_pretrained(str(folder / "text_encoder"))
    tokenizer.save_pretrained(str(folder / "tokenizer"))
    save_scheduler_config(scheduler_config, folder / "scheduler")
    if extra:
        (folder / EXTRA_FILE).write_text(json.dumps(extra, indent=2, sort_keys=True) + "\n", encoding="utf-8")
    return folder


def save_diffusers(folder: str | Path, unet, vae, text_encoder, tokenizer, scheduler_config: dict,
                   extra: dict | None = None) -> Path:
    """Write a diffusers ``StableDiffusionPipeline`` folder: configs plus safetensors weights."""
    folder = Path(folder)
    write_config_folder(folder, unet, vae, text_encoder, tokenizer, scheduler_config, extra)
    with quiet_libraries():
        unet.save_pretrained(str(folder / "unet"), safe_serialization=True)
        vae.save_pretrained(str(folder / "vae"), safe_serialization=True)
        text_encoder.save_pretrained(str(folder / "text_encoder"), safe_serialization=True)
    return folder


# --- diffusers -> LDM keys (the inverse of diffusers.loaders.single_file_utils' LDM loaders) ------------

_RESNET_TO_LDM = {"norm1": "in_layers.0", "conv1": "in_layers.2", "time_emb_proj": "emb_layers.1",
                  "norm2": "out_layers.0", "conv2": "out_layers.3", "conv_shortcut": "skip_connection"}
_VAE_ATTN_TO_LDM = {"group_norm": "norm", "to_q": "q", "to_k": "k", "to_v": "v", "to_out.0": "proj_out"}


def _resnet(rest: str) -> str:
    head, tail = rest.split(".", 1)
    return f"{_RESNET_TO_LDM.get(head, head)}.{tail}"


def unet_key_to_ldm(key: str, layers: int, up_has_attention: list[bool]) -> str:
    """One diffusers ``UNet2DConditionModel`` key → its LDM ``openaimodel.UNetModel`` key (no prefix).

    LDM numbers blocks flat: input_blocks 0 is conv_in, then per down block ``layers`` (resnet[, attention])
    blocks and one downsampler; output_blocks hold ``layers + 1`` blocks per up block, the last one with
    the upsampler after its attention.
    """
    from diffusers.loaders.single_file_utils import DIFFUSERS_TO_LDM_MAPPING

    top = DIFFUSERS_TO_LDM_MAPPING["unet"]["layers"]
    if key in top:
        return top[key]
    n = layers + 1
    if m := re.fullmatch(r"down_blocks\.(\d+)\.(resnets|attentions)\.(\d+)\.(.+)", key):
        b, kind, i, rest = int(m[1]), m[2], int(m[3]), m[4]
        idx = 1 + b * n + i
        return f"input_blocks.{idx}.0.{_resnet(rest)}" if kind == "resnets" else f"input_blocks.{idx}.1.{rest}"
    if m := re.fullmatch(r"down_blocks\.(\d+)\.downsamplers\.0\.conv\.(.+)", key):
        return f"input_blocks.{(int(m[1]) + 1) * n}.0.op.{m[2]}"
    if m := re.fullmatch(r"mid_block\.resnets\.(\d+)\.(.+)", key):
        return f"middle_block.{2 * int(m[1])}.{_resnet(m[2])}"
    if m := re.fullmatch(r"mid_block\.attentions\.0\.(.+)", key):
        return f"middle_block.1.{m[1]}"
    if m := re.fullmatch(r"up_blocks\.(\d+)\.(resnets|attentions)\.(\d+)\.(.+)", key):
        b, kind, i, rest = int(m[1]), m[2], int(m[3]), m[4]
        idx = b * n + i
        return f"output_blocks.{idx}.0.{_resnet(rest)}" if kind == "resnets" else f"output_blocks.{idx}.1.{rest}"
    if m := re.fullmatch(r"up_blocks\.(\d+)\.upsamplers\.0\.conv\.(.+)", key):
        b = int(m[1])
        return f"output_blocks.{b * n + layers}.{2 if up_has_attention[b] else 1}.conv.{m[2]}"
    raise UserError(f"cannot export U-Net weight '{key}' to the LDM layout (only SD 1.x/2.x-style U-Nets)")


def vae_key_to_ldm(key: str, num_blocks: int) -> tuple[str, bool]:
    """One diffusers ``AutoencoderKL`` key → (its LDM key without prefix, whether it is an attention
    projection that LDM stores as a 1×1 convolution). Decoder up blocks are numbered in reverse in LDM."""
    from diffusers.loaders.single_file_utils import DIFFUSERS_TO_LDM_MAPPING

    top = DIFFUSERS_TO_LDM_MAPPING["vae"]
    if key in top:
        return top[key], False
    if m := re.fullmatch(r"encoder\.down_blocks\.(\d+)\.resnets\.(\d+)\.(.+)", key):
        return f"encoder.down.{m[1]}.block.{m[2]}.{m[3].replace('conv_shortcut', 'nin_shortcut')}", False
    if m := re.fullmatch(r"encoder\.down_blocks\.(\d+)\.downsamplers\.0\.conv\.(.+)", key):
        return f"encoder.down.{m[1]}.downsample.conv.{m[2]}", False
    if m := re.fullmatch(r"decoder\.up_blocks\.(\d+)\.resnets\.(\d+)\.(.+)", key):
        b = num_blocks - 1 - int(m[1])
        return f"decoder.up.{b}.block.{m[2]}.{m[3].replace('conv_shortcut', 'nin_shortcut')}", False
    if m := re.fullmatch(r"decoder\.up_blocks\.(\d+)\.upsamplers\.0\.conv\.(.+)", key):
        return f"decoder.up.{num_blocks - 1 - int(m[1])}.upsample.conv.{m[2]}", False
    if m := re.fullmatch(r"(encoder|decoder)\.mid_block\.resnets\.(\d+)\.(.+)", key):
        return f"{m[1]}.mid.block_{int(m[2]) + 1}.{m[3].replace('conv_shortcut', 'nin_shortcut')}", False
    attn = r"(encoder|decoder)\.mid_block\.attentions\.0\.(group_norm|to_q|to_k|to_v|to_out\.0)\.(.+)"
    if m := re.fullmatch(attn, key):
        return f"{m[1]}.mid.attn_1.{_VAE_ATTN_TO_LDM[m[2]]}.{m[3]}", m[2] != "group_norm"
    raise UserError(f"cannot export VAE weight '{key}' to the LDM layout")


def _text_state_dict(text_encoder) -> dict[str, Tensor]:
    """The text encoder's weights keyed like ``embeddings.*`` / ``encoder.layers.*`` / ``final_layer_norm.*``."""
    return {k.removeprefix("text_model."): v for k, v in text_encoder.state_dict().items()
            if not k.endswith("position_ids")}


def clip_to_open_clip(sd: dict[str, Tensor]) -> dict[str, Tensor]:
    """transformers CLIP text keys → OpenCLIP's (SD 2.x ``cond_stage_model.model.*``, no prefix):
    q/k/v projections are fused into ``attn.in_proj_*``."""
    names = {"embeddings.token_embedding.weight": "token_embedding.weight",
             "embeddings.position_embedding.weight": "positional_embedding",
             "final_layer_norm.weight": "ln_final.weight", "final_layer_norm.bias": "ln_final.bias"}
    parts = {"layer_norm1": "ln_1", "layer_norm2": "ln_2", "mlp.fc1": "mlp.c_fc", "mlp.fc2": "mlp.c_proj",
             "self_attn.out_proj": "attn.out_proj"}
    out = {}
    for key, value in sd.items():
        if key in names:
            out[names[key]] = value
            continue
        m = re.fullmatch(r"encoder\.layers\.(\d+)\.(.+)\.(weight|bias)", key)
        if not m:
            raise UserError(f"cannot export text encoder weight '{key}' to the OpenCLIP layout")
        layer, module, kind = m[1], m[2], m[3]
        if module in ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj"):
            if module == "self_attn.q_proj":
                qkv = [sd[f"encoder.layers.{layer}.self_attn.{p}_proj.{kind}"] for p in "qkv"]
                out[f"transformer.resblocks.{layer}.attn.in_proj_{kind}"] = torch.cat(qkv, dim=0)
            continue
        out[f"transformer.resblocks.{layer}.{parts[module]}.{kind}"] = value
    return out


def ldm_state_dict(unet, vae, text_encoder, text_layout: str = "auto") -> dict[str, Tensor]:
    """All weights in the original LDM key layout. ``text_layout``: "clip" (SD 1.x,
    ``cond_stage_model.transformer.*``), "open_clip" (SD 2.x, ``cond_stage_model.model.*``) or "auto"
    (OpenCLIP when the text encoder uses OpenCLIP's plain GELU, CLIP for OpenAI's quick-GELU)."""
    layers = unet.config.layers_per_block
    if not isinstance(layers, int):
        raise UserError(f"cannot export a U-Net with per-block layers_per_block={layers} to the LDM layout")
    up_attn = ["CrossAttn" in t for t in unet.config.up_block_types]
    out = {LDM_UNET + unet_key_to_ldm(k, layers, up_attn): v for k, v in unet.state_dict().items()}
    n_vae = len(vae.config.block_out_channels)
    for k, v in vae.state_dict().items():
        ldm_key, as_conv = vae_key_to_ldm(k, n_vae)
        out[LDM_VAE + ldm_key] = v[:, :, None, None] if as_conv and v.ndim == 2 else v
    if text_layout == "auto":
        text_layout = "open_clip" if text_encoder.config.hidden_act == "gelu" else "clip"
    text = _text_state_dict(text_encoder)
    if text_layout == "clip":
        out.update({LDM_CLIP + k: v for k, v in text.items()})
    elif text_layout == "open_clip":
        out.update({LDM_OPEN_CLIP + k: v for k, v in clip_to_open_clip(text).items()})
    else:
        raise UserError(f"unknown text layout '{text_layout}'; expected auto, clip or open_clip")
    return {k: v.detach().to("cpu").contiguous() for k, v in out.items()}


def export_single_file(path: str | Path, unet, vae, text_encoder, tokenizer, scheduler_config: dict,
                       extra: dict | None = None, text_layout: str = "auto") -> tuple[Path, Path]:
    """Write ``path`` (.safetensors, LDM layout, configs embedded in the metadata) and the diffusers
    config folder ``<stem>_config/`` next to it. Returns (file, config folder)."""
    from safetensors.torch import save_file

    path = Path(path)
    config_dir = path.with_name(path.stem + "_config")
    if config_dir.exists():
        shutil.rmtree(config_dir)
    write_config_folder(config_dir, unet, vae, text_encoder, tokenizer, scheduler_config, extra)
    meta = {"format": "pt"}
    sources = {"model_index": "model_index.json", "unet": "unet/config.json", "vae": "vae/config.json",
               "text_encoder": "text_encoder/config.json", "scheduler": "scheduler/scheduler_config.json",
               "extra": EXTRA_FILE}
    for key, rel in sources.items():
        if (config_dir / rel).is_file():
            meta[META_PREFIX + key] = (config_dir / rel).read_text(encoding="utf-8")
    meta[META_PREFIX + "special_tokens"] = json.dumps({"pad_token": str(tokenizer.pad_token)})
    save_file(ldm_state_dict(unet, vae, text_encoder, text_layout), str(path), metadata=meta)
    return path, config_dir
