"""The attribute schema: age groups, and the CelebA and UTKFace labels as attribute dicts."""

import pytest

from facesmith.attributes.schema import (
    AGE_NAMES,
    CELEBA_ATTRIBUTES,
    age_group,
    celeba_attributes,
    utkface_attributes,
)
from facesmith.errors import FacesmithError


def test_age_groups_cover_0_to_200_and_other_ages_are_a_user_error():
    assert [age_group(a) for a in (0, 12, 13, 39, 40, 60, 200)] == [
        "child", "child", "teenager", "young adult", "middle-aged", "senior", "senior"
    ]  # fmt: skip
    assert AGE_NAMES == ("child", "teenager", "young adult", "middle-aged", "senior")
    with pytest.raises(FacesmithError, match="age 300 is outside 0-200"):
        age_group(300)  # a UTKFace file named 300_0_0_...


def test_celeba_and_utkface_labels_share_keys():
    row = {name: "-1" for name in CELEBA_ATTRIBUTES} | {"Male": "1", "Smiling": "1", "file": "x.jpg"}
    attrs = celeba_attributes(row)
    assert len(attrs) == 40 and attrs["Male"] == 1 and attrs["Smiling"] == 1 and attrs["Bald"] == 0
    assert utkface_attributes(70, 1, 1) == {"age": 70, "Male": 0, "ethnicity": "Black", "Young": 0}
