"""The face detailer: `facesmith generate --detail-faces`, ADetailer's face pass over facesmith's models.

Owns what ADetailer (Bing-su/adetailer, `scripts/!adetailer.py`) does after an image is made, with
MTCNN (`data/faces.py`) in place of its YOLO face model: for each face found in a finished image,
- the face's mask (`masks.face_part`, the ellipse `--mask face` draws), grown by `detail_dilate` pixels
  (ADetailer's dilate/erode) and feathered by `detail_mask_blur` (its mask blur);
- an inpainting pass of only the masked area (A1111's "only masked", which ADetailer always uses): the
  crop around the mask, `detail_padding` wider, is upscaled to `detail_size` (the model's native size by
  default), repainted at `detail_strength` with the face's own prompt if one is given, and pasted back;
- faces are done largest first, each on the image the last one left; `detail_max_faces` keeps the k
  largest (ad_mask_k_largest), `detail_confidence` is MTCNN's last-stage threshold (ADetailer's
  confidence is its detector's).
The inpainting itself is `img2img.py`'s (through `FaceGenerator.sample` with the picture in memory), so
seeds, samplers and engines are the main pass's; the face pass takes the image's own seed, as ADetailer's
first tab does. The PNG records the pass in ADetailer's infotext fields (`metadata.format_parameters`).
An image with no face is left as it is, with a `NoFaceDetailedWarning`, as ADetailer skips it.

`detail_lora` (`--detail-lora FILE[:WEIGHT]`, or a `<lora:name:w>` in the API's `ad_prompt`) is a LoRA
for the face pass only, as ADetailer applies the LoRAs its ad_prompt names to its inpainting alone:
`detail_lora_applied` adds it, at its weight, to the peft adapters the main pass ran with (LoRAs fused at
load stay in the weights for both passes), and afterwards puts every adapter layer back as it was: the
active set, the on/off switch and each adapter's scale, read from peft's layers (`BaseTunerLayer`). A
file it loaded itself is deleted again; the server's LoRAs are loaded once as adapters and named to it
with `share_adapters`. The main pass never runs with it, so its pixels are the same with or without.
"""

from __future__ import annotations

import dataclasses
import warnings
import weakref

import numpy as np
from PIL import Image, ImageFilter

from facesmith.config import GenerateConfig
from facesmith.errors import FacesmithError
from facesmith.progress import Progress

DETECTOR = "mtcnn"  # what `ADetailer model:` records
DETECT_MAX_PIXELS = 4_000_000  # as masks.py: MTCNN searches a reduced copy of bigger images
DETAIL_ADAPTER = "facesmith_detail"  # the peft adapter name of a --detail-lora file loaded for a pass
# pipe -> {resolved LoRA path: peft adapter name} of LoRAs already loaded as adapters (the server's)
_SHARED: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


class NoFaceDetailedWarning(UserWarning):
    """--detail-faces found no face in an image; it was left as the main pass made it."""


def find_faces(image: Image.Image, confidence: float = 0.7, max_faces: int = 0) -> list:
    """MTCNN's faces in `image` scoring `confidence` at its last stage, largest first; the `max_faces`
    largest when that is over 0 (ADetailer's "mask only the top k largest")."""
    from facesmith.data.faces import THRESHOLDS, detect_faces

    thresholds = (THRESHOLDS[0], THRESHOLDS[1], confidence)
    faces = detect_faces(image.convert("RGB"), thresholds=thresholds, max_pixels=DETECT_MAX_PIXELS)
    faces = sorted(faces, key=lambda face: face.width * face.height, reverse=True)
    return faces[:max_faces] if max_faces > 0 else faces


def face_mask(face, size: tuple[int, int], dilate: int = 4, blur: int = 4) -> Image.Image:
    """The "L" mask of one face in an image of `size`: `masks.face_part`'s ellipse, grown by `dilate`
    pixels (shrunk when negative, ADetailer's dilate_erode) and Gaussian-feathered by `blur`."""
    from facesmith.masks import face_part

    mask = Image.fromarray(face_part(face, "face", size).astype(np.uint8) * 255, mode="L")
    if dilate:
        kernel = 2 * abs(dilate) + 1
        mask = mask.filter(ImageFilter.MaxFilter(kernel) if dilate > 0 else ImageFilter.MinFilter(kernel))
    if blur:
        mask = mask.filter(ImageFilter.GaussianBlur(blur))
    return mask


def face_pass_config(config: GenerateConfig, seed: int, native: int) -> GenerateConfig:
    """The inpainting run that repaints one face of the image `seed` made in a run of `config`."""
    side = config.detail_size or native
    return dataclasses.replace(
        config,
        prompt=config.detail_prompt or config.prompt,
        negative=config.detail_negative or config.negative,
        steps=config.detail_steps or config.steps,
        cfg=config.detail_cfg if config.detail_cfg is not None else config.cfg,
        seed=seed,
        count=1,
        batch_size=1,
        width=side,
        height=side,
        trace=False,
        # the picture and its finished mask come in memory (img2img.StartPicture)
        init_image=None,
        mask=None,
        strength=config.detail_strength,
        mask_blur=0,
        mask_invert=False,
        inpaint_full_res=True,
        inpaint_full_res_padding=config.detail_padding,
        masked_content="original",
        detail_faces=False,
        detail_lora=None,
    )


