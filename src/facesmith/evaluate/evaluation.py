"""The `facesmith evaluate` stage: one model (or image folder) against real faces, with baselines.

Owns `EvaluateConfig` (defaults = the documented behaviour), choosing the faces (generated, real
held-out reference, real training reference for memorization, and the two baselines), computing every
metric with the same code for each candidate set, with its interval (`uncertainty.py`), and handing the
numbers to `report.py`.

Candidate sets, all of the same size N so the sample-size bias of FD/KID is equal:
- `model`: the N generated faces (or the images of a folder);
- `real`: N real *training* faces that are not in the memorization reference (upper bound);
- `noise`: N seeded uniform-noise images (lower bound), judged against the model's prompts.
Realism, precision/recall and diversity compare against up to `real_count` held-out real faces;
memorization against up to `real_count` other training faces, or all of them with `audit = "all"`
(their features cached under `feature_cache`). The faithfulness ceiling is the same prompt rule scored on
the held-out faces, prompted with their own labels: faces the shipped classifier never trained on when
`--real` is the shared CelebA/UTKFace split by the same file-name hash. Features: `features.py`.
"""

from __future__ import annotations

import csv
import dataclasses
import hashlib
import json
import random
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image

from facesmith.attributes import classifier as attr
from facesmith.config import GenerateConfig, StageConfig
from facesmith.data.manifest import IMAGE_SUFFIXES
from facesmith.errors import FacesmithError
from facesmith.evaluate import diversity, memorization, realism
from facesmith.evaluate.faceset import read_faces
from facesmith.evaluate.faithfulness import AUTO_PROMPTS, RULES, expectations, faithfulness, share
from facesmith.evaluate.features import extract_features, feature_space
from facesmith.evaluate.uncertainty import bootstrap, wilson
from facesmith.metadata import config_from_png, prompt_from_png
from facesmith.progress import Progress
from facesmith.runtime import choose_device, prepare_out_dir

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
    classifier: str | None = None  # folder with attributes.safetensors/.json; None = the shipped one
    loras: list[str] = field(default_factory=list)  # LoRA FILE[:WEIGHT] applied to the model, stacked
    audit: str = "sample"  # memorization reference: "sample" (real_count training faces) or "all"
    feature_cache: str | None = None  # where `audit = "all"` keeps reference features; None: ~/.cache
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


# ----------------------------------------------------------------------------------------------------------
# Where the candidate faces come from.


def is_image_folder(source: str | None) -> bool:
    if source is None:
        return False
    path = Path(source)
    return (
        path.is_dir()
        and not (path / "model_index.json").exists()
        and any(p.suffix.lower() in IMAGE_SUFFIXES for p in path.iterdir())
    )


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
# The memorization reference: training faces, their features and thumbnails (cached for `audit = "all"`).


def reference_vectors(config: EvaluateConfig, faces: list, features, progress: Progress | None):
    """(features (N, 1280), pixel thumbnails (N, 3072) float32) of the reference faces, batch by batch;
    with `audit = "all"` read from / written to the feature cache, keyed by the face names and space."""
    key = hashlib.sha1(
        "\n".join(
            [str(Path(config.real).resolve()), feature_space(config.feature_size), *[f.name for f in faces]]
        ).encode()
    ).hexdigest()[:16]
    cache = None
    if config.audit == "all":
        root = (
            Path(config.feature_cache).expanduser()
            if config.feature_cache
            else Path.home() / ".cache" / "facesmith" / "evaluate"
        )
        cache = root / f"reference-{key}.npz"
        if cache.is_file():
            with np.load(cache) as stored:
                return stored["features"].astype(np.float64), stored["pixels"].astype(np.float32) / 255
    feats, pixels = [], []
    for start in range(0, len(faces), 256):
        images = [f.image() for f in faces[start : start + 256]]
        feats.append(features(images, "features: training"))
        pixels.append(memorization.pixel_vectors(images))
        if progress:
            progress("memorization reference", min(start + 256, len(faces)), len(faces))
    feats_, pixels_ = np.concatenate(feats), np.concatenate(pixels)
    if cache is not None:
        cache.parent.mkdir(parents=True, exist_ok=True)
        tmp = cache.with_suffix(".tmp.npz")
        np.savez(tmp, features=feats_.astype(np.float32), pixels=np.round(pixels_ * 255).astype(np.uint8))
        tmp.replace(cache)
    return feats_, pixels_


# ----------------------------------------------------------------------------------------------------------
# The stage.


