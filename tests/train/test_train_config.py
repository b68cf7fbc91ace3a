"""TrainConfig (train/config.py): validation names the setting to fix, the TOML gives back the same run."""

from __future__ import annotations

import importlib.util

import pytest

from facesmith.errors import FacesmithError
from facesmith.train.config import TrainConfig


def test_toml_round_trip_keeps_epoch_only_runs(tmp_path):
    (tmp_path / "metadata.jsonl").write_text("")  # validate checks that the dataset has a manifest
    config = TrainConfig(dataset=str(tmp_path), max_steps=0, max_epochs=3, ema_decay=0.999).validate()
    assert TrainConfig.load(config.save(tmp_path / "train.toml")) == config


@pytest.mark.parametrize(
    "change, message",
    [
        ({"mode": "dora"}, "mode 'dora' is not one of full, lora"),
        ({"dataset": ""}, "no dataset"),
        ({"max_steps": 0, "max_epochs": 0}, "set max_steps or max_epochs"),
        ({"preset": "face-small", "model": "x"}, "not both"),
        ({"resolution": 100}, "multiple of 8"),
        ({"caption_dropout": 1.5}, r"caption_dropout 1.5 must lie in \[0, 1\]"),
        ({"ema_decay": 1.0}, "ema_decay"),
        ({"optimizer": "sgd"}, "optimizer 'sgd'"),
        ({"preset": "face-huge"}, "unknown preset 'face-huge'"),
        ({"sample_sampler": "Heun++"}, "Heun"),
        ({"max_token_length": 100}, "max_token_length 100 is not one of 75, 150, 225"),
    ],
)
def test_validation_names_the_setting(change, message):
    with pytest.raises(FacesmithError, match=message):
        TrainConfig(**{"dataset": "d", **change}).validate()


def test_paths_are_made_absolute_so_train_toml_reproduces_from_anywhere(tmp_path, monkeypatch):
    """Issue 16 bug 10: train.toml stored relative paths, good only from the same working directory."""
    (tmp_path / "models" / "base").mkdir(parents=True)
    (tmp_path / "prompts.txt").write_text("a face\n")
    monkeypatch.chdir(tmp_path)
    config = TrainConfig(dataset="data/faces", output_dir="runs/a", model="models/base",
                         sample_prompts="prompts.txt", resume="runs/a/checkpoints/step-000002")  # fmt: skip
    resolved = config.resolved()
    assert resolved.dataset == str(tmp_path / "data" / "faces")
    assert resolved.output_dir == str(tmp_path / "runs" / "a")
    assert resolved.model == str(tmp_path / "models" / "base")
    assert resolved.sample_prompts == str(tmp_path / "prompts.txt")
    assert resolved.resume == str(tmp_path / "runs" / "a" / "checkpoints" / "step-000002")
    assert TrainConfig(dataset="d", resume="latest").resolved().resume == "latest"
    assert TrainConfig(dataset="d", model="not-here").resolved().model == "not-here"  # named as given
    saved = resolved.save(tmp_path / "train.toml")
    monkeypatch.chdir(tmp_path / "models")
    assert TrainConfig.load(saved) == resolved


def test_a_missing_dataset_or_model_is_named_by_validate(tmp_path):
    """Issue 15.26: a missing dataset, model or optimizer package was found only after torch and the model
    had loaded (bitsandbytes at the first step)."""
    with pytest.raises(FacesmithError, match="is not a folder"):
        TrainConfig(dataset=str(tmp_path / "none")).validate()
    with pytest.raises(FacesmithError, match="has no metadata.jsonl"):
        TrainConfig(dataset=str(tmp_path)).validate()
    (tmp_path / "metadata.jsonl").write_text("")
    with pytest.raises(FacesmithError, match="model .*gone does not exist"):
        TrainConfig(dataset=str(tmp_path), model=str(tmp_path / "gone")).validate()


@pytest.mark.skipif(importlib.util.find_spec("bitsandbytes") is not None, reason="bitsandbytes is installed")
def test_adamw8bit_without_bitsandbytes_is_told_at_validation(tmp_path):
    (tmp_path / "metadata.jsonl").write_text("")
    with pytest.raises(
        FacesmithError, match="optimizer adamw8bit needs bitsandbytes: pip install bitsandbytes"
    ):
        TrainConfig(dataset=str(tmp_path), optimizer="adamw8bit").validate()
