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
    "DPM++ 2M": "DPMSolverMultistepScheduler",
    "DPM++ 2M Karras": "DPMSolverMultistepScheduler",
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
    with pytest.raises(FacesmithError, match='unknown sampler "Heun".*DPM\\+\\+ 2M Karras'):
        check_sampler("Heun")
