"""Captions from face attributes: natural, varied sentences that steer a face model.

Owns: turning one face's structured attributes (the 40 CelebA attributes,
UTKFace's age in years, gender and ethnicity) into an English caption, with
synonyms and a random clause order so that no attribute set maps to one fixed
string, and user templates (``caption_from_template``). The attribute names and
the dataset label parsers are ``facesmith.attributes.schema``'s; Kohya-style
caption dropout and tag shuffling are in ``caption_ops`` (they act on the
finished caption, not on attributes).

Why our own code: the paper's method is exactly "add attribute data to the
captions"; no library writes face captions from CelebA/UTKFace labels.

Attribute dicts are the schema's: CelebA names with 0/1 values, ``age`` in
years, ``ethnicity``. A key that is absent means "unknown", which is not the
same as 0: unknown attributes are never written, negative ones sometimes are
("clean-shaven").

Where the mention probabilities come from (the ``rng.random() < p`` tests and
``_WEARING``'s first numbers): nobody recorded it. They were set by hand when
these captions were written for the default model (commit 1d9f531), and neither
git history, MODEL_CARD nor docs/ holds a measurement behind them. What the code
shows is a pattern: attributes anyone sees at a glance (hair colour, beards,
glasses) are named nearly always, subtle face features (``_FACE_FEATURES``) under
half the time, so a caption stays short while every attribute is still named
in a good share of its captions. The default model was trained on captions drawn with these
values: change them only with a retrained model and a new faithfulness measure.
"""

from __future__ import annotations

import random
from collections.abc import Mapping

from facesmith.attributes.schema import CELEBA_ATTRIBUTES, age_group

# Words for UTKFace's ethnicities (schema.ETHNICITIES); "other" is never
# written because it says nothing a viewer could check.
_ETHNICITY_WORDS = {
    "white": ["white", "Caucasian"],
    "Black": ["Black", "African-American"],
    "East Asian": ["East Asian", "Asian"],
    "South Asian": ["South Asian", "Indian"],
}

_OPENINGS = [
    "a photo of",
    "a portrait of",
    "a close-up photo of",
    "a headshot of",
    "a face photo of",
    "a photograph of",
    "",
]


def _on(attrs: Mapping, key: str) -> bool:
    value = attrs.get(key)
    return value is not None and float(value) > 0.5


def _off(attrs: Mapping, key: str) -> bool:
    value = attrs.get(key)
    return value is not None and float(value) <= 0.5


# ---------------------------------------------------------------------------
# The subject: age words + ethnicity + gendered noun ("a smiling old Black man").


def _age_words(attrs: Mapping, rng: random.Random) -> tuple[str, str | None]:
    """(adjective, noun override) for the age; noun override for children."""
    male = _on(attrs, "Male") if "Male" in attrs else None
    years = attrs.get("age")
    if years is not None:
        years = int(years)
        if years <= 2:
            return "", rng.choice(["baby", "toddler"])
        if years <= 12:
            noun = {True: "boy", False: "girl", None: "child"}[male]
            return rng.choice(["little", "young", ""]), noun
        if years <= 19:
            noun = {True: "boy", False: "girl", None: "teenager"}[male]
            return ("teenage" if male is not None else ""), noun
        if years <= 29:
            return rng.choice(["young", "young", f"{years}-year-old", "twenty-something"]), None
        if years <= 39:
            return rng.choice(["young", "adult", f"{years}-year-old", "thirty-something"]), None
        if years <= 59:
            return rng.choice(["middle-aged", "middle-aged", f"{years}-year-old", "mature"]), None
        if years <= 79:
            return rng.choice(["old", "elderly", "older", "senior", f"{years}-year-old"]), None
        return rng.choice(["very old", "elderly", "aged", f"{years}-year-old"]), None
    if _on(attrs, "Young"):
        return rng.choice(["young", "young", "youthful", ""]), None
    if _off(attrs, "Young"):
        return rng.choice(["middle-aged", "older", "mature"]), None
    return "", None


def _subject(attrs: Mapping, rng: random.Random) -> str:
    age_adj, noun = _age_words(attrs, rng)
    if noun is None:
        if _on(attrs, "Male"):
            noun = rng.choice(["man", "man", "man", "guy", "gentleman"])
        elif _off(attrs, "Male"):
            noun = rng.choice(["woman", "woman", "woman", "lady"])
        else:
            noun = "person"
    eth = attrs.get("ethnicity")
    eth_word = ""
    if eth in _ETHNICITY_WORDS and rng.random() < 0.85:
        eth_word = rng.choice(_ETHNICITY_WORDS[eth])
    adjectives = []
    if _on(attrs, "Smiling") and rng.random() < 0.5:
        adjectives.append(rng.choice(["smiling", "happy", "cheerful"]))
    if _on(attrs, "Attractive") and rng.random() < 0.25:
        adjectives.append(rng.choice(["attractive", "good-looking"]))
    if _on(attrs, "Chubby") and rng.random() < 0.6:
        adjectives.append(rng.choice(["chubby", "heavyset"]))
    words = [*adjectives, age_adj, eth_word, noun]
    return " ".join(w for w in words if w)


