"""The evaluation report: report.md, and the PNGs it shows (labelled image grid, closest pairs,
faithfulness bars).

Owns presentation only: every number comes from `metrics.json`'s dictionary as `evaluation.py` built it,
with its 95 % interval. Every realism, diversity and memorization number is printed with its feature
space. Faithfulness is shown as "asked" and "ruled out" apart, beside the classifier's held-out TPR/TNR
and the ceiling (the same rule on real held-out faces). Plots are drawn with Pillow (no plotting library
is a dependency).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path

from PIL import Image, ImageDraw

from facesmith.evaluate.memorization import Audit, closest_pairs

SETS = (("model", "model"), ("real", "real train (upper bound)"), ("noise", "noise (lower bound)"))
COLOURS = {"model": (52, 101, 164), "ceiling": (78, 154, 6), "noise": (186, 189, 182)}
LABEL = 26  # pixels under each grid image: two lines of text


def image_grid(
    images: Sequence[Image.Image],
    columns: int = 8,
    side: int = 128,
    labels: Sequence[str] | None = None,
) -> Image.Image:
    """Images in rows of `columns`; with `labels`, each image's label (prompt, seed) under it."""
    rows = max(1, -(-len(images) // columns))
    cell = side + (LABEL if labels is not None else 0)
    sheet = Image.new("RGB", (columns * side, rows * cell), "white")
    draw = ImageDraw.Draw(sheet)
    chars = max(8, side // 6)
    for i, image in enumerate(images):
        x, y = (i % columns) * side, (i // columns) * cell
        sheet.paste(image.convert("RGB").resize((side, side)), (x, y))
        if labels is not None:
            text = labels[i]
            lines = [text[:chars], text[chars : 2 * chars - 1] + ("~" if len(text) > 2 * chars - 1 else "")]
            for j, line in enumerate(lines):
                draw.text((x + 2, y + side + 1 + 12 * j), line, fill="black")
    return sheet


def _overall(entry: dict) -> float | None:
    sides = [s for s in entry.values() if s["images"]]
    if not sides:
        return None
    return sum(s["accuracy"] * s["images"] for s in sides) / sum(s["images"] for s in sides)


def faithfulness_plot(metrics: dict, width: int = 900) -> Image.Image:
    """Horizontal bars with 95 % whiskers: per attribute and side (asked / ruled out), the share of faces
    that match the prompt, for the model, the ceiling (real held-out faces) and noise. Asked and ruled
    out are never pooled: pooled, the real bar showed label prevalence."""
    sources = {
        "model": metrics["sets"]["model"]["faithfulness"],
        "ceiling": metrics["ceiling"]["faithfulness"],
        "noise": metrics["sets"]["noise"]["faithfulness"],
    }
    rows = sorted({(k, side) for f in sources.values() for k, sides in f.items() for side in sides})
    row, left, bar = 36, 200, 10
    plot = Image.new("RGB", (width, row * len(rows) + 50), "white")
    draw = ImageDraw.Draw(plot)
    span = width - left - 60
    for x in range(0, 11, 2):
        px = left + span * x // 10
        draw.line((px, 20, px, row * len(rows) + 20), fill=(225, 225, 225))
        draw.text((px - 8, row * len(rows) + 24), f"{x / 10:.1f}", fill="black")
    for i, (name, side) in enumerate(rows):
        y = 22 + i * row
        draw.text((4, y + 10), f"{name} {side.replace('_', ' ')}", fill="black")
        for j, (key, found) in enumerate(sources.items()):
            entry = found.get(name, {}).get(side)
            if entry:
                top, bottom = y + j * bar, y + (j + 1) * bar - 2
                draw.rectangle((left, top, left + span * entry["accuracy"], bottom), fill=COLOURS[key])
                low, high = entry.get("interval", (entry["accuracy"],) * 2)
                middle = (top + bottom) // 2
                draw.line((left + span * low, middle, left + span * high, middle), fill="black")
    for j, (key, label) in enumerate(
        (("model", "model"), ("ceiling", "real held-out (ceiling)"), ("noise", "noise"))
    ):
        draw.rectangle((left + j * 220, 4, left + j * 220 + 10, 14), fill=COLOURS[key])
        draw.text((left + j * 220 + 14, 3), label, fill="black")
    return plot


def _cell(entry: dict | None) -> str:
    if not entry:
        return "-"
    low, high = entry.get("interval", (None, None))
    ci = f" [{low:.2f}, {high:.2f}]" if low is not None else ""
    return f"{entry['accuracy']:.2f}{ci} (n={entry['images']})"


def _range(pair: Sequence[float] | None, digits: int) -> str:
    return "" if not pair else f" [{pair[0]:.{digits}f}, {pair[1]:.{digits}f}]"


def _classifier_rate(entry: dict | None, side: str) -> str:
    """The classifier's held-out TPR beside an "asked" row, TNR beside "ruled out"; categories: balanced
    accuracy."""
    if not entry:
        return "-"
    if "tpr" in entry:
        rate = entry["tpr"] if side == "asked" else entry["tnr"]
        return "-" if rate is None else f"{'TPR' if side == 'asked' else 'TNR'} {rate:.2f}"
    return f"bal. acc. {entry['balanced_accuracy']:.2f}" if "balanced_accuracy" in entry else "-"


def _distinct_kind(t: dict) -> str:
    if t.get("distinct_source") == "outside":
        return "training faces outside the reference, at their nearest reference face"
    return "reference faces at their nearest other reference face"


def _bound(t: dict) -> str:
    bound = t.get("expected_flagged")
    if bound is None:
        return "-"
    text = f"{bound:.1%}"
    if t.get("distinct_source") != "outside":
        text += " (looser in practice: the closest reference faces come in mutual pairs)"
    return text


def _identity_line(memo: dict, t: dict) -> str:
    """The identity space's threshold and every space's calibration catch / false-flag rates, or that
    it is not installed."""
    per = "; ".join(
        f"{name} alone catches {v['copies_caught']:.0%} and flags {v['distinct_flagged']:.1%}"
        for name, v in t.get("spaces", {}).items()
    )
    joint = f" Jointly: {t['copies_caught']:.0%} caught, {t['distinct_flagged']:.1%} flagged."
    if t.get("identity") is None:
        return f"{memo.get('identity_space', '')}. Calibration per space: {per}.{joint}"
    return (
        f"Identity space ({memo['identity_space']}, Euclidean distance of face descriptors): threshold "
        f"{t['identity']:.4f}, calibrated with the other two; dlib's own same-person threshold is "
        f"{memo['same_person_threshold']} ({t['same_person']:.1%} of the distinct faces' nearest other face is "
        f"within it: other photos of one person, or look-alikes). Calibration per space: {per}.{joint}"
    )


def write_report(
    out: Path,
    metrics: dict,
    generated: Sequence[Image.Image],
    prompts: Sequence[str],
    seeds: Sequence[int | None],
    train_image: Callable[[int], Image.Image],
    audit: Audit,
) -> Path:
    labels = [f"{p} | seed {s}" if s is not None else p for p, s in zip(prompts, seeds, strict=True)]
    image_grid(generated[:64], labels=labels[:64]).save(out / "grid.png")
    closest_pairs(generated, train_image, audit).save(out / "closest-pairs.png")
    faithfulness_plot(metrics).save(out / "faithfulness.png")
    space = metrics["feature_space"]
    sets = metrics["sets"]
    counts = metrics["counts"]
    model = metrics["model"]
    memo = metrics["memorization"]
    lines = [
        "# facesmith evaluation",
        "",
        f"- Model: `{model['name']}`"
        + (f" (hash {model['hash']})" if model.get("hash") else "")
        + (f", LoRAs {', '.join(model['loras'])}" if model.get("loras") else "")
        + (
            ", sampled with {sampler}, CFG {cfg:g}, {steps} steps (engine {engine})".format(
                **model["sampling"]
            )
            if model.get("sampling")
            else ""
        ),
        f"- Real faces: `{metrics['real']}`: {counts['held_out_reference']} held-out faces as the reference, "
        f"{counts['training_reference']} training faces for the memorization audit "
        f"({memo['audited_share']:.1%} of the {memo['training_faces']} training faces; `--audit all` audits every one).",
        f"- Every set has {counts['candidates']} images. Feature space of FD, KID, precision/recall, diversity "
        f"and feature distances: **{space}** (not comparable to Inception FID).",
        "- Intervals are 95 %: bootstrap over faces for FD and precision/recall, Wilson for shares; KID's ± is "
        "the standard deviation over subsets of half the smaller set.",
        "",
        f"## Realism, coverage, diversity ({space})",
        "",
        "| set | FD | KID x1000 | precision | recall | diversity | face rate | near-copies |",
        "| --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for key, label in SETS:
        s = sets[key]
        lines.append(
            f"| {label} | {s['fd']:.2f}{_range(s.get('fd_interval'), 2)} | {1000 * s['kid']:.2f} ± {1000 * s['kid_std']:.2f} "
            f"| {s['precision']:.3f}{_range(s.get('precision_interval'), 3)} | {s['recall']:.3f}{_range(s.get('recall_interval'), 3)} "
            f"| {s['diversity']:.2f} | {s['face_rate']:.3f}{_range(s.get('face_rate_interval'), 3)} | {s['near_copy_share']:.3f} |"
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
        "(asked) or ruled out (ruled out), with its Wilson 95 % interval and n. The ceiling is the same rule on the "
        f"{metrics['ceiling']['faces']} real held-out faces, each prompted with its own labels: what a perfect model "
        "would score through this classifier. Beside each row, the classifier's held-out TPR (asked) or TNR "
        "(ruled out), from its own held-out faces. Noise is judged against the model's prompts.",
        "",
        "| attribute | side | model | ceiling (real held-out) | noise | classifier |",
        "| --- | --- | --- | --- | --- | --- |",
    ]
    shipped = metrics["classifier"]["held_out_shipped"] or metrics["classifier"]["held_out_here"]
    ceiling = metrics["ceiling"]["faithfulness"]
    names = sorted({k for key in ("model", "noise") for k in sets[key]["faithfulness"]} | set(ceiling))
    for name in names:
        m, c, z = (
            sets["model"]["faithfulness"].get(name, {}),
            ceiling.get(name, {}),
            sets["noise"]["faithfulness"].get(name, {}),
        )
        for side in ("asked", "ruled_out"):
            if side in m or side in c:
                lines.append(
                    f"| {name} | {side.replace('_', ' ')} | {_cell(m.get(side))} | {_cell(c.get(side))} "
                    f"| {_cell(z.get(side))} | {_classifier_rate(shipped.get(name), side)} |"
                )
    t = metrics["memorization_thresholds"]
    lines += [
        "",
        "![faithfulness](faithfulness.png)",
        "",
        "## Per prompt",
        "",
        "| prompt | images | face rate | faithfulness (all checked attributes) |",
        "| --- | --- | --- | --- |",
    ]
    for row in metrics["per_prompt"]:
        lines.append(
            f"| {row['prompt'] or '(none)'} | {row['face_rate']['images']} | {_cell(row['face_rate'])} "
            f"| {_cell(row['faithfulness'])} |"
        )
    lines += [
        "",
        "## Memorization",
        "",
        f"Nearest training face of every image, in feature space ({space}, cosine distance) and pixel space "
        f"(RMS difference of 32x32 RGB), against {counts['training_reference']} training faces "
        f"({memo['audited_share']:.1%} of the training set). Near-copy thresholds are calibrated together on "
        f"{t['copies']} edited training faces (JPEG, crop, zoom out, downscale, rotation, brightness, blur; "
        f"the copies) and {t['distinct']} {_distinct_kind(t)} (distinct faces), for a budget of "
        f"{t['budget']:.0%} false flags in all spaces together: half the distinct faces set the thresholds' "
        f"shape, the other half one common scale (split conformal), so a new face is flagged with probability "
        f"at most {_bound(t)}. Thresholds: cosine {t['feature']:.4f}, pixel RMS {t['pixel']:.4f}. On the "
        f"calibration set they catch {t['copies_caught']:.0%} of the edited copies and flag "
        f"{t['distinct_flagged']:.1%} of the distinct faces; the real baseline below is the check on new "
        "faces. A face is a near-copy when any distance is at or below its threshold. Every image's nearest "
        "training face and distances are in `images.csv`.",
        "",
        _identity_line(memo, t),
        "",
        "| set | near-copy share | median nearest cosine distance | median nearest pixel RMS "
        "| median nearest identity distance |",
        "| --- | --- | --- | --- | --- |",
    ]
    for key, label in SETS:
        s = sets[key]
        ident = s.get("nearest_identity_distance_median")
        lines.append(
            f"| {label} | {s['near_copy_share']:.3f} | {s['nearest_feature_distance_median']:.4f} "
            f"| {s['nearest_pixel_distance_median']:.4f} | {'-' if ident is None else f'{ident:.4f}'} |"
        )
    copies = [row for row in metrics["images"] if row["near_copy"]]
    lines += [
        "",
        f"Near-copies among the model's {len(metrics['images'])} images: {len(copies)}"
        + ("." if not copies else ":"),
    ]
    if copies:
        lines += ["", "| image | nearest training face (feature space) | flagged in |", "| --- | --- | --- |"]
        lines += [f"| {r['file']} | {r['nearest_training_face']} | {r['near_copy_spaces']} |" for r in copies]
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
        "Prompt and seed under each image; one row per image in `images.csv` (prompt, seed, face found, "
        "predicted attributes, nearest training face and distance).",
        "",
        "![grid](grid.png)",
        "",
        "Reproduce with `facesmith evaluate --config evaluate.toml`; all numbers are in `metrics.json`.",
    ]
    path = out / "report.md"
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path
