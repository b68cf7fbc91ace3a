"""The face attribute classifier: 40 CelebA attributes, UTKFace age group and ethnicity, one network.

Owns the classifier (small heads on the frozen ImageNet MobileNetV2 of `features.py`, fed its last
1280 x 4 x 4 feature map at 128 px so hats, bangs and beards keep their place), its training with masked
losses (a source that lacks a label - UTKFace has no hair colour, CelebA no age in years - adds no loss
for it), held-out accuracy per attribute with the majority-class rate beside it, and prediction as
facesmith attribute dicts (the keys of `data/captions.py`; gender is CelebA's `Male`). The shipped copy
lives in `facesmith/weights/attributes/`; `facesmith evaluate` judges attribute faithfulness with it and
`facesmith attributes predict` labels unlabeled photos (the face-specific answer to Kohya's WD14 tagger).

Design after linear probing of frozen ImageNet features (Kornblith et al. 2019, "Do Better ImageNet Models
Transfer Better?"); the multi-task masked loss follows Rudd et al. 2016 (MOON) in spirit.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch import nn
from torch.nn import functional as F

from facesmith.config import StageConfig, write_toml
from facesmith.data.captions import AGE_GROUPS, CELEBA_ATTRIBUTES, ETHNICITIES, age_group
from facesmith.errors import FacesmithError
from facesmith.evaluate.faceset import RealFace, read_faces
from facesmith.evaluate.features import feature_network, to_tensor

SHIPPED = Path(__file__).resolve().parent.parent / "weights" / "attributes"
AGE_NAMES = tuple(name for name, _, _ in AGE_GROUPS)
# Representative ages for captioning a predicted group (captions speak in years); mid-range of each group.
GROUP_AGE = {"child": 8, "teenager": 16, "young adult": 28, "middle-aged": 50, "senior": 70}
Progress = Callable[[str, int, int], None]


@dataclass
class AttributeTrainConfig(StageConfig):
    """`facesmith attributes train`: where faces come from and how the heads are fitted."""

    datasets: list[str] = field(default_factory=list)  # dataset dirs or packed .npz files
    out_dir: str = "attribute-classifier"
    size: int = 128  # input pixels; the feature map is size/32 on a side
    epochs: int = 10
    batch: int = 256
    lr: float = 1e-3
    weight_decay: float = 1e-4
    seed: int = 0
    limit: int | None = None  # at most this many faces per dataset (quick runs, tests)
    cache: str | None = None  # .npy path: the frozen feature maps, reused when the face list matches
    device: str | None = None


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


@torch.no_grad()
def feature_maps(
    images: Sequence[Image.Image] | Callable[[int], Image.Image],
    count: int | None = None,
    *,
    size: int = 128,
    batch: int = 64,
    device: torch.device | str = "cpu",
    progress: Callable[[int, int], None] | None = None,
) -> np.ndarray:
    """(N, 1280, size/32, size/32) float16 maps of the frozen ImageNet MobileNetV2.

    `images` may be a function index -> image, so a large set is decoded batch by batch.
    """
    network = feature_network(device)
    count = len(images) if count is None else count
    get = images if callable(images) else images.__getitem__
    out = []
    for start in range(0, count, batch):
        chunk = [get(i) for i in range(start, min(start + batch, count))]
        out.append(network.features(to_tensor(chunk, size).to(device)).half().cpu().numpy())
        if progress:
            progress(min(start + batch, count), count)
    grid = size // 32
    return np.concatenate(out) if out else np.zeros((0, 1280, grid, grid), np.float16)


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

    def probabilities(self, images: Sequence[Image.Image], progress=None) -> dict[str, np.ndarray]:
        maps = feature_maps(images, size=self.size, device=self.device, progress=progress)
        return self.probabilities_from_maps(maps)

    def predict(self, images: Sequence[Image.Image], progress=None) -> list[dict]:
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
# Training.


def _load_maps(config: AttributeTrainConfig, faces: list[RealFace], device, progress: Progress | None):
    names = [f.name for f in faces]
    cache = Path(config.cache) if config.cache else None
    if cache is not None and cache.is_file() and cache.with_suffix(".json").is_file():
        stored = json.loads(cache.with_suffix(".json").read_text())
        if stored == {"names": names, "size": config.size}:
            return np.load(cache)
    maps = feature_maps(
        lambda i: faces[i].image(),
        len(faces),
        size=config.size,
        device=device,
        progress=(lambda done, total: progress("features", done, total)) if progress else None,
    )
    if cache is not None:
        cache.parent.mkdir(parents=True, exist_ok=True)
        np.save(cache, maps)
        cache.with_suffix(".json").write_text(json.dumps({"names": names, "size": config.size}))
    return maps


def train_attribute_classifier(config: AttributeTrainConfig, progress: Progress | None = None) -> dict:
    """Fit the heads on the datasets' train split; write weights, held-out scores and the TOML; return info."""
    from safetensors.torch import save_file

    from facesmith.generate import choose_device

    if not config.datasets:
        raise FacesmithError("no DATASET given: name prepared dataset folders or packed .npz files")
    if config.size % 32 or config.size < 32:
        raise FacesmithError(f"--size {config.size} must be a positive multiple of 32")
    device = choose_device(config.device)
    faces: list[RealFace] = []
    for source in config.datasets:
        found = read_faces(source)
        faces += found[: config.limit] if config.limit else found
    labelled = [f for f in faces if f.attributes]
    if not labelled:
        raise FacesmithError(f"{', '.join(config.datasets)}: no face carries attributes to learn from")
    started = time.time()
    maps = _load_maps(config, labelled, device, progress)
    binary, age, eth = targets([f.attributes for f in labelled])
    train = np.array([f.split != "val" for f in labelled])
    held = ~train
    if not held.any() or not train.any():
        raise FacesmithError(
            "the datasets need faces in both splits (train and val) to report held-out accuracy"
        )

    torch.manual_seed(config.seed)
    heads = AttributeHeads(grid=config.size // 32).to(device)
    optimizer = torch.optim.AdamW(heads.parameters(), lr=config.lr, weight_decay=config.weight_decay)
    index = np.flatnonzero(train)
    steps = config.epochs * max(1, int(np.ceil(len(index) / config.batch)))
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimizer, config.lr, total_steps=steps)
    rng = np.random.default_rng(config.seed)
    step = 0
    for _ in range(config.epochs):
        heads.train()
        order = rng.permutation(index)
        for start in range(0, len(order), config.batch):
            rows = np.sort(order[start : start + config.batch])
            x = torch.from_numpy(maps[rows].astype(np.float32)).to(device)
            loss = masked_loss(
                heads(x),
                torch.from_numpy(binary[rows]).to(device),
                torch.from_numpy(age[rows]).to(device),
                torch.from_numpy(eth[rows]).to(device),
            )
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            schedule.step()
            step += 1
            if progress:
                progress("training", step, steps)

    classifier = AttributeClassifier(heads, {"size": config.size}, device)
    scores = score(
        classifier.probabilities_from_maps(maps[held]),
        [f.attributes for f, h in zip(labelled, held, strict=True) if h],
    )
    info = {
        "size": config.size,
        "heads": {"reduced": heads.reduce[0].out_channels, "hidden": heads.binary.in_features},
        "backbone": "MobileNetV2 ImageNet (facesmith/weights/mobilenet_v2), frozen",
        "trained_on": [str(s) for s in config.datasets],
        "faces": {"train": int(train.sum()), "held_out": int(held.sum())},
        "seconds": round(time.time() - started, 1),
        "held_out": scores,
    }
    out = Path(config.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().cpu().contiguous() for k, v in heads.state_dict().items()}
    save_file(state, str(out / "attributes.safetensors"))
    (out / "attributes.json").write_text(json.dumps(info, indent=1) + "\n")
    write_toml(config.to_dict(), out / "attributes-train.toml")
    return info