# ---------------------------------------------------------------------------
# Clauses: hair, facial hair, face, expression, accessories.


def _hair(attrs: Mapping, rng: random.Random) -> list[str]:
    if _on(attrs, "Bald"):
        return [rng.choice(["a bald head", "a shaved head", "no hair"])]
    colour = None
    for key, words in (
        ("Blond_Hair", ["blond", "blonde", "golden"]),
        ("Black_Hair", ["black", "dark"]),
        ("Brown_Hair", ["brown", "brunette"]),
        ("Gray_Hair", ["gray", "grey", "silver", "white"]),
    ):
        if _on(attrs, key):
            colour = rng.choice(words)
            break
    texture = None
    if _on(attrs, "Wavy_Hair"):
        texture = rng.choice(["wavy", "curly"])
    elif _on(attrs, "Straight_Hair"):
        texture = "straight"
    clauses = []
    if (colour or texture) and rng.random() < 0.92:
        clauses.append(" ".join(w for w in (texture, colour, "hair") if w))
    if _on(attrs, "Bangs") and rng.random() < 0.8:
        clauses.append(rng.choice(["bangs", "a fringe"]))
    if _on(attrs, "Receding_Hairline") and rng.random() < 0.7:
        clauses.append("a receding hairline")
    return clauses


def _facial_hair(attrs: Mapping, rng: random.Random) -> list[str]:
    clauses = []
    if _off(attrs, "No_Beard") and rng.random() < 0.92:
        clauses.append(rng.choice(["a beard", "a full beard", "a beard"]))
    if _on(attrs, "Goatee") and rng.random() < 0.85:
        clauses.append("a goatee")
    if _on(attrs, "Mustache") and rng.random() < 0.85:
        clauses.append(rng.choice(["a mustache", "a moustache"]))
    if _on(attrs, "5_o_Clock_Shadow") and rng.random() < 0.7:
        clauses.append(rng.choice(["stubble", "a five o'clock shadow"]))
    if _on(attrs, "Sideburns") and rng.random() < 0.6:
        clauses.append("sideburns")
    if not clauses and _on(attrs, "Male") and _on(attrs, "No_Beard") and rng.random() < 0.3:
        clauses.append("a clean-shaven face")
    return clauses


_FACE_FEATURES = {
    "Arched_Eyebrows": ["arched eyebrows"],
    "Bushy_Eyebrows": ["bushy eyebrows", "thick eyebrows"],
    "Big_Lips": ["full lips", "big lips"],
    "Big_Nose": ["a big nose", "a large nose"],
    "Pointy_Nose": ["a pointy nose"],
    "Narrow_Eyes": ["narrow eyes"],
    "High_Cheekbones": ["high cheekbones"],
    "Oval_Face": ["an oval face"],
    "Double_Chin": ["a double chin"],
    "Bags_Under_Eyes": ["bags under the eyes"],
    "Pale_Skin": ["pale skin", "fair skin"],
    "Rosy_Cheeks": ["rosy cheeks"],
    "Heavy_Makeup": ["heavy makeup", "a lot of makeup"],
}

_WEARING = {
    "Eyeglasses": (0.95, ["glasses", "eyeglasses", "spectacles"]),
    "Wearing_Hat": (0.85, ["a hat", "a cap"]),
    "Wearing_Earrings": (0.6, ["earrings"]),
    "Wearing_Lipstick": (0.6, ["lipstick", "red lipstick"]),
    "Wearing_Necklace": (0.6, ["a necklace"]),
    "Wearing_Necktie": (0.7, ["a tie", "a necktie"]),
}


def _face(attrs: Mapping, rng: random.Random) -> list[str]:
    return [
        rng.choice(words) for key, words in _FACE_FEATURES.items() if _on(attrs, key) and rng.random() < 0.45
    ]


def _wearing(attrs: Mapping, rng: random.Random) -> list[str]:
    return [rng.choice(words) for key, (p, words) in _WEARING.items() if _on(attrs, key) and rng.random() < p]


def _expression(attrs: Mapping, rng: random.Random, said_smiling: bool) -> list[str]:
    clauses = []
    if _on(attrs, "Smiling") and not said_smiling and rng.random() < 0.9:
        clauses.append(rng.choice(["a smile", "a big smile", "a warm smile"]))
    elif _off(attrs, "Smiling") and rng.random() < 0.3:
        clauses.append(rng.choice(["a neutral expression", "a serious expression"]))
    if _on(attrs, "Mouth_Slightly_Open") and rng.random() < 0.4:
        clauses.append("a slightly open mouth")
    return clauses


