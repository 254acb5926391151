"""The three training stages of the default model, each a loss over a batch of example indices:

1. ``vae``  — ``AutoencoderKL``: L1 + L2 reconstruction and a small KL term; the latent scaling factor
   is measured on the data (1 / std of latents) and saved in the VAE's config.
2. ``clip`` — a small ``CLIPModel`` trained contrastively on (image, caption) pairs (the CLIP loss);
   its text tower becomes the ``CLIPTextModel`` of the diffusion model, its image tower is kept.
3. ``unet`` — ``UNet2DConditionModel`` on cached latents with the loss of [DDPM] Algorithm 1 and
   conditioning dropout: with probability p a caption is replaced by the empty prompt, whose encoding
   is the null condition, so one model serves classifier-free guidance. The text encoder stays frozen,
   or trains with the U-Net (``text_encoder_lr_scale``).
"""
from __future__ import annotations

import numpy as np
import torch

from latentdiff.conditioning import Conditioning, drop_conditions
from latentdiff.diffusion.loss import diffusion_loss
from latentdiff.diffusion.schedule import Schedule
from latentdiff.models.factory import build_clip, build_unet, build_vae
from latentdiff.pixels import save_grid, to_uint8, to_unit
from latentdiff.train.config import ClipStage, UNetStage, VAEStage


@torch.no_grad()
def reconstruct(vae, images_uint8: torch.Tensor, device) -> torch.Tensor:
    """(B, 3, H, W) uint8 → the VAE's decoding of its posterior means, (B, 3, H, W) float on the CPU."""
    out = []
    for chunk in images_uint8.split(64):
        x = to_unit(chunk).to(device)
        out.append(vae.decode(vae.encode(x).latent_dist.mean).sample.float().cpu())
    return torch.cat(out)


def psnr(a: torch.Tensor, b: torch.Tensor) -> float:
    """PSNR in dB between images in [−1, 1] measured on the 8-bit scale (peak 255)."""
    a8 = torch.from_numpy(to_uint8(a)).float()
    b8 = torch.from_numpy(to_uint8(b)).float()
    mse = (a8 - b8).pow(2).mean().item()
    return float("inf") if mse == 0 else 10 * np.log10(255.0**2 / mse)


# --- stage 1: the autoencoder ----------------------------------------------------------------------


class OnDevice:
    """Stages whose per-step data can live on the GPU (``LoopConfig.data_on_device``): ``place_data``
    moves the tensors named in ``data_names``; the loop then draws each step's randomness there too."""

    can_place_data = True  # False in subclasses that gather more tensors on the CPU (SpatialStage)
    data_device = torch.device("cpu")
    data_names: tuple[str, ...] = ()

    def place_data(self, device: torch.device) -> None:
        for name in self.data_names:
            value = getattr(self, name)
            if value is not None:
                setattr(self, name, value.to(device))
        self.data_device = torch.device(device)


class _VAELoss(torch.nn.Module):
    """Wraps the VAE so that DDP sees one forward: x → (reconstruction, KL per sample)."""

    def __init__(self, vae):
        super().__init__()
        self.vae = vae

    def forward(self, x: torch.Tensor, generator: torch.Generator | None = None):
        posterior = self.vae.encode(x).latent_dist
        where = generator.device if generator is not None else x.device
        z = posterior.mean + posterior.std * torch.randn(posterior.mean.shape, generator=generator, device=where).to(x)
        return self.vae.decode(z).sample, posterior.kl()


