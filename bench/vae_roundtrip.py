"""Can the VAE carry a star? Object recall through the autoencoder's round trip, by kind and size (issue #8).

    env OMP_WAIT_POLICY=PASSIVE HF_HUB_OFFLINE=1 .venv/bin/python bench/vae_roundtrip.py \\
        --model latentdiff/assets/default_model

A LoRA (or any U-Net fine-tune) can only draw what the VAE's decoder can draw from latents its encoder
makes. This encodes 200 fresh star scenes and 200 base scenes (1–3 objects each), decodes the posterior
means and counts the objects the scorer finds again with their colour, shape and box (IoU ≥ 0.5), small
and large apart, and ("outline") with their shape and box in any colour; plus the per-pixel MSE (0–255
scale). ``--model`` may be any folder with a vae/ in it, such as an earlier run's ``--out``.

``--finetune-decoder generic|concave|stars --steps N`` is the experiment that asks *where* the information
is lost: only the decoder (and ``post_quant_conv``) is trained, on half base scenes and half either generic
convex shapes (polygons of 3–8 sides and ellipses in the world's palette, never a star), generic concave
outlines (irregular polygons of 5–12 vertices whose radii vary from vertex to vertex, never a regular star)
or star scenes; the encoder is frozen, so the latents, and every U-Net trained on them, stay valid. Recall
is measured before and after and the decoder is saved to ``--out``. If star-trained decoding brings small
stars back, the encoder keeps them; if not, the encoder loses them and only a VAE trained on such outlines
can help. ``--with-encoder`` trains the encoder too (the VAE stage's loss, KL included): the question a
retrained default model has to answer first, whether a VAE that has seen generic outlines keeps a star it
has never seen (its latents then differ, so the U-Net and its companions would need retraining).
CPU: about 5.3 s per step at batch 32 with one torch thread beside another job (200 steps: 18 min).
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # this checkout's latentdiff, whichever one is installed


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default=None, help="model folder (default: the default model)")
    p.add_argument("--vae", default=None, help="a VAE folder instead (e.g. a recipe's runs/NAME/vae/final)")
    p.add_argument("--n", type=int, default=200, help="scenes per kind (default 200)")
    p.add_argument("--finetune-decoder", choices=("generic", "concave", "stars"), default=None)
    p.add_argument("--with-encoder", action="store_true", help="train the encoder too (the latents change)")
    p.add_argument("--kl-weight", type=float, default=1e-6, help="with --with-encoder: the VAE stage's KL weight")
    p.add_argument("--f2", action="store_true",
                   help="first turn the model's f = 4 VAE into an f = 2 one (one downsampling less; see halve_factor)")
    p.add_argument("--latent-channels", type=int, default=None,
                   help="first widen the latent to N channels (see widen_latent); the factor stays")
    p.add_argument("--steps", type=int, default=400)
    p.add_argument("--lr", type=float, default=3e-4)
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--out", default="runs/vae-roundtrip", help="figures, results.json and a trained decoder's vae/")
    return p.parse_args(argv)


def load_vae(model: str | None, folder: str | None = None):
    from diffusers import AutoencoderKL

    from latentdiff.checkpoint import DEFAULT_MODEL_DIR

    return AutoencoderKL.from_pretrained(folder or str(Path(model or DEFAULT_MODEL_DIR) / "vae"),
                                         torch_dtype=torch.float32)


def halve_factor(vae):
    """An AutoencoderKL with one down/up-sampling less (f = 4 → 2: a 64-px image gives 32×32 latents),
    warm-started from ``vae``: the encoder keeps all but its last block (whose input the new last block takes
    without downsampling), the decoder all but its second block, so every kept weight has its old shape."""
    from diffusers import AutoencoderKL

    cfg = dict(vae.config)
    n = len(cfg["block_out_channels"])
    if n < 3:
        raise SystemExit(f"--f2: the VAE has {n} blocks; need at least 3")
    keep = list(cfg["block_out_channels"][:-1])
    if keep[-1] != cfg["block_out_channels"][-1]:
        raise SystemExit("--f2: the last two blocks must have the same width")
    new = AutoencoderKL(**{**{k: v for k, v in cfg.items() if not k.startswith("_")}, "block_out_channels": keep,
                           "down_block_types": cfg["down_block_types"][:-1],
                           "up_block_types": cfg["up_block_types"][:-1]})
    old, state = vae.state_dict(), {}
    for key, value in old.items():
        parts = key.split(".")
        if parts[0] == "encoder" and parts[1] == "down_blocks":
            block = int(parts[2])
            if block == n - 1 or (block == n - 2 and parts[3] == "downsamplers"):
                continue  # the old last block goes; the new last one does not downsample
        if parts[0] == "decoder" and parts[1] == "up_blocks":
            block = int(parts[2])
            if block == 1:
                continue  # the old second up block goes; later ones move up by one
            if block > 1:
                parts[2] = str(block - 1)
        state[".".join(parts)] = value
    missing, unexpected = new.load_state_dict(state, strict=False)
    if missing or unexpected:
        raise SystemExit(f"--f2: weights do not fit: missing {missing[:4]}, unexpected {unexpected[:4]}")
    return new


def widen_latent(vae, channels: int):
    """An AutoencoderKL like ``vae`` with ``channels`` latent channels, warm-started from it: every weight
    keeps its value; the four convolutions that face the latent (the encoder's output, both quant convs,
    the decoder's input) keep the old channels in the first slots of the new ones (for the moments, in each
    of the mean and log-variance halves); the quant convs are the identity on the new channels, the decoder
    starts blind to them, and they start with the old mean log-variance bias: so the widened VAE's round
    trip starts as the old one's."""
    from diffusers import AutoencoderKL

    cfg = {k: v for k, v in vae.config.items() if not k.startswith("_")}
    c_old, n = cfg["latent_channels"], min(cfg["latent_channels"], channels)
    new = AutoencoderKL(**{**cfg, "latent_channels": channels})
    state = new.state_dict()
    latent = list(range(n))  # (old index = new index) in a C-channel dimension
    moments_old = latent + [c_old + i for i in latent]  # in a 2C-channel (mean, logvar) dimension
    moments_new = latent + [channels + i for i in latent]
    dims = {"encoder.conv_out": ("moments", None), "quant_conv": ("moments", "moments"),
            "post_quant_conv": ("latent", "latent"), "decoder.conv_in": (None, "latent")}
    pick = {"moments": (moments_old, moments_new), "latent": (latent, latent), None: (None, None)}
    for key, value in vae.state_dict().items():
        target = state[key]
        layer = next((name for name in dims if key.startswith(name + ".")), None)
        if layer is None:
            if target.shape != value.shape:
                raise SystemExit(f"--latent-channels: unexpected shape change of {key}")
            state[key] = value
            continue
        (o_old, o_new), (i_old, i_new) = pick[dims[layer][0]], pick[dims[layer][1]]
        if layer in ("quant_conv", "post_quant_conv"):  # 1×1: identity on the new channels, none mixed in
            target.zero_()
            if value.ndim == 4:
                target[:, :, 0, 0] = torch.eye(target.shape[0])
        elif layer == "decoder.conv_in" and value.ndim == 4:
            target[:, n:] = 0  # the decoder starts as before; the new channels' weights grow from zero
        if value.ndim == 1 or i_old is None:  # a bias, or every input channel kept
            rows_new, rows_old = (o_new, o_old) if o_old is not None else (slice(None), slice(None))
            target[rows_new] = value[rows_old]
        elif o_old is None:  # every output channel kept
            target[:, i_new] = value[:, i_old]
        else:
            target[np.ix_(o_new, i_new)] = value[np.ix_(o_old, i_old)]
        if key.endswith("bias") and dims[layer][0] == "moments":  # new log-variance channels: old mean
            target[channels + n:] = value[c_old:].mean()
    new.load_state_dict(state)
    return new


