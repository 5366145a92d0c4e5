"""Which layers of a model are analyzed, in what order, and their stage/block labels.

`discover_layers` works on any `nn.Module`. It runs one dummy forward pass with hooks to get the
true execution order, then labels every analyzed layer with a **stage** (a counter that advances at
every max-pool, or, in a model without max-pools, after every spatial downsampling) and a **block**
(its index among the analyzed layers of its stage). For the paper's lenet/VGG/AlexNet this gives the
original code's numbering of `features`. If the forward pass fails, the order of `named_modules()`
is used instead and only max-pool modules advance the stage.

A residual network (one whose torch.fx graph has an addition joining two paths split from one value)
is labelled by its structure instead (`residual_labels`): the stage is the spatial resolution and the
block is the residual block, so torchvision's `layerN.M` reads as stage N, block M.
"""
from __future__ import annotations

import dataclasses
import warnings
from dataclasses import dataclass
from typing import Sequence

import torch
import torch.nn as nn

from .defaults import INCLUDE_1X1
from .errors import UsageError, first_line
from .residual import residual_labels, smaller

CONV, LINEAR = "conv", "linear"
_MAXPOOLS = (nn.MaxPool1d, nn.MaxPool2d, nn.MaxPool3d)


@dataclass(frozen=True)
class LayerInfo:
    """One analyzed layer.

    name: qualified module name (`features.0`); module: the module itself; kind: "conv" or "linear";
    stage/block: the grouping of docs/method.md §2; index: position among the analyzed layers;
    weight_key: the weight's key in `model.state_dict()`; shape: the weight's shape;
    traced: True when the order comes from a forward pass, False for the `named_modules` fallback;
    unit: in a residual network, the residual block holding the layer (e.g. `layer2.1`), else the layer itself.
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
    unit: str | None = None


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


ONE_BY_ONE = "1x1 convolution (use --include-1x1)"  # why a 1x1 conv is left out (see `is_1x1`)
LINEAR_SKIPPED = "linear layer (use --with-linear)"  # why a linear layer is left out (without --with-linear)
TRANSPOSED_SKIPPED = "transposed convolution (its weight is laid out input-first)"  # why one is left out, always


def is_1x1(kernel_size: Sequence[int]) -> bool:
    """Whether a convolution's kernel is 1x1 (1 in every spatial dimension). Such a layer is analyzed by
    `hparr projections` and re-initialized by `hparr reinit` only with --include-1x1 (the one default of both,
    `defaults.INCLUDE_1X1`): its filters mix channels only, and the original code left them out."""
    return all(int(k) == 1 for k in kernel_size)


def skip_reason(module: nn.Module, with_linear: bool = False, include_1x1: bool = INCLUDE_1X1) -> str | None:
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
            return TRANSPOSED_SKIPPED
        if is_1x1(module.kernel_size) and not include_1x1:
            return ONE_BY_ONE
    elif not with_linear:
        return LINEAR_SKIPPED
    return None


def guess_input_shape(model: nn.Module, size: int = 32) -> tuple[int, ...]:
    """A plausible input shape: (1, C, size, size) from the first conv, else (1, in_features) of the first Linear."""
    for module in model.modules():
        if isinstance(module, nn.modules.conv._ConvNd) and not getattr(module, "transposed", False):
            return (1, module.in_channels) + (size,) * len(module.kernel_size)
        if isinstance(module, nn.Linear):
            return (1, module.in_features)
    return (1, 3, size, size)


def batched_shape(model: nn.Module, input_shape: Sequence[int] | None) -> tuple[int, ...]:
    """The dummy input's shape with its batch dimension: `input_shape` as given when it has the rank of
    `guess_input_shape(model)`, with a batch of 1 put in front when it lacks one dimension (the shape of one
    sample, (C, H, W)), and the guess itself when None."""
    guess = guess_input_shape(model)
    if input_shape is None:
        return guess
    shape = tuple(int(v) for v in input_shape)
    return (1, *shape) if len(shape) == len(guess) - 1 else shape


def _spatial(value) -> tuple[int, ...] | None:
    """Spatial size of a batched conv-like tensor (N, C, *spatial), else None."""
    if isinstance(value, (tuple, list)) and value:
        value = value[0]
    if isinstance(value, torch.Tensor) and value.dim() >= 3:
        return tuple(value.shape[2:])
    return None


def _trace(model: nn.Module, input_shape: Sequence[int]) -> list[tuple[str, nn.Module, tuple | None, tuple | None]]:
    """(name, module, input spatial, output spatial) for every leaf-module call, in execution order."""
    names = {id(m): n for n, m in model.named_modules()}
    events: list[tuple[str, nn.Module, tuple | None, tuple | None]] = []

    def hook(module, args, output):
        events.append((names[id(module)], module, _spatial(args), _spatial(output)))

    leaves = [m for _, m in model.named_modules() if not any(True for _ in m.children()) or layer_kind(m)]
    dummy_forward(model, input_shape, [(m, hook) for m in leaves])
    return events


def dummy_forward(model: nn.Module, input_shape: Sequence[int], hooks: Sequence[tuple[nn.Module, object]]) -> None:
    """One forward pass of zeros of `input_shape` in eval mode, without gradients, with the forward hooks
    `(module, hook)` attached for its duration; the modules' training modes are restored afterwards."""
    handles = [m.register_forward_hook(hook) for m, hook in hooks]
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


