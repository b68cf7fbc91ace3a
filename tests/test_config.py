"""StageConfig and GenerateConfig: defaults, validation of every bad setting, TOML round trip, flags."""

from __future__ import annotations

import re

import pytest

from facesmith.config import GenerateConfig, NoiseConfig
from facesmith.errors import FacesmithError
from facesmith.flags import parse_flags


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
        ({"sampler": "Heun++ 9000"}, "unknown sampler"),
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
    assert GenerateConfig.load(config.save(tmp_path / "generate.toml")) == config


def test_unknown_toml_keys_are_refused(tmp_path):
    (tmp_path / "bad.toml").write_text('prompt = "a face"\nstepz = 3\n')
    with pytest.raises(FacesmithError, match="unknown setting.*stepz"):
        GenerateConfig.load(tmp_path / "bad.toml")


def test_flags_are_read_by_field_type_with_booleans_and_none():
    from facesmith.train.config import TrainConfig

    flags = ["--max-steps=5", "--flip", "--no-tensorboard", "--resolution", "none"]
    flags += ["--learning_rate", "2e-4", "--mode", "lora"]
    values = parse_flags(TrainConfig, flags)
    assert values == {"max_steps": 5, "flip": True, "tensorboard": False, "resolution": None,
                      "learning_rate": 2e-4, "mode": "lora"}  # fmt: skip
    with pytest.raises(FacesmithError, match="unknown setting --max-stepz; see `facesmith train --help`"):
        parse_flags(TrainConfig, ["--max-stepz", "3"])
    with pytest.raises(FacesmithError, match="--batch-size 'two' is not a valid int"):
        parse_flags(TrainConfig, ["--batch-size", "two"])
    with pytest.raises(FacesmithError, match="--seed needs a value"):
        parse_flags(TrainConfig, ["--seed"])


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"image": ""}, "no IMAGE"),
        ({"steps": 0}, r"--steps 0 is outside \[1, 1000\]"),
        ({"steps": 1001}, "1001"),
    ],
)
def test_noise_settings_are_checked_before_any_model_loads(changes, message):
    with pytest.raises(FacesmithError, match=message):
        NoiseConfig(**({"image": "face.png"} | changes)).validate()


def test_seed_minus_one_means_random_and_sampler_aliases_become_a1111_names():
    from facesmith.config import GenerateConfig

    assert GenerateConfig(prompt="a face", seed=-1).seed is None
    assert GenerateConfig(prompt="a face", sampler="k_euler_a").validate().sampler == "Euler a"


def test_files_are_checked_by_validate_without_importing_torch(tmp_path):
    """A missing --lora was reported after the model had loaded, 23 s in (issue 15.26): validate() checks
    the model, LoRA and VAE paths itself, and imports neither torch nor diffusers to do it."""
    import subprocess
    import sys

    script = f"""
import sys
from facesmith.config import GenerateConfig
from facesmith.errors import FacesmithError
for changes in ({{"loras": ["{tmp_path}/missing.safetensors:0.5"]}}, {{"model": "{tmp_path}/nothing"}},
                {{"vae": "{tmp_path}/novae"}}):
    try:
        GenerateConfig(prompt="a face", sampler="k_euler_a", **changes).validate()
    except FacesmithError as error:
        print(error)
assert "torch" not in sys.modules and "diffusers" not in sys.modules, "validate imported torch"
"""
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True)
    lines = result.stdout.splitlines()
    assert "missing.safetensors does not exist" in lines[0]
    assert "nothing does not exist" in lines[1] and "novae is not a folder" in lines[2]


def _stage_configs():
    from facesmith.data.config import PrepareConfig
    from facesmith.evaluate.attributes import AttributePredictConfig, AttributeTrainConfig
    from facesmith.evaluate.evaluation import EvaluateConfig
    from facesmith.serve.config import ServeConfig
    from facesmith.train.config import TrainConfig

    return [GenerateConfig, NoiseConfig, TrainConfig, PrepareConfig, ServeConfig, EvaluateConfig,
            AttributeTrainConfig, AttributePredictConfig]  # fmt: skip


@pytest.mark.parametrize(
    ("line", "message"),
    [
        ('flip = "no"', 'flip = "no" is not of type bool: write true or false'),
        ("batch_size = 4.5", "batch_size = 4.5 is not of type int: write a whole number"),
        ("seed = 1.5", "seed = 1.5 is not of type int"),
        ('sample_every = "10"', 'sample_every = "10" is not of type int'),
        ('learning_rate = "fast"', 'learning_rate = "fast" is not of type float: write a number'),
        ("resolution = 4.5", "resolution = 4.5 is not of type int | None: write a whole number or none"),
        ("mode = 1", "mode = 1 is not of type str"),
    ],
)
def test_toml_values_of_the_wrong_type_are_one_line_errors(tmp_path, line, message):
    from facesmith.train.config import TrainConfig

    path = tmp_path / "train.toml"
    path.write_text(f'dataset = "d"\n{line}\n')
    with pytest.raises(FacesmithError) as caught:
        TrainConfig.load(path)
    assert str(caught.value).startswith(f"{path}: {message}")
    assert str(path) in str(caught.value) and "\n" not in str(caught.value)


@pytest.mark.parametrize("cls", _stage_configs(), ids=lambda c: c.__name__)
def test_every_stage_config_checks_every_field_type_and_takes_its_own_defaults(cls):
    import dataclasses

    defaults = {k: v for k, v in cls().to_dict().items() if v is not None}
    assert cls.from_dict(defaults) == cls(**defaults)  # nothing the stage writes is refused
    for f in dataclasses.fields(cls):
        wrong = "text" if str(f.type).startswith(("dict", "list", "bool", "int", "float")) else {"a": 1}
        with pytest.raises(
            FacesmithError, match=rf"^settings: {f.name} = .* is not of type {re.escape(str(f.type))}"
        ):
            cls.from_dict({f.name: wrong})


def test_whole_numbers_are_numbers_and_lists_are_checked_item_by_item():
    from facesmith.train.config import TrainConfig

    assert TrainConfig.from_dict({"learning_rate": 1}).learning_rate == 1
    with pytest.raises(FacesmithError, match=r'loras = \["a", 3\] is not of type list\[str\]'):
        GenerateConfig.from_dict({"loras": ["a", 3]})
    assert parse_flags(GenerateConfig, ["--loras", "a.safetensors,b.safetensors:0.5"]) == {
        "loras": ["a.safetensors", "b.safetensors:0.5"]
    }
    assert parse_flags(TrainConfig, ["--flip", "no"]) == {"flip": False}
