"""ONNX files: the weights are the graph's initializers, read with the `onnx` package (nothing is converted, and a
tensor is read only when it is looked up: from the file's bytes, or from its external-data file), the graph's
nodes in topological order, the layers it holds (`graph_layers`), and, for the commands that run a model on data,
the graph converted to a `torch.nn.Module` by onnx2torch (`to_torch`).

Both packages are the optional extra `onnx` (`pip install 'hparr[onnx]'`); hparr imports them only here, and only
when an ONNX file is given.
"""
from __future__ import annotations

import heapq
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch

from ..errors import HparrError, first_line
from ..layers import LINEAR_SKIPPED, ONE_BY_ONE, TRANSPOSED_SKIPPED, Skipped, is_1x1
from ._formats import LazyState

EXTRA = "pip install 'hparr[onnx]'"
CONV_OPS = ("Conv",)
LINEAR_OPS = ("Gemm", "MatMul")
# convolutions whose weight is not a float filter bank laid out (out, in/groups, *kernel)
_OTHER_CONV_OPS = {"ConvTranspose": TRANSPOSED_SKIPPED,
                   "QLinearConv": "quantized convolution (integer weights)",
                   "ConvInteger": "quantized convolution (integer weights)"}


def require_onnx(path: str | os.PathLike):
    """The `onnx` module, or an HparrError saying which extra to install."""
    try:
        import onnx  # optional extra (hparr[onnx])
    except ImportError:
        raise HparrError(f"{path} is an ONNX model: reading it needs the onnx extra ({EXTRA})") from None
    return onnx


@dataclass(frozen=True)
class GraphNode:
    """One node of the graph, in topological order: its unique name (the node's own name, or `<op>_<position>`
    where it has none, with `_<n>` added to a name used twice), op type, domain, inputs and outputs (value
    names; "" for an omitted optional input) and the ONNX NodeProto itself (its attributes)."""

    name: str
    op_type: str
    domain: str
    inputs: tuple[str, ...]
    outputs: tuple[str, ...]
    proto: Any


@dataclass(frozen=True)
class GraphLayer:
    """A conv (or with --with-linear a Gemm/MatMul) node of the graph whose weight is a constant: the node, the
    initializer or constant holding the weight, its kind ("conv"/"linear"), the weight's shape as analyzed
    (out, in/groups, *kernel; a linear layer's (out, in)), its group count and whether the stored matrix is
    transposed from that ((in, out), as MatMul and Gemm without transB store it)."""

    node: GraphNode
    weight: str
    kind: str
    shape: tuple[int, ...]
    groups: int = 1
    transposed: bool = False


@dataclass
class OnnxModel:
    """An ONNX file read without its external data: the ModelProto, the nodes in topological order, the
    initializers and the constants of Constant nodes by value name, and the graph's data inputs."""

    path: Path
    proto: Any
    nodes: list[GraphNode]
    initializers: dict[str, Any]
    constants: dict[str, Any]
    inputs: list[str]
    opset: int
    producers: dict[str, GraphNode] = field(default_factory=dict)

    def __post_init__(self):
        self.producers = {out: node for node in self.nodes for out in node.outputs if out}

    def tensor_proto(self, name: str):
        """The TensorProto holding constant `name` (an initializer or a Constant node's value), through Identity
        nodes; None when the value is computed in the graph."""
        seen = set()
        while name not in seen:
            seen.add(name)
            if name in self.initializers:
                return self.initializers[name]
            if name in self.constants:
                return self.constants[name]
            node = self.producers.get(name)
            if node is None or node.op_type != "Identity" or not node.inputs:
                return None
            name = node.inputs[0]
        return None

    def array(self, name: str) -> np.ndarray:
        """Constant `name` as a numpy array (its external data read from beside the file when it has some)."""
        proto = self.tensor_proto(name)
        if proto is None:
            raise HparrError(f"{self.path}: {name!r} is not a constant of the graph")
        onnx = require_onnx(self.path)
        try:
            return onnx.numpy_helper.to_array(proto, base_dir=str(self.path.parent))
        except (OSError, ValueError, TypeError) as exc:
            raise HparrError(f"{self.path}: cannot read tensor {name!r}: {first_line(exc)}") from None

    def tensor(self, name: str) -> torch.Tensor:
        """Constant `name` as a CPU tensor of its own dtype (float16/bfloat16 kept; other non-torch dtypes, the
        8-bit floats, as float32)."""
        return _to_torch(self.array(name))

    def shape(self, name: str) -> tuple[int, ...]:
        proto = self.tensor_proto(name)
        return tuple(int(d) for d in proto.dims)

    def state(self) -> LazyState:
        """The initializers (and Constant nodes' values) as a lazy state_dict: a tensor is read when looked up."""
        names = [n for n in self.initializers] + [n for n in self.constants if n not in self.initializers]
        return LazyState(names, self.tensor, self.shape, str(self.path))


