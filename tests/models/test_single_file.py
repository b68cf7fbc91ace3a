"""Single-file checkpoints: a tiny model saved in the original layout loads back to the same images."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from safetensors.torch import save_file

import facesmith
import factory
from facesmith.errors import FacesmithError
from facesmith.models.sd_layout import pipeline_to_original, save_original
from facesmith.models.single_file import (
    detect_family,
    infer_unet_config,
    infer_vae_config,
    pipeline_from_original,
    read_checkpoint,
)
from factory import FAST

SHAPE_KEYS = [
    "block_out_channels",
    "layers_per_block",
    "down_block_types",
    "up_block_types",
    "cross_attention_dim",
]


@pytest.mark.parametrize(("folder", "sampler"), [("sd15_folder", "DDIM"), ("sdxl_folder", "Euler a")])
def test_single_file_gives_the_same_image_as_the_diffusers_folder(folder, sampler, request, tmp_path):
    folder = request.getfixturevalue(folder)
    from_folder = facesmith.load(folder)
    single = tmp_path / "model.safetensors"
    save_original(from_folder.pipe, single)
    from_file = facesmith.load(single)
    assert type(from_file.pipe) is type(from_folder.pipe)
    a = from_folder.generate("a face with glasses", negative="hat", seed=11, sampler=sampler, **FAST)[0]
    b = from_file.generate("a face with glasses", negative="hat", seed=11, sampler=sampler, **FAST)[0]
    assert np.array_equal(np.asarray(a), np.asarray(b))


@pytest.mark.parametrize(("make", "family"), [(factory.tiny_sd15, "sd1"), (factory.tiny_sdxl, "sdxl")])
def test_configs_are_read_back_from_tensor_shapes(make, family):
    pipe = make()
    state = pipeline_to_original(pipe)
    assert detect_family(state) == family
    unet = infer_unet_config(state, family)
    assert {
        k: list(v) if isinstance(v, tuple) else v for k, v in pipe.unet.config.items() if k in SHAPE_KEYS
    } == {k: unet[k] for k in SHAPE_KEYS}
    assert infer_vae_config(state, family)["block_out_channels"] == list(pipe.vae.config.block_out_channels)


def test_early_sd1_files_without_the_text_model_level_load_the_same():
    pipe = factory.tiny_sd15()
    state = pipeline_to_original(pipe)
    old = {
        k.replace("cond_stage_model.transformer.text_model.", "cond_stage_model.transformer."): v
        for k, v in state.items()
    }
    old["cond_stage_model.transformer.embeddings.position_ids"] = torch.arange(77)[None]
    loaded = pipeline_from_original(old)
    expected = pipe.text_encoder.state_dict()
    assert all(torch.equal(loaded.text_encoder.state_dict()[k], expected[k]) for k in expected)


def test_v_pred_marker_sets_v_prediction(tmp_path):
    pipe = factory.tiny_sd15()
    save_original(pipe, tmp_path / "v.safetensors", v_prediction=True)
    loaded = pipeline_from_original(read_checkpoint(tmp_path / "v.safetensors"))
    assert loaded.scheduler.config.prediction_type == "v_prediction"
    plain = pipeline_from_original(pipeline_to_original(pipe))
    assert plain.scheduler.config.prediction_type == "epsilon"


def test_sd2_layout_loads_with_openclip_penultimate_layer(tmp_path):
    """An SD2-layout file (OpenCLIP text tower, linear projections) loads; its last text layer is dropped."""
    from facesmith.models import sd_layout

    pipe = factory.tiny_sd15()
    state = sd_layout.unet_to_original(pipe.unet.state_dict(), pipe.unet.config)
    state |= sd_layout.vae_to_original(pipe.vae.state_dict(), pipe.vae.config)
    state |= sd_layout.open_clip_to_original(pipe.text_encoder.state_dict(), "sd2")
    state["cond_stage_model.model.text_projection"] = torch.randn(32, 32)  # real SD2 files carry one, unused
    state["v_pred"] = torch.tensor([])
    loaded = pipeline_from_original(state)
    assert loaded.text_encoder.config.num_hidden_layers == pipe.text_encoder.config.num_hidden_layers - 1
    assert loaded.text_encoder.config.hidden_act == "gelu"
    assert loaded.tokenizer.pad_token == "!"
    assert loaded.scheduler.config.prediction_type == "v_prediction"
    # Without the marker, A1111's probe decides: at t=999 a v model outputs about minus its input.
    del state["v_pred"]
    bias = "model.diffusion_model.out.2.bias"
    state[bias] = torch.full_like(state[bias], -10.0)
    assert pipeline_from_original(state).scheduler.config.prediction_type == "v_prediction"
    state[bias] = torch.full_like(state[bias], 10.0)
    assert pipeline_from_original(state).scheduler.config.prediction_type == "epsilon"


def test_sd2_file_written_from_a_diffusers_folder_keeps_every_text_block(tmp_path):
    """diffusers' own convert_diffusers_to_original_stable_diffusion.py writes an SD2 file with only the
    OpenCLIP blocks the folder has, and no projection: all of them are loaded, none dropped (issue 15.34)."""
    from transformers import CLIPTextModel

    from facesmith.models import sd_layout

    pipe = factory.tiny_sd15()
    config = pipe.text_encoder.config
    config.hidden_act = "gelu"  # SD2's OpenCLIP tower
    torch.manual_seed(3)
    text_encoder = CLIPTextModel(config).eval()
    state = sd_layout.unet_to_original(pipe.unet.state_dict(), pipe.unet.config)
    state |= sd_layout.vae_to_original(pipe.vae.state_dict(), pipe.vae.config)
    state |= sd_layout.open_clip_to_original(text_encoder.state_dict(), "sd2")
    loaded = pipeline_from_original(state)
    assert loaded.text_encoder.config.num_hidden_layers == config.num_hidden_layers
    ids = torch.tensor([[49406, 320, 1125, 49407]])
    with torch.no_grad():
        expected = text_encoder(ids).last_hidden_state
        got = loaded.text_encoder(ids).last_hidden_state
    torch.testing.assert_close(got, expected)


def test_unrecognised_checkpoints_say_what_they_hold(tmp_path):
    with pytest.raises(FacesmithError, match=r"no UNet .* found lora_unet_x\.weight\.\* \(1\)"):
        detect_family({"lora_unet_x.weight": torch.zeros(1)})
    pipe_state = pipeline_to_original(factory.tiny_sd15())
    no_text = {k: v for k, v in pipe_state.items() if not k.startswith("cond_stage_model.")}
    with pytest.raises(FacesmithError, match="no text encoder facesmith recognises"):
        detect_family(no_text)
    refiner = no_text | {"conditioner.embedders.0.model.text_projection": torch.zeros(2, 2)}
    with pytest.raises(FacesmithError, match="refiner"):
        detect_family(refiner)


def test_pickles_are_refused_without_allow_pickle(tmp_path):
    torch.save({"state_dict": {"w": torch.ones(2)}}, tmp_path / "m.ckpt")
    with pytest.raises(FacesmithError, match="runs arbitrary code.*--allow-pickle"):
        read_checkpoint(tmp_path / "m.ckpt")
    assert torch.equal(read_checkpoint(tmp_path / "m.ckpt", allow_pickle=True)["w"], torch.ones(2))


def test_tensors_that_do_not_fit_the_inferred_architecture(tmp_path):
    state = pipeline_to_original(factory.tiny_sd15())
    del state["model.diffusion_model.out.0.weight"]
    save_file(state, tmp_path / "cut.safetensors")
    with pytest.raises(FacesmithError, match="1 missing"):
        facesmith.load(tmp_path / "cut.safetensors")