def roundtrip(vae, images: np.ndarray) -> np.ndarray:
    """(N, H, W, 3) uint8 → decoded posterior means, (N, H, W, 3) uint8 (the VAE stage's reconstruction)."""
    from latentdiff.pixels import to_uint8
    from latentdiff.train.stages import reconstruct

    return to_uint8(reconstruct(vae, torch.from_numpy(images).permute(0, 3, 1, 2), "cpu"))


def recall(vae, n: int, out: Path, tag: str) -> dict:
    """Objects found again after the round trip, by kind (star | base) and size; MSE; a figure per kind."""
    from latentdiff.data.shapes import STAR, render, sample_scene
    from latentdiff.eval.scorer import box_iou, find_objects

    rng, res = np.random.default_rng(123), {}
    for kind, shapes in (("star", (STAR,)), ("base", None)):
        scenes = [sample_scene(rng, shapes=shapes) if shapes else sample_scene(rng) for _ in range(n)]
        images = np.stack([render(s)[0] for s in scenes])
        decoded = roundtrip(vae, images)
        for scene, image in zip(scenes, decoded):
            found = find_objects(image)
            for o in scene.objects:
                shaped = [f for f in found if f.shape == o.shape and box_iou(f.box, o.box) >= 0.5]
                for key, ok in ((f"{kind} {o.size}", any(f.colour == o.colour for f in shaped)),
                                (f"{kind} {o.size} outline", bool(shaped))):  # outline: shape and box, any colour
                    hit = res.setdefault(key, [0, 0])
                    hit[0], hit[1] = hit[0] + ok, hit[1] + 1
        res[f"{kind} mse"] = float(((decoded.astype(np.float64) - images) ** 2).mean())
        res[f"{kind} psnr_db"] = float(10 * np.log10(255.0 ** 2 / max(res[f"{kind} mse"], 1e-12)))
        strip = np.concatenate([np.concatenate(list(images[:8]), 1), np.concatenate(list(decoded[:8]), 1)])
        Image.fromarray(strip).resize((strip.shape[1] * 3, strip.shape[0] * 3), Image.NEAREST).save(
            out / f"{tag}-{kind}.png")
    print(tag + ": " + ", ".join(f"{k} {v[0]}/{v[1]} ({v[0] / v[1]:.0%})" if isinstance(v, list) else f"{k} {v:.1f}"
                                 for k, v in res.items()), flush=True)
    return res


