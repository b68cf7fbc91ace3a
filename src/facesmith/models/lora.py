"""LoRA files: Kohya (`lora_unet_*`/`lora_te*_*` with `alpha`), diffusers/peft (`lora_A`/`lora_B`), and the
older diffusers layouts its training examples wrote (`unet.*.to_q.lora.down.weight`,
`text_encoder.*.q_proj.lora_linear_layer.up.weight`, attention-processor `*.processor.to_q_lora.down.weight`).

Several LoRAs stack, each with its own weight, through diffusers' peft integration
(`load_lora_weights` + `set_adapters`), which converts Kohya files the way diffusers documents (SD1.x
Kohya files use diffusers module names, SDXL ones the original SGM names) and reads the older diffusers
layouts with its own converters. Before loading, every LoRA
module is matched against the base model by name and shape, so a LoRA made for another model is refused
with a count of what doesn't fit instead of failing deep inside peft.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from facesmith.errors import FacesmithError

if TYPE_CHECKING:  # torch is imported where weights are read: parse_lora_spec stays light
    import torch

KOHYA_COMPONENTS = {
    "lora_unet_": "unet",
    "lora_te_": "text_encoder",
    "lora_te1_": "text_encoder",
    "lora_te2_": "text_encoder_2",
}


@dataclass(frozen=True)
class LoraSpec:
    path: Path
    weight: float = 1.0

    def __str__(self) -> str:
        return f"{self.path}:{self.weight:g}"


def parse_lora_spec(spec: str) -> LoraSpec:
    """'FILE[:WEIGHT]' -> LoraSpec; the weight defaults to 1."""
    path, sep, weight = spec.rpartition(":")
    if sep and path:
        try:
            return LoraSpec(Path(path), float(weight))
        except ValueError:
            pass  # a colon inside the path (e.g. C:\\...), not a weight
    if not spec.strip():
        raise FacesmithError("--lora needs a FILE[:WEIGHT], got an empty value")
    return LoraSpec(Path(spec))


def read_lora(path: Path, *, allow_pickle: bool = False) -> dict[str, torch.Tensor]:
    from facesmith.models.single_file import read_checkpoint

    if not path.is_file():
        raise FacesmithError(f"LoRA file {path} does not exist or is not a file")
    if path.name == "trainable.safetensors" and path.parent.name.startswith("step-"):
        # A checkpoint's trainable weights use peft's in-model names and load nowhere as a LoRA; the run
        # writes a LoRA of each saved step beside its checkpoints (train/trainer.py).
        step = path.parent.name.removeprefix("step-")
        run = path.parent.parent.parent
        found = sorted(run.glob(f"*-step{int(step):08d}.safetensors")) if step.isdigit() else []
        hint = str(found[0]) if found else f"the {run}/NAME-stepNNNNNNNN.safetensors of that step"
        raise FacesmithError(f"{path} is a training checkpoint's state, not a LoRA: use {hint}")
    from facesmith.models.loading import non_finite

    state = read_checkpoint(path, allow_pickle=allow_pickle)
    bad = non_finite(state)
    if bad:
        raise FacesmithError(
            f"LoRA {path}: {len(bad)} tensor(s) hold NaN or inf (e.g. {bad[0]}): the file is corrupt"
        )
    return state


# Key fragments of the layouts diffusers wrote before it moved to peft's names (diffusers <= 0.2x
# `save_attn_procs` and `LoraLoaderMixin.save_lora_weights`); `load_lora_weights` still reads them all.
OLD_DIFFUSERS_MARKS = (".lora.down.", ".lora.up.", ".lora_linear_layer.", "_lora.down.", "_lora.up.")


def lora_format(state: dict[str, torch.Tensor], name: str = "LoRA") -> str:
    """'kohya', 'peft' (diffusers' own format is peft's, prefixed by component) or 'diffusers-old'."""
    if state and all(key.startswith(tuple(KOHYA_COMPONENTS)) for key in state):
        return "kohya"
    if any(".lora_A." in key or ".lora_A.weight" in key for key in state):
        return "peft"
    if any(mark in key for key in state for mark in OLD_DIFFUSERS_MARKS):
        return "diffusers-old"
    examples = ", ".join(list(state)[:3]) or "no tensors"
    raise FacesmithError(f"{name} is not a LoRA in Kohya or diffusers/peft format (keys: {examples})")


def lora_modules(
    state: dict[str, torch.Tensor], name: str = "LoRA"
) -> dict[tuple[str, str], tuple[int, int]]:
    """{(component, module name as written in the file): (in_features, out_features)} of a LoRA."""
    modules = {}
    if lora_format(state, name) == "kohya":
        for key, tensor in state.items():
            if key.endswith(".lora_down.weight"):
                module = key[: -len(".lora_down.weight")]
                prefix = max((p for p in KOHYA_COMPONENTS if module.startswith(p)), key=len)
                up = state.get(module + ".lora_up.weight")
                out_features = up.shape[0] if up is not None else -1
                modules[(KOHYA_COMPONENTS[prefix], module[len(prefix) :])] = (tensor.shape[1], out_features)
    else:
        state = as_peft_names(state, name)
        for key, tensor in state.items():
            if ".lora_A." in key:
                module = key.split(".lora_A.")[0]
                component, _, module = module.partition(".")
                if component not in ("unet", "text_encoder", "text_encoder_2"):
                    component, module = "unet", key.split(".lora_A.")[0]
                up = state.get(key.replace(".lora_A.", ".lora_B."))
                modules[(component, module)] = (tensor.shape[1], up.shape[0] if up is not None else -1)
    return modules


def as_peft_names(state: dict[str, torch.Tensor], name: str = "LoRA") -> dict[str, torch.Tensor]:
    """A diffusers/peft LoRA under peft's `lora_A`/`lora_B` names, converted by diffusers' own converters
    (`convert_unet_state_dict_to_peft` for the UNet, `convert_state_dict_to_peft` for text encoders)."""
    if lora_format(state, name) != "diffusers-old":
        return state
    from diffusers.utils.state_dict_utils import convert_state_dict_to_peft, convert_unet_state_dict_to_peft

    parts: dict[str, dict[str, torch.Tensor]] = {}
    for key, tensor in state.items():
        component = key.split(".", 1)[0]
        if component not in ("unet", "text_encoder", "text_encoder_2"):
            component = "unet"  # `save_attn_procs` files name UNet layers without a prefix
        parts.setdefault(component, {})[key] = tensor
    out = convert_unet_state_dict_to_peft(parts.pop("unet", {}))
    for tensors in parts.values():
        text = {k: v for k, v in tensors.items() if ".lora" in k or "_lora." in k}
        if text:
            try:
                out.update(convert_state_dict_to_peft(text))
            except ValueError as err:  # diffusers could not tell the layout either
                raise FacesmithError(f"{name}: cannot read its text-encoder LoRA layers ({err})") from None
    return out


def check_lora_fits(pipe, state: dict[str, torch.Tensor], name: str = "LoRA") -> None:
    """Raise FacesmithError counting the LoRA modules that have no same-shaped layer in `pipe`."""
    kohya = lora_format(state, name) == "kohya"
    targets = {
        component: _layer_shapes(pipe, component, kohya)
        for component in ("unet", "text_encoder", "text_encoder_2")
    }
    modules = lora_modules(state, name)
    misfits = [
        f"{component}:{module}"
        for (component, module), shape in modules.items()
        if targets[component].get(module) != shape
    ]
    if misfits:
        raise FacesmithError(
            f"LoRA {name} doesn't fit this model: {len(misfits)} of {len(modules)} LoRA modules have no "
            f"matching layer (e.g. {misfits[0]}); was it trained for another base model?"
        )


def apply_loras(pipe, specs: list[LoraSpec], *, allow_pickle: bool = False, fused: bool = True) -> None:
    """Load each LoRA as its own peft adapter and set their weights; a weight of 0 leaves the base model.

    LyCORIS LoHa / LoKr and DoRA files, which diffusers cannot load, are merged into the weights at their
    weight (`merge_lycoris`); `fused` False (the server's per-request weights) refuses them."""
    names, weights = [], []
    for index, spec in enumerate(specs):
        state = read_lora(spec.path, allow_pickle=allow_pickle)
        if lycoris_type(state):
            if not fused:
                raise FacesmithError(
                    f"LoRA {spec.path.name} is a LyCORIS {lycoris_type(state)}, which facesmith merges at load "
                    "with a fixed weight: use it with `facesmith generate --lora`, not `serve`"
                )
            merge_lycoris(pipe, state, spec.weight, spec.path.name)
            continue
        check_lora_fits(pipe, state, spec.path.name)
        adapter = f"lora{index}"
        try:
            pipe.load_lora_weights(dict(state), adapter_name=adapter)
        except (ValueError, KeyError, RuntimeError) as err:
            raise FacesmithError(f"cannot load LoRA {spec.path}: {err}") from err
        names.append(adapter)
        weights.append(spec.weight)
    if names:
        pipe.set_adapters(names, adapter_weights=weights)


def _layer_shapes(pipe, component: str, kohya: bool) -> dict[str, tuple[int, int]]:
    """Name -> (in, out) of every Linear/Conv2d layer, under each name a LoRA file may use for it."""
    import torch

    model = getattr(pipe, component, None)
    if model is None:
        return {}
    sgm_names = {}
    if kohya and component == "unet":
        from facesmith.models.sd_layout import UNET_PREFIX, unet_to_original

        # SDXL Kohya files name UNet layers as the original checkpoint does.
        weights = {
            k.replace(".base_layer.", "."): v
            for k, v in model.state_dict().items()
            if k.endswith(".weight") and ".lora_" not in k
        }
        original = unet_to_original(weights, model.config)
        sgm_names = {
            d[: -len(".weight")]: o[len(UNET_PREFIX) : -len(".weight")]
            for d, o in zip(weights, original, strict=True)
        }
    shapes = {}
    for name, layer in model.named_modules():
        if ".lora_" in name or name.endswith(".base_layer"):
            continue
        layer = getattr(layer, "base_layer", layer)  # a layer that already carries a LoRA adapter
        if isinstance(layer, torch.nn.Linear):
            shape = (layer.in_features, layer.out_features)
        elif isinstance(layer, torch.nn.Conv2d):
            shape = (layer.in_channels, layer.out_channels)
        else:
            continue
        aliases = {name, name.removeprefix("text_model.")}
        if component.startswith("text_encoder") and not name.startswith("text_model."):
            aliases.add(
                "text_model." + name
            )  # checkpoints keep the `text_model.` level transformers 5 dropped
        if name in sgm_names:
            aliases.add(sgm_names[name])
        for alias in aliases:
            shapes[alias.replace(".", "_") if kohya else alias] = shape
    return shapes


# ----------------------------------------------------------------------------------------------------------
# LyCORIS LoHa and LoKr (KohakuBlueleaf/LyCORIS) and Kohya DoRA, merged by facesmith: diffusers' SD loaders
# read none of them. The weight updates are LyCORIS's, as ComfyUI's `comfy/weight_adapter/` (lora.py,
# loha.py, lokr.py, base.py's weight_decompose) and A1111's `extensions-builtin/Lora/network_*.py` compute them:
#   LoHa: dW = (w1_a @ w1_b) * (w2_a @ w2_b) * alpha / rank
#   LoKr: dW = kron(w1, w2) * alpha / rank, each factor whole (`lokr_w1`) or split (`lokr_w1_a @ lokr_w1_b`);
#         with neither split there is no rank and the scale is 1.

LYCORIS_MARKS = {
    ".hada_w1_a": "LoHa",
    ".lokr_w1": "LoKr",
    ".lokr_w1_a": "LoKr",
    ".lokr_w2_a": "LoKr",
    ".dora_scale": "DoRA",  # diffusers' SD loaders drop Kohya `dora_scale` tensors (lora_pipeline.py)
}


def lycoris_type(state: dict[str, torch.Tensor]) -> str | None:
    """'LoHa', 'LoKr' or 'DoRA' for a file facesmith merges itself, else None (diffusers loads it)."""
    for key in state:
        for mark, kind in LYCORIS_MARKS.items():
            if key.endswith(mark):
                return kind
    return None


def lycoris_weight(state: dict[str, torch.Tensor], module: str, weight: torch.Tensor) -> torch.Tensor:
    """The layer weight after one module's LoRA / LoHa / LoKr update (and DoRA's rescaling), in fp32.

    DoRA (`dora_scale`, Liu et al. 2024) as LyCORIS applies it: the updated weight W' = W + dW is scaled to
    `dora_scale` / ||W'||, per output feature when `dora_scale` is (out, 1, ...) (peft's and LyCORIS's
    `wd_on_out`), per input feature when it is (1, in, ...) (the form A1111's `apply_weight_decompose` reads).
    """
    import torch

    def get(name):
        value = state.get(f"{module}.{name}")
        return value.float() if value is not None else None

    if get("hada_t1") is not None or get("lokr_t2") is not None or get("lora_mid.weight") is not None:
        raise FacesmithError(f"{module}: LyCORIS Tucker (CP) layers are not supported by facesmith")
    alpha, shape = get("alpha"), weight.shape
    if get("hada_w1_a") is not None:
        rank = get("hada_w1_b").shape[0]
        delta = (get("hada_w1_a") @ get("hada_w1_b")) * (get("hada_w2_a") @ get("hada_w2_b"))
    elif get("lora_down.weight") is not None:
        down, up = get("lora_down.weight"), get("lora_up.weight")
        rank = down.shape[0]
        delta = up.flatten(1) @ down.flatten(1)
    else:
        rank = None
        w1 = get("lokr_w1")
        if w1 is None:
            w1, rank = get("lokr_w1_a") @ get("lokr_w1_b"), get("lokr_w1_b").shape[0]
        w2 = get("lokr_w2")
        if w2 is None:
            w2, rank = get("lokr_w2_a") @ get("lokr_w2_b"), get("lokr_w2_b").shape[0]
        delta = torch.kron(w1[:, :, None, None] if w2.dim() == 4 else w1, w2)
    scale = float(alpha) / rank if alpha is not None and rank is not None else 1.0
    merged = weight.float() + (delta * scale).reshape(shape)
    dora_scale = get("dora_scale")
    if dora_scale is None:
        return merged
    ones = [1] * (merged.dim() - 1)
    if dora_scale.shape[0] == shape[0] and dora_scale.numel() == shape[0]:
        norm = merged.reshape(shape[0], -1).norm(dim=1).reshape(shape[0], *ones)
    else:
        norm = (
            merged.transpose(0, 1).reshape(shape[1], -1).norm(dim=1).reshape(shape[1], *ones).transpose(0, 1)
        )
    return merged * (
        dora_scale.reshape(norm.shape if dora_scale.numel() == norm.numel() else dora_scale.shape) / norm
    )


def merge_lycoris(pipe, state: dict[str, torch.Tensor], weight: float, name: str = "LoRA") -> None:
    """Move each layer of `pipe` named in a LoHa/LoKr/DoRA file (Kohya module names) `weight` of the way
    to its updated weight."""
    import torch

    modules = sorted({key.split(".", 1)[0] for key in state})  # Kohya module names hold no dots
    layers = {}
    for component in ("unet", "text_encoder", "text_encoder_2"):
        model = getattr(pipe, component, None)
        if model is None:
            continue
        prefixes = [p for p, c in KOHYA_COMPONENTS.items() if c == component]
        for layer_name, layer in model.named_modules():
            if isinstance(layer, (torch.nn.Linear, torch.nn.Conv2d)):
                names = {layer_name, layer_name.removeprefix("text_model."), f"text_model.{layer_name}"}
                for prefix in prefixes:
                    layers.update({prefix + n.replace(".", "_"): layer for n in names})
    misfits = [m for m in modules if m not in layers]
    if misfits:
        raise FacesmithError(
            f"LoRA {name} doesn't fit this model: {len(misfits)} of {len(modules)} LyCORIS modules have no "
            f"matching layer (e.g. {misfits[0]}); was it trained for another base model?"
        )
    with torch.no_grad():
        for module in modules:
            layer = layers[module]
            try:
                updated = lycoris_weight(state, module, layer.weight)
            except (RuntimeError, TypeError, AttributeError) as err:
                raise FacesmithError(f"LoRA {name}: {module} does not fit its layer ({err})") from None
            # At weight w the layer moves w of the way to the updated weight, as ComfyUI's strength does.
            layer.weight += weight * (updated - layer.weight.float()).to(layer.weight.dtype)
