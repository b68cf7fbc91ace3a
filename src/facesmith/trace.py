"""What a sampling run looks like from inside: the predicted clean image x0 at every step, and strips.

`TraceRecorder` wraps one scheduler instance's `step` to keep each step's x0 prediction
(`predicted_clean_latents`, DDIM paper eq. 12 and its v-parameterised form) for `generate --trace`;
`image_strip` lays frames side by side, optionally labelled (the trace, and `facesmith noise`'s strips).
Why not a diffusers callback: `callback_on_step_end` sees the latents after the step, not the model
output the x0 estimate needs.
"""

from __future__ import annotations

import contextlib
import functools
import math

import torch
from PIL import Image

LABEL_BAND = 14  # pixels under each frame of a labelled strip: one line of PIL's default font


def image_strip(frames: list[Image.Image], labels: list[str] | None = None) -> Image.Image:
    """Frames side by side; with `labels`, each written in a white band under its frame."""
    from PIL import ImageDraw, ImageFont

    width, height = frames[0].size
    band = LABEL_BAND if labels else 0
    strip = Image.new("RGB", (width * len(frames), height + band), "white")
    draw, font = ImageDraw.Draw(strip), ImageFont.load_default()
    for i, frame in enumerate(frames):
        strip.paste(frame, (i * width, 0))
        if labels:
            draw.text((i * width + 2, height + 1), labels[i], fill="black", font=font)
    return strip


def predicted_clean_latents(
    scheduler, model_output: torch.Tensor, timestep, sample: torch.Tensor
) -> torch.Tensor:
    """x0 predicted at this step, for any of facesmith's schedulers (DDIM paper eq. 12 / v-param).

    Euler-type schedulers keep the sample scaled by sqrt(1 + sigma^2); `scale_model_input` gives back the
    variance-preserving x_t the UNet saw. The noise level comes from sigma where the scheduler keeps one
    (alpha_bar = 1 / (1 + sigma^2)), else from alphas_cumprod at the integer timestep.
    """
    x_t = scheduler.scale_model_input(sample, timestep)
    sigmas, index = getattr(scheduler, "sigmas", None), getattr(scheduler, "step_index", None)
    if sigmas is not None and index is not None:
        sigma = float(sigmas[index])
        alpha_bar = 1.0 / (1.0 + sigma * sigma)
    else:
        alpha_bar = float(scheduler.alphas_cumprod[int(timestep)])
    a, s = math.sqrt(alpha_bar), math.sqrt(1.0 - alpha_bar)
    kind = scheduler.config.prediction_type
    if kind == "v_prediction":
        return a * x_t - s * model_output
    if kind == "sample":
        return model_output
    return (x_t - s * model_output) / a


@contextlib.contextmanager
def detached_after(recorder: TraceRecorder | None):
    try:
        yield
    finally:
        if recorder is not None:
            recorder.detach()


class TraceRecorder:
    """Wraps `scheduler.step` on this one scheduler instance to keep every step's x0 prediction."""

    def __init__(self, scheduler):
        self.scheduler = scheduler
        self.step = scheduler.step
        self.x0: list[torch.Tensor] = []

        # functools.wraps keeps step's signature visible: diffusers passes the seeded `generator` to
        # stochastic samplers (Euler a, LCM) only when the signature shows that parameter.
        @functools.wraps(self.step)
        def recording_step(model_output, timestep, sample, *args, **kwargs):
            x0 = predicted_clean_latents(scheduler, model_output, timestep, sample)
            self.x0.append(x0.detach().clone())
            return self.step(model_output, timestep, sample, *args, **kwargs)

        scheduler.step = recording_step

    def detach(self) -> None:
        del self.scheduler.step  # the instance attribute goes; the class's own step is back

    def pick(self, frames: int) -> list[torch.Tensor]:
        indices = sorted({round(i * (len(self.x0) - 1) / (frames - 1)) for i in range(frames)})
        return [self.x0[i] for i in indices]
