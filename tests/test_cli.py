"""The `facesmith` command: generate, info, --from, --trace, noise, samplers, and bad input."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest
import torch
from PIL import Image
from typer.testing import CliRunner

from facesmith.cli import app
from factory import one_line_error

runner = CliRunner()
FAST = ["--steps", "2"]


def invoke(*args):
    return runner.invoke(app, [str(a) for a in args])


def test_generate_info_and_from_reproduce_the_image(sd15_folder, tmp_path):
    result = invoke("generate", "a smiling face", "--negative", "blurry", "--model", sd15_folder, "-n", 2,
                    "--seed", 5, "-o", tmp_path / "a", *FAST)  # fmt: skip
    assert result.exit_code == 0, result.output
    pngs = sorted((tmp_path / "a").glob("*.png"))
    assert [p.name for p in pngs] == ["00001-5.png", "00002-6.png"]
    assert (tmp_path / "a" / "generate.toml").is_file()

    info = invoke("info", pngs[1])
    assert info.exit_code == 0
    assert (
        "Negative prompt: blurry" in info.stdout and "Seed: 6" in info.stdout and "Size: 64x64" in info.stdout
    )
    assert '"sampler": "DDIM"' in info.stdout

    again = invoke("generate", "--from", pngs[1], "--model", sd15_folder, "-o", tmp_path / "b")
    assert again.exit_code == 0, again.output
    (copy,) = (tmp_path / "b").glob("*.png")
    assert copy.name == "00001-6.png"
    assert np.array_equal(np.asarray(Image.open(copy)), np.asarray(Image.open(pngs[1])))

    changed = invoke("generate", "--from", pngs[1], "--model", sd15_folder, "--seed", 9, "-o", tmp_path / "b")
    assert changed.exit_code == 0 and (tmp_path / "b" / "00002-9.png").is_file()


def test_trace_saves_a_strip_of_predictions(sd15_folder, tmp_path):
    result = invoke(
        "generate", "a face", "--model", sd15_folder, "--trace", "--seed", 1, "-o", tmp_path, "--steps", 4
    )
    assert result.exit_code == 0, result.output
    strip = Image.open(tmp_path / "00001-1-trace.png")
    assert strip.size == (4 * 64, 64)  # 4 steps -> 4 distinct predictions (8 frames asked)


def test_noise_saves_the_forward_process(sd15_folder, tmp_path):
    Image.new("RGB", (64, 64), (200, 120, 90)).save(tmp_path / "face.png")
    result = invoke(
        "noise", tmp_path / "face.png", "--steps", 3, "--model", sd15_folder, "-o", tmp_path / "out"
    )
    assert result.exit_code == 0, result.output
    strip = Image.open(tmp_path / "out" / "face-noise.png").convert("L")
    assert strip.size == (4 * 64, 64 + 14)  # four frames, each labelled with its t underneath
    bands = [np.asarray(strip)[64:, i * 64 : (i + 1) * 64] for i in range(4)]
    assert all((band < 128).any() for band in bands)  # text in every band
    assert not np.array_equal(bands[0], bands[1])  # t = 0 and t = 333 differ


def test_long_prompt_prints_a_warning_line_naming_the_cut_words(sd15_folder, tmp_path):
    prompt = "a face " * 40 + "with purple eyebrows"
    result = invoke("generate", prompt, "--model", sd15_folder, "-o", tmp_path, *FAST)
    assert result.exit_code == 0, result.output
    warning_lines = [line for line in result.stderr.splitlines() if line.startswith("warning:")]
    assert len(warning_lines) == 1 and "purple eyebrows" in warning_lines[0]


def test_samplers_lists_the_a1111_names():
    result = invoke("samplers")
    assert result.exit_code == 0
    for name in ("DDIM", "PNDM", "Euler a", "DPM++ 2M Karras", "UniPC", "LCM"):
        assert name in result.stdout


# ----------------------------------------------------------------------------------------------------------
# Bad input: one line, exit 2, no traceback


def test_missing_model_path(tmp_path):
    one_line_error(
        invoke("generate", "a face", "--model", tmp_path / "nope", "-o", tmp_path), "does not exist"
    )


def test_unknown_format(tmp_path):
    (tmp_path / "model.onnx").write_bytes(b"\0" * 16)
    one_line_error(
        invoke("generate", "a face", "--model", tmp_path / "model.onnx", "-o", tmp_path),
        "unknown model format",
    )
    (tmp_path / "folder").mkdir()
    one_line_error(
        invoke("generate", "a face", "--model", tmp_path / "folder", "-o", tmp_path),
        "without model_index.json",
    )


def test_corrupt_safetensors(tmp_path):
    (tmp_path / "broken.safetensors").write_bytes(b"garbage")
    one_line_error(
        invoke("generate", "a face", "--model", tmp_path / "broken.safetensors", "-o", tmp_path),
        "not a readable",
    )


def test_unrecognised_architecture_says_what_was_found(tmp_path):
    from safetensors.torch import save_file

    save_file(
        {"encoder.layer.0.weight": torch.zeros(2), "encoder.layer.1.weight": torch.zeros(2)},
        tmp_path / "x.safetensors",
    )
    result = invoke("generate", "a face", "--model", tmp_path / "x.safetensors", "-o", tmp_path)
    one_line_error(result, "not a Stable Diffusion checkpoint")
    assert "encoder.layer.* (2)" in result.stderr


def test_pickles_are_refused_unless_allowed(tmp_path):
    torch.save({"state_dict": {"a": torch.zeros(1)}}, tmp_path / "model.ckpt")
    result = invoke("generate", "a face", "--model", tmp_path / "model.ckpt", "-o", tmp_path)
    one_line_error(result, "runs arbitrary code")
    assert "--allow-pickle" in result.stderr
    allowed = invoke(
        "generate", "a face", "--model", tmp_path / "model.ckpt", "--allow-pickle", "-o", tmp_path
    )
    one_line_error(allowed, "not a Stable Diffusion checkpoint")  # unpickled, then judged by its keys


def test_lora_that_does_not_fit_counts_the_misfits(sd15_folder, tmp_path):
    from safetensors.torch import save_file

    import factory

    save_file(factory.kohya_lora(factory.tiny_sdxl()), tmp_path / "xl.safetensors")
    result = invoke(
        "generate",
        "a face",
        "--model",
        sd15_folder,
        "--lora",
        f"{tmp_path / 'xl.safetensors'}:0.8",
        "-o",
        tmp_path,
    )
    one_line_error(result, "doesn't fit this model")
    assert " of " in result.stderr and "LoRA modules have no matching layer" in result.stderr


@pytest.mark.parametrize(
    ("args", "fragment"),
    [
        (["--width", "100"], "--width 100 is not a positive multiple of 8"),
        (["--height", "20"], "--height 20"),
        (["--steps", "0"], "--steps 0 is outside [1, 1000]"),
        (["--steps", "1001"], "--steps 1001 is outside [1, 1000]"),
        (["--sampler", "Heun++ 9000"], 'unknown sampler "Heun++ 9000"'),
    ],
)
def test_bad_settings(args, fragment, tmp_path):
    one_line_error(invoke("generate", "a face", *args, "-o", tmp_path), fragment)


def test_empty_prompt_without_negative(tmp_path):
    one_line_error(invoke("generate", "", "-o", tmp_path), "prompt is empty")
    one_line_error(invoke("generate", "-o", tmp_path), "prompt is empty")


def test_output_directory_not_writable(sd15_folder, tmp_path):
    (tmp_path / "file").write_text("x")
    one_line_error(
        invoke("generate", "a face", "--model", sd15_folder, "-o", tmp_path / "file" / "sub"), "not writable"
    )


def test_default_model_missing_points_to_model_option(tmp_path, monkeypatch):
    import facesmith.models.loading as loading

    monkeypatch.setattr(loading, "DEFAULT_MODEL_DIR", tmp_path / "no-default-model")
    one_line_error(invoke("generate", "a face", "-o", tmp_path), "--model")


def test_default_model_shard_damage_is_one_line(tmp_path, monkeypatch):
    import shutil

    import facesmith.models.loading as loading

    copy = shutil.copytree(loading.DEFAULT_MODEL_DIR, tmp_path / "default_model")
    shard = copy / "unet-00001.safetensors"
    shard.write_bytes(shard.read_bytes()[:-10])
    monkeypatch.setattr(loading, "DEFAULT_MODEL_DIR", copy)
    one_line_error(invoke("generate", "a face", "-o", tmp_path / "out"), "sha256")


def test_info_on_a_missing_image(tmp_path):
    one_line_error(invoke("info", tmp_path / "missing.png"), "does not exist")


def test_installed_command_prints_one_line_and_exits_2(tmp_path):
    process = subprocess.run(
        [sys.executable, "-m", "facesmith.cli", "generate", "a face", "--model", str(tmp_path / "none")],
        capture_output=True,
        text=True,
    )
    assert process.returncode == 2
    assert "Traceback" not in process.stderr
    assert [line for line in process.stderr.splitlines() if line.strip()] == [
        f"error: model {tmp_path / 'none'} does not exist: pass a diffusers folder or a .safetensors file"
    ]


def test_one_generate_validates_its_settings_once(sd15_folder, tmp_path, monkeypatch):
    from facesmith.config import GenerateConfig

    checked = []
    validate = GenerateConfig.validate
    monkeypatch.setattr(GenerateConfig, "validate", lambda self: checked.append(self) or validate(self))
    result = invoke("generate", "a face", "--model", sd15_folder, "-n", 2, "-o", tmp_path, *FAST)
    assert result.exit_code == 0, result.output
    # In the CLI before torch is imported (issue 15.26), and at the stage boundary, run_generate, which
    # Python callers reach directly; never per image in the sampler.
    assert len(checked) == 2


def _help(*command: str) -> str:
    result = CliRunner().invoke(app, [*command, "--help"], terminal_width=200)
    assert result.exit_code == 0, result.output
    return " ".join(result.output.split())


def _stage_configs():
    from facesmith.config import GenerateConfig, NoiseConfig
    from facesmith.data.config import PrepareConfig
    from facesmith.evaluate.attributes import AttributeTrainConfig
    from facesmith.evaluate.evaluation import EvaluateConfig
    from facesmith.serve.config import ServeConfig

    return {
        ("generate",): GenerateConfig,
        ("prepare",): PrepareConfig,
        ("noise",): NoiseConfig,
        ("serve",): ServeConfig,
        ("evaluate",): EvaluateConfig,
        ("attributes", "train"): AttributeTrainConfig,
    }


@pytest.mark.parametrize("command", list(_stage_configs()), ids=" ".join)
def test_help_shows_the_default_of_every_option(command):
    """Every option defaults to None so that the dataclass holds the default; --help must still show it.
    Rich read `[default: 50]` as markup and printed "Denoising steps, 1-1000 ." (issue 15.3)."""
    import dataclasses

    import typer.main

    cli_command = typer.main.get_command(app)
    for name in command:
        cli_command = cli_command.commands[name]
    defaults = {
        f.name: f.default
        for f in dataclasses.fields(_stage_configs()[command])
        if f.default is not dataclasses.MISSING and f.default not in (None, False, "")
    }
    shown = _help(*command)
    options = [p for p in cli_command.params if p.param_type_name == "option" and p.name in defaults]
    assert options, "no option of this command has a dataclass default"
    missing = [
        p.name for p in options if f"[default: {defaults[p.name]}]" not in " ".join((p.help or "").split())
    ]
    assert not missing, f"--help states no default for {missing}"
    for param in options:
        assert " ".join(param.help.split()) in shown, param.name


def test_an_error_keeps_its_square_brackets(tmp_path):
    result = CliRunner().invoke(app, ["generate", "a face", "--model", str(tmp_path / "models[serve]")])
    one_line_error(result, "models[serve]")


def test_seed_minus_one_is_random_and_a1111_sampler_spellings_are_recorded_by_name(sd15_folder, tmp_path):
    """`--seed -1` means random, as in the API and the page; `--sampler dpmpp_2m --scheduler karras` is
    A1111's "DPM++ 2M Karras", and the PNG says so (issue 15.30)."""
    result = invoke("generate", "a face", "--model", sd15_folder, "--seed", -1, "--sampler", "dpmpp_2m",
                    "--scheduler", "karras", "-o", tmp_path, *FAST)  # fmt: skip
    assert result.exit_code == 0, result.output
    (png,) = tmp_path.glob("*.png")
    seed = int(png.stem.split("-")[1])
    assert seed >= 0
    info = invoke("info", png).stdout
    assert "Sampler: DPM++ 2M Karras" in info and f"Seed: {seed}" in info
    one_line_error(invoke("generate", "a face", "--scheduler", "karras", "-o", tmp_path), "give --sampler")
    one_line_error(
        invoke("generate", "a face", "--sampler", "DDIM", "--scheduler", "karras", "-o", tmp_path),
        "no Karras form",
    )


