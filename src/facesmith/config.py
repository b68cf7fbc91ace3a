"""Configuration dataclasses for facesmith's stages, and their TOML form.

Each stage takes one dataclass whose defaults are the documented behaviour; every output directory gets
the TOML that reproduces it. This module owns `GenerateConfig` (the `facesmith generate` stage) and the
small TOML writer; the stages themselves live in their own modules.
"""

from __future__ import annotations

import dataclasses
import math
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

from facesmith.errors import FacesmithError

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - Python 3.10
    import tomli as tomllib

MAX_STEPS = 1000


class StageConfig:
    """What every stage's settings dataclass shares: a plain dict out, and a dict in that names
    any unknown key (a typo in a TOML file must not be silently ignored)."""

    # A stage with many settings points to its --help instead of listing them all.
    settings_help: ClassVar[str | None] = None

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def save(self, path: str | Path) -> Path:
        """Write the TOML that reproduces this stage's run (every output folder gets one)."""
        return write_toml(self.to_dict(), path)

    @classmethod
    def load(cls, path: str | Path):
        """Read a stage TOML back; an unknown key is named with the file it is in."""
        return cls.from_dict(read_toml(path), origin=str(path))

    @classmethod
    def from_dict(cls, values: dict[str, Any], *, origin: str = "settings"):
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            hint = f"see `{cls.settings_help}`" if cls.settings_help else f"known: {', '.join(sorted(known))}"
            raise FacesmithError(f"{origin}: unknown setting(s) {', '.join(unknown)}; {hint}")
        return cls(**values)


@dataclass
class GenerateConfig(StageConfig):
    """Everything that decides which images `facesmith generate` makes.

    `width`/`height` of None mean the model's native size; `seed` of None means a random seed, which is
    then recorded in every PNG so the image can be made again.
    """

    prompt: str = ""
    negative: str = ""
    steps: int = 50  # as in the latent diffusion paper (Rombach et al. 2022), sampled with DDIM
    cfg: float | None = None  # None: the model's own choice (7.5, or 2 for the default model)
    sampler: str | None = None  # None: the model's own choice (DDIM, or Euler a for the default model)
    seed: int | None = None
    count: int = 1
    batch_size: int = 1  # images per pipeline call; >1 is faster on a GPU, equal to singles within rounding
    width: int | None = None
    height: int | None = None
    model: str | None = None
    loras: list[str] = field(default_factory=list)
    vae: str | None = None  # a diffusers VAE folder to decode with, e.g. TAESD for fast previews
    out_dir: str = "outputs"
    device: str | None = None
    dtype: str | None = None
    engine: str | None = None  # None: "auto" (engines.py): compile on CUDA, ONNX Runtime on a CPU
    trace: bool = False
    trace_frames: int = 8
    allow_pickle: bool = False

    def validate(self) -> GenerateConfig:
        """Raise FacesmithError naming the first setting a person has to fix; return self."""
        from facesmith.models.lora import parse_lora_spec
        from facesmith.samplers import check_sampler

        if not self.prompt.strip() and not self.negative.strip():
            raise FacesmithError("the prompt is empty and there is no negative prompt: give a PROMPT to draw")
        if not isinstance(self.steps, int) or not 1 <= self.steps <= MAX_STEPS:
            raise FacesmithError(
                f"--steps {self.steps} is outside [1, {MAX_STEPS}]: pick a step count in range"
            )
        for name in ("width", "height"):
            value = getattr(self, name)
            if value is not None and (value <= 0 or value % 8):
                raise FacesmithError(
                    f"--{name} {value} is not a positive multiple of 8: the VAE works on 8x8 pixel blocks"
                )
        if self.cfg is not None and (not math.isfinite(self.cfg) or self.cfg < 0):
            raise FacesmithError(f"--cfg {self.cfg} must be a finite number >= 0 (7.5 is typical)")
        if self.count < 1:
            raise FacesmithError(f"-n {self.count}: the image count must be at least 1")
        if not 1 <= self.batch_size <= 64:
            raise FacesmithError(f"--batch-size {self.batch_size} is outside [1, 64]")
        if self.seed is not None and not 0 <= self.seed < 2**63:
            raise FacesmithError(f"--seed {self.seed} must be in [0, 2^63)")
        if self.trace_frames < 2:
            raise FacesmithError(f"trace_frames {self.trace_frames} must be at least 2")
        if self.sampler is not None:
            check_sampler(self.sampler)
        for spec in self.loras:
            parse_lora_spec(spec)
        return self


def write_toml(values: dict[str, Any], path: str | Path) -> Path:
    """Write a flat table of str/int/float/bool/list values as TOML; None values are left out."""
    lines = [f"{key} = {_toml_value(value)}" for key, value in values.items() if value is not None]
    path = Path(path)
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def read_toml(path: str | Path) -> dict[str, Any]:
    path = Path(path)
    try:
        return tomllib.loads(path.read_text(encoding="utf-8"))
    except OSError as err:
        raise FacesmithError(f"cannot read {path}: {err.strerror or err}") from err
    except tomllib.TOMLDecodeError as err:
        raise FacesmithError(f"{path} is not valid TOML: {err}") from err


def save_generate_config(config: GenerateConfig, path: str | Path) -> Path:
    return write_toml(config.to_dict(), path)


def load_generate_config(path: str | Path) -> GenerateConfig:
    return GenerateConfig.from_dict(read_toml(path), origin=str(path))


def _toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)
    if isinstance(value, str):
        escaped = value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n").replace("\t", "\\t")
        return f'"{escaped}"'
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    raise TypeError(f"cannot write {type(value).__name__} as TOML")
