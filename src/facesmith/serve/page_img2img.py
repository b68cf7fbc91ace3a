"""The page's "Image to image / inpaint" tab: A1111's img2img and inpaint tabs in one.

Owns the tab's controls and its one event: an init image uploaded into Gradio's image editor
(`gr.ImageMask`), on which the mask is drawn with the brush (its layer's alpha is the mask, as A1111's
sketch mask is), or a face part detected in it instead (`masks.face_part_mask`: face, hair, mouth, eyes);
A1111's strength, resize mode, mask blur, "only masked" with its padding, masked content (original,
latent noise, fill) and the face detailer. The run is `img2img.py`'s, from the picture in memory
(`StartPicture`), through the server's one queue with txt2img's limits and progress (`page_jobs.follow`);
the gallery's PNGs carry their metadata as txt2img's do. A drawn mask of nothing with no face part chosen
runs plain img2img. Uploads are read from the event, never from a path a request names. The mask is
made before the job queues (a face part by MTCNN, in the page's worker thread), as the API decodes its
images before queueing, so a picture without a face is an error at once, not after a wait.
"""

from __future__ import annotations

import warnings

import gradio as gr
import numpy as np
from PIL import ImageChops

from facesmith.config import MASKED_CONTENT, RESIZE_MODES, GenerateConfig, in_memory
from facesmith.errors import FacesmithError
from facesmith.masks import FACE_PARTS
from facesmith.samplers import sampler_names
from facesmith.serve.page_jobs import (
    PageContext,
    detail_settings,
    detailer_controls,
    finished,
    follow,
    page_user,
    progress_bar,
)

DRAWN = "drawn with the brush"
IMAGE_LABEL = "the uploaded image"


def start_picture(editor: dict | None, mask_source: str, config: GenerateConfig):
    """(StartPicture, warnings) from the editor's value: its background, and the mask drawn on its layer or
    the face part `mask_source` names; FacesmithError for no image or no face."""
    from facesmith.img2img import StartPicture, finish_mask, flatten, mask_from_image
    from facesmith.masks import face_part_mask

    background = (editor or {}).get("background")
    if background is None:
        raise FacesmithError("no init image: upload the picture to start from")
    image = flatten(background)
    notes: list[str] = []
    if mask_source in FACE_PARTS:
        part = face_part_mask(image, mask_source, name=IMAGE_LABEL)
        return StartPicture(image, finish_mask(part, config, f"the {mask_source} mask")), notes
    layers = [layer for layer in (editor.get("layers") or []) if layer is not None]
    drawn = [layer.convert("RGBA").getchannel("A") for layer in layers]
    if not drawn or not any(np.asarray(alpha).any() for alpha in drawn):
        return StartPicture(image, None), notes
    mask = drawn[0]
    for alpha in drawn[1:]:  # every layer's strokes repaint
        mask = ImageChops.lighter(mask, alpha.resize(mask.size))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        picture = StartPicture(image, mask_from_image(mask, image, config, "the drawn mask", IMAGE_LABEL))
    notes = [str(w.message) for w in caught]
    return picture, notes


