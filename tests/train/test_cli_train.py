"""`facesmith train`: TOML plus flags in, exports out; mistakes are one line and exit status 2."""

from __future__ import annotations

from typer.testing import CliRunner

from facesmith.cli import app
from facesmith.train.config import TrainConfig
from factory import one_line_error

runner = CliRunner()


def test_toml_and_flags_train_a_lora_and_record_the_settings(faces, sd15_folder, tmp_path):
    toml = TrainConfig(
        dataset=str(faces), model=str(sd15_folder), mode="lora", resolution=64, tensorboard=False
    ).save(tmp_path / "in.toml")
    run = tmp_path / "run"
    result = runner.invoke(
        app, ["train", "--config", str(toml), "--output-dir", str(run), "--max-steps", "1"]
    )
    assert result.exit_code == 0, result.output
    assert result.stdout.strip() == str(run / "run.safetensors")
    saved = TrainConfig.load(run / "train.toml")
    assert (saved.max_steps, saved.mode, saved.output_dir) == (1, "lora", str(run))
    # The base model by name and hash (a comment: the TOML's keys stay TrainConfig's fields).
    from facesmith.models.loading import cached_sha256

    digest = cached_sha256(sorted((sd15_folder / "unet").glob("*.safetensors")))
    assert (
        f"# base model: {sd15_folder.name}, family sd1, sha256 {digest}\n" in (run / "train.toml").read_text()
    )


def test_user_mistakes_are_one_line(faces, tmp_path):
    one_line_error(runner.invoke(app, ["train", "--dataset", str(faces), "--max-stepz", "3"]), "--max-stepz")
    one_line_error(runner.invoke(app, ["train", "--recipe", "huge"]), "unknown recipe 'huge'")
    one_line_error(runner.invoke(app, ["train", "--dataset", str(tmp_path)]), "no metadata.jsonl")
    missing = runner.invoke(app, ["train", "--dataset", str(faces), "--model", str(tmp_path / "none")])
    one_line_error(missing, "does not exist")
