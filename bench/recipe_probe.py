"""Which U-Net recipe learns to follow captions fastest? Train variants of the default U-Net stage on a
finished run's VAE, text encoder and latent cache, the same data, seed and step count each, and measure
what each learned of the caption.

    python bench/recipe_probe.py --run runs/default --steps 600 --variants base,text_embedding

Per variant, after its steps:
- prompt specificity: on held-out latents at fixed t and noise, how much worse ε is predicted with
  another image's caption than with the image's own, (mse_wrong − mse_own) / mse_own, at t = 300, 500,
  700, 900 and their mean; 0 means the U-Net ignores which caption it is given. Also the gain over the
  empty prompt, (mse_null − mse_own) / mse_own.
- scored samples: one image per prompt "a {size} {colour} {shape} in the {position}" over all colour ×
  shape pairs (w = 4, dpm++, 20 steps, two seeds), scored by the shapes scorer per attribute.
- samples/s of the training loop.
With ``--text-probe``, first: linear probes of each caption attribute on the frozen text encoder's
contexts (is the text encoder the limit?).

A variant is a name, optionally with overrides: ``base``, ``text_embedding`` (diffusers'
``addition_embed_type="text"``: the caption's hidden states, attention-pooled, added to the timestep
embedding, so every ResNet block sees the caption, not only the cross-attention levels),
``attn_all`` (cross-attention at every level), ``lr3e-4``; combine with ``+``: ``text_embedding+attn_all``.
``reference`` measures a trained U-Net without training (``--reference DIR``; default: the run's own,
RUN/unet/final/unet).
Results go to OUT/results.json and a table on stdout.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

TS = (300, 500, 700, 900)


def variant_config(cfg, name: str, steps: int, batch: int):
    """The run's U-Net stage with ``name``'s overrides and this probe's step count and batch."""
    model, loop, extra = cfg.unet.model, cfg.unet.loop, {}
    for part in name.split("+"):
        if part == "base":
            pass
        elif part == "text_embedding":  # diffusers' pooled-text embedding added to the timestep embedding
            extra = {"addition_embed_type": "text",
                     "addition_embed_type_num_heads": model.cross_attention_dim // model.attention_head_dim}
        elif part == "attn_all":
            model = dataclasses.replace(model, attention=(True,) * len(model.attention))
        elif part.startswith("lr"):
            loop = dataclasses.replace(loop, lr=float(part[2:]))
        else:
            raise SystemExit(f"--variants: unknown variant part {part!r}")
    loop = dataclasses.replace(loop, steps=steps, batch_size=batch, checkpoint_every=steps, validate_every=0,
                               warmup_steps=min(loop.warmup_steps, steps // 10), log_every=max(1, steps // 20))
    return dataclasses.replace(cfg.unet, model=model, loop=loop), extra


@torch.no_grad()
def specificity(stage, unet, hold_mean: torch.Tensor, hold_ctx: torch.Tensor, seed: int = 0) -> dict:
    """Relative ε-error increase with a wrong caption and with the empty prompt, per t (see module doc)."""
    from latentdiff.diffusion.schedule import q_sample

    g = torch.Generator().manual_seed(seed)
    x0 = hold_mean * stage.scaling_factor  # (N, C, h, w): posterior means, the cleanest latents
    n = x0.shape[0]
    wrong = hold_ctx[torch.roll(torch.arange(n), 1)]  # another image's caption
    null = stage.null_context[None].expand_as(hold_ctx)
    out = {}
    for t_val in TS:
        noise = torch.randn(x0.shape, generator=g)
        t = torch.full((n,), t_val, dtype=torch.long)
        x_t = q_sample(stage.schedule, x0, t, noise)
        errs = {}
        for key, ctx in (("own", hold_ctx), ("wrong", wrong), ("null", null)):
            pred = torch.cat([unet(x_t[i:i + 64], t[i:i + 64], encoder_hidden_states=ctx[i:i + 64]).sample
                              for i in range(0, n, 64)])
            errs[key] = float((pred - noise).pow(2).mean())
        out[t_val] = {"wrong": (errs["wrong"] - errs["own"]) / errs["own"],
                      "null": (errs["null"] - errs["own"]) / errs["own"], "mse_own": errs["own"]}
    out["mean_wrong"] = float(np.mean([out[t]["wrong"] for t in TS]))
    out["mean_null"] = float(np.mean([out[t]["null"] for t in TS]))
    return out


def text_probe(text_encoder, tokenizer, seed: int = 0) -> dict:
    """Linear probes on the frozen contexts: can a one-object caption's colour, shape, position and size be
    read from them? Every caption "a {size} {colour} {shape} in the {position}" (432), 70 % to fit a
    softmax regression, 30 % to test; features: the flattened contexts, and the EOS token's state alone."""
    import itertools

    from latentdiff.data.shapes import BASE_SHAPES, COLOURS, POSITIONS, SIZES
    from latentdiff.train.run import tokenize_captions

    sizes = tuple(SIZES)
    combos = list(itertools.product(sizes, COLOURS, BASE_SHAPES, POSITIONS))
    captions = [f"a {z} {c} {s} in the {p}" for z, c, s, p in combos]
    labels = torch.tensor([(COLOURS.index(c), BASE_SHAPES.index(s), POSITIONS.index(p), sizes.index(z))
                           for z, c, s, p in combos])
    ids = tokenize_captions(tokenizer, captions)  # (N, L)
    with torch.no_grad():
        h = text_encoder(ids).last_hidden_state.float()  # (N, L, D)
    eos = (ids == tokenizer.eos_token_id).int().argmax(dim=1)  # the first EOS: CLIP's pooled position
    perm = torch.from_numpy(np.random.default_rng(seed).permutation(len(captions)))
    fit, test = perm[: int(0.7 * len(captions))], perm[int(0.7 * len(captions)):]
    out = {}
    for feature, x in (("flat", h.flatten(1)), ("eos", h[torch.arange(len(captions)), eos])):
        x = (x - x[fit].mean(0)) / (x[fit].std(0) + 1e-6)
        for k, name in enumerate(("colour", "shape", "position", "size")):
            y = labels[:, k]
            w = torch.zeros(x.shape[1], int(y.max()) + 1, requires_grad=True)
            b = torch.zeros(int(y.max()) + 1, requires_grad=True)
            opt = torch.optim.Adam([w, b], lr=1e-2)
            for _ in range(300):
                opt.zero_grad()
                loss = torch.nn.functional.cross_entropy(x[fit] @ w + b, y[fit]) + 1e-3 * w.pow(2).sum()
                loss.backward()
                opt.step()
            out[f"{feature}_{name}"] = float(((x[test] @ w + b).argmax(1) == y[test]).float().mean())
    return out


def probe_prompts(seed: int = 0) -> list[str]:
    from latentdiff.data.shapes import BASE_SHAPES, COLOURS, POSITIONS, SIZES

    rng = np.random.default_rng(seed)
    return [f"a {rng.choice(tuple(SIZES))} {c} {s} in the {rng.choice(POSITIONS)}"
            for c in COLOURS for s in BASE_SHAPES]


def scored(pipe, prompts: list[str], seeds: int = 2) -> dict:
    from latentdiff.eval.scorer import score

    tallies = {k: [] for k in ("colour", "shape", "colour_shape", "position", "size")}
    for seed in range(seeds):
        images = pipe.generate(prompts, num_images=1, guidance=4.0, sampler="dpm++", steps=20, seed=seed,
                               batch_size=48)
        for prompt, im in zip(prompts, images):
            o = score(im, prompt).objects[0]
            tallies["colour"].append(bool(o.colour))
            tallies["shape"].append(bool(o.shape))
            tallies["colour_shape"].append(bool(o.colour and o.shape))
            tallies["position"].append(bool(o.position))
            tallies["size"].append(bool(o.size))
    return {k: float(np.mean(v)) for k, v in tallies.items()} | {"n": len(prompts) * seeds}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--run", default="runs/default", help="a finished run folder (vae/, clip/, latents/)")
    ap.add_argument("--config", default="configs/default.yaml")
    ap.add_argument("--variants", default="base,text_embedding")
    ap.add_argument("--steps", type=int, default=600)
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", default="runs/recipe_probe")
    ap.add_argument("--reference", default=None,
                    help="the U-Net folder the 'reference' variant measures (default: RUN/unet/final/unet; "
                         "e.g. MODEL/unet of scripts/model_from_checkpoint.py)")
    ap.add_argument("--text-probe", action="store_true",
                    help="also fit linear probes of colour/shape/position/size on the frozen text contexts")
    args = ap.parse_args()

    from accelerate import Accelerator
    from diffusers import UNet2DConditionModel

    from latentdiff.config import load_config
    from latentdiff.data.latents import cached_latents, load_images
    from latentdiff.diffusion.schedule import Schedule
    from latentdiff.models.tokenizer import load_clip_tokenizer
    from latentdiff.pipeline import Pipeline
    from latentdiff.train.config import TrainConfig
    from latentdiff.train.loop import run_stage
    from latentdiff.train.run import finished_stages, prepare_data, seed_init, tokenize_captions
    from latentdiff.train.stages import UNetTrainStage, vae_latent_stats

    cfg = load_config(args.config, TrainConfig)
    run, out = Path(args.run), Path(args.out)
    args.reference = args.reference or str(run / "unet" / "final" / "unet")
    accelerator = Accelerator(cpu=not torch.cuda.is_available())
    device = accelerator.device
    train_recs, hold_recs = prepare_data(cfg, accelerator)
    vae, text_encoder = finished_stages(run)
    vae = vae.to(device)
    size = cfg.vae.model.sample_size
    encode = lambda x: vae_latent_stats(vae, x, device)  # noqa: E731
    mean, std, _ = cached_latents(run / "latents", vae, train_recs, size, encode,
                                  lambda: load_images(train_recs, size, True))
    hold_mean, _ = encode(load_images(hold_recs, size, False))
    tokenizer = load_clip_tokenizer(None)
    tokenizer.model_max_length = cfg.clip.text.max_length
    tokens, null = tokenize_captions(tokenizer, [r.text for r in train_recs]), tokenize_captions(tokenizer, [""])[0]
    prompts = probe_prompts()
    if args.text_probe:
        acc = text_probe(text_encoder, tokenizer)
        print("text encoder linear probes (test accuracy): " + ", ".join(f"{k} {v:.3f}" for k, v in acc.items()))
    results = json.loads((out / "results.json").read_text()) if (out / "results.json").is_file() else {}
    hold_ctx = None  # the held-out captions' contexts: the same frozen text encoder for every variant
    for name in args.variants.split(","):
        reference = name == "reference"  # the run's own trained U-Net, not retrained
        ucfg, extra = variant_config(cfg, "base" if reference else name, args.steps, args.batch)
        seed_init(args.seed, "unet")
        stage = UNetTrainStage(ucfg, mean, std, tokens, null, text_encoder, vae.config.scaling_factor, device)
        if extra:  # a U-Net option the recipes do not offer: the same U-Net built with diffusers' extra kwargs
            base = {k: v for k, v in stage.model.config.items() if not k.startswith("_")}  # not _use_default_values
            stage.model = UNet2DConditionModel.from_config({**base, **extra}).to(device)
        if hold_ctx is None:
            hold_ctx = stage.encode(tokenize_captions(tokenizer, [r.text for r in hold_recs]))
        t0 = time.time()
        if not reference:
            run_stage(stage, ucfg.loop, out / name, args.seed, accelerator, resume=True, config_dict={"variant": name})
        seconds = time.time() - t0
        unet_dir = Path(args.reference) if reference else out / name / "final" / "unet"  # the EMA weights
        unet = UNet2DConditionModel.from_pretrained(str(unet_dir)).eval()
        spec = specificity(stage, unet, hold_mean, hold_ctx)
        pipe = Pipeline.from_components(unet, vae.cpu(), text_encoder, tokenizer, Schedule.from_config(ucfg.schedule))
        acc = scored(pipe, prompts)
        vae.to(device)
        results[name] = {"steps": None if reference else args.steps, "batch": args.batch, "train_s": seconds,
                         "params": sum(p.numel() for p in unet.parameters()), "specificity": spec, "scored": acc}
        out.mkdir(parents=True, exist_ok=True)
        (out / "results.json").write_text(json.dumps(results, indent=1))
        print(f"{name}: {seconds:.0f} s, specificity wrong {spec['mean_wrong']:.4f} null {spec['mean_null']:.4f}, "
              f"colour {acc['colour']:.2f} shape {acc['shape']:.2f} colour+shape {acc['colour_shape']:.2f} "
              f"position {acc['position']:.2f} size {acc['size']:.2f}", flush=True)
    print("\n| variant | steps × batch | train s | params | specificity (wrong) | (null) | colour | shape | "
          "colour+shape | position | size |\n|---|---|---|---|---|---|---|---|---|---|---|")
    for name, r in results.items():
        s, a = r["specificity"], r["scored"]
        trained = "–" if r["steps"] is None else f"{r['steps']} × {r['batch']}"
        print(f"| {name} | {trained} | {r['train_s']:.0f} | {r['params'] / 1e6:.2f} M | "
              f"{s['mean_wrong']:.4f} | {s['mean_null']:.4f} | {a['colour']:.2f} | {a['shape']:.2f} | "
              f"{a['colour_shape']:.2f} | {a['position']:.2f} | {a['size']:.2f} |")


if __name__ == "__main__":
    main()
