"""Resolving model sources: default model, diffusers folders, missing and unknown paths."""

from __future__ import annotations

import json

import pytest

from facesmith.errors import FacesmithError
from facesmith.models import loading


def test_default_model_not_installed_points_to_model_option(monkeypatch, tmp_path):
    monkeypatch.setattr(loading, "DEFAULT_MODEL_DIR", tmp_path / "default_model")
    with pytest.raises(FacesmithError, match="default model is not installed.*--model"):
        loading.load_model(None)


def test_missing_path_and_folder_without_index(tmp_path):
    with pytest.raises(FacesmithError, match="does not exist"):
        loading.load_model(tmp_path / "missing")
    with pytest.raises(FacesmithError, match="without model_index.json"):
        loading.load_model(tmp_path)


def test_unsupported_pipeline_class_is_named(tmp_path):
    (tmp_path / "model_index.json").write_text(json.dumps({"_class_name": "FluxPipeline"}))
    with pytest.raises(FacesmithError, match="holds a FluxPipeline"):
        loading.load_model(tmp_path)


def test_folder_with_missing_component_files(tmp_path, sd15_folder):
    import shutil

    broken = tmp_path / "broken"
    shutil.copytree(sd15_folder, broken)
    shutil.rmtree(broken / "unet")
    with pytest.raises(FacesmithError, match="cannot load the diffusers folder"):
        loading.load_model(broken)


def test_a_folder_missing_a_unet_weight_names_it(tmp_path, sd15_folder):
    """diffusers leaves a missing weight on the meta device; facesmith names it instead of failing later
    with "Cannot copy out of meta tensor" (issue 15.25)."""
    import shutil

    from safetensors.torch import load_file, save_file

    broken = tmp_path / "broken"
    shutil.copytree(sd15_folder, broken)
    weights = next((broken / "unet").glob("*.safetensors"))
    state = load_file(weights)
    del state["conv_in.weight"]
    save_file(state, weights)
    with pytest.raises(FacesmithError, match=r"unet lacks 1 weight\(s\) .*\(conv_in\.weight\)"):
        loading.load_model(broken)


def test_model_hash_is_a1111_autov2(sd15_file):
    import hashlib

    model = loading.load_model(sd15_file)
    assert model.model_hash() == hashlib.sha256(sd15_file.read_bytes()).hexdigest()[:10]
    assert model.name == "tiny-sd15" and model.source == str(sd15_file)


def test_hashes_are_cached_by_path_size_and_mtime(tmp_path):
    import os

    path = tmp_path / "weights.bin"
    path.write_bytes(b"one")
    first = loading.cached_sha256([path])
    assert loading.cached_sha256([path]) == first
    path.write_bytes(b"two")
    os.utime(path, ns=(1, 1))  # a new size or mtime is a new file
    assert loading.cached_sha256([path]) != first


@pytest.mark.parametrize("value", [float("nan"), float("inf")])
def test_models_and_loras_with_non_finite_weights_are_refused(tmp_path, sd15_file, kohya_file, value):
    """NaN/inf weights would draw black images with exit status 0 (issue 15.5)."""
    from safetensors.torch import load_file, save_file

    state = load_file(sd15_file)
    state["model.diffusion_model.out.2.weight"][0, 0, 0, 0] = value
    save_file(state, tmp_path / "bad.safetensors")
    with pytest.raises(FacesmithError, match=r"1 weight tensor\(s\) hold NaN or inf.*unet\.conv_out\.weight"):
        loading.load_model(tmp_path / "bad.safetensors")

    from facesmith.models.lora import read_lora

    lora = load_file(kohya_file)
    key = next(k for k in lora if k.endswith("lora_up.weight"))
    lora[key].view(-1)[0] = value
    save_file(lora, tmp_path / "bad-lora.safetensors")
    with pytest.raises(FacesmithError, match="NaN or inf"):
        read_lora(tmp_path / "bad-lora.safetensors")


def test_a_checkpoint_s_trainable_weights_given_as_a_lora_point_to_the_step_s_lora(tmp_path):
    import torch
    from safetensors.torch import save_file

    from facesmith.models.lora import read_lora

    step = tmp_path / "run" / "checkpoints" / "step-000600"
    step.mkdir(parents=True)
    save_file({"x": torch.zeros(1)}, step / "trainable.safetensors")
    save_file({"x": torch.zeros(1)}, tmp_path / "run" / "run-step00000600.safetensors")
    with pytest.raises(
        FacesmithError, match=r"training checkpoint's state, not a LoRA: use .*run-step00000600"
    ):
        read_lora(step / "trainable.safetensors")
