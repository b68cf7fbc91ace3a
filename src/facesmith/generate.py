"""Text to face: the Stable Diffusion pipeline (text encoder -> UNet + scheduler in latents -> VAE).

`FaceGenerator` wraps a diffusers StableDiffusion(XL)Pipeline built from any (tokenizer, text encoder,
UNet, VAE, scheduler), and owns what facesmith adds around it:
- the sampler, rebuilt from the model's own scheduler config for every run (`samplers.py`);
- seeds: image i of a batch started at seed s is made alone, from a CPU torch.Generator seeded s+i, so
  it is exactly the image that seed s+i makes by itself, and the same on any device;
- device and dtype: CUDA in bf16/fp16, CPU in fp32 (the NaN-guarded VAE decode is `latents.py`'s);
- prompt text (`prompts.py`): plain prompts go to diffusers as strings, truncated at 77 tokens with a
  warning naming the words cut; A1111's `(word:1.2)` emphasis goes as weighted embeddings;
- `trace`: the predicted clean image x0 at evenly spaced steps (recorded by `trace.py`).
`run_generate` is the stage behind `facesmith generate` (config in, PNGs with `metadata.py`'s recipe
out). The forward process (`facesmith noise`) is `noise.py`'s; img2img and inpainting are `img2img.py`'s;
device, dtype and output folder are `runtime.py`'s.
"""

from __future__ import annotations

import dataclasses
import secrets
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from PIL import Image

from facesmith.config import GenerateConfig
from facesmith.errors import FacesmithError
from facesmith.img2img import StartPicture, prepare_start
from facesmith.latents import decode_latents, to_pil
from facesmith.metadata import recipe, write_png
from facesmith.models.loading import LoadedModel, load_model
from facesmith.progress import Progress
from facesmith.prompts import (  # noqa: F401  (PromptTruncatedWarning, truncated_words: kept importable here)
    PromptTruncatedWarning,
    PromptWeightingWarning,
    truncated_words,
    uses_syntax,
    warn_about,
    weighted_embeddings,
)
from facesmith.runtime import choose_device, choose_dtype, prepare_out_dir
from facesmith.samplers import make_scheduler
from facesmith.trace import TraceRecorder, detached_after, image_strip

LOAD_TIME_SETTINGS = ("model", "loras", "embeddings", "vae", "device", "dtype", "engine", "allow_pickle")


class EngineFallbackWarning(UserWarning):
    """`--engine auto` chose an engine that could not be set up here; the eager pipeline samples instead."""


class SizeWarning(UserWarning):
    """The image size is far from the model's native one: SD models repeat or break faces there."""


class ModelMismatchWarning(UserWarning):
    """`--from` a PNG made with another model than the one loaded: the image will not be the same."""


@dataclass
class Generation:
    images: list[Image.Image]
    seeds: list[int]
    config: GenerateConfig  # with the seed, width and height that were used
    trace: list[list[Image.Image]] = field(default_factory=list)  # per image: x0 predictions, first to last


