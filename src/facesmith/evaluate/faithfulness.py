"""Attribute faithfulness: does the face show what the prompt asked for, and not what it ruled out?

Owns what a prompt expects (`expectations`: phrase rules -> {attribute: 1 or 0, or a category}), the
auto prompts that ask for and rule out each checkable attribute (`AUTO_PROMPTS`), and the per-attribute
score against the attribute classifier's verdicts (`faithfulness`). The same rules read auto prompts,
prompt files and the prompts stored in PNG metadata, so an image folder made by another tool is judged
the same way. The classifier's own held-out accuracy belongs beside these numbers (the report does it).
"""

from __future__ import annotations

import re
from collections.abc import Sequence

# (pattern, expected values). For each attribute the first rule that matches wins, so "without glasses"
# must come before "glasses". Ethnicity needs a following noun so "black hair" is not read as one.
_PERSON = r"(?:person|man|woman|guy|lady|boy|girl|child|gentleman)"
RULES: tuple[tuple[str, dict], ...] = (
    (r"\b(?:without|no) (?:eye)?glasses\b", {"Eyeglasses": 0}),
    (r"\b(?:eye)?glasses\b|\bspectacles\b", {"Eyeglasses": 1}),
    (r"\bnot smiling\b|\b(?:serious|neutral) expression\b", {"Smiling": 0}),
    (r"\bsmil(?:ing|e)\b", {"Smiling": 1}),
    (r"\b(?:woman|lady|girl)\b", {"Male": 0}),
    (r"\b(?:man|guy|gentleman|boy)\b", {"Male": 1}),
    (r"\bclean-shaven\b|\bwithout a beard\b", {"No_Beard": 1}),
    (r"\bbeard\b", {"No_Beard": 0}),
    (r"\bwithout a hat\b|\bno hat\b", {"Wearing_Hat": 0}),
    (r"\bwearing a (?:hat|cap)\b", {"Wearing_Hat": 1}),
    (r"\bbald\b", {"Bald": 1}),
    (r"\bblonde? hair\b", {"Blond_Hair": 1, "Black_Hair": 0}),
    (r"\bblack hair\b", {"Black_Hair": 1, "Blond_Hair": 0}),
    (r"\b(?:gr[ae]y|silver) hair\b", {"Gray_Hair": 1, "Blond_Hair": 0, "Black_Hair": 0}),
    (r"\b(?:elderly|senior|old)\b", {"Young": 0, "age_group": "senior"}),
    (r"\bchild\b|\blittle (?:boy|girl)\b", {"Young": 1, "age_group": "child"}),
    (r"\byoung\b", {"Young": 1}),
    (rf"\bBlack {_PERSON}\b|\bAfrican-American\b", {"ethnicity": "Black"}),
    (rf"\b(?:East )?Asian {_PERSON}\b", {"ethnicity": "East Asian"}),
    (rf"\b(?:South Asian|Indian) {_PERSON}\b", {"ethnicity": "South Asian"}),
    (rf"\b(?:white|Caucasian) {_PERSON}\b", {"ethnicity": "white"}),
)
_CASE_SENSITIVE = {"ethnicity"}  # "Black person" vs "black hat"

# (prompt, negative prompt): each checkable attribute asked for and ruled out.
AUTO_PROMPTS: tuple[tuple[str, str], ...] = (
    ("a photo of a smiling person", ""),
    ("a photo of a person with a serious expression, not smiling", "smile"),
    ("a photo of a person wearing glasses", ""),
    ("a photo of a person without glasses", "glasses"),
    ("a photo of a man", ""),
    ("a photo of a woman", ""),
    ("a photo of a young person", ""),
    ("a photo of an elderly person", ""),
    ("a photo of a man with a beard", ""),
    ("a photo of a clean-shaven man", "beard"),
    ("a photo of a person with blond hair", ""),
    ("a photo of a person with black hair", "blond"),
    ("a photo of a person wearing a hat", ""),
    ("a photo of a person without a hat", "hat"),
    ("a photo of a Black person", ""),
    ("a photo of an East Asian person", ""),
    ("a photo of a white person", ""),
    ("a photo of a South Asian person", ""),
    ("a photo of a child", ""),
    ("a photo of a bald man", ""),
)


def expectations(prompt: str) -> dict:
    """What `prompt` asks for (1, or a category) and rules out (0), by attribute."""
    found: dict = {}
    for pattern, values in RULES:
        flags = 0 if _CASE_SENSITIVE & set(values) else re.IGNORECASE
        if re.search(pattern, prompt, flags):
            for key, value in values.items():
                found.setdefault(key, value)
    return found


def faithfulness(expected: Sequence[dict], predicted: Sequence[dict]) -> dict[str, dict]:
    """Per attribute: share of images whose predicted value matches, split into asked for / ruled out.

    `expected[i]` comes from `expectations` of image i's prompt, `predicted[i]` from the classifier.
    """
    tally: dict[str, dict[str, list[int]]] = {}
    for want, got in zip(expected, predicted, strict=True):
        for key, value in want.items():
            if key not in got:
                continue
            side = "ruled_out" if value == 0 else "asked"
            tally.setdefault(key, {}).setdefault(side, []).append(int(got[key] == value))
    return {
        key: {side: {"images": len(h), "accuracy": round(sum(h) / len(h), 4)} for side, h in sides.items()}
        for key, sides in sorted(tally.items())
    }