def test_a_size_far_from_the_model_s_own_is_warned_about(sd15_folder, tmp_path):
    result = invoke("generate", "a face", "--model", sd15_folder, "--width", 256, "--height", 256, "--seed", 1,
                    "-o", tmp_path, *FAST)  # fmt: skip
    assert result.exit_code == 0, result.output
    assert "warning: 256x256 is far from this model's native 64x64" in " ".join(result.stderr.split())


def test_ctrl_c_exits_130_and_a_stage_s_interrupt_advice_is_one_line(capsys):
    """train turns Ctrl-C into TrainingInterrupted (where the checkpoint is, how to resume); the CLI
    prints that one line and exits 130 as a Ctrl-C does, not 2."""
    import typer

    from facesmith.terminal import guarded
    from facesmith.train.launch import TrainingInterrupted

    def interrupted_training():
        raise TrainingInterrupted("stopped at step 2; resume with --resume latest")

    def interrupted():
        raise KeyboardInterrupt

    for work, line in ((interrupted_training, "stopped at step 2"), (interrupted, "interrupted")):
        with pytest.raises(typer.Exit) as stop:
            guarded(work, models=False)
        assert stop.value.exit_code == 130
        assert line in capsys.readouterr().err


def test_from_a_png_of_another_model_warns_that_the_image_will_differ(sd15_folder, tmp_path):
    """--from used whatever model was loaded without a word (issue 15.6)."""
    import factory

    other = factory.save_folder(factory.tiny_sd15(seed=7), tmp_path / "other")
    made = invoke("generate", "a face", "--model", sd15_folder, "--seed", 1, "-o", tmp_path / "a", *FAST)
    assert made.exit_code == 0, made.output
    (png,) = (tmp_path / "a").glob("*.png")
    same = invoke("generate", "--from", png, "--model", sd15_folder, "-o", tmp_path / "b")
    assert same.exit_code == 0 and "warning" not in same.stderr
    differs = invoke("generate", "--from", png, "--model", other, "-o", tmp_path / "c")
    assert differs.exit_code == 0, differs.output
    assert "was made with model hash" in " ".join(differs.stderr.split())


