"""Attribute editing: `facesmith edit PHOTO --add eyeglasses --set age=senior`, a face changed in place.

Owns the edit stage (`EditConfig` in, the edited photo and its TOML out) and its steps:
1. the photo's main face (MTCNN, `data/faces.py`) is cut out upright at the model's native size with
   FFHQ's alignment (`data/align.py`; at margin 1 its square is within a few pixels of the CelebA crop
   the default model was trained on);
2. the attribute classifier (`attributes/classifier.py`) reads the crop; the requested changes are laid
   over its prediction, and `data/captions.caption_from_attributes` writes the caption, in the words the
   default model was trained on;
3. the crop is redrawn from that caption by img2img (`img2img.py`) at the edit's strength: changes of
   the whole face (age, gender) repaint the whole crop; local ones repaint only their part (`masks.py`:
   glasses, smile, beard and make-up the face; hair colour the hair), and the rest of the crop is kept;
4. the result is warped back into the photo by the inverse of the alignment's similarity transform and
   laid in through a feathered mask, so pixels away from the face are the photo's own.
This follows the SDEdit recipe (Meng et al. 2022, "SDEdit: Guided Image Synthesis and Editing with
Stochastic Differential Equations"): noise the picture part-way, denoise under the new condition; the
strength trades the edit against keeping the person. `benchmarks/edit_faces.py` measures both.
A photo without a face is a FacesmithError: nothing is repainted and nothing is written.
"""

from __future__ import annotations

import dataclasses
import random
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from facesmith.config import StageConfig
from facesmith.errors import FacesmithError
from facesmith.progress import Progress

if TYPE_CHECKING:  # numpy and Pillow load when an edit runs, not with every `facesmith` command
    import numpy as np
    from PIL import Image

# --add/--remove NAME: the CelebA attributes it sets, the face part repainted (None: the whole crop) and
# the strength the edit runs at unless --strength says otherwise. Glasses and smiles at 0.8: on 50 CelebA
# faces with the default model they were seen done 6/44 and 5/27 at 0.6, 19/44 and 9/27 at 0.8, the face
# staying 0.059 and 0.054 from the photo against 0.235 between two people (benchmarks/edit_faces.py).
EDITS: dict[str, tuple[dict[str, int], str | None, float]] = {
    "eyeglasses": ({"Eyeglasses": 1}, "face", 0.8),
    "smiling": ({"Smiling": 1}, "face", 0.8),
    "beard": ({"No_Beard": 0}, "face", 0.6),
    "mustache": ({"Mustache": 1}, "face", 0.6),
    "makeup": ({"Heavy_Makeup": 1}, "face", 0.5),
    "lipstick": ({"Wearing_Lipstick": 1}, "face", 0.5),
    "bangs": ({"Bangs": 1}, None, 0.6),
    "wavy hair": ({"Wavy_Hair": 1}, None, 0.6),
    "hat": ({"Wearing_Hat": 1}, None, 0.7),
    "earrings": ({"Wearing_Earrings": 1}, None, 0.5),
}
HAIR_COLOURS = ("Black_Hair", "Blond_Hair", "Brown_Hair", "Gray_Hair")
SETTINGS = {  # --set KEY=VALUE
    "age": {g: {"age": a} for g, a in
            {"child": 8, "teenager": 16, "young adult": 28, "middle-aged": 50, "senior": 70}.items()},
    "gender": {"woman": {"Male": 0}, "man": {"Male": 1}},
    "hair": {**{c.split("_")[0].lower(): {h: int(h == c) for h in HAIR_COLOURS} | {"Bald": 0}
                for c in HAIR_COLOURS}, "bald": {"Bald": 1}},
}  # fmt: skip
SET_PARTS = {"age": (None, 0.6), "gender": (None, 0.7), "hair": ("hair", 0.7)}
REMOVE_PARTS = {"eyeglasses": "face", "smiling": "face", "beard": "face", "mustache": "face"}


@dataclass
class EditConfig(StageConfig):
    """`facesmith edit`: what to change in PHOTO's face, and the model that redraws it."""

    photo: str = ""
    add: list[str] = field(default_factory=list)  # EDITS names
    remove: list[str] = field(default_factory=list)
    set: list[str] = field(default_factory=list)  # KEY=VALUE of SETTINGS: age=senior, gender=woman, hair=gray
    strength: float | None = None  # None: the strongest of the edits' own strengths
    steps: int = 25
    cfg: float | None = None  # None: the model's own
    seed: int = 0
    model: str | None = None  # None: the default model
    device: str | None = None
    dtype: str | None = None
    allow_pickle: bool = False
    out_dir: str = "outputs"

    def validate(self) -> EditConfig:
        if not self.photo:
            raise FacesmithError("no PHOTO given: name the photo whose face to edit")
        if not (self.add or self.remove or self.set):
            raise FacesmithError("nothing to change: give --add NAME, --remove NAME or --set KEY=VALUE")
        for name in [*self.add, *self.remove]:
            if name not in EDITS:
                raise FacesmithError(f"--add/--remove {name!r} is unknown: pick {', '.join(EDITS)}")
        for item in self.set:
            key, _, value = item.partition("=")
            if key not in SETTINGS or value not in SETTINGS[key]:
                known = "; ".join(f"{k}={'|'.join(v)}" for k, v in SETTINGS.items())
                raise FacesmithError(f"--set {item!r} is unknown: use {known}")
        if self.strength is not None and not 0 < self.strength <= 1:
            raise FacesmithError(f"--strength {self.strength} is outside (0, 1]")
        if not 1 <= self.steps <= 1000:
            raise FacesmithError(f"--steps {self.steps} is outside [1, 1000]")
        return self

    def changes(self) -> tuple[dict, str | None, float]:
        """(attributes to lay over the prediction, the part to repaint or None for all, the strength)."""
        attrs: dict = {}
        parts: list[str | None] = []
        strengths: list[float] = []
        for name in self.add:
            attrs.update(EDITS[name][0])
            parts.append(EDITS[name][1])
            strengths.append(EDITS[name][2])
        for name in self.remove:
            attrs.update({k: 1 - v for k, v in EDITS[name][0].items()})
            parts.append(REMOVE_PARTS.get(name))
            strengths.append(EDITS[name][2])
        for item in self.set:
            key, _, value = item.partition("=")
            attrs.update(SETTINGS[key][value])
            parts.append(SET_PARTS[key][0])
            strengths.append(SET_PARTS[key][1])
        part = parts[0] if len(set(parts)) == 1 else None  # edits of different parts repaint the crop
        return attrs, part, self.strength if self.strength is not None else max(strengths)


@dataclass
class Edit:
    """One edited photo and what made it."""

    image: Image.Image
    caption: str
    before: dict  # the classifier's attributes of the aligned face
    crop: Image.Image  # the aligned face, before
    edited: Image.Image  # the aligned face, after
    strength: float


def edit_face(
    generator, photo: Image.Image, config: EditConfig, classifier=None, name: str = "PHOTO"
) -> Edit:
    """`photo` with its main face edited as `config` asks (see the module docstring)."""
    import numpy as np
    from PIL import Image, ImageFilter

    from facesmith.attributes.classifier import AttributeClassifier, caption_attributes
    from facesmith.config import GenerateConfig, in_memory
    from facesmith.data.align import align_face, face_quad
    from facesmith.data.captions import caption_from_attributes
    from facesmith.data.faces import detect_faces, main_face
    from facesmith.img2img import StartPicture
    from facesmith.masks import face_part

    photo = photo.convert("RGB")
    face = main_face(detect_faces(photo, max_pixels=4_000_000), photo.size)
    if face is None:
        raise FacesmithError(f"no face was found in {name}: edit needs a photo with a face in it")
    side = generator.native_size[0]
    crop = align_face(photo, face.landmarks, side)
    classifier = classifier or AttributeClassifier.load()
    predicted = classifier.predict([crop])[0]
    changes, part, strength = config.changes()
    attrs = {**caption_attributes(predicted), **changes}
    caption = caption_from_attributes(attrs, random.Random(config.seed))
    mask = None
    if part is not None:
        found = detect_faces(crop)
        if found:  # the part's mask in the crop's own frame; without a face there, the whole crop
            mask = Image.fromarray(
                face_part(main_face(found, crop.size), part, crop.size).astype(np.uint8) * 255
            )
            mask = mask.filter(ImageFilter.MaxFilter(5)).filter(ImageFilter.GaussianBlur(4))
    run = GenerateConfig(
        prompt=caption, steps=config.steps, cfg=config.cfg, seed=config.seed, width=side, height=side,
        init_image=in_memory(name), strength=strength, mask="face part" if mask is not None else None,
    )  # fmt: skip
    edited = generator.sample(run.validate(), given=StartPicture(crop, mask)).images[0]
    quad = face_quad(face.landmarks)
    image = paste_back(photo, edited, quad, mask)
    return Edit(image, caption, predicted, crop, edited, strength)


