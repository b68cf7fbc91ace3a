"""AUTOMATIC1111 sampler names and the diffusers schedulers that implement them.

A sampler here is a scheduler class plus keyword arguments, built from the model's own scheduler config so
that its noise schedule and prediction type (epsilon or v) carry over. The table follows the mapping that
the diffusers documentation gives for A1111 names ("Schedulers" overview, A1111/k-diffusion equivalents).
Sampling itself stays in the diffusers pipeline; this module only chooses the scheduler.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from facesmith.errors import FacesmithError


@dataclass(frozen=True)
class Sampler:
    name: str  # the AUTOMATIC1111 name, as written in PNG metadata
    scheduler: str  # diffusers scheduler class name
    kwargs: tuple[tuple[str, Any], ...]
    note: str


SAMPLERS: dict[str, Sampler] = {
    s.name: s
    for s in [
        Sampler("DDIM", "DDIMScheduler", (), "deterministic DDIM, eta=0 (Song et al. 2021)"),
        Sampler("PNDM", "PNDMScheduler", (("skip_prk_steps", True),), "PLMS (Liu et al. 2022)"),
        Sampler(
            "Euler",
            "EulerDiscreteScheduler",
            (("use_karras_sigmas", False),),
            "Euler, Karras et al. 2022 Alg. 1",
        ),
        Sampler(
            "Euler a", "EulerAncestralDiscreteScheduler", (), "Euler ancestral, adds fresh noise every step"
        ),
        Sampler(
            "DPM++ 2M",
            "DPMSolverMultistepScheduler",
            (("algorithm_type", "dpmsolver++"), ("solver_order", 2), ("use_karras_sigmas", False)),
            "DPM-Solver++(2M) (Lu et al. 2022)",
        ),
        Sampler(
            "DPM++ 2M Karras",
            "DPMSolverMultistepScheduler",
            (("algorithm_type", "dpmsolver++"), ("solver_order", 2), ("use_karras_sigmas", True)),
            "DPM-Solver++(2M) on the Karras et al. 2022 sigma schedule",
        ),
        Sampler("UniPC", "UniPCMultistepScheduler", (), "UniPC predictor-corrector (Zhao et al. 2023)"),
        Sampler(
            "LCM", "LCMScheduler", (), "latent consistency sampling; needs an LCM model or LoRA, cfg 1-2"
        ),
    ]
}


def sampler_names() -> list[str]:
    return list(SAMPLERS)


def check_sampler(name: str) -> Sampler:
    """Return the sampler called `name` (case-insensitive), or raise FacesmithError listing the choices."""
    for sampler in SAMPLERS.values():
        if sampler.name.lower() == name.strip().lower():
            return sampler
    choices = ", ".join(f'"{n}"' for n in SAMPLERS)
    raise FacesmithError(f'unknown sampler "{name}": choose one of {choices} (see `facesmith samplers`)')


def make_scheduler(name: str, base_config: dict[str, Any]):
    """Build the scheduler for sampler `name` from a model's scheduler config.

    The base config carries the training noise schedule (betas, timestep count, prediction type); the
    sampler's own kwargs override it, e.g. "DPM++ 2M Karras" -> DPMSolverMultistepScheduler with
    use_karras_sigmas=True.
    """
    import diffusers

    sampler = check_sampler(name)
    cls = getattr(diffusers, sampler.scheduler)
    config = {k: v for k, v in dict(base_config).items() if not k.startswith("_")}
    # DDIM and LCM clip x0 to [-1, 1] by default, which is meant for pixel space, not latents.
    config.setdefault("clip_sample", False)
    config.update(dict(sampler.kwargs))
    return cls.from_config(config)
