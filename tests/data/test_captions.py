"""`caption_from_attributes`, the paper's method: each CelebA attribute is written when present and never
when absent; unknown attributes are never written."""

import random
import re

import pytest

from facesmith.attributes.schema import CELEBA_ATTRIBUTES
from facesmith.data.captions import caption_from_attributes

DRAWS = 200  # captions per attribute set, seeds 0..199 (mentions are random by design)

# attribute -> (phrases of which one is written when it is 1, phrases never written when it is 0)
PHRASES = {
    "5_o_Clock_Shadow": ("stubble", "five o'clock shadow"),
    "Arched_Eyebrows": ("arched eyebrows",),
    "Attractive": ("attractive", "good-looking"),
    "Bags_Under_Eyes": ("bags under the eyes",),
    "Bald": ("bald head", "shaved head", "no hair"),
    "Bangs": ("bangs", "a fringe"),
    "Big_Lips": ("full lips", "big lips"),
    "Big_Nose": ("big nose", "large nose"),
    "Black_Hair": ("black hair", "dark hair"),
    "Blond_Hair": ("blond hair", "blonde hair", "golden hair"),
    "Blurry": ("blurry photo",),
    "Brown_Hair": ("brown hair", "brunette hair"),
    "Bushy_Eyebrows": ("bushy eyebrows", "thick eyebrows"),
    "Chubby": ("chubby", "heavyset"),
    "Double_Chin": ("double chin",),
    "Eyeglasses": ("glasses", "eyeglasses", "spectacles"),
    "Goatee": ("goatee",),
    "Gray_Hair": ("gray hair", "grey hair", "silver hair", "white hair"),
    "Heavy_Makeup": ("heavy makeup", "a lot of makeup"),
    "High_Cheekbones": ("high cheekbones",),
    "Male": ("man", "guy", "gentleman"),
    "Mouth_Slightly_Open": ("slightly open mouth",),
    "Mustache": ("mustache", "moustache"),
    "Narrow_Eyes": ("narrow eyes",),
    "No_Beard": ("beard", "full beard"),  # written when No_Beard is 0: see the No_Beard test below
    "Oval_Face": ("oval face",),
    "Pale_Skin": ("pale skin", "fair skin"),
    "Pointy_Nose": ("pointy nose",),
    "Receding_Hairline": ("receding hairline",),
    "Rosy_Cheeks": ("rosy cheeks",),
    "Sideburns": ("sideburns",),
    "Smiling": ("smiling", "happy", "cheerful", "smile"),
    "Straight_Hair": ("straight hair",),
    "Wavy_Hair": ("wavy hair", "curly hair"),
    "Wearing_Earrings": ("earrings",),
    "Wearing_Hat": ("a hat", "a cap"),
    "Wearing_Lipstick": ("lipstick",),
    "Wearing_Necklace": ("necklace",),
    "Wearing_Necktie": ("a tie", "necktie"),
    "Young": ("young", "youthful"),
}
# What the negative value itself says, where it says something.
WHEN_OFF = {
    "Male": ("woman", "lady"),
    "Smiling": ("neutral expression", "serious expression"),
    "Young": ("middle-aged", "older", "mature"),
}


def captions(attrs: dict) -> list[str]:
    return [caption_from_attributes(attrs, random.Random(seed)) for seed in range(DRAWS)]


def share(texts: list[str], phrases: tuple[str, ...]) -> float:
    pattern = re.compile(r"\b(" + "|".join(map(re.escape, phrases)) + r")\b")
    return sum(bool(pattern.search(t)) for t in texts) / len(texts)


def test_the_table_covers_every_celeba_attribute():
    assert sorted(PHRASES) == sorted(CELEBA_ATTRIBUTES)


@pytest.mark.parametrize("name", [n for n in CELEBA_ATTRIBUTES if n != "No_Beard"])
def test_an_attribute_is_written_when_present_and_never_when_absent(name):
    assert share(captions({name: 1}), PHRASES[name]) >= 0.2, name
    absent = captions({name: 0})
    assert share(absent, PHRASES[name]) == 0, name
    if name in WHEN_OFF:
        assert share(absent, WHEN_OFF[name]) >= 0.2, name


def test_no_beard_both_ways_round():
    bearded = captions({"No_Beard": 0, "Male": 1})  # CelebA's No_Beard = 0 means a beard
    assert share(bearded, ("beard", "full beard")) >= 0.8
    assert share(bearded, ("clean-shaven",)) == 0
    shaven = captions({"No_Beard": 1, "Male": 1})
    assert share(shaven, ("beard",)) == 0
    assert share(shaven, ("clean-shaven",)) >= 0.15


def test_unknown_attributes_are_never_written():
    texts = captions({})
    every_phrase = tuple(p for phrases in [*PHRASES.values(), *WHEN_OFF.values()] for p in phrases)
    assert share(texts, every_phrase) == 0
    assert all(re.search(r"\bperson\b", t) for t in texts)


def test_a_full_attribute_set_reads_as_one_sentence():
    attrs = {name: 0 for name in CELEBA_ATTRIBUTES} | {"Male": 0, "Smiling": 1, "Wearing_Earrings": 1}
    attrs |= {"Blond_Hair": 1, "Wavy_Hair": 1, "No_Beard": 1}  # every 0 but No_Beard: 0 there is a beard
    for text in captions(attrs):
        assert re.search(r"\b(woman|lady)\b", text) and not re.search(r"\b(man|beard)\b", text)
        assert "  " not in text and not text.endswith((",", " "))
        if "wearing" in text:
            assert text.count("wearing") == 1 and "earrings" in text.split("wearing")[1]
