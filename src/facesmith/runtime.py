"""Where a stage runs and where it writes: the torch device, the dtype, and the output folder.

The bottom layer every stage shares (generate, evaluate, the attribute classifier, training): a device
name from the command line becomes a `torch.device` that exists here, a dtype name becomes a
`torch.dtype` (or the device's own choice), and an output folder is proven writable before any compute
is spent. It knows nothing of models or configs.
"""

from __future__ import annotations

from pathlib import Path

import torch

from facesmith.errors import FacesmithError

DTYPES = {
    "fp32": torch.float32, "float32": torch.float32,
    "fp16": torch.float16, "float16": torch.float16, "half": torch.float16,
    "bf16": torch.bfloat16, "bfloat16": torch.bfloat16,
}  # fmt: skip


def choose_device(name: str | None = None) -> torch.device:
    """`name` as a device that is present here; None: CUDA if present, else the CPU."""
    if name is None:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError as err:
        raise FacesmithError(f"--device {name} is not a device torch knows (try cpu or cuda)") from err
    if device.type == "cuda" and not torch.cuda.is_available():
        raise FacesmithError(f"--device {name}: CUDA is not available on this machine; use --device cpu")
    if device.type == "mps" and not torch.backends.mps.is_available():
        raise FacesmithError(f"--device {name}: MPS is not available on this machine; use --device cpu")
    return device


def choose_dtype(device: torch.device, name: str | None = None) -> torch.dtype:
    """`name` from DTYPES; None: bf16 (else fp16) on CUDA, fp16 on MPS, fp32 on the CPU."""
    if name is not None:
        if name.lower() not in DTYPES:
            raise FacesmithError(f"--dtype {name} is unknown: choose fp32, fp16 or bf16")
        return DTYPES[name.lower()]
    if device.type == "cuda":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    return torch.float16 if device.type == "mps" else torch.float32


def prepare_out_dir(path: str | Path) -> Path:
    """Create `path` and prove it writable before any compute is spent."""
    out_dir = Path(path).expanduser()
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
        probe = out_dir / ".facesmith-write-test"
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as err:
        raise FacesmithError(
            f"output directory {out_dir} is not writable ({err.strerror or err}): pick another -o"
        ) from err
    return out_dir
