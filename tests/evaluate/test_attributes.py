import json
import os
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import factory
from facesmith.errors import FacesmithError
from facesmith.evaluate.attributes import (
    AttributeClassifier,
    AttributeHeads,
    AttributeTrainConfig,
    caption_attributes,
    masked_loss,
    targets,
    train_attribute_classifier,
)


def test_briefly_trained_classifier_beats_chance_on_what_it_saw(tiny_classifier):
    info = json.loads((tiny_classifier / "attributes.json").read_text())
    held = info["held_out"]
    for name in ("Eyeglasses", "Smiling", "Blond_Hair"):
        assert held[name]["accuracy"] > max(0.5, held[name]["majority"]), (name, held[name])
    assert set(held) >= {"Male", "age_group", "ethnicity"}  # every label the data carried is scored
    assert "Bald" not in held  # never labelled, never scored


def test_predict_returns_attribute_dicts(tiny_classifier):
    classifier = AttributeClassifier.load(tiny_classifier)
    faces = [factory.synthetic_face({"Eyeglasses": g, "Smiling": 1}, seed=500 + g) for g in (0, 1)]
    predicted = classifier.predict(faces)
    assert [p["Eyeglasses"] for p in predicted] == [0, 1]
    assert len(predicted[0]) == 42 and predicted[0]["age_group"] in ("child", "young adult", "senior")
    assert caption_attributes({"age_group": "senior", "Male": 1}) == {"age": 70, "Male": 1}


def test_unknown_labels_add_no_loss():
    binary, age, eth = targets([{"Smiling": 1}, {"age": 70, "ethnicity": "Black"}])
    assert np.isnan(binary[0, 0]) and binary[0, 31] == 1 and age.tolist() == [-1, 4]
    heads = AttributeHeads(grid=1)
    outputs = heads(torch.randn(2, 1280, 1, 1))
    loss = masked_loss(outputs, torch.from_numpy(binary), torch.from_numpy(age), torch.from_numpy(eth))
    loss.backward()
    grads = heads.binary.weight.grad.abs().sum(1)
    assert grads[31] > 0 and grads[0] == 0  # Smiling was labelled, 5_o_Clock_Shadow never


def test_training_without_labels_or_held_out_faces_is_a_user_error(tmp_path):
    folder = tmp_path / "plain"
    folder.mkdir()
    Image.new("RGB", (32, 32)).save(folder / "a.png")
    with pytest.raises(FacesmithError, match="no face carries attributes"):
        train_attribute_classifier(AttributeTrainConfig(datasets=[str(folder)], size=32))
    with pytest.raises(FacesmithError, match="no attribute classifier"):
        AttributeClassifier.load(tmp_path)


def _shared() -> Path:
    return Path(os.environ.get("FACESMITH_SHARED", Path(__file__).resolve().parents[3] / "shared"))


@pytest.mark.skipif(not (_shared() / "data" / "celeba").is_dir(), reason="shared CelebA data is absent")
def test_on_real_celeba_faces_gender_beats_the_majority(tmp_path):
    import csv

    root = _shared() / "data" / "celeba"
    rows = list(csv.DictReader((root / "attributes.csv").read_text().splitlines()))[:160]
    lines = [
        json.dumps(
            {
                "file_name": str(root / "images" / r["file"]),
                "attributes": {"Male": int(r["Male"])},
                "split": "val" if i % 4 == 0 else "train",
            }
        )  # fmt: skip
        for i, r in enumerate(rows)
    ]
    (tmp_path / "metadata.jsonl").write_text("\n".join(lines))
    info = train_attribute_classifier(
        AttributeTrainConfig(
            datasets=[str(tmp_path)], out_dir=str(tmp_path / "out"), size=96, epochs=20, batch=32
        )
    )
    assert info["held_out"]["Male"]["accuracy"] > info["held_out"]["Male"]["majority"]


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
