"""Which training change makes the default U-Net place objects where the prompt says? A proxy that
predicts the full recipe's position accuracy in well under an hour of CPU per trial (issue #27).

    python bench/position_proxy.py --variants base,v1,attn0.05,v1+attn0.05 --steps 2000 --out runs/proxy

Every variant warm-starts from the shipped U-Net and trains the same number of steps on the same
one-object scenes (captions always name the position, as "a [size] {colour} {shape} {in|at} the {cell}"),
the same seeds and batch; the baseline (``base``: the shipped recipe continued) belongs in every batch of
trials, since these machines are noisy and the proxy's absolute figures are not the full recipe's.

A variant is parts joined with ``+``:
- ``base``: ε-prediction, min-SNR-5 weights (the shipped recipe);
- ``v1``: v-prediction with weight (min(SNR, 5) + 1) / (SNR + 1) on the v error, i.e. min(SNR, 5) + 1 on
  the x₀ error, so the high-noise steps where placement is decided keep weight ≈ 1 instead of ≈ SNR;
- ``attnL``: the cross-attention grounding loss (latentdiff.train.grounding, the recipe's
  ``unet.grounding_loss``) with weight L (e.g. ``attn0.01``): each of the object's words (size, colour,
  shape, position) should put its attention mass inside the object's mask at every cross-attention layer,
  1 − Σ_p a_p m_p with a the token's attention map normalised over pixels (TokenCompose, Wang et al. 2024,
  token loss); it trains the word → place link at every t; ``attnL@T`` only at t ≥ T, where the
  object cannot be seen in x_t and only the words can say where it goes;
- ``lateP``: a share P of each batch draws t from the high-noise half [T/2, T) (e.g. ``late0.5``);
- ``lrX``: learning rate X (default 1e-4);
- ``te`` / ``teX``: the text encoder trains too (learning rate X, default the U-Net's), through the same
  loss: the shipped CLIP text encoder, trained contrastively for 400 steps, barely tells the position words
  apart (between the nine "a large red circle in the {cell}" prompts its last hidden state varies by
  ≤ 2.4 % of its squared norm at the position tokens and 0.3 % at EOS), so a frozen encoder may be what
  keeps the U-Net from placing.

``--init DIR`` warm-starts from an earlier variant's saved weights (DIR/unet, and DIR/text_encoder when
it has one) instead of the shipped model's, to continue a trial past its first budget.

Measured after training, on validation seeds (never the held-out seed or prompts):
- nine prompts "a large red circle in the {cell}" × 16 seeds, DDIM 25 steps, w = 4: distinct cells per
  seed across the nine prompts (1 when the noise alone places the object, 9 when the words do), placed
  right (the scorer's position), red circles (colour + shape), the 3 × 3 histogram of where the largest
  object lands and the asked → found confusion;
- the early x₀ estimate: its cell (largest deviation from the background, 3 × 3 pooled, decoded) after
  the first and the third of the 25 steps: how often it is the asked cell, and distinct cells per seed;
- the x₀ error rise when only the position words are swapped, at t ∈ {600, 750, 900, 975}, on 256
  validation scenes: (mse_swapped − mse_own) / mse_own; 0 when the U-Net ignores the position words.
Results: OUT/VARIANT/result.json (a finished variant is skipped on a rerun), OUT/table.md, stdout.
"""
from __future__ import annotations

import argparse
import copy
import json
import sys
import time
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from latentdiff.data import shapes as sw  # noqa: E402
from latentdiff.diffusion.loss import min_snr_weight  # noqa: E402
from latentdiff.diffusion.schedule import eps_to_x0, prediction_to_eps, q_sample, v_target  # noqa: E402
from latentdiff.speed import cpu_bf16_kind  # noqa: E402
from latentdiff.train.grounding import CrossAttnCapture, grounding_loss, instance_map, token_objects  # noqa: E402

SWAP_TS = (600, 750, 900, 975)
EVAL_SEED = 1000  # validation seeds 1000..1015; the held-out seed (90210) is never used here


@dataclass(frozen=True)
class Variant:
    name: str
    prediction: str = "epsilon"
    weighting: str = "min_snr"  # min_snr | x0_plus_one
    attn: float = 0.0
    attn_min_t: int = 0
    late: float = 0.0
    lr: float = 1e-4
    te: float = 0.0  # the text encoder's learning rate; 0 = frozen


