"""Preference fine-tuning of the U-Net on the model's own pass / fail pairs: Diffusion-DPO (Wallace et al. 2023).

    python bench/self_filtered.py --model M --objects 2 --prompts 192 --images 8 --keep-failed --out runs/dpo_data
    python bench/diffusion_dpo.py --model M --data runs/dpo_data --out runs/dpo --steps 600

RAFT (bench/self_filtered.py + ``latentdiff finetune``) trains on the images the scorer passes and never sees
what it fails: its count rose but held-out colours drifted (BENCHMARKS.md, "What moves the count?"). DPO
trains on pairs of one prompt — a winner the scorer passes in full, a loser it fails (most often a third
object) — and moves the model's denoising error down on the winner *relative to* a frozen copy of the model
(the reference) and up on the loser, which keeps what both images share (colours, shapes, places) where the
reference has it. For a pair, one t and one noise ε for both images, per-sample errors
e(x) = w(t)·mean‖v̂(x_t) − v‖² (w: the recipe's min-SNR weight with its x₀ floor, the training loss's):

    loss = −log σ(−β/2 · [(e_θ(x_w) − e_ref(x_w)) − (e_θ(x_l) − e_ref(x_l))])

(Wallace et al. eq. 14 with their code's mean-over-elements errors and −β/2 scale). Every U-Net weight trains
(AdamW, warm-up then constant); the text encoder and VAE stay frozen; no conditioning dropout. Latents are
the VAE posterior means × scaling factor. Writes OUT/model (a model folder: the base's, with the new U-Net)
and OUT/log.jsonl. Runs on the CPU; a few minutes per hundred steps of 8 pairs.
"""
from __future__ import annotations

import argparse
import copy
import json
import random
import sys
import time
from collections import defaultdict
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def read_records(folder: Path, name: str) -> list[dict]:
    path = folder / name
    if not path.is_file():
        sys.exit(f"{path}: not found (make the data with bench/self_filtered.py --keep-failed)")
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def pairs_by_prompt(folder: Path) -> tuple[list[str], dict[str, list[int]], dict[str, list[int]], list[str]]:
    """Image files, and per prompt the indices of its winners and of its losers (only prompts with both)."""
    files, win, lose = [], defaultdict(list), defaultdict(list)
    for bucket, name in ((win, "metadata.jsonl"), (lose, "failed.jsonl")):
        for rec in read_records(folder, name):
            bucket[rec["text"]].append(len(files))
            files.append(rec["file_name"])
    prompts = sorted(p for p in win if p in lose)
    return files, win, lose, prompts


def folder_latents(pipe, folder: Path, names: list[str]) -> torch.Tensor:
    """The VAE posterior means of the images, × the scaling factor: (N, C, h, w)."""
    from latentdiff.train.stages import vae_latent_stats

    pixels = torch.as_tensor(np.stack([np.asarray(Image.open(folder / n).convert("RGB")) for n in names]))
    mean, _ = vae_latent_stats(pipe.vae, pixels.permute(0, 3, 1, 2), "cpu", batch=64)
    return mean * pipe.scaling_factor