class FaceGenerator:
    """A loaded model, ready to turn prompts into face images."""

    def __init__(
        self,
        model: LoadedModel,
        *,
        device: str | None = None,
        dtype: str | None = None,
        loras: list[str] | tuple[str, ...] = (),
        allow_pickle: bool = False,
        engine: str | None = None,
        vae: str | None = None,
        fuse_loras: bool = True,
        progress: Progress | None = None,
        embeddings: list[str] | tuple[str, ...] = (),
    ):
        """`embeddings`: textual-inversion files (models/embeddings.py), called by name in prompts. `progress` hears what takes long at load (an ONNX export); `fuse_loras`: merge the LoRAs into the weights at their given weights (fast: plain layers, and
        the ONNX engine can run them); False keeps them as peft adapters whose weights can change per
        call, as the server's `<lora:name:weight>` tags need."""
        from facesmith.engines import engine_pipeline, resolve_engine
        from facesmith.models.loading import load_vae
        from facesmith.models.lora import apply_loras, parse_lora_spec

        self.model = model
        self.pipe = model.pipe
        self.device = choose_device(device)
        self.dtype = choose_dtype(self.device, dtype)
        self.device_name, self.dtype_name = device, dtype
        specs = [parse_lora_spec(spec) for spec in loras]
        for spec in specs:
            if not spec.path.is_file():
                raise FacesmithError(f"LoRA file {spec.path} does not exist or is not a file")
        self.loras = [f"{spec.path.resolve()}:{spec.weight:g}" for spec in specs]
        apply_loras(self.pipe, specs, allow_pickle=allow_pickle, fused=fuse_loras)
        if fuse_loras and self.pipe.get_list_adapters():  # LoHa/LoKr files were merged already
            # diffusers' fuse_lora merges each adapter at its set weight; unloading then drops the peft
            # wrappers and keeps the merged weights. Unfused, every LoRA layer costs extra matmuls each
            # step and rules out the ONNX engine (benchmarks/lora_speed.py measures both).
            self.pipe.fuse_lora()
            self.pipe.unload_lora_weights()
        from facesmith.models.embeddings import apply_embeddings

        self.embeddings = apply_embeddings(self.pipe, embeddings, allow_pickle=allow_pickle)
        self.vae = str(Path(vae).expanduser().resolve()) if vae else None
        if vae:
            self.pipe.vae = load_vae(vae, self.pipe.unet.config.in_channels)
        self.base_scheduler_config = dict(self.pipe.scheduler.config)
        self.pipe.to(self.device, self.dtype)
        self.pipe.set_progress_bar_config(disable=True)
        self.engine_name = engine
        self.engine = resolve_engine(engine, self.pipe, self.device, self.dtype)
        # `pipe` stays the model as loaded (saving, LoRA weights); `runner` is what samples, on the engine.
        try:
            self.runner = engine_pipeline(self.pipe, self.engine, self.device, progress)
        except Exception as err:
            if (engine or "auto").lower() != "auto":
                raise
            # `auto` only ever asks for speed: if the engine can't be set up here, sample eagerly.
            reason = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
            warnings.warn(
                f"engine {self.engine} could not be prepared ({reason}); sampling with eager torch",
                EngineFallbackWarning,
                stacklevel=2,
            )
            self.engine, self.runner = "eager", self.pipe

    @classmethod
    def load(
        cls,
        source=None,
        *,
        device: str | None = None,
        dtype: str | None = None,
        loras: list[str] | tuple[str, ...] = (),
        allow_pickle: bool = False,
        engine: str | None = None,
        vae: str | None = None,
        fuse_loras: bool = True,
        progress: Progress | None = None,
        embeddings: list[str] | tuple[str, ...] = (),
    ) -> FaceGenerator:
        model = load_model(source, allow_pickle=allow_pickle)
        return cls(
            model,
            embeddings=embeddings,
            device=device,
            dtype=dtype,
            loras=loras,
            allow_pickle=allow_pickle,
            engine=engine,
            vae=vae,
            fuse_loras=fuse_loras,
            progress=progress,
        )

    @classmethod
    def from_settings(
        cls, settings, *, fuse_loras: bool = True, progress: Progress | None = None
    ) -> FaceGenerator:
        """Load what a stage's config names: its `model` and whichever LOAD_TIME_SETTINGS it has."""
        options = {
            name: getattr(settings, name)
            for name in LOAD_TIME_SETTINGS
            if name != "model" and getattr(settings, name, None) is not None
        }
        return cls.load(settings.model, fuse_loras=fuse_loras, progress=progress, **options)

    @property
    def native_size(self) -> tuple[int, int]:
        side = self.pipe.unet.config.sample_size * self.pipe.vae_scale_factor
        return side, side

    # ------------------------------------------------------------------------------------------------------
    def generate(self, prompt: str = "", **settings: Any) -> list[Image.Image]:
        """Images for `prompt`; settings are GenerateConfig fields (negative, steps, cfg, sampler, seed, ...)."""
        fixed = sorted(set(settings) & set(LOAD_TIME_SETTINGS))
        if fixed:
            raise FacesmithError(f"{', '.join(fixed)} are chosen when loading: pass them to facesmith.load()")
        config = GenerateConfig.from_dict({"prompt": prompt, **settings}, origin="generate()")
        return self.run(config).images

    def run(self, config: GenerateConfig, progress: Progress | None = None) -> Generation:
        """Check `config`, then sample `config.count` images (see `sample`)."""
        return self.sample(config.validate(), progress)

    def sample(
        self, config: GenerateConfig, progress: Progress | None = None, given: StartPicture | None = None
    ) -> Generation:
        """Sample `config.count` images from a config that was validated where it came in (`run`,
        `run_generate`, the server); `progress("sampling", step, total)` follows every denoising step.
        `given`: an init image (and mask) in memory, as the API and the face detailer pass them."""
        width, height = config.width or self.native_size[0], config.height or self.native_size[1]
        seed = config.seed if config.seed is not None else secrets.randbelow(2**32)
        config = dataclasses.replace(
            config,
            seed=seed,
            sampler=config.sampler or self.model.default_sampler,
            cfg=config.cfg if config.cfg is not None else self.model.default_cfg,
            width=width,
            height=height,
            loras=list(self.loras),
            embeddings=[str(e.path.resolve()) for e in self.embeddings],
            model=self.model.source,
            device=self.device_name,
            dtype=self.dtype_name,
            engine=self.engine_name,
            vae=self.vae,
        )
        native_w, native_h = self.native_size
        if not (0.5 < width / native_w < 2 and 0.5 < height / native_h < 2):
            warnings.warn(
                f"{width}x{height} is far from this model's native {native_w}x{native_h}: expect repeated or "
                "broken faces; pass --width/--height near the native size",
                SizeWarning,
                stacklevel=2,
            )
        pipe = self.runner
        pipe.scheduler = make_scheduler(config.sampler, self.base_scheduler_config)
        for label, text in (("prompt", config.prompt), ("negative prompt", config.negative)):
            warn_about(label, text, pipe.tokenizer)
        # Plain prompts go to diffusers as strings, as always; A1111's (word:1.2) syntax as weighted
        # embeddings (prompts.py). The recipe keeps the text as written.
        texts = dict(prompt=config.prompt, negative_prompt=config.negative or None)
        if uses_syntax(config.prompt) or uses_syntax(config.negative):
            texts = weighted_embeddings(pipe, config.prompt, config.negative)
        # img2img and inpainting (img2img.py) start from an encoded picture and run steps x strength steps.
        start = prepare_start(config, pipe.vae, given) if given or config.init_image is not None else None
        steps = config.steps if start is None else start.steps
        images, trace = [], []
        for first in range(0, config.count, config.batch_size):
            size = min(config.batch_size, config.count - first)
            done = first * steps

            def on_step(_pipe, step, _timestep, tensors, done=done, size=size):
                if progress is not None:  # PNDM takes one extra step, so cap at the total
                    finished = done + min(step + 1, steps) * size
                    progress("sampling", finished, config.count * steps)
                return tensors

            call = dict(
                **texts,
                num_images_per_prompt=size,
                num_inference_steps=config.steps,
                guidance_scale=config.cfg,
                # Each image draws its noise from its own CPU generator seeded s+i, so image i is
                # the image seed s+i makes alone. With batch_size 1 (the default) that holds to the
                # bit; batched UNet calls round differently in the last bits.
                generator=[torch.Generator("cpu").manual_seed(seed + first + j) for j in range(size)],
                output_type="latent",
            )
            recorder = TraceRecorder(pipe.scheduler) if config.trace else None
            with torch.inference_mode(), detached_after(recorder):
                if start is None:
                    latents = pipe(**call, width=width, height=height, callback_on_step_end=on_step).images
                else:
                    latents = start.denoise(pipe, call, on_step)
                decoded = to_pil(decode_latents(pipe.vae, latents))
                images += decoded if start is None else start.finish(decoded)
                if recorder is not None:
                    frames = [
                        to_pil(decode_latents(pipe.vae, x0)) for x0 in recorder.pick(config.trace_frames)
                    ]
                    trace += [[frame[j] for frame in frames] for j in range(size)]
        seeds = [seed + i for i in range(config.count)]
        if config.detail_faces:  # the face detailer (detailer.py): a second, inpainting pass per face
            from facesmith.detailer import detail_faces

            images = detail_faces(self, images, seeds, config, progress)
        return Generation(images, seeds, config, trace)


