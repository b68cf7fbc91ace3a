"""How the denoiser and the decoder run: eager torch, ONNX Runtime on a CPU, or torch.compile on a GPU.

Owns the choice of engine for a loaded pipeline and the caches that make it cheap the second time. The
pipeline, schedulers and seeds stay diffusers' and `generate.py`'s: an engine only swaps what executes
`pipe.unet(...)` and `pipe.vae.decoder(...)`, so every sampler, LoRA and trace works the same on each.

- "onnx" (CPU): the UNet and the VAE decoder exported once with torch's TorchScript ONNX exporter and run
  by ONNX Runtime's CPU provider. Measured on the 2-core dev machine with the default model
  (benchmarks/default_model_cpu.py, benchmarks/NOTES.md): 35 ms against 52 ms per UNet step with CFG,
  and 25 against 37 ms per decode; torch.compile gained 6% there, after a 33 s warm-up. The export is
  cached under `cache_root()/onnx`, keyed by a sha256 of the weights as they are (LoRAs included), the
  input shapes and the torch and onnxruntime versions, so a second process only opens the session.
  diffusers' own OnnxStableDiffusionPipeline is a separate pipeline with its own loop, callbacks and
  numpy schedulers; swapping modules keeps facesmith's single pipeline path.
- "compile" (CUDA, or CPU when asked): torch.compile of the UNet (mode "reduce-overhead", i.e. CUDA
  graphs, on CUDA) and of the VAE decoder, as diffusers' "accelerate inference of text-to-image diffusion
  models" guide does. It leaves the weights as they are: no channels_last (inductor's layout
  optimisation picks conv layouts itself, and safetensors refuses to save non-contiguous weights) and
  no fused QKV (it adds tensors to the state dict, and peft's LoRA layers cannot wrap it). Inductor's
  FX-graph and autotuning caches go to `cache_root()/inductor`, so the compile cost is paid once per
  machine.
- "eager": the modules as loaded.
- "auto": compile on CUDA; on a CPU, onnx when onnxruntime is installed, no LoRA is loaded and the UNet
  exports under ONNX's 2 GB protobuf limit (the default model and other small UNets), else eager.
"""

from __future__ import annotations

import copy
import hashlib
import os
import warnings
from pathlib import Path

import torch

from facesmith.errors import FacesmithError
from facesmith.progress import Progress

ENGINES = ("auto", "eager", "onnx", "compile")
ONNX_LIMIT_BYTES = 2_000_000_000  # protobuf's 2 GB cap on one ONNX file without external data
OPSET = 17


def cache_root() -> Path:
    """`$FACESMITH_CACHE_DIR`, else `$XDG_CACHE_HOME/facesmith`, else `~/.cache/facesmith`."""
    root = (
        os.environ.get("FACESMITH_CACHE_DIR")
        or Path(os.environ.get("XDG_CACHE_HOME", "~/.cache")) / "facesmith"
    )
    return Path(root).expanduser()


def onnxruntime_available() -> bool:
    try:
        import onnxruntime  # noqa: F401
    except ImportError:
        return False
    return True


def resolve_engine(name: str | None, pipe, device: torch.device, dtype: torch.dtype) -> str:
    """The engine `name` means for this pipeline on this device; FacesmithError when it cannot run."""
    name = (name or "auto").lower()
    if name not in ENGINES:
        raise FacesmithError(f"--engine {name} is unknown: choose one of {', '.join(ENGINES)}")
    if name == "auto":
        if device.type == "cuda":
            return "compile"
        # ONNX bakes the weights in at load, so LoRA weights set per request (serve) would not apply.
        # LoRAs fixed at load (generate, the Python API) are fused into the weights first (generate.py),
        # which leaves no peft layers here.
        loras = getattr(pipe.unet, "peft_config", None)
        on_cpu = device.type == "cpu" and dtype == torch.float32
        if on_cpu and not loras and onnxruntime_available() and _exportable(pipe):
            return "onnx"
        return "eager"
    if name == "onnx":
        if device.type != "cpu" or dtype != torch.float32:
            raise FacesmithError("--engine onnx runs on the CPU in fp32: use --device cpu --dtype fp32")
        if not onnxruntime_available():
            raise FacesmithError(
                "--engine onnx needs onnxruntime: pip install onnxruntime, or use --engine eager"
            )
        if not _exportable(pipe):
            raise FacesmithError(
                "--engine onnx takes SD 1.x/2.x-style UNets under 2 GB in fp32; use --engine eager for this model"
            )
    return name


