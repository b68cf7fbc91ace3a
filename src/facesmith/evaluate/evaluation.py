"""The `facesmith evaluate` stage: one model (or image folder) against real faces, with baselines.

Owns `EvaluateConfig` (defaults = the documented behaviour), choosing the faces (generated, real
held-out reference, real training reference for memorization, and the two baselines), computing every
metric with the same code for each candidate set, with its interval (`uncertainty.py`), and handing the
numbers to `report.py`. The config is `config.py`'s; where the faces come from is `candidates.py`'s.

Candidate sets, all of the same size N so the sample-size bias of FD/KID is equal:
- `model`: the N generated faces (or the images of a folder);
- `real`: N real *training* faces that are not in the memorization reference (upper bound);
- `noise`: N seeded uniform-noise images (lower bound), judged against the model's prompts.
Realism, precision/recall and diversity compare against up to `real_count` held-out real faces;
memorization against up to `real_count` other training faces, or all of them with `audit = "all"`
(their features cached under `feature_cache`), in feature, pixel and (with dlib installed, `identity.py`)
identity space. Its near-copy thresholds are calibrated on up to `calibration_distinct` further training
faces, outside both the reference and the `real` baseline (new faces to the reference, which is what the
false-flag budget is about; at least `MIN_OUTSIDE`, else the reference's own nearest-other distances),
so the `real` baseline's near-copy share stays an independent check of that budget. The faithfulness
ceiling is the same prompt rule scored on the held-out faces, prompted with their own labels: faces the
shipped classifier never trained on when `--real` is the shared CelebA/UTKFace split by the same
file-name hash. Features: `features.py`.
"""

from __future__ import annotations

import csv
import dataclasses
import json
import random
from pathlib import Path

import numpy as np

from facesmith.attributes import classifier as attr
from facesmith.errors import FacesmithError
from facesmith.evaluate import diversity, identity, memorization, realism
from facesmith.evaluate.candidates import (
    folder_images,
    generate_faces,
    generated_seeds,
    noise_images,
    real_expectations,
    reference_vectors,
)
from facesmith.evaluate.config import EvaluateConfig, is_image_folder
from facesmith.evaluate.faceset import read_faces
from facesmith.evaluate.faithfulness import expectations, faithfulness, share
from facesmith.evaluate.features import extract_features, feature_space
from facesmith.evaluate.uncertainty import bootstrap, wilson
from facesmith.progress import Progress
from facesmith.runtime import choose_device, prepare_out_dir

MIN_OUTSIDE = 100  # fewer outside faces: the reference's own (half of 100 already bounds at 2 %, not 1 %)

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
    from facesmith.data.faces import detect_faces, main_face
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
    train_features, train_pixels, train_identity = reference_vectors(config, train_ref, features, progress)
    with_identity = train_identity is not None  # dlib installed (identity.py); else two spaces
    outside = rest[len(train_ref) : len(train_ref) + config.calibration_distinct]
    distinct = None
    if len(outside) >= MIN_OUTSIDE:  # new faces to the reference: the false-flag budget's own measure
        vectors = reference_vectors(dataclasses.replace(config, audit="sample"), outside, features, progress)
        distinct = dict(zip(("feature", "pixel", "identity"), vectors, strict=True))
    thresholds = memorization.calibrate(
        lambda i: train_ref[i].image(), train_features, features, count=config.calibration_copies,
        seed=config.seed, train_pixels=train_pixels, train_identity=train_identity,
        identity=(lambda images: identity.identity_vectors(images)[0]) if with_identity else None,
        outside=distinct,
    )  # fmt: skip
    results: dict[str, dict] = {}
    audits, found, predictions = {}, {}, {}
    for name, images in sets.items():
        feats = features(images, f"features: {name}")
        fd = realism.frechet_distance(feats, held_features)
        fd_interval = bootstrap(
            realism.frechet_distance,
            feats,
            held_features,
            rounds=config.bootstrap,
            seed=config.seed,
            method="centered",
            floor=0.0,  # resampling biases FD upward (uncertainty.py)
        )
        kid, kid_std = realism.kernel_inception_distance(feats, held_features, seed=config.seed)
        inside_real, inside_fake = diversity.manifold_membership(held_features, feats, k=config.knn)
        faces_found, main_faces = [], []
        for i, image in enumerate(images):
            detected = detect_faces(image)
            faces_found.append(len(detected) == 1 and len(detected[0].landmarks) == 5)
            main_faces.append(main_face(detected, image.size))
            if progress:
                progress(f"faces: {name}", i + 1, len(images))
        predicted = classifier.predict(images)
        ids, with_face = identity.identity_vectors(images, main_faces) if with_identity else (None, None)
        audits[name] = memorization.audit(images, feats, train_pixels, train_features, thresholds,
                                          image_identity=ids, train_identity=train_identity,
                                          face_found=with_face)  # fmt: skip
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
            "nearest_identity_distance_median": (
                round(float(np.median(audits[name].identity_distance)), 4) if with_identity else None
            ),
            "near_copies_by_space": {s: int(hit.sum()) for s, hit in audits[name].flagged.items()},
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
            "nearest_identity_face": train_ref[int(model_audit.identity_index[i])].name if with_identity else "",
            "nearest_identity_distance": (
                round(float(model_audit.identity_distance[i]), 5) if with_identity else None
            ),
            "near_copy": bool(model_audit.copies[i]),
            "near_copy_spaces": "+".join(model_audit.spaces_flagging(i)),
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
            "identity_space": identity.SPACE
            if with_identity
            else (identity.NOT_INSTALLED if config.identity else "identity space: off (--identity adds it)"),
            "same_person_threshold": identity.SAME_PERSON,  # dlib's own, beside our calibrated one
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