def _interval(pair: tuple[float, float], digits: int = 4) -> list[float]:
    return [round(pair[0], digits), round(pair[1], digits)]


def _short_attributes(attrs: dict) -> str:
    on = [k for k, v in attrs.items() if v == 1 and k not in ("age_group", "ethnicity")]
    return "; ".join([" ".join(on), str(attrs.get("age_group", "")), str(attrs.get("ethnicity", ""))])


def per_prompt(prompts, faces_found, expected, predicted) -> list[dict]:
    """Face rate and pooled faithfulness (every checked attribute of every image) per distinct prompt."""
    rows: dict[str, dict] = {}
    for prompt, face, want, got in zip(prompts, faces_found, expected, predicted, strict=True):
        row = rows.setdefault(prompt, {"prompt": prompt, "faces": [], "hits": 0, "checks": 0})
        row["faces"].append(int(face))
        checked = [int(got[k] == v) for k, v in want.items() if k in got]
        row["hits"] += sum(checked)
        row["checks"] += len(checked)
    out = []
    for row in rows.values():
        entry = {"prompt": row["prompt"], "face_rate": share(sum(row["faces"]), len(row["faces"]))}
        entry["faithfulness"] = share(row["hits"], row["checks"]) if row["checks"] else None
        out.append(entry)
    return out


