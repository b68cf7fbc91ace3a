"""Fine-tuning the attribute classifier end to end: MobileNetV2 and heads together, on augmented faces.

Owns the augmentations generated faces need (`augment`: flip, zoom/shift, colour, blur, JPEG, noise), the
class-balanced masked loss (`balanced_weights`, `balanced_loss`) and `fine_tune`, a time-budgeted training
loop that checkpoints and resumes. Inputs are uint8 face arrays (N, size, size, 3), already aligned and
resized: reading datasets is the callers' (`evaluate/attributes.py`, `scripts/train_attribute_classifier.py`).

Why end to end: heads on frozen ImageNet features missed most bald, eyeglasses and beard faces (issue 13:
recall 0.18, 0.29, 0.34 of bald, glasses and bearded held-out faces). A first recipe (64 px, blocks 14-18
only, backbone lr 4e-4, random heads, BatchNorm in train mode) ran 966 steps and ended below the
frozen heads on gender and smiling with its loss still falling: under-trained, and started from random
heads, so its first steps moved the ImageNet features toward what untrained heads asked. The shipped
recipe starts from the frozen-feature heads with the BatchNorm statistics frozen (at step 0 it scores
exactly what those heads score) and trains modules 4-18 at 128 px with a lower backbone rate.

Why balanced: the targets are balanced accuracy, and a plain BCE on a 3 %-positive attribute learns to
say "no". Why a time budget: the recipe has to fit a shared 2-core CPU, where the
speed of a step varies several-fold; the learning rate follows a cosine over the *elapsed share* of the
budget (warm-up first), so a slow machine trains fewer steps but still anneals. Augmentations follow
common practice for face attributes (random flips and crops, colour jitter), plus blur and JPEG because
generated and web faces are softer and compressed (Wang et al. 2020, "CNN-generated images are
surprisingly easy to spot... for now", blur+JPEG augmentation).
"""

from __future__ import annotations

import io
import math
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch import nn
from torch.nn import functional as F

from facesmith.attributes.backbone import MEAN, STD
from facesmith.attributes.classifier import AttributeNetwork, targets
from facesmith.attributes.schema import AGE_NAMES, CELEBA_ATTRIBUTES, ETHNICITIES
from facesmith.progress import Progress

# ----------------------------------------------------------------------------------------------------------
# Inputs.


def normalize(pixels: torch.Tensor) -> torch.Tensor:
    """uint8 or 0-1 float (N, H, W, 3) -> ImageNet-normalized (N, 3, H, W) float."""
    x = pixels.float().permute(0, 3, 1, 2)
    x = x / 255.0 if pixels.dtype == torch.uint8 else x
    mean = torch.tensor(MEAN).view(1, 3, 1, 1)
    std = torch.tensor(STD).view(1, 3, 1, 1)
    return (x - mean) / std


def face_arrays(images: Sequence[Image.Image], size: int) -> np.ndarray:
    """(N, size, size, 3) uint8: each whole (aligned) face resized as `backbone.to_tensor` does."""
    out = np.zeros((len(images), size, size, 3), np.uint8)
    for i, image in enumerate(images):
        out[i] = np.asarray(image.convert("RGB").resize((size, size), Image.BILINEAR))
    return out


# ----------------------------------------------------------------------------------------------------------
# Augmentation.


def _jpeg(pixels: np.ndarray, quality: int) -> np.ndarray:
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, "JPEG", quality=quality)
    with Image.open(buffer) as image:
        return np.asarray(image.convert("RGB"))


