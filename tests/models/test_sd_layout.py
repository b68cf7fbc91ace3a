"""diffusers <-> original SD layout, both directions, for every component."""

from __future__ import annotations

import pytest
import torch

import factory
from facesmith.models import sd_layout


@pytest.fixture(scope="module")
def sd15():
    return factory.tiny_sd15()


@pytest.fixture(scope="module")
def sdxl():
    return factory.tiny_sdxl()


def test_unet_keys_use_the_original_block_numbering(sd15):
    original = sd_layout.unet_to_original(sd15.unet.state_dict(), sd15.unet.config)
    # layers_per_block=1: level 0 is input_blocks 1 (resnet + attention) and 2 (downsampler).
    for key in [
        "model.diffusion_model.input_blocks.1.1.transformer_blocks.0.attn1.to_q.weight",
        "model.diffusion_model.input_blocks.1.0.in_layers.2.weight",
        "model.diffusion_model.input_blocks.2.0.op.weight",
        "model.diffusion_model.middle_block.1.proj_in.weight",
        "model.diffusion_model.output_blocks.1.1.conv.weight",  # upsampler after a plain level
        "model.diffusion_model.output_blocks.3.1.transformer_blocks.0.attn2.to_k.weight",
        "model.diffusion_model.time_embed.0.weight",
        "model.diffusion_model.out.2.weight",
    ]:
        assert key in original, key


@pytest.mark.parametrize("name", ["sd15", "sdxl"])
def test_unet_round_trip(name, request):
    pipe = request.getfixturevalue(name)
    state = pipe.unet.state_dict()
    back = sd_layout.unet_from_original(sd_layout.unet_to_original(state, pipe.unet.config), pipe.unet.config)
    assert set(back) == set(state)
    assert all(torch.equal(back[k], state[k]) for k in state)


def test_vae_round_trip_with_conv_attention(sd15):
    state = sd15.vae.state_dict()
    original = sd_layout.vae_to_original(state, sd15.vae.config)
    assert original["first_stage_model.decoder.mid.attn_1.q.weight"].ndim == 4
    assert "first_stage_model.decoder.up.3.upsample.conv.weight" in original  # decoder levels run backwards
    back = sd_layout.vae_from_original(original, sd15.vae.config)
    assert set(back) == set(state)
    assert all(torch.equal(back[k], state[k]) for k in state)


def test_clip_and_open_clip_round_trip(sdxl):
    clip = sdxl.text_encoder.state_dict()
    original = sd_layout.clip_to_original(clip, "sdxl")
    assert "conditioner.embedders.0.transformer.text_model.embeddings.token_embedding.weight" in original
    back = sd_layout.clip_from_original(original, "sdxl", sdxl.text_encoder)
    assert set(back) == set(clip) and all(torch.equal(back[k], clip[k]) for k in clip)

    big = sdxl.text_encoder_2.state_dict()
    original = sd_layout.open_clip_to_original(big, "sdxl")
    prefix = "conditioner.embedders.1.model."
    assert original[prefix + "transformer.resblocks.0.attn.in_proj_weight"].shape == (96, 32)
    assert torch.equal(original[prefix + "text_projection"], big["text_projection.weight"].T)
    back = sd_layout.open_clip_from_original(original, "sdxl", sdxl.text_encoder_2)
    assert set(back) == set(big) and all(torch.equal(back[k], big[k]) for k in big)
