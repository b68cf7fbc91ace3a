"""What learns: Kohya's LoRA targets, and the fit check before the first step."""

from __future__ import annotations

import pytest

import factory
from facesmith.errors import FacesmithError
from facesmith.train.model import (
    TEXT_BLOCKS,
    UNET_BLOCKS,
    UNET_CONV_BLOCKS,
    TrainModel,
    check_fits,
    lora_targets,
)


def test_lora_targets_follow_kohya_defaults_and_locon():
    pipe = factory.tiny_sd15()
    unet = lora_targets(pipe.unet, UNET_BLOCKS)
    assert "down_blocks.0.attentions.0.transformer_blocks.0.attn1.to_q" in unet
    assert "down_blocks.0.attentions.0.proj_in" in unet  # 1x1 conv in SD1's transformer blocks
    assert "down_blocks.0.attentions.0.transformer_blocks.0.ff.net.2" in unet
    assert not any("resnets" in name for name in unet)
    conv = lora_targets(pipe.unet, UNET_BLOCKS + UNET_CONV_BLOCKS)
    assert {"down_blocks.0.resnets.0.conv1", "down_blocks.0.resnets.0.time_emb_proj"} <= set(conv)
    text = lora_targets(pipe.text_encoder, TEXT_BLOCKS)
    assert any(name.endswith("layers.0.self_attn.q_proj") for name in text)
    assert any(name.endswith("layers.1.mlp.fc2") for name in text)


def test_fit_check_names_the_mismatch():
    pipe = factory.tiny_sd15()
    model = TrainModel(pipe, "sd1", pipe.scheduler, [], [])
    check_fits(model, {(64, 64), (32, 64)})
    with pytest.raises(FacesmithError, match="40x40 is not a multiple of 16"):
        check_fits(model, {(40, 40)})
    pipe.unet.register_to_config(cross_attention_dim=64)
    with pytest.raises(
        FacesmithError, match="text encoder gives 32-d states but the UNet cross-attends to 64-d"
    ):
        check_fits(model, {(64, 64)})
    pipe.unet.register_to_config(cross_attention_dim=32, in_channels=8)
    with pytest.raises(FacesmithError, match="4-channel latents but the UNet takes 8"):
        check_fits(model, {(64, 64)})


def test_max_token_length_on_a_non_clip_text_encoder_is_refused():
    from facesmith.models.loading import load_model

    pipe = load_model(None).pipe  # the default model: MiniLM (BertModel)
    model = TrainModel(pipe, "preset:face-small", None, [], [])
    check_fits(model, {(128, 128)}, None)
    with pytest.raises(
        FacesmithError, match="max_token_length 150 chunks CLIP text encoders only; .*BertModel"
    ):
        check_fits(model, {(128, 128)}, 150)


def test_sample_grids_use_the_model_own_sampler_and_guidance(sd15_folder):
    """Issue 16 bug 9: grids of the default model's layout were drawn with DDIM at CFG 7.5."""
    from facesmith.models.default_model import DEFAULT_MODEL_CFG
    from facesmith.train.config import TrainConfig
    from facesmith.train.model import build_model
    from facesmith.train.sampling import parse_prompt_line

    preset = build_model(TrainConfig(preset="face-tiny"))
    assert (preset.default_sampler, preset.default_cfg) == ("Euler a", DEFAULT_MODEL_CFG)
    sd = build_model(TrainConfig(model=str(sd15_folder)))
    assert (sd.default_sampler, sd.default_cfg) == ("DDIM", 7.5)
    assert parse_prompt_line("a face").cfg is None and parse_prompt_line("a face --l 4").cfg == 4.0
    assert TrainConfig().sample_sampler is None and TrainConfig().sample_at_first
