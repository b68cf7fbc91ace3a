"""`facesmith serve`: one FastAPI app with the A1111-compatible API, its docs, and the Gradio page.

Owns `build_app` (routes, offline API docs, the page mounted at `/`, HTTP Basic auth over all of it)
and `run_serve`, the stage behind the command (load the model, build, run uvicorn). The settings are
`config.py`'s, the API `api.py`'s, the page `page.py`'s, the queue `jobs.py`'s.

`--api-auth user:pass[,user2:pass2]` follows A1111's flag; unlike A1111 it guards the page as well,
because the page can generate too and an open page would make the API's password pointless.
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import os
import secrets
from collections.abc import Callable

from facesmith.errors import FacesmithError
from facesmith.serve.config import AUTH_USER, ServeConfig, credentials

os.environ["GRADIO_ANALYTICS_ENABLED"] = "False"  # before anything can import gradio


# A request body larger than this is refused with 413 before it is read whole: the API's largest honest
# request is a few base64 images, and an unbounded one can hold the server's memory for good.
MAX_BODY_BYTES = 32 * 1024 * 1024


class BodyTooLarge(Exception):
    pass


class BodyLimit:
    """ASGI middleware: a request body over `limit` bytes is answered 413, by Content-Length or as read."""

    def __init__(self, app, limit: int):
        self.app, self.limit = app, limit

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        length = dict(scope.get("headers") or []).get(b"content-length", b"")
        if length.isdigit() and int(length) > self.limit:
            return await self.refuse(send)
        received, started = 0, False

        async def counted_receive():
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.limit:
                    raise BodyTooLarge
            return message

        async def watched_send(message):
            nonlocal started
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, counted_receive, watched_send)
        except BodyTooLarge:
            if not started:
                await self.refuse(send)

    async def refuse(self, send) -> None:
        import json

        body = json.dumps(
            {"detail": f"the request body is over this server's limit of {self.limit // 2**20} MiB"}
        ).encode()
        headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
        await send({"type": "http.response.start", "status": 413, "headers": headers})
        await send({"type": "http.response.body", "body": body})


class BasicAuth:
    """ASGI middleware: every HTTP request and websocket needs one of the user:pass pairs (RFC 7617).

    The user it let in is left in the scope under `AUTH_USER`: jobs are theirs, and only they (or the
    first user) may interrupt them.
    """

    def __init__(self, app, pairs: list[tuple[str, str]]):
        self.app = app
        self.pairs = [(u.encode(), p.encode()) for u, p in pairs]

    def user(self, header: bytes | None) -> str | None:
        """The user whose pair the Authorization header holds, or None."""
        if not header or header[:6].lower() != b"basic ":
            return None
        try:
            user, _, password = base64.b64decode(header[6:].strip(), validate=True).partition(b":")
        except (binascii.Error, ValueError):
            return None
        # compare every pair in full so the time taken says nothing about which part was wrong
        matches = [
            secrets.compare_digest(user, u) & secrets.compare_digest(password, p) for u, p in self.pairs
        ]
        return user.decode("utf-8", "replace") if any(matches) else None

    async def __call__(self, scope, receive, send):
        if scope["type"] not in ("http", "websocket"):
            return await self.app(scope, receive, send)
        user = self.user(dict(scope["headers"]).get(b"authorization"))
        if user is not None:
            return await self.app({**scope, AUTH_USER: user}, receive, send)
        if scope["type"] == "websocket":
            return await send({"type": "websocket.close", "code": 1008})
        await send({"type": "http.response.start", "status": 401,
                    "headers": [(b"www-authenticate", b'Basic realm="facesmith"'),
                                (b"content-type", b"application/json")]})  # fmt: skip
        await send({"type": "http.response.body", "body": b'{"detail":"Not authenticated"}'})


def model_entry(generator) -> dict:
    """The loaded model as A1111's /sdapi/v1/sd-models lists it (no server paths)."""
    from facesmith.models.loading import cached_sha256

    model = generator.model
    short = model.model_hash()
    sha256 = cached_sha256(model.weight_files) if model.weight_files else None
    return {
        "title": f"{model.name} [{short}]" if short else model.name,
        "model_name": model.name,
        "hash": short,
        "sha256": sha256,
        "filename": model.name,
        "config": None,
    }


def build_app(generator, config: ServeConfig, *, page: bool = True):
    """The ASGI app: /sdapi/v1 (api.py), /docs and /openapi.json, and the page at / (page.py)."""
    from fastapi import FastAPI
    from fastapi.exceptions import RequestValidationError
    from fastapi.openapi.docs import get_swagger_ui_html
    from fastapi.staticfiles import StaticFiles

    from facesmith.serve.api import api_router, validation_error
    from facesmith.serve.jobs import JobQueue

    config.validate()
    queue = JobQueue(generator, max_waiting=config.max_queue)

    @contextlib.asynccontextmanager
    async def lifespan(_app):
        yield
        queue.close()

    app = FastAPI(
        lifespan=lifespan,
        title="facesmith",
        description="AUTOMATIC1111-compatible API for facesmith's face models (`/sdapi/v1`).",
        version="1",
        docs_url=None,  # FastAPI's own /docs loads Swagger UI from a CDN; this one is served locally
        redoc_url=None,
    )
    app.state.queue = queue
    from facesmith.serve.img2img import img2img_router

    app.include_router(api_router(queue, config, model_entry(generator)))
    app.include_router(img2img_router(queue, config, model_entry(generator)))
    app.add_exception_handler(RequestValidationError, validation_error)

    import swagger_ui_bundle

    app.mount("/docs-assets", StaticFiles(directory=swagger_ui_bundle.swagger_ui_path), name="docs-assets")

    @app.get("/docs", include_in_schema=False)
    def docs():
        return get_swagger_ui_html(
            openapi_url=app.openapi_url,
            title="facesmith API",
            swagger_js_url="/docs-assets/swagger-ui-bundle.js",
            swagger_css_url="/docs-assets/swagger-ui.css",
            swagger_favicon_url="/docs-assets/favicon-32x32.png",
        )

    if page:
        import gradio as gr

        from facesmith.serve.page import build_page

        blocks = build_page(
            queue, max_steps=config.max_steps, max_size=config.max_size, max_batch=config.max_batch
        )
        app = gr.mount_gradio_app(app, blocks, path="/", ssr_mode=False, footer_links=["api"])
    pairs = credentials(config.api_auth)
    return BodyLimit(BasicAuth(app, pairs) if pairs else app, MAX_BODY_BYTES)


def run_serve(config: ServeConfig, announce: Callable[[str], None] = print) -> None:
    """`facesmith serve`: load the model once, then serve until interrupted."""
    try:
        import fastapi  # noqa: F401
        import gradio  # noqa: F401
        import swagger_ui_bundle  # noqa: F401
        import uvicorn
    except ImportError as err:
        raise FacesmithError(
            f"facesmith serve needs its extra ({err.name} is missing): pip install 'facesmith[serve]'"
        ) from None

    from facesmith.generate import FaceGenerator

    config.validate()
    generator = FaceGenerator.from_settings(config, fuse_loras=False)  # requests set LoRA weights per call
    app = build_app(generator, config)
    host = f"[{config.host}]" if ":" in config.host else config.host
    announce(
        f"facesmith: {generator.model.name} on {generator.device} at http://{host}:{config.port}/ "
        f"(API /sdapi/v1, docs /docs)"
    )
    uvicorn.run(app, host=config.host, port=config.port, log_level="warning", timeout_graceful_shutdown=5)
