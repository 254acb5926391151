"""LoRA (Hu et al. 2021, "LoRA: Low-Rank Adaptation of Large Language Models", eq. 3): a frozen weight W₀
gains a trainable low-rank update, h = W₀x + (α/r)·B·A·x with A ∈ R^{r×k}, B ∈ R^{d×r}.

peft injects the layers; the file format is diffusers' (``StableDiffusionPipeline.save_lora_weights``):
one safetensors file with ``unet.*`` and optionally ``text_encoder.*`` keys and the peft ``LoraConfig`` of
each part in its metadata, which diffusers' ``load_lora_weights`` reads. Loading goes through diffusers'
own loader functions, so latentdiff applies a LoRA file (ours, or one made by other tools for a Stable
Diffusion model) exactly as diffusers does.

* U-Net, ``layers="attention"`` (the default): the attention projections ``to_q``, ``to_k``, ``to_v``,
  ``to_out.0`` (self and cross-attention).
* U-Net, ``layers="all"``: those plus every ResNet block's convolutions (``conv1``, ``conv2``,
  ``conv_shortcut``), the transformer blocks' ``proj_in``/``proj_out`` and feed-forward layers. A concept
  whose *look* is new (a new outline, not a new arrangement of known things) needs these: the attention
  layers only read and mix features, and in a U-Net whose top level has no attention (the default
  model's 16×16 latents) nothing else reaches the finest level. diffusers loads conv LoRA layers too.
* Text encoder (optional): ``q_proj``, ``k_proj``, ``v_proj``, ``out_proj`` of every CLIP layer.
"""
from __future__ import annotations

import math
import warnings
from pathlib import Path

import torch

from latentdiff.errors import UserError
from latentdiff.packaged import is_lora_name, packaged_lora, packaged_loras, packaged_name

UNET_TARGETS = ("to_q", "to_k", "to_v", "to_out.0")
UNET_ALL_TARGETS = UNET_TARGETS + ("conv1", "conv2", "conv_shortcut", "proj_in", "proj_out", "ff.net.0.proj",
                                   "ff.net.2")
LORA_LAYERS = {"attention": UNET_TARGETS, "all": UNET_ALL_TARGETS}
TEXT_TARGETS = ("q_proj", "k_proj", "v_proj", "out_proj")
LORA_FILE = "pytorch_lora_weights.safetensors"  # diffusers' default name: load_lora_weights(folder) finds it


def lora_config(rank: int, alpha: float | None, targets: tuple[str, ...]):
    """peft ``LoraConfig``: rank r, α (default r, so α/r = 1), Gaussian A and zero B (the update starts at 0)."""
    from peft import LoraConfig

    return LoraConfig(r=rank, lora_alpha=alpha or rank, init_lora_weights="gaussian", target_modules=list(targets))


def add_lora(unet, text_encoder=None, rank: int = 8, alpha: float | None = None, layers: str = "attention") -> dict:
    """Freeze ``unet`` (and ``text_encoder``) and inject trainable LoRA layers on the U-Net's ``layers``
    (``LORA_LAYERS``: attention | all, module docstring); returns the configs by part.

    The text encoder goes through peft's ``inject_adapter_in_model`` (transformers' ``add_adapter`` wants a
    newer peft than diffusers needs)."""
    from peft import inject_adapter_in_model

    configs = {"unet": lora_config(rank, alpha, LORA_LAYERS[layers])}
    unet.requires_grad_(False)
    unet.add_adapter(configs["unet"])
    if text_encoder is not None:
        configs["text_encoder"] = lora_config(rank, alpha, TEXT_TARGETS)
        text_encoder.requires_grad_(False)
        inject_adapter_in_model(configs["text_encoder"], text_encoder)
    for part in (unet, text_encoder):
        for name, p in (part.named_parameters() if part is not None else ()):
            p.requires_grad_("lora_" in name)
    return configs


def save_lora(folder: str | Path, unet, text_encoder, configs: dict) -> Path:
    """Write the LoRA layers of ``unet`` (and ``text_encoder`` when it has them) as ``folder/LORA_FILE``."""
    from diffusers import StableDiffusionPipeline
    from diffusers.utils import convert_state_dict_to_diffusers
    from peft.utils import get_peft_model_state_dict

    def layers(module, config):
        state = get_peft_model_state_dict(module)
        if set(config.target_modules) <= set(UNET_TARGETS + TEXT_TARGETS):
            state = convert_state_dict_to_diffusers(state)  # the attention-only format most tools read
        # else peft's own names throughout: diffusers' converter renames only attention keys, and a file mixing
        # both namings loses its attention layers in load_lora_weights (it reads a file as one format)
        return {k: v.detach().float().cpu().contiguous() for k, v in state.items()}

    with_text = "text_encoder" in configs and text_encoder is not None
    StableDiffusionPipeline.save_lora_weights(
        str(folder), unet_lora_layers=layers(unet, configs["unet"]),
        text_encoder_lora_layers=layers(text_encoder, configs["text_encoder"]) if with_text else None,
        unet_lora_adapter_metadata=configs["unet"].to_dict(),
        text_encoder_lora_adapter_metadata=configs["text_encoder"].to_dict() if with_text else None,
        weight_name=LORA_FILE, safe_serialization=True)
    return Path(folder) / LORA_FILE


