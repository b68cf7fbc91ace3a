"""The attribute classifier's two stages: `facesmith attributes train` and `facesmith attributes predict`.

Owns reading the faces a classifier is trained on (through `faceset`: prepared dataset folders, packed
`.npz` files, image folders) with their cached feature maps, the written classifier folder
(`attributes.safetensors`, `attributes.json` with held-out scores, `attributes-train.toml`), and labelling
image files with a classifier. The classifier itself (heads, fitting, scores, prediction) is
`facesmith.attributes.classifier`.

Why here and not in `facesmith.attributes`: both stages read datasets and image folders through
`data.manifest`, while `data.prepare` uses the classifier; a stage in the attributes package would make
`attributes` and `data` import each other.
"""

from __future__ import annotations

import json
import random
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image

from facesmith.attributes.backbone import feature_maps
from facesmith.attributes.classifier import (
    SHIPPED,
    AttributeClassifier,
    AttributeNetwork,
    attribute_dicts,
    caption_attributes,
    fit_heads,
    probability_dicts,
    score,
)
from facesmith.config import StageConfig
from facesmith.data.manifest import IMAGE_SUFFIXES
from facesmith.errors import FacesmithError
from facesmith.evaluate.faceset import RealFace, read_faces
from facesmith.progress import Progress


@dataclass
class AttributeTrainConfig(StageConfig):
    """`facesmith attributes train`: where faces come from, how the heads are fitted and, with
    `fine_tune_minutes`, how long backbone and heads then train together (the shipped classifier's
    recipe, `scripts/train_attribute_classifier.py`)."""

    datasets: list[str] = field(default_factory=list)  # dataset dirs or packed .npz files
    out_dir: str = "attribute-classifier"
    size: int = 128  # input pixels; the feature map is size/32 on a side
    epochs: int = 10
    batch: int = 256
    lr: float = 1e-3
    weight_decay: float = 1e-4
    seed: int = 0
    limit: int | None = None  # at most this many faces per dataset (quick runs, tests)
    cache: str | None = None  # .npy path: the frozen feature maps, reused when the face list matches
    device: str | None = None
    fine_tune_minutes: float = 0.0  # 0: heads on the frozen backbone only
    fine_tune_epochs: int = 30  # the fine-tune ends at this many passes if the minutes last longer
    fine_tune_batch: int = 64
    fine_tune_lr: float = 3e-4  # the heads' rate while fine-tuning
    backbone_lr: float = 1e-4
    frozen_modules: int = 4  # leading MobileNetV2 modules kept at their ImageNet weights


@dataclass
class AttributePredictConfig(StageConfig):
    """`facesmith attributes predict`: which images, which classifier, and whether to add captions."""

    images: list[str] = field(default_factory=list)  # image files or folders (searched recursively)
    classifier: str | None = None  # a folder from `attributes train`; None: the shipped classifier
    caption: bool = False  # add a caption written from the predicted attributes
    device: str = "cpu"  # a few photos classify quickly on a CPU, as the CLI always did


# ----------------------------------------------------------------------------------------------------------
# attributes train


def _load_maps(
    config: AttributeTrainConfig,
    faces: list[RealFace],
    device,
    progress: Progress | None,
    pixels: np.ndarray | None = None,
):
    """The frozen feature maps of `faces`, from `config.cache` when it holds these faces at this size.
    `pixels`: the faces already decoded at `config.size` (`finetune.face_arrays`), read instead of the
    files, so a fine-tuning run decodes each face once."""
    names = [f.name for f in faces]
    cache = Path(config.cache) if config.cache else None
    if cache is not None and cache.is_file() and cache.with_suffix(".json").is_file():
        stored = json.loads(cache.with_suffix(".json").read_text())
        if stored == {"names": names, "size": config.size}:
            return np.load(cache)
    maps = feature_maps(
        (lambda i: Image.fromarray(pixels[i])) if pixels is not None else (lambda i: faces[i].image()),
        len(faces),
        size=config.size,
        device=device,
        progress=progress,
    )
    if cache is not None:
        cache.parent.mkdir(parents=True, exist_ok=True)
        np.save(cache, maps)
        cache.with_suffix(".json").write_text(json.dumps({"names": names, "size": config.size}))
    return maps


