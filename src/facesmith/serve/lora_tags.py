"""A1111's `<lora:NAME:WEIGHT>` tags (its extra-network syntax) in a request's prompt or ADetailer's ad_prompt.

Owns reading the tags out of the text: NAME is looked up among the LoRAs the server loaded at start-up
(`jobs.lora_names`), never used as a path, and a bad one is a 422 naming the prompt. txt2img and img2img
(`api.py`) and ADetailer's `ad_prompt` (`adetailer.py`) read them alike.
"""

from __future__ import annotations

import re

from facesmith.serve.validation import invalid

LORA_TAG = re.compile(r"<lora:([^:>]+)(?::([^:>]*))?>")  # A1111's extra-network syntax, <lora:name:weight>


def lora_tags(prompt: str, loras: dict) -> tuple[str, dict[str, float]]:
    """Strip A1111's `<lora:NAME:WEIGHT>` tags from the prompt; NAME must be a LoRA the server loaded.

    The name is only looked up among the LoRAs given at start-up (`--lora`), never used as a path. A tag
    without a weight takes the LoRA's start-up weight (`--lora FILE:WEIGHT`, 1 by default). Only the LoRAs
    tagged here are applied to the job.
    """
    weights, kept, end = {}, [], 0
    for match in LORA_TAG.finditer(prompt):
        # The text before the tag loses its trailing ", " too. Done by hand: a regex with `\s*,?\s*` in
        # front of the tag backtracks cubically over a prompt of spaces (4 KB took 25 s).
        before = prompt[end : match.start()].rstrip()
        kept.append(before[:-1].rstrip() if before.endswith(",") else before)
        end = match.end()
        name, weight = match.group(1).strip(), match.group(2)
        if name not in loras:
            known = ", ".join(loras) or "none"
            raise invalid("prompt", f"<lora:{name}> is not loaded on this server (loaded: {known})", prompt)
        try:
            weights[name] = float(weight) if weight not in (None, "") else float(loras[name][1])
        except ValueError:
            raise invalid("prompt", f"<lora:{name}:{weight}>: the weight is not a number", prompt) from None
    kept.append(prompt[end:])
    return "".join(kept).strip(" ,"), weights
