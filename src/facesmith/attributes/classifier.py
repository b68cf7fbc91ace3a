"""The face attribute classifier: 40 CelebA attributes, UTKFace age group and ethnicity, one network.

Owns the classifier (small heads on the frozen ImageNet MobileNetV2 of `backbone.py`, fed its last
1280 x 4 x 4 feature map at 128 px so hats, bangs and beards keep their place), fitting the heads with
masked losses (a source that lacks a label - UTKFace has no hair colour, CelebA no age in years - adds no
loss for it), held-out accuracy per attribute with the majority-class rate beside it, and prediction as
attribute dicts (`schema.py`'s keys; gender is CelebA's `Male`). The shipped copy lives in
`facesmith/weights/attributes/`; prepare captions unlabeled faces with it, `facesmith evaluate` judges
attribute faithfulness with it, and `evaluate/attributes.py` holds the stages that train one and label
photos (the face-specific answer to Kohya's WD14 tagger).

Design after linear probing of frozen ImageNet features (Kornblith et al. 2019, "Do Better ImageNet Models
Transfer Better?"); the multi-task masked loss follows Rudd et al. 2016 (MOON) in spirit.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch import nn
from torch.nn import functional as F

from facesmith.attributes.backbone import feature_maps
from facesmith.attributes.schema import AGE_NAMES, CELEBA_ATTRIBUTES, ETHNICITIES, age_group
from facesmith.errors import FacesmithError
from facesmith.progress import Progress

SHIPPED = Path(__file__).resolve().parent.parent / "weights" / "attributes"
# Representative ages for captioning a predicted group (captions speak in years); mid-range of each group.
GROUP_AGE = {"child": 8, "teenager": 16, "young adult": 28, "middle-aged": 50, "senior": 70}


# ----------------------------------------------------------------------------------------------------------
# The network: heads on the frozen backbone.


class AttributeHeads(nn.Module):
    """1x1 reduction of the 1280 x g x g map, one shared hidden layer, three heads."""

    def __init__(self, channels: int = 1280, grid: int = 4, reduced: int = 96, hidden: int = 256):
        super().__init__()
        self.reduce = nn.Sequential(nn.Conv2d(channels, reduced, 1), nn.BatchNorm2d(reduced), nn.ReLU())
        self.body = nn.Sequential(
            nn.Flatten(),
            nn.Dropout(0.3),
            nn.Linear(reduced * grid * grid, hidden),
            nn.ReLU(),
            nn.Dropout(0.2),
        )
        self.binary = nn.Linear(hidden, len(CELEBA_ATTRIBUTES))
        self.age = nn.Linear(hidden, len(AGE_NAMES))
        self.ethnicity = nn.Linear(hidden, len(ETHNICITIES))

    def forward(self, maps: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        h = self.body(self.reduce(maps))
        return self.binary(h), self.age(h), self.ethnicity(h)


def targets(attributes: Sequence[dict]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(binary (N,40) with NaN = unknown, age group index or -1, ethnicity index or -1)."""
    binary = np.full((len(attributes), len(CELEBA_ATTRIBUTES)), np.nan, np.float32)
    age = np.full(len(attributes), -1, np.int64)
    ethnicity = np.full(len(attributes), -1, np.int64)
    for i, attrs in enumerate(attributes):
        for j, name in enumerate(CELEBA_ATTRIBUTES):
            if attrs.get(name) is not None:
                binary[i, j] = float(float(attrs[name]) > 0.5)
        if attrs.get("age") is not None:
            age[i] = AGE_NAMES.index(age_group(int(attrs["age"])))
        elif attrs.get("age_group") in AGE_NAMES:
            age[i] = AGE_NAMES.index(attrs["age_group"])
        if attrs.get("ethnicity") in ETHNICITIES:
            ethnicity[i] = ETHNICITIES.index(attrs["ethnicity"])
    return binary, age, ethnicity


def masked_loss(outputs, binary: torch.Tensor, age: torch.Tensor, ethnicity: torch.Tensor) -> torch.Tensor:
    """BCE over known binary labels + CE over known age groups and ethnicities; unknown labels add nothing."""
    logits, age_logits, eth_logits = outputs
    known = ~torch.isnan(binary)
    loss = (
        F.binary_cross_entropy_with_logits(logits[known], binary[known]) if known.any() else logits.sum() * 0
    )
    for head, target in ((age_logits, age), (eth_logits, ethnicity)):
        if (target >= 0).any():
            loss = loss + F.cross_entropy(head, target, ignore_index=-1)
    return loss


def score(probabilities: dict[str, np.ndarray], attributes: Sequence[dict]) -> dict[str, dict]:
    """Per attribute: accuracy on faces that carry the label, the majority-class rate, and the count."""
    binary, age, ethnicity = targets(attributes)
    result = {}
    for j, name in enumerate(CELEBA_ATTRIBUTES):
        known = ~np.isnan(binary[:, j])
        if known.any():
            truth = binary[known, j]
            guess = probabilities["binary"][known, j] > 0.5
            result[name] = _entry(guess == truth, max(truth.mean(), 1 - truth.mean()), int(known.sum()))
    for name, target, probs in (
        ("age_group", age, probabilities["age"]),
        ("ethnicity", ethnicity, probabilities["ethnicity"]),
    ):
        known = target >= 0
        if known.any():
            counts = np.bincount(target[known], minlength=probs.shape[1])
            hits = probs[known].argmax(1) == target[known]
            result[name] = _entry(hits, counts.max() / counts.sum(), int(known.sum()))
    return result