def parse_variant(name: str) -> Variant:
    v = Variant(name)
    for part in name.split("+"):
        if part == "base":
            continue
        if part == "v1":
            v = replace(v, prediction="v_prediction", weighting="x0_plus_one")
        elif part.startswith("attn"):
            weight, _, min_t = part[4:].partition("@")
            v = replace(v, attn=float(weight), attn_min_t=int(min_t or 0))
        elif part.startswith("late"):
            v = replace(v, late=float(part[4:]))
        elif part.startswith("te"):
            v = replace(v, te=float(part[2:] or v.lr))
        elif part.startswith("lr"):
            v = replace(v, lr=float(part[2:]))
        else:
            raise SystemExit(f"--variants: unknown part {part!r} in {name!r} (see the module docstring)")
    return v


# --- data ----------------------------------------------------------------------------------------
def one_object_scenes(n: int, seed: int, always_size: bool = False):
    """n one-object scenes (no held-out triple) with position-naming captions."""
    rng = np.random.default_rng(seed)
    scenes, captions = [], []
    for i in range(n):
        scene = sw.sample_scene(rng, objects=(1, 1), exclude_held_out=True)
        obj = scene.objects[0]
        size = always_size or bool(rng.random() < 0.5)
        prep = "in the" if always_size else str(rng.choice(["in the", "at the"]))
        captions.append(sw.object_phrase(obj, size=size, position=True, preposition=prep))
        scenes.append(scene)
    return scenes, captions


def grounding_inputs(tokenizer, scenes, captions, length: int):
    """The grounding loss's inputs (latentdiff.train.grounding): tokens → object (N, L), objects (N, 64, 64)."""
    token_obj = np.stack([token_objects(tokenizer, c, [(s.objects[0].colour, s.objects[0].shape)], length)
                          for s, c in zip(scenes, captions)])
    inst = np.stack([instance_map(sw.render(s)[1], [s.objects[0].box]) for s in scenes])
    return torch.from_numpy(token_obj), torch.from_numpy(inst)


# --- training ------------------------------------------------------------------------------------
def loss_weight(schedule, t: torch.Tensor, v: Variant) -> torch.Tensor:
    """The shipped recipe's min-SNR-5; ``v1`` adds the recipe's ``unet.x0_weight_floor: 1``."""
    return min_snr_weight(schedule, t, 5.0, v.prediction, floor=1.0 if v.weighting == "x0_plus_one" else 0.0)


