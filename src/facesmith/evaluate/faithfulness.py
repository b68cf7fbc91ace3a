"""Attribute faithfulness: does the face show what the prompt asked for, and not what it ruled out?

Owns what a prompt expects (`expectations`: phrase rules -> {attribute: 1 or 0, or a category}), the
auto prompts that ask for and rule out each checkable attribute (`AUTO_PROMPTS`), and the per-attribute
score against the attribute classifier's verdicts (`faithfulness`: "asked" and "ruled out" apart, each
with n and a Wilson 95 % interval). The same rules read auto prompts, prompt files and the prompts stored
in PNG metadata, so an image folder made by another tool is judged the same way; the serve page's
attribute controls should write prompts these rules read back.

The rules read three things a keyword match gets wrong (issue 13): negation ("no beard", "not wearing
glasses", "without a smile": a negator up to three words before the phrase, in the same clause),
numeric ages ("a 30-year-old", "aged 70", "in her 40s": the age group of that age), and words about the
photograph rather than the person ("an old photograph of a young woman": "old" before photo, picture,
film ... is not an age). The classifier's own held-out TPR/TNR belongs beside these numbers (the report
does it).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence

from facesmith.attributes.schema import age_group
from facesmith.evaluate.uncertainty import wilson

_PERSON = r"(?:person|people|man|men|woman|women|guy|lady|boy|girl|child|kid|gentleman|teenager|adult|face)"
# "old" that describes the picture, not the person.
_PICTURE = r"(?:photo|photograph|picture|image|film|camera|polaroid|print|postcard|fashioned|school|style)"
_NEGATOR = re.compile(
    r"\b(?:no|not|without|never|non|isn't|aren't|doesn't|don't|lacking|free of)\b(?:\W+\w+){0,3}\W*$",
    re.IGNORECASE,
)
# A clause ends at punctuation or a conjunction: in "no glasses, smiling" the smile is not negated.
_CLAUSE = re.compile(r"[,;.:!?()]|\b(?:but|and|with|while|or)\b(?!\W+(?:no|not)\b)", re.IGNORECASE)
_DECADES = {"twenties": 20, "thirties": 30, "forties": 40, "fifties": 50, "sixties": 60, "seventies": 70,
            "eighties": 80, "nineties": 90}  # fmt: skip


def _age(years: int) -> dict:
    # CelebA's Young is "under about 35" (schema.utkface_attributes uses the same line).
    return {"Young": int(years < 35), "age_group": age_group(min(years, 200))}


Values = dict | Callable[[re.Match], dict]

# (pattern, what it asks for, what it asks for when negated). For each attribute the first phrase that
# matches wins, so specific phrases (numeric ages) come before general ones ("old").
RULES: tuple[tuple[str, Values, dict], ...] = (
    (r"\b(?:eye)?glasses\b|\bspectacles\b|\bsunglasses\b", {"Eyeglasses": 1}, {"Eyeglasses": 0}),
    (r"\bunsmiling\b|\b(?:serious|neutral|stern|blank) (?:expression|face|look)\b|\bfrowning\b",
     {"Smiling": 0}, {}),
    (r"\bsmil(?:ing|es?)\b|\bgrin(?:ning)?\b", {"Smiling": 1}, {"Smiling": 0}),
    (r"\b(?:woman|women|lady|girl|female)\b", {"Male": 0}, {"Male": 1}),
    (r"\b(?:man|men|guy|gentleman|boy|male)\b", {"Male": 1}, {"Male": 0}),
    (r"\bclean[- ]shaven\b|\bbeardless\b", {"No_Beard": 1}, {"No_Beard": 0}),
    (r"\bbeard(?:ed)?\b|\bgoatee\b", {"No_Beard": 0}, {"No_Beard": 1}),
    (r"\b(?:hat|cap|beanie|fedora)\b", {"Wearing_Hat": 1}, {"Wearing_Hat": 0}),
    (r"\bbald(?:ing)?\b", {"Bald": 1}, {"Bald": 0}),
    (r"\bblonde?\b", {"Blond_Hair": 1, "Black_Hair": 0}, {"Blond_Hair": 0}),
    (r"\bblack hair(?:ed)?\b|\bblack-haired\b", {"Black_Hair": 1, "Blond_Hair": 0}, {"Black_Hair": 0}),
    (r"\b(?:gr[ae]y|silver|white)[- ]hair(?:ed)?\b",
     {"Gray_Hair": 1, "Blond_Hair": 0, "Black_Hair": 0}, {"Gray_Hair": 0}),
    (r"\b(\d{1,3})[- ]?(?:years?|yrs?)[- ]old\b|\baged (\d{1,3})\b|\bage (\d{1,3})\b",
     lambda m: _age(int(next(g for g in m.groups() if g))), {}),
    (r"\bin (?:his|her|their) (\d)0'?s\b", lambda m: _age(int(m.group(1)) * 10 + 5), {}),
    (r"\bin (?:his|her|their) (" + "|".join(_DECADES) + r")\b",
     lambda m: _age(_DECADES[m.group(1).lower()] + 5), {}),
    (r"\bchild\b|\bkid\b|\blittle (?:boy|girl)\b|\btoddler\b", {"Young": 1, "age_group": "child"}, {}),
    (r"\bteen(?:age|ager|aged)?\b", {"Young": 1, "age_group": "teenager"}, {}),
    (r"\bmiddle[- ]aged\b", {"Young": 0, "age_group": "middle-aged"}, {}),
    (r"\b(?:elderly|senior|aged|old)\b(?![- ]" + _PICTURE + r")(?<!years old)(?<!year old)(?<!year-old)",
     {"Young": 0, "age_group": "senior"}, {"Young": 1}),
    (r"\byoung\b|\byouthful\b", {"Young": 1}, {"Young": 0}),
    (rf"\bBlack {_PERSON}\b|\bAfrican[- ]American\b", {"ethnicity": "Black"}, {}),
    (rf"(?<!South )\b(?:East )?Asian {_PERSON}\b", {"ethnicity": "East Asian"}, {}),
    (rf"\b(?:South Asian|Indian) {_PERSON}\b", {"ethnicity": "South Asian"}, {}),
    (rf"\b(?:white|Caucasian) {_PERSON}\b", {"ethnicity": "white"}, {}),
)  # fmt: skip
_CASE_SENSITIVE = {"ethnicity"}  # "Black person" vs "black hat"


def _negated(prompt: str, start: int) -> bool:
    before = prompt[:start]
    clause = before[max((m.end() for m in _CLAUSE.finditer(before)), default=0) :]
    return bool(_NEGATOR.search(clause))


def expectations(prompt: str) -> dict:
    """What `prompt` asks for (1, or a category) and rules out (0), by attribute."""
    found: dict = {}
    for pattern, values, negated in RULES:
        keys = set(negated) | (set(values) if isinstance(values, dict) else {"age_group"})
        flags = 0 if _CASE_SENSITIVE & keys else re.IGNORECASE
        match = re.search(pattern, prompt, flags)
        if match is None:
            continue
        asked = values(match) if callable(values) else values
        chosen = negated if _negated(prompt, match.start()) else asked
        for key, value in chosen.items():
            found.setdefault(key, value)
    return found


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


def faithfulness(expected: Sequence[dict], predicted: Sequence[dict]) -> dict[str, dict]:
    """Per attribute: share of images whose predicted value matches, split into asked for / ruled out,
    each {"images": n, "accuracy": share, "interval": Wilson 95 % [low, high]}.

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
        key: {side: share(sum(h), len(h)) for side, h in sorted(sides.items())}
        for key, sides in sorted(tally.items())
    }


def share(hits: int, images: int) -> dict:
    """{"images", "accuracy", "interval"}: a share with its Wilson 95 % interval."""
    low, high = wilson(hits, images)
    return {
        "images": images,
        "accuracy": round(hits / images, 4),
        "interval": [round(low, 4), round(high, 4)],
    }