def augment(pixels: np.ndarray, rng: np.random.Generator) -> torch.Tensor:
    """A batch of uint8 faces -> normalized tensors after random JPEG (30 %, quality 30-90), flip (50 %),
    zoom 0.88-1.12 with a shift of up to 6 % (border pixels repeat), brightness/contrast/saturation
    jitter (+-25 %, no hue: hair colour is a label), Gaussian blur (40 %, sigma up to 1.5 px at 128 px)
    and pixel noise."""
    pixels = pixels.copy()
    n, size = len(pixels), pixels.shape[1]
    for i in np.flatnonzero(rng.random(n) < 0.3):
        pixels[i] = _jpeg(pixels[i], int(rng.integers(30, 91)))
    x = torch.from_numpy(pixels).float().permute(0, 3, 1, 2) / 255.0
    flip = torch.from_numpy(rng.random(n) < 0.5)
    x[flip] = x[flip].flip(3)
    scale = torch.from_numpy(rng.uniform(1 / 1.12, 1 / 0.88, n)).float()
    shift = torch.from_numpy(rng.uniform(-0.06, 0.06, (n, 2))).float() * 2
    theta = torch.zeros(n, 2, 3)
    theta[:, 0, 0] = theta[:, 1, 1] = scale
    theta[:, :, 2] = shift
    grid = F.affine_grid(theta, list(x.shape), align_corners=False)
    x = F.grid_sample(x, grid, mode="bilinear", padding_mode="border", align_corners=False)
    jitter = torch.from_numpy(rng.uniform(0.75, 1.25, (3, n, 1, 1, 1))).float()
    x = x * jitter[0]
    mean = x.mean((1, 2, 3), keepdim=True)
    x = (x - mean) * jitter[1] + mean
    grey = x.mean(1, keepdim=True)
    x = (x - grey) * jitter[2] + grey
    blurred = np.flatnonzero(rng.random(n) < 0.4)
    if len(blurred):
        sigma = float(rng.uniform(0.3, 1.5)) * size / 128
        radius = max(1, int(math.ceil(2 * sigma)))
        taps = torch.exp(-(torch.arange(-radius, radius + 1).float() ** 2) / (2 * sigma**2))
        taps = (taps / taps.sum()).view(1, 1, 1, -1).repeat(3, 1, 1, 1)
        part = F.pad(x[blurred], (radius, radius, radius, radius), mode="replicate")
        part = F.conv2d(F.conv2d(part, taps, groups=3), taps.transpose(2, 3), groups=3)
        x[blurred] = part
    x = x + torch.from_numpy(rng.standard_normal(x.shape, dtype=np.float32)) * float(rng.uniform(0, 0.03))
    x = x.clamp(0, 1)
    mean_ = torch.tensor(MEAN).view(1, 3, 1, 1)
    std_ = torch.tensor(STD).view(1, 3, 1, 1)
    return (x - mean_) / std_


# ----------------------------------------------------------------------------------------------------------
# The balanced loss.


def balanced_weights(
    attributes: Sequence[dict], cap: float = 20.0, class_power: float = 0.5
) -> dict[str, torch.Tensor]:
    """Per binary attribute pos_weight = negatives/positives (capped): the loss then weighs both sides of
    each decision equally, which is what balanced accuracy scores. Age group and ethnicity get
    inverse-frequency class weights raised to `class_power` (capped): their targets are quoted as plain
    accuracy, which full inverse weights trade away for the rare classes (children, "other"), so the
    square root splits the difference (as in Mahajan et al. 2018's square-root resampling)."""
    binary, age, ethnicity = targets(attributes)
    positives = np.nansum(binary, 0)
    negatives = np.sum(~np.isnan(binary), 0) - positives
    pos_weight = np.clip(negatives / np.maximum(positives, 1), 1 / cap, cap)
    weights = {"pos_weight": torch.tensor(pos_weight, dtype=torch.float32)}
    for key, labels, classes in (("age", age, len(AGE_NAMES)), ("ethnicity", ethnicity, len(ETHNICITIES))):
        counts = np.bincount(labels[labels >= 0], minlength=classes).astype(np.float64)
        inverse = np.where(counts > 0, counts.sum() / np.maximum(counts, 1) / classes, 0.0) ** class_power
        weights[key] = torch.tensor(np.clip(inverse, 0, cap), dtype=torch.float32)
    return weights


def balanced_loss(outputs, binary, age, ethnicity, weights: dict[str, torch.Tensor]) -> torch.Tensor:
    """`classifier.masked_loss` with pos_weight and class weights; unknown labels still add nothing."""
    logits, age_logits, eth_logits = outputs
    known = ~torch.isnan(binary)
    if known.any():
        per = F.binary_cross_entropy_with_logits(
            logits, torch.nan_to_num(binary), pos_weight=weights["pos_weight"], reduction="none"
        )
        loss = per[known].mean()
    else:
        loss = logits.sum() * 0
    for head, target, key in ((age_logits, age, "age"), (eth_logits, ethnicity, "ethnicity")):
        if (target >= 0).any():
            loss = loss + F.cross_entropy(head, target, weight=weights[key], ignore_index=-1)
    return loss


# ----------------------------------------------------------------------------------------------------------
# The loop.


def learning_rate_share(progress: float, warmup: float = 0.03) -> float:
    """Linear warm-up over the first `warmup` of the budget, then a cosine to zero."""
    if progress < warmup:
        return max(progress / warmup, 0.01)
    return 0.5 * (1 + math.cos(math.pi * min(1.0, (progress - warmup) / (1 - warmup))))


@torch.no_grad()
def network_probabilities(network: AttributeNetwork, pixels: np.ndarray, batch: int = 128) -> dict:
    """Sigmoid/softmax outputs for uint8 faces, batch by batch, in eval mode."""
    network.eval()
    parts = []
    for start in range(0, len(pixels), batch):
        logits, age, eth = network(normalize(torch.from_numpy(pixels[start : start + batch])))
        parts.append((torch.sigmoid(logits), age.softmax(1), eth.softmax(1)))
    if not parts:
        return {
            "binary": np.zeros((0, len(CELEBA_ATTRIBUTES))),
            "age": np.zeros((0, len(AGE_NAMES))),
            "ethnicity": np.zeros((0, len(ETHNICITIES))),
        }
    keys = ("binary", "age", "ethnicity")
    return {key: torch.cat([p[k] for p in parts]).numpy() for k, key in enumerate(keys)}


def fine_tune(
    pixels: np.ndarray,
    attributes: Sequence[dict],
    rows: np.ndarray,
    *,
    minutes: float,
    epochs: int,
    batch: int = 64,
    lr: float = 3e-4,
    backbone_lr: float = 1e-4,
    weight_decay: float = 1e-4,
    seed: int = 0,
    checkpoint: str | Path | None = None,
    checkpoint_minutes: float = 5.0,
    frozen: int = 0,
    frozen_statistics: bool = True,
    network: AttributeNetwork | None = None,
    progress: Progress | None = None,
) -> tuple[AttributeNetwork, dict]:
    """Train backbone and heads on `pixels[rows]` for `minutes` of wall time or `epochs`, whichever ends
    first; return the network and {"steps", "epochs", "seconds"}.

    `frozen` leading modules of `network.features` keep their ImageNet weights and batch statistics and run
    without gradients: on a CPU the high-resolution early blocks cost most of a backward pass, while the
    blocks at 1/32 resolution (modules 14-18 of 19) hold 85 % of the backbone's weights.

    `frozen_statistics` keeps every backbone BatchNorm in eval mode (ImageNet running mean/variance, its
    scale and shift still learn), so training sees the normalisation prediction uses and a network that
    starts from frozen-feature heads (`AttributeNetwork.from_heads`) starts exactly where they were: the
    linear-probe-then-fine-tune order of Kumar et al. 2022 ("Fine-Tuning can Distort Pretrained
    Features"), which keeps a few CPU epochs from undoing the ImageNet features first.

    With `checkpoint`, the state (network, optimizer, step, elapsed time) is written there every
    `checkpoint_minutes` and at the end, and a run that finds it resumes where it stopped. `progress`
    hears ("fine-tuning", seconds done, seconds budget, loss=..., step=...) after each step.
    """
    binary, age, ethnicity = targets(attributes)
    weights = balanced_weights([attributes[i] for i in rows])
    torch.manual_seed(seed)
    network = network or AttributeNetwork.from_imagenet(pixels.shape[1])
    # channels_last: oneDNN's depthwise and pointwise convolutions run ~1.5x faster on a CPU in NHWC.
    network = network.to(memory_format=torch.channels_last)
    for parameter in network.features[:frozen].parameters():
        parameter.requires_grad_(False)
    optimizer = torch.optim.AdamW(
        [
            {"params": network.features[frozen:].parameters(), "lr": backbone_lr},
            {"params": network.heads.parameters(), "lr": lr},
        ],
        weight_decay=weight_decay,
    )
    base = [g["lr"] for g in optimizer.param_groups]
    budget = minutes * 60.0
    per_epoch = max(1, math.ceil(len(rows) / batch))
    step, spent = 0, 0.0
    checkpoint = Path(checkpoint) if checkpoint else None
    if checkpoint is not None and checkpoint.is_file():
        state = torch.load(checkpoint, weights_only=True)
        network.load_state_dict(state["network"])
        optimizer.load_state_dict(state["optimizer"])
        step, spent = int(state["step"]), float(state["seconds"])

    def save() -> None:
        if checkpoint is not None:
            state = {"network": network.state_dict(), "optimizer": optimizer.state_dict()}
            torch.save({**state, "step": step, "seconds": spent}, str(checkpoint) + ".tmp")
            Path(str(checkpoint) + ".tmp").replace(checkpoint)

    started, saved = time.time() - spent, time.time()
    network.train()
    network.features[:frozen].eval()
    if frozen_statistics:
        for module in network.features.modules():
            if isinstance(module, nn.BatchNorm2d):
                module.eval()
    while spent < budget and step < epochs * per_epoch:
        epoch, offset = divmod(step, per_epoch)
        # The order of an epoch depends only on (seed, epoch), so a resumed run sees the same batches.
        order = np.random.default_rng((seed, epoch)).permutation(rows)
        chosen = np.sort(order[offset * batch : (offset + 1) * batch])
        share = max(spent / budget, step / (epochs * per_epoch))
        for group, rate in zip(optimizer.param_groups, base, strict=True):
            group["lr"] = rate * learning_rate_share(share)
        x = augment(pixels[chosen], np.random.default_rng((seed, step, 1)))
        x = x.contiguous(memory_format=torch.channels_last)
        with torch.no_grad():
            x = network.features[:frozen](x)
        loss = balanced_loss(
            network.heads(network.features[frozen:](x)),
            torch.from_numpy(binary[chosen]),
            torch.from_numpy(age[chosen]),
            torch.from_numpy(ethnicity[chosen]),
            weights,
        )
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        step += 1
        spent = time.time() - started
        if progress:
            progress(
                "fine-tuning", min(spent, budget), budget, loss=round(float(loss.detach()), 4), step=step
            )
        if time.time() - saved > checkpoint_minutes * 60:
            save()
            saved = time.time()
    save()
    network.eval()
    return network, {"steps": step, "epochs": round(step / per_epoch, 2), "seconds": round(spent, 1)}


def save_network(network: AttributeNetwork, info: dict, folder: str | Path) -> Path:
    """Write a fine-tuned classifier folder: `attributes.safetensors` (backbone and heads, fp16, so it
    ships at about 5 MB) and `attributes.json` (`info` plus the network's shape); `AttributeClassifier.load`
    reads it back."""
    import json

    from safetensors.torch import save_file

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().cpu().half().contiguous() for k, v in network.state_dict().items()}
    save_file(state, str(folder / "attributes.safetensors"))
    heads = network.heads
    shape = {"reduced": heads.reduce[0].out_channels, "hidden": heads.binary.in_features}
    (folder / "attributes.json").write_text(json.dumps({**info, "heads": shape}, indent=1) + "\n")
    return folder
