"""Settings as `--key value` flags: `facesmith train` takes every TrainConfig field this way.

Values are read by the dataclass field's type (numbers, true/false for booleans, "none" for optional
fields, comma lists), so a flag and the same key in a TOML mean the same; `flag_summary` lists every
setting with its default for `--help`. Why not Typer options: TrainConfig has ~90 fields, and one option
per field would be a second copy of the dataclass to keep in step.
"""

from __future__ import annotations

import dataclasses
from typing import Any

from facesmith.config import StageConfig
from facesmith.errors import FacesmithError


def parse_flags(cls: type[StageConfig], flags: list[str]) -> dict[str, Any]:
    """{field: value} for `--key value` / `--key=value` / `--flag` / `--no-flag` over `cls`'s fields.

    Keys may use - or _. Values are read by the field's type: numbers, true/false for booleans, "none"
    for optional fields (so a returned None is a given value, not a missing one).
    """
    fields = {f.name: f for f in dataclasses.fields(cls)}
    hint = f"; see `{cls.settings_help}` for the keys" if cls.settings_help else ""
    values: dict[str, Any] = {}
    i = 0
    while i < len(flags):
        flag = flags[i]
        if not flag.startswith("--"):
            raise FacesmithError(f"unexpected argument {flag!r}: settings are given as --key value")
        key, _, inline = flag[2:].partition("=")
        key = key.replace("-", "_")
        negated = key.startswith("no_") and key[3:] in fields and fields[key[3:]].type == "bool"
        name = key[3:] if negated else key
        if name not in fields:
            raise FacesmithError(f"unknown setting --{flag[2:]}{hint}")
        kind = str(fields[name].type)
        if kind == "bool" and not inline and (i + 1 == len(flags) or flags[i + 1].startswith("--")):
            values[name] = not negated
            i += 1
            continue
        if inline:
            raw = inline
        elif i + 1 < len(flags):
            raw, i = flags[i + 1], i + 1
        else:
            raise FacesmithError(f"--{flag[2:]} needs a value")
        values[name] = _parse_value(name, kind, raw)
        i += 1
    return values


def flag_summary(cls: type[StageConfig]) -> str:
    """Every setting of `cls` as `--key default`, for a command's --help."""
    defaults = cls()
    return "  ".join(
        f"--{f.name.replace('_', '-')} {getattr(defaults, f.name)!s}" for f in dataclasses.fields(cls)
    )


def _parse_value(name: str, kind: str, raw: str) -> Any:
    if "None" in kind and raw.lower() == "none":
        return None
    try:
        if kind.startswith("bool"):
            if raw.lower() not in ("true", "false", "1", "0", "yes", "no"):
                raise ValueError(raw)
            return raw.lower() in ("true", "1", "yes")
        if kind.startswith("int"):
            return int(raw)
        if kind.startswith("float"):
            return float(raw)
        if kind.startswith("list"):  # --loras a.safetensors,b.safetensors
            return [item for item in raw.split(",") if item]
    except ValueError:
        raise FacesmithError(f"--{name.replace('_', '-')} {raw!r} is not a valid {kind.split()[0]}") from None
    return raw
