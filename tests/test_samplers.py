"""Every A1111 sampler name maps to its diffusers scheduler and makes an image."""

from __future__ import annotations

import numpy as np
import pytest

from facesmith.errors import FacesmithError
from facesmith.models.single_file import shipped_config
from facesmith.samplers import SAMPLERS, check_sampler, make_scheduler
from factory import FAST

EXPECTED = {
    "DDIM": "DDIMScheduler",
    "PNDM": "PNDMScheduler",
    "Euler": "EulerDiscreteScheduler",
    "Euler a": "EulerAncestralDiscreteScheduler",
    "Heun": "HeunDiscreteScheduler",
    "LMS": "LMSDiscreteScheduler",
    "LMS Karras": "LMSDiscreteScheduler",
    "DPM2": "KDPM2DiscreteScheduler",
    "DPM2 Karras": "KDPM2DiscreteScheduler",
    "DPM2 a": "KDPM2AncestralDiscreteScheduler",
    "DPM2 a Karras": "KDPM2AncestralDiscreteScheduler",
    "DPM++ 2M": "DPMSolverMultistepScheduler",
    "DPM++ 2M Karras": "DPMSolverMultistepScheduler",
    "DPM++ 2M SDE": "DPMSolverMultistepScheduler",
    "DPM++ 2M SDE Karras": "DPMSolverMultistepScheduler",
    "DPM++ SDE": "DPMSolverSinglestepScheduler",
    "DPM++ SDE Karras": "DPMSolverSinglestepScheduler",
    "UniPC": "UniPCMultistepScheduler",
    "LCM": "LCMScheduler",
}


def test_the_issue_sampler_names_are_all_there():
    assert list(SAMPLERS) == list(EXPECTED)


@pytest.mark.parametrize("name", list(EXPECTED))
def test_sampler_builds_its_scheduler_and_keeps_the_model_schedule(name):
    base = shipped_config("sd2", "scheduler") | {"prediction_type": "v_prediction"}
    scheduler = make_scheduler(name, base)
    assert type(scheduler).__name__ == EXPECTED[name]
    assert scheduler.config.prediction_type == "v_prediction"
    assert scheduler.config.beta_schedule == "scaled_linear"


def test_karras_is_the_only_difference_between_the_dpm_variants():
    base = shipped_config("sd1", "scheduler")
    assert make_scheduler("DPM++ 2M Karras", base).config.use_karras_sigmas is True
    assert make_scheduler("DPM++ 2M", base).config.use_karras_sigmas is False


@pytest.mark.parametrize("name", list(EXPECTED))
def test_every_sampler_makes_a_finite_image(sd15, name):
    image = sd15.generate("a face", sampler=name, seed=0, cfg=1.5 if name == "LCM" else 7.5, **FAST)[0]
    array = np.asarray(image)
    assert array.shape == (64, 64, 3) and array.std() > 0


def test_sampler_names_are_case_insensitive_and_unknown_ones_list_the_choices():
    assert check_sampler("euler A").name == "Euler a"
    with pytest.raises(FacesmithError, match=r"unknown sampler \"Heun\+\+ 9000\".*DPM\+\+ 2M Karras"):
        check_sampler("Heun++ 9000")


@pytest.mark.parametrize(
    ("sent", "schedule", "expected"),
    [
        ("k_euler_a", None, "Euler a"),
        ("euler_a", None, "Euler a"),
        ("EULER A", None, "Euler a"),
        ("dpmpp_2m", "karras", "DPM++ 2M Karras"),
        ("DPM++ 2M", "Karras", "DPM++ 2M Karras"),
        ("DPM++ 2M Karras", None, "DPM++ 2M Karras"),
        ("k_dpmpp_2m_sde", None, "DPM++ 2M SDE"),
        ("plms", None, "PNDM"),
        ("k_lms", "karras", "LMS Karras"),
    ],
)
def test_a1111_and_comfyui_aliases_and_the_karras_schedule_name_the_same_sampler(sent, schedule, expected):
    assert check_sampler(sent, schedule).name == expected


def test_a_sampler_without_a_karras_form_says_so():
    with pytest.raises(FacesmithError, match="no Karras form"):
        check_sampler("DDIM", "karras")
    with pytest.raises(FacesmithError, match="unknown scheduler"):
        check_sampler("Euler", "wobbly")


@pytest.mark.parametrize("name", ["DPM++ 2M SDE", "DPM2 a"])
def test_samplers_that_add_noise_each_step_draw_it_from_the_seed(sd15, name):
    make = lambda seed: np.asarray(sd15.generate("a face", sampler=name, seed=seed, **FAST)[0])  # noqa: E731
    assert np.array_equal(make(3), make(3))
    assert not np.array_equal(make(3), make(4))
