"""Model components: VAE, CLIP text encoder and tokenizer, latent U-Net (diffusers / transformers modules)."""