def draw_t(b: int, late: float, T: int, g: torch.Generator) -> torch.Tensor:
    t = torch.randint(0, T, (b,), generator=g)
    hi = torch.randint(T // 2, T, (b,), generator=g)
    return torch.where(torch.rand(b, generator=g) < late, hi, t)


def train_variant(base_pipe, data, v: Variant, steps: int, batch: int, seed: int, log) -> tuple:
    unet = copy.deepcopy(base_pipe.unet).float().train().requires_grad_(True)
    capture = CrossAttnCapture.attach(unet)
    schedule = replace(base_pipe.schedule, prediction=v.prediction)
    groups = [{"params": list(unet.parameters()), "lr": v.lr, "base_lr": v.lr}]
    text_encoder = None
    if v.te > 0:
        text_encoder = copy.deepcopy(base_pipe.text_encoder).float().train().requires_grad_(True)
        groups.append({"params": list(text_encoder.parameters()), "lr": v.te, "base_lr": v.te})
    opt = torch.optim.AdamW(groups, weight_decay=0.01)
    bf16 = cpu_bf16_kind() is not None  # the recipe's CPU precision path (mixed_precision: auto)
    mean, std, ctx, null = data["mean"], data["std"], data["ctx"], data["null"]
    token_obj, instances = data["token_obj"], data["instances"]
    sf, n, T = base_pipe.scaling_factor, mean.shape[0], schedule.num_timesteps
    t0, hist = time.time(), []
    for step in range(steps):
        g = torch.Generator().manual_seed(seed * 1_000_003 + step)
        idx = torch.randint(0, n, (batch,), generator=g)
        keep = torch.rand(batch, generator=g) >= 0.1  # conditioning dropout 0.1
        if text_encoder is None:
            c = torch.where(keep[:, None, None], ctx[idx], null)
        x0 = (mean[idx] + std[idx] * torch.randn(mean[idx].shape, generator=g)) * sf
        t = draw_t(batch, v.late, T, g)
        noise = torch.randn(x0.shape, generator=g)
        x_t = q_sample(schedule, x0, t, noise)
        target = noise if v.prediction == "epsilon" else v_target(schedule, x0, t, noise)
        capture.active = v.attn > 0
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            if text_encoder is not None:
                c = text_encoder(torch.where(keep[:, None], data["ids"][idx], data["null_ids"]))[0]
            pred = unet(x_t, t, encoder_hidden_states=c).sample
        capture.active = False
        per = (pred.float() - target).pow(2).flatten(1).mean(1)
        loss = (per * loss_weight(schedule, t, v)).mean()
        ground = keep & (t >= v.attn_min_t)  # captions kept, at the noise levels the variant grounds
        a_loss = grounding_loss(capture.take(), token_obj[idx], instances[idx], ground) if v.attn > 0 \
            else torch.zeros(())
        for group in opt.param_groups:
            group["lr"] = group["base_lr"] * min(1.0, (step + 1) / 100)
        opt.zero_grad(set_to_none=True)
        (loss + v.attn * a_loss).backward()
        torch.nn.utils.clip_grad_norm_([q for grp in groups for q in grp["params"]], 1.0)
        opt.step()
        hist.append((loss.item(), a_loss.item()))
        if (step + 1) % 100 == 0 or step + 1 == steps:
            recent = np.array(hist[-100:])
            log(f"  {v.name} step {step + 1}/{steps}  loss {recent[:, 0].mean():.4f}  attn {recent[:, 1].mean():.4f}"
                f"  {(step + 1) * batch / (time.time() - t0):.1f} samples/s")
    if text_encoder is not None:
        text_encoder = text_encoder.eval().requires_grad_(False)
    return unet.eval().requires_grad_(False), text_encoder, schedule, time.time() - t0, bf16


# --- measurements --------------------------------------------------------------------------------
def cell_of_deviation(image: np.ndarray) -> int:
    """Grid cell (0-8) with the largest mean deviation from the image's median colour."""
    x = image.astype(np.float32)
    dev = np.abs(x - np.median(x.reshape(-1, 3), 0)).sum(-1)  # (H, W)
    cells = [dev[r0:r1, c0:c1].mean() for r0, r1 in ((0, 22), (22, 42), (42, 64))
             for c0, c1 in ((0, 22), (22, 42), (42, 64))]
    return int(np.argmax(cells))


class EarlyX0:
    """A denoiser wrapper (the pipeline's ``guide`` hook) that keeps the x₀ estimate at chosen calls."""

    def __init__(self, calls=(0, 2)):
        self.calls, self.x0 = calls, {}

    def check(self, schedule, channels):
        pass

    def describe(self):
        return {"kind": "early_x0_probe"}

    def wrap(self, denoiser, schedule):
        count = [0]

        def f(x, t):
            eps = denoiser(x, t)
            if count[0] in self.calls:
                self.x0[count[0]] = eps_to_x0(schedule, x.float(), t, eps.float())
            count[0] += 1
            return eps
        return f


@torch.no_grad()
def placement_test(pipe, seeds: int = 16) -> dict:
    from latentdiff.eval.scorer import score

    found_cell = np.full((9, seeds), -1)
    right = red_circle = 0
    early = {k: np.zeros((9, seeds), int) for k in (0, 2)}
    for cell, pos in enumerate(sw.POSITIONS):
        prompt = f"a large red circle in the {pos}"
        probe = EarlyX0()
        lat = pipe.generate_latents(prompt, num_images=seeds, seed=EVAL_SEED, sampler="ddim", steps=25,
                                    guidance=4.0, batch_size=seeds, guide=probe)
        images = pipe.decode_latents(lat)
        for k, x0 in probe.x0.items():
            for j, im in enumerate(pipe.decode_latents(x0)):
                early[k][cell, j] = cell_of_deviation(im)
        for j, im in enumerate(images):
            s = score(im, prompt)
            o = s.objects[0]
            right += bool(o.position)
            red_circle += bool(o.colour and o.shape)
            if s.found:
                biggest = max(s.found, key=lambda f: f.area)
                found_cell[cell, j] = sw.POSITIONS.index(biggest.position)
    asked = np.arange(9)[:, None]
    distinct = float(np.mean([len(set(found_cell[:, j][found_cell[:, j] >= 0])) for j in range(seeds)]))
    hist = np.bincount(found_cell[found_cell >= 0], minlength=9).reshape(3, 3)
    confusion = np.zeros((9, 10), int)  # asked × found (column 9: nothing found)
    for a in range(9):
        for j in range(seeds):
            confusion[a, found_cell[a, j] if found_cell[a, j] >= 0 else 9] += 1
    out = {"n": 9 * seeds, "distinct_cells_per_seed": distinct, "placed_right": int(right),
           "red_circles": int(red_circle), "found_histogram_3x3": hist.tolist(), "confusion": confusion.tolist()}
    for k, cells in early.items():
        out[f"early_x0_call{k}_asked"] = int((cells == asked).sum())
        out[f"early_x0_call{k}_distinct_per_seed"] = float(np.mean([len(set(cells[:, j])) for j in range(seeds)]))
    return out


@torch.no_grad()
def swap_test(unet, schedule, ctx_own, ctx_swapped, data, sf: float) -> dict:
    """Relative rise of the x₀ error when only the position words are swapped (module docstring)."""
    g = torch.Generator().manual_seed(7)
    x0 = data["val_mean"] * sf
    n, out = x0.shape[0], {}
    for t_val in SWAP_TS:
        noise = torch.randn(x0.shape, generator=g)
        t = torch.full((n,), t_val, dtype=torch.long)
        x_t = q_sample(schedule, x0, t, noise)
        errs = []
        for ctx in (ctx_own, ctx_swapped):
            pred = torch.cat([unet(a, b, encoder_hidden_states=c).sample
                              for a, b, c in zip(x_t.split(64), t.split(64), ctx.split(64))])
            x0_hat = eps_to_x0(schedule, x_t, t, prediction_to_eps(schedule, x_t, t, pred, schedule.prediction))
            errs.append((x0_hat - x0).pow(2).mean().item())
        out[f"x0_swap_rise_t{t_val}"] = errs[1] / errs[0] - 1
    return out


# --- driver --------------------------------------------------------------------------------------
def prepare(pipe, num: int, log) -> dict:
    from latentdiff.models.text import max_length, tokenize
    from latentdiff.train.stages import vae_latent_stats

    log(f"data: {num} one-object scenes (seed 11), 256 validation scenes (seed 12)")
    scenes, captions = one_object_scenes(num, seed=11)
    val_scenes, val_caps = one_object_scenes(256, seed=12, always_size=True)
    images = torch.from_numpy(np.stack([sw.render(s)[0] for s in scenes])).permute(0, 3, 1, 2)
    val_images = torch.from_numpy(np.stack([sw.render(s)[0] for s in val_scenes])).permute(0, 3, 1, 2)
    mean, std = vae_latent_stats(pipe.vae, images, pipe.device)
    val_mean, _ = vae_latent_stats(pipe.vae, val_images, pipe.device)
    rng = np.random.default_rng(13)
    swapped = []
    for s, cap in zip(val_scenes, val_caps):
        other = [p for p in sw.POSITIONS if p != s.objects[0].position][int(rng.integers(8))]
        swapped.append(cap[: cap.rindex(" the ") + 5] + other)
    length = max_length(pipe.text_encoder)
    token_obj, instances = grounding_inputs(pipe.tokenizer, scenes, captions, length)
    ids = lambda caps: tokenize(pipe.tokenizer, pipe.text_encoder, caps).input_ids  # noqa: E731
    return {"mean": mean, "std": std, "ctx": encode(pipe, captions), "null": encode(pipe, [""])[0],
            "ids": ids(captions), "null_ids": ids([""])[0],
            "token_obj": token_obj, "instances": instances,
            "val_mean": val_mean, "val_caps": val_caps, "val_swapped": swapped}


@torch.no_grad()
def encode(pipe, caps: list[str]) -> torch.Tensor:
    return torch.cat([pipe.encode_prompt(caps[i:i + 256]).float() for i in range(0, len(caps), 256)])


def table(results: list[dict]) -> str:
    cols = ["variant", "steps", "distinct cells/seed", "placed right", "red circles", "early x₀ asked (1st, 3rd)",
            "early distinct/seed (3rd)", "x₀ swap rise t=600/750/900/975", "train s", "samples/s"]
    lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    for r in results:
        rise = "/".join(f"{r[f'x0_swap_rise_t{t}']:+.3f}" for t in SWAP_TS)
        lines.append(f"| {r['variant']} | {r['steps']} | {r['distinct_cells_per_seed']:.2f} "
                     f"| {r['placed_right']}/{r['n']} "
                     f"| {r['red_circles']}/{r['n']} | {r['early_x0_call0_asked']}, {r['early_x0_call2_asked']} "
                     f"| {r['early_x0_call2_distinct_per_seed']:.2f} | {rise} | {r['train_s']:.0f} "
                     f"| {r['samples_per_s']:.1f} |")
    return "\n".join(lines)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--variants", default="base,v1,attn0.05")
    ap.add_argument("--steps", type=int, default=2000)
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--num", type=int, default=8000, help="training scenes")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--eval-seeds", type=int, default=16, help="seeds per prompt of the placement test")
    ap.add_argument("--model", default=None, help="model folder to warm-start from (default: the shipped model)")
    ap.add_argument("--init", default=None, help="an earlier variant's folder (OUT/VARIANT) to warm-start from")
    ap.add_argument("--out", default="runs/proxy")
    args = ap.parse_args(argv)
    from latentdiff.pipeline import Pipeline

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    logf = open(out / "log.txt", "a")

    def log(msg):
        print(msg, flush=True)
        logf.write(msg + "\n")
        logf.flush()

    variants = [parse_variant(v) for v in args.variants.split(",")]
    pipe = Pipeline.load(args.model, device="cpu")
    if args.init:
        from diffusers import UNet2DConditionModel
        from transformers import CLIPTextModel

        pipe.unet = UNet2DConditionModel.from_pretrained(str(Path(args.init) / "unet")).eval()
        if (Path(args.init) / "text_encoder").is_dir():
            pipe.text_encoder = CLIPTextModel.from_pretrained(str(Path(args.init) / "text_encoder")).eval()
        log(f"warm start from {args.init}")
    data = None
    results = []
    for v in variants:
        res_file = out / v.name / "result.json"
        if res_file.is_file():
            results.append(json.loads(res_file.read_text()))
            log(f"{v.name}: done before, {res_file}")
            continue
        data = data or prepare(pipe, args.num, log)
        log(f"{v.name}: {v}")
        if args.steps > 0:
            unet, te, schedule, secs, bf16 = train_variant(pipe, data, v, args.steps, args.batch, args.seed, log)
        else:  # the starting model itself, measured without training
            unet, te, schedule, secs, bf16 = pipe.unet, None, pipe.schedule, 0.0, False
        test_pipe = Pipeline.from_components(unet, pipe.vae, te or pipe.text_encoder, pipe.tokenizer, schedule)
        t0 = time.time()
        res = {"variant": v.name, "steps": args.steps, "batch": args.batch, "train_s": secs, "bf16": bf16,
               "samples_per_s": args.steps * args.batch / secs if secs else 0.0,
               **placement_test(test_pipe, args.eval_seeds),
               **swap_test(unet, schedule, encode(test_pipe, data["val_caps"]),
                           encode(test_pipe, data["val_swapped"]), data, pipe.scaling_factor)}
        res["eval_s"] = time.time() - t0
        res_file.parent.mkdir(parents=True, exist_ok=True)
        res_file.write_text(json.dumps(res, indent=1))
        if args.steps > 0:
            unet.save_pretrained(str(out / v.name / "unet"), safe_serialization=True)
            if te is not None:
                te.save_pretrained(str(out / v.name / "text_encoder"), safe_serialization=True)
        results.append(res)
        log(json.dumps({k: res[k] for k in res if k not in ("confusion",)}))
    (out / "table.md").write_text(table(results) + "\n")
    log(table(results))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