def parse_lora_spec(text: str) -> tuple[Path, float]:
    """``FILE[:SCALE]`` → (path, scale); a folder stands for its ``pytorch_lora_weights.safetensors``, and a
    bare name that is no path here for a LoRA shipped in the package (``star``, ``star:0.8``)."""
    path, scale = text, 1.0
    head, sep, tail = text.rpartition(":")
    if sep and head and not Path(text).exists():
        try:
            path, scale = head, float(tail)
        except ValueError:
            pass
    if not math.isfinite(scale):
        raise UserError(f"--lora {text}: the scale must be a finite number")
    return resolve_lora_file(Path(path), f"--lora {text}"), scale


def resolve_lora_file(path: Path, where: str) -> Path:
    """A LoRA file from a path (a folder stands for its ``pytorch_lora_weights.safetensors``) or, when no such
    path exists, the short name of a LoRA shipped in the package (``star``)."""
    shipped = None if path.exists() else packaged_lora(str(path))
    if shipped is not None:
        return shipped
    if path.is_dir():
        path = path / LORA_FILE
    if not path.is_file():
        names = packaged_loras() if is_lora_name(str(path)) else []
        listed = f"; the package ships the LoRA files {', '.join(names)}" if names else ""
        raise UserError(f"{where}: file not found ({path}){listed}")
    if path.suffix != ".safetensors":
        raise UserError(f"{where}: expected a .safetensors LoRA file (pickle files can run code)")
    return path


def load_loras(unet, text_encoder, specs: list[tuple[Path, float]]) -> list[dict]:
    """Load each (file, scale) into the modules as its own adapter (not yet active: see :func:`activate`).
    Returns one entry per file: path, scale, sha256 (its provenance), adapter name, which parts it touched."""
    from latentdiff.provenance import file_sha256

    taken = set(getattr(unet, "peft_config", None) or {}) | set(getattr(text_encoder, "peft_config", None) or {})
    entries = []
    for path, scale in specs:
        path = resolve_lora_file(Path(path), str(path))
        name = next(f"lora{i}" for i in range(len(taken) + 1) if f"lora{i}" not in taken)
        taken.add(name)
        in_unet, in_text = _load_one(unet, text_encoder, path, name)
        # a packaged LoRA is recorded by its name, so that a record replays on any installation
        where_from = packaged_name(path) or str(Path(path).resolve())
        entries.append({"path": where_from, "scale": float(scale), "sha256": file_sha256(path),
                        "name": name, "unet": in_unet, "text_encoder": in_text})
    return entries


def activate(unet, text_encoder, entries: list[dict]) -> None:
    """Make exactly these adapters active, each with its scale (diffusers' ``set_adapters`` weights):
    h = W₀x + Σ_i scale_i·(α_i/r_i)·B_i·A_i·x."""
    from diffusers.loaders.lora_base import set_adapters_for_text_encoder

    on_unet = [e for e in entries if e["unet"]]
    on_text = [e for e in entries if e["text_encoder"]]
    if on_unet:
        unet.set_adapters([e["name"] for e in on_unet], [e["scale"] for e in on_unet])
    if on_text:
        set_adapters_for_text_encoder([e["name"] for e in on_text], text_encoder, [e["scale"] for e in on_text])


def fuse(module, names: list[str]) -> None:
    """Merge the adapters ``names`` into ``module``'s base weights at the scales :func:`activate` set, then
    remove every LoRA layer from it (it becomes the plain module it was, with changed weights)."""
    from diffusers.utils import recurse_remove_peft_layers
    from peft.tuners.tuners_utils import BaseTunerLayer

    for layer in module.modules():
        if isinstance(layer, BaseTunerLayer):
            here = [n for n in names if n in getattr(layer, "lora_A", {}) or n in getattr(layer, "lora_B", {})]
            if here:
                layer.merge(adapter_names=here)
    recurse_remove_peft_layers(module)
    if hasattr(module, "peft_config"):
        del module.peft_config
    if hasattr(module, "_hf_peft_config_loaded"):
        module._hf_peft_config_loaded = None


def _load_one(unet, text_encoder, path: Path, name: str) -> tuple[bool, bool]:
    """Load one LoRA file into the modules as adapter ``name``; which of them it touched."""
    from diffusers.loaders import StableDiffusionLoraLoaderMixin as Loader

    from latentdiff.quiet import quiet_libraries

    with quiet_libraries(), warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Already found a `peft_config`")  # stacking is intended
        try:
            state, alphas, meta = Loader.lora_state_dict(str(path), return_lora_metadata=True)
        except (OSError, ValueError, KeyError, RuntimeError) as exc:
            raise UserError(f"{path}: cannot read as a LoRA file ({str(exc).splitlines()[0]})") from None
        if not state or not all("lora" in k for k in state):
            raise UserError(f"{path}: not a LoRA file (its keys do not name LoRA layers)")
        try:
            Loader.load_lora_into_unet(state, alphas, unet, adapter_name=name, metadata=meta)
            Loader.load_lora_into_text_encoder(state, alphas, text_encoder, adapter_name=name, metadata=meta)
        except (ValueError, RuntimeError, KeyError) as exc:
            raise UserError(f"{path}: does not fit this model ({_last_line(exc)})") from None
    in_unet = name in (getattr(unet, "peft_config", None) or {})
    in_text = name in (getattr(text_encoder, "peft_config", None) or {})
    if not (in_unet or in_text):
        raise UserError(f"{path}: none of its layers match this model's U-Net or text encoder")
    return in_unet, in_text


def _last_line(exc: BaseException) -> str:
    lines = [ln.strip() for ln in str(exc).splitlines() if ln.strip()]
    return lines[-1] if lines else type(exc).__name__


def lora_parameter_count(module: torch.nn.Module) -> int:
    return sum(p.numel() for n, p in module.named_parameters() if "lora_" in n)
