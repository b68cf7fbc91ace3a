"""The face attribute classifier: 40 CelebA attributes, UTKFace age group and ethnicity, one network.

Owns the classifier: small heads (`AttributeHeads`) on MobileNetV2's last 1280-channel feature map, kept
as a grid so hats, bangs and beards keep their place. Two kinds load alike: the shipped one, whose
backbone was fine-tuned with the heads (`AttributeNetwork`, trained by `attributes.finetune` from heads
fitted first on frozen features, `AttributeNetwork.from_heads`), and heads fitted on the frozen ImageNet
backbone of `backbone.py` (`fit_heads`, what `facesmith attributes train` does). Also owns the masked losses (a source that lacks a label - UTKFace has no hair colour,
CelebA no age in years - adds no loss for it), held-out scores per attribute (accuracy, majority rate,
TPR/TNR and balanced accuracy), and prediction as attribute dicts (`schema.py`'s keys; gender is CelebA's
`Male`) with the probabilities behind them. The shipped copy lives in `facesmith/weights/attributes/`;
prepare captions unlabeled faces with it, `facesmith evaluate` judges attribute faithfulness with it, and
`evaluate/attributes.py` holds the stages that train one and label photos (the face-specific answer to
Kohya's WD14 tagger).

Frozen-feature heads follow linear probing (Kornblith et al. 2019, "Do Better ImageNet Models Transfer
Better?"), and probing before fine-tuning follows Kumar et al. 2022 (LP-FT); the multi-task masked loss
follows Rudd et al. 2016 (MOON) in spirit.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch import nn
from torch.nn import functional as F

from facesmith.attributes.backbone import MobileNetV2, feature_maps, load_mobilenet_v2, to_tensor
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


class AttributeNetwork(nn.Module):
    """MobileNetV2 `features` (torchvision names) feeding `AttributeHeads`; input: normalized RGB."""

    def __init__(self, size: int, width: float = 1.0, reduced: int = 96, hidden: int = 256):
        super().__init__()
        self.features = MobileNetV2(width=width).features
        channels = self.features[-1][0].out_channels
        self.heads = AttributeHeads(channels, max(1, math.ceil(size / 32)), reduced, hidden)

    @classmethod
    def from_imagenet(cls, size: int) -> AttributeNetwork:
        network = cls(size)
        network.features.load_state_dict(load_mobilenet_v2().features.state_dict())
        return network

    @classmethod
    def from_heads(cls, heads: AttributeHeads, size: int) -> AttributeNetwork:
        """ImageNet features under heads fitted on them frozen (`fit_heads`): the starting point of
        fine-tuning, which then predicts what the frozen-feature classifier does."""
        reduced, hidden = heads.reduce[0].out_channels, heads.binary.in_features
        network = cls(size, reduced=reduced, hidden=hidden)
        network.features.load_state_dict(load_mobilenet_v2().features.state_dict())
        network.heads.load_state_dict(heads.state_dict())
        return network

    def forward(self, x: torch.Tensor):
        return self.heads(self.features(x))


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
    """Per attribute, on faces that carry the label: accuracy, the majority-class rate, the count, and the
    balanced view. Binary attributes add TPR (recall of 1s), TNR (recall of 0s), their positives and
    balanced accuracy (mean of TPR and TNR); age group and ethnicity add per-class recall and balanced
    accuracy (mean recall over the classes present)."""
    binary, age, ethnicity = targets(attributes)
    result = {}
    for j, name in enumerate(CELEBA_ATTRIBUTES):
        known = ~np.isnan(binary[:, j])
        if known.any():
            truth = binary[known, j] > 0.5
            guess = probabilities["binary"][known, j] > 0.5
            entry = _entry(guess == truth, max(truth.mean(), 1 - truth.mean()), int(known.sum()))
            tpr = float(guess[truth].mean()) if truth.any() else None
            tnr = float((~guess[~truth]).mean()) if (~truth).any() else None
            entry["positives"] = int(truth.sum())
            entry["tpr"] = None if tpr is None else round(tpr, 4)
            entry["tnr"] = None if tnr is None else round(tnr, 4)
            present = [r for r in (tpr, tnr) if r is not None]
            entry["balanced_accuracy"] = round(float(np.mean(present)), 4)
            result[name] = entry
    for name, target, probs, classes in (
        ("age_group", age, probabilities["age"], AGE_NAMES),
        ("ethnicity", ethnicity, probabilities["ethnicity"], ETHNICITIES),
    ):
        known = target >= 0
        if known.any():
            counts = np.bincount(target[known], minlength=probs.shape[1])
            guess = probs[known].argmax(1)
            entry = _entry(guess == target[known], counts.max() / counts.sum(), int(known.sum()))
            recall = {
                classes[c]: round(float(np.mean(guess[target[known] == c] == c)), 4)
                for c in range(len(classes))
                if counts[c]
            }
            entry["recall"] = recall
            entry["balanced_accuracy"] = round(float(np.mean(list(recall.values()))), 4)
            result[name] = entry
    return result


def _entry(hits: np.ndarray, majority: float, count: int) -> dict:
    return {"accuracy": round(float(np.mean(hits)), 4), "majority": round(float(majority), 4), "count": count}


# ----------------------------------------------------------------------------------------------------------
# The classifier as users see it.


class AttributeClassifier:
    """Heads on a backbone; `predict` returns facesmith attribute dicts.

    The backbone is the classifier's own fine-tuned MobileNetV2 (`features`, from
    `attributes.finetune`) or, when `features` is None, the frozen shared ImageNet one that
    `facesmith attributes train` fits heads on.
    """

    def __init__(
        self,
        heads: AttributeHeads,
        info: dict,
        device: torch.device | str = "cpu",
        features: nn.Module | None = None,
    ):
        self.heads = heads.to(device).eval()
        self.features = None if features is None else features.to(device).eval()
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
        state = {k: v.float() for k, v in load_file(str(weights)).items()}
        try:
            if any(k.startswith("features.") for k in state):  # fine-tuned end to end
                network = AttributeNetwork(int(info["size"]), **info["heads"])
                network.load_state_dict(state, strict=True)
                return cls(network.heads, info, device, features=network.features)
            heads = AttributeHeads(grid=max(1, math.ceil(int(info["size"]) / 32)), **info["heads"])
            heads.load_state_dict(state, strict=True)
        except (RuntimeError, KeyError, TypeError) as error:
            first = str(error).strip().splitlines()[0]
            raise FacesmithError(
                f"{folder}: attributes.safetensors does not fit attributes.json ({first}): "
                "use the folder `facesmith attributes train` wrote, unchanged"
            ) from None
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

    @torch.no_grad()
    def probabilities(
        self, images: Sequence[Image.Image], progress: Progress | None = None, batch: int = 64
    ) -> dict[str, np.ndarray]:
        if self.features is None:
            maps = feature_maps(images, size=self.size, device=self.device, progress=progress)
            return self.probabilities_from_maps(maps)
        maps = []
        for start in range(0, len(images), batch):
            chunk = to_tensor(images[start : start + batch], self.size).to(self.device)
            maps.append(self.features(chunk).cpu().numpy())
            if progress:
                progress("features", min(start + batch, len(images)), len(images))
        channels, grid = self.heads.reduce[0].in_channels, max(1, math.ceil(self.size / 32))
        return self.probabilities_from_maps(
            np.concatenate(maps) if maps else np.zeros((0, channels, grid, grid), np.float32)
        )

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


def probability_dicts(probabilities: dict[str, np.ndarray], digits: int = 3) -> list[dict]:
    """The probabilities behind `attribute_dicts`, per image: P(1) for each CelebA attribute, and the
    probability of every age group and ethnicity."""
    rows = []
    for binary, age, eth in zip(
        probabilities["binary"], probabilities["age"], probabilities["ethnicity"], strict=True
    ):
        row = {name: round(float(p), digits) for name, p in zip(CELEBA_ATTRIBUTES, binary, strict=True)}
        row["age_group"] = {g: round(float(p), digits) for g, p in zip(AGE_NAMES, age, strict=True)}
        row["ethnicity"] = {e: round(float(p), digits) for e, p in zip(ETHNICITIES, eth, strict=True)}
        rows.append(row)
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
