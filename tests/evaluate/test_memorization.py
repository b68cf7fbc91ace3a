import random

import numpy as np
import pytest
from PIL import Image

import factory
from facesmith.evaluate import identity
from facesmith.evaluate.features import extract_features
from facesmith.evaluate.memorization import (
    Thresholds,
    audit,
    calibrate,
    closest_pairs,
    joint_thresholds,
    light_edit,
    pixel_vectors,
    separating_threshold,
    split_thresholds,
)


def features(images):
    return extract_features(images, size=64)


def smooth_images(count: int, seed: int, side: int = 64) -> list[Image.Image]:
    """Distinct photo-like images: random low-frequency colour fields."""
    rng = np.random.default_rng(seed)
    return [
        Image.fromarray(rng.integers(0, 256, (5, 5, 3), dtype=np.uint8)).resize((side, side), Image.BICUBIC)
        for _ in range(count)
    ]


def _planted_audit(train, distinct):
    planted = [train[3], light_edit(train[7], random.Random(0))]
    generated = planted + distinct
    train_features = features(train)
    thresholds = calibrate(train, train_features, features, count=len(train), seed=0)
    result = audit(generated, features(generated), pixel_vectors(train), train_features, thresholds)
    return generated, thresholds, result


def test_audit_flags_a_planted_copy_and_an_edited_copy_and_passes_distinct_images():
    train, distinct = smooth_images(40, seed=0), smooth_images(6, seed=1)
    generated, thresholds, result = _planted_audit(train, distinct)
    assert result.copies[:2].all()
    assert result.feature_index[0] == 3 and result.feature_index[1] == 7
    assert not result.copies[2:].any()
    assert result.copy_share == 2 / len(generated)
    assert thresholds.distinct_flagged <= 0.01 and thresholds.copies_caught > 0.9
    sheet = closest_pairs(generated, train, result, count=4, side=32)
    assert sheet.size == (4 * 32, 2 * 32 + 14)
    np.testing.assert_array_equal(
        np.asarray(sheet)[:32, :32], np.asarray(sheet)[32:64, :32]
    )  # exact copy first


def test_threshold_allows_one_percent_false_flags_at_most():
    distinct = np.linspace(1, 2, 300)
    assert separating_threshold(np.array([0.1, 0.2]), distinct) == pytest.approx((0.2 + 1.01) / 2, abs=0.01)
    overlapping = separating_threshold(np.array([0.5, 1.5]), distinct)
    assert (distinct <= overlapping).mean() <= 0.01


def test_both_spaces_together_flag_at_most_one_percent():
    # Issue 13: each space at 5 % on its own flagged 10-16 % of distinct faces in all.
    rng = np.random.default_rng(0)
    distinct_f, distinct_p = rng.uniform(0.2, 1, 1000), rng.uniform(0.05, 0.3, 1000)
    copy_f, copy_p = rng.uniform(0, 0.25, 50), rng.uniform(0, 0.08, 50)
    feature, pixel = joint_thresholds([copy_f, copy_p], [distinct_f, distinct_p], budget=0.01)
    assert ((distinct_f <= feature) | (distinct_p <= pixel)).mean() <= 0.01
    caught = ((copy_f <= feature) | (copy_p <= pixel)).mean()
    alone = (copy_f <= separating_threshold(copy_f, distinct_f, 0.01)).mean()
    assert caught >= alone  # the pixel space adds catches within the same budget


def outside_vectors(images, embed, with_identity=False) -> dict:
    """The `outside` faces of `calibrate`: training faces the reference does not hold."""
    found = {"feature": embed(images), "pixel": pixel_vectors(images)}
    return found | ({"identity": ids(images)} if with_identity else {})