@torch.no_grad()
def prompt_contexts(pipe, prompts: list[str], batch: int = 256) -> torch.Tensor:
    """The text encoder's last hidden state per prompt, (N, L, D) float32."""
    return torch.cat([pipe.encode_prompt(prompts[i:i + batch]).float() for i in range(0, len(prompts), batch)])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", required=True)
    ap.add_argument("--data", required=True, help="a folder from bench/self_filtered.py --keep-failed")
    ap.add_argument("--out", required=True)
    ap.add_argument("--steps", type=int, default=600)
    ap.add_argument("--pairs", type=int, default=8, help="pairs per step")
    ap.add_argument("--lr", type=float, default=1e-5)
    ap.add_argument("--beta", type=float, default=5000.0)
    ap.add_argument("--warmup", type=int, default=20)
    ap.add_argument("--sft", type=float, default=0.0, help="+ this × the winners' plain denoising loss")
    ap.add_argument("--anchor", default=None, metavar="DIR",
                    help="an image folder (metadata.jsonl: file_name, text) whose one-object images join the --sft "
                         "term, --pairs of them per step: keeps one-object prompts where they were")
    ap.add_argument("--anchor-images", type=int, default=2000, help="how many of --anchor's one-object images")
    ap.add_argument("--t-min", type=int, default=0,
                    help="draw the timesteps of every term from [t-min, T) only: a layout (how many objects, where) is "
                         "decided at high noise, colour and outline detail below it")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--log-every", type=int, default=10)
    args = ap.parse_args()

    from tqdm import tqdm

    from latentdiff.diffusion.loss import diffusion_loss
    from latentdiff.pipeline import Pipeline
    from latentdiff.train.stages import recipe_x0_weight_floor

    data, out = Path(args.data), Path(args.out)
    files, win, lose, prompts = pairs_by_prompt(data)
    if not prompts:
        sys.exit(f"{data}: no prompt has both a passing and a failing image")
    out.mkdir(parents=True, exist_ok=True)
    pipe = Pipeline.load(args.model, device="cpu", dtype=torch.float32)
    schedule, floor = pipe.schedule, recipe_x0_weight_floor(pipe.extra)
    if schedule.prediction != "v_prediction":
        sys.exit(f"{args.model}: expected a v-prediction model, got {schedule.prediction}")
    if not 0 <= args.t_min < schedule.num_timesteps:
        sys.exit(f"--t-min {args.t_min}: expected 0 <= t-min < {schedule.num_timesteps}")

    t0 = time.perf_counter()
    latents = folder_latents(pipe, data, files)  # (N, C, h, w)
    contexts = dict(zip(prompts, prompt_contexts(pipe, prompts)))  # (L, D) each
    anchor_latents = anchor_contexts = None
    if args.anchor:
        if not args.sft:
            sys.exit("--anchor needs --sft (the anchor images enter the plain denoising term)")
        from latentdiff.eval.scorer import parse_caption

        recs = [r for r in read_records(Path(args.anchor), "metadata.jsonl")
                if len(parse_caption(r["text"]).objects) == 1][: args.anchor_images]
        anchor_latents = folder_latents(pipe, Path(args.anchor), [r["file_name"] for r in recs])
        anchor_contexts = prompt_contexts(pipe, [r["text"] for r in recs])
        print(f"anchor: {len(recs)} one-object images of {args.anchor}")
    n_pairs = sum(len(win[p]) * len(lose[p]) for p in prompts)
    print(f"{len(files)} images, {len(prompts)} prompts with a winner and a loser ({n_pairs} pairs); "
          f"latents {tuple(latents.shape[1:])} in {time.perf_counter() - t0:.0f} s")

    policy = pipe.unet.train().requires_grad_(True)
    reference = copy.deepcopy(policy).eval().requires_grad_(False)
    opt = torch.optim.AdamW(policy.parameters(), lr=args.lr, weight_decay=0.0)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: min(1.0, (s + 1) / max(1, args.warmup)))
    rng, gen = random.Random(args.seed), torch.Generator().manual_seed(args.seed)

    def errors(net, x0, t, noise, ctx):
        """Each image's weighted denoising error, (B,): the training loss per sample."""
        fn = lambda x_t, tt: net(x_t, tt, encoder_hidden_states=ctx).sample  # noqa: E731
        return diffusion_loss(fn, schedule, x0, t=t, noise=noise, min_snr_gamma=5.0, x0_weight_floor=floor,
                              reduce=False)

    log, t0 = (out / "log.jsonl").open("w"), time.perf_counter()
    window = defaultdict(list)
    bar = tqdm(range(1, args.steps + 1), desc="dpo")
    for step in bar:
        chosen = [rng.choice(prompts) for _ in range(args.pairs)]
        w_idx = [rng.choice(win[p]) for p in chosen]
        l_idx = [rng.choice(lose[p]) for p in chosen]
        b = args.pairs
        x0 = torch.cat([latents[w_idx], latents[l_idx]])  # winners, then losers
        ctx = torch.stack([contexts[p] for p in chosen]).repeat(2, 1, 1)
        t = torch.randint(args.t_min, schedule.num_timesteps, (b,), generator=gen).repeat(2)
        noise = torch.randn(x0[:b].shape, generator=gen).repeat(2, 1, 1, 1)  # one ε per pair
        with torch.no_grad():
            e_ref = errors(reference, x0, t, noise, ctx)
        e_pol = errors(policy, x0, t, noise, ctx)
        diff = e_pol - e_ref
        inside = -0.5 * args.beta * (diff[:b] - diff[b:])
        loss = -F.logsigmoid(inside).mean()
        if args.sft:
            sft = e_pol[:b]
            if anchor_latents is not None:
                k = torch.randint(0, anchor_latents.shape[0], (b,), generator=gen)
                ta = torch.randint(args.t_min, schedule.num_timesteps, (b,), generator=gen)
                na = torch.randn(anchor_latents[k].shape, generator=gen)
                sft = torch.cat([sft, errors(policy, anchor_latents[k], ta, na, anchor_contexts[k])])
            loss = loss + args.sft * sft.mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(policy.parameters(), 1.0)
        opt.step()
        sched.step()
        window["loss"].append(loss.item())
        window["acc"].append((inside > 0).float().mean().item())
        window["win_diff"].append(diff[:b].mean().item())
        window["lose_diff"].append(diff[b:].mean().item())
        if step % args.log_every == 0 or step == args.steps:
            row = {"step": step, **{k: round(float(np.mean(v)), 6) for k, v in window.items()},
                   "seconds": round(time.perf_counter() - t0, 1)}
            log.write(json.dumps(row) + "\n")
            log.flush()
            bar.set_postfix(loss=f"{row['loss']:.4f}", acc=f"{row['acc']:.2f}")
            window.clear()
    log.close()
    policy.eval()
    pipe.extra["preference_finetune"] = {"method": "diffusion-dpo", "data": str(data), "base": args.model,
                                         **{k: getattr(args, k) for k in ("steps", "pairs", "lr", "beta", "sft",
                                                                         "anchor", "anchor_images", "t_min", "seed")}}
    pipe.save(out / "model")
    print(f"wrote {out / 'model'} ({time.perf_counter() - t0:.0f} s of training)")


if __name__ == "__main__":
    main()
