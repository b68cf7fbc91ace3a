from facesmith.evaluate.faithfulness import AUTO_PROMPTS, expectations, faithfulness


def test_prompts_that_rule_out_are_not_read_as_asking():
    assert expectations("a photo of a person without glasses")["Eyeglasses"] == 0
    assert expectations("a photo of a person wearing glasses")["Eyeglasses"] == 1
    assert expectations("a woman with a serious expression, not smiling") == {"Smiling": 0, "Male": 0}
    assert expectations("a clean-shaven man")["No_Beard"] == 1


def test_ethnicity_needs_a_person_so_hair_colour_is_not_read_as_one():
    assert "ethnicity" not in expectations("a man with black hair")
    assert expectations("a photo of a Black woman")["ethnicity"] == "Black"
    assert expectations("a photo of an East Asian person")["ethnicity"] == "East Asian"


def test_every_auto_prompt_checks_something():
    for prompt, _ in AUTO_PROMPTS:
        assert expectations(prompt), prompt


def test_faithfulness_splits_asked_and_ruled_out():
    expected = [{"Smiling": 1}, {"Smiling": 1}, {"Smiling": 0}, {"ethnicity": "Black"}]
    predicted = [{"Smiling": 1}, {"Smiling": 0}, {"Smiling": 0}, {"ethnicity": "white", "Smiling": 1}]
    result = faithfulness(expected, predicted)
    assert result["Smiling"]["asked"] == {"images": 2, "accuracy": 0.5}
    assert result["Smiling"]["ruled_out"] == {"images": 1, "accuracy": 1.0}
    assert result["ethnicity"]["asked"]["accuracy"] == 0.0