def img2img_tab(context: PageContext, default_sampler: str, default_cfg: float) -> None:
    """The tab's controls and event, inside the page's gr.Blocks (`page.build_page`)."""
    queue, folder, native = context.queue, context.folder, context.native
    size = min(native, context.max_size)

    def run(
        editor, mask_source, prompt, negative, strength, resize_mode, mask_blur, only_masked, padding,
        masked_content, steps, cfg, sampler, seed, count, width, height, detail, detail_strength,
        detail_confidence, request: gr.Request,
    ):  # fmt: skip
        seed = int(seed) if seed is not None and int(seed) >= 0 else None
        config = GenerateConfig(
            prompt=prompt, negative=negative, steps=int(steps), cfg=float(cfg), sampler=sampler, seed=seed,
            count=int(count), width=int(width), height=int(height), init_image=in_memory(IMAGE_LABEL),
            strength=float(strength), resize_mode=resize_mode, mask_blur=int(mask_blur),
            inpaint_full_res_padding=int(padding), masked_content=masked_content,
            **detail_settings(detail, detail_strength, detail_confidence),
        )  # fmt: skip
        context.check(config)
        try:
            given, notes = start_picture(editor, mask_source, config)
        except FacesmithError as err:
            raise gr.Error(str(err)) from None
        if given.mask is not None:  # a label for the recipe: the mask came in memory
            config.mask = mask_source if mask_source in FACE_PARTS else "drawn"
            config.inpaint_full_res = bool(only_masked)
        for note in notes:
            gr.Warning(note)
        try:
            job = queue.submit(config, owner=page_user(request), given=given)
        except FacesmithError as err:
            raise gr.Error(str(err)) from None
        keep = (gr.update(),) * 3
        try:
            for bar in follow(job, queue):
                yield (*keep, bar)
            pictures = finished(job)
        finally:
            queue.cancel(job)
        paths = [folder.save(job.id, i, p.seed, p.png) for i, p in enumerate(pictures)]
        gallery = [(path, f"seed {p.seed}") for path, p in zip(paths, pictures, strict=True)]
        yield gallery, pictures[0].parameters, paths, progress_bar(job, queue)

    with gr.Row():
        with gr.Column(scale=3):
            prompt = gr.Textbox(label="Prompt", lines=2, elem_id="i2i-prompt",
                                placeholder="a photo of a smiling woman with glasses")  # fmt: skip
            negative = gr.Textbox(label="Negative prompt", lines=1, elem_id="i2i-negative")
            editor = gr.ImageMask(
                label="Init image: upload it, then paint over what to repaint",
                type="pil", image_mode="RGBA", format="png", sources=["upload", "clipboard"],
                brush=gr.Brush(colors=["#ffffff"], color_mode="fixed"), layers=False,
                elem_id="i2i-image", canvas_size=(context.max_size, context.max_size),
            )  # fmt: skip
            mask_source = gr.Radio([DRAWN, *FACE_PARTS], value=DRAWN, label="Mask",
                                   info="or a part of the faces found in the image", elem_id="i2i-mask")  # fmt: skip
            with gr.Row():
                strength = gr.Slider(0.05, 1, value=GenerateConfig.strength, step=0.05,
                                     label="Denoising strength", elem_id="i2i-strength")  # fmt: skip
                resize_mode = gr.Dropdown(list(RESIZE_MODES), value=RESIZE_MODES[0], label="Resize mode")
            with gr.Row():
                mask_blur = gr.Slider(0, 64, value=GenerateConfig.mask_blur, step=1, label="Mask blur")
                masked_content = gr.Radio(list(MASKED_CONTENT), value="original", label="Masked content")
            with gr.Row():
                only_masked = gr.Checkbox(False, label="Only masked (repaint a crop at full size)")
                padding = gr.Slider(0, 256, value=GenerateConfig.inpaint_full_res_padding, step=4,
                                    label="Only masked padding, px")  # fmt: skip
            with gr.Row():
                steps = gr.Slider(1, context.max_steps, value=min(GenerateConfig.steps, context.max_steps),
                                  step=1, label="Steps", elem_id="i2i-steps")  # fmt: skip
                cfg = gr.Slider(0, 20, value=default_cfg, step=0.5, label="CFG scale")
                sampler = gr.Dropdown(sampler_names(), value=default_sampler, label="Sampler")
            with gr.Row():
                seed = gr.Number(-1, label="Seed (-1 = random)", precision=0, elem_id="i2i-seed")
                count = gr.Slider(1, context.max_batch, value=1, step=1, label="Count")
            with gr.Row():
                width = gr.Slider(64, context.max_size, value=size, step=8, label="Width")
                height = gr.Slider(64, context.max_size, value=size, step=8, label="Height")
            detailer = detailer_controls("i2i")
            button = gr.Button("Generate", variant="primary", elem_id="i2i-generate")
            progress = gr.HTML(elem_id="i2i-progress")
        with gr.Column(scale=4):
            gallery = gr.Gallery(label="Images", columns=2, format="png", type="filepath",
                                 elem_id="i2i-gallery", buttons=["download", "fullscreen"])  # fmt: skip
            parameters = gr.Textbox(label="Parameters", lines=4, elem_id="i2i-parameters")
            files = gr.File(label="PNGs with metadata", file_count="multiple", elem_id="i2i-downloads")
    button.click(
        run,
        [editor, mask_source, prompt, negative, strength, resize_mode, mask_blur, only_masked, padding,
         masked_content, steps, cfg, sampler, seed, count, width, height, *detailer],
        [gallery, parameters, files, progress],
        concurrency_limit=None,  # the JobQueue orders the work
    )  # fmt: skip
