"""The validation prompt set: scored by evaluate's faithfulness rules, logged beside the loss, resumable."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file

from facesmith.errors import FacesmithError
from facesmith.train.config import TrainConfig
from facesmith.train.launch import TrainingInterrupted
from facesmith.train.trainer import run_train
from facesmith.train.validation_prompts import overall_share

TINY = dict(
    resolution=64, batch_size=2, tensorboard=False, seed=2, mode="lora", lora_rank=2, learning_rate=1e-2
)


def test_the_overall_share_counts_every_check_of_every_attribute():
    table = {
        "Eyeglasses": {"asked": {"images": 2, "accuracy": 0.5}, "ruled_out": {"images": 1, "accuracy": 1.0}},
        "Smiling": {"asked": {"images": 1, "accuracy": 0.0}},
    }
    assert overall_share(table) == pytest.approx(2 / 4)


def test_prompts_are_scored_at_their_steps_into_validation_json_and_resume_bit_for_bit(
    faces, sd15_folder, tiny_classifier, tmp_path, capsys
):
    prompts = tmp_path / "val.txt"
    prompts.write_text("a smiling woman with glasses --s 2\na man without a beard, not smiling --s 2\n")
    settings = dict(TINY, dataset=str(faces), model=str(sd15_folder), max_steps=3, save_every=100,
                    validation_prompts=str(prompts), validation_prompt_every=2,
                    attribute_classifier=str(tiny_classifier))  # fmt: skip
    shown = []

    def progress(stage, done, total, **fields):
        if stage == "validating prompts" and "val_faithfulness" in fields:
            shown.append((fields["step"], fields["val_faithfulness"]))

    straight = run_train(TrainConfig(**settings, output_dir=str(tmp_path / "straight")), progress=progress)
    summary = json.loads((tmp_path / "straight" / "validation.json").read_text())
    assert straight.validation == summary
    scores = {int(k): v for k, v in summary["faithfulness"].items()}
    assert list(scores) == [2, 3] and [s for s, _ in shown] == [2, 3]  # every 2 steps, and the last
    assert all(0 <= v <= 1 for v in scores.values()) and [v for _, v in shown] == list(scores.values())
    detail = summary["faithfulness_detail"]["3"]
    assert {"Eyeglasses", "Smiling", "Male", "No_Beard"} <= set(detail)
    assert detail["Smiling"]["asked"]["images"] == 1 and detail["Smiling"]["ruled_out"]["images"] == 1
    assert overall_share(detail) == scores[3]
    assert summary["validation_prompts"][0] == "a smiling woman with glasses"
    assert "train: step 2: val_faithfulness " in capsys.readouterr().err

    def ctrl_c_after_step_2(stage, done, total, **fields):
        if stage == "training" and done == 2:
            raise KeyboardInterrupt

    halves = tmp_path / "halves"
    with pytest.raises(TrainingInterrupted):
        run_train(TrainConfig(**settings, output_dir=str(halves)), progress=ctrl_c_after_step_2)
    run_train(TrainConfig(**settings, output_dir=str(halves), resume="latest"))
    # Generating the prompt set takes nothing from the training generators: the weights are a straight run's.
    a = load_file(tmp_path / "straight" / "checkpoints" / "step-000003" / "trainable.safetensors")
    b = load_file(halves / "checkpoints" / "step-000003" / "trainable.safetensors")
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert json.loads((halves / "validation.json").read_text())["faithfulness"] == summary["faithfulness"]


def test_prompts_nothing_can_check_and_a_missing_classifier_are_one_line_errors(faces, sd15_folder, tmp_path):
    prompts = tmp_path / "val.txt"
    prompts.write_text("a portrait --s 1\n")
    base = dict(
        TINY, dataset=str(faces), model=str(sd15_folder), max_steps=1, validation_prompts=str(prompts)
    )
    with pytest.raises(FacesmithError, match="none of its prompts asks for an attribute") as got:
        run_train(TrainConfig(**base, output_dir=str(tmp_path / "a"), attribute_classifier=str(tmp_path)))
    prompts.write_text("a smiling face --s 1\n")
    with pytest.raises(FacesmithError, match="holds no attribute classifier"):
        run_train(TrainConfig(**base, output_dir=str(tmp_path / "b"), attribute_classifier=str(tmp_path)))
    assert "\n" not in str(got.value)
    with pytest.raises(FacesmithError, match="validation prompt file .* does not exist"):
        TrainConfig(**dict(base, validation_prompts=str(tmp_path / "none.txt"))).validate()
