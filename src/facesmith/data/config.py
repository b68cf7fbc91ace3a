"""PrepareConfig: everything that decides which dataset `facesmith prepare` builds, and its TOML form.

Defaults are the documented behaviour (README, "Preparing a dataset"); ``DIR/prepare.toml`` holds the
config that reproduces ``DIR``, written and read by ``PrepareConfig.save``/``load`` (StageConfig's).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path

from facesmith.config import StageConfig
from facesmith.errors import FacesmithError


@dataclass
class PrepareConfig(StageConfig):
    """Settings of one `facesmith prepare` run.

    ``format`` "auto" detects each source's format; ``workers`` 0 means one process per CPU core.
    ``margin`` scales FFHQ's crop square (1.0 = FFHQ framing). A face is rejected when:
    - the crop would be upscaled more than ``max_upscale`` to reach ``size``;
    - more than ``max_outside`` of the crop lies outside the photo (tight pre-cropped sets want --aligned);
    - the detector's score is under ``min_score``;
    - the face's sharpness (variance of the Laplacian at 64 px) is under ``min_sharpness``. 30 was set on
      UTKFace, where faces under it are unrecognisable smears; CelebA's Blurry-labelled faces measure 47 and up (5th percentile);
    - its perceptual hash is within ``max_hash_distance`` bits of a face already kept (-1: no near-duplicate
      search; byte-identical files are always dropped). 2, because on aligned faces 3-4 bits already pair
      different people, while re-encoded copies of one photo differ by 0-2.
    ``val_fraction`` of identities (of files, where identities are unknown) go to the val split, chosen by
    hash, so reruns agree. ``templates`` are caption templates (captions.caption_from_template), one drawn
    per image; none means natural sentences. ``auto_caption`` captions faces that have no labels from the
    attributes facesmith's attribute classifier predicts (``attribute_classifier``: its folder, "" = the
    shipped one); without a classifier, or with auto_caption off, they get ``generic_caption``.
    """

    sources: list[str] = field(default_factory=list)
    out_dir: str = ""
    format: str = "auto"
    size: int = 512
    aligned: bool = False
    workers: int = 0
    margin: float = 1.0
    max_upscale: float = 2.0
    max_outside: float = 0.5
    min_score: float = 0.9
    min_sharpness: float = 30.0
    max_hash_distance: int = 2
    val_fraction: float = 0.05
    seed: int = 0
    templates: list[str] = field(default_factory=list)
    generic_caption: str = "a photo of a person's face"
    auto_caption: bool = True
    attribute_classifier: str = ""
    image_format: str = "png"
    max_pixels: int = 100_000_000

    def validate(self) -> PrepareConfig:
        """Raise FacesmithError naming the first setting a person has to fix; return self."""
        from facesmith.data.captions import check_template
        from facesmith.data.sources import FORMATS

        if not self.sources:
            raise FacesmithError("no SOURCE given: name one or more folders of face photos")
        if not self.out_dir:
            raise FacesmithError("no output folder: give -o DATASET_DIR")
        if self.format not in ("auto", *FORMATS):
            raise FacesmithError(f"--format {self.format} is unknown: use one of auto, {', '.join(FORMATS)}")
        if not 16 <= self.size <= 4096:
            raise FacesmithError(f"--size {self.size} is outside [16, 4096]")
        if self.workers < 0:
            raise FacesmithError(f"--workers {self.workers} must be >= 0 (0 = one per core)")
        for name in ("margin", "max_upscale"):
            value = getattr(self, name)
            if not (math.isfinite(value) and value > 0):
                raise FacesmithError(f"{name} {value} must be a positive number")
        for name in ("max_outside", "min_score", "val_fraction"):
            value = getattr(self, name)
            if not 0 <= value <= 1:
                raise FacesmithError(f"{name} {value} must lie in [0, 1]")
        if self.max_hash_distance > 32:
            raise FacesmithError(
                f"max_hash_distance {self.max_hash_distance} is over 32 of 64 bits: use 0-10"
            )
        if self.image_format not in ("png", "jpg", "webp"):
            raise FacesmithError(f"image_format {self.image_format} must be png, jpg or webp")
        for template in self.templates:
            problem = check_template(template)
            if problem:
                raise FacesmithError(problem)
        for source in self.sources:
            if not Path(source).is_dir():
                raise FacesmithError(f"source {source} is not a folder: give a folder of images")
        return self
