import json

import pytest
from typer.testing import CliRunner

from facesmith.cli import app
from facesmith.errors import FacesmithError
from facesmith.evaluate.evaluation import EvaluateConfig, folder_images, run_evaluate

# Small everything: 64 px features, few real faces, few calibration copies.
QUICK = {"real_count": 12, "feature_size": 64, "calibration_copies": 8, "steps": 2}


def test_report_end_to_end_on_a_tiny_model(sd15_folder, face_dataset, tiny_classifier, tmp_path):
    config = EvaluateConfig(
        model=str(sd15_folder), real=str(face_dataset), auto=4, classifier=str(tiny_classifier),
        out_dir=str(tmp_path / "report"), **QUICK,
    )  # fmt: skip
    metrics = run_evaluate(config)
    out = tmp_path / "report"
    for name in (
        "report.md",
        "metrics.json",
        "grid.png",
        "closest-pairs.png",
        "faithfulness.png",
        "evaluate.toml",
    ):
        assert (out / name).is_file(), name
    assert len(list((out / "images").glob("*.png"))) == 4
    sets = metrics["sets"]
    assert metrics["feature_space"] == "MobileNetV2-ImageNet pool-1280 @64px"
    # The baselines bracket what they should: real faces are closer to real faces than noise is.
    assert sets["real"]["fd"] < sets["noise"]["fd"]
    assert sets["real"]["precision"] > sets["noise"]["precision"]
    assert sets["model"]["faithfulness"]["Smiling"]["asked"]["images"] == 1  # auto prompt 0 asks for a smile
    assert sets["real"]["faithfulness"]["Eyeglasses"]  # real faces are judged against their own labels
    assert 0 <= sets["model"]["near_copy_share"] <= 1
    report = (out / "report.md").read_text()
    assert "MobileNetV2-ImageNet pool-1280 @64px" in report and "upper bound" in report
    assert "sampled with DDIM, CFG 7.5" in report  # the model's defaults, as they resolved
    assert EvaluateConfig.load(out / "evaluate.toml") == config
    assert json.loads((out / "metrics.json").read_text())["counts"]["candidates"] == 4


def test_image_folder_through_the_cli_reads_prompts_from_png_metadata(
    face_dataset, tiny_classifier, tmp_path
):
    import factory
    from facesmith.metadata import Recipe, write_png

    folder = tmp_path / "made-elsewhere"
    folder.mkdir()
    for i in range(5):
        face = factory.synthetic_face({"Eyeglasses": 1}, seed=900 + i)
        write_png(face, folder / f"{i}.png", Recipe("a photo of a person wearing glasses\nSteps: 20", {}))
    settings = EvaluateConfig(real=str(face_dataset), classifier=str(tiny_classifier), **QUICK)
    settings.save(tmp_path / "evaluate.toml")
    result = CliRunner().invoke(
        app, ["evaluate", str(folder), "--config", str(tmp_path / "evaluate.toml"), "-o", str(tmp_path / "r")]
    )
    assert result.exit_code == 0, result.output
    metrics = json.loads((tmp_path / "r" / "metrics.json").read_text())
    assert metrics["sets"]["model"]["faithfulness"]["Eyeglasses"]["asked"]["images"] == 5
    assert metrics["model"]["hash"] is None and metrics["prompts"][0].startswith(
        "a photo of a person wearing"
    )


def test_user_mistakes_are_one_line(tmp_path, face_dataset):
    with pytest.raises(FacesmithError, match="--real is missing"):
        EvaluateConfig().validate()
    with pytest.raises(FacesmithError, match="not both"):
        EvaluateConfig(real="x", prompts="p.txt", auto=8).validate()
    result = CliRunner().invoke(
        app, ["evaluate", "--real", str(tmp_path / "nothing"), "-o", str(tmp_path / "o")]
    )
    assert result.exit_code == 2
    assert "does not exist" in result.output


def test_a_typo_in_evaluate_toml_is_named(tmp_path):
    (tmp_path / "evaluate.toml").write_text('real = "faces"\nreal_cuont = 3\n')
    with pytest.raises(FacesmithError, match="real_cuont"):
        EvaluateConfig.load(tmp_path / "evaluate.toml")


def test_a_folder_of_facesmith_pngs_is_judged_against_the_prompts_they_were_made_with(tmp_path):
    # Regression: evaluate looked the prompt up at the JSON chunk's top level, where generate never puts
    # it; an image whose A1111 text was stripped then counted as asking for nothing.
    import dataclasses

    from PIL import Image

    from facesmith.config import GenerateConfig
    from facesmith.metadata import recipe, write_png

    class Model:
        name = "sd15"

        def model_hash(self) -> str:
            return "0123456789"

    config = GenerateConfig(prompt="a photo of a smiling woman", cfg=7.5, sampler="DDIM", width=8, height=8)
    chunks = dataclasses.replace(recipe(config, Model(), seed=1), parameters="")
    write_png(Image.new("RGB", (8, 8)), tmp_path / "00001-1.png", chunks)
    Image.new("RGB", (8, 8)).save(tmp_path / "00002-plain.png")
    images, prompts = folder_images(tmp_path)
    assert len(images) == 2 and prompts == ["a photo of a smiling woman", ""]
