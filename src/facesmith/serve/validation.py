"""The API's 422s: FastAPI's validation-error shape for every field a request gets wrong.

Owns `invalid` (a 422 naming one field, raised by the txt2img, img2img and ADetailer readers alike),
`echo` (what of the offending value a 422 may show) and `validation_error`, the handler that makes every
422, pydantic's or ours, `{"detail": [{"loc": ["body", FIELD], "msg": ..., "input": ...}]}`.
"""

from __future__ import annotations

import json
import math
from typing import Any

from fastapi import Request, Response
from fastapi.exceptions import RequestValidationError

# A 422 names the offending value; a long one is cut so a huge request does not come back in its answer.
ECHO_CHARS = 200


def invalid(field: str, message: str, value: Any = None) -> RequestValidationError:
    """A 422 naming `field`, in the same shape FastAPI gives pydantic's errors."""
    return RequestValidationError(
        [{"type": "value_error", "loc": ("body", field), "msg": message, "input": echo(value)}]
    )


def echo(value: Any) -> Any:
    """`value` as a 422 may show it: JSON-safe (no NaN, no unpaired surrogate) and at most ECHO_CHARS long."""
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    if isinstance(value, str):
        text = value.encode("utf-8", "backslashreplace").decode("utf-8")
        return text if len(text) <= ECHO_CHARS else text[:ECHO_CHARS] + f"... ({len(value)} characters)"
    if isinstance(value, (list, tuple, dict)):
        return echo(json.dumps(value, default=str))
    return value


async def validation_error(request: Request, error: RequestValidationError) -> Response:
    """FastAPI's 422 for invalid requests, with every echoed input made safe by `echo`.

    FastAPI's own handler echoes the whole input: a NaN or an unpaired surrogate then cannot be written as
    JSON (a 500), and a 10 MB prompt comes back whole.
    """
    from fastapi.responses import JSONResponse

    detail = [
        {**e, "input": echo(e.get("input"))} | ({"ctx": echo(e["ctx"])} if "ctx" in e else {})
        for e in error.errors()
    ]
    return JSONResponse({"detail": detail}, status_code=422)
