"""bench/vae_roundtrip.py's f = 2 warm start, which the experiment's figures in BENCHMARKS.md rest on."""
from __future__ import annotations

import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bench"))


def test_halve_factor_gives_an_f2_vae_made_of_the_old_weights():
    from diffusers import AutoencoderKL
    from vae_roundtrip import halve_factor

    torch.manual_seed(0)
    vae = AutoencoderKL(block_out_channels=(8, 16, 16), down_block_types=("DownEncoderBlock2D",) * 3,
                        up_block_types=("UpDecoderBlock2D",) * 3, latent_channels=4, norm_num_groups=4,
                        layers_per_block=1)
    x = torch.randn(1, 3, 32, 32)
    assert vae.encode(x).latent_dist.mean.shape[-1] == 8  # f = 4
    new = halve_factor(vae)
    assert new.encode(x).latent_dist.mean.shape[-1] == 16  # f = 2
    assert new.decode(torch.randn(1, 4, 16, 16)).sample.shape == (1, 3, 32, 32)
    old, kept = vae.state_dict(), new.state_dict()
    torch.testing.assert_close(kept["encoder.down_blocks.1.resnets.0.conv1.weight"],
                               old["encoder.down_blocks.1.resnets.0.conv1.weight"])
    torch.testing.assert_close(kept["decoder.up_blocks.1.resnets.0.conv1.weight"],  # the old last up block
                               old["decoder.up_blocks.2.resnets.0.conv1.weight"])
    torch.testing.assert_close(kept["encoder.mid_block.attentions.0.to_q.weight"],
                               old["encoder.mid_block.attentions.0.to_q.weight"])
    assert "encoder.down_blocks.1.downsamplers.0.conv.weight" not in kept



def test_widen_latent_starts_as_the_old_round_trip():
    """--latent-channels: the widened VAE encodes the old channels first and decodes as the old one did."""
    from diffusers import AutoencoderKL
    from vae_roundtrip import widen_latent

    torch.manual_seed(0)
    vae = AutoencoderKL(block_out_channels=(8, 16), down_block_types=("DownEncoderBlock2D",) * 2,
                        up_block_types=("UpDecoderBlock2D",) * 2, latent_channels=4, norm_num_groups=4,
                        layers_per_block=1).eval()
    wide = widen_latent(vae, 8).eval()
    x = torch.randn(2, 3, 16, 16)
    with torch.no_grad():
        old, new = vae.encode(x).latent_dist, wide.encode(x).latent_dist
        assert new.mean.shape[1] == 8
        torch.testing.assert_close(new.mean[:, :4], old.mean)
        torch.testing.assert_close(new.logvar[:, :4], old.logvar)
        z = torch.randn(2, 8, 8, 8)
        torch.testing.assert_close(wide.decode(z).sample, vae.decode(z[:, :4]).sample)  # blind to the new ones
