"""The attribute classifier: attribute dicts out, unknown labels add no loss, a missing folder is a user error."""

import numpy as np
import pytest
import torch

import factory
from facesmith.attributes.classifier import (
    AttributeClassifier,
    AttributeHeads,
    caption_attributes,
    fit_heads,
    masked_loss,
    targets,
)
from facesmith.errors import FacesmithError


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


def test_fitting_reports_every_step_and_is_seeded():
    maps = np.random.default_rng(0).normal(size=(6, 1280, 1, 1)).astype(np.float16)
    labels = [{"Smiling": i % 2} for i in range(6)]
    heard = []
    settings = {"epochs": 2, "batch": 3, "lr": 1e-3, "weight_decay": 0.0, "seed": 3}
    a = fit_heads(maps, labels, np.arange(6), **settings, progress=lambda *args: heard.append(args))
    b = fit_heads(maps, labels, np.arange(6), **settings)
    assert heard == [("training", 1, 4), ("training", 2, 4), ("training", 3, 4), ("training", 4, 4)]
    assert torch.equal(a.binary.weight, b.binary.weight)


def test_a_folder_without_a_classifier_is_a_user_error(tmp_path):
    with pytest.raises(FacesmithError, match="no attribute classifier"):
        AttributeClassifier.load(tmp_path)