def paste_back(
    photo: Image.Image, edited: Image.Image, quad: np.ndarray, mask: Image.Image | None
) -> Image.Image:
    """`edited` (the aligned crop of `quad`) warped back into `photo` through a feathered mask: `mask`
    where a part was repainted, else the crop's inscribed circle, feathered over an eighth of its side."""
    import numpy as np
    from PIL import Image

    side = edited.width
    if mask is None:
        yy, xx = np.mgrid[0:side, 0:side] + 0.5
        r = np.hypot(xx - side / 2, yy - side / 2) / (side / 2)
        mask = Image.fromarray(np.uint8(255 * np.clip((1 - r) * 8, 0, 1)))
    # crop (u, v) -> photo: q0 + u/side (q3 - q0) + v/side (q1 - q0); PIL's AFFINE wants photo -> crop.
    q0, q1, q3 = quad[0], quad[1], quad[3]
    forward = np.array([[*(q3 - q0) / side], [*(q1 - q0) / side]]).T  # columns: d(photo)/du, d(photo)/dv
    inverse = np.linalg.inv(forward)
    offset = -inverse @ q0
    coefficients = (inverse[0, 0], inverse[0, 1], offset[0], inverse[1, 0], inverse[1, 1], offset[1])
    warped = edited.transform(photo.size, Image.AFFINE, coefficients, Image.BICUBIC)
    alpha = mask.convert("L").transform(photo.size, Image.AFFINE, coefficients, Image.BILINEAR)
    return Image.composite(warped, photo, alpha)


def run_edit(config: EditConfig, progress: Progress | None = None, generator=None) -> list[Path]:
    """`facesmith edit`: the edited photo as a PNG (caption and strength in its metadata), the aligned
    face before and after side by side, and edit.toml, in out_dir."""
    from PIL import Image

    from facesmith.generate import FaceGenerator
    from facesmith.img2img import flatten, read_image
    from facesmith.runtime import prepare_out_dir

    config.validate()
    photo = flatten(read_image(config.photo, "PHOTO"))
    if generator is None:
        if progress is not None:
            progress("loading model", 0, None)
        generator = FaceGenerator.from_settings(config)
    result = edit_face(generator, photo, config, name=str(config.photo))
    out_dir = prepare_out_dir(config.out_dir)
    from PIL.PngImagePlugin import PngInfo

    info = PngInfo()
    info.add_text("parameters", f"{result.caption}\nSteps: {config.steps}, Seed: {config.seed}, "
                                f"Denoising strength: {result.strength:g}, Version: facesmith edit")  # fmt: skip
    stem = Path(config.photo).stem
    edited = out_dir / f"{stem}-edited.png"
    result.image.save(edited, pnginfo=info)
    pair = Image.new("RGB", (result.crop.width * 2, result.crop.height))
    pair.paste(result.crop, (0, 0))
    pair.paste(result.edited, (result.crop.width, 0))
    pair.save(out_dir / f"{stem}-face-before-after.png")
    dataclasses.replace(config, out_dir=str(out_dir)).save(out_dir / "edit.toml")
    return [edited, out_dir / f"{stem}-face-before-after.png", out_dir / "edit.toml"]