def finetune_decoder(vae, data: str, steps: int, lr: float, batch: int, with_encoder: bool = False,
                     kl_weight: float = 1e-6) -> None:
    from latentdiff.data.outlines import concave_scene, generic_scene
    from latentdiff.data.shapes import STAR, render, sample_scene
    from latentdiff.pixels import to_unit_hwc
    from latentdiff.speed import classic_attention, cpu_bf16_kind

    torch.manual_seed(0)
    rng = np.random.default_rng(0)
    other = {"generic": lambda: generic_scene(rng), "concave": lambda: concave_scene(rng),
             "stars": lambda: render(sample_scene(rng, shapes=(STAR,)))[0]}[data]
    vae.requires_grad_(False)
    params = list(vae.decoder.parameters()) + list(vae.post_quant_conv.parameters())
    if with_encoder:
        params += list(vae.encoder.parameters()) + list(vae.quant_conv.parameters())
    for p in params:
        p.requires_grad_(True)
    opt = torch.optim.AdamW(params, lr=lr, weight_decay=0.0)
    bf16 = cpu_bf16_kind() is not None  # the training recipe's precision path (bench/cpu_train.py)
    if bf16:
        classic_attention(vae)
    t0 = time.time()
    for step in range(1, steps + 1):
        for group in opt.param_groups:  # 20-step warm-up, cosine to 0
            group["lr"] = lr * min(1.0, step / 20) * 0.5 * (1 + np.cos(np.pi * (step - 1) / steps))
        x = to_unit_hwc(np.stack([render(sample_scene(rng))[0] if i % 2 == 0 else other() for i in range(batch)]))
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            with torch.set_grad_enabled(with_encoder):
                posterior = vae.encode(x).latent_dist
                z = posterior.sample()
            decoded = vae.decode(z).sample.float()
        loss = (decoded - x).abs().mean() + (decoded - x).pow(2).mean()  # the VAE stage's L1 + L2
        if with_encoder:
            loss = loss + kl_weight * posterior.kl().mean() / x[0].numel()  # and its KL term
        opt.zero_grad()
        loss.backward()
        opt.step()
        if step % 25 == 0 or step == steps:
            print(f"step {step}: loss {loss.item():.4f} ({time.time() - t0:.0f} s)", flush=True)


def main(argv=None) -> int:
    args = parse_args(argv)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    vae = load_vae(args.model, args.vae)
    if args.f2:
        vae = halve_factor(vae)
    if args.latent_channels:
        vae = widen_latent(vae, args.latent_channels)
    results = {"command": "python " + " ".join(sys.argv), "before": recall(vae, args.n, out, "before")}
    if args.finetune_decoder:
        finetune_decoder(vae, args.finetune_decoder, args.steps, args.lr, args.batch_size, args.with_encoder,
                         args.kl_weight)
        tag = f"after-{args.finetune_decoder}" + ("-with-encoder" if args.with_encoder else "")
        results["after"] = recall(vae, args.n, out, tag)
        vae.save_pretrained(str(out / "vae"), safe_serialization=True)
    (out / "results.json").write_text(json.dumps(results, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
