"""The faces a report compares, and the memorization reference they are audited against.

Generated faces (`generate_faces`: the prompt file or the built-in prompts, image i at seed + i), an image
folder's faces with the prompts and seeds of their PNG metadata (`folder_images`), the uniform-noise
baseline, what a real face "asks for" when prompted with its own labels (`real_expectations`, the
faithfulness ceiling), and the training faces' feature, pixel and identity vectors (`reference_vectors`,
cached for `audit = "all"`). The metrics over them are `evaluation.py`'s.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
from PIL import Image

from facesmith.attributes import classifier as attr
from facesmith.config import GenerateConfig
from facesmith.data.manifest import IMAGE_SUFFIXES
from facesmith.errors import FacesmithError
from facesmith.evaluate import identity, memorization
from facesmith.evaluate.config import DEFAULT_AUTO, EvaluateConfig
from facesmith.evaluate.faithfulness import AUTO_PROMPTS, RULES
from facesmith.evaluate.features import feature_space
from facesmith.metadata import config_from_png, prompt_from_png
from facesmith.progress import Progress


def read_prompts(path: str | Path) -> list[str]:
    try:
        lines = Path(path).read_text(encoding="utf-8").splitlines()
    except OSError as error:
        raise FacesmithError(f"cannot read --prompts {path}: {error.strerror or error}") from None
    prompts = [line.strip() for line in lines if line.strip() and not line.startswith("#")]
    if not prompts:
        raise FacesmithError(f"--prompts {path} holds no prompt (one per line)")
    return prompts


def folder_images(folder: str | Path) -> tuple[list[Image.Image], list[str], list[int | None]]:
    """Images of a folder, their prompts and seeds (from facesmith's JSON or A1111's PNG metadata; ''
    and None when absent)."""
    images, prompts, seeds = [], [], []
    for path in sorted(Path(folder).iterdir()):
        if path.suffix.lower() not in IMAGE_SUFFIXES:
            continue
        with Image.open(path) as image:
            images.append(image.convert("RGB"))
        png = path.suffix.lower() == ".png"
        prompts.append(prompt_from_png(path) if png else "")
        try:
            seeds.append(config_from_png(path).seed if png else None)
        except FacesmithError:
            seeds.append(None)
    return images, prompts, seeds


def generate_faces(
    config: EvaluateConfig, progress: Progress | None
) -> tuple[list[Image.Image], list[str], dict]:
    """(images, prompts, what was generated) for a model; image i uses seed + i."""
    from facesmith.generate import FaceGenerator

    if config.prompts:
        plan = [(p, "") for p in read_prompts(config.prompts)]
    else:
        count = config.auto or DEFAULT_AUTO
        plan = [AUTO_PROMPTS[i % len(AUTO_PROMPTS)] for i in range(count)]
    if len(plan) < config.knn + 1:
        raise FacesmithError(
            f"{len(plan)} prompts: need at least {config.knn + 1} images for precision/recall"
        )
    generator = FaceGenerator.from_settings(config)
    images, used = [], None
    for i, (prompt, negative) in enumerate(plan):
        settings = {"prompt": prompt, "negative": negative, "steps": config.steps, "cfg": config.cfg,
                    "sampler": config.sampler, "seed": config.seed + i, "width": config.width,
                    "height": config.height}  # fmt: skip
        result = generator.run(GenerateConfig.from_dict(settings, origin="evaluate"))
        images += result.images
        used = result.config
        if progress:
            progress("generating", i + 1, len(plan))
    model = {"name": generator.model.name, "hash": generator.model.model_hash(), "source": config.model,
             "loras": list(generator.loras)}  # fmt: skip
    if used is not None:  # what the model's defaults resolved to, for the report
        model["sampling"] = {
            "sampler": used.sampler,
            "cfg": used.cfg,
            "steps": used.steps,
            "engine": generator.engine,
        }
    return images, [p for p, _ in plan], model


def generated_seeds(config: EvaluateConfig, count: int) -> list[int]:
    """Image i of a generated set uses seed + i (`generate_faces`)."""
    return [config.seed + i for i in range(count)]


def noise_images(count: int, side: int, seed: int) -> list[Image.Image]:
    rng = np.random.default_rng(seed)
    return [Image.fromarray(rng.integers(0, 256, (side, side, 3), dtype=np.uint8)) for _ in range(count)]


def real_expectations(attributes: dict) -> dict:
    """A real face 'asks for' exactly its labels on the attributes the prompt rules can check."""
    checkable = {
        key
        for _, values, negated in RULES
        for key in [*negated, *(values if isinstance(values, dict) else ())]
    }
    binary, age, eth = attr.targets([attributes])
    found = {}
    for j, name in enumerate(attr.CELEBA_ATTRIBUTES):
        if name in checkable and not np.isnan(binary[0, j]):
            found[name] = int(binary[0, j])
    if age[0] >= 0 and attr.AGE_NAMES[age[0]] in ("child", "senior"):
        found["age_group"] = attr.AGE_NAMES[age[0]]
    if eth[0] >= 0 and attr.ETHNICITIES[eth[0]] != "other":
        found["ethnicity"] = attr.ETHNICITIES[eth[0]]
    return found


# ----------------------------------------------------------------------------------------------------------
# The memorization reference: training faces, their features, thumbnails and identity descriptors.


def reference_vectors(config: EvaluateConfig, faces: list, features, progress: Progress | None):
    """(features (N, 1280), pixel thumbnails (N, 3072) float32, identity descriptors (N, 128) float32 or
    None when `identity.py` is not installed or `config.identity` is off) of the reference faces, batch by batch; with
    `audit = "all"` read from / written to the feature cache, keyed by the face names and feature space.
    A cache written without the identity space gets its descriptors added, the rest read back."""
    key = hashlib.sha1(
        "\n".join(
            [str(Path(config.real).resolve()), feature_space(config.feature_size), *[f.name for f in faces]]
        ).encode()
    ).hexdigest()[:16]
    with_identity = config.identity and identity.available()
    cache, stored = None, {}
    if config.audit == "all":
        root = (
            Path(config.feature_cache).expanduser()
            if config.feature_cache
            else Path.home() / ".cache" / "facesmith" / "evaluate"
        )
        cache = root / f"reference-{key}.npz"
        if cache.is_file():
            with np.load(cache) as npz:
                stored = {name: npz[name] for name in npz.files}
            if str(stored.get("identity_space", "")) != identity.SPACE:
                stored.pop("identity", None)
            if "identity" in stored or not with_identity:
                return _from_cache(stored, with_identity)
    feats, pixels, ids = [], [], []
    for start in range(0, len(faces), 256):
        images = [f.image() for f in faces[start : start + 256]]
        if not stored:
            feats.append(features(images, "features: training"))
            pixels.append(memorization.pixel_vectors(images))
        if with_identity:
            ids.append(identity.identity_vectors(images)[0])
        if progress:
            progress("memorization reference", min(start + 256, len(faces)), len(faces))
    ids_ = np.concatenate(ids) if with_identity else None
    if stored:  # features and thumbnails from the cache, identity descriptors new
        found = _from_cache(stored, False)[:2]
    else:
        found = np.concatenate(feats), np.concatenate(pixels)
        stored = {
            "features": found[0].astype(np.float32),
            "pixels": np.round(found[1] * 255).astype(np.uint8),
        }
    if cache is not None:
        if with_identity:
            stored |= {"identity": ids_, "identity_space": np.array(identity.SPACE)}
        cache.parent.mkdir(parents=True, exist_ok=True)
        tmp = cache.with_suffix(".tmp.npz")
        np.savez(tmp, **stored)
        tmp.replace(cache)
    return *found, ids_


def _from_cache(stored: dict, with_identity: bool):
    ids = stored["identity"].astype(np.float32) if with_identity else None
    return stored["features"].astype(np.float64), stored["pixels"].astype(np.float32) / 255, ids
