"""Prompt rules and the faithfulness score: what a prompt asks for, and how often the faces show it."""

import pytest

from facesmith.evaluate.faithfulness import AUTO_PROMPTS, expectations, faithfulness

# prompt -> the reading expected: every key listed must have that value; keys mapped to None must be absent.
TABLE = [
    # negation
    ("a man with no beard", {"No_Beard": 1, "Male": 1}),
    ("a man without beard", {"No_Beard": 1}),
    ("a man without a beard", {"No_Beard": 1}),
    ("a clean-shaven man", {"No_Beard": 1}),
    ("a clean shaven man", {"No_Beard": 1}),
    ("a bearded man", {"No_Beard": 0}),
    ("a man with a beard", {"No_Beard": 0}),
    ("a person not wearing glasses", {"Eyeglasses": 0}),
    ("a person without glasses", {"Eyeglasses": 0}),
    ("a woman with no eyeglasses", {"Eyeglasses": 0, "Male": 0}),
    ("a person wearing glasses", {"Eyeglasses": 1}),
    ("a man in sunglasses", {"Eyeglasses": 1}),
    ("a woman without a smile", {"Smiling": 0}),
    ("a person who is not smiling", {"Smiling": 0}),
    ("a non-smiling woman", {"Smiling": 0}),
    ("a woman with a serious expression", {"Smiling": 0}),
    ("a smiling woman", {"Smiling": 1}),
    ("a woman with a big smile", {"Smiling": 1}),
    ("a man who is not bald", {"Bald": 0}),
    ("a bald man", {"Bald": 1}),
    ("a woman without blond hair", {"Blond_Hair": 0, "Black_Hair": None}),
    ("a woman with blonde hair", {"Blond_Hair": 1, "Black_Hair": 0}),
    ("a man with black hair", {"Black_Hair": 1, "ethnicity": None}),
    ("a person without a hat", {"Wearing_Hat": 0}),
    ("a man wearing no hat", {"Wearing_Hat": 0}),
    ("a woman wearing a baseball cap", {"Wearing_Hat": 1}),
    # a negation ends with its clause
    ("a man with a beard and no glasses", {"No_Beard": 0, "Eyeglasses": 0}),
    ("no glasses, smiling", {"Eyeglasses": 0, "Smiling": 1}),
    ("not wearing a hat, but smiling", {"Wearing_Hat": 0, "Smiling": 1}),
    ("a woman with glasses, not smiling", {"Eyeglasses": 1, "Smiling": 0}),
    # numeric ages
    ("a 30-year-old man", {"Young": 1, "age_group": "young adult"}),
    ("a 30 year old woman", {"Young": 1, "age_group": "young adult"}),
    ("a 70-year-old woman", {"Young": 0, "age_group": "senior"}),
    ("a man aged 45", {"Young": 0, "age_group": "middle-aged"}),
    ("a 16-year-old girl", {"Young": 1, "age_group": "teenager", "Male": 0}),
    ("a 6-year-old boy", {"age_group": "child", "Male": 1}),
    ("a woman in her 40s", {"age_group": "middle-aged"}),
    ("a man in his sixties", {"age_group": "senior"}),
    ("a middle-aged man", {"age_group": "middle-aged", "Young": 0}),
    # the photo, not the person
    ("an old photograph of a young woman", {"Young": 1, "age_group": None}),
    ("an old photo of a man", {"Young": None, "age_group": None, "Male": 1}),
    ("an old-fashioned portrait of a woman", {"Young": None, "age_group": None}),
    ("a black and white photo of a man", {"ethnicity": None, "Black_Hair": None, "Male": 1}),
    ("an old man", {"Young": 0, "age_group": "senior"}),
    ("an elderly woman in an old photograph", {"age_group": "senior", "Male": 0}),
    # people
    ("a photo of a Black woman", {"ethnicity": "Black", "Male": 0}),
    ("a photo of an East Asian person", {"ethnicity": "East Asian"}),
    ("a South Asian man", {"ethnicity": "South Asian"}),
    ("a white woman with gray hair", {"ethnicity": "white", "Gray_Hair": 1, "Blond_Hair": 0}),
    ("a man with white hair", {"Gray_Hair": 1, "ethnicity": None}),
    ("a little girl", {"age_group": "child", "Male": 0}),
    ("a teenage boy", {"age_group": "teenager", "Male": 1}),
    ("a young man", {"Young": 1, "Male": 1}),
    ("a person who is not young", {"Young": 0}),
    ("a portrait", {}),
]


@pytest.mark.parametrize(("prompt", "reading"), TABLE)
def test_prompt_reading(prompt, reading):
    found = expectations(prompt)
    for key, value in reading.items():
        if value is None:
            assert key not in found, (prompt, found)
        else:
            assert found.get(key) == value, (prompt, found)
    if not reading:
        assert found == {}, (prompt, found)


def test_the_table_is_large_enough():
    assert len(TABLE) >= 40


def test_every_auto_prompt_checks_something():
    for prompt, _ in AUTO_PROMPTS:
        assert expectations(prompt), prompt


def test_faithfulness_splits_asked_and_ruled_out_with_wilson_intervals():
    expected = [{"Smiling": 1}, {"Smiling": 1}, {"Smiling": 0}, {"ethnicity": "Black"}]
    predicted = [{"Smiling": 1}, {"Smiling": 0}, {"Smiling": 0}, {"ethnicity": "white", "Smiling": 1}]
    result = faithfulness(expected, predicted)
    assert result["Smiling"]["asked"]["images"] == 2 and result["Smiling"]["asked"]["accuracy"] == 0.5
    low, high = result["Smiling"]["asked"]["interval"]
    assert 0.05 < low < 0.5 < high < 0.95  # two images say little
    assert result["Smiling"]["ruled_out"]["images"] == 1 and result["Smiling"]["ruled_out"]["accuracy"] == 1.0
    assert result["Smiling"]["ruled_out"]["interval"][1] == 1.0
    assert result["ethnicity"]["asked"]["accuracy"] == 0.0


def test_captions_written_from_attributes_read_back_as_those_attributes():
    # The serve page's attribute controls and prepare's captions write prompts through
    # data.captions; evaluate must read them back as the attributes they were written from.
    import random

    from facesmith.data.captions import caption_from_attributes

    cases = [
        {"Male": 1, "No_Beard": 0, "age": 70},
        {"Male": 0, "Eyeglasses": 1, "Smiling": 1, "age": 30},
        {"Male": 1, "No_Beard": 1, "Bald": 1, "ethnicity": "Black"},
        {"Male": 0, "Blond_Hair": 1, "Wearing_Hat": 1, "age": 8},
        {"Male": 1, "Gray_Hair": 1, "ethnicity": "East Asian", "age": 45},
    ]
    for attrs in cases:
        for seed in range(10):
            caption = caption_from_attributes(attrs, random.Random(seed))
            found = expectations(caption)
            assert found.get("Male") == attrs["Male"], caption
            for key, value in attrs.items():
                if key in found and key != "age":
                    assert found[key] == value, (caption, key, found)
