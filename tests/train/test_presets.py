"""The face-small preset is the default model's recipe, as scripts/train_default_model.py trained it."""

from __future__ import annotations

import importlib.util
from pathlib import Path

from facesmith.train import presets
from facesmith.train.config import TrainConfig

SCRIPT = Path(__file__).resolve().parents[2] / "scripts" / "train_default_model.py"


def _script():
    spec = importlib.util.spec_from_file_location("train_default_model", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_preset_constants_match_the_default_model_script():
    script = _script()
    assert presets.PRESETS["face-small"] == script.UNET_CONFIG
    assert presets.PRESETS["face-tiny"] == script.TINY_UNET_CONFIG
    assert presets.SCHEDULER_CONFIG == script.SCHEDULER_CONFIG
    assert (presets.LATENT_SCALE, presets.RESOLUTION) == (script.LATENT_SCALE, script.RESOLUTION)


def test_recipe_is_a_valid_config_with_the_script_defaults(tmp_path):
    (tmp_path / "metadata.jsonl").write_text("")  # validate checks that the dataset has a manifest
    config = TrainConfig(dataset=str(tmp_path), **presets.RECIPES["face-small"]).validate()
    # argparse defaults of scripts/train_default_model.py
    assert (config.batch_size, config.learning_rate, config.lr_warmup_steps) == (256, 2e-4, 500)
    assert (config.ema_decay, config.min_snr_gamma, config.caption_dropout) == (0.9995, 5.0, 0.1)
    assert config.caption_from_attributes and config.flip and config.preset == "face-small"
