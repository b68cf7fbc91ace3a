"""From-scratch model presets: a UNet size, a latent space (VAE) and a text encoder, built untrained.

`face-small` is the embedded default model (issue [default-model]): a ~29M-parameter diffusers
UNet2DConditionModel on TAEF2's 32-channel latents (scaling 1.1, 16 x 16 at 128 px), conditioned on the
frozen all-MiniLM-L6-v2 token states, on the SD noise schedule with epsilon prediction. These are the
constants of `scripts/train_default_model.py`; its training recipe is `RECIPES["face-small"]` and the
README's "Training" section. `face-tiny` is the same layout shrunk, for CPU smoke tests.
Loading pretrained models is `facesmith.models.loading`'s job.
"""

from __future__ import annotations

from typing import Any

from facesmith.errors import FacesmithError

LATENT_SCALE = 1.1  # raw TAEF2 latents of faces have std ~0.90
RESOLUTION = 128

UNET_CONFIG: dict[str, Any] = dict(
    sample_size=RESOLUTION // 8,
    in_channels=32,
    out_channels=32,
    down_block_types=("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
    up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"),
    block_out_channels=(128, 192, 224),
    layers_per_block=2,
    cross_attention_dim=384,
    attention_head_dim=(2, 3, 4),  # diffusers' legacy name: heads per block (64-d heads)
)
SCHEDULER_CONFIG: dict[str, Any] = dict(
    num_train_timesteps=1000,
    beta_start=0.00085,
    beta_end=0.012,
    beta_schedule="scaled_linear",
    prediction_type="epsilon",
)
PRESETS: dict[str, dict[str, Any]] = {
    "face-small": UNET_CONFIG,
    "face-tiny": dict(UNET_CONFIG, block_out_channels=(32, 32, 64), attention_head_dim=(1, 1, 2)),
}
# The settings scripts/train_default_model.py trained the shipped weights with (TrainConfig fields).
RECIPES: dict[str, dict[str, Any]] = {
    "face-small": dict(
        preset="face-small",
        resolution=RESOLUTION,
        batch_size=256,
        learning_rate=2e-4,
        weight_decay=0.01,
        lr_warmup_steps=500,
        ema_decay=0.9995,
        min_snr_gamma=5.0,
        caption_dropout=0.1,
        caption_from_attributes=True,
        flip=True,
        max_grad_norm=1.0,
        mixed_precision="bf16",
    )
}


def build_preset_pipeline(name: str):
    """A StableDiffusionPipeline with an untrained UNet of preset `name` (torch's RNG decides its weights)."""
    from diffusers import DPMSolverMultistepScheduler, StableDiffusionPipeline, UNet2DConditionModel

    from facesmith.models.default_model import load_minilm
    from facesmith.models.taef2 import load_taef2

    if name not in PRESETS:
        raise FacesmithError(f"unknown preset {name!r}: pick one of {', '.join(PRESETS)}")
    text_encoder, tokenizer = load_minilm()
    return StableDiffusionPipeline(
        vae=load_taef2(scaling_factor=LATENT_SCALE).eval(),
        text_encoder=text_encoder,
        tokenizer=tokenizer,
        unet=UNet2DConditionModel(**PRESETS[name]),
        scheduler=DPMSolverMultistepScheduler(**SCHEDULER_CONFIG),
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )
