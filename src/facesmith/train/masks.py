"""Loss masks for masked loss (Kohya's `--masked_loss`): which pixels of each training image count.

A mask is white (1) where the loss counts and black (0) where it does not, from one of two places:
- `mask_dir`: a PNG named like the image (`000001.png` for `images/000001.jpg`, or the image's own name),
  as Kohya's `conditioning_data_dir` masks; one of another size than its image is resized to it with a
  `TrainingWarning`, and one that cannot be read is a one-line FacesmithError;
- `masked_loss = "face"`: the face ellipse of every face facesmith's MTCNN finds (`facesmith.masks`,
  reused, not copied); an image where none is found keeps the whole image, counted in one warning.
Each mask then meets its bucket as its image does (`dataset.cover_crop`), is area-averaged down to the
latent grid (sd-scripts `apply_masked_loss`: `interpolate(mode="area")`), and is mirrored when the
batch item is. Masks are computed once per image ahead of training, in memory, and with
`cache_latents = "disk"` into one `.safetensors` beside the latent cache, keyed like it. The loss itself
is `objective.per_sample_loss`'s.
"""

from __future__ import annotations

import hashlib
import json
import os
import warnings
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image, UnidentifiedImageError

from facesmith.errors import FacesmithError
from facesmith.train.dataset import BatchItem, FaceImage, TrainingWarning, cover_crop


def mask_file(mask_dir: Path, image: FaceImage) -> Path:
    """The mask PNG of `image` in `mask_dir`: its own file name, else its stem with `.png`."""
    for name in (image.path.name, f"{image.path.stem}.png"):
        if (mask_dir / name).is_file():
            return mask_dir / name
    raise FacesmithError(
        f"mask_dir {mask_dir} has no mask for {image.path.name}: add {image.path.stem}.png (white = learn)"
    )


def read_mask(path: Path, size: tuple[int, int]) -> tuple[Image.Image, bool]:
    """("L" mask at `size` (w, h), whether it had to be resized); FacesmithError when unreadable."""
    try:
        with Image.open(path) as opened:
            mask = opened.convert("L")
    except (OSError, UnidentifiedImageError) as error:
        raise FacesmithError(f"cannot read mask {path} ({error}): save it again as a PNG") from None
    if mask.size == size:
        return mask, False
    return mask.resize(size, Image.BILINEAR), True


def face_mask(image: FaceImage) -> Image.Image | None:
    """The MTCNN face mask of `image` (`facesmith.masks.face_part_mask`), None when no face is found."""
    from facesmith.masks import face_part_mask

    with Image.open(image.path) as opened:
        picture = opened.convert("RGB")
    try:
        return face_part_mask(picture, "face", name=str(image.path))
    except FacesmithError:  # the only user error "face" can meet: no face in this image
        return None


def latent_mask(mask: Image.Image, bucket: tuple[int, int], scale: int) -> torch.Tensor:
    """[1, h, w] float mask in [0, 1] on the latent grid of `bucket` (w, h) at VAE factor `scale`."""
    pixels = np.asarray(cover_crop(mask, bucket), dtype=np.float32) / 255.0
    tensor = torch.from_numpy(pixels)[None, None]
    return F.interpolate(tensor, size=(bucket[1] // scale, bucket[0] // scale), mode="area")[0]


def mask_cache_key(
    images: list[FaceImage], sizes: dict[int, tuple[int, int]], source: str, scale: int
) -> str:
    files = [[str(i.path.resolve()), i.path.stat().st_size, i.path.stat().st_mtime_ns] for i in images]
    if source != "face":  # the mask files, so an edited mask is never read from the cache
        folder = Path(source)
        masks = [mask_file(folder, i) for i in images]
        files += [[str(m.resolve()), m.stat().st_size, m.stat().st_mtime_ns] for m in masks]
    parts = {"source": source, "sizes": sorted(set(sizes.values())), "scale": scale, "files": files}
    return hashlib.sha256(json.dumps(parts, sort_keys=True).encode()).hexdigest()[:20]


class LossMasks:
    """Latent-size loss masks for batch items, computed once per image (and stored on disk if asked)."""

    def __init__(
        self,
        images: list[FaceImage],
        sizes: dict[int, tuple[int, int]],  # image index -> (width, height) of its bucket
        *,
        mask_dir: str | None,
        scale: int,
        device: torch.device,
        cache_dir: Path | None = None,
        progress: Callable[[int, int], None] | None = None,
    ) -> None:
        self.device = device
        source = "face" if mask_dir is None else str(Path(mask_dir).resolve())
        cache_file = None
        if cache_dir is not None:
            cache_file = cache_dir / f"masks-{mask_cache_key(images, sizes, source, scale)}.safetensors"
            if cache_file.is_file():
                from safetensors.torch import load_file

                saved = load_file(cache_file)
                self.masks = [saved[str(i)] for i in range(len(images))]
                return
        self.masks, resized, faceless = [], [], 0
        for done, image in enumerate(images, 1):
            if mask_dir is None:
                mask = face_mask(image)
                if mask is None:
                    faceless += 1
                    mask = Image.new("L", image.size, 255)
            else:
                path = mask_file(Path(mask_dir), image)
                mask, was_resized = read_mask(path, image.size)
                if was_resized:
                    resized.append(path.name)
            self.masks.append(latent_mask(mask, sizes[done - 1], scale))
            if progress is not None:
                progress(done, len(images))
        if resized:
            warnings.warn(
                f"{len(resized)} masks in {mask_dir} are not the size of their images (e.g. {resized[0]}) and "
                "were resized to them: check they belong to these images",
                TrainingWarning,
                stacklevel=2,
            )
        if faceless:
            warnings.warn(
                f"masked_loss face: no face was found in {faceless} of {len(images)} images; they train on "
                "the whole image (give mask_dir masks for them)",
                TrainingWarning,
                stacklevel=2,
            )
        if cache_file is not None:
            from safetensors.torch import save_file

            cache_file.parent.mkdir(parents=True, exist_ok=True)
            tmp = cache_file.with_name(f"{cache_file.name}.tmp-{os.getpid()}")
            save_file({str(i): m.contiguous() for i, m in enumerate(self.masks)}, tmp)
            os.replace(tmp, cache_file)

    def __call__(self, items: list[BatchItem]) -> torch.Tensor:
        """[B, 1, h, w] masks of a batch (one bucket), mirrored where the item is flipped."""
        masks = [self.masks[i.index].flip(-1) if i.flip else self.masks[i.index] for i in items]
        return torch.stack(masks).to(self.device)


def loss_masks_for(config, images, assigned, scale: int, device, cache_dir: Path, report) -> LossMasks | None:
    """The run's LossMasks (mask_dir or masked_loss "face"), or None without masked loss; on disk beside
    the latents with cache_latents "disk"."""
    if config.mask_dir is None and config.masked_loss != "face":
        return None
    return LossMasks(
        images,
        {i: bucket for bucket, indices in assigned.items() for i in indices},
        mask_dir=config.mask_dir,
        scale=scale,
        device=device,
        cache_dir=cache_dir if config.cache_latents == "disk" else None,
        progress=lambda done, count: report("building masks", done, count),
    )