def _to_torch(array: np.ndarray) -> torch.Tensor:
    if array.dtype.name == "bfloat16":
        return torch.from_numpy(np.ascontiguousarray(array).view(np.uint16).copy()).view(torch.bfloat16)
    if array.dtype.kind not in "fiub" or array.dtype.name.startswith("float8"):
        array = array.astype(np.float32)
    if not array.flags.writeable or not array.flags.c_contiguous:
        array = np.array(array, copy=True, order="C")
    return torch.from_numpy(array)


def read_onnx(path: str | os.PathLike) -> OnnxModel:
    """Read an ONNX file (its external data is read later, tensor by tensor, when looked up). A file the onnx
    package cannot parse, or without nodes, raises a one-line HparrError."""
    path = Path(path)
    onnx = require_onnx(path)
    try:
        proto = onnx.load(str(path), load_external_data=False)
    except Exception as exc:  # noqa: BLE001 - protobuf reports a torn file in its own ways
        raise HparrError(f"truncated or corrupt ONNX file {path}: {first_line(exc)}") from None
    graph = proto.graph
    if not len(graph.node):
        raise HparrError(f"{path} is an ONNX model with an empty graph (no nodes)")
    initializers = {t.name: t for t in graph.initializer}
    constants = {}
    for node in graph.node:
        if node.op_type == "Constant" and node.output:
            for attr in node.attribute:
                if attr.name == "value" and attr.HasField("t"):
                    constants[node.output[0]] = attr.t
    inputs = [i.name for i in graph.input if i.name not in initializers]
    opset = next((int(o.version) for o in proto.opset_import if o.domain in ("", "ai.onnx")), 0)
    return OnnxModel(path, proto, topological_nodes(graph.node, set(initializers) | set(inputs), path),
                     initializers, constants, inputs, opset)


def topological_nodes(nodes: Sequence[Any], available: set[str],
                      path: str | os.PathLike = "<graph>") -> list[GraphNode]:
    """The nodes in topological order (among the nodes ready at a step, the earliest in the file first), with
    unique names. A node that waits for a value no node produces, or a cycle, raises an HparrError."""
    produced_by: dict[str, int] = {}
    for i, node in enumerate(nodes):
        for out in node.output:
            if out:
                produced_by[out] = i
    waiting = [0] * len(nodes)
    users: dict[int, list[int]] = {}
    for i, node in enumerate(nodes):
        deps = {produced_by[v] for v in node.input if v and v not in available and v in produced_by}
        deps.discard(i)
        missing = [v for v in node.input if v and v not in available and v not in produced_by]
        if missing:
            raise HparrError(f"malformed ONNX graph in {path}: node {node.name or node.op_type} reads {missing[0]!r}, "
                             "which no node, input or initializer provides")
        waiting[i] = len(deps)
        for d in deps:
            users.setdefault(d, []).append(i)
    ready = [i for i, w in enumerate(waiting) if w == 0]
    heapq.heapify(ready)
    order: list[int] = []
    while ready:
        i = heapq.heappop(ready)
        order.append(i)
        for u in users.get(i, ()):
            waiting[u] -= 1
            if waiting[u] == 0:
                heapq.heappush(ready, u)
    if len(order) != len(nodes):
        raise HparrError(f"malformed ONNX graph in {path}: its nodes form a cycle")
    seen: dict[str, int] = {}
    out = []
    for position, i in enumerate(order):
        node = nodes[i]
        name = node.name or f"{node.op_type}_{position}"
        count = seen.get(name, 0)
        seen[name] = count + 1
        out.append(GraphNode(name if count == 0 else f"{name}_{count}", node.op_type, node.domain,
                             tuple(node.input), tuple(node.output), node))
    return out


