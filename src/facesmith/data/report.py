"""The prepare report: what was kept, what was rejected and why, the attribute balance, sample captions.

Owns: ``DIR/report.json`` (machine-readable counts), ``DIR/report.md`` (the same for people) and
``DIR/contact_sheet.png`` (sample faces with their captions). The decisions themselves are ``prepare``'s.
"""

from __future__ import annotations

import json
import textwrap
from collections import Counter
from pathlib import Path

from PIL import Image, ImageDraw, ImageFont

from facesmith.attributes.schema import CELEBA_ATTRIBUTES, age_group
from facesmith.data.config import PrepareConfig
from facesmith.data.manifest import ManifestRow
from facesmith.data.sources import Source, SourceItem

SHEET_FACES = 16


def reason_key(reason: str) -> str:
    """The report's category of a rejection: its reason without the details in parentheses."""
    return reason.split(" (")[0]


# What to change when most rejections share one cause (reason_key -> advice), for the summary line.
ADVICE = {
    "crop mostly outside the photo": "the faces fill the photos (a pre-cropped set): use --aligned",
    "too small": "the faces are too small for --size at max_upscale: use a smaller --size",
    "no face": "no face was found: check the SOURCE, or use --aligned if its photos are face crops",
    "face score below min_score": "the detector is unsure of the faces: lower min_score (prepare.toml)",
    "blurry": "the faces are blurry: lower min_sharpness (prepare.toml) if they are good enough",
    "too many pixels": "the photos are over max_pixels: raise max_pixels (prepare.toml)",
    "missing from the attribute table": "the attribute table names other files: check it, or use --format folder",
    "file name has no age_gender_race_ labels": "the names are not UTKFace's: use --format folder",
    "missing from the metadata file": "metadata.jsonl names other files: check it, or use --format folder",
    "not an image": "the SOURCE holds files that are not photos",
    "corrupt or truncated": "the photos are damaged: copy them again",
}


def advice(rejected: dict[str, int], total: int) -> str | None:
    """What to do when one cause accounts for most (over half) of all images, else None."""
    if not rejected:
        return None
    reason, count = max(rejected.items(), key=lambda kv: kv[1])
    if count * 2 <= total or reason not in ADVICE:
        return None
    return f"{count} of {total} rejected as {reason}: {ADVICE[reason]}"


def summarize(
    sources: list[Source],
    items: list[SourceItem],
    done: dict[int, dict],
    rows: list[ManifestRow],
    wall_s: float,
    extra_notes: list[str] | None = None,
) -> dict:
    rejected = Counter(reason_key(r["rejected"]) for r in done.values() if "rejected" in r)
    per_source = Counter(row.source for row in rows)
    attrs = [row.attributes for row in rows]
    balance = {}
    for key in CELEBA_ATTRIBUTES:
        known = [a[key] for a in attrs if key in a]
        if known:
            balance[key] = {"known": len(known), "positive": int(sum(known))}
    ages = Counter(age_group(int(a["age"])) for a in attrs if "age" in a)
    ethnicities = Counter(a["ethnicity"] for a in attrs if "ethnicity" in a)
    names = Counter(item.path.name for item in items)
    notes = [note for source in sources for note in source.notes]
    clashes = sum(1 for count in names.values() if count > 1)
    if clashes and len(sources) > 1:
        notes.append(
            f"{clashes} file names occur more than once across sources; output names are numbered, so none clash"
        )
    notes += extra_notes or []
    generic = sum(row.caption_from == "generic" for row in rows)
    if generic:
        notes.append(f"{generic} images have no labels or caption and got the generic caption")
    return {
        "total": len(items),
        "kept": len(rows),
        "rejected": dict(sorted(rejected.items(), key=lambda kv: -kv[1])),
        "advice": advice(rejected, len(items)),
        "splits": dict(Counter(row.split for row in rows)),
        "sources": [
            {
                "path": str(s.root),
                "format": s.format,
                "images": len(s.items),
                "kept": per_source_kept(s, rows),
            }
            for s in sources
        ],
        "kept_by_source": dict(per_source),
        "captions_from": dict(Counter(row.caption_from for row in rows)),
        "attribute_balance": balance,
        "age_groups": dict(ages),
        "ethnicities": dict(ethnicities),
        "notes": notes,
        "wall_s": round(wall_s, 1),
        "images_per_s": round(len(items) / wall_s, 2) if wall_s > 0 else None,
    }