def _join(items: list[str]) -> str:
    if len(items) <= 1:
        return "".join(items)
    return ", ".join(items[:-1]) + " and " + items[-1]


def caption_from_attributes(attrs: Mapping, rng: random.Random | None = None) -> str:
    """One natural caption for a face, e.g. "a photo of a smiling young woman
    with wavy blond hair and bangs, wearing earrings".

    ``rng`` makes the wording reproducible; every call may word the same
    attributes differently (synonyms, optional minor details, clause order).
    """
    rng = rng or random.Random()
    subject = _subject(attrs, rng)
    said_smiling = any(w in subject.split() for w in ("smiling", "happy", "cheerful"))
    with_clauses = (
        _hair(attrs, rng)
        + _facial_hair(attrs, rng)
        + _face(attrs, rng)
        + _expression(attrs, rng, said_smiling)
    )
    # Hair and beard first most of the time (people name them first), the
    # rest shuffled so no attribute owns a fixed position.
    head, tail = with_clauses[:2], with_clauses[2:]
    rng.shuffle(tail)
    if rng.random() < 0.3:
        rng.shuffle(head)
    with_clauses = head + tail
    wearing = _wearing(attrs, rng)
    rng.shuffle(wearing)

    opening = rng.choice(_OPENINGS)
    article = "an" if subject[:1] in "aeiou" else "a"
    parts = [f"{opening} {article} {subject}".strip()]
    if with_clauses:
        parts.append("with " + _join(with_clauses))
    if wearing:
        parts.append("wearing " + _join(wearing))
    caption = parts[0]
    if len(parts) > 1:
        caption += " " + parts[1]
    if len(parts) > 2:
        caption += ", " + parts[2]
    if _on(attrs, "Blurry") and rng.random() < 0.5:
        caption += ", blurry photo"
    return caption


# ---------------------------------------------------------------------------
# User templates ("sks person, {caption}"), filled from the same attributes.

TEMPLATE_FIELDS = ("caption", "subject", "gender", "age", "ethnicity", "tags")

_TAG_WORDS = {
    "5_o_Clock_Shadow": "stubble",
    "Bags_Under_Eyes": "bags under eyes",
    "Mouth_Slightly_Open": "mouth slightly open",
    "No_Beard": None,  # the absence of a beard is not a tag people write
    "Young": "young",
    "Male": None,  # carried by {gender}
    "Attractive": None,  # a judgement, not a visible feature
}


def attribute_tags(attrs: Mapping) -> list[str]:
    """Booru-style tags for the positive CelebA attributes, e.g. ["wavy hair", "smiling"], in CelebA order."""
    tags = []
    for key in CELEBA_ATTRIBUTES:
        if _on(attrs, key):
            word = _TAG_WORDS.get(key, key.lower().replace("_", " "))
            if word:
                tags.append(word)
    return tags


def caption_from_template(template: str, attrs: Mapping, rng: random.Random | None = None) -> str:
    """Fill a user template: ``{caption}`` (the natural sentence), ``{subject}`` ("smiling young woman"),
    ``{gender}`` (man/woman, boy/girl under 18, or person), ``{age}`` (age group, or "young"/"older"),
    ``{ethnicity}``, ``{tags}`` (comma-separated attribute tags). Unknown values become empty, and the
    doubled spaces and commas this leaves are tidied."""
    rng = rng or random.Random()
    years = attrs.get("age")
    if years is not None:
        age = age_group(int(years))
    elif "Young" in attrs:
        age = "young" if _on(attrs, "Young") else "older"
    else:
        age = ""
    minor = years is not None and int(years) < 18
    words = ("boy", "girl") if minor else ("man", "woman")
    gender = (words[0] if _on(attrs, "Male") else words[1]) if "Male" in attrs else "person"
    ethnicity = attrs.get("ethnicity", "")
    values = {
        "caption": caption_from_attributes(attrs, rng) if "{caption}" in template else "",
        "subject": _subject(attrs, rng) if "{subject}" in template else "",
        "gender": gender,
        "age": age,
        "ethnicity": "" if ethnicity == "other" else ethnicity,
        "tags": ", ".join(attribute_tags(attrs)),
    }
    text = template.format_map(values)
    text = " ".join(text.split())
    while ", ," in text or " ," in text:
        text = text.replace(", ,", ",").replace(" ,", ",")
    return text.strip(" ,")


def check_template(template: str) -> str | None:
    """Why ``template`` can't be used (an unknown {field} or bad braces), or None."""
    import string

    try:
        names = [name for _, name, _, _ in string.Formatter().parse(template) if name is not None]
    except ValueError as error:
        return f"template {template!r} has bad braces ({error})"
    unknown = [n for n in names if n not in TEMPLATE_FIELDS]
    if unknown:
        return f"template {template!r} uses unknown field(s) {', '.join(unknown)}; known: {', '.join(TEMPLATE_FIELDS)}"
    return None