def check_model(model: nn.Module, input_shape: Sequence[int], what: str, analyzed: bool = True,
                with_linear: bool = False, include_1x1: bool = False, no_layer_hint: str = "") -> None:
    """Refuse in one line (a UsageError naming `what`, e.g. "--arch mymod:net") a model that hparr cannot use:
    one whose forward fails on the input hparr passes it, a float tensor of shape (B, C, H, W) (zeros of
    `input_shape`, in eval mode), and with `analyzed`, one whose forward calls no layer that would be analyzed
    (`skip_reason`), followed by `no_layer_hint`. Out of memory is not the model's fault: it is raised as it is."""
    shape = tuple(int(v) for v in input_shape)
    called: list[nn.Module] = []
    candidates = [m for m in model.modules() if layer_kind(m) is not None]
    try:
        with warnings.catch_warnings(record=True):  # the model's own warnings come again when it is used
            dummy_forward(model, shape, [(m, lambda module, args, output: called.append(module)) for m in candidates])
    except Exception as exc:  # noqa: BLE001 - whatever a model of any kind raises on that input
        if type(exc).__name__ == "OutOfMemoryError" or "out of memory" in str(exc).lower():
            raise
        raise UsageError(f"{what}: its forward fails on the input hparr passes, a float tensor of shape "
                         f"(B, C, H, W) (here {shape}): {type(exc).__name__}: {first_line(exc)}") from None
    if not analyzed:
        return
    names = {id(m): n for n, m in model.named_modules()}
    reasons = {names[id(m)]: (layer_kind(m), skip_reason(m, with_linear, include_1x1)) for m in called}
    if any(reason is None for _, reason in reasons.values()):
        return
    kinds = "conv or Linear layer" if with_linear else "conv layer"
    skipped = "; ".join(f"{name} skipped: {reason}" for name, (kind, reason) in reasons.items()
                        if with_linear or kind == CONV)
    why = skipped or f"no {kinds} is called in its forward"
    raise UsageError(f"{what} has no layer to analyze ({why})" + (f"; {no_layer_hint}" if no_layer_hint else ""))


def discover_layers(model: nn.Module, input_shape: Sequence[int] | None = None, with_linear: bool = False,
                    include_1x1: bool = INCLUDE_1X1) -> tuple[list[LayerInfo], list[Skipped]]:
    """The analyzed layers of `model` in forward order with stage/block labels, and the skipped ones with reasons.

    `input_shape` is the dummy input's shape, with or without the batch dimension (default:
    `guess_input_shape`).
    A module called several times is counted once, at its first call; every call of a max-pool
    advances the stage. Without max-pools, the stage advances after any call whose output (or whose
    input, for downsampling done outside modules) is spatially smaller than the current stage's size.
    Conv/linear modules never called in the forward pass are skipped with that reason.
    """
    input_shape = batched_shape(model, input_shape)
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
            elif smaller(in_size, size):
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
        elif smaller(out_size, size):
            advance()
            size = out_size

    for name, module in model.named_modules():
        if layer_kind(module) is not None and id(module) not in seen:
            seen.add(id(module))
            skipped.append(Skipped(name, layer_kind(module), "not called in the forward pass"))
    if traced and layers:
        layers = _relabel_residual(model, input_shape, layers)
    return layers, skipped


def _relabel_residual(model: nn.Module, input_shape: Sequence[int], layers: list[LayerInfo]) -> list[LayerInfo]:
    """The layers with stage/block labels from the residual structure, if the model has residual blocks
    and torch.fx traces it; otherwise unchanged (the max-pool/downsampling rule)."""
    try:
        found = residual_labels(model, input_shape, [layer.name for layer in layers])
    except Exception as exc:  # noqa: BLE001 - an untraceable model keeps the max-pool/downsampling rule
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:200]
        warnings.warn(f"torch.fx cannot trace {type(model).__name__} ({first}): residual blocks are not "
                      "recognized, and stages and blocks follow the max-pool/downsampling rule instead",
                      RuntimeWarning, stacklevel=3)
        return [dataclasses.replace(layer, unit=layer.name) for layer in layers]
    if found is None:
        return [dataclasses.replace(layer, unit=layer.name) for layer in layers]
    labels, units = found
    return [dataclasses.replace(layer, stage=labels[layer.name][0], block=labels[layer.name][1],
                                unit=units[layer.name]) for layer in layers]
