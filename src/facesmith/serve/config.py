"""ServeConfig: everything `facesmith serve` decides, its documented defaults, and its TOML form.

Defaults are the documented behaviour: 127.0.0.1:7860, no auth, the limits below. `serve --config
serve.toml` reads one back (`StageConfig.load`), as every stage's `--config` does. `--api-auth
user:pass[,user2:pass2]` follows A1111's flag; `credentials` reads it. The first pair is the server's
first user, the one who may interrupt anyone's job.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from facesmith.config import StageConfig
from facesmith.errors import FacesmithError

AUTH_USER = "facesmith.user"  # the ASGI scope key under which app.BasicAuth leaves the signed-in user


@dataclass
class ServeConfig(StageConfig):
    """Everything `facesmith serve` decides; the model settings are those of `facesmith generate`."""

    model: str | None = None  # None: the default model shipped in the package
    loras: list[str] = field(default_factory=list)  # FILE[:WEIGHT]; requests pick among these by name
    embeddings: list[str] = field(default_factory=list)  # textual-inversion files, loaded at start
    device: str | None = None
    dtype: str | None = None
    allow_pickle: bool = False
    host: str = "127.0.0.1"  # local only unless told otherwise
    port: int = 7860  # A1111's port, so clients find it where they expect
    api_auth: str | None = None  # "user:pass[,user2:pass2]", HTTP Basic on every route
    max_batch: int = 8  # images per request (batch_size x n_iter)
    max_steps: int = 150  # A1111's UI limit
    max_size: int = 1024  # pixels per side
    max_queue: int = 64  # jobs waiting; more get HTTP 503

    def validate(self) -> ServeConfig:
        for name in ("max_batch", "max_steps", "max_size", "max_queue"):
            if getattr(self, name) < 1:
                raise FacesmithError(f"--{name.replace('_', '-')} {getattr(self, name)} must be at least 1")
        if self.max_size % 8:
            raise FacesmithError(f"--max-size {self.max_size} must be a multiple of 8")
        if not 0 <= self.port <= 65535:
            raise FacesmithError(f"--port {self.port} is not a TCP port (0-65535)")
        credentials(self.api_auth)
        return self


def credentials(api_auth: str | None) -> list[tuple[str, str]]:
    """A1111's --api-auth value, "user:pass" pairs separated by commas."""
    if not api_auth:
        return []
    pairs = []
    for item in api_auth.split(","):
        user, sep, password = item.strip().partition(":")
        if not sep or not user or not password:
            raise FacesmithError("--api-auth must be user:pass (several separated by commas)")
        pairs.append((user, password))
    return pairs
