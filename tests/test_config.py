"""GenerateConfig: defaults, validation of every bad setting, TOML round trip."""

from __future__ import annotations

import pytest

from facesmith.config import GenerateConfig, load_generate_config, save_generate_config
from facesmith.errors import FacesmithError


def test_defaults_are_the_documented_ones():
    config = GenerateConfig(prompt="a face")
    assert (config.steps, config.cfg, config.sampler, config.count) == (50, None, None, 1)
    assert config.validate() is config


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"prompt": "", "negative": ""}, "prompt is empty"),
        ({"steps": 0}, "--steps 0 is outside"),
        ({"steps": 1001}, "--steps 1001 is outside"),
        ({"width": 100}, "--width 100 is not a positive multiple of 8"),
        ({"height": 63}, "--height 63"),
        ({"sampler": "Heun"}, "unknown sampler"),
        ({"count": 0}, "-n 0"),
        ({"cfg": -1.0}, "--cfg"),
        ({"loras": [""]}, "--lora needs"),
    ],
)
def test_bad_settings_name_the_setting(changes, message):
    config = GenerateConfig(**({"prompt": "a face"} | changes))
    with pytest.raises(FacesmithError, match=message):
        config.validate()


def test_toml_round_trip(tmp_path):
    config = GenerateConfig(
        prompt='a "quoted"\nface', negative="x", seed=5, loras=["a.safetensors:0.5"], width=64
    )
    path = save_generate_config(config, tmp_path / "generate.toml")
    assert load_generate_config(path) == config


def test_unknown_toml_keys_are_refused(tmp_path):
    (tmp_path / "bad.toml").write_text('prompt = "a face"\nstepz = 3\n')
    with pytest.raises(FacesmithError, match="unknown setting.*stepz"):
        load_generate_config(tmp_path / "bad.toml")
