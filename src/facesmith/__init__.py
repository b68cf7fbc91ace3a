"""facesmith: fine-tune Stable Diffusion on faces and generate faces from prompts, offline.

Importing the package is cheap: torch, diffusers and transformers load only when `load` is called.
`facesmith.load(source)` returns a `FaceGenerator`; see `facesmith.generate`.
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING

from facesmith.errors import FacesmithError

# Nothing is ever fetched from a model hub: huggingface_hub reads this once, when it is first imported,
# so it has to be set before any code path can import transformers or diffusers.
os.environ["HF_HUB_OFFLINE"] = "1"
os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")

if TYPE_CHECKING:
    from facesmith.generate import FaceGenerator

__all__ = ["FacesmithError", "load"]
__version__ = "0.1.0"


def load(source: str | os.PathLike | None = None, **options) -> FaceGenerator:
    """Load a model (diffusers folder, single `.safetensors` file, or the default model) for generation.

    `options` are those of `facesmith.generate.FaceGenerator.load`: device, dtype, loras, allow_pickle.
    """
    import warnings

    from facesmith.library_logs import quiet_libraries

    quiet_libraries()  # as quiet as the CLI: no library logs, progress bars or config dumps
    from facesmith.generate import FaceGenerator

    with warnings.catch_warnings():
        # diffusers' and transformers' deprecation notices (a scheduler config dump among them) are for
        # their own users; facesmith's warnings (a fallback engine, a cut prompt) still show.
        warnings.filterwarnings("ignore", category=FutureWarning)
        warnings.filterwarnings("ignore", module=r"(diffusers|transformers|accelerate|peft|torch)(\.|$)")
        return FaceGenerator.load(source, **options)
