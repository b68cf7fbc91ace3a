"""Exports: they refuse weights that hold NaN or inf (such files load everywhere and make black images), and
the tokenizer folder of a full export opens in transformers 4 as well as 5."""

from __future__ import annotations

import json

import pytest
import torch

import factory
from facesmith.errors import FacesmithError
from facesmith.train.config import TrainConfig
from facesmith.train.export import export_full, export_kohya_lora, write_bpe_files
from facesmith.train.model import build_model


def _spoil(model, name_part: str, value: float) -> str:
    name, param = next((n, p) for n, p in model.trainable() if name_part in n)
    with torch.no_grad():
        param.view(-1)[0] = value
    return name


def test_a_lora_with_nan_weights_is_not_written(sd15_folder, tmp_path):
    model = build_model(TrainConfig(model=str(sd15_folder), mode="lora", lora_rank=2))
    _spoil(model, "lora_B", float("nan"))
    path = tmp_path / "lora.safetensors"
    with pytest.raises(
        FacesmithError, match=r"NaN or inf in 1 tensors \(e.g. lora_unet_.*lora.safetensors was not"
    ):
        export_kohya_lora(model, TrainConfig(mode="lora", lora_rank=2), path, {})
    assert not path.exists()


def test_a_full_model_with_inf_weights_is_not_written(sd15_folder, tmp_path):
    config = TrainConfig(model=str(sd15_folder))
    model = build_model(config)
    name = _spoil(model, "conv_in.weight", float("inf"))
    with pytest.raises(FacesmithError, match=rf"e.g. {name}\), so {tmp_path / 'model'} was not written"):
        export_full(model, config, tmp_path, {})
    assert not (tmp_path / "model").exists() and not (tmp_path / "model.safetensors").exists()


def test_a_preset_weight_past_fp16_range_is_not_written_as_inf(tmp_path):
    config = TrainConfig(preset="face-tiny", resolution=32)
    model = build_model(config)
    _spoil(model, "conv_in.weight", 1e6)  # finite in fp32, inf in the fp16 shards
    with pytest.raises(FacesmithError, match="NaN or inf in 1 tensors"):
        export_full(model, config, tmp_path, {"resolution": 32})
    assert not (tmp_path / "model").exists()


def test_exported_tokenizer_has_the_slow_tokenizer_files_with_the_same_vocabulary(tmp_path):
    """transformers 5 writes only tokenizer.json; 4.x (and diffusers on it) need vocab.json and merges.txt."""
    from transformers import CLIPTokenizer

    tokenizer = factory.tiny_sd15().tokenizer
    tokenizer.save_pretrained(tmp_path / "tokenizer")
    write_bpe_files(tokenizer, tmp_path / "tokenizer")
    vocab = json.loads((tmp_path / "tokenizer" / "vocab.json").read_text(encoding="utf-8"))
    assert vocab == tokenizer.get_vocab()
    assert (
        (tmp_path / "tokenizer" / "merges.txt").read_text(encoding="utf-8").startswith("#version: 0.2\ni n\n")
    )
    # Opened from the two BPE files alone, as transformers 4 opens a CLIP tokenizer folder.
    (tmp_path / "tokenizer" / "tokenizer.json").unlink()
    rebuilt = CLIPTokenizer.from_pretrained(tmp_path / "tokenizer")
    prompt = "a photo of a smiling woman with purple hair"
    assert rebuilt(prompt).input_ids == tokenizer(prompt).input_ids


def test_lora_metadata_of_the_default_model_names_it_not_sd_v1():
    """Issue 15 bug 8: the embedded model's LoRA was tagged sd_v1 / stable-diffusion-v1 with no model name."""
    from facesmith.models.default_model import default_model_files
    from facesmith.models.loading import cached_sha256
    from facesmith.train.export import kohya_metadata

    config = TrainConfig(mode="lora", lora_rank=2)
    metadata = kohya_metadata(build_model(config), config, {"name": "alice"})
    assert metadata["ss_base_model_version"] == "facesmith_face-small"
    assert metadata["modelspec.architecture"] == "facesmith-face-small/lora"
    assert metadata["ss_sd_model_name"] == "facesmith-default"
    digest = cached_sha256(default_model_files())
    assert (metadata["ss_new_sd_model_hash"], metadata["ss_sd_model_hash"]) == (digest, digest[:10])
    assert (metadata["ss_output_name"], metadata["modelspec.title"]) == ("alice", "alice")


def test_lora_files_are_named_after_their_run(tmp_path):
    from facesmith.train.export import run_name, step_name

    assert run_name(tmp_path / "runs" / "alice") == "alice"
    assert step_name(tmp_path / "runs" / "alice", 600) == "alice-step00000600"
