"""The AUTOMATIC1111-compatible HTTP API: `/sdapi/v1/*` requests and responses in A1111's shapes.

Owns: the request model of `POST /sdapi/v1/txt2img` (A1111's field names and meanings; unknown fields are
ignored, as A1111 does), turning it into a `GenerateConfig` within the server's limits, the response
(`images` as base64 PNGs with metadata, `parameters`, `info` as a JSON string), and the read-only
endpoints A1111 clients call first: samplers, sd-models, loras, options (progress and interrupt are
`progress.py`'s).
Validation errors are HTTP 422 in FastAPI's shape, `{"detail": [{"loc": ["body", FIELD], "msg": ...}]}`,
whether pydantic or a limit found them. Running jobs is `jobs.py`'s; auth and the app are `app.py`'s.

Reference: AUTOMATIC1111 stable-diffusion-webui `modules/api/models.py` and `modules/api/api.py` (v1.x):
`StableDiffusionTxt2ImgProcessingAPI`, `TextToImageResponse`, `ProgressResponse`, `Processed.js()`.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import math
import time
from typing import TYPE_CHECKING, Any

from fastapi import APIRouter, HTTPException, Request, Response
from pydantic import BaseModel, ConfigDict, Field
from starlette.concurrency import run_in_threadpool

from facesmith.config import GenerateConfig
from facesmith.errors import FacesmithError
from facesmith.img2img import StartPicture
from facesmith.samplers import SAMPLERS, check_sampler
from facesmith.serve.adetailer import detailer_settings
from facesmith.serve.config import AUTH_USER
from facesmith.serve.jobs import Job, JobCancelled, JobQueue, Picture, QueueFull
from facesmith.serve.lora_tags import lora_tags
from facesmith.serve.progress import progress_router
from facesmith.serve.validation import invalid, validation_error  # noqa: F401 - app.py takes it from here

if TYPE_CHECKING:
    from facesmith.serve.config import ServeConfig

DISCONNECT_POLL_S = 0.25
# CLIP reads 77 tokens (about 300 characters); A1111 chains 75-token chunks for longer prompts. 10,000
# characters is far past any prompt a person writes and keeps a hostile one from costing minutes.
MAX_PROMPT_CHARS = 10_000


class Txt2ImgRequest(BaseModel):
    """A1111's txt2img fields that facesmith uses; every other A1111 field is accepted and ignored.

    Defaults are facesmith's (`GenerateConfig`): 50 steps, CFG 7.5, the model's own sampler and size.
    """

    model_config = ConfigDict(extra="ignore")

    prompt: str = Field("", max_length=MAX_PROMPT_CHARS)
    negative_prompt: str = Field("", max_length=MAX_PROMPT_CHARS)
    steps: int = GenerateConfig.steps
    cfg_scale: float | None = None  # None: the model's own choice
    sampler_name: str | None = Field(None, description="A1111 sampler name, see /sdapi/v1/samplers")
    sampler_index: str | None = Field(None, description="older name of sampler_name")
    scheduler: str | None = Field(
        None, description='A1111 1.9+: "Karras" turns DPM++ 2M into its Karras form'
    )
    seed: int = Field(-1, description="-1 draws a random seed; image i uses seed + i")
    batch_size: int = 1
    n_iter: int = 1
    width: int | None = Field(None, description="multiple of 8; default the model's native size")
    height: int | None = Field(None, description="multiple of 8; default the model's native size")
    send_images: bool = True
    save_images: bool = Field(False, description="ignored: the server never writes request data to disk")
    alwayson_scripts: dict[str, Any] = Field(
        default_factory=dict,
        description='{"ADetailer": {"args": [true, {"ad_model": "face_yolov8n.pt", ...}]}} runs the face detailer',
    )


class Txt2ImgResponse(BaseModel):
    images: list[str] = Field(description="base64 PNGs, each with A1111's `parameters` chunk")
    parameters: dict[str, Any]
    info: str = Field(description="JSON string: seeds, prompts, infotexts, model, size, ...")


# ----------------------------------------------------------------------------------------------------------
# Request -> GenerateConfig


def request_config(
    body: Txt2ImgRequest, serve: ServeConfig, loras: dict, native_size: tuple[int, int]
) -> tuple[GenerateConfig, dict]:
    """(GenerateConfig, {LoRA name: weight}) for a txt2img request, or a 422 naming the first bad field."""
    if not 1 <= body.steps <= serve.max_steps:
        raise invalid("steps", f"steps must lie in [1, {serve.max_steps}] on this server", body.steps)
    for name in ("width", "height"):
        value = getattr(body, name)
        if value is not None and (value <= 0 or value % 8):
            raise invalid(name, f"{name} must be a positive multiple of 8", value)
        if value is not None and value > serve.max_size:
            raise invalid(name, f"{name} must be at most {serve.max_size} px on this server", value)
    for name in ("batch_size", "n_iter"):
        if getattr(body, name) < 1:
            raise invalid(name, f"{name} must be at least 1", getattr(body, name))
    if body.batch_size * body.n_iter > serve.max_batch:
        raise invalid(
            "batch_size",
            f"batch_size x n_iter = {body.batch_size * body.n_iter} images; this server makes at most "
            f"{serve.max_batch} per request",
            body.batch_size,
        )
    for name in ("prompt", "negative_prompt"):
        try:
            getattr(body, name).encode("utf-8")
        except UnicodeEncodeError:
            raise invalid(
                name, f"{name} holds an unpaired UTF-16 surrogate: send valid Unicode text"
            ) from None
    if body.cfg_scale is not None and (not math.isfinite(body.cfg_scale) or body.cfg_scale < 0):
        raise invalid("cfg_scale", "cfg_scale must be a finite number >= 0", body.cfg_scale)
    if body.seed != -1 and not 0 <= body.seed < 2**63:
        raise invalid("seed", "seed must be -1 (random) or in [0, 2^63)", body.seed)
    sampler_field = "sampler_name" if body.sampler_name else "sampler_index"
    sampler = sampler_name(body.sampler_name or body.sampler_index, body.scheduler, sampler_field)
    prompt, weights = lora_tags(body.prompt, loras)
    if not prompt.strip() and not body.negative_prompt.strip():
        raise invalid("prompt", "the prompt is empty and there is no negative prompt", body.prompt)
    config = GenerateConfig(
        prompt=prompt,
        negative=body.negative_prompt,
        steps=body.steps,
        cfg=body.cfg_scale,
        sampler=sampler,
        seed=None if body.seed == -1 else body.seed,
        count=body.batch_size * body.n_iter,
        width=body.width or native_size[0],
        height=body.height or native_size[1],
        **detailer_settings(body.alwayson_scripts, serve.max_size, serve.max_steps, loras),
    )
    try:
        config.validate()
    except FacesmithError as err:
        raise invalid("alwayson_scripts" if str(err).startswith("--detail") else "prompt", str(err)) from None
    return config, weights


def sampler_name(name: str | None, scheduler: str | None, field: str = "sampler_name") -> str:
    """facesmith's sampler for A1111's (sampler_name, scheduler); None leaves it to the model.

    Of A1111 1.9's schedulers only "Karras" changes the sampler; the others are ignored, as facesmith
    samples each sampler on its own schedule.
    """
    if not name:
        return GenerateConfig.sampler
    karras = scheduler is not None and scheduler.strip().lower() == "karras"
    try:
        return check_sampler(name, "karras" if karras else None).name
    except FacesmithError as err:
        raise invalid(field, str(err), name) from None


# ----------------------------------------------------------------------------------------------------------
# Results -> A1111 shapes


def info_json(body: Txt2ImgRequest, job: Job, pictures: list[Picture], model: dict) -> str:
    """A1111's `info` string (Processed.js()), plus facesmith's job timings under `facesmith_job`."""
    config = job.used or job.config
    seeds = [p.seed for p in pictures]
    return json.dumps(
        {
            "prompt": config.prompt,
            "all_prompts": [config.prompt] * len(pictures),
            "negative_prompt": config.negative,
            "all_negative_prompts": [config.negative] * len(pictures),
            "seed": seeds[0] if seeds else None,
            "all_seeds": seeds,
            "subseed": -1,
            "all_subseeds": [-1] * len(pictures),
            "subseed_strength": 0,
            "width": config.width,
            "height": config.height,
            "sampler_name": config.sampler,
            "cfg_scale": config.cfg,
            "steps": config.steps,
            "batch_size": body.batch_size,
            "restore_faces": False,
            "face_restoration_model": None,
            "sd_model_name": model["model_name"],
            "sd_model_hash": model["hash"],
            "sd_vae_name": None,
            "sd_vae_hash": None,
            "seed_resize_from_w": -1,
            "seed_resize_from_h": -1,
            "denoising_strength": config.strength if config.init_image is not None else 0,
            "extra_generation_params": {},
            "index_of_first_image": 0,
            "infotexts": [p.parameters for p in pictures],
            "styles": [],
            "job_timestamp": time.strftime("%Y%m%d%H%M%S", time.localtime(job.queued_at)),
            "clip_skip": 1,
            "is_using_inpainting_conditioning": False,
            "version": "facesmith",
            "facesmith_job": job.timings(),
        }
    )


# ----------------------------------------------------------------------------------------------------------
# Routes


async def wait_for_job(job: Job, queue: JobQueue, request: Request) -> list[Picture] | None:
    """The job's pictures, or None after cancelling it because the client disconnected."""
    future = asyncio.wrap_future(job.future)
    while True:
        done, _ = await asyncio.wait({future}, timeout=DISCONNECT_POLL_S)
        if done:
            return future.result()
        if await request.is_disconnected():
            queue.cancel(job)
            with contextlib.suppress(JobCancelled):
                await future  # a running job stops at its next step; wait so the queue state is exact
            return None


