"""ADetailer's request shape on the API: `alwayson_scripts: {"ADetailer": {"args": [...]}}`.

Owns reading ADetailer's script arguments (Bing-su/adetailer, `adetailer/args.py` ADetailerArgs, as
A1111 clients such as webuiapi send them: `[enable, {ad_model, ad_prompt, ...}]`, or with
`skip_img2img` as a second boolean) into `GenerateConfig`'s `detail_*` fields, which `detailer.py` runs.
The first enabled tab whose `ad_model` is not "None" is the pass; facesmith's detector is MTCNN, so any
face model (face_yolov8n.pt, mediapipe_face_full, ...) is taken as a face pass and other models (hands,
people) are a 422. The `ad_*` settings facesmith has no use for (ControlNet, another checkpoint or VAE,
offsets) are ignored, as A1111 ignores fields it does not know. Other always-on scripts are ignored too.
A `<lora:name:weight>` tag in `ad_prompt` names one of the server's LoRAs (looked up by name, never as a
path, as txt2img's prompt tags are) for the face pass only (`detail_lora`); one it does not offer is a 422
naming it.
"""

from __future__ import annotations

import math
from typing import Any

from facesmith.serve.validation import invalid

FIELD = "alwayson_scripts"

# ad_* argument -> (GenerateConfig field, type); ADetailer's defaults apply where a request leaves one out.
_PLAIN = {
    "ad_prompt": ("detail_prompt", str),
    "ad_negative_prompt": ("detail_negative", str),
    "ad_confidence": ("detail_confidence", float),
    "ad_mask_k_largest": ("detail_max_faces", int),
    "ad_dilate_erode": ("detail_dilate", int),
    "ad_mask_blur": ("detail_mask_blur", int),
    "ad_denoising_strength": ("detail_strength", float),
    "ad_inpaint_only_masked_padding": ("detail_padding", int),
}
# ADetailer's own defaults (args.py), where they differ from facesmith's GenerateConfig defaults.
ADETAILER_DEFAULTS = {"detail_confidence": 0.3}


def detailer_settings(
    scripts: dict[str, Any] | None, max_size: int, max_steps: int, loras: dict | None = None
) -> dict[str, Any]:
    """GenerateConfig `detail_*` fields for the request's ADetailer script, {} when it asks for none;
    a 422 naming `alwayson_scripts` for arguments facesmith cannot run. `loras`: the server's LoRAs
    (`jobs.lora_names`) an ad_prompt tag may name."""
    entry = next((v for k, v in (scripts or {}).items() if k.lower() == "adetailer"), None)
    if entry is None:
        return {}
    args = entry.get("args") if isinstance(entry, dict) else None
    if not isinstance(args, list):
        raise invalid(FIELD, 'ADetailer takes {"args": [true, {"ad_model": "face_yolov8n.pt", ...}]}', entry)
    flags = [a for a in args if isinstance(a, bool)]
    if flags and not flags[0]:  # [False, ...]: ADetailer off, as webuiapi sends when it is installed
        return {}
    tabs = [a for a in args if isinstance(a, dict) and a.get("ad_tab_enable", True)]
    tabs = [t for t in tabs if str(t.get("ad_model", "None")) != "None"]
    if not tabs:
        return {}
    tab = tabs[0]
    model = str(tab["ad_model"])
    if "face" not in model.lower():
        raise invalid(FIELD, f"ad_model {model}: facesmith's detailer finds faces (MTCNN) only", model)
    settings: dict[str, Any] = {"detail_faces": True, **ADETAILER_DEFAULTS}
    for key, (name, kind) in _PLAIN.items():
        if key in tab and tab[key] is not None:
            settings[name] = _read(key, tab[key], kind)
    if "<lora:" in settings.get("detail_prompt", ""):
        settings.update(_face_lora(settings["detail_prompt"], loras or {}))
    if tab.get("ad_use_inpaint_width_height"):
        width, height = (_read(k, tab.get(k, 512), int) for k in ("ad_inpaint_width", "ad_inpaint_height"))
        if width != height:
            raise invalid(
                FIELD, f"ad_inpaint_width {width} and height {height}: the face crop is square", tab
            )
        if not 0 < width <= max_size or width % 8:
            raise invalid(FIELD, f"ad_inpaint_width must be a multiple of 8 up to {max_size} px", width)
        settings["detail_size"] = width
    if tab.get("ad_use_steps"):
        steps = _read("ad_steps", tab.get("ad_steps", 28), int)
        if not 1 <= steps <= max_steps:
            raise invalid(FIELD, f"ad_steps must lie in [1, {max_steps}] on this server", steps)
        settings["detail_steps"] = steps
    if tab.get("ad_use_cfg_scale"):
        settings["detail_cfg"] = _read("ad_cfg_scale", tab.get("ad_cfg_scale", 7.0), float)
    return settings


def _face_lora(prompt: str, loras: dict) -> dict[str, Any]:
    """The ad_prompt without its `<lora:...>` tag, and the face pass's LoRA as `detail_lora` FILE:WEIGHT."""
    from fastapi.exceptions import RequestValidationError

    from facesmith.serve.lora_tags import lora_tags

    try:
        text, weights = lora_tags(prompt, loras)
    except RequestValidationError as err:
        raise invalid(FIELD, f"ad_prompt: {err.errors()[0]['msg']}", prompt) from None
    if len(weights) != 1:
        raise invalid(FIELD, f"ad_prompt names {len(weights)} LoRAs: the face pass takes one", prompt)
    [(name, weight)] = weights.items()
    return {"detail_prompt": text, "detail_lora": f"{loras[name][2]}:{weight:g}"}


def _read(key: str, value: Any, kind: type) -> Any:
    if kind is str:
        if not isinstance(value, str):
            raise invalid(FIELD, f"{key} must be a string", value)
        return value
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise invalid(FIELD, f"{key} must be a finite number", value)
    if kind is int and value != int(value):
        raise invalid(FIELD, f"{key} must be a whole number", value)
    return kind(value)