def run_evaluate(config: EvaluateConfig, progress: Progress | None = None) -> dict:
    """Evaluate, write report.md, metrics.json, images.csv, PNGs and evaluate.toml to out_dir; return the
    metrics."""
    from facesmith.data.faces import detect_faces
    from facesmith.evaluate.report import write_report

    config.validate()
    out = prepare_out_dir(config.out_dir)
    device = choose_device(config.device)
    rng = random.Random(config.seed)

    # Real faces before generation, so a wrong --real fails before minutes of sampling.
    faces = read_faces(config.real)
    held = [f for f in faces if f.split == "val"]
    train = [f for f in faces if f.split != "val"]
    if len(held) < config.knn + 1 or len(train) < config.knn + 2:
        raise FacesmithError(
            f"--real {config.real}: {len(held)} held-out and {len(train)} training faces; need more than "
            f"{config.knn} held-out and {config.knn + 1} training faces"
        )

    classifier = attr.AttributeClassifier.load(config.classifier or attr.SHIPPED, device=device)

    # Candidates first: generation is the slow part and tells us N.
    if is_image_folder(config.model):
        generated, prompts, seeds = folder_images(config.model)
        model = {"name": Path(config.model).name, "hash": None, "source": str(Path(config.model).resolve())}
        if len(generated) < config.knn + 1:
            raise FacesmithError(
                f"{config.model} holds {len(generated)} images: need at least {config.knn + 1}"
            )
    else:
        generated, prompts, model = generate_faces(config, progress)
        seeds = generated_seeds(config, len(generated))
    n = len(generated)

    rng.shuffle(held)
    rng.shuffle(train)
    held = held[: config.real_count]
    real_candidates = train[: min(n, len(train) // 2)]
    rest = train[len(real_candidates) :]
    train_ref = rest if config.audit == "all" else rest[: config.real_count]

    def images_of(faces_, label):
        result = []
        for i, face in enumerate(faces_):
            result.append(face.image())
            if progress:
                progress(f"reading {label}", i + 1, len(faces_))
        return result

    held_images = images_of(held, "held-out faces")
    real_images = images_of(real_candidates, "baseline faces")
    side = generated[0].size[0]
    sets = {"model": generated, "real": real_images, "noise": noise_images(n, side, config.seed)}
    expected = {
        "model": [expectations(p) for p in prompts],
        "real": [real_expectations(f.attributes) for f in real_candidates],
        "noise": [expectations(p) for p in prompts],
    }

    def features(images, label="features"):
        return extract_features(
            images,
            size=config.feature_size,
            device=device,
            progress=progress,
            stage=label,
        )

    held_features = features(held_images, "features: held-out")
    train_features, train_pixels = reference_vectors(config, train_ref, features, progress)
    thresholds = memorization.calibrate(
        lambda i: train_ref[i].image(), train_features, features, count=config.calibration_copies,
        seed=config.seed, train_pixels=train_pixels,
    )  # fmt: skip
    results: dict[str, dict] = {}
    audits, found, predictions = {}, {}, {}
    for name, images in sets.items():
        feats = features(images, f"features: {name}")
        fd = realism.frechet_distance(feats, held_features)
        fd_interval = bootstrap(
            realism.frechet_distance, feats, held_features, rounds=config.bootstrap, seed=config.seed
        )
        kid, kid_std = realism.kernel_inception_distance(feats, held_features, seed=config.seed)
        inside_real, inside_fake = diversity.manifold_membership(held_features, feats, k=config.knn)
        faces_found = []
        for i, image in enumerate(images):
            detected = detect_faces(image)
            faces_found.append(len(detected) == 1 and len(detected[0].landmarks) == 5)
            if progress:
                progress(f"faces: {name}", i + 1, len(images))
        predicted = classifier.predict(images)
        audits[name] = memorization.audit(images, feats, train_pixels, train_features, thresholds)
        found[name], predictions[name] = faces_found, predicted
        results[name] = {
            "images": len(images),
            "fd": round(fd, 3),
            "fd_interval": _interval(fd_interval, 3),
            "kid": round(kid, 5),
            "kid_std": round(kid_std, 5),
            "precision": round(float(inside_real.mean()), 4),
            "precision_interval": _interval(
                bootstrap(np.mean, inside_real.astype(float), rounds=config.bootstrap, seed=config.seed)
            ),
            "recall": round(float(inside_fake.mean()), 4),
            "recall_interval": _interval(
                bootstrap(np.mean, inside_fake.astype(float), rounds=config.bootstrap, seed=config.seed)
            ),
            "diversity": round(diversity.mean_pairwise_distance(feats), 3),
            "face_rate": round(float(np.mean(faces_found)), 4),
            "face_rate_interval": _interval(wilson(int(sum(faces_found)), len(faces_found))),
            "faithfulness": faithfulness(expected[name], predicted),
            "near_copy_share": round(audits[name].copy_share, 4),
            "nearest_feature_distance_median": round(float(np.median(audits[name].feature_distance)), 4),
            "nearest_pixel_distance_median": round(float(np.median(audits[name].pixel_distance)), 4),
        }

    held_probabilities = classifier.probabilities(held_images)
    held_scores = attr.score(held_probabilities, [f.attributes for f in held])
    ceiling = faithfulness(
        [real_expectations(f.attributes) for f in held], attr.attribute_dicts(held_probabilities)
    )
    image_rows = []
    model_audit = audits["model"]
    for i, prompt in enumerate(prompts):
        image_rows.append({
            "file": f"images/{i:05d}.png", "prompt": prompt, "seed": seeds[i],
            "face_found": bool(found["model"][i]), "predicted": _short_attributes(predictions["model"][i]),
            "nearest_training_face": train_ref[int(model_audit.feature_index[i])].name,
            "nearest_feature_distance": round(float(model_audit.feature_distance[i]), 5),
            "nearest_pixel_face": train_ref[int(model_audit.pixel_index[i])].name,
            "nearest_pixel_distance": round(float(model_audit.pixel_distance[i]), 5),
            "near_copy": bool(model_audit.copies[i]),
        })  # fmt: skip
    metrics = {
        "feature_space": feature_space(config.feature_size),
        "model": model,
        "real": str(config.real),
        "counts": {"candidates": n, "held_out_reference": len(held), "training_reference": len(train_ref)},
        "reference": {"diversity": round(diversity.mean_pairwise_distance(held_features), 3)},
        "memorization_thresholds": dataclasses.asdict(thresholds),
        "memorization": {
            "audit": config.audit,
            "reference_faces": len(train_ref),
            "training_faces": len(train),
            "audited_share": round(len(train_ref) / len(train), 4),
        },
        "sets": results,
        "ceiling": {"faces": len(held), "faithfulness": ceiling},
        "per_prompt": per_prompt(prompts, found["model"], expected["model"], predictions["model"]),
        "classifier": {
            "held_out_here": held_scores,
            "held_out_shipped": classifier.info.get("held_out", {}),
            "trained_on": classifier.info.get("trained_on", []),
        },
        "prompts": prompts,
        "images": image_rows,
    }
    images_dir = out / "images"
    images_dir.mkdir(exist_ok=True)
    for i, image in enumerate(generated):
        image.save(images_dir / f"{i:05d}.png")
    with open(out / "images.csv", "w", newline="", encoding="utf-8") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(image_rows[0]))
        writer.writeheader()
        writer.writerows(image_rows)
    (out / "metrics.json").write_text(json.dumps(metrics, indent=1) + "\n", encoding="utf-8")
    config.save(out / "evaluate.toml")
    write_report(out, metrics, generated, prompts, seeds, lambda i: train_ref[i].image(), model_audit)
    return metrics
