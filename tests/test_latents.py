"""Pixels <-> latents: the encode/decode round trip and the NaN-guarded half-precision decode."""

from __future__ import annotations

import pytest
import torch

import factory
from facesmith.latents import VaeUpcastWarning, decode_latents, encode_image


def test_nan_in_a_half_precision_decode_is_redone_in_float32():
    import factory

    vae = factory.tiny_sd15().vae
    with torch.no_grad():
        vae.decoder.conv_in.weight.mul_(2e4)  # activations overflow fp16 (max 65504); fine in fp32
    latents = 3 * torch.randn(1, 4, 8, 8, generator=torch.Generator().manual_seed(0))
    reference = decode_latents(vae, latents)
    vae.to(torch.float16)
    with pytest.warns(VaeUpcastWarning):
        guarded = decode_latents(vae, latents.half())
    assert torch.isfinite(guarded).all()
    assert vae.dtype == torch.float32
    assert torch.allclose(guarded, reference, atol=2e-2)


def test_encode_then_decode_returns_images_in_unit_range():
    vae = factory.tiny_sd15().vae
    x = torch.rand(1, 3, 64, 64) * 2 - 1
    with torch.no_grad():
        latents = encode_image(vae, x)
        pixels = decode_latents(vae, latents)
    assert latents.shape == (1, 4, 8, 8)
    assert pixels.shape == (1, 3, 64, 64) and pixels.min() >= 0 and pixels.max() <= 1
