"""TAEF2, the tiny autoencoder for the FLUX.2 latent space, as a diffusers VAE.

Owns: the network that turns 3xHxW RGB images into 32x(H/8)x(W/8) latents and
back, loading its shipped weights, and the `encode`/`decode` surface that
diffusers pipelines call on their `vae`.

Why our own module: diffusers' ``AutoencoderTiny`` has the same conv/ReLU
layout (madebyollin/taesd) but not TAEF2's extra residual "pool" branch in the
three lowest-resolution blocks, so it cannot load these weights. The layout
below follows ``taesd.py`` of madebyollin/taesd at commit 5cccb12 (MIT).

Convention: TAEF2 works on RGB in [0, 1]; diffusers pipelines hand the VAE
images in [-1, 1] and expect [-1, 1] back, so the conversion happens here.
"""

from __future__ import annotations

from pathlib import Path

import torch
from diffusers.configuration_utils import ConfigMixin, register_to_config
from diffusers.models.autoencoders.autoencoder_tiny import AutoencoderTinyOutput
from diffusers.models.autoencoders.vae import DecoderOutput
from diffusers.models.modeling_utils import ModelMixin
from torch import nn

WEIGHTS_DIR = Path(__file__).resolve().parent.parent / "weights" / "taef2"

# ---------------------------------------------------------------------------
# Building blocks (taesd.py: conv, Clamp, Block), plus TAEF2's pool branch.


def _conv(n_in: int, n_out: int, **kwargs) -> nn.Conv2d:
    return nn.Conv2d(n_in, n_out, 3, padding=1, **kwargs)


class _Clamp(nn.Module):
    """Soft clamp of decoder input latents to about [-3, 3] (taesd.py)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.tanh(x / 3) * 3


class _Block(nn.Module):
    """Residual conv block; with ``pool`` it first adds TAEF2's 1x1 bottleneck branch."""

    def __init__(self, channels: int, pool: bool = False):
        super().__init__()
        self.conv = nn.Sequential(
            _conv(channels, channels),
            nn.ReLU(),
            _conv(channels, channels),
            nn.ReLU(),
            _conv(channels, channels),
        )
        self.fuse = nn.ReLU()
        self.pool = None
        if pool:
            self.pool = nn.Sequential(
                nn.Conv2d(channels, 4 * channels, 1, bias=False),
                nn.GroupNorm(4, 4 * channels),
                nn.ReLU(),
                nn.Conv2d(4 * channels, channels, 1, bias=False),
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.pool is not None:
            x = x + self.pool(x)
        return self.fuse(self.conv(x) + x)


def build_encoder(latent_channels: int = 32, width: int = 64) -> nn.Sequential:
    c = width
    return nn.Sequential(
        _conv(3, c), _Block(c),
        _conv(c, c, stride=2, bias=False), _Block(c), _Block(c), _Block(c),
        _conv(c, c, stride=2, bias=False), _Block(c), _Block(c), _Block(c),
        _conv(c, c, stride=2, bias=False), _Block(c, True), _Block(c, True), _Block(c, True),
        _conv(c, latent_channels),
    )  # fmt: skip


def build_decoder(latent_channels: int = 32, width: int = 64) -> nn.Sequential:
    c = width
    return nn.Sequential(
        _Clamp(), _conv(latent_channels, c), nn.ReLU(),
        _Block(c, True), _Block(c, True), _Block(c, True), nn.Upsample(scale_factor=2),
        _conv(c, c, bias=False), _Block(c), _Block(c), _Block(c), nn.Upsample(scale_factor=2),
        _conv(c, c, bias=False), _Block(c), _Block(c), _Block(c), nn.Upsample(scale_factor=2),
        _conv(c, c, bias=False), _Block(c),
        _conv(c, 3),
    )  # fmt: skip


# ---------------------------------------------------------------------------
# The diffusers-facing model.


class TAEF2(ModelMixin, ConfigMixin):
    """TAEF2 as a pipeline VAE: ``encode`` takes [-1, 1] images, ``decode`` returns them.

    Like every diffusers VAE, ``encode`` returns raw latents and ``decode``
    takes raw latents; callers apply ``(z - shift_factor) * scaling_factor``
    (``facesmith.latents``, pipelines) so the diffusion model sees roughly
    unit variance.
    ``block_out_channels`` has four entries only so that pipelines derive the
    8x ``vae_scale_factor`` from it, as they do for AutoencoderKL.
    """

    _supports_gradient_checkpointing = False

    @register_to_config
    def __init__(
        self,
        latent_channels: int = 32,
        width: int = 64,
        scaling_factor: float = 1.0,
        shift_factor: float = 0.0,
        block_out_channels: tuple[int, ...] = (64, 64, 64, 64),
        force_upcast: bool = False,
    ):
        super().__init__()
        self.encoder = build_encoder(latent_channels, width)
        self.decoder = build_decoder(latent_channels, width)

    def encode(self, x: torch.Tensor, return_dict: bool = True):
        """Images in [-1, 1] -> raw latents (pipelines read ``.latents``)."""
        z = self.encoder(x.add(1).mul(0.5))
        return AutoencoderTinyOutput(latents=z) if return_dict else (z,)

    def decode(self, z: torch.Tensor, return_dict: bool = True, generator=None):
        """Raw latents (pipelines pass ``latents / scaling_factor``) -> images in [-1, 1]."""
        x = self.decoder(z).clamp(0, 1).mul(2).sub(1)
        return DecoderOutput(sample=x) if return_dict else (x,)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.decode(self.encode(x).latents).sample

    @classmethod
    def from_taesd_files(cls, encoder_path: str | Path, decoder_path: str | Path, **config) -> TAEF2:
        """Build from madebyollin's two ``.pth``/``.safetensors`` state dicts, loaded strictly."""
        model = cls(**config)
        model.encoder.load_state_dict(_read_state_dict(encoder_path), strict=True)
        model.decoder.load_state_dict(_read_state_dict(decoder_path), strict=True)
        return model


def _read_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    path = Path(path)
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        return load_file(path)
    # The upstream files are plain tensors; weights_only refuses anything else.
    return torch.load(path, map_location="cpu", weights_only=True)


def load_taef2(scaling_factor: float = 1.0, shift_factor: float = 0.0) -> TAEF2:
    """The TAEF2 shipped in ``facesmith/weights/taef2`` (MIT, see its LICENSE)."""
    return TAEF2.from_taesd_files(
        WEIGHTS_DIR / "taef2_encoder.safetensors",
        WEIGHTS_DIR / "taef2_decoder.safetensors",
        scaling_factor=scaling_factor,
        shift_factor=shift_factor,
    )