def share_adapters(pipe, adapters: dict[str, str]) -> None:
    """Tell the face pass that these LoRA files ({path: adapter name}) are loaded in `pipe` as peft
    adapters already, so a `detail_lora` naming one takes its adapter instead of loading the file again."""
    from pathlib import Path

    _SHARED.setdefault(pipe, {}).update({str(Path(path).resolve()): name for path, name in adapters.items()})


def _tuner_layers(pipe) -> list:
    from peft.tuners.tuners_utils import BaseTunerLayer

    models = [getattr(pipe, name, None) for name in ("unet", "text_encoder", "text_encoder_2")]
    return [
        m for model in models if model is not None for m in model.modules() if isinstance(m, BaseTunerLayer)
    ]


class detail_lora_applied:  # noqa: N801 - used as a context manager, reads as a phrase
    """Within: `generator` samples with the LoRA `spec` ("FILE[:WEIGHT]") on top of its adapters, on the
    eager pipeline (ONNX baked the weights in at export and a compiled graph would not see the adapter);
    after: the adapters and the sampling pipeline exactly as they were. `spec` None does nothing."""

    def __init__(self, generator, spec: str | None):
        self.generator, self.spec = generator, spec
        self.loaded: str | None = None

    def __enter__(self):
        if self.spec is None:
            return self
        from facesmith.models.lora import check_lora_fits, lycoris_type, parse_lora_spec, read_lora

        lora = parse_lora_spec(self.spec)
        path = lora.path.expanduser().resolve()
        pipe = self.generator.pipe
        self.saved = [
            (layer, list(layer.active_adapters), layer.disable_adapters, dict(getattr(layer, "scaling", {})))
            for layer in _tuner_layers(pipe)
        ]
        adapter = _SHARED.get(pipe, {}).get(str(path))
        if adapter is None:
            state = read_lora(path)
            if lycoris_type(state):
                raise FacesmithError(f"--detail-lora {path.name} is a LyCORIS {lycoris_type(state)}, which "
                                     "facesmith can only merge into the model: give a LoRA")  # fmt: skip
            check_lora_fits(pipe, state, path.name)
            try:
                pipe.load_lora_weights(dict(state), adapter_name=DETAIL_ADAPTER)
            except (ValueError, KeyError, RuntimeError) as err:
                raise FacesmithError(f"cannot load --detail-lora {path}: {err}") from err
            adapter = self.loaded = DETAIL_ADAPTER
        before = {id(layer): (active, off) for layer, active, off, _ in self.saved}
        for layer in _tuner_layers(pipe):
            active, off = before.get(id(layer), ([], True))
            names = [name for name in ([] if off else active) if name != adapter] + [adapter]
            layer.enable_adapters(True)
            layer.set_adapter([n for n in names if n in layer.scaling], inference_mode=True)
            layer.set_scale(adapter, lora.weight)
        self.runner, self.generator.runner = self.generator.runner, pipe
        return self

    def __exit__(self, *exc):
        if self.spec is None:
            return False
        self.generator.runner = self.runner
        if self.loaded is not None:
            self.generator.pipe.delete_adapters(self.loaded)
        for layer, active, off, scaling in self.saved:
            layer.scaling.update(scaling)
            layer.set_adapter([n for n in active if n in layer.scaling], inference_mode=True)
            layer.enable_adapters(not off)
        return False


def detail_faces(
    generator,
    images: list[Image.Image],
    seeds: list[int],
    config: GenerateConfig,
    progress: Progress | None = None,
) -> list[Image.Image]:
    """`images` (made from `seeds` by a run of `config`) with every face found repainted by the face pass."""
    from facesmith.img2img import StartPicture

    def face_progress(stage: str, step: int, total: int | None, **fields: float) -> None:
        if progress is not None:  # a stage of its own: the main pass's step count is not reset by it
            progress("detailing faces", step, total, **fields)

    found = []
    for image, seed in zip(images, seeds, strict=True):
        faces = find_faces(image, config.detail_confidence, config.detail_max_faces)
        if not faces:
            warnings.warn(
                f"--detail-faces found no face in the image of seed {seed}: it is left as it was made",
                NoFaceDetailedWarning,
                stacklevel=3,
            )
        found.append(faces)
    if not any(found):  # nothing to repaint: the detail LoRA is not even loaded
        return list(images)
    done = []
    with detail_lora_applied(generator, config.detail_lora):
        for image, seed, faces in zip(images, seeds, found, strict=True):
            for face in faces:
                mask = face_mask(face, image.size, config.detail_dilate, config.detail_mask_blur)
                if not np.asarray(mask).any():  # eroded away: nothing of this face to repaint
                    continue
                run = face_pass_config(config, seed, generator.native_size[0])
                image = generator.sample(run, face_progress, given=StartPicture(image, mask)).images[0]
            done.append(image)
    return done
