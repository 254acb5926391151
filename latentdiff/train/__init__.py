"""Training on accelerate: one loop (loop.py) shared by every stage (stages.py): VAE, CLIP, U-Net."""