async def answer(
    body: Txt2ImgRequest, request: Request, queue: JobQueue, model: dict, config: GenerateConfig,
    weights: dict, given: StartPicture | None = None, notes: list[str] | None = None,
) -> Txt2ImgResponse | Response:  # fmt: skip
    """Queue the request's job (with its init picture, for img2img), wait for it, answer in A1111's shape."""
    if queue.generator.device.type == "cuda":
        config.batch_size = body.batch_size
    try:
        job = queue.submit(config, weights, owner=request.scope.get(AUTH_USER), given=given)
    except QueueFull as err:
        raise HTTPException(503, str(err), headers={"Retry-After": "5"}) from None
    try:
        pictures = await wait_for_job(job, queue, request)
    except JobCancelled as err:  # interrupted through /sdapi/v1/interrupt: A1111 returns what it has
        pictures = err.pictures
        message = str(err)
    except FacesmithError as err:
        raise invalid("init_images" if given is not None else "prompt", str(err)) from None
    else:
        message = None
    if pictures is None:
        return Response(status_code=499)  # the client is gone; nobody reads this
    body_echo = body.model_dump()
    for name in ("init_images", "mask"):  # A1111 echoes them; a 10 MB echo helps no one
        if body_echo.get(name):
            body_echo[name] = None
    info = info_json(body, job, pictures, model)
    if message or notes:
        extra = {"interrupted": message} if message else {}
        info = json.dumps({**json.loads(info), **extra, **({"warnings": notes} if notes else {})})
    images = [base64.b64encode(p.png).decode("ascii") for p in pictures] if body.send_images else []
    return Txt2ImgResponse(images=images, parameters=body_echo, info=info)


