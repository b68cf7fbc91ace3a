"""LoRAs: Kohya and peft formats, weights, stacking, and LoRAs that don't fit."""

from __future__ import annotations

import numpy as np
import pytest
from safetensors.torch import save_file

import facesmith
import factory
from facesmith.errors import FacesmithError
from facesmith.models.lora import LoraSpec, lora_format, parse_lora_spec
from factory import FAST


def image(folder, loras=(), seed=4):
    # Eager everywhere: without LoRAs `auto` would pick ONNX Runtime, which rounds differently.
    generator = facesmith.load(folder, loras=list(loras), engine="eager")
    return np.asarray(generator.generate("a face", seed=seed, **FAST)[0], dtype=np.int16)


def test_kohya_lora_at_weight_0_is_the_base_model_and_at_1_changes_it(sd15_folder, kohya_file):
    base = image(sd15_folder)
    assert np.array_equal(image(sd15_folder, [f"{kohya_file}:0"]), base)
    assert np.abs(image(sd15_folder, [f"{kohya_file}:1"]) - base).mean() > 1


def test_sdxl_kohya_lora_with_original_unet_names(sdxl_folder, tmp_path):
    lora = factory.kohya_lora(factory.tiny_sdxl(), seed=3)
    assert any(key.startswith("lora_unet_input_blocks_") for key in lora)
    assert any(key.startswith("lora_te2_") for key in lora)
    save_file(lora, tmp_path / "xl.safetensors")
    generator = facesmith.load(sdxl_folder, loras=[str(tmp_path / "xl.safetensors")], fuse_loras=False)
    wrapped = [name for name, layer in generator.pipe.unet.named_modules() if hasattr(layer, "lora_A")]
    assert len(wrapped) == sum(key.startswith("lora_unet_") and key.endswith(".alpha") for key in lora)
    base = image(sdxl_folder)
    assert np.array_equal(image(sdxl_folder, [f"{tmp_path / 'xl.safetensors'}:0"]), base)
    assert np.abs(image(sdxl_folder, [f"{tmp_path / 'xl.safetensors'}:1"]) - base).mean() > 1


def test_loras_stack_with_their_own_weights(sd15_folder, kohya_file, tmp_path):
    peft_file = factory.peft_lora(factory.tiny_sd15(), tmp_path / "peft", seed=2)
    only_kohya = image(sd15_folder, [f"{kohya_file}:1"])
    stacked_off = image(sd15_folder, [f"{kohya_file}:1", f"{peft_file}:0"])
    stacked_on = image(sd15_folder, [f"{kohya_file}:1", f"{peft_file}:1"])
    assert np.array_equal(stacked_off, only_kohya)
    assert np.abs(stacked_on - only_kohya).mean() > 1


def test_formats_are_recognised(kohya_file, tmp_path):
    from safetensors.torch import load_file

    assert lora_format(load_file(kohya_file)) == "kohya"
    peft_file = factory.peft_lora(factory.tiny_sd15(), tmp_path / "peft")
    assert lora_format(load_file(peft_file)) == "peft"
    with pytest.raises(FacesmithError, match="not a LoRA"):
        lora_format({"model.diffusion_model.x": None})


def test_lora_for_another_model_counts_misfits(sd15_folder, tmp_path):
    save_file(factory.kohya_lora(factory.tiny_sdxl()), tmp_path / "xl.safetensors")
    with pytest.raises(FacesmithError, match=r"doesn't fit this model: \d+ of \d+ LoRA modules"):
        facesmith.load(sd15_folder, loras=[str(tmp_path / "xl.safetensors")])


def test_missing_lora_file(sd15_folder, tmp_path):
    with pytest.raises(FacesmithError, match="does not exist"):
        facesmith.load(sd15_folder, loras=[str(tmp_path / "none.safetensors:0.5")])


def test_spec_parsing():
    assert parse_lora_spec("a/b.safetensors:0.7") == LoraSpec(
        __import__("pathlib").Path("a/b.safetensors"), 0.7
    )
    assert parse_lora_spec("a/b.safetensors").weight == 1.0
    assert parse_lora_spec("C:/x/b.safetensors").path.name == "b.safetensors"


def _old_diffusers_names(state: dict) -> dict:
    """peft names -> the layout diffusers' training examples wrote before peft (issue 15.35):
    `unet.*.to_q.lora.down.weight` and `text_encoder.*.q_proj.lora_linear_layer.up.weight`."""
    out = {}
    for key, tensor in state.items():
        if key.startswith("unet."):
            key = key.replace(".lora_A.", ".lora.down.").replace(".lora_B.", ".lora.up.")
        else:
            key = key.replace(".lora_A.", ".lora_linear_layer.down.").replace(
                ".lora_B.", ".lora_linear_layer.up."
            )
        out[key] = tensor
    return out


def test_loras_in_the_older_diffusers_layout_load_like_their_peft_form(sd15_folder, tmp_path):
    import torch
    from peft import LoraConfig, get_peft_model_state_dict, inject_adapter_in_model
    from safetensors.torch import load_file

    unet_file = factory.peft_lora(factory.tiny_sd15(), tmp_path / "unet", seed=5)
    state = dict(load_file(unet_file))
    text_encoder = factory.tiny_sd15().text_encoder
    inject_adapter_in_model(LoraConfig(r=4, lora_alpha=4, target_modules=["q_proj", "v_proj"]), text_encoder)
    generator = torch.Generator().manual_seed(6)
    with torch.no_grad():
        for name, param in text_encoder.named_parameters():
            if "lora_" in name:
                param.copy_(0.5 * torch.randn(param.shape, generator=generator))
    state |= {f"text_encoder.{k}": v for k, v in get_peft_model_state_dict(text_encoder).items()}
    save_file(state, tmp_path / "peft.safetensors")
    old = _old_diffusers_names(state)
    assert any(".to_q.lora.down.weight" in k for k in old) and any("lora_linear_layer.up" in k for k in old)
    save_file(old, tmp_path / "old.safetensors")

    assert lora_format(old) == "diffusers-old"
    peft_image = image(sd15_folder, [str(tmp_path / "peft.safetensors")])
    assert np.abs(peft_image - image(sd15_folder)).mean() > 1
    assert np.array_equal(image(sd15_folder, [str(tmp_path / "old.safetensors")]), peft_image)