def test_split_thresholds_bound_new_faces_at_the_budget_where_full_sample_thresholds_do_not():
    # Issue 13 item 4: thresholds fitted to all distinct faces sit just under one of them in every space
    # and flagged new faces at 2.4 % for a 1 % budget; the split-conformal scale keeps the mean <= 1 %.
    rng = np.random.default_rng(0)
    full, split = [], []
    for _ in range(200):
        distinct = [rng.gamma(8, 0.05, 300), rng.gamma(8, 0.02, 300), rng.gamma(8, 0.08, 300)]
        new = [rng.gamma(8, 0.05, 2000), rng.gamma(8, 0.02, 2000), rng.gamma(8, 0.08, 2000)]
        copies = [rng.uniform(0, 0.3, 40), rng.uniform(0, 0.12, 40), rng.uniform(0, 0.5, 40)]
        for out, found in (
            (full, joint_thresholds(copies, distinct)),
            (split, split_thresholds(copies, distinct)[0]),
        ):
            out.append(np.any([d <= t for d, t in zip(new, found, strict=True)], axis=0).mean())
    assert split_thresholds(copies, distinct)[1] == pytest.approx(1 / 151)  # k = 0 of 150 scaling faces
    assert np.mean(split) <= 0.01 < 0.02 < np.mean(full)  # measured: 0.66 % (the bound) and 2.3 %


def test_planted_copies_in_a_generated_folder_are_all_flagged_and_distinct_faces_pass():
    # Issue 13 item 7: crops, zoom-outs, downscales, JPEG - every planted copy flagged; <= 1 % of the rest.
    train, distinct = smooth_images(150, seed=10), smooth_images(100, seed=11)
    rng = random.Random(1)
    planted = [light_edit(train[i], rng) for i in range(0, 150, 15)]
    generated = planted + distinct
    train_features = features(train)
    outside = outside_vectors(smooth_images(200, seed=12), features)
    thresholds = calibrate(train, train_features, features, count=40, seed=0, outside=outside)
    assert thresholds.distinct_source == "outside" and thresholds.expected_flagged == pytest.approx(1 / 101)
    result = audit(generated, features(generated), pixel_vectors(train), train_features, thresholds)
    assert result.copies[: len(planted)].all()
    originals = range(0, 150, 15)
    assert all(
        i in (f, p) for i, f, p in zip(originals, result.feature_index, result.pixel_index, strict=False)
    )
    assert result.copies[len(planted) :].mean() <= 0.01
    assert thresholds.distinct_flagged <= 0.01 and thresholds.distinct == 200


@pytest.mark.skipif(
    factory.shared_data_dir() is None or not (factory.shared_data_dir() / "celeba").is_dir(),
    reason="shared CelebA data is absent",
)
def test_on_real_faces_copies_are_flagged_and_other_people_pass():
    files = sorted((factory.shared_data_dir() / "celeba" / "images").iterdir())[:46]
    faces = [Image.open(p).convert("RGB").resize((64, 64)) for p in files]
    _, _, result = _planted_audit(faces[:40], faces[40:])
    assert result.copies[:2].all()
    assert result.copies[2:].mean() <= 1 / 6


def test_three_spaces_together_flag_at_most_one_percent_and_catch_what_only_identity_sees():
    rng = np.random.default_rng(1)
    distinct = [rng.uniform(0.2, 1, 1000), rng.uniform(0.05, 0.3, 1000), rng.uniform(0.45, 1.2, 1000)]
    # Half the copies are far in feature and pixel space (zoom-outs) but near in identity space.
    copies = [
        np.r_[rng.uniform(0, 0.2, 25), rng.uniform(0.3, 0.9, 25)],
        np.r_[rng.uniform(0, 0.05, 25), rng.uniform(0.1, 0.3, 25)],
        rng.uniform(0.05, 0.35, 50),
    ]
    three = joint_thresholds(copies, distinct, budget=0.01)
    assert np.any([d <= t for d, t in zip(distinct, three, strict=True)], axis=0).mean() <= 0.01
    caught = np.any([c <= t for c, t in zip(copies, three, strict=True)], axis=0).mean()
    two = joint_thresholds(copies[:2], distinct[:2], budget=0.01)
    assert caught == 1.0 > np.any([c <= t for c, t in zip(copies, two, strict=False)], axis=0).mean()


needs_identity = pytest.mark.skipif(not identity.available(), reason=identity.NOT_INSTALLED)
needs_celeba = pytest.mark.skipif(
    factory.shared_data_dir() is None or not (factory.shared_data_dir() / "celeba").is_dir(),
    reason="shared CelebA data is absent",
)


def ids(images):
    return identity.identity_vectors(images)[0]