def test_a1111_emphasis_is_weighted_and_the_png_keeps_it_for_from(sd15_folder, tmp_path):
    """Issue 15.31: (smiling:1.2) was read as words, with a warning; now it weighs, unwarned, and the PNG
    records the prompt as written, so --from makes the same image."""
    from facesmith.metadata import prompt_from_png, read_png

    prompt = "a (smiling:1.6) woman, [old]"
    result = invoke("generate", prompt, "--model", sd15_folder, "--seed", 1, "-o", tmp_path / "a", *FAST)
    assert result.exit_code == 0 and "warning" not in result.stderr, result.output
    (png,) = (tmp_path / "a").glob("*.png")
    parameters, _ = read_png(png)
    assert parameters.startswith(prompt + "\n") and prompt_from_png(png) == prompt
    again = invoke("generate", "--from", png, "--model", sd15_folder, "-o", tmp_path / "b")
    assert again.exit_code == 0, again.output
    (copy,) = (tmp_path / "b").glob("*.png")
    assert np.array_equal(np.asarray(Image.open(png)), np.asarray(Image.open(copy)))
    plain = invoke("generate", "a smiling woman, old", "--model", sd15_folder, "--seed", 1, "-o", tmp_path / "c",
                   *FAST)  # fmt: skip
    assert plain.exit_code == 0, plain.output
    (unweighted,) = (tmp_path / "c").glob("*.png")
    assert not np.array_equal(np.asarray(Image.open(png)), np.asarray(Image.open(unweighted)))
    editing = invoke("generate", "a [smiling|sad] woman", "--model", sd15_folder, "-o", tmp_path / "d", *FAST)
    assert editing.exit_code == 0
    assert "does not support ([smiling|sad]" in " ".join(editing.stderr.split())


# ----------------------------------------------------------------------------------------------------------
# Issue 15.26: bad input is told before torch is imported (2-3 s)

_BEFORE_TORCH = """
import sys
from typer.testing import CliRunner
from facesmith.cli import app

cases = [
    (["generate", "--lora", "missing.safetensors", "x"], "LoRA file missing.safetensors does not exist"),
    (["generate", "x", "--model", "no/such/model"], "model no/such/model does not exist"),
    (["generate", "x", "--width", "100"], "--width 100 is not a positive multiple of 8"),
    (["generate", "x", "--init", "no-such.png"], "no-such.png does not exist"),
    (["train", "--dataset", "no/such/dataset"], "dataset no/such/dataset is not a folder"),
    (["train", "--dataset", ".", "--learning-rate", "-1"], "learning_rate -1.0 must be"),
]
for args, words in cases:
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 2 and words in result.stderr, (args, result.output)
    assert "torch" not in sys.modules, args
"""


def test_bad_generate_and_train_input_fails_before_torch_is_imported(tmp_path):
    env = {**__import__("os").environ, "PYTHONPATH": ":".join(sys.path)}
    subprocess.run([sys.executable, "-c", _BEFORE_TORCH], check=True, cwd=tmp_path, env=env, timeout=120)
