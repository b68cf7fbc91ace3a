"""End-to-end fine-tuning: the network learns what it sees, resumes from its checkpoint, saves small."""

import numpy as np
import pytest
import torch
from PIL import Image

import factory
from facesmith.attributes.classifier import AttributeClassifier, AttributeHeads, AttributeNetwork
from facesmith.attributes.finetune import (
    augment,
    balanced_weights,
    face_arrays,
    fine_tune,
    network_probabilities,
    save_network,
)

SIZE = 32


def faces(count: int, seed: int, size: int = SIZE):
    rng = np.random.default_rng(seed)
    attrs = [{"Eyeglasses": int(rng.integers(2)), "Smiling": int(rng.integers(2))} for _ in range(count)]
    images = [factory.synthetic_face(a, seed=seed * 1000 + i) for i, a in enumerate(attrs)]
    return face_arrays(images, size), attrs


def tiny_network() -> AttributeNetwork:
    torch.manual_seed(0)
    return AttributeNetwork(SIZE, width=0.25, reduced=8, hidden=16)


def test_augment_keeps_shape_and_changes_the_faces():
    pixels, _ = faces(8, seed=1)
    x = augment(pixels, np.random.default_rng(0))
    assert x.shape == (8, 3, SIZE, SIZE) and torch.isfinite(x).all()
    plain = augment(pixels, np.random.default_rng(0))
    assert torch.equal(x, plain)  # seeded
    assert not torch.equal(x, augment(pixels, np.random.default_rng(1)))


def test_balanced_weights_weigh_a_rare_attribute_up():
    attrs = [{"Bald": int(i < 5), "age": 70 if i < 10 else 25} for i in range(100)]
    weights = balanced_weights(attrs)
    from facesmith.attributes.schema import CELEBA_ATTRIBUTES

    assert weights["pos_weight"][CELEBA_ATTRIBUTES.index("Bald")] == pytest.approx(19, abs=0.01)
    age = weights["age"]
    assert age[4] > age[2] > 0 and age[0] == 0  # senior rarer than young adult; no child seen


@pytest.mark.slow
def test_fine_tuned_network_learns_glasses_and_round_trips_through_the_classifier(tmp_path):
    # From the shipped ImageNet weights at 64 px, the last blocks trained (the shipped recipe's `frozen`).
    pixels, attrs = faces(48, seed=2, size=64)
    held_pixels, held_attrs = faces(16, seed=3, size=64)
    heard = []
    network, run = fine_tune(
        pixels, attrs, np.arange(48), minutes=5, epochs=6, batch=16, lr=3e-3, frozen=14,
        network=AttributeNetwork.from_imagenet(64), progress=lambda *a, **f: heard.append(f["step"]),
    )  # fmt: skip
    assert run["steps"] == 18 and heard[-1] == 18
    probs = network_probabilities(network, held_pixels)["binary"][:, 15]  # Eyeglasses
    truth = np.array([a["Eyeglasses"] for a in held_attrs])
    assert ((probs > 0.5) == truth).mean() >= 0.8
    save_network(network, {"size": 64, "fine_tuned": True}, tmp_path / "clf")
    size = (tmp_path / "clf" / "attributes.safetensors").stat().st_size
    assert size < 2 * sum(p.numel() for p in network.state_dict().values()) + 100_000  # fp16
    loaded = AttributeClassifier.load(tmp_path / "clf")
    images = [Image.fromarray(p) for p in held_pixels]
    again = loaded.probabilities(images)["binary"][:, 15]
    np.testing.assert_allclose(again, probs, atol=0.05)  # fp16 weights, the same verdicts
    assert [p["Eyeglasses"] for p in loaded.predict(images)] == [int(p > 0.5) for p in probs]


def test_a_checkpointed_run_resumes_where_it_stopped(tmp_path):
    pixels, attrs = faces(16, seed=4)
    settings = {"minutes": 5, "batch": 8, "seed": 0, "checkpoint": tmp_path / "ck.pt"}
    first, run = fine_tune(pixels, attrs, np.arange(16), epochs=1, network=tiny_network(), **settings)
    assert run["steps"] == 2 and (tmp_path / "ck.pt").is_file()
    again, run = fine_tune(pixels, attrs, np.arange(16), epochs=1, network=tiny_network(), **settings)
    assert run["steps"] == 2  # nothing left to do: the checkpoint's state comes back
    for a, b in zip(first.state_dict().values(), again.state_dict().values(), strict=True):
        assert torch.equal(a, b)
    resumed, run = fine_tune(pixels, attrs, np.arange(16), epochs=2, network=tiny_network(), **settings)
    assert run["steps"] == 4 and run["epochs"] == 2
    assert not torch.equal(resumed.heads.binary.weight, first.heads.binary.weight)


def test_weights_that_do_not_fit_their_json_are_a_user_error(tmp_path):
    from facesmith.errors import FacesmithError

    save_network(tiny_network(), {"size": SIZE}, tmp_path)
    info = (tmp_path / "attributes.json").read_text().replace('"hidden": 16', '"hidden": 32')
    (tmp_path / "attributes.json").write_text(info)
    with pytest.raises(FacesmithError, match="does not fit attributes.json"):
        AttributeClassifier.load(tmp_path)


def test_frozen_statistics_keep_the_backbone_batch_norm_and_train_the_rest():
    pixels, attrs = faces(16, seed=5)
    network = tiny_network()
    before = {k: v.clone() for k, v in network.state_dict().items()}
    network, _ = fine_tune(pixels, attrs, np.arange(16), minutes=5, epochs=1, batch=8, network=network)
    after = network.state_dict()
    running = [k for k in before if k.startswith("features.") and "running_" in k]
    assert running and all(torch.equal(before[k], after[k]) for k in running)  # ImageNet statistics kept
    assert not torch.equal(before["features.18.1.weight"], after["features.18.1.weight"])  # BN scale learns
    assert not torch.equal(before["heads.reduce.1.running_mean"], after["heads.reduce.1.running_mean"])
    loose, _ = fine_tune(
        pixels,
        attrs,
        np.arange(16),
        minutes=5,
        epochs=1,
        batch=8,
        network=tiny_network(),
        frozen_statistics=False,
    )
    assert not torch.equal(before[running[0]], loose.state_dict()[running[0]])


def test_fine_tuning_starts_where_the_frozen_feature_heads_are():
    # Linear probe, then fine-tune: before any step the network predicts what the frozen-feature heads do.
    from facesmith.attributes.backbone import feature_maps

    torch.manual_seed(1)
    heads = AttributeHeads(grid=1, reduced=8, hidden=16)
    frozen = AttributeClassifier(heads, {"size": SIZE})
    pixels, _ = faces(4, seed=6)
    images = [Image.fromarray(p) for p in pixels]
    expected = frozen.probabilities_from_maps(feature_maps(images, size=SIZE))
    network = AttributeNetwork.from_heads(heads, SIZE)
    got = network_probabilities(network, pixels)
    np.testing.assert_allclose(got["binary"], expected["binary"], atol=2e-3)  # feature maps are fp16
    np.testing.assert_allclose(got["age"], expected["age"], atol=2e-3)
