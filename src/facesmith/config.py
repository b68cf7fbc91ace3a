"""Configuration dataclasses for facesmith's stages, and their TOML form.

Each stage takes one dataclass whose defaults are the documented behaviour; every output directory gets
the TOML that reproduces it. This module owns `StageConfig` (what every stage's dataclass shares: the
TOML form, unknown-key checks, `--key value` flags read by field type), `GenerateConfig` (`facesmith
generate`), `NoiseConfig` (`facesmith noise`) and the small TOML writer; `--key value` flags are
`flags.py`'s, and the stages themselves live in their own modules.
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
# A1111's img2img resize modes (0, 1, 2) and masked-content choices ("fill", "original", "latent noise").
RESIZE_MODES = ("just resize", "crop and resize", "resize and fill")
MASKED_CONTENT = ("original", "latent noise", "fill")


def in_memory(label: str) -> str:
    """The `init_image` label of a picture given in memory (img2img.StartPicture: an API request's, the
    page's upload, edit's aligned crop): in angle brackets, so `validate` does not look for it on disk."""
    return f"<{label}>"


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
        types = {f.name: str(f.type) for f in dataclasses.fields(cls)}
        for key, value in values.items():
            check_type(key, value, types[key], origin)
        return cls(**values)


def check_type(key: str, value: Any, annotation: str, origin: str = "settings") -> None:
    """FacesmithError naming `key`, `value` and the type when `value` is not of the field's `annotation`.

    TOML has its own types, and a dataclass takes whatever it is given: `flip = "no"` was a true string,
    `batch_size = 4.5` reached the data loader. Annotations are read as written (`int | None`,
    `list[str]`); one this does not know (a class of the stage's own) is left to the stage.
    """
    if not _matches(value, annotation):
        raise FacesmithError(
            f"{origin}: {key} = {_shown(value)} is not of type {annotation}: write {_described(annotation)}"
        )


_KINDS = {
    "bool": (lambda v: isinstance(v, bool), "true or false"),
    "int": (lambda v: isinstance(v, int) and not isinstance(v, bool), "a whole number"),
    "float": (lambda v: isinstance(v, (int, float)) and not isinstance(v, bool), "a number"),
    "str": (lambda v: isinstance(v, str), "a quoted string"),
    "Path": (lambda v: isinstance(v, (str, Path)), "a quoted path"),
    "None": (lambda v: v is None, "none"),
}


def _alternatives(annotation: str) -> list[str]:
    parts, depth, start = [], 0, 0
    for i, char in enumerate(annotation):
        depth += char == "["
        depth -= char == "]"
        if char == "|" and depth == 0:
            parts.append(annotation[start:i].strip())
            start = i + 1
    return [*parts, annotation[start:].strip()]


def _matches(value: Any, annotation: str) -> bool:
    for kind in _alternatives(annotation):
        base, _, inner = kind.partition("[")
        if base in _KINDS:
            if _KINDS[base][0](value):
                return True
        elif base in ("list", "tuple"):
            item = inner[:-1] if inner else "Any"
            if isinstance(value, (list, tuple)) and all(_matches(v, item) for v in value):
                return True
        elif base == "dict":
            if isinstance(value, dict):
                return True
        else:  # Any, or a type this reader does not know: the stage checks it
            return True
    return False


def _described(annotation: str) -> str:
    words = []
    for kind in _alternatives(annotation):
        base, _, inner = kind.partition("[")
        if base in _KINDS:
            words.append(_KINDS[base][1])
        elif base in ("list", "tuple"):
            words.append(f"a list, each item {_described(inner[:-1]) if inner else 'a value'}")
        elif base == "dict":
            words.append("a table")
        else:
            words.append(kind)
    return " or ".join(words)


def _shown(value: Any) -> str:
    if value is None:
        return "none"
    try:
        return _toml_value(value)
    except TypeError:
        return repr(value)


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
    embeddings: list[str] = field(default_factory=list)  # textual-inversion files; prompts call them by name
    vae: str | None = None  # a diffusers VAE folder to decode with, e.g. TAESD for fast previews
    out_dir: str = "outputs"
    device: str | None = None
    dtype: str | None = None
    engine: str | None = None  # None: "auto" (engines.py): compile on CUDA, ONNX Runtime on a CPU
    trace: bool = False
    trace_frames: int = 8
    allow_pickle: bool = False
    # img2img and inpainting (img2img.py), named and defaulted as A1111's img2img tab
    init_image: str | None = None  # start from this image instead of noise
    strength: float = 0.75  # A1111's denoising strength: 0 keeps the image, 1 repaints it all
    resize_mode: str = "just resize"  # or "crop and resize", "resize and fill" (RESIZE_MODES)
    mask: str | None = None  # a mask image (white = repaint), or face, hair, mouth, eyes (masks.py)
    mask_blur: int = 4  # pixels of Gaussian feather at the mask's edge
    mask_invert: bool = False  # repaint what the mask leaves black instead
    inpaint_full_res: bool = False  # "only masked": repaint a padded crop around the mask at full size
    inpaint_full_res_padding: int = 32  # pixels around the mask in that crop
    masked_content: str = "original"  # or "latent noise", "fill": what the masked area starts from
    # the face detailer (detailer.py), after ADetailer's ad_* arguments: each face found in a finished image
    # is cropped with padding, repainted at detail_size and pasted back through a feathered face mask
    detail_faces: bool = False
    detail_confidence: float = 0.7  # MTCNN's last-stage score a face needs (its own default threshold)
    detail_max_faces: int = 0  # 0: every face; k: the k largest (ad_mask_k_largest)
    detail_padding: int = 32  # pixels around the face mask in the crop (ad_inpaint_only_masked_padding)
    detail_size: int | None = None  # side of the repainted crop; None: the model's native size
    detail_strength: float = 0.4  # denoising strength of the face pass (ad_denoising_strength)
    detail_dilate: int = 4  # pixels the face mask grows (<0: shrinks) before blurring (ad_dilate_erode)
    detail_mask_blur: int = 4  # pixels of feather at the face mask's edge (ad_mask_blur)
    detail_steps: int | None = None  # None: the main steps (ad_steps)
    detail_cfg: float | None = None  # None: the main CFG scale (ad_cfg_scale)
    detail_prompt: str = ""  # "": the main prompt (ad_prompt)
    detail_negative: str = ""  # "": the main negative prompt (ad_negative_prompt)
    detail_lora: str | None = None  # FILE[:WEIGHT]: a LoRA for the face pass only (ad_prompt's <lora:>)

    def __post_init__(self) -> None:
        if self.seed == -1:  # A1111's "random", as the API and the page take it
            self.seed = None

    def validate(self) -> GenerateConfig:
        """Raise FacesmithError naming the first setting a person has to fix; return self, with the
        sampler under its A1111 name (an alias such as `k_euler_a` becomes "Euler a")."""
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
            raise FacesmithError(f"--seed {self.seed} must be -1 (random) or in [0, 2^63)")
        if self.trace_frames < 2:
            raise FacesmithError(f"trace_frames {self.trace_frames} must be at least 2")
        if self.sampler is not None:
            self.sampler = check_sampler(self.sampler).name
        # Files are checked here, before torch and the model load (which can take half a minute).
        if self.model and not Path(self.model).expanduser().exists():
            raise FacesmithError(
                f"model {self.model} does not exist: pass a diffusers folder or a .safetensors file"
            )
        for spec in self.loras:
            lora = parse_lora_spec(spec).path.expanduser()
            if not lora.is_file():
                raise FacesmithError(f"LoRA file {lora} does not exist or is not a file")
        for embedding in self.embeddings:
            if not Path(embedding).expanduser().is_file():
                raise FacesmithError(f"embedding file {embedding} does not exist or is not a file")
        if self.vae and not Path(self.vae).expanduser().is_dir():
            raise FacesmithError(f"--vae {self.vae} is not a folder: pass a diffusers VAE folder")
        self._validate_img2img()
        self._validate_detailer()
        return self

    def _validate_detailer(self) -> None:
        from facesmith.models.lora import parse_lora_spec

        if not self.detail_faces:
            return
        if not 0 < self.detail_confidence <= 1:
            raise FacesmithError(
                f"--detail-confidence {self.detail_confidence} is outside (0, 1]: 0.7 is MTCNN's"
            )
        if not 0 < self.detail_strength <= 1:
            raise FacesmithError(
                f"--detail-strength {self.detail_strength} is outside (0, 1]: 0.4 is ADetailer's"
            )
        if self.detail_max_faces < 0 or self.detail_padding < 0 or self.detail_mask_blur < 0:
            raise FacesmithError("--detail-max-faces, --detail-padding and --detail-mask-blur take 0 or more")
        if self.detail_size is not None and (self.detail_size <= 0 or self.detail_size % 8):
            raise FacesmithError(f"--detail-size {self.detail_size} is not a positive multiple of 8")
        if self.detail_steps is not None and not 1 <= self.detail_steps <= MAX_STEPS:
            raise FacesmithError(f"--detail-steps {self.detail_steps} is outside [1, {MAX_STEPS}]")
        steps = self.detail_steps or self.steps
        if int(steps * self.detail_strength) < 1:
            raise FacesmithError(
                f"--detail-strength {self.detail_strength:g} of {steps} steps denoises no step: raise either"
            )
        if self.detail_cfg is not None and (not math.isfinite(self.detail_cfg) or self.detail_cfg < 0):
            raise FacesmithError(f"--detail-cfg {self.detail_cfg} must be a finite number >= 0")
        lora = parse_lora_spec(self.detail_lora).path.expanduser() if self.detail_lora else None
        if lora is not None and not lora.is_file():
            raise FacesmithError(f"--detail-lora {lora} does not exist or is not a file: give FILE[:WEIGHT]")

    def _validate_img2img(self) -> None:
        if self.init_image is None:
            if self.mask is not None:
                raise FacesmithError(f"--mask {self.mask} needs --init IMAGE: the image to inpaint")
            return
        on_disk = not (self.init_image.startswith("<") and self.init_image.endswith(">"))  # in_memory's
        if on_disk and not Path(self.init_image).expanduser().is_file():  # read_image's words, before torch
            raise FacesmithError(
                f"--init {self.init_image} does not exist or is not a file: give the path of an image"
            )
        if not (isinstance(self.strength, (int, float)) and 0 < self.strength <= 1):
            raise FacesmithError(f"--strength {self.strength} is outside (0, 1]: 0.75 is A1111's default")
        if int(self.steps * self.strength) < 1:
            raise FacesmithError(
                f"--strength {self.strength:g} of --steps {self.steps} denoises no step: raise either"
            )
        self.resize_mode = self.resize_mode.strip().lower().replace("_", " ")
        if self.resize_mode not in RESIZE_MODES:
            raise FacesmithError(
                f"--resize-mode {self.resize_mode!r} is unknown: pick {', '.join(RESIZE_MODES)}"
            )
        self.masked_content = self.masked_content.strip().lower().replace("_", " ")
        if self.masked_content not in MASKED_CONTENT:
            raise FacesmithError(
                f"--masked-content {self.masked_content!r} is unknown: pick {', '.join(MASKED_CONTENT)}"
            )
        if self.mask_blur < 0 or self.inpaint_full_res_padding < 0:
            raise FacesmithError("--mask-blur and --padding are pixel counts: give 0 or more")


@dataclass
class NoiseConfig(StageConfig):
    """`facesmith noise`: IMAGE pushed through the forward process, `steps` slices evenly spaced in t."""

    image: str = ""
    steps: int = 8
    model: str | None = None
    seed: int = 0  # seed of the noise
    out_dir: str = "outputs"
    device: str | None = None
    dtype: str | None = None
    allow_pickle: bool = False

    def validate(self) -> NoiseConfig:
        """Raise FacesmithError naming the first setting a person has to fix; return self."""
        if not self.image:
            raise FacesmithError("no IMAGE given: name the image to push through the forward process")
        if not 1 <= self.steps <= MAX_STEPS:
            raise FacesmithError(f"--steps {self.steps} is outside [1, {MAX_STEPS}]")
        return self


# ----------------------------------------------------------------------------------------------------------
# TOML


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
