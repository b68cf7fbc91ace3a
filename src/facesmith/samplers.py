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
    # Other spellings clients send: A1111's internal names (`k_euler_a`), ComfyUI's (`euler_ancestral`)
    aliases: tuple[str, ...] = ()


KARRAS = (("use_karras_sigmas", True),)
DPMPP = (("algorithm_type", "dpmsolver++"), ("solver_order", 2))
SDE = (("algorithm_type", "sde-dpmsolver++"), ("solver_order", 2))

SAMPLERS: dict[str, Sampler] = {
    s.name: s
    for s in [
        Sampler("DDIM", "DDIMScheduler", (), "deterministic DDIM, eta=0 (Song et al. 2021)", ("ddim",)),
        Sampler(
            "PNDM", "PNDMScheduler", (("skip_prk_steps", True),), "PLMS (Liu et al. 2022)", ("plms", "pndm")
        ),
        Sampler(
            "Euler",
            "EulerDiscreteScheduler",
            (("use_karras_sigmas", False),),
            "Euler, Karras et al. 2022 Alg. 1",
            ("k_euler", "euler"),
        ),
        Sampler(
            "Euler a",
            "EulerAncestralDiscreteScheduler",
            (),
            "Euler ancestral, adds fresh noise every step",
            ("k_euler_a", "k_euler_ancestral", "euler_a", "euler_ancestral"),
        ),
        Sampler("Heun", "HeunDiscreteScheduler", (), "Heun, Karras et al. 2022 Alg. 2", ("k_heun", "heun")),
        Sampler(
            "LMS", "LMSDiscreteScheduler", (), "linear multistep (k-diffusion's sample_lms)", ("k_lms", "lms")
        ),
        Sampler("LMS Karras", "LMSDiscreteScheduler", KARRAS, "LMS on the Karras sigma schedule"),
        Sampler("DPM2", "KDPM2DiscreteScheduler", (), "DPM-Solver-2 (Lu et al. 2022)", ("k_dpm_2", "dpm_2")),
        Sampler("DPM2 Karras", "KDPM2DiscreteScheduler", KARRAS, "DPM2 on the Karras sigma schedule"),
        Sampler(
            "DPM2 a",
            "KDPM2AncestralDiscreteScheduler",
            (),
            "DPM2 ancestral",
            ("k_dpm_2_a", "dpm_2_ancestral"),
        ),
        Sampler(
            "DPM2 a Karras", "KDPM2AncestralDiscreteScheduler", KARRAS, "DPM2 a on the Karras sigma schedule"
        ),
        Sampler(
            "DPM++ 2M",
            "DPMSolverMultistepScheduler",
            (*DPMPP, ("use_karras_sigmas", False)),
            "DPM-Solver++(2M) (Lu et al. 2022)",
            ("k_dpmpp_2m", "dpmpp_2m"),
        ),
        Sampler(
            "DPM++ 2M Karras",
            "DPMSolverMultistepScheduler",
            (*DPMPP, *KARRAS),
            "DPM-Solver++(2M) on the Karras et al. 2022 sigma schedule",
            ("k_dpmpp_2m_ka",),
        ),
        Sampler(
            "DPM++ 2M SDE",
            "DPMSolverMultistepScheduler",
            (*SDE, ("use_karras_sigmas", False)),
            "SDE-DPM-Solver++(2M), fresh noise every step",
            ("k_dpmpp_2m_sde", "dpmpp_2m_sde"),
        ),
        Sampler(
            "DPM++ 2M SDE Karras",
            "DPMSolverMultistepScheduler",
            (*SDE, *KARRAS),
            "DPM++ 2M SDE on the Karras sigma schedule",
            ("k_dpmpp_2m_sde_ka",),
        ),
        # diffusers' table maps A1111's DPM++ SDE to its single-step solver; its DPMSolverSDEScheduler,
        # the literal port, needs torchsde, which facesmith does not install.
        Sampler(
            "DPM++ SDE",
            "DPMSolverSinglestepScheduler",
            (("use_karras_sigmas", False),),
            "DPM-Solver++ single-step, diffusers' equivalent of A1111's DPM++ SDE",
            ("k_dpmpp_sde", "dpmpp_sde"),
        ),
        Sampler(
            "DPM++ SDE Karras",
            "DPMSolverSinglestepScheduler",
            KARRAS,
            "DPM++ SDE on the Karras sigma schedule",
            ("k_dpmpp_sde_ka",),
        ),
        Sampler(
            "UniPC",
            "UniPCMultistepScheduler",
            (),
            "UniPC predictor-corrector (Zhao et al. 2023)",
            ("uni_pc", "unipc"),
        ),
        Sampler(
            "LCM",
            "LCMScheduler",
            (),
            "latent consistency sampling; needs an LCM model or LoRA, cfg 1-2",
            ("k_lcm", "lcm"),
        ),
    ]
}
# A1111 1.9+ sends the noise schedule apart (`scheduler: "Karras"`); these are the names it combines to.
SCHEDULES = ("automatic", "uniform", "karras")


def sampler_names() -> list[str]:
    return list(SAMPLERS)


def check_sampler(name: str, schedule: str | None = None) -> Sampler:
    """The sampler called `name` (A1111 name or alias, case-insensitive), in its Karras form when
    `schedule` is "karras"; FacesmithError listing the choices otherwise."""
    wanted = name.strip().lower()
    found = next((s for s in SAMPLERS.values() if wanted in (s.name.lower(), *s.aliases)), None)
    if found is None:
        choices = ", ".join(f'"{n}"' for n in SAMPLERS)
        raise FacesmithError(f'unknown sampler "{name}": choose one of {choices} (see `facesmith samplers`)')
    schedule = (schedule or "automatic").strip().lower()
    if schedule not in SCHEDULES:
        raise FacesmithError(f'unknown scheduler "{schedule}": choose one of {", ".join(SCHEDULES)}')
    if schedule == "karras" and not found.name.endswith("Karras"):
        karras = SAMPLERS.get(f"{found.name} Karras")
        if karras is None:
            raise FacesmithError(f'sampler "{found.name}" has no Karras form: use scheduler automatic')
        return karras
    return found


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
