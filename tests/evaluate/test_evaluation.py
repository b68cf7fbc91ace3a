import json

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from facesmith.cli import app
from facesmith.errors import FacesmithError
from facesmith.evaluate import identity
from facesmith.evaluate.evaluation import EvaluateConfig, folder_images, run_evaluate

# Small everything: 64 px features, few real faces, few calibration copies.
QUICK = {"real_count": 12, "feature_size": 64, "calibration_copies": 8, "steps": 2}


def test_report_end_to_end_on_a_tiny_model(sd15_folder, face_dataset, tiny_classifier, tmp_path):
    config = EvaluateConfig(
        model=str(sd15_folder), real=str(face_dataset), auto=4, classifier=str(tiny_classifier),
        out_dir=str(tmp_path / "report"), identity=True, **QUICK,
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
    # Intervals everywhere (issue 13 item 3): FD and precision/recall by bootstrap, shares by Wilson.
    for key in ("fd", "precision", "recall", "face_rate"):
        low, high = sets["model"][f"{key}_interval"]
        assert low <= sets["model"][key] <= high, key
    assert sets["model"]["faithfulness"]["Smiling"]["asked"]["interval"][1] <= 1
    # The ceiling: the rule scored on real held-out faces with their own labels.
    assert metrics["ceiling"]["faces"] == 12 and metrics["ceiling"]["faithfulness"]["Eyeglasses"]
    # The audited share of the training set is said on every run.
    memo = metrics["memorization"]
    assert memo["audit"] == "sample" and memo["reference_faces"] == 12
    assert memo["audited_share"] == round(12 / memo["training_faces"], 4) and "% of the" in report
    # Per prompt, per image.
    assert [row["prompt"] for row in metrics["per_prompt"]] == metrics["prompts"]
    import csv

    rows = list(csv.DictReader((out / "images.csv").open()))
    assert [r["seed"] for r in rows] == ["0", "1", "2", "3"] and rows[0]["prompt"] == metrics["prompts"][0]
    assert all(r["nearest_training_face"] and float(r["nearest_feature_distance"]) >= 0 for r in rows)
    assert metrics["images"][0]["nearest_training_face"] == rows[0]["nearest_training_face"]
    assert "| Smiling | asked |" in report and "TPR" in report
    # The identity space (issue 13 item 4), when dlib is installed: nearest face and distance per image.
    if identity.available():
        assert (
            memo["identity_space"] == identity.SPACE and "dlib's own same-person threshold is 0.6" in report
        )
        assert all(r["nearest_identity_face"] and float(r["nearest_identity_distance"]) >= 0 for r in rows)
        assert set(metrics["memorization_thresholds"]["spaces"]) == {"feature", "pixel", "identity"}


def test_a_lora_changes_what_is_evaluated(sd15_folder, kohya_file, face_dataset, tiny_classifier, tmp_path):
    # Issue 15.32: evaluate had no --lora. The identity space is off by default (and not what this tests).
    settings = dict(model=str(sd15_folder), real=str(face_dataset), auto=4, classifier=str(tiny_classifier),
                    **{**QUICK, "calibration_copies": 4}, bootstrap=10)  # fmt: skip
    plain = run_evaluate(EvaluateConfig(**settings, out_dir=str(tmp_path / "plain")))
    with_lora = run_evaluate(
        EvaluateConfig(**settings, loras=[f"{kohya_file}:1"], out_dir=str(tmp_path / "l"))
    )
    assert with_lora["model"]["loras"] and not plain["model"]["loras"]
    assert plain["memorization"]["identity_space"] == "identity space: off (--identity adds it)"
    assert set(plain["memorization_thresholds"]["spaces"]) == {"feature", "pixel"}
    a = Image.open(tmp_path / "plain" / "images" / "00000.png")
    b = Image.open(tmp_path / "l" / "images" / "00000.png")
    assert np.abs(np.asarray(a, float) - np.asarray(b, float)).mean() > 0.5
    with pytest.raises(FacesmithError, match="LoRA file"):
        run_evaluate(
            EvaluateConfig(
                **settings, loras=[str(tmp_path / "none.safetensors")], out_dir=str(tmp_path / "x")
            )
        )


def test_audit_all_uses_every_training_face_and_caches_their_features(
    face_dataset, tiny_classifier, tmp_path
):
    import factory

    folder = tmp_path / "made"
    folder.mkdir()
    for i in range(5):
        factory.synthetic_face({"Smiling": 1}, seed=950 + i).save(folder / f"{i}.png")
    settings = dict(model=str(folder), real=str(face_dataset), classifier=str(tiny_classifier), **QUICK,
                    audit="all", feature_cache=str(tmp_path / "cache"), bootstrap=10,
                    identity=True)  # fmt: skip
    first = run_evaluate(EvaluateConfig(**settings, out_dir=str(tmp_path / "a")))
    memo = first["memorization"]
    assert memo["reference_faces"] == memo["training_faces"] - 5 and memo["audited_share"] > 0.8
    cached = list((tmp_path / "cache").glob("*.npz"))
    assert len(cached) == 1
    stamp = cached[0].stat().st_mtime_ns
    again = run_evaluate(EvaluateConfig(**settings, out_dir=str(tmp_path / "b")))
    assert cached[0].stat().st_mtime_ns == stamp  # read, not rewritten
    assert again["sets"]["model"]["nearest_feature_distance_median"] == pytest.approx(
        first["sets"]["model"]["nearest_feature_distance_median"], abs=1e-4
    )


def test_without_dlib_the_audit_runs_on_two_spaces_and_says_how_to_add_the_third(
    face_dataset, tiny_classifier, tmp_path, monkeypatch
):
    import csv

    import factory

    monkeypatch.setattr(identity, "available", lambda: False)
    folder = tmp_path / "made"
    folder.mkdir()
    for i in range(4):
        factory.synthetic_face({"Smiling": 1}, seed=960 + i).save(folder / f"{i}.png")
    config = EvaluateConfig(model=str(folder), real=str(face_dataset), classifier=str(tiny_classifier),
                            out_dir=str(tmp_path / "r"), **QUICK, bootstrap=10, identity=True)  # fmt: skip
    metrics = run_evaluate(config)
    assert metrics["memorization"]["identity_space"] == identity.NOT_INSTALLED
    thresholds = metrics["memorization_thresholds"]
    assert thresholds["identity"] is None and set(thresholds["spaces"]) == {"feature", "pixel"}
    assert metrics["sets"]["model"]["nearest_identity_distance_median"] is None
    assert identity.NOT_INSTALLED in (tmp_path / "r" / "report.md").read_text()
    rows = list(csv.DictReader((tmp_path / "r" / "images.csv").open()))
    assert all(r["nearest_identity_face"] == "" and r["nearest_training_face"] for r in rows)


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
        app,
        ["evaluate", str(folder), "--config", str(tmp_path / "evaluate.toml"), "-o", str(tmp_path / "r"),
         "--identity"],
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    metrics = json.loads((tmp_path / "r" / "metrics.json").read_text())
    space = identity.SPACE if identity.available() else identity.NOT_INSTALLED  # --identity reached the stage
    assert metrics["memorization"]["identity_space"] == space
    assert metrics["sets"]["model"]["faithfulness"]["Eyeglasses"]["asked"]["images"] == 5
    assert metrics["model"]["hash"] is None and metrics["prompts"][0].startswith(
        "a photo of a person wearing"
    )


def test_user_mistakes_are_one_line(tmp_path, face_dataset):
    with pytest.raises(FacesmithError, match="--real is missing"):
        EvaluateConfig().validate()
    with pytest.raises(FacesmithError, match="not both"):
        EvaluateConfig(real="x", prompts="p.txt", auto=8).validate()
    with pytest.raises(FacesmithError, match="--audit 'some'"):
        EvaluateConfig(real="x", audit="some").validate()
    # Issue 13: --prompts with an image folder was accepted and silently ignored.
    folder = tmp_path / "pngs"
    folder.mkdir()
    Image.new("RGB", (8, 8)).save(folder / "a.png")
    for option in ({"prompts": "p.txt"}, {"auto": 8}, {"loras": ["x.safetensors"]}):
        with pytest.raises(FacesmithError, match=f"does not apply to the image folder {folder}"):
            EvaluateConfig(model=str(folder), real="x", **option).validate()
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
    images, prompts, seeds = folder_images(tmp_path)
    assert len(images) == 2 and prompts == ["a photo of a smiling woman", ""]
    assert seeds == [1, None]
