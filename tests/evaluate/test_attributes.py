"""The attribute classifier's stages: `attributes train` fits and scores it, `attributes predict` labels files."""

import json
from pathlib import Path

import pytest
from PIL import Image

import factory
from facesmith.data.manifest import ManifestRow, write_manifest
from facesmith.errors import FacesmithError
from facesmith.evaluate.attributes import (
    AttributePredictConfig,
    AttributeTrainConfig,
    run_attributes_predict,
    train_attribute_classifier,
)


def test_briefly_trained_classifier_beats_chance_on_what_it_saw(tiny_classifier):
    info = json.loads((tiny_classifier / "attributes.json").read_text())
    held = info["held_out"]
    for name in ("Eyeglasses", "Smiling", "Blond_Hair"):
        assert held[name]["accuracy"] > max(0.5, held[name]["majority"]), (name, held[name])
    assert set(held) >= {"Male", "age_group", "ethnicity"}  # every label the data carried is scored
    assert "Bald" not in held  # never labelled, never scored
    assert AttributeTrainConfig.load(tiny_classifier / "attributes-train.toml").size == 64


def test_training_without_labels_or_held_out_faces_is_a_user_error(tmp_path):
    folder = tmp_path / "plain"
    folder.mkdir()
    Image.new("RGB", (32, 32)).save(folder / "a.png")
    with pytest.raises(FacesmithError, match="no face carries attributes"):
        train_attribute_classifier(AttributeTrainConfig(datasets=[str(folder)], size=32))
    unsplit = tmp_path / "unsplit"  # every face in the train split: nothing to report accuracy on
    Image.new("RGB", (32, 32)).save(folder / "b.png")
    write_manifest(
        unsplit, [ManifestRow(str(folder / n), attributes={"Male": 1}) for n in ("a.png", "b.png")]
    )
    with pytest.raises(FacesmithError, match="both splits"):
        train_attribute_classifier(AttributeTrainConfig(datasets=[str(unsplit)], size=32))


@pytest.mark.skipif(
    factory.shared_data_dir() is None or not (factory.shared_data_dir() / "celeba").is_dir(),
    reason="shared CelebA data is absent",
)
def test_on_real_celeba_faces_gender_beats_the_majority(tmp_path):
    import csv

    root = factory.shared_data_dir() / "celeba"
    rows = list(csv.DictReader((root / "attributes.csv").read_text().splitlines()))[:160]
    write_manifest(
        tmp_path,
        [
            ManifestRow(
                str(root / "images" / r["file"]),
                attributes={"Male": int(r["Male"])},
                split="val" if i % 4 == 0 else "train",
            )
            for i, r in enumerate(rows)
        ],
    )
    info = train_attribute_classifier(
        AttributeTrainConfig(
            datasets=[str(tmp_path)], out_dir=str(tmp_path / "out"), size=96, epochs=20, batch=32
        )
    )
    assert info["held_out"]["Male"]["accuracy"] > info["held_out"]["Male"]["majority"]


def test_predict_labels_each_file_in_order_with_a_caption(tiny_classifier, tmp_path):
    for i in range(2):
        factory.synthetic_face({"Eyeglasses": 1, "Smiling": 1}, seed=700 + i).save(tmp_path / f"{i}.gif")
    config = AttributePredictConfig(images=[str(tmp_path)], classifier=str(tiny_classifier), caption=True)
    rows = run_attributes_predict(config)
    assert [Path(r["file"]).name for r in rows] == ["0.gif", "1.gif"]
    assert all(r["attributes"]["Eyeglasses"] == 1 and r["caption"] for r in rows)
    assert rows == run_attributes_predict(config)  # captions are seeded


def test_predict_gives_the_probabilities_behind_each_verdict(tiny_classifier, tmp_path):
    # Issue 15.32: predict printed 0/1 only.
    for i, glasses in enumerate((0, 1)):
        factory.synthetic_face({"Eyeglasses": glasses}, seed=710 + i).save(tmp_path / f"{i}.png")
    rows = run_attributes_predict(
        AttributePredictConfig(images=[str(tmp_path)], classifier=str(tiny_classifier))
    )
    for row in rows:
        probs = row["probabilities"]
        assert set(probs) == set(row["attributes"])
        for name, verdict in row["attributes"].items():
            if isinstance(verdict, int):
                assert 0 <= probs[name] <= 1 and verdict == int(probs[name] > 0.5), name
        for key in ("age_group", "ethnicity"):
            assert sum(probs[key].values()) == pytest.approx(1, abs=0.01)
            assert max(probs[key], key=probs[key].get) == row["attributes"][key]
    assert rows[0]["probabilities"]["Eyeglasses"] < 0.5 < rows[1]["probabilities"]["Eyeglasses"]
    with pytest.raises(FacesmithError, match="does not exist"):
        run_attributes_predict(AttributePredictConfig(images=[str(tmp_path / "gone.png")]))


def test_predict_cli_prints_one_json_line_per_image_with_a_caption(tiny_classifier, tmp_path):
    from typer.testing import CliRunner

    from facesmith.cli import app

    for i in range(2):
        factory.synthetic_face({"Eyeglasses": 1, "Smiling": 1}, seed=700 + i).save(tmp_path / f"{i}.png")
    result = CliRunner().invoke(
        app, ["attributes", "predict", str(tmp_path), "--classifier", str(tiny_classifier), "--caption"]
    )
    assert result.exit_code == 0, result.output
    rows = [json.loads(line) for line in result.output.splitlines() if line.startswith("{")]
    assert [Path(r["file"]).name for r in rows] == ["0.png", "1.png"]
    assert all(r["attributes"]["Eyeglasses"] == 1 and r["caption"] for r in rows)


def test_fine_tune_trains_the_backbone_after_the_heads_and_ships_a_loadable_network(face_dataset, tmp_path):
    from facesmith.attributes.classifier import AttributeClassifier

    out = tmp_path / "fine"
    config = AttributeTrainConfig(
        datasets=[str(face_dataset)], out_dir=str(out), size=64, epochs=2, batch=16, fine_tune_minutes=0.05,
        fine_tune_epochs=1, fine_tune_batch=16, frozen_modules=14,
    )  # fmt: skip
    info = train_attribute_classifier(config)
    assert info["fine_tuned"] and info["training"]["steps"] >= 1
    assert set(info["held_out"]) == set(info["held_out_frozen_heads"])  # both stages scored on the same faces
    assert not (out / "fine-tune-checkpoint.pt").exists()  # a finished run leaves no checkpoint behind
    written = json.loads((out / "attributes.json").read_text())
    assert written["held_out"] == info["held_out"] and "modules 14-18" in written["backbone"]
    classifier = AttributeClassifier.load(out)  # the whole network, not heads on the frozen backbone
    face = factory.synthetic_face({"Eyeglasses": 1}, seed=1)
    assert set(classifier.predict([face])[0]) >= {"Eyeglasses", "age_group", "ethnicity"}
    assert AttributeTrainConfig.load(out / "attributes-train.toml").fine_tune_minutes == 0.05
    with pytest.raises(FacesmithError, match="--fine-tune -1"):
        train_attribute_classifier(AttributeTrainConfig(datasets=[str(face_dataset)], fine_tune_minutes=-1))