# ----------------------------------------------------------------------------------------------------------
# Stage: config -> files


def run_generate(
    config: GenerateConfig,
    generator: FaceGenerator | None = None,
    progress: Progress | None = None,
    made_with: str | None = None,
) -> list[Path]:
    """`facesmith generate`: make the images, write PNGs with metadata (and trace strips) to out_dir.

    `made_with`: the model hash a `--from` PNG records; another loaded model is warned about."""
    config.validate()
    out_dir = prepare_out_dir(config.out_dir)
    if generator is None:
        if progress is not None:
            progress("loading model", 0, None)
        generator = FaceGenerator.from_settings(config, progress=progress)
    loaded = generator.model.model_hash() if made_with else None
    if made_with and loaded and made_with.lower() != loaded.lower():
        warnings.warn(
            f"the image was made with model hash {made_with}, but the loaded model's is {loaded}: "
            "the result will differ; pass --model with the model it was made with",
            ModelMismatchWarning,
            stacklevel=2,
        )
    result = generator.sample(config, progress)
    used = dataclasses.replace(result.config, out_dir=str(out_dir))
    first = next_image_number(out_dir)
    written = []
    for i, (image, seed) in enumerate(zip(result.images, result.seeds, strict=True)):
        name = f"{first + i:05d}-{seed}"
        written.append(write_png(image, out_dir / f"{name}.png", recipe(used, generator.model, seed)))
        if result.trace:
            image_strip(result.trace[i]).save(out_dir / f"{name}-trace.png")
            written.append(out_dir / f"{name}-trace.png")
    used.save(out_dir / "generate.toml")
    return written


def next_image_number(out_dir: Path) -> int:
    numbers = [int(p.name[:5]) for p in out_dir.glob("*.png") if p.name[:5].isdigit()]
    return max(numbers, default=0) + 1