class VAETrainStage(OnDevice):
    name = "vae"
    data_names = ("images",)  # uint8; the held-out images stay on the CPU

    def __init__(self, cfg: VAEStage, images: torch.Tensor, holdout: torch.Tensor, device: torch.device):
        self.cfg, self.images, self.holdout, self.device = cfg, images, holdout, device
        self.model = _VAELoss(build_vae(cfg.model))
        self.num_examples = images.shape[0]

    def _crop(self, x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        c = self.cfg.crop
        if not c or c >= x.shape[-1]:
            return x
        top, left = torch.randint(0, x.shape[-1] - c + 1, (2,), generator=generator, device=generator.device).tolist()
        return x[..., top:top + c, left:left + c]

    def loss(self, model, index, generator):
        x = self._crop(to_unit(self.images[index]), generator).to(self.device)  # (B, 3, H, W)
        recon, kl = model(x, generator)
        cfg = self.cfg
        rec = cfg.l1_weight * (recon - x).abs().mean() + cfg.l2_weight * (recon - x).pow(2).mean()
        return rec + cfg.kl_weight * kl.mean() / x[0].numel()

    def validate(self, model, step, out):
        held = self.holdout
        recon = reconstruct(model.vae, held, self.device)
        value = psnr(recon, to_unit(held))
        k = min(8, held.shape[0])
        save_grid(np.concatenate([to_uint8(to_unit(held[:k])), to_uint8(recon[:k])]), 2,
                  out / "val" / f"step{step:07d}.png")
        return {"psnr_holdout_db": value, "step": step}

    def finish(self, model, out):
        vae = model.vae
        with torch.no_grad():
            sample = self.images[torch.randperm(self.num_examples, generator=torch.Generator().manual_seed(0))[:1024]]
            lat = torch.cat([vae.encode(to_unit(c).to(self.device)).latent_dist.sample().float().cpu()
                             for c in sample.split(64)])
        vae.register_to_config(scaling_factor=float(1.0 / lat.std()))
        vae.save_pretrained(str(out), safe_serialization=True)
        return out


# --- stage 2: the CLIP text encoder (and its image tower) --------------------------------------------


class ClipTrainStage(OnDevice):
    name = "clip"
    data_names = ("images", "tokens")

    def __init__(self, cfg: ClipStage, images, tokens, holdout, holdout_tokens, device):
        self.cfg, self.images, self.tokens, self.device = cfg, images, tokens, device
        self.holdout, self.holdout_tokens = holdout, holdout_tokens
        self.model = build_clip(cfg.text, cfg.image)
        self.num_examples = images.shape[0]

    def loss(self, model, index, generator):
        out = model(input_ids=self.tokens[index].to(self.device),
                    pixel_values=to_unit(self.images[index]).to(self.device), return_loss=True)
        return out.loss

    @torch.no_grad()
    def validate(self, model, step, out):
        """Top-1 image→caption retrieval among the holdout set (chance = 1/N)."""
        n = min(256, self.holdout.shape[0])
        res = model(input_ids=self.holdout_tokens[:n].to(self.device),
                    pixel_values=to_unit(self.holdout[:n]).to(self.device))
        acc = (res.logits_per_image.argmax(1).cpu() == torch.arange(n)).float().mean().item()
        return {"retrieval_top1_holdout": acc, "holdout_n": n, "step": step}

    def finish(self, model, out):
        from transformers import CLIPTextModel

        model.save_pretrained(str(out / "clip"), safe_serialization=True)
        text = CLIPTextModel(model.config.text_config)
        text.load_state_dict(model.text_model.state_dict())
        text.save_pretrained(str(out / "text_encoder"), safe_serialization=True)
        return out


# --- stage 3: the latent U-Net ---------------------------------------------------------------------


class UNetWithText(torch.nn.Module):
    """What the loop trains when the text encoder learns with the U-Net: both in one forward, so
    DistributedDataParallel, the optimizer, the EMA and the checkpoints see both. ``cond`` is either token
    ids (B, L) int64, encoded here, or cached contexts (B, L, D) float. Returns the U-Net's prediction."""

    def __init__(self, unet, text_encoder=None):
        super().__init__()
        self.unet = unet
        self.text_encoder = text_encoder

    def forward(self, x_t: torch.Tensor, t: torch.Tensor, cond: torch.Tensor) -> torch.Tensor:
        if not cond.is_floating_point():
            cond = self.text_encoder(cond)[0]  # (B, L, D) last hidden state, as the pipeline encodes
        return self.unet(x_t, t, encoder_hidden_states=cond).sample  # (B, C, h, w)


def recipe_x0_weight_floor(extra: dict) -> float:
    """The x₀-weight floor a model's U-Net was trained with, from its latentdiff.json: ``x0_weight_floor`` (what
    a model trained on top of another, like the inpainting model, records), else its recipe's (0 when none)."""
    if isinstance(extra.get("x0_weight_floor"), (int, float)):
        return float(extra["x0_weight_floor"])
    unet = (extra.get("recipe") or {}).get("unet") or {}
    return float(unet.get("x0_weight_floor", 0.0)) if isinstance(unet, dict) else 0.0


def loss_floor(configured: float | None, base) -> float:
    """The x₀-weight floor of a stage that trains on top of ``base`` (fine-tuning, a spatial condition, the
    inpainting model): ``configured``, or when None the one ``base`` was trained with, so the new weights learn
    at the noise levels the model itself learnt at (with v-prediction and min-SNR weighting alone, the
    high-noise steps, where an object's place is decided, get almost no weight)."""
    return recipe_x0_weight_floor(base.extra) if configured is None else float(configured)


class LatentDenoisingStage(OnDevice):
    """[DDPM] Algorithm 1 on cached VAE latents, conditioned on captions with conditioning dropout: the
    loss the U-Net stage and fine-tuning (:mod:`latentdiff.train.finetune`) share.

    Each step draws every image's latent afresh from its cached posterior, z₀ = (μ + σ·ε₀)·s, and with
    probability ``cond_dropout`` replaces its caption by the empty prompt, the null condition ∅.
    Subclasses set ``model`` and ``cond_dropout`` and say how a batch is conditioned (:meth:`condition`)
    and how the model is called (:meth:`predict`).
    """

    cond_dropout: float
    min_snr_gamma: float | None
    train_text: bool = False  # the text encoder trains too: a batch is conditioned on token ids
    x0_weight_floor: float = 0.0  # added to min(SNR, γ), the weight on the x₀ error
    grounding_weight: float = 0.0  # > 0: add the cross-attention grounding loss (set_grounding)
    grounding_min_t: int = 0  # ... on the samples with t >= this only
    token_obj = instances = capture = None
    data_names = ("mean", "std", "unique_tokens", "caption_index", "null_tokens", "contexts", "null_context",
                  "token_obj", "instances")

    def _setup(self, latent_mean, latent_std, scaling_factor: float, schedule: Schedule, tokens, null_tokens,
               text_encoder, device, encode_captions: bool = True) -> None:
        self.device, self.schedule, self.scaling_factor = device, schedule, scaling_factor
        self.mean, self.std = latent_mean, latent_std  # (N, C, h, w) each: the VAE posterior per image
        self.num_examples = latent_mean.shape[0]
        self.unique_tokens, self.caption_index = torch.unique(tokens, dim=0, return_inverse=True)  # (U, L), (N,)
        self.null_tokens = null_tokens  # (L,): the empty prompt
        self.text_encoder = text_encoder
        self.contexts = self.null_context = None
        if encode_captions:  # a frozen text encoder: each distinct caption is encoded once, up front
            self.text_encoder = text_encoder.to(device).eval().requires_grad_(False)
            self.contexts = self.encode(self.unique_tokens)  # (U, L, D) on the CPU
            self.null_context = self.encode(null_tokens[None])[0]  # (L, D): the null condition

    def place_data(self, device: torch.device) -> None:
        """Keep the latent posteriors, caption contexts and schedule on ``device`` (the GPU's memory), so a
        step gathers its batch and draws its noise there, with no host copy or wait; the loop then seeds
        a generator on that device. Draws differ from the CPU's, but a step's draws are still a function
        of (seed, step), so resuming stays exact."""
        super().place_data(device)
        self.schedule = self.schedule.to(device)

    @torch.no_grad()
    def encode(self, tokens: torch.Tensor, batch: int = 256) -> torch.Tensor:
        """Last hidden states of the frozen text encoder, (B, L, D) float32 on the CPU."""
        return torch.cat([self.text_encoder(c.to(self.device)).last_hidden_state.float().cpu()
                          for c in tokens.split(batch)])

    def set_grounding(self, weight: float, token_obj: torch.Tensor, instances: torch.Tensor, min_t: int = 0) -> None:
        """Add ``weight`` × the grounding loss of :mod:`latentdiff.train.grounding` on the samples with
        t ≥ ``min_t``: token_obj (N, L) int8, the object each caption token names (−1: none); instances
        (N, H, W) uint8, each image's objects."""
        from latentdiff.train.grounding import CrossAttnCapture

        self.grounding_weight, self.token_obj, self.instances = float(weight), token_obj, instances
        self.grounding_min_t = int(min_t)
        self.capture = CrossAttnCapture.attach(self.unet)

    def drop_text(self, captions: torch.Tensor, null: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        """``captions`` (B, ...: contexts or token ids) with each replaced by ``null`` (the empty prompt's)
        with probability ``cond_dropout`` (:func:`latentdiff.conditioning.drop_conditions`). The drop mask is
        kept in ``self.dropped`` (the grounding loss leaves those captions out)."""
        cond = Conditioning(context=captions)
        cond, masks = drop_conditions(cond, cond.null(null), {"context": self.cond_dropout}, generator)
        self.dropped = masks["context"]
        return cond.context

    def context(self, index: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        """Cross-attention context of a batch, (B, L, D), with conditioning dropout applied."""
        return self.drop_text(self.contexts[self.caption_index[index]], self.null_context, generator)

    def caption_tokens(self, index: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        """Token ids of a batch's captions, (B, L), with conditioning dropout applied (for a text encoder
        that is being trained, so its contexts cannot be cached)."""
        return self.drop_text(self.unique_tokens[self.caption_index[index]], self.null_tokens, generator)

    def condition(self, index: torch.Tensor, generator: torch.Generator):
        if self.train_text:
            return self.caption_tokens(index, generator).to(self.device)  # (B, L)
        return self.context(index, generator).to(self.device)  # (B, L, D)

    def predict(self, model, x_t: torch.Tensor, t: torch.Tensor, cond) -> torch.Tensor:
        if self.wrapped:
            return model(x_t, t, cond)
        return model(x_t, t, encoder_hidden_states=cond).sample

    @property
    def wrapped(self) -> bool:
        """``model`` is a :class:`UNetWithText` (called with one condition tensor), not a bare U-Net."""
        return isinstance(self.model, UNetWithText)

    @property
    def unet(self):
        return self.model.unet if self.wrapped else self.model

    def loss(self, model, index, generator):
        b = index.shape[0]
        cond = self.condition(index, generator)  # drawn first: the dropout mask leads each step's random stream
        where = self.data_device
        eps0 = torch.randn(self.mean[index].shape, generator=generator, device=where)
        x0 = ((self.mean[index] + self.std[index] * eps0) * self.scaling_factor).to(self.device)  # (B, C, h, w)
        t = torch.randint(0, self.schedule.num_timesteps, (b,), generator=generator, device=where).to(self.device)
        noise = torch.randn(x0.shape, generator=generator, device=where).to(self.device)
        fn = lambda x_t, tt: self.predict(model, x_t, tt, cond)  # noqa: E731
        loss = lambda: diffusion_loss(fn, self.schedule, x0, t=t, noise=noise,  # noqa: E731
                                      min_snr_gamma=self.min_snr_gamma, x0_weight_floor=self.x0_weight_floor)
        if not self.grounding_weight:
            return loss()
        from latentdiff.train.grounding import grounding_loss

        self.capture.active = True
        try:
            plain = loss()
        finally:
            self.capture.active = False
        keep = ~self.dropped.to(self.device) & (t >= self.grounding_min_t)
        ground = grounding_loss(self.capture.take(), self.token_obj[index].to(self.device),
                                self.instances[index].to(self.device), keep)
        return plain + self.grounding_weight * ground


class UNetTrainStage(LatentDenoisingStage):
    """Stage 3: a fresh ``UNet2DConditionModel`` trained on the text encoder's contexts: cached once when the
    encoder is frozen, computed each step when it trains too (``text_encoder_lr_scale`` > 0)."""

    name = "unet"

    def __init__(self, cfg: UNetStage, latent_mean, latent_std, tokens, null_tokens, text_encoder,
                 scaling_factor: float, device, assemble=None):
        self.cfg = cfg
        self.train_text = cfg.text_encoder_lr_scale > 0
        self._setup(latent_mean, latent_std, scaling_factor, Schedule.from_config(cfg.schedule), tokens,
                    null_tokens, text_encoder, device, encode_captions=not self.train_text)
        unet = build_unet(cfg.model)
        if self.train_text:
            self.model = UNetWithText(unet, text_encoder.train().requires_grad_(True))
            self.lr_scales = {"text_encoder.": cfg.text_encoder_lr_scale}
        else:
            self.model = unet
        self.assemble = assemble  # callable(unet, text_encoder or None, out_folder) -> model folder; None in tests

    @property
    def cond_dropout(self) -> float:
        return self.cfg.cond_dropout

    @property
    def min_snr_gamma(self) -> float | None:
        return self.cfg.min_snr_gamma

    @property
    def x0_weight_floor(self) -> float:
        return self.cfg.x0_weight_floor

    def validate(self, model, step, out):
        if self.assemble is None:
            return {"step": step}
        from latentdiff.pipeline import Pipeline

        text = model.text_encoder if self.wrapped else None
        folder = self.assemble(model.unet if self.wrapped else model, text, out / "val_model")
        pipe = Pipeline.load(folder, device="cpu" if self.device.type == "cpu" else str(self.device))
        prompts = list(self.cfg.validation_prompts)
        images = [np.asarray(im) for p in prompts for im in pipe.generate(p, num_images=4, seed=0)]
        save_grid(np.stack(images), len(prompts), out / "val" / f"step{step:07d}.png")
        return {"step": step}

    def finish(self, model, out):
        if self.wrapped:
            model.text_encoder.save_pretrained(str(out / "text_encoder"), safe_serialization=True)
            model = model.unet
        model.save_pretrained(str(out / "unet"), safe_serialization=True)
        return out


def vae_latent_stats(vae, images_uint8: torch.Tensor, device, batch: int = 128) -> tuple[torch.Tensor, torch.Tensor]:
    """Posterior mean and std of every image: (N, C, h, w) each, float32 on the CPU."""
    means, stds = [], []
    with torch.no_grad():
        for chunk in images_uint8.split(batch):
            post = vae.encode(to_unit(chunk).to(device)).latent_dist
            means.append(post.mean.float().cpu())
            stds.append(post.std.float().cpu())
    return torch.cat(means), torch.cat(stds)

