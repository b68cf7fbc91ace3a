"""TrainConfig (train/config.py): validation names the setting to fix, flags and TOML give back the same run."""

from __future__ import annotations

import pytest

from facesmith.errors import FacesmithError
from facesmith.train.config import TrainConfig, apply_flags, load_train_config, save_train_config


def test_flags_override_with_types_booleans_and_none(tmp_path):
    base = TrainConfig(dataset="d", resolution=64, tensorboard=True)
    config = apply_flags(
        base,
        [
            "--max-steps=5",
            "--flip",
            "--no-tensorboard",
            "--resolution",
            "none",
            "--learning_rate",
            "2e-4",
            "--mode",
            "lora",
        ],
    )
    assert (config.max_steps, config.flip, config.tensorboard) == (5, True, False)
    assert (config.resolution, config.learning_rate, config.mode) == (None, 2e-4, "lora")
    with pytest.raises(FacesmithError, match="unknown setting --max-stepz"):
        apply_flags(base, ["--max-stepz", "3"])
    with pytest.raises(FacesmithError, match="--batch-size 'two' is not a valid int"):
        apply_flags(base, ["--batch-size", "two"])


def test_toml_round_trip_keeps_epoch_only_runs(tmp_path):
    config = TrainConfig(dataset="d", max_steps=0, max_epochs=3, model=None, ema_decay=0.999).validate()
    path = save_train_config(config, tmp_path / "train.toml")
    assert load_train_config(path) == config


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
    ],
)
def test_validation_names_the_setting(change, message):
    with pytest.raises(FacesmithError, match=message):
        TrainConfig(**{"dataset": "d", **change}).validate()