def _entry(hits: np.ndarray, majority: float, count: int) -> dict:
    return {"accuracy": round(float(np.mean(hits)), 4), "majority": round(float(majority), 4), "count": count}


# ----------------------------------------------------------------------------------------------------------
# The classifier as users see it.


class AttributeClassifier:
    """Heads + frozen backbone; `predict` returns facesmith attribute dicts."""

    def __init__(self, heads: AttributeHeads, info: dict, device: torch.device | str = "cpu"):
        self.heads = heads.to(device).eval()
        self.info = info
        self.size = int(info["size"])
        self.device = device

    @classmethod
    def load(cls, folder: str | Path = SHIPPED, device: torch.device | str = "cpu") -> AttributeClassifier:
        from safetensors.torch import load_file

        folder = Path(folder)
        weights, info_file = folder / "attributes.safetensors", folder / "attributes.json"
        if not weights.is_file() or not info_file.is_file():
            raise FacesmithError(
                f"{folder} holds no attribute classifier (attributes.safetensors + attributes.json): "
                "train one with `facesmith attributes train`"
            )
        info = json.loads(info_file.read_text())
        heads = AttributeHeads(grid=int(info["size"]) // 32, **info["heads"])
        heads.load_state_dict(load_file(str(weights)), strict=True)
        return cls(heads, info, device)

    @torch.no_grad()
    def probabilities_from_maps(self, maps: np.ndarray, batch: int = 512) -> dict[str, np.ndarray]:
        parts: list[tuple[np.ndarray, ...]] = []
        for start in range(0, len(maps), batch):
            x = torch.from_numpy(maps[start : start + batch].astype(np.float32)).to(self.device)
            logits, age, eth = self.heads(x)
            parts.append(
                (
                    torch.sigmoid(logits).cpu().numpy(),
                    age.softmax(1).cpu().numpy(),
                    eth.softmax(1).cpu().numpy(),
                )
            )
        if not parts:
            return {"binary": np.zeros((0, 40)), "age": np.zeros((0, 5)), "ethnicity": np.zeros((0, 5))}
        return {
            key: np.concatenate([p[k] for p in parts]) for k, key in enumerate(("binary", "age", "ethnicity"))
        }

    def probabilities(
        self, images: Sequence[Image.Image], progress: Progress | None = None
    ) -> dict[str, np.ndarray]:
        maps = feature_maps(images, size=self.size, device=self.device, progress=progress)
        return self.probabilities_from_maps(maps)

    def predict(self, images: Sequence[Image.Image], progress: Progress | None = None) -> list[dict]:
        return attribute_dicts(self.probabilities(images, progress))


def attribute_dicts(probabilities: dict[str, np.ndarray]) -> list[dict]:
    """Hard labels as facesmith attribute dicts (CelebA 0/1, `age_group`, `ethnicity`)."""
    rows = []
    for binary, age, eth in zip(
        probabilities["binary"], probabilities["age"], probabilities["ethnicity"], strict=True
    ):
        attrs = {name: int(p > 0.5) for name, p in zip(CELEBA_ATTRIBUTES, binary, strict=True)}
        attrs["age_group"] = AGE_NAMES[int(age.argmax())]
        attrs["ethnicity"] = ETHNICITIES[int(eth.argmax())]
        rows.append(attrs)
    return rows


def caption_attributes(attrs: dict) -> dict:
    """A predicted dict in the form captions expect: the age group becomes a representative age in years."""
    out = {k: v for k, v in attrs.items() if k != "age_group"}
    if attrs.get("age_group") in GROUP_AGE:
        out["age"] = GROUP_AGE[attrs["age_group"]]
    return out


# ----------------------------------------------------------------------------------------------------------
# Fitting the heads.


def fit_heads(
    maps: np.ndarray,
    attributes: Sequence[dict],
    rows: np.ndarray,
    *,
    epochs: int,
    batch: int,
    lr: float,
    weight_decay: float,
    seed: int,
    device: torch.device | str = "cpu",
    progress: Progress | None = None,
) -> AttributeHeads:
    """Heads fitted with AdamW and a one-cycle schedule on the feature `maps[rows]` and their labels;
    `progress` hears ("training", steps done, steps) after each step."""
    binary, age, eth = targets(attributes)
    torch.manual_seed(seed)
    heads = AttributeHeads(grid=maps.shape[-1]).to(device)
    optimizer = torch.optim.AdamW(heads.parameters(), lr=lr, weight_decay=weight_decay)
    steps = epochs * max(1, int(np.ceil(len(rows) / batch)))
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimizer, lr, total_steps=steps)
    rng = np.random.default_rng(seed)
    step = 0
    for _ in range(epochs):
        heads.train()
        order = rng.permutation(rows)
        for start in range(0, len(order), batch):
            chosen = np.sort(order[start : start + batch])
            x = torch.from_numpy(maps[chosen].astype(np.float32)).to(device)
            loss = masked_loss(
                heads(x),
                torch.from_numpy(binary[chosen]).to(device),
                torch.from_numpy(age[chosen]).to(device),
                torch.from_numpy(eth[chosen]).to(device),
            )
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            schedule.step()
            step += 1
            if progress:
                progress("training", step, steps)
    return heads
