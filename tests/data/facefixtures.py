"""Helpers for the data tests: a fast prepare config and readers of what prepare wrote."""

from __future__ import annotations

import json
from pathlib import Path


def aligned_config(sources, out, **overrides):
    """A PrepareConfig for fast tests: --aligned, 32 px, one worker."""
    from facesmith.data.config import PrepareConfig

    values = {"sources": [str(s) for s in sources], "out_dir": str(out), "aligned": True, "size": 32}
    values["workers"] = 1
    return PrepareConfig(**{**values, **overrides})


def stored_rows(out: Path) -> list[dict]:
    """The manifest's lines as prepare stored them (raw JSON, to test the file format itself)."""
    return [json.loads(line) for line in (out / "metadata.jsonl").read_text().splitlines()]


def read_report(out: Path) -> dict:
    return json.loads((out / "report.json").read_text())