@needs_identity
def test_the_identity_space_is_calibrated_and_audited_with_the_other_two():
    train, distinct = smooth_images(16, seed=0), smooth_images(3, seed=1)
    generated = [train[3], *distinct]
    train_features, train_ids = features(train), ids(train)
    thresholds = calibrate(train, train_features, features, count=6, seed=0, identity=ids,
                           train_identity=train_ids)  # fmt: skip
    assert thresholds.identity is not None and set(thresholds.spaces) == {"feature", "pixel", "identity"}
    assert thresholds.same_person is not None and thresholds.distinct_flagged == 0  # 1 % of 16: none
    result = audit(generated, features(generated), pixel_vectors(train), train_features, thresholds,
                   image_identity=ids(generated), train_identity=train_ids)  # fmt: skip
    assert result.identity_index[0] == 3 and result.identity_distance[0] < 1e-3
    assert result.spaces_flagging(0) == ["feature", "pixel", "identity"] and result.copies[0]


def _three_space_audit(train, generated, embed, outside):
    """Calibrate on `train` in all three spaces (40 edited copies, `outside` as the distinct faces), then
    audit `generated` against it."""
    train_features, train_ids = embed(train), ids(train)
    thresholds = calibrate(train, train_features, embed, count=40, seed=0, identity=ids,
                           train_identity=train_ids, outside=outside_vectors(outside, embed, True))  # fmt: skip
    result = audit(generated, embed(generated), pixel_vectors(train), train_features, thresholds,
                   image_identity=ids(generated), train_identity=train_ids)  # fmt: skip
    return thresholds, result


@pytest.mark.slow
@needs_identity
def test_planted_copies_in_a_generated_folder_are_all_flagged_in_three_spaces_and_distinct_images_pass():
    # Issue 13 item 4: the planted-copy test of item 7 with the identity space calibrated in.
    train, distinct = smooth_images(150, seed=10), smooth_images(100, seed=11)
    rng = random.Random(1)
    planted = [light_edit(train[i], rng) for i in range(0, 150, 15)]
    thresholds, result = _three_space_audit(train, planted + distinct, features, smooth_images(200, seed=12))
    assert result.copies[: len(planted)].all()
    assert thresholds.distinct_flagged <= 0.01 and set(thresholds.spaces) == {"feature", "pixel", "identity"}
    assert result.copies[len(planted) :].mean() <= 0.01


@pytest.mark.slow
@needs_identity
@needs_celeba
def test_planted_copies_of_real_faces_are_all_flagged_in_three_spaces():
    # Zoom-outs and downscales were what feature + pixel space missed (benchmarks/memorization_identity.py).
    files = sorted((factory.shared_data_dir() / "celeba" / "images").iterdir())
    faces = [Image.open(p).convert("RGB") for p in files[:450]]
    train, distinct, outside = faces[:150], faces[150:250], faces[250:]
    rng = random.Random(1)
    kinds = [("zoom", True), ("zoom", False), ("crop", True), (None, None)]
    planted = [light_edit(train[i], rng, *kinds[k % 4]) for k, i in enumerate(range(0, 150, 10))]

    def features224(images):  # evaluate's size: at 64 px feature space alone flags 4 of these new faces
        return extract_features(images, size=224)

    thresholds, result = _three_space_audit(train, planted + distinct, features224, outside)
    assert result.copies[: len(planted)].all()
    assert thresholds.distinct_flagged <= 0.01
    assert result.copies[len(planted) :].mean() <= 0.01


def test_identity_space_flags_only_images_where_a_face_was_found():
    # A descriptor of a face-less image (the noise baseline's) describes no person: it must not flag.
    train = smooth_images(6, seed=20)
    generated = [train[0], train[1]]
    thresholds = Thresholds(feature=-1.0, pixel=-1.0, copies=0, copies_caught=0, distinct_flagged=0,
                            identity=0.3)  # fmt: skip
    train_ids = np.eye(6, 128, dtype=np.float32)
    near = train_ids[:2] + 0.01  # both within the identity threshold of train faces 0 and 1
    found = audit(generated, features(generated), pixel_vectors(train), features(train), thresholds,
                  image_identity=near, train_identity=train_ids, face_found=np.array([True, False]))  # fmt: skip
    assert found.copies.tolist() == [True, False]
    assert found.identity_index.tolist() == [0, 1]  # the nearest face is still listed for both
