"""Training checkpoints: safetensors + JSON, written atomically, never pickled.

A checkpoint is a folder ``ckpt-0001000/`` holding

    model.safetensors      the trained module's state dict
    ema.safetensors        the EMA shadow weights (same keys)
    optimizer.safetensors  the optimizer's tensors, flattened to ``state.<param index>.<name>``
    state.json             step, counters, the optimizer's param groups, the config, the RNG seeds

It is written to ``ckpt-0001000.tmp/`` and renamed into place; ``latest`` (a one-line file, itself
replaced atomically) names the newest complete checkpoint. A killed run leaves at most a ``.tmp``
folder, which is ignored and cleaned up.
"""
from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from latentdiff.errors import UserError


def flatten_optimizer(opt: torch.optim.Optimizer) -> tuple[dict[str, torch.Tensor], dict]:
    """Split an optimizer's state dict into tensors (for safetensors) and JSON-able param groups."""
    sd = opt.state_dict()
    tensors, scalars = {}, {}
    for idx, st in sd["state"].items():
        for name, value in st.items():
            if torch.is_tensor(value):
                tensors[f"state.{idx}.{name}"] = value.detach().cpu().contiguous()
            else:
                scalars[f"{idx}.{name}"] = value
    return tensors, {"param_groups": sd["param_groups"], "scalars": scalars}


IMPLEMENTATION_FLAGS = ("fused", "foreach", "capturable", "differentiable")


def unflatten_optimizer(opt: torch.optim.Optimizer, tensors: dict[str, torch.Tensor], meta: dict) -> None:
    state: dict[int, dict] = {}
    for key, value in tensors.items():
        _, idx, name = key.split(".", 2)
        state.setdefault(int(idx), {})[name] = value
    for key, value in meta.get("scalars", {}).items():
        idx, name = key.split(".", 1)
        state.setdefault(int(idx), {})[name] = value
    # A checkpoint's groups bring their hyperparameters (lr, betas, weight decay ...), but how the update
    # is computed (fused, foreach, capturable) is the resuming optimizer's: a checkpoint written before the
    # loop used the fused AdamW would otherwise switch it back to the per-tensor update, which refuses
    # the found_inf the loop hands it.
    groups = [{**saved, **{k: now[k] for k in IMPLEMENTATION_FLAGS if k in now}}
              for saved, now in zip(meta["param_groups"], opt.param_groups, strict=True)]
    opt.load_state_dict({"state": state, "param_groups": groups})


def trained_state_dict(module: torch.nn.Module) -> dict[str, torch.Tensor]:
    """What a checkpoint stores of ``module``, on the CPU: its whole state dict when every parameter is
    trained, else only the trained parameters (a LoRA checkpoint holds the LoRA weights, not the base)."""
    params = list(module.named_parameters())
    trained = [n for n, p in params if p.requires_grad]
    state = module.state_dict()
    keys = state.keys() if len(trained) == len(params) else trained
    return {k: state[k].detach().cpu().contiguous() for k in keys}


def save_checkpoint(folder: Path, step: int, model: torch.nn.Module, ema_params: list[torch.Tensor] | None,
                    optimizer: torch.optim.Optimizer, state: dict, keep: int = 2, keep_every: int = 0) -> Path:
    """Write checkpoint ``step`` under ``folder`` atomically and prune to the newest ``keep``, sparing those whose
    step is a multiple of ``keep_every`` (when > 0)."""
    folder.mkdir(parents=True, exist_ok=True)
    final = folder / f"ckpt-{step:07d}"
    tmp = folder / f"ckpt-{step:07d}.tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    weights = trained_state_dict(model)
    save_file(weights, str(tmp / "model.safetensors"))
    if ema_params is not None:
        names = [n for n, p in model.named_parameters() if p.requires_grad]
        save_file({n: p.detach().cpu().contiguous() for n, p in zip(names, ema_params)}, str(tmp / "ema.safetensors"))
    opt_tensors, opt_meta = flatten_optimizer(optimizer)
    save_file(opt_tensors, str(tmp / "optimizer.safetensors"))
    (tmp / "state.json").write_text(json.dumps({**state, "step": step, "optimizer": opt_meta}, indent=1))
    shutil.rmtree(final, ignore_errors=True)
    os.replace(tmp, final)
    _write_atomic(folder / "latest", final.name + "\n")
    for old in sorted(folder.glob("ckpt-*"))[:-keep]:
        number = old.name.removeprefix("ckpt-")  # "0001000"; a ".tmp" folder's is not a number
        spared = keep_every > 0 and number.isdigit() and int(number) % keep_every == 0
        if old.suffix != ".tmp" and old != final and not spared:
            shutil.rmtree(old, ignore_errors=True)
    return final


def _write_atomic(path: Path, text: str) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def latest_checkpoint(folder: Path) -> Path | None:
    """The newest complete checkpoint named by ``folder/latest``, or None."""
    pointer = folder / "latest"
    if not pointer.is_file():
        return None
    ckpt = folder / pointer.read_text().strip()
    if not (ckpt / "state.json").is_file():
        raise UserError(f"{pointer}: names {ckpt.name}, which is missing or incomplete")
    return ckpt


def checkpoint_step(folder: Path) -> int:
    """The step of the newest checkpoint in ``folder`` (:func:`latest_checkpoint`), 0 when there is none."""
    ckpt = latest_checkpoint(folder)
    return int(json.loads((ckpt / "state.json").read_text())["step"]) if ckpt is not None else 0


def load_checkpoint(ckpt: Path, model: torch.nn.Module, optimizer: torch.optim.Optimizer | None) -> dict:
    """Load weights (and optimizer state) from ``ckpt`` into the given objects; return state.json's dict
    with ``ema`` (a name → tensor dict, or None) added."""
    try:
        state = json.loads((ckpt / "state.json").read_text())
        weights = load_file(str(ckpt / "model.safetensors"))
        missing, unexpected = model.load_state_dict(weights, strict=False)
        trained = {n for n, p in model.named_parameters() if p.requires_grad}
        missing = [k for k in missing if k in trained]  # frozen weights are not in a partial checkpoint
        if missing or unexpected:
            raise UserError(f"{ckpt}/model.safetensors: does not match the model in the config "
                            f"(missing {len(missing)} keys, unexpected {len(unexpected)})")
        if optimizer is not None:
            unflatten_optimizer(optimizer, load_file(str(ckpt / "optimizer.safetensors")), state["optimizer"])
        ema_path = ckpt / "ema.safetensors"
        state["ema"] = load_file(str(ema_path)) if ema_path.is_file() else None
    except RuntimeError as exc:  # shapes differ from the model's
        raise UserError(f"{ckpt}/model.safetensors: does not match the model "
                        f"({str(exc).splitlines()[-1].strip()})") from None
    except (OSError, ValueError, KeyError) as exc:
        raise UserError(f"{ckpt}: cannot read checkpoint ({exc})") from None
    return state