def _attribute(node: GraphNode, name: str, default: Any = None) -> Any:
    for attr in node.proto.attribute:
        if attr.name == name:
            from onnx import helper  # optional extra (hparr[onnx])

            return helper.get_attribute_value(attr)
    return default


def graph_layers(model: OnnxModel, with_linear: bool = False, include_1x1: bool = False):
    """(layers, skipped) of an ONNX graph in topological order: every Conv node whose weight is a constant of
    3 to 5 dimensions (1x1 ones with `include_1x1`), and with `with_linear` every Gemm, and every MatMul by a
    2-d constant; `skipped`: the convolutions (and linear layers) left out, and why."""
    layers: list[GraphLayer] = []
    skipped: list[Skipped] = []
    for node in model.nodes:
        if node.domain not in ("", "ai.onnx"):
            continue
        if node.op_type in _OTHER_CONV_OPS:
            skipped.append(Skipped(node.name, "conv", _OTHER_CONV_OPS[node.op_type]))
            continue
        if node.op_type in CONV_OPS:
            weight = node.inputs[1] if len(node.inputs) > 1 else ""
            if model.tensor_proto(weight) is None:
                skipped.append(Skipped(node.name, "conv", "its weight is computed in the graph, not a constant"))
                continue
            shape = model.shape(weight)
            if not 3 <= len(shape) <= 5:
                skipped.append(Skipped(node.name, "conv", f"weight of shape {shape}"))
                continue
            if is_1x1(shape[2:]) and not include_1x1:
                skipped.append(Skipped(node.name, "conv", ONE_BY_ONE))
                continue
            layers.append(GraphLayer(node, weight, "conv", shape, int(_attribute(node, "group", 1))))
        elif node.op_type in LINEAR_OPS and len(node.inputs) > 1:
            weight = node.inputs[1]
            if model.tensor_proto(weight) is None or len(model.shape(weight)) != 2:
                continue  # a product of two computed values (attention) or of higher rank: no layer
            if not with_linear:
                skipped.append(Skipped(node.name, "linear", LINEAR_SKIPPED))
                continue
            stored = model.shape(weight)
            transposed = node.op_type == "MatMul" or not _attribute(node, "transB", 0)
            layers.append(GraphLayer(node, weight, "linear", stored[::-1] if transposed else stored,
                                     transposed=transposed))
    return layers, skipped


def layer_weights(model: OnnxModel, layers: Sequence[GraphLayer]) -> LazyState:
    """The analyzed weights of `layers`, lazily, keyed by their constant's name, laid out (out, in...): a
    MatMul's or an untransposed Gemm's (in, out) matrix is presented transposed (a view: nothing is copied)."""
    by_key = {layer.weight: layer for layer in layers}

    def get(key):
        t = model.tensor(key)
        return t.T if by_key[key].transposed else t

    return LazyState(list(by_key), get, lambda key: by_key[key].shape, str(model.path))


