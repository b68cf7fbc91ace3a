"""The evaluation report: report.md, and the PNGs it shows (image grid, closest pairs, faithfulness bars).

Owns presentation only: every number comes from `metrics.json`'s dictionary as `evaluation.py` built it.
Every realism, diversity and memorization number is printed with its feature space. Plots are drawn with
Pillow (no plotting library is a dependency).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from PIL import Image, ImageDraw

from facesmith.evaluate.memorization import Audit, closest_pairs

SETS = (("model", "model"), ("real", "real train (upper bound)"), ("noise", "noise (lower bound)"))
COLOURS = {"model": (52, 101, 164), "real": (78, 154, 6), "noise": (186, 189, 182)}


def image_grid(images: Sequence[Image.Image], columns: int = 8, side: int = 128) -> Image.Image:
    rows = max(1, -(-len(images) // columns))
    sheet = Image.new("RGB", (columns * side, rows * side), "white")
    for i, image in enumerate(images):
        sheet.paste(image.convert("RGB").resize((side, side)), ((i % columns) * side, (i // columns) * side))
    return sheet


def _overall(entry: dict) -> float | None:
    sides = [s for s in entry.values() if s["images"]]
    if not sides:
        return None
    return sum(s["accuracy"] * s["images"] for s in sides) / sum(s["images"] for s in sides)


def faithfulness_plot(metrics: dict, width: int = 900) -> Image.Image:
    """Horizontal bars: per attribute, the share of faces that match the prompt, for each set."""
    names = sorted({k for name, _ in SETS for k in metrics["sets"][name]["faithfulness"]})
    row, left, bar = 36, 160, 10
    plot = Image.new("RGB", (width, row * len(names) + 50), "white")
    draw = ImageDraw.Draw(plot)
    span = width - left - 60
    for x in range(0, 11, 2):
        px = left + span * x // 10
        draw.line((px, 20, px, row * len(names) + 20), fill=(225, 225, 225))
        draw.text((px - 8, row * len(names) + 24), f"{x / 10:.1f}", fill="black")
    for i, name in enumerate(names):
        y = 22 + i * row
        draw.text((4, y + 10), name, fill="black")
        for j, (key, _) in enumerate(SETS):
            value = _overall(metrics["sets"][key]["faithfulness"].get(name, {}))
            if value is not None:
                draw.rectangle(
                    (left, y + j * bar, left + span * value, y + (j + 1) * bar - 2), fill=COLOURS[key]
                )
    for j, (key, label) in enumerate(SETS):
        draw.rectangle((left + j * 200, 4, left + j * 200 + 10, 14), fill=COLOURS[key])
        draw.text((left + j * 200 + 14, 3), label, fill="black")
    return plot


def _cell(entry: dict | None) -> str:
    if not entry:
        return "-"
    return f"{entry['accuracy']:.2f} ({entry['images']})"


def _classifier_cell(entry: dict | None) -> str:
    return "-" if entry is None else f"{entry['accuracy']:.3f} ({entry['count']})"


def write_report(
    out: Path,
    metrics: dict,
    generated: Sequence[Image.Image],
    prompts: Sequence[str],
    train_images: Sequence[Image.Image],
    audit: Audit,
) -> Path:
    image_grid(generated[:64]).save(out / "grid.png")
    closest_pairs(generated, train_images, audit).save(out / "closest-pairs.png")
    faithfulness_plot(metrics).save(out / "faithfulness.png")
    space = metrics["feature_space"]
    sets = metrics["sets"]
    counts = metrics["counts"]
    model = metrics["model"]
    lines = [
        "# facesmith evaluation",
        "",
        f"- Model: `{model['name']}`"
        + (f" (hash {model['hash']})" if model.get("hash") else "")
        + (
            ", sampled with {sampler}, CFG {cfg:g}, {steps} steps (engine {engine})".format(
                **model["sampling"]
            )
            if model.get("sampling")
            else ""
        ),
        f"- Real faces: `{metrics['real']}`: {counts['held_out_reference']} held-out faces as the reference, "
        f"{counts['training_reference']} training faces for the memorization audit.",
        f"- Every set has {counts['candidates']} images. Feature space of FD, KID, precision/recall, diversity "
        f"and feature distances: **{space}** (not comparable to Inception FID).",
        "",
        f"## Realism, coverage, diversity ({space})",
        "",
        "| set | FD | KID x1000 | precision | recall | diversity | face rate | near-copies |",
        "| --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for key, label in SETS:
        s = sets[key]
        lines.append(
            f"| {label} | {s['fd']:.2f} | {1000 * s['kid']:.2f} ± {1000 * s['kid_std']:.2f} | {s['precision']:.3f} "
            f"| {s['recall']:.3f} | {s['diversity']:.2f} | {s['face_rate']:.3f} | {s['near_copy_share']:.3f} |"
        )
    lines += [
        "",
        f"Diversity is the mean pairwise feature distance; the held-out real faces score "
        f"{metrics['reference']['diversity']:.2f}. Precision/recall: k-NN manifolds (Kynkäänniemi et al. 2019). "
        "Face rate: share of images where MTCNN finds exactly one face with five landmarks.",
        "",
        "## Attribute faithfulness",
        "",
        "Share of images whose attribute, as the attribute classifier sees it, matches what the prompt asked for "
        "(asked) or ruled out (ruled out); images in brackets. The real baseline 'asks for' each face's own labels, "
        "so its column is the classifier's accuracy on those faces; noise is judged against the model's prompts. "
        "Classifier accuracy is on the held-out real faces of this evaluation (majority-class rate beside it).",
        "",
        "| attribute | model asked | model ruled out | real asked | real ruled out | noise | classifier acc. | majority |",
        "| --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    here = metrics["classifier"]["held_out_here"]
    names = sorted({k for key, _ in SETS for k in sets[key]["faithfulness"]})
    for name in names:
        m, r, z = (sets[key]["faithfulness"].get(name, {}) for key in ("model", "real", "noise"))
        noise = _overall(z)
        acc = here.get(name)
        lines.append(
            f"| {name} | {_cell(m.get('asked'))} | {_cell(m.get('ruled_out'))} | {_cell(r.get('asked'))} "
            f"| {_cell(r.get('ruled_out'))} | {'-' if noise is None else f'{noise:.2f}'} "
            f"| {_classifier_cell(acc)} | {'-' if acc is None else format(acc['majority'], '.3f')} |"
        )
    t = metrics["memorization_thresholds"]
    lines += [
        "",
        "![faithfulness](faithfulness.png)",
        "",
        "## Memorization",
        "",
        f"Nearest training face of every image, in feature space ({space}, cosine distance) and pixel space "
        f"(RMS difference of 32x32 RGB). Near-copy thresholds separate {t['copies']} lightly edited training "
        "faces (JPEG, crop, rotation, brightness, blur; the copies) from each one's nearest other training face "
        f"(distinct faces), flagging at most 5% of the distinct ones: cosine {t['feature']:.4f}, pixel RMS {t['pixel']:.4f}. On that calibration set "
        f"they catch {t['copies_caught']:.0%} of the edited copies and flag {t['distinct_flagged']:.0%} of the "
        "distinct faces. A face is a near-copy when either distance is at or below its threshold.",
        "",
        "| set | near-copy share | median nearest cosine distance | median nearest pixel RMS |",
        "| --- | --- | --- | --- |",
    ]
    for key, label in SETS:
        s = sets[key]
        lines.append(
            f"| {label} | {s['near_copy_share']:.3f} | {s['nearest_feature_distance_median']:.4f} "
            f"| {s['nearest_pixel_distance_median']:.4f} |"
        )
    lines += [
        "",
        "The real baseline's near-copy share is the false-positive rate on distinct real faces.",
        "",
        "Closest pairs (top: generated, bottom: nearest training face):",
        "",
        "![closest pairs](closest-pairs.png)",
        "",
        "## Generated images",
        "",
        "![grid](grid.png)",
        "",
        "Prompts, in grid order: " + "; ".join(f"{i}: {p}" for i, p in enumerate(prompts[:64])),
        "",
        "Reproduce with `facesmith evaluate --config evaluate.toml`; all numbers are in `metrics.json`.",
    ]
    path = out / "report.md"
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path
