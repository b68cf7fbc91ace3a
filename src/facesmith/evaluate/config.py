"""`EvaluateConfig`: everything that decides the numbers `facesmith evaluate` reports (defaults = the
documented behaviour), and how its `model` setting is read (a model source, or a folder of images)."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from facesmith.config import StageConfig
from facesmith.data.manifest import IMAGE_SUFFIXES
from facesmith.errors import FacesmithError

DEFAULT_AUTO = 40


@dataclass
class EvaluateConfig(StageConfig):
    """Everything that decides the numbers `facesmith evaluate` reports."""

    model: str | None = None  # model source (see `facesmith generate --model`), or a folder of images
    real: str = ""  # dataset folder (metadata.jsonl), packed .npz, or image folder
    prompts: str | None = None  # text file, one prompt per line (one image each)
    auto: int | None = None  # N images cycling the built-in prompts (default when no prompts file)
    seed: int = 0
    out_dir: str = "evaluation"
    real_count: int = 500  # real faces per reference set (held-out; training for memorization)
    steps: int = 30
    cfg: float | None = None  # None: the model's own choice, as in `facesmith generate`
    sampler: str | None = None  # None: the model's own choice, as in `facesmith generate`
    width: int | None = None
    height: int | None = None
    feature_size: int = 224
    knn: int = 3  # k of the precision/recall manifolds (Kynkäänniemi et al. 2019)
    calibration_copies: int = 64
    # Training faces outside the memorization reference whose nearest reference face calibrates the
    # false-flag budget (`memorization.split_thresholds`); fewer than 100 outside (audit = "all"):
    # reference faces at their nearest other one instead.
    calibration_distinct: int = 1000
    classifier: str | None = None  # folder with attributes.safetensors/.json; None = the shipped one
    loras: list[str] = field(default_factory=list)  # LoRA FILE[:WEIGHT] applied to the model, stacked
    audit: str = "sample"  # memorization reference: "sample" (real_count training faces) or "all"
    feature_cache: str | None = None  # where `audit = "all"` keeps reference features; None: ~/.cache
    # The audit's identity space (dlib, `identity.py`), opt-in: on the default report it catches 98 % of
    # the calibration copies against 44 %, for ~7 more CPU-minutes (MODEL_CARD.md, "Metrics").
    identity: bool = False
    bootstrap: int = 200  # resamples behind the FD and precision/recall intervals
    device: str | None = None
    dtype: str | None = None
    allow_pickle: bool = False

    def validate(self) -> EvaluateConfig:
        if not self.real:
            raise FacesmithError("--real is missing: give the real faces (a `facesmith prepare` folder)")
        if self.prompts and self.auto:
            raise FacesmithError("give either --prompts FILE or --auto N, not both")
        if self.auto is not None and self.auto < self.knn + 1:
            raise FacesmithError(
                f"--auto {self.auto}: need at least {self.knn + 1} images for precision/recall"
            )
        if self.real_count < self.knn + 1:
            raise FacesmithError(f"--real-count {self.real_count} must be above k = {self.knn}")
        if self.audit not in ("sample", "all"):
            raise FacesmithError(f"--audit {self.audit!r}: use 'sample' or 'all'")
        if is_image_folder(self.model):
            for given, name in ((self.prompts, "--prompts"), (self.auto, "--auto"), (self.loras, "--lora")):
                if given:
                    raise FacesmithError(
                        f"{name} does not apply to the image folder {self.model}: its prompts come from "
                        f"the PNG metadata; drop {name}, or give a model to generate from"
                    )
        from facesmith.models.lora import parse_lora_spec

        for spec in self.loras:
            parse_lora_spec(spec)
        return self


def is_image_folder(source: str | None) -> bool:
    if source is None:
        return False
    path = Path(source)
    return (
        path.is_dir()
        and not (path / "model_index.json").exists()
        and any(p.suffix.lower() in IMAGE_SUFFIXES for p in path.iterdir())
    )
