"""TrainConfig (train/config.py): validation names the setting to fix, the TOML gives back the same run."""

from __future__ import annotations

import pytest

from facesmith.errors import FacesmithError
from facesmith.train.config import TrainConfig


def test_toml_round_trip_keeps_epoch_only_runs(tmp_path):
    config = TrainConfig(dataset="d", max_steps=0, max_epochs=3, model=None, ema_decay=0.999).validate()
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