def check_no_conv(model: OnnxModel, layers: Sequence[GraphLayer], with_linear: bool) -> None:
    """An HparrError naming what the graph holds, when it has no layer to analyze."""
    if layers:
        return
    ops: dict[str, int] = {}
    for node in model.nodes:
        ops[node.op_type] = ops.get(node.op_type, 0) + 1
    common = ", ".join(f"{op} x{n}" for op, n in sorted(ops.items(), key=lambda kv: -kv[1])[:5])
    raise HparrError(f"{model.path} is an ONNX model without a convolution whose weight is a constant "
                     f"({len(model.nodes)} nodes: {common})" + ("" if with_linear else "; try --with-linear"))


# --- running the graph: a torch module ------------------------------------------------------------

@dataclass
class TorchGraph:
    """An ONNX graph converted to a torch module (a torch.fx GraphModule of onnx2torch), and the name of the
    module that computes each node ({ONNX node name: module name}; onnx2torch names a module after its node,
    with "." replaced)."""

    module: torch.nn.Module
    modules: dict[str, str]

    def renamed(self, names: Sequence[str]) -> list[str]:
        """Module names turned back into the ONNX node names (a name of no node is kept)."""
        back = {m: n for n, m in self.modules.items()}
        return [back.get(n, n) for n in names]


def to_torch(model: OnnxModel) -> TorchGraph:
    """The graph as a torch module, with onnx2torch, and every tensor read (external data included). An
    operator onnx2torch cannot convert is refused in one line naming it and its node."""
    try:
        import onnx2torch  # optional extra (hparr[onnx])
        from onnx2torch.node_converters import get_converter
    except ImportError:
        raise HparrError(f"running {model.path} on data needs onnx2torch, of the onnx extra ({EXTRA})") from None
    onnx = require_onnx(model.path)
    opsets = {o.domain or "": int(o.version) for o in model.proto.opset_import}
    for node in model.nodes:
        domain = node.domain or ""
        try:
            get_converter(domain=domain, operation_type=node.op_type, version=opsets.get(domain, model.opset))
        except NotImplementedError:
            raise HparrError(f"cannot run {model.path} in torch: onnx2torch has no converter for the operator "
                             f"{node.op_type} (opset {opsets.get(domain, model.opset)}) of node {node.name}") from None
    proto = onnx.ModelProto()
    proto.CopyFrom(model.proto)
    onnx.external_data_helper.load_external_data_for_model(proto, str(model.path.parent))
    del proto.graph.node[:]
    proto.graph.node.extend(n.proto for n in model.nodes)  # topological order, which onnx2torch assumes
    try:
        module = onnx2torch.convert(proto, attach_onnx_mapping=True)
    except Exception as exc:  # noqa: BLE001 - a converter refuses an attribute or shape its own way
        raise HparrError(f"cannot run {model.path} in torch: onnx2torch: {first_line(exc)}") from None
    by_output = {out: node.name for node in model.nodes for out in node.outputs if out}
    modules: dict[str, str] = {}
    for name, sub in module.named_modules():
        mapping = getattr(sub, "onnx_mapping", None)
        outputs = getattr(mapping, "outputs", None) or ()
        node = next((by_output[o] for o in outputs if o in by_output), None)
        if node is not None:
            modules.setdefault(node, name)
    return TorchGraph(module.eval(), modules)


def graph_input_shape(model: OnnxModel) -> tuple[int | None, ...] | None:
    """The static shape of the graph's first data input (None for a dimension without a value), or None."""
    if not model.inputs:
        return None
    for value in model.proto.graph.input:
        if value.name == model.inputs[0]:
            dims = value.type.tensor_type.shape.dim
            return tuple(int(d.dim_value) if d.HasField("dim_value") else None for d in dims)
    return None


def describe(model: OnnxModel) -> dict[str, Any]:
    """What a result records of an ONNX file besides its tensors: producer, opset, IR version, node count."""
    p = model.proto
    return {"producer": f"{p.producer_name} {p.producer_version}".strip() or None, "opset": model.opset,
            "ir_version": int(p.ir_version), "nodes": len(model.nodes)}