def train_attribute_classifier(config: AttributeTrainConfig, progress: Progress | None = None) -> dict:
    """Fit the heads on the datasets' train split; write weights, held-out scores and the TOML; return info.

    `progress` hears ("features", faces done, faces) while the feature maps are made and ("training",
    steps done, steps) while the heads are fitted.
    """
    from safetensors.torch import save_file

    from facesmith.runtime import choose_device

    if not config.datasets:
        raise FacesmithError("no DATASET given: name prepared dataset folders or packed .npz files")
    if config.size % 32 or config.size < 32:
        raise FacesmithError(f"--size {config.size} must be a positive multiple of 32")
    if config.fine_tune_minutes < 0:
        raise FacesmithError(f"--fine-tune {config.fine_tune_minutes} must be 0 (heads only) or minutes > 0")
    if not 0 <= config.frozen_modules <= 18:
        raise FacesmithError(f"frozen_modules = {config.frozen_modules} must be 0-18 (MobileNetV2's modules)")
    device = choose_device(config.device)
    faces: list[RealFace] = []
    for source in config.datasets:
        found = read_faces(source)
        faces += found[: config.limit] if config.limit else found
    labelled = [f for f in faces if f.attributes]
    if not labelled:
        raise FacesmithError(f"{', '.join(config.datasets)}: no face carries attributes to learn from")
    started = time.time()
    pixels = None
    if config.fine_tune_minutes > 0:
        from facesmith.attributes.finetune import face_arrays

        pixels = face_arrays([f.image() for f in labelled], config.size)
    maps = _load_maps(config, labelled, device, progress, pixels)
    train = np.array([f.split != "val" for f in labelled])
    held = ~train
    if not held.any() or not train.any():
        raise FacesmithError(
            "the datasets need faces in both splits (train and val) to report held-out accuracy"
        )
    heads = fit_heads(
        maps,
        [f.attributes for f in labelled],
        np.flatnonzero(train),
        epochs=config.epochs,
        batch=config.batch,
        lr=config.lr,
        weight_decay=config.weight_decay,
        seed=config.seed,
        device=device,
        progress=progress,
    )

    held_attrs = [f.attributes for f, h in zip(labelled, held, strict=True) if h]
    classifier = AttributeClassifier(heads, {"size": config.size}, device)
    scores = score(classifier.probabilities_from_maps(maps[held]), held_attrs)
    info = {
        "size": config.size,
        "heads": {"reduced": heads.reduce[0].out_channels, "hidden": heads.binary.in_features},
        "backbone": "MobileNetV2 ImageNet (facesmith/weights/mobilenet_v2), frozen",
        "trained_on": [str(s) for s in config.datasets],
        "faces": {"train": int(train.sum()), "held_out": int(held.sum())},
        "seconds": round(time.time() - started, 1),
        "held_out": scores,
    }
    out = Path(config.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    if config.fine_tune_minutes > 0:
        info = _fine_tune(config, heads, labelled, pixels, train, held_attrs, info, out, progress)
        info["seconds"] = round(time.time() - started, 1)
    else:
        state = {k: v.detach().cpu().contiguous() for k, v in heads.state_dict().items()}
        save_file(state, str(out / "attributes.safetensors"))
        (out / "attributes.json").write_text(json.dumps(info, indent=1) + "\n")
    config.save(out / "attributes-train.toml")
    return info


def _fine_tune(config, heads, labelled, pixels, train, held_attrs, info, out: Path, progress) -> dict:
    """Stage 2 of the recipe: backbone and heads together from the fitted heads (`attributes.finetune`, on
    the CPU, for `fine_tune_minutes` of wall time), checkpointed in `out` so an interrupted run resumes
    with the same command; writes the network in place of the heads."""
    from facesmith.attributes.finetune import fine_tune, network_probabilities, save_network

    network, run = fine_tune(
        pixels, [f.attributes for f in labelled], np.flatnonzero(train),
        minutes=config.fine_tune_minutes, epochs=config.fine_tune_epochs, batch=config.fine_tune_batch,
        lr=config.fine_tune_lr, backbone_lr=config.backbone_lr, seed=config.seed,
        frozen=config.frozen_modules, checkpoint=out / "fine-tune-checkpoint.pt",
        network=AttributeNetwork.from_heads(heads, config.size), progress=progress,
    )  # fmt: skip
    fine = {
        **info,
        "fine_tuned": True,
        "backbone": (
            f"MobileNetV2 from ImageNet (facesmith/weights/mobilenet_v2); modules {config.frozen_modules}-18 "
            "trained with the heads, BatchNorm statistics frozen"
        ),
        "training": run,
        "held_out": score(network_probabilities(network, pixels[~train]), held_attrs),
        "held_out_frozen_heads": info["held_out"],
    }
    del fine["heads"]  # save_network writes the network's own shape
    save_network(network, fine, out)
    (out / "fine-tune-checkpoint.pt").unlink(missing_ok=True)
    return fine


# ----------------------------------------------------------------------------------------------------------
# attributes predict


def image_files(paths: list[str | Path]) -> list[Path]:
    """The files given, and the images under the folders given (sorted, searched recursively)."""
    files: list[Path] = []
    for path in map(Path, paths):
        if path.is_dir():
            files += sorted(p for p in path.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES)
        elif path.is_file():
            files.append(path)
        else:
            raise FacesmithError(f"{path} does not exist")
    return files


def run_attributes_predict(config: AttributePredictConfig, progress: Progress | None = None) -> list[dict]:
    """One row per image, in order: {"file", "attributes", "probabilities"} and, with `config.caption`, a
    "caption" written from the predicted attributes by `captions.caption_from_attributes` (seeded, so
    reruns agree). "attributes" holds the 0/1 verdicts (probability above 0.5) and the most probable age
    group and ethnicity; "probabilities" the numbers behind them (`classifier.probability_dicts`)."""
    from facesmith.data.captions import caption_from_attributes
    from facesmith.runtime import choose_device

    files = image_files(config.images)
    model = AttributeClassifier.load(config.classifier or SHIPPED, device=choose_device(config.device))
    probabilities = model.probabilities([RealFace(str(p), path=p).image() for p in files], progress)
    rows = []
    for path, attrs, probs in zip(
        files, attribute_dicts(probabilities), probability_dicts(probabilities), strict=True
    ):
        row = {"file": str(path), "attributes": attrs, "probabilities": probs}
        if config.caption:
            row["caption"] = caption_from_attributes(caption_attributes(attrs), random.Random(0))
        rows.append(row)
    return rows