def api_router(queue: JobQueue, serve: ServeConfig, model: dict) -> APIRouter:
    """The /sdapi/v1 routes over one queue; `model` is the sd-models entry of the loaded model."""
    router = APIRouter(prefix="/sdapi/v1", tags=["AUTOMATIC1111-compatible API"])

    @router.post("/txt2img", response_model=Txt2ImgResponse)
    async def txt2img(body: Txt2ImgRequest, request: Request):
        """Generate `batch_size * n_iter` images from seeds seed + i; on a GPU `batch_size` at a time, as
        in A1111, elsewhere one at a time (bit-exact to the single image of each seed)."""
        # Off the event loop: parsing a long prompt must not stall every other request.
        config, weights = await run_in_threadpool(
            request_config, body, serve, queue.loras, queue.generator.native_size
        )
        return await answer(body, request, queue, model, config, weights)

    @router.get("/samplers")
    def samplers() -> list[dict]:
        return [
            {"name": s.name, "aliases": list(s.aliases), "options": dict(s.kwargs)} for s in SAMPLERS.values()
        ]

    @router.get("/sd-models")
    def sd_models() -> list[dict]:
        return [model]

    @router.get("/loras")
    def loras() -> list[dict]:
        return [
            {"name": name, "alias": name, "path": name, "metadata": {}, "weight": weight}  # no server paths
            for name, (_, weight, _) in queue.loras.items()
        ]

    @router.get("/options")
    def options() -> dict:
        return {
            "sd_model_checkpoint": model["title"],
            "sd_checkpoint_hash": model["sha256"],
            "samples_format": "png",
            "CLIP_stop_at_last_layers": 1,
            "sd_vae": "Automatic",
            "facesmith_limits": {
                "max_batch": serve.max_batch,
                "max_steps": serve.max_steps,
                "max_size": serve.max_size,
                "max_queue": serve.max_queue,
            },
        }

    @router.get("/scripts")
    def scripts() -> dict:
        # ADetailer is the one always-on script facesmith runs (its face detailer); webuiapi looks for it here
        return {"txt2img": ["adetailer"], "img2img": ["adetailer"]}

    router.include_router(progress_router(queue, serve))
    router.add_api_route("/embeddings", embeddings_route(queue.generator), methods=["GET"])
    return router


def embeddings_route(generator):
    """GET /sdapi/v1/embeddings as A1111 answers it: the loaded textual-inversion words (those given to
    `serve --embedding`), with their vector count and width; nothing is ever skipped here."""
    loaded = {}
    for embedding in getattr(generator, "embeddings", []):
        vectors = next(iter(embedding.vectors.values()))
        info = {}
        if embedding.path.suffix == ".safetensors":
            from safetensors import safe_open

            with safe_open(str(embedding.path), "pt") as handle:
                info = handle.metadata() or {}
        step = info.get("step")
        loaded[embedding.name] = {
            "step": int(step) if step and step.isdigit() else None,
            "sd_checkpoint": info.get("sd_checkpoint"),
            "sd_checkpoint_name": info.get("sd_checkpoint_name"),
            "shape": int(vectors.shape[-1]),
            "vectors": int(vectors.shape[0]),
        }

    def embeddings() -> dict:
        return {"loaded": loaded, "skipped": {}}

    return embeddings
