"""Residual networks: stages by spatial resolution, blocks by structure (`residual_labels`, used by
`hparr.layers.discover_layers`), and `LeafTracer`, the torch.fx tracing that the reinit sweep and the input kinds
share."""
from __future__ import annotations

import operator
from dataclasses import dataclass
from typing import Sequence

import torch
import torch.fx as fx
import torch.nn as nn


def smaller(a: tuple[int, ...] | None, b: tuple[int, ...] | None) -> bool:
    """a is a spatial downsampling of b (same rank, no dimension larger, one smaller)."""
    return (a is not None and b is not None and len(a) == len(b)
            and all(x <= y for x, y in zip(a, b)) and any(x < y for x, y in zip(a, b)))


# --- residual networks: stages by resolution, blocks by structure ----------------------------------

_ADD_FUNCTIONS = (operator.add, operator.iadd, torch.add)


class LeafTracer:
    """torch.fx tracing in which every convolution, Linear and BatchNorm module (also subclasses such as
    timm's BatchNormAct2d) is one call, whose parameters are read by that call alone."""

    @staticmethod
    def trace(model: nn.Module):
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
            if current is not None and smaller(unit_size, current):
                stage, block_index = stage + 1, -1
            if unit_size is not None:
                current = unit_size
            block_index += 1
            seen[unit] = (stage, block_index)
        labels[layer] = seen[unit]
        units[layer] = (unit.name or f"stage{seen[unit][0]}.block{seen[unit][1]}") if isinstance(unit, ResidualBlock) \
            else layer
    return labels, units