def engine_pipeline(pipe, engine: str, device: torch.device, progress: Progress | None = None):
    """A pipeline that runs `pipe`'s UNet and VAE decoder on `engine`, sharing all of `pipe`'s weights.

    `pipe` itself is left as loaded: it can still be saved, exported or given LoRA weights. The copy is
    shallow; its `unet` is the engine's module and its `vae` a shallow copy whose `decoder` is replaced.
    """
    if engine == "eager":
        return pipe
    runner = copy.copy(pipe)
    if engine == "onnx":
        cache = cache_root() / "onnx"
        runner.unet = OnnxUNet(pipe.unet, cache, progress)
        runner.vae = _with_decoder(
            pipe.vae, lambda d: OnnxDecoder(d, pipe.vae.config.latent_channels, cache, progress)
        )
    elif engine == "compile":
        configure_compile_cache()
        if device.type == "cuda":
            import torch._inductor.config as inductor

            inductor.conv_1x1_as_mm = True  # the 1x1 convs of every ResNet shortcut become GEMMs
            inductor.coordinate_descent_tuning = True
        # "reduce-overhead" records the UNet call as a CUDA graph: one launch per step instead of
        # hundreds, which is what bounds eager batch-1 sampling (issue [gpu-speed]).
        runner.unet = _compiled_unet(pipe.unet, "reduce-overhead" if device.type == "cuda" else None)
        runner.vae = _with_decoder(pipe.vae, torch.compile)
    return runner


def _compiled_unet(unet, mode: str | None):
    """A shallow copy of `unet` (same weights, config and submodules) whose forward is compiled.

    CUDA graphs reuse their output buffers on the next replay; a sampler that keeps the raw output (PNDM
    and DPM++ keep past outputs, and without CFG nothing copies it first) would find it overwritten. So the
    output is cloned: one latent-sized copy per step.
    """
    compiled = torch.compile(unet.forward, mode=mode)

    def forward(*args, **kwargs):
        out = compiled(*args, **kwargs)
        if isinstance(out, tuple):
            return tuple(o.clone() for o in out)
        return type(out)(sample=out.sample.clone())

    clone = copy.copy(unet)
    clone.forward = forward
    return clone


def _with_decoder(vae, wrap):
    """A shallow copy of `vae` whose `decoder` submodule is `wrap(vae.decoder)`; `vae` is untouched."""
    decoder = getattr(vae, "decoder", None)
    if not isinstance(decoder, torch.nn.Module):
        return vae
    clone = copy.copy(vae)
    clone._modules = dict(vae._modules)  # copy.copy shares the submodule table; give the clone its own
    clone._modules["decoder"] = wrap(decoder)
    return clone


def _exportable(pipe) -> bool:
    unet = pipe.unet
    if getattr(unet.config, "addition_embed_type", None) is not None:  # SDXL's added conditions
        return False
    return sum(p.numel() for p in unet.parameters()) * 4 < ONNX_LIMIT_BYTES


# ----------------------------------------------------------------------------------------------------------
# ONNX Runtime on the CPU


def weights_digest(module: torch.nn.Module) -> str:
    """sha256 of every parameter and buffer as they are now (LoRA layers included), names with values, and
    of each unfused LoRA layer's scale: `--lora F:1` and `F:3` have the same tensors and must not share
    an export."""
    digest = hashlib.sha256()
    for name, tensor in module.state_dict().items():
        digest.update(name.encode())
        digest.update(str(tuple(tensor.shape)).encode())
        digest.update(tensor.detach().cpu().contiguous().view(-1).view(torch.uint8).numpy().tobytes())
    for name, layer in module.named_modules():
        scaling = getattr(layer, "scaling", None)  # peft's LoraLayer: {adapter: alpha / r * weight}
        if isinstance(scaling, dict):
            active = getattr(layer, "active_adapters", ())
            digest.update(f"{name}:{sorted(scaling.items())}:{list(active)}".encode())
    return digest.hexdigest()


