"""The web page: a Gradio Blocks app for making faces, mounted on the same FastAPI app as the API.

Owns the page's frame (three tabs: text to face here, image to image / inpaint in `page_img2img.py`,
edit a face in `page_edit.py`) and the text-to-face tab: the controls (prompt, negative prompt, steps,
CFG, sampler, seed with random/reuse, count, size, LoRA and weight, the face detailer), the
face-attribute controls that write the prompt (through `data.captions`, the same wording the default
model was trained on), the gallery with each image's parameters and its PNG for download (metadata
inside), reproducing an uploaded PNG's recipe (`metadata.config_from_png`; only a file uploaded through
the page, never a path a request names), and the progress bar. What the tabs share (following a job,
the limits, the detailer's controls) is `page_jobs.py`'s. Jobs go through the server's one `JobQueue`,
so the page and the API wait in the same line.

Gradio must never phone home: analytics are switched off before it is imported and in the Blocks, the
theme uses local fonts only, and server-side rendering (a Node process) is off.
"""

from __future__ import annotations

import os
import random

os.environ["GRADIO_ANALYTICS_ENABLED"] = "False"  # read by gradio at import time as well as by Blocks

# At module level: gradio finds gr.Request and gr.SelectData parameters through typing.get_type_hints,
# which resolves these (string) annotations in the module's globals.
import gradio as gr

from facesmith.config import GenerateConfig
from facesmith.errors import FacesmithError
from facesmith.samplers import sampler_names
from facesmith.serve.jobs import JobQueue
from facesmith.serve.page_edit import edit_tab
from facesmith.serve.page_img2img import img2img_tab
from facesmith.serve.page_jobs import (
    PageContext,
    PictureFolder,
    detail_settings,
    detailer_controls,
    finished,
    follow,
    page_user,
    progress_bar,
)

NO_LORA = "none"
HAIR = {"any": {}, "black": {"Black_Hair": 1}, "blond": {"Blond_Hair": 1}, "brown": {"Brown_Hair": 1},
        "gray": {"Gray_Hair": 1}, "bald": {"Bald": 1}}  # fmt: skip
AGES = {"any": None, "child": 8, "teenager": 16, "young adult": 27, "middle-aged": 48, "senior": 70}
GENDERS = {"any": {}, "woman": {"Male": 0}, "man": {"Male": 1}}
ETHNICITIES = ["any", "white", "Black", "East Asian", "South Asian"]
FEATURES = {  # checkbox label -> CelebA attributes it sets
    "smiling": {"Smiling": 1},
    "glasses": {"Eyeglasses": 1},
    "beard": {"No_Beard": 0},
    "mustache": {"Mustache": 1},
    "wavy hair": {"Wavy_Hair": 1},
    "bangs": {"Bangs": 1},
    "hat": {"Wearing_Hat": 1},
    "makeup": {"Heavy_Makeup": 1},
    "earrings": {"Wearing_Earrings": 1},
}


def attributes_from_controls(
    gender: str, age: str, hair: str, ethnicity: str, features: list[str]
) -> dict[str, int | str]:
    """The attribute dict (`data.captions` keys) that the page's face controls describe."""
    attrs: dict[str, int | str] = {**GENDERS[gender], **HAIR[hair]}
    if AGES[age] is not None:
        attrs["age"] = AGES[age]
    if ethnicity != "any":
        attrs["ethnicity"] = ethnicity
    for feature in features:
        attrs.update(FEATURES[feature])
    return attrs


def prompt_from_controls(gender: str, age: str, hair: str, ethnicity: str, features: list[str]) -> str:
    """A caption in the training wording; seeded so the same controls always write the same prompt."""
    from facesmith.data.captions import caption_from_attributes

    attrs = attributes_from_controls(gender, age, hair, ethnicity, features)
    return caption_from_attributes(attrs, random.Random(0))


