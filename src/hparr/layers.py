"""Which layers of a model are analyzed, in what order, and their stage/block labels.

`discover_layers` works on any `nn.Module`. It runs one dummy forward pass with hooks to get the
true execution order, then labels every analyzed layer with a **stage** (a counter that advances at
every max-pool, or, in a model without max-pools, after every spatial downsampling) and a **block**
(its index among the analyzed layers of its stage). For the paper's lenet/VGG/AlexNet this gives the
original code's numbering of `features`. If the forward pass fails, the order of `named_modules()`
is used instead and only max-pool modules advance the stage.
"""
from __future__ import annotations

import warnings
from dataclasses import dataclass
from typing import Sequence

import torch
import torch.nn as nn

CONV, LINEAR = "conv", "linear"
_MAXPOOLS = (nn.MaxPool1d, nn.MaxPool2d, nn.MaxPool3d)


@dataclass(frozen=True)
class LayerInfo:
    """One analyzed layer.

    name: qualified module name (`features.0`); module: the module itself; kind: "conv" or "linear";
    stage/block: the grouping of docs/method.md §2; index: position among the analyzed layers;
    weight_key: the weight's key in `model.state_dict()`; shape: the weight's shape;
    traced: True when the order comes from a forward pass, False for the `named_modules` fallback.
    """

    name: str
    module: nn.Module
    kind: str
    stage: int
    block: int
    index: int
    weight_key: str
    shape: tuple[int, ...]
    traced: bool = True


@dataclass(frozen=True)
class Skipped:
    """A conv or linear layer that is not analyzed, and why."""

    name: str
    kind: str
    reason: str


def layer_kind(module: nn.Module) -> str | None:
    """ "conv" for a (non-transposed) convolution, "linear" for nn.Linear, else None."""
    if isinstance(module, nn.modules.conv._ConvNd):
        return CONV
    if isinstance(module, nn.Linear):
        return LINEAR
    return None


def skip_reason(module: nn.Module, with_linear: bool = False, include_1x1: bool = False) -> str | None:
    """Why a conv/linear module is left out under these options (None: it is analyzed)."""
    kind = layer_kind(module)
    if kind is None:
        return "not a convolution or linear layer"
    if getattr(module, "weight", None) is None or not isinstance(module.weight, torch.Tensor):
        return "has no weight tensor"
    if isinstance(module.weight, nn.parameter.UninitializedParameter):
        return "lazy layer whose weight is not initialized"
    if kind == CONV:
        if getattr(module, "transposed", False):
            return "transposed convolution (its weight is laid out input-first)"
        if all(k == 1 for k in module.kernel_size) and not include_1x1:
            return "1x1 convolution (use --include-1x1)"
    elif not with_linear:
        return "linear layer (use --with-linear)"
    return None


def guess_input_shape(model: nn.Module, size: int = 32) -> tuple[int, ...]:
    """A plausible input shape: (1, C, size, size) from the first conv, else (1, in_features) of the first Linear."""
    for module in model.modules():
        if isinstance(module, nn.modules.conv._ConvNd) and not getattr(module, "transposed", False):
            return (1, module.in_channels) + (size,) * len(module.kernel_size)
        if isinstance(module, nn.Linear):
            return (1, module.in_features)
    return (1, 3, size, size)


def _spatial(value) -> tuple[int, ...] | None:
    """Spatial size of a batched conv-like tensor (N, C, *spatial), else None."""
    if isinstance(value, (tuple, list)) and value:
        value = value[0]
    if isinstance(value, torch.Tensor) and value.dim() >= 3:
        return tuple(value.shape[2:])
    return None


def _smaller(a: tuple[int, ...] | None, b: tuple[int, ...] | None) -> bool:
    """a is a spatial downsampling of b (same rank, no dimension larger, one smaller)."""
    return (a is not None and b is not None and len(a) == len(b)
            and all(x <= y for x, y in zip(a, b)) and any(x < y for x, y in zip(a, b)))


def _trace(model: nn.Module, input_shape: Sequence[int]) -> list[tuple[str, nn.Module, tuple | None, tuple | None]]:
    """(name, module, input spatial, output spatial) for every leaf-module call, in execution order."""
    names = {id(m): n for n, m in model.named_modules()}
    events: list[tuple[str, nn.Module, tuple | None, tuple | None]] = []

    def hook(module, args, output):
        events.append((names[id(module)], module, _spatial(args), _spatial(output)))

    leaves = [m for _, m in model.named_modules() if not any(True for _ in m.children()) or layer_kind(m)]
    handles = [m.register_forward_hook(hook) for m in leaves]
    modes = [(m, m.training) for m in model.modules()]
    ref = next(iter(model.parameters()), None)
    if ref is None:
        ref = next(iter(model.buffers()), torch.empty(0))
    dtype = ref.dtype if ref.is_floating_point() else torch.float32
    try:
        model.eval()  # batch statistics of one dummy sample would fail in train mode
        with torch.no_grad():
            model(torch.zeros(tuple(input_shape), dtype=dtype, device=ref.device))
    finally:
        for h in handles:
            h.remove()
        for m, mode in modes:
            m.training = mode
    return events


def discover_layers(model: nn.Module, input_shape: Sequence[int] | None = None, with_linear: bool = False,
                    include_1x1: bool = False) -> tuple[list[LayerInfo], list[Skipped]]:
    """The analyzed layers of `model` in forward order with stage/block labels, and the skipped ones with reasons.

    `input_shape` is the dummy input's shape, batch included (default: `guess_input_shape`).
    A module called several times is counted once, at its first call; every call of a max-pool
    advances the stage. Without max-pools, the stage advances after any call whose output (or whose
    input, for downsampling done outside modules) is spatially smaller than the current stage's size.
    Conv/linear modules never called in the forward pass are skipped with that reason.
    """
    if input_shape is None:
        input_shape = guess_input_shape(model)
    try:
        events = _trace(model, input_shape)
        traced = True
    except Exception as exc:  # noqa: BLE001 - any model may fail on a dummy input; fall back, but say so
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:200]
        warnings.warn(f"forward pass on a dummy input of shape {tuple(input_shape)} failed ({first}); "
                      "using the module registration order, where only max-pool modules advance the stage",
                      RuntimeWarning, stacklevel=2)
        events = [(n, m, None, None) for n, m in model.named_modules()]
        traced = False

    has_maxpool = any(isinstance(m, _MAXPOOLS) for _, m, _, _ in events)
    layers: list[LayerInfo] = []
    skipped: list[Skipped] = []
    seen: set[int] = set()
    stage, block, size = 0, 0, None

    def advance():
        nonlocal stage, block
        stage, block = stage + 1, 0

    for name, module, in_size, out_size in events:
        if not has_maxpool:
            if size is None:
                size = in_size
            elif _smaller(in_size, size):
                advance()
                size = in_size
        kind = layer_kind(module)
        if kind is not None and id(module) not in seen:
            seen.add(id(module))
            reason = skip_reason(module, with_linear, include_1x1)
            if reason is None:
                layers.append(LayerInfo(name, module, kind, stage, block, len(layers),
                                        f"{name}.weight" if name else "weight", tuple(module.weight.shape), traced))
                block += 1
            else:
                skipped.append(Skipped(name, kind, reason))
        if has_maxpool:
            if isinstance(module, _MAXPOOLS):
                advance()
        elif _smaller(out_size, size):
            advance()
            size = out_size

    for name, module in model.named_modules():
        if layer_kind(module) is not None and id(module) not in seen:
            seen.add(id(module))
            skipped.append(Skipped(name, layer_kind(module), "not called in the forward pass"))
    return layers, skipped
