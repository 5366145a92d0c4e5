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
import operator
import warnings
from dataclasses import dataclass
from typing import Sequence

import torch
import torch.nn as nn

from .defaults import INCLUDE_1X1
from .errors import UsageError, first_line

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
            return "transposed convolution (its weight is laid out input-first)"
        if is_1x1(module.kernel_size) and not include_1x1:
            return ONE_BY_ONE
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


# --- residual networks: stages by resolution, blocks by structure ----------------------------------

_ADD_FUNCTIONS = (operator.add, operator.iadd, torch.add)


class LeafTracer:
    """torch.fx tracing in which every convolution, Linear and BatchNorm module (also subclasses such as
    timm's BatchNormAct2d) is one call, whose parameters are read by that call alone."""

    @staticmethod
    def trace(model: nn.Module):
        import torch.fx as fx

        class Tracer(fx.Tracer):
            def is_leaf_module(self, m: nn.Module, qualname: str) -> bool:
                if isinstance(m, (nn.modules.conv._ConvNd, nn.Linear, nn.modules.batchnorm._NormBase)):
                    return True
                return super().is_leaf_module(m, qualname)

        graph = Tracer().trace(model)
        return fx.GraphModule(model, graph)

    @staticmethod
    def output_shapes(gm, example: torch.Tensor) -> dict:
        """{node: shape of its output} for the nodes of the traced `gm` whose output is a tensor, from one run
        on `example` (a plain interpreter: torch.fx's ShapeProp would import the symbolic-shapes machinery and
        sympy, about 0.3 s of every command's start-up)."""
        import torch.fx as fx

        shapes: dict = {}

        class Recorder(fx.Interpreter):
            def run_node(self, n):
                result = super().run_node(n)
                if isinstance(result, torch.Tensor):
                    shapes[n] = tuple(result.shape)
                return result

        Recorder(gm).run(example)
        return shapes


def _is_add(node) -> bool:
    if node.op == "call_function":
        return node.target in _ADD_FUNCTIONS
    return node.op == "call_method" and node.target in ("add", "add_", "__add__", "__iadd__")


def _scope(node) -> list[str]:
    stack = node.meta.get("nn_module_stack") or {}
    return [value[0] if isinstance(value, tuple) else str(key) for key, value in stack.items()]


def _common_prefix(scopes: list[list[str]]) -> list[str]:
    out: list[str] = []
    for parts in zip(*scopes):
        if any(p != parts[0] for p in parts):
            break
        out.append(parts[0])
    return out


@dataclass(frozen=True)
class ResidualBlock:
    """A residual block found in the graph: the nodes from where a path splits to the add that joins it.

    name: the innermost module holding all of them ("" when none does); layers: the analyzed layers
    called on those paths; size: the spatial size of the block's output.
    """

    name: str
    layers: tuple[str, ...]
    size: tuple[int, ...] | None


def residual_structure(model: nn.Module, input_shape: Sequence[int], names: Sequence[str]):
    """Residual blocks and the spatial output size of each layer's first call, from a torch.fx trace
    with shapes: ([ResidualBlock], {layer name: output size}, [layer names in call order]).

    Raises whatever tracing raises (the caller falls back to the max-pool/downsampling rule).
    """
    gm = LeafTracer.trace(model)
    ref = next(iter(model.parameters()), None)
    dtype = ref.dtype if ref is not None and ref.is_floating_point() else torch.float32
    device = ref.device if ref is not None else torch.device("cpu")
    modes = [(m, m.training) for m in model.modules()]
    try:
        model.eval()
        with torch.no_grad():
            shapes = LeafTracer.output_shapes(gm, torch.zeros(tuple(input_shape), dtype=dtype, device=device))
    finally:
        for m, mode in modes:
            m.training = mode

    nodes = list(gm.graph.nodes)
    pos = {n: i for i, n in enumerate(nodes)}

    def size(node):
        shape = shapes.get(node)
        return tuple(shape[2:]) if shape is not None and len(shape) >= 3 else None

    wanted = set(names)
    first_call: dict[str, object] = {}
    for n in nodes:
        if n.op == "call_module" and n.target in wanted and n.target not in first_call:
            first_call[n.target] = n
    ancestors: dict[object, frozenset] = {}
    for n in nodes:
        acc = {n}
        for a in n.all_input_nodes:
            acc |= ancestors[a]
        ancestors[n] = frozenset(acc)

    blocks = []
    for n in nodes:
        if not _is_add(n) or len(n.args) < 2 or not all(hasattr(a, "all_input_nodes") for a in n.args[:2]):
            continue
        a, b = n.args[:2]
        if size(a) is None or size(a) != size(b):
            continue
        common = [c for c in ancestors[a] & ancestors[b] if c.op != "get_attr"]
        if not common:
            continue
        split = max(common, key=pos.get)
        inside = [m for m in nodes if pos[split] < pos[m] <= pos[n] and split in ancestors[m] and m in ancestors[n]]
        layers = tuple(dict.fromkeys(m.target for m in inside if m.op == "call_module" and m.target in wanted))
        if not layers:
            continue
        scopes = [_scope(m) for m in inside if m is not n] + [_scope(n)]
        prefix = _common_prefix([s for s in scopes if s] or [[]])
        blocks.append(ResidualBlock(prefix[-1] if prefix else "", layers, size(n)))
    order = sorted(first_call, key=lambda name: pos[first_call[name]])
    return blocks, {name: size(node) for name, node in first_call.items()}, order


def residual_labels(model: nn.Module, input_shape: Sequence[int], names: Sequence[str]):
    """Stage and block of each layer of a residual network, or None for a network without residual blocks.

    A unit is a residual block (the innermost one holding the layer) or a layer outside every block.
    Units are taken in forward order; the stage advances whenever a unit's output has a smaller spatial
    size than the last one's (a residual block's output is its add's), and the block counts the units of
    the stage. Returns ({layer: (stage, block)}, {layer: unit name}) where a unit name is the block's
    module (e.g. `layer2.1`) or the layer's own name.
    """
    blocks, sizes, order = residual_structure(model, input_shape, names)
    if not blocks or set(order) != set(names):
        return None
    innermost: dict[str, ResidualBlock] = {}
    for block in sorted(blocks, key=lambda b: len(b.layers), reverse=True):
        for layer in block.layers:
            innermost[layer] = block  # smaller blocks come later and win
    labels: dict[str, tuple[int, int]] = {}
    units: dict[str, str] = {}
    seen: dict[object, tuple[int, int]] = {}
    stage, block_index, current = 0, -1, None
    for layer in order:
        unit = innermost.get(layer, layer)
        if unit not in seen:
            unit_size = unit.size if isinstance(unit, ResidualBlock) else sizes.get(layer)
            if current is not None and _smaller(unit_size, current):
                stage, block_index = stage + 1, -1
            if unit_size is not None:
                current = unit_size
            block_index += 1
            seen[unit] = (stage, block_index)
        labels[layer] = seen[unit]
        units[layer] = (unit.name or f"stage{seen[unit][0]}.block{seen[unit][1]}") if isinstance(unit, ResidualBlock) \
            else layer
    return labels, units