def build_page(queue: JobQueue, *, max_steps: int, max_size: int, max_batch: int):
    """The gr.Blocks page over `queue`; mount it with `gradio.mount_gradio_app`."""
    folder = PictureFolder()
    context = PageContext(queue, folder, max_steps, max_size, max_batch)
    native = context.native
    loras = [NO_LORA, *queue.loras]
    # the model's own sampler and CFG (the default model's are not DDIM and 7.5) are what the page starts with
    default_sampler, default_cfg = queue.generator.model.default_sampler, queue.generator.model.default_cfg

    def write_prompt(gender, age, hair, ethnicity, features):
        return prompt_from_controls(gender, age, hair, ethnicity, features)

    def generate(
        prompt, negative, steps, cfg, sampler, seed, count, width, height, lora, lora_weight,
        detail, detail_strength, detail_confidence, request: gr.Request,
    ):  # fmt: skip
        """Stream the progress bar while the job waits and runs, then the gallery; a generator, so a
        closed page closes it and its job is cancelled. The LoRA "none" applies none."""
        seed = int(seed) if seed is not None and int(seed) >= 0 else None
        config = GenerateConfig(prompt=prompt, negative=negative, steps=int(steps), cfg=float(cfg),
                                sampler=sampler, seed=seed, count=int(count), width=int(width),
                                height=int(height),
                                **detail_settings(detail, detail_strength, detail_confidence))  # fmt: skip
        context.check(config)
        try:
            job = queue.submit(
                config,
                {lora: float(lora_weight)} if lora in queue.loras else {},
                owner=page_user(request),
            )
        except FacesmithError as err:
            raise gr.Error(str(err)) from None
        keep = (gr.update(),) * 5
        try:
            for bar in follow(job, queue):
                yield (*keep, bar)
            pictures = finished(job)
        finally:
            queue.cancel(job)  # a no-op once it finished; stops it if the page went away
        paths = [folder.save(job.id, i, p.seed, p.png) for i, p in enumerate(pictures)]
        gallery = [(path, f"seed {p.seed}") for path, p in zip(paths, pictures, strict=True)]
        parameters = [p.parameters for p in pictures]
        yield gallery, parameters[0], paths, pictures[0].seed, parameters, progress_bar(job, queue)

    def show_parameters(parameters: list[str], event: gr.SelectData):
        return parameters[event.index] if parameters and event.index < len(parameters) else ""

    def reproduce(path):
        """Fill the controls from an uploaded PNG's recipe.

        Only a file that came in through Gradio's upload route is read: an event can name any path, and
        reading one would tell a client which files exist on the server and what their metadata holds.
        Upload folders are named by a hash of the content, so only who has the file can name its upload.
        Errors never show the path.
        """
        from facesmith.metadata import config_from_png

        if not path:
            return [gr.update()] * 8
        uploaded = {os.path.realpath(p) for p in page.upload_file_set}
        real = os.path.realpath(path)
        if real not in uploaded or not os.path.isfile(real):
            raise gr.Error("only a PNG uploaded on this page can be reproduced: upload the image")
        try:
            config = config_from_png(real)
        except FacesmithError:
            raise gr.Error(
                "the uploaded file is not a PNG with facesmith or A1111 metadata: upload one that has it"
            ) from None
        if config.sampler not in sampler_names():
            gr.Warning(f"sampler {config.sampler} is not known here; keeping the current one")
        size = [min(max_size, v) if v else native for v in (config.width, config.height)]
        return (
            config.prompt,
            config.negative,
            min(config.steps, max_steps),
            config.cfg,
            config.sampler if config.sampler in sampler_names() else gr.update(),
            config.seed if config.seed is not None else -1,
            size[0],
            size[1],
        )

    # delete_cache: gradio copies every shown or uploaded file into its cache; clear files older than an
    # hour, hourly, so a long-running server's disk stays flat too.
    with gr.Blocks(analytics_enabled=False, title="facesmith", delete_cache=(3600, 3600)) as page:
        gr.Markdown("# facesmith\nFaces from text, on this machine. API: `/sdapi/v1` ([docs](/docs)).")
        last_seed = gr.State(-1)
        all_parameters = gr.State([])
        with gr.Tabs():
            with gr.Tab("Text to face", id="txt2img", elem_id="tab-txt2img"), gr.Row():
                with gr.Column(scale=3):
                    prompt = gr.Textbox(label="Prompt", lines=2, elem_id="prompt",
                                        placeholder="a photo of a smiling woman with glasses")  # fmt: skip
                    negative = gr.Textbox(label="Negative prompt", lines=1, elem_id="negative")
                    with gr.Accordion("Face attributes (write the prompt)", open=True):
                        with gr.Row():
                            gender = gr.Radio(list(GENDERS), value="any", label="Gender")
                            age = gr.Dropdown(list(AGES), value="any", label="Age")
                            hair = gr.Dropdown(list(HAIR), value="any", label="Hair")
                            ethnicity = gr.Dropdown(ETHNICITIES, value="any", label="Ethnicity")
                        features = gr.CheckboxGroup(list(FEATURES), label="Features", elem_id="features")
                        write = gr.Button("Write prompt from attributes", elem_id="write-prompt")
                    with gr.Row():
                        steps = gr.Slider(1, max_steps, value=min(GenerateConfig.steps, max_steps), step=1,
                                          label="Steps", elem_id="steps")  # fmt: skip
                        cfg = gr.Slider(0, 20, value=default_cfg, step=0.5, label="CFG scale")
                    with gr.Row():
                        sampler = gr.Dropdown(sampler_names(), value=default_sampler, label="Sampler")
                        count = gr.Slider(1, max_batch, value=1, step=1, label="Count")
                    with gr.Row():
                        seed = gr.Number(-1, label="Seed (-1 = random)", precision=0, elem_id="seed")
                        random_seed = gr.Button("random seed", size="sm")
                        reuse_seed = gr.Button("reuse last seed", size="sm")
                    with gr.Row():
                        width = gr.Slider(64, max_size, value=min(native, max_size), step=8, label="Width")
                        height = gr.Slider(64, max_size, value=min(native, max_size), step=8, label="Height")
                    with gr.Row():
                        lora = gr.Dropdown(loras, value=NO_LORA, label="LoRA", interactive=len(loras) > 1,
                                           info=None if len(loras) > 1 else "start the server with --lora FILE")  # fmt: skip
                        lora_weight = gr.Slider(-1, 2, value=1.0, step=0.05, label="LoRA weight")
                    detailer = detailer_controls("txt2img")
                    generate_button = gr.Button("Generate", variant="primary", elem_id="generate")
                    progress = gr.HTML(elem_id="progress")
                    upload = gr.File(label="Reproduce from a PNG (reads its metadata)", file_types=[".png"],
                                     type="filepath", elem_id="reproduce")  # fmt: skip
                with gr.Column(scale=4):
                    gallery = gr.Gallery(label="Images", columns=2, format="png", type="filepath",
                                         elem_id="gallery", buttons=["download", "fullscreen"])  # fmt: skip
                    parameters = gr.Textbox(label="Parameters", lines=4, elem_id="parameters")
                    files = gr.File(label="PNGs with metadata", file_count="multiple", elem_id="downloads")

            with gr.Tab("Image to image / inpaint", id="img2img", elem_id="tab-img2img"):
                img2img_tab(context, default_sampler, default_cfg)
            with gr.Tab("Edit a face", id="edit", elem_id="tab-edit"):
                edit_tab(context)

        controls = [gender, age, hair, ethnicity, features]
        write.click(write_prompt, controls, prompt)
        random_seed.click(lambda: -1, None, seed)
        reuse_seed.click(lambda s: s, last_seed, seed)
        generate_button.click(
            generate,
            [prompt, negative, steps, cfg, sampler, seed, count, width, height, lora, lora_weight, *detailer],
            [gallery, parameters, files, last_seed, all_parameters, progress],
            concurrency_limit=None,  # the JobQueue orders the work; gradio only waits on it
        )
        gallery.select(show_parameters, all_parameters, parameters)
        upload.upload(
            reproduce,
            upload,
            [prompt, negative, steps, cfg, sampler, seed, width, height],
            api_name="reproduce",
        )
    return page
