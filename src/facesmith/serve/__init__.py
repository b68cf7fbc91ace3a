"""`facesmith serve`: a web page and an AUTOMATIC1111-compatible HTTP API over one model.

- `config.py`: ServeConfig, the settings (`serve --config serve.toml`), and `--api-auth` parsing;
- `app.py`: the FastAPI app (API + docs + page + auth), `run_serve`;
- `api.py`: `/sdapi/v1/*` in A1111's request and response shapes (`img2img.py`: `/sdapi/v1/img2img`;
  `adetailer.py`: ADetailer's alwayson_scripts; `lora_tags.py`: `<lora:name:w>`; `progress.py`:
  progress and interrupt; `validation.py`: the 422s);
- `jobs.py`: the one-at-a-time job queue, progress, cancellation, PNGs with metadata;
- `page.py`: the Gradio page (`page_img2img.py`, `page_edit.py`: its other tabs; `page_jobs.py`: what
  they share).
"""

from facesmith.serve.app import build_app, run_serve
from facesmith.serve.config import ServeConfig

__all__ = ["ServeConfig", "build_app", "run_serve"]