def per_source_kept(source: Source, rows: list[ManifestRow]) -> int:
    root = str(source.root).rstrip("/\\") + "/"
    return sum(1 for row in rows if row.source_file.replace("\\", "/").startswith(root.replace("\\", "/")))


def write_report(
    out: Path,
    config: PrepareConfig,
    sources: list[Source],
    items: list[SourceItem],
    done: dict[int, dict],
    rows: list[ManifestRow],
    wall_s: float,
    notes: list[str] | None = None,
) -> dict:
    summary = summarize(sources, items, done, rows, wall_s, notes)
    (out / "report.json").write_text(json.dumps(summary, indent=2) + "\n", encoding="utf-8")
    samples = rows[:: max(1, len(rows) // SHEET_FACES)][:SHEET_FACES]
    if samples:
        contact_sheet(out, samples).save(out / "contact_sheet.png")
    # backslashreplace: a source path that is not valid UTF-8 (PEP 383 surrogates) is shown escaped.
    markdown = _markdown(summary, config, samples)
    (out / "report.md").write_text(markdown, encoding="utf-8", errors="backslashreplace")
    return summary


def _markdown(summary: dict, config: PrepareConfig, samples: list[dict]) -> str:
    lines = [
        "# facesmith prepare report",
        "",
        f"{summary['kept']} of {summary['total']} images kept at {config.size} px "
        f"({'--aligned: centre crop' if config.aligned else 'MTCNN + FFHQ alignment'}), "
        f"in {summary['wall_s']} s ({summary['images_per_s']} images/s). Settings: `prepare.toml`.",
        "",
        *([f"**{summary['advice']}.**", ""] if summary["advice"] else []),
        "| source | format | images | kept |",
        "| --- | --- | ---: | ---: |",
        *(f"| {s['path']} | {s['format']} | {s['images']} | {s['kept']} |" for s in summary["sources"]),
        "",
        "## Rejected",
        "",
        "| reason | images |",
        "| --- | ---: |",
        *(f"| {reason} | {n} |" for reason, n in summary["rejected"].items()),
        "",
        f"Splits: {', '.join(f'{k} {v}' for k, v in sorted(summary['splits'].items()))}. "
        f"Captions from: {', '.join(f'{k} {v}' for k, v in sorted(summary['captions_from'].items()))}.",
        "",
    ]
    if summary["notes"]:
        lines += ["## Notes", "", *(f"- {note}" for note in summary["notes"]), ""]
    if summary["attribute_balance"] or summary["age_groups"] or summary["ethnicities"]:
        lines += ["## Attribute balance (kept images)", "", "| attribute | labelled | positive | share |"]
        lines += ["| --- | ---: | ---: | ---: |"]
        for key, b in summary["attribute_balance"].items():
            lines.append(f"| {key} | {b['known']} | {b['positive']} | {b['positive'] / b['known']:.1%} |")
        for name, counter in (("age group", summary["age_groups"]), ("ethnicity", summary["ethnicities"])):
            total = sum(counter.values())
            for value, n in sorted(counter.items(), key=lambda kv: -kv[1]):
                lines.append(f"| {name}: {value} | {total} | {n} | {n / total:.1%} |")
        lines.append("")
    if samples:
        lines += ["## Samples", "", "![contact sheet](contact_sheet.png)", ""]
        lines += [f"- `{row.file_name}`: {row.text}" for row in samples]
        lines.append("")
    return "\n".join(lines)


def contact_sheet(out: Path, rows: list[ManifestRow], tile: int = 192, columns: int = 4) -> Image.Image:
    """Faces in a grid, each with its caption wrapped beneath it."""
    font = ImageFont.load_default()
    text_h = 64
    count = len(rows)
    grid_rows = (count + columns - 1) // columns
    sheet = Image.new("RGB", (columns * tile, grid_rows * (tile + text_h)), "white")
    draw = ImageDraw.Draw(sheet)
    for n, row in enumerate(rows):
        x, y = (n % columns) * tile, (n // columns) * (tile + text_h)
        with Image.open(out / row.file_name) as face:
            sheet.paste(face.convert("RGB").resize((tile, tile), Image.Resampling.LANCZOS), (x, y))
        text = "\n".join(textwrap.wrap(row.text, width=tile // 6)[:5])
        draw.multiline_text((x + 3, y + tile + 2), text, fill="black", font=font, spacing=1)
    return sheet
