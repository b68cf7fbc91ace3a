"""The forward process behind `facesmith noise` (its CLI test is in test_cli.py)."""

from __future__ import annotations

import numpy as np
from PIL import Image

from facesmith.noise import forward_process, forward_timesteps


def pixels(image):
    return np.asarray(image, dtype=np.float32)


def test_forward_process_goes_from_image_to_noise(sd15):
    gradient = np.tile(np.linspace(0, 255, 64, dtype=np.uint8), (64, 1))
    image = Image.fromarray(np.stack([gradient, gradient.T, 255 - gradient], axis=-1))
    frames = forward_process(sd15, image, slices=4, seed=0)
    assert len(frames) == 5 and all(f.size == (64, 64) for f in frames)
    distance = [np.abs(pixels(f) - pixels(frames[0])).mean() for f in frames]
    assert distance[0] == 0 and distance[-1] > distance[1] > 0


def test_forward_timesteps_start_clean_and_end_at_the_last_step():
    assert forward_timesteps(4, 1000) == [0, 250, 500, 749, 999]
