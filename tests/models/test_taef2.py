"""TAEF2: the shipped weights load strictly and reconstruct a face-like image faithfully."""

from __future__ import annotations

import numpy as np
import torch

from facesmith.models.taef2 import TAEF2, load_taef2


def _smooth_image(size: int = 64) -> torch.Tensor:
    """A smooth colour image in [-1, 1]: gradients and a disc, like a blurred face crop."""
    y, x = np.mgrid[0:size, 0:size] / size
    disc = ((x - 0.5) ** 2 + (y - 0.45) ** 2 < 0.08).astype(np.float32)
    rgb = np.stack([0.3 + 0.5 * disc, 0.2 + 0.4 * y, 0.6 - 0.3 * x], 0).astype(np.float32)
    return torch.from_numpy(rgb)[None] * 2 - 1


def test_shipped_weights_reconstruct_an_image():
    vae = load_taef2().eval()
    x = _smooth_image()
    with torch.no_grad():
        z = vae.encode(x).latents
        y = vae.decode(z).sample
    assert z.shape == (1, 32, 8, 8)
    mse = ((y - x) / 2).pow(2).mean().item()
    psnr = 10 * np.log10(1 / mse)
    assert psnr > 28, f"TAEF2 reconstruction PSNR {psnr:.1f} dB"
    assert y.min() >= -1 and y.max() <= 1


def test_scaling_is_applied_once_by_the_latents_module():
    # diffusers' convention: the VAE speaks raw latents, callers scale. Scaling twice (once in the
    # VAE, once in encode_image) would hand the UNet latents 1.1x too large.
    from facesmith.latents import decode_latents, encode_image

    plain, scaled = load_taef2(1.0).eval(), load_taef2(2.0).eval()
    x = _smooth_image()
    with torch.no_grad():
        assert torch.equal(plain.encode(x).latents, scaled.encode(x).latents)
        z1, z2 = encode_image(plain, x), encode_image(scaled, x)
        assert torch.allclose(z2, 2 * z1, atol=1e-5)
        assert torch.allclose(decode_latents(plain, z1), decode_latents(scaled, z2), atol=1e-5)


def test_vae_scale_factor_matches_pipelines_rule():
    # diffusers derives vae_scale_factor = 2 ** (len(block_out_channels) - 1).
    assert 2 ** (len(TAEF2().config.block_out_channels) - 1) == 8
