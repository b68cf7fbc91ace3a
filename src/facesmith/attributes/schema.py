"""The face attribute schema: which attributes facesmith knows, and how the source datasets' labels map to them.

Owns the vocabulary every stage shares: the 40 CelebA attributes (`CELEBA_ATTRIBUTES`, CelebA's names and
order), UTKFace's ethnicities (`ETHNICITIES`, its race codes 0-4) and the age groups (`AGE_GROUPS`), and the
parsers of the CelebA and UTKFace labels into attribute dicts. Captions (`data.captions`), the classifier
(`attributes.classifier`), prepare's sources and report, and evaluation all read these names from here.

An attribute dict uses the CelebA names as keys with 0/1 values, plus `age` (years, int) and `ethnicity`
(one of `ETHNICITIES`); gender is CelebA's `Male`. A key that is absent means "unknown", which is not the
same as 0. The classifier predicts `age_group` (one of `AGE_NAMES`) in place of `age`.
"""

from __future__ import annotations

from collections.abc import Mapping

from facesmith.errors import FacesmithError

CELEBA_ATTRIBUTES = [
    "5_o_Clock_Shadow",
    "Arched_Eyebrows",
    "Attractive",
    "Bags_Under_Eyes",
    "Bald",
    "Bangs",
    "Big_Lips",
    "Big_Nose",
    "Black_Hair",
    "Blond_Hair",
    "Blurry",
    "Brown_Hair",
    "Bushy_Eyebrows",
    "Chubby",
    "Double_Chin",
    "Eyeglasses",
    "Goatee",
    "Gray_Hair",
    "Heavy_Makeup",
    "High_Cheekbones",
    "Male",
    "Mouth_Slightly_Open",
    "Mustache",
    "Narrow_Eyes",
    "No_Beard",
    "Oval_Face",
    "Pale_Skin",
    "Pointy_Nose",
    "Receding_Hairline",
    "Rosy_Cheeks",
    "Sideburns",
    "Smiling",
    "Straight_Hair",
    "Wavy_Hair",
    "Wearing_Earrings",
    "Wearing_Hat",
    "Wearing_Lipstick",
    "Wearing_Necklace",
    "Wearing_Necktie",
    "Young",
]

# UTKFace's race codes 0-4, worded as people describe themselves.
ETHNICITIES = ("white", "Black", "East Asian", "South Asian", "other")

# Age groups used for captions and for evaluation; bounds in years, inclusive.
AGE_GROUPS = (
    ("child", 0, 12),
    ("teenager", 13, 19),
    ("young adult", 20, 39),
    ("middle-aged", 40, 59),
    ("senior", 60, 200),
)
AGE_NAMES = tuple(name for name, _, _ in AGE_GROUPS)


def age_group(years: int) -> str:
    """The AGE_GROUPS name that holds ``years``; a FacesmithError for ages no group holds."""
    for name, low, high in AGE_GROUPS:
        if low <= years <= high:
            return name
    # Reachable from user data: UTKFace file names carry up to three digits of age.
    raise FacesmithError(
        f"age {years} is outside 0-200 years: fix the label (UTKFace file names start with the age)"
    )


def celeba_attributes(row: Mapping[str, str | int]) -> dict:
    """CelebA row (0/1 or -1/1 values, original names) -> attribute dict."""
    return {k: int(float(row[k]) > 0) for k in CELEBA_ATTRIBUTES if k in row}


def utkface_attributes(age: int, gender: int, race: int) -> dict:
    """UTKFace labels (gender 0 = male, 1 = female; race 0-4) -> attribute dict.

    Also fills the CelebA attributes that follow from the age, so the two
    sources share keys: ``Young`` (CelebA's sense, under about 35).
    """
    return {
        "age": int(age),
        "Male": int(gender == 0),
        "ethnicity": ETHNICITIES[int(race)],
        "Young": int(age < 35),
    }
