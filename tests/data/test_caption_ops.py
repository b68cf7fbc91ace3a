"""Kohya caption operations and user templates."""

from __future__ import annotations

import random

import pytest

from facesmith.data.caption_ops import process_caption
from facesmith.data.captions import attribute_tags, caption_from_template, check_template

CAPTION = "sks woman, smiling, blond hair, earrings, glasses"


def test_dropout_rate_empties_about_that_share():
    rng = random.Random(0)
    dropped = sum(process_caption(CAPTION, rng, dropout_rate=0.3) == "" for _ in range(2000))
    assert 500 < dropped < 700
    assert process_caption(CAPTION, rng, dropout_every_n_epochs=2, epoch=4) == ""
    assert process_caption(CAPTION, rng, dropout_every_n_epochs=2, epoch=3) == CAPTION


def test_shuffle_keeps_first_tokens_and_all_tags():
    rng = random.Random(1)
    seen = set()
    for _ in range(50):
        out = process_caption(CAPTION, rng, shuffle=True, keep_tokens=1)
        tokens = out.split(", ")
        assert tokens[0] == "sks woman" and sorted(tokens) == sorted(CAPTION.split(", "))
        seen.add(out)
    assert len(seen) > 5


def test_keep_tokens_separator_fixes_front_and_back():
    rng = random.Random(2)
    caption = "sks, woman ||| smiling, glasses, hat ||| best quality"
    for _ in range(20):
        tokens = process_caption(caption, rng, shuffle=True, keep_tokens_separator="|||").split(", ")
        assert tokens[:2] == ["sks", "woman"] and tokens[-1] == "best quality"
        assert sorted(tokens[2:-1]) == ["glasses", "hat", "smiling"]


def test_tag_dropout_never_drops_kept_tokens():
    rng = random.Random(3)
    outs = [process_caption(CAPTION, rng, tag_dropout_rate=0.5, keep_tokens=1) for _ in range(200)]
    assert all(o.startswith("sks woman") for o in outs)
    assert 1.5 < sum(len(o.split(", ")) - 1 for o in outs) / 200 < 2.5  # 4 tags, half kept


def test_templates_fill_from_attributes():
    attrs = {"age": 67, "Male": 1, "ethnicity": "Black", "Smiling": 1, "Eyeglasses": 1, "No_Beard": 1}
    text = caption_from_template("photo of a {age} {ethnicity} {gender}, {tags}", attrs, random.Random(0))
    assert text == "photo of a senior Black man, eyeglasses, smiling"
    assert attribute_tags({"Wavy_Hair": 1, "Male": 1, "Bald": 0}) == ["wavy hair"]
    unknown = caption_from_template("a {age} {gender}, {tags}", {}, random.Random(0))
    assert unknown == "a person"
    text = caption_from_template("sks, {caption}", {"Male": 0}, random.Random(0))
    assert text.startswith("sks, ") and ("woman" in text or "lady" in text)


@pytest.mark.parametrize("template", ["{colour} face", "{caption"])
def test_bad_templates_are_named(template):
    assert template in check_template(template)
