"""The page's "Edit a face" tab: `facesmith edit` on an uploaded photo, on the server's loaded model.

Owns the tab's controls, in `facesmith edit`'s vocabulary (`edit.EDITS` to add or remove, `edit.SETTINGS`
for age, gender and hair, the strength, steps and seed), and its event: `edit.edit_face` runs as a task of
the server's one queue (`JobQueue.submit(task=...)`) on the generator the server loaded, so nothing is
loaded a second time; the attribute classifier is loaded once, at the first edit. The photo before and
after are shown side by side with the aligned face before and after, and the edited photo is offered as
a PNG carrying the same `parameters` text `facesmith edit` writes plus facesmith's JSON (the edit and
its caption). A photo with no face, or a bad edit, is an error message on the page, never a traceback.
"""

from __future__ import annotations

import threading

import gradio as gr
from PIL import Image

from facesmith.config import GenerateConfig, in_memory
from facesmith.edit import EDITS, SETTINGS, EditConfig
from facesmith.errors import FacesmithError
from facesmith.serve.page_jobs import PageContext, finished, follow, page_user, progress_bar

KEEP = "keep"  # an age/gender/hair choice that changes nothing
PHOTO_LABEL = "the uploaded photo"


class ReportingGenerator:
    """The server's generator, with every `sample` reporting its steps to the job's `progress`:
    `edit.edit_face` samples without a progress callback of its own."""

    def __init__(self, generator, progress):
        self.generator, self.progress = generator, progress

    @property
    def native_size(self) -> tuple[int, int]:
        return self.generator.native_size

    def sample(self, config: GenerateConfig, progress=None, given=None):
        return self.generator.sample(config, self.progress, given)


class SharedClassifier:
    """The attribute classifier, loaded by the first edit that needs it and kept for the next ones."""

    def __init__(self):
        self._classifier, self._lock = None, threading.Lock()

    def get(self):
        from facesmith.attributes.classifier import AttributeClassifier

        with self._lock:
            if self._classifier is None:
                self._classifier = AttributeClassifier.load()
            return self._classifier


def edit_config(add, remove, age, gender, hair, strength, steps, seed) -> EditConfig:
    """The EditConfig of the tab's controls; FacesmithError naming what to fix."""
    chosen = {"age": age, "gender": gender, "hair": hair}
    config = EditConfig(
        photo=PHOTO_LABEL, add=list(add or []), remove=list(remove or []),
        set=[f"{key}={value}" for key, value in chosen.items() if value and value != KEEP],
        strength=float(strength) if strength else None, steps=int(steps), seed=int(seed or 0),
    )  # fmt: skip
    return config.validate()


def edited_png(result, config: EditConfig) -> bytes:
    """The edited photo as PNG bytes with `facesmith edit`'s parameters text and facesmith's JSON chunk."""
    from facesmith.metadata import Recipe, png_bytes

    parameters = (f"{result.caption}\nSteps: {config.steps}, Seed: {config.seed}, "
                  f"Denoising strength: {result.strength:g}, Version: facesmith edit")  # fmt: skip
    recorded = {k: v for k, v in config.to_dict().items() if k not in ("photo", "out_dir")}
    return png_bytes(result.image, Recipe(parameters, {"edit": recorded, "caption": result.caption}))


def edit_tab(context: PageContext) -> None:
    """The tab's controls and event, inside the page's gr.Blocks (`page.build_page`)."""
    queue, folder = context.queue, context.folder
    classifier = SharedClassifier()

    def run(photo, add, remove, age, gender, hair, strength, steps, seed, request: gr.Request):
        if photo is None:
            raise gr.Error("no photo: upload a photo with a face in it")
        try:
            config = edit_config(add, remove, age, gender, hair, strength, steps, seed)
            if config.steps > context.max_steps:
                raise FacesmithError(f"this server allows at most {context.max_steps} steps")
            photo = photo.convert("RGB")
            _, _, used = config.changes()
            # counts the job's steps for the progress bar, as the img2img run inside edit_face takes them
            counted = GenerateConfig(
                prompt="edit", steps=config.steps, init_image=in_memory(PHOTO_LABEL), strength=used
            )

            def task(generator, progress):
                from facesmith.edit import edit_face

                return edit_face(ReportingGenerator(generator, progress), photo, config,
                                 classifier=classifier.get(), name=PHOTO_LABEL)  # fmt: skip

            job = queue.submit(counted, owner=page_user(request), task=task)
        except FacesmithError as err:
            raise gr.Error(str(err)) from None
        keep = (gr.update(),) * 4
        try:
            for bar in follow(job, queue):
                yield (*keep, bar)
            result = finished(job)
        finally:
            queue.cancel(job)
        path = folder.save(job.id, 0, config.seed, edited_png(result, config))
        pair = Image.new("RGB", (result.crop.width * 2, result.crop.height))
        pair.paste(result.crop, (0, 0))
        pair.paste(result.edited, (result.crop.width, 0))
        yield result.image, pair, result.caption, path, progress_bar(job, queue)

    with gr.Row():
        with gr.Column(scale=3):
            photo = gr.Image(label="Photo with a face", type="pil", image_mode="RGB",
                             sources=["upload", "clipboard"], elem_id="edit-photo")  # fmt: skip
            add = gr.CheckboxGroup(list(EDITS), label="Add", elem_id="edit-add")
            remove = gr.CheckboxGroup(list(EDITS), label="Remove", elem_id="edit-remove")
            with gr.Row():
                age = gr.Dropdown([KEEP, *SETTINGS["age"]], value=KEEP, label="Age")
                gender = gr.Dropdown([KEEP, *SETTINGS["gender"]], value=KEEP, label="Gender")
                hair = gr.Dropdown([KEEP, *SETTINGS["hair"]], value=KEEP, label="Hair")
            with gr.Row():
                strength = gr.Slider(0, 1, value=0, step=0.05, label="Strength (0: each edit's own, 0.5-0.8)")
                steps = gr.Slider(1, context.max_steps, value=min(EditConfig.steps, context.max_steps), step=1,
                                  label="Steps", elem_id="edit-steps")  # fmt: skip
                seed = gr.Number(EditConfig.seed, label="Seed", precision=0)
            button = gr.Button("Edit", variant="primary", elem_id="edit-run")
            progress = gr.HTML(elem_id="edit-progress")
        with gr.Column(scale=4):
            after = gr.Image(label="After", type="pil", format="png", interactive=False, elem_id="edit-after")
            faces = gr.Image(label="The face, before | after", type="pil", format="png", interactive=False,
                             elem_id="edit-faces")  # fmt: skip
            caption = gr.Textbox(label="Caption it was redrawn from", lines=2, elem_id="edit-caption")
            download = gr.File(label="Edited photo, PNG with metadata", elem_id="edit-download")
    button.click(
        run,
        [photo, add, remove, age, gender, hair, strength, steps, seed],
        [after, faces, caption, download, progress],
        concurrency_limit=None,  # the JobQueue orders the work
    )
