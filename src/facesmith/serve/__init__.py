"""`facesmith serve`: a web page and an AUTOMATIC1111-compatible HTTP API over one model.

- `app.py`: ServeConfig, the FastAPI app (API + docs + page + auth), `run_serve`;
- `api.py`: `/sdapi/v1/*` in A1111's request and response shapes;
- `jobs.py`: the one-at-a-time job queue, progress, cancellation, PNGs with metadata;
- `page.py`: the Gradio page.
"""

from facesmith.serve.app import ServeConfig, build_app, run_serve

__all__ = ["ServeConfig", "build_app", "run_serve"]