def export_onnx(module: torch.nn.Module, args: tuple, path: Path, names: list[str], dynamic: dict) -> Path:
    """Export `module(*args)` to `path` atomically (a half-written file is never picked up)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_suffix(f".{os.getpid()}.partial")
    # The TorchScript exporter: its graphs of diffusers' UNet run in ONNX Runtime bit-close to eager
    # (2e-6 per step here) and export in 2 s; its deprecation notice is not the user's business.
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            module.eval(),
            args,
            str(partial),
            input_names=names[:-1],
            output_names=names[-1:],
            dynamic_axes=dynamic,
            opset_version=OPSET,
            dynamo=False,
        )
    os.replace(partial, path)
    return path


def open_session(path: Path):
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = torch.get_num_threads()
    options.log_severity_level = 3
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def _cached_export(
    module: torch.nn.Module,
    kind: str,
    args: tuple,
    names: list[str],
    dynamic: dict,
    cache: Path,
    progress: Progress | None = None,
):
    import onnxruntime as ort

    key = hashlib.sha256(
        "|".join(
            [weights_digest(module), str([tuple(a.shape) for a in args]), torch.__version__, ort.__version__]
        ).encode()
    ).hexdigest()[:20]
    path = cache / f"{kind}-{key}.onnx"
    if not path.is_file():
        if progress is not None:  # the first run's 10-20 s would otherwise look like a hang
            progress(
                f"exporting the {kind.replace('unet', 'UNet')} for ONNX Runtime (once per model)", 0, None
            )
        try:
            export_onnx(module, args, path, names, dynamic)
        except OSError as err:
            raise FacesmithError(
                f"cannot write the ONNX export to {cache} ({err.strerror or err}): set FACESMITH_CACHE_DIR to a "
                "writable folder, or use --engine eager"
            ) from err
    return open_session(path)


class _UNetCall(torch.nn.Module):
    """The UNet as a function of tensors only, the form the exporter traces."""

    def __init__(self, unet):
        super().__init__()
        self.unet = unet

    def forward(self, sample, timestep, encoder_hidden_states):
        return self.unet(sample, timestep, encoder_hidden_states, return_dict=False)[0]


class OnnxUNet(torch.nn.Module):
    """Stands in for a UNet2DConditionModel inside a diffusers pipeline; ONNX Runtime computes it."""

    def __init__(self, unet, cache: Path, progress: Progress | None = None):
        super().__init__()
        self.config = unet.config
        self.register_buffer(
            "_anchor", torch.zeros(0), persistent=False
        )  # .device and .dtype for the pipeline
        side, channels = unet.config.sample_size, unet.config.in_channels
        width = unet.config.cross_attention_dim
        args = (torch.randn(2, channels, side, side), torch.tensor([500.0, 500.0]), torch.randn(2, 77, width))
        dynamic = {n: {0: "batch"} for n in ("sample", "timestep", "encoder_hidden_states", "out")}
        dynamic["sample"].update({2: "height", 3: "width"})
        dynamic["encoder_hidden_states"][1] = "tokens"
        dynamic["out"].update({2: "height", 3: "width"})
        names = ["sample", "timestep", "encoder_hidden_states", "out"]
        self.session = _cached_export(_UNetCall(unet), "unet", args, names, dynamic, cache, progress)

    @property
    def dtype(self) -> torch.dtype:
        return torch.float32

    @property
    def device(self) -> torch.device:
        return torch.device("cpu")

    def forward(self, sample, timestep, encoder_hidden_states, *args, return_dict: bool = True, **kwargs):
        if kwargs.get("cross_attention_kwargs") or kwargs.get("added_cond_kwargs"):
            raise FacesmithError(
                "this model needs UNet inputs the ONNX engine does not take: use --engine eager"
            )
        timestep = torch.as_tensor(timestep, dtype=torch.float32).reshape(-1).expand(sample.shape[0])
        out = self.session.run(
            None,
            {
                "sample": sample.float().contiguous().numpy(),
                "timestep": timestep.contiguous().numpy(),
                "encoder_hidden_states": encoder_hidden_states.float().contiguous().numpy(),
            },
        )[0]
        out = torch.from_numpy(out)
        return (out,) if not return_dict else _Output(out)


class _Output:
    def __init__(self, sample: torch.Tensor):
        self.sample = sample

    def __getitem__(self, index: int) -> torch.Tensor:
        return (self.sample,)[index]


class OnnxDecoder(torch.nn.Module):
    """Stands in for `vae.decoder` (latents -> pixels); AutoencoderKL and TAEF2 both call it with z."""

    def __init__(
        self, decoder: torch.nn.Module, channels: int, cache: Path, progress: Progress | None = None
    ):
        super().__init__()
        dynamic = {"z": {0: "batch", 2: "height", 3: "width"}, "x": {0: "batch", 2: "H", 3: "W"}}
        self.session = _cached_export(
            decoder, "decoder", (torch.randn(1, channels, 16, 16),), ["z", "x"], dynamic, cache, progress
        )

    def forward(self, z: torch.Tensor, *args, **kwargs) -> torch.Tensor:
        return torch.from_numpy(self.session.run(None, {"z": z.float().contiguous().numpy()})[0])


# ----------------------------------------------------------------------------------------------------------
# torch.compile


def configure_compile_cache() -> Path:
    """Point inductor's persistent caches at cache_root()/inductor unless the user already chose a place."""
    directory = cache_root() / "inductor"
    os.environ.setdefault("TORCHINDUCTOR_CACHE_DIR", str(directory))
    os.environ.setdefault("TORCHINDUCTOR_FX_GRAPH_CACHE", "1")
    os.environ.setdefault("TORCHINDUCTOR_AUTOGRAD_CACHE", "1")
    return Path(os.environ["TORCHINDUCTOR_CACHE_DIR"])
