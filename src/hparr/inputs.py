"""What feeds each analyzed layer (docs/projections.md, "The input of every layer").

`input_kind`: the operation whose output is the layer's input, read from the model's graph without data (the
torch.fx graph of a torch model, or an ONNX file's graph), looking through the operations that keep the sign of
their input (shape-only operations, dropout, padding, pooling, positive scalings). The kinds are defined once, in
`KINDS`. `input_nonneg`: whether the values of that kind are non-negative (for the image: whether its pixels are
not normalized, where a result records it; for a sum or a concatenation of branches: whether every branch is).
`input_neg_share`: with data, the measured share of negative values in the layer's input, over one forward pass
(`hparr.probe.negative_shares`).

The mechanism behind the paper's claim (docs/method.md) predicts that a trained layer is biased where its input
is non-negative, and much less where its input has both signs: these columns let a result be read that way.
"""
from __future__ import annotations

import math
import numbers
from dataclasses import dataclass
from typing import Any, Iterable, Mapping, Sequence

import torch
import torch.fx as fx
import torch.nn as nn

from .residual import LeafTracer


@dataclass(frozen=True)
class Kind:
    """One kind of layer input: its name, whether its values are non-negative (None: it depends on what it is
    made of, see `nonneg_of`), what it is, and what maps to it: torch.nn classes (their names; subclasses too),
    torch functions and tensor methods (their names), and ONNX op types."""

    name: str
    nonneg: bool | None
    text: str
    modules: tuple[str, ...] = ()
    functions: tuple[str, ...] = ()
    onnx: tuple[str, ...] = ()


KINDS: tuple[Kind, ...] = (
    Kind("image", None, "the network's input: non-negative when its pixels are not normalized (unknown where the "
         "result does not record it)"),
    Kind("relu", True, "ReLU", ("ReLU",), ("relu", "relu_"), ("Relu",)),
    Kind("relu6", True, "ReLU6, or a clip/clamp/Hardtanh whose lower bound is >= 0",
         ("ReLU6", "Hardtanh"), ("relu6", "hardtanh", "hardtanh_", "clamp", "clamp_", "clip", "clip_", "clamp_min",
                                 "clamp_min_"), ("Clip",)),
    Kind("prelu", False, "PReLU or LeakyReLU (or RReLU)", ("PReLU", "LeakyReLU", "RReLU"),
         ("prelu", "leaky_relu", "leaky_relu_", "rrelu"), ("PRelu", "LeakyRelu")),
    Kind("elu", False, "ELU, SELU or CELU", ("ELU", "SELU", "CELU"), ("elu", "elu_", "selu", "selu_", "celu"),
         ("Elu", "Selu", "Celu")),
    Kind("silu", False, "SiLU (swish): x * sigmoid(x), as a module or as that product", ("SiLU",),
         ("silu", "silu_")),
    Kind("gelu", False, "GELU, exact or its tanh approximation, as a module or as its formula", ("GELU",), ("gelu",),
         ("Gelu",)),
    Kind("mish", False, "Mish: x * tanh(softplus(x))", ("Mish",), ("mish",), ("Mish",)),
    Kind("hardswish", False, "hardswish: x * relu6(x + 3) / 6", ("Hardswish",), ("hardswish",), ("HardSwish",)),
    Kind("sigmoid", True, "sigmoid or hard sigmoid", ("Sigmoid", "Hardsigmoid"), ("sigmoid", "sigmoid_",
                                                                                  "hardsigmoid"),
         ("Sigmoid", "HardSigmoid")),
    Kind("tanh", False, "tanh", ("Tanh",), ("tanh", "tanh_"), ("Tanh",)),
    Kind("batchnorm", False, "BatchNorm without an activation after it",
         ("BatchNorm1d", "BatchNorm2d", "BatchNorm3d", "SyncBatchNorm"), ("batch_norm",), ("BatchNormalization",)),
    Kind("norm", False, "another normalization without an activation after it: GroupNorm, LayerNorm, InstanceNorm",
         ("GroupNorm", "LayerNorm", "InstanceNorm1d", "InstanceNorm2d", "InstanceNorm3d"),
         ("group_norm", "layer_norm", "instance_norm"),
         ("GroupNormalization", "LayerNormalization", "InstanceNormalization", "LpNormalization")),
    Kind("conv", False, "the output of another conv or linear layer, no activation between (a BatchNorm folded "
         "into that layer, as ONNX exports do, included)",
         ("Conv1d", "Conv2d", "Conv3d", "ConvTranspose1d", "ConvTranspose2d", "ConvTranspose3d", "Linear"),
         ("conv1d", "conv2d", "conv3d", "linear"), ("Conv", "ConvTranspose", "Gemm", "QLinearConv", "ConvInteger")),
    Kind("sum", None, "a sum of branches (a residual addition with no activation after it): non-negative when every "
         "branch is", (), ("add", "add_", "iadd", "__add__", "__iadd__"), ("Add", "Sum")),
    Kind("mixed", None, "a concatenation of branches of different kinds: non-negative when every branch is", (),
         ("cat", "concat", "concatenate", "stack"), ("Concat",)),
    Kind("unknown", None, "any other operation (arithmetic, a bias shift, attention...), a model torch.fx cannot "
         "trace, or a checkpoint read without its graph"),
)
BY_NAME: dict[str, Kind] = {k.name: k for k in KINDS}
UNKNOWN = "unknown"

# operations that keep the sign of their (first) input: the walk goes on through them. Pooling of non-negative
# values is non-negative, of values of both signs has both signs (a max-pool after a ReLU is still "relu").
THROUGH_MODULES = ("Flatten", "Unflatten", "Dropout", "Dropout1d", "Dropout2d", "Dropout3d", "Identity", "ZeroPad1d",
                   "ZeroPad2d", "ZeroPad3d", "ReflectionPad1d", "ReflectionPad2d", "ReflectionPad3d",
                   "ReplicationPad1d", "ReplicationPad2d", "ReplicationPad3d", "CircularPad1d", "CircularPad2d",
                   "CircularPad3d", "ChannelShuffle", "PixelShuffle", "PixelUnshuffle", "Upsample",
                   "UpsamplingNearest2d", "UpsamplingBilinear2d", "MaxPool1d", "MaxPool2d", "MaxPool3d", "AvgPool1d",
                   "AvgPool2d", "AvgPool3d", "AdaptiveAvgPool1d", "AdaptiveAvgPool2d", "AdaptiveAvgPool3d",
                   "AdaptiveMaxPool1d", "AdaptiveMaxPool2d", "AdaptiveMaxPool3d", "LPPool1d", "LPPool2d",
                   "FractionalMaxPool2d", "LocalResponseNorm")
THROUGH_FUNCTIONS = ("flatten", "reshape", "view", "view_as", "permute", "transpose", "t", "contiguous", "squeeze",
                     "unsqueeze", "dropout", "dropout1d", "dropout2d", "dropout3d", "pad", "getitem", "narrow",
                     "chunk", "split", "to", "float", "half", "type", "clone", "detach", "channel_shuffle",
                     "pixel_shuffle", "pixel_unshuffle", "expand", "expand_as", "repeat", "flip", "roll", "max_pool1d",
                     "max_pool2d", "max_pool3d", "max_pool1d_with_indices", "max_pool2d_with_indices", "avg_pool1d",
                     "avg_pool2d", "avg_pool3d", "adaptive_avg_pool1d", "adaptive_avg_pool2d", "adaptive_avg_pool3d",
                     "adaptive_max_pool1d", "adaptive_max_pool2d", "adaptive_max_pool3d", "lp_pool1d", "lp_pool2d",
                     "interpolate", "upsample", "mean", "amax", "local_response_norm")
THROUGH_ONNX = ("Reshape", "Flatten", "Squeeze", "Unsqueeze", "Transpose", "Dropout", "Identity", "Pad", "Cast",
                "Slice", "Split", "Gather", "Expand", "Tile", "DepthToSpace", "SpaceToDepth", "MaxPool",
                "AveragePool", "GlobalAveragePool", "GlobalMaxPool", "LpPool", "GlobalLpPool", "LRN", "Resize",
                "Upsample", "ReduceMean", "ReduceMax")
_MUL = ("mul", "mul_", "__mul__", "imul", "Mul")
_DIV = ("truediv", "div", "div_", "__truediv__", "Div")
_WALK = 6  # how many operations back from a product the walk looks for the gate of an activation (x * gate(x))
# the element-wise operations such a gate is made of (the `raw` names of `Op`)
_GATE_OPS = frozenset({"sigmoid", "hardsigmoid", "tanh", "erf", "softplus", "relu6", "hardtanh", "clip", "clamp",
                       "add", "sub", "mul", "div", "truediv", "pow", "sqrt", "neg", "rsub", "radd"})


@dataclass(frozen=True)
class Op:
    """A node of the graph as the walk sees it: `token` (a kind name, "input", "const", "through", "mul", "div"
    or "other"), `raw` (the operation's own name, lowercased: it tells the gate of a product), its data inputs
    (values computed from the network's input) and, for a product or a quotient by a constant, whether that
    constant is > 0 everywhere."""

    token: str
    raw: str
    inputs: tuple = ()
    positive: bool = False


@dataclass(frozen=True)
class Feed:
    """What feeds a layer: its input kind and the base kinds it is made of (itself, or the branches of a sum or
    of a concatenation)."""

    kind: str
    parts: frozenset

    def nonneg(self, image_nonneg: bool | None = None) -> bool | None:
        return nonneg_of(self.parts, image_nonneg)


UNKNOWN_FEED = Feed(UNKNOWN, frozenset({UNKNOWN}))


def nonneg_of(parts: Iterable[str], image_nonneg: bool | None = None) -> bool | None:
    """Whether values made of the kinds `parts` are non-negative: False when one part has both signs, None when
    one part is unknown (the image: `image_nonneg`), else True."""
    values = [image_nonneg if p == "image" else BY_NAME[p].nonneg for p in parts]
    if any(v is False for v in values):
        return False
    if not values or any(v is None for v in values):
        return None
    return True


class Graph:
    """The data-flow graph of a network, {value: Op}, and the walk that tells what feeds a value (`feed`)."""

    def __init__(self, ops: Mapping[Any, Op]):
        self.ops = dict(ops)
        self._memo: dict[Any, Feed] = {}

    def feed(self, key: Any) -> Feed:
        """The kind of value `key`, walking back through sign-keeping operations."""
        stack = [key]
        while stack:  # resolve the inputs first, without recursion (deep residual chains)
            top = stack[-1]
            if top in self._memo:
                stack.pop()
                continue
            pending = [i for i in self._needs(top) if i not in self._memo]
            if pending:
                stack.extend(pending)
                continue
            self._memo[top] = self._resolve(top)
            stack.pop()
        return self._memo[key]

    def _needs(self, key) -> list:
        op = self.ops.get(key)
        if op is None:
            return []
        if op.token == "through":
            return list(op.inputs[:1])
        if op.token in ("sum", "mixed"):
            return list(op.inputs)
        if op.token in ("mul", "div") and op.positive:
            return list(op.inputs[:1])
        if op.token == "mul":
            return list(op.inputs)
        return []

    def _resolve(self, key) -> Feed:
        op = self.ops.get(key)
        if op is None:
            return UNKNOWN_FEED
        token = op.token
        if token == "input":
            return Feed("image", frozenset({"image"}))
        if token in ("through", "mul", "div") and (token == "through" or op.positive):
            return self._memo[op.inputs[0]] if op.inputs else UNKNOWN_FEED
        if token == "mul" and len(op.inputs) == 2:
            return self._product(*op.inputs)
        if token in ("sum", "mixed"):
            if not op.inputs:
                return UNKNOWN_FEED
            feeds = [self._memo[i] for i in op.inputs]
            parts = frozenset().union(*(f.parts for f in feeds))
            if token == "sum":
                return Feed("sum", parts)
            kinds = {f.kind for f in feeds}
            return Feed(kinds.pop() if len(kinds) == 1 else "mixed", parts)
        if token in BY_NAME:
            return Feed(token, frozenset({token}))
        return UNKNOWN_FEED

    def _product(self, a, b) -> Feed:
        """x * gate(x), where gate(x) is element-wise: SiLU (sigmoid), GELU (erf, or tanh), Mish (tanh and
        softplus), hardswish (hard sigmoid, or a clip). x * s where s is a sigmoid of another branch (a
        squeeze-excitation gate, in [0, 1]) keeps the sign of x: its kind. Any other product is unknown."""
        for x, gate in ((a, b), (b, a)):
            raws = self._gate(gate, x, 0)
            if not raws:
                continue
            if "softplus" in raws and "tanh" in raws:
                kind = "mish"
            elif "erf" in raws or "tanh" in raws:
                kind = "gelu"
            elif raws & {"hardsigmoid", "relu6", "clip", "hardtanh", "clamp"}:
                kind = "hardswish"
            elif "sigmoid" in raws:
                kind = "silu"
            else:
                continue
            return Feed(kind, frozenset({kind}))
        for x, gate in ((a, b), (b, a)):
            if self._memo[gate].kind == "sigmoid" and self._memo[x].kind != "sigmoid":
                return self._memo[x]
        return UNKNOWN_FEED

    def _gate(self, key, x, depth: int) -> set[str] | None:
        """The operations on the paths from `key` back to `x` (None when `x` is not reached in `_WALK` steps)."""
        if key == x:
            return set()
        op = self.ops.get(key)
        if depth >= _WALK or op is None or op.raw not in _GATE_OPS:
            return None
        found = None
        for i in op.inputs:
            sub = self._gate(i, x, depth + 1)
            if sub is not None:
                found = (found or set()) | sub
        return None if found is None else found | {op.raw}


# --- torch models: the torch.fx graph ----------------------------------------------------------------

def _nn_classes(names: Sequence[str]) -> tuple[type, ...]:
    return tuple(c for c in (getattr(nn, n, None) for n in names) if isinstance(c, type))


_MODULE_KINDS = [(k.name, _nn_classes(k.modules)) for k in KINDS if k.modules]
_THROUGH_CLASSES = _nn_classes(THROUGH_MODULES)
_FUNCTION_KINDS = {f: k.name for k in KINDS for f in k.functions}
_ONNX_KINDS = {op: k.name for k in KINDS for op in k.onnx}


def _lower_bound_kind(bound: Any) -> str:
    """A clip with this lower bound: "relu6" when it is a number >= 0, else unknown."""
    return "relu6" if isinstance(bound, numbers.Real) and not isinstance(bound, bool) and bound >= 0 else "other"


def module_token(module: nn.Module) -> str:
    """The token of a call to `module` (see `Op`)."""
    if isinstance(module, nn.modules.batchnorm._NormBase) and isinstance(getattr(module, "act", None), nn.Module):
        # a BatchNorm with its activation inside (timm's BatchNormAct2d): the activation's kind
        return "batchnorm" if isinstance(module.act, nn.Identity) else module_token(module.act)
    if isinstance(module, nn.Hardtanh):  # ReLU6 included: relu6 when its lower bound is >= 0
        return _lower_bound_kind(module.min_val)
    for name, classes in _MODULE_KINDS:
        if classes and isinstance(module, classes):
            return name
    if isinstance(module, _THROUGH_CLASSES):
        return "through"
    return "other"


def _function_name(node) -> str:
    target = node.target
    return target if isinstance(target, str) else getattr(target, "__name__", str(target))


def _const_value(gm, arg) -> Any:
    """The value of a constant argument of an fx node: a number, or the tensor of a get_attr node."""
    if isinstance(arg, fx.Node):
        if arg.op != "get_attr":
            return None
        value = gm
        for part in str(arg.target).split("."):
            value = getattr(value, part, None)
        return value
    return arg


def _positive(value: Any) -> bool:
    if isinstance(value, torch.Tensor):
        return bool(value.numel()) and bool((value > 0).all())
    return isinstance(value, numbers.Real) and not isinstance(value, bool) and value > 0 and math.isfinite(value)


def fx_graph(model: nn.Module) -> tuple[Graph, dict[str, Any]]:
    """The graph of a torch model (traced with torch.fx, convolution, Linear and BatchNorm modules as leaves) and
    {module name: the value its first call reads}. Raises whatever tracing raises."""
    gm = LeafTracer.trace(model)
    ops: dict[Any, Op] = {}
    const: set = set()
    reads: dict[str, Any] = {}
    for node in gm.graph.nodes:
        flat: list = []
        fx.node.map_arg((node.args, node.kwargs), flat.append)
        data = tuple(a for a in flat if a not in const)
        if node.op == "placeholder":
            ops[node] = Op("input", "input")
            continue
        if node.op == "get_attr" or (node.op in ("call_function", "call_method") and not data):
            const.add(node)
            ops[node] = Op("const", "const")
            continue
        if node.op == "call_module":
            module = gm.get_submodule(str(node.target))
            reads.setdefault(str(node.target), node.args[0] if node.args else None)
            token = module_token(module)
            ops[node] = Op(token, type(module).__name__.lower(), data)
        elif node.op in ("call_function", "call_method"):
            name = _function_name(node)
            ops[node] = _function_op(gm, node, name, data)
    return Graph(ops), reads


def _function_op(gm, node, name: str, data: tuple) -> Op:
    raw = name.lower().strip("_")
    if name in _MUL or name in _DIV:
        others = [a for a in node.args if a not in data]
        if len(data) == 1 and len(others) == 1 and (name in _MUL or node.args[0] is data[0]):
            return Op("mul" if name in _MUL else "div", raw, data, _positive(_const_value(gm, others[0])))
        return Op("mul" if name in _MUL and len(data) == 2 else "other", raw, data)
    if name in ("clamp", "clamp_", "clip", "clip_"):
        bound = node.kwargs.get("min", node.args[1] if len(node.args) > 1 else None)
        return Op(_lower_bound_kind(bound), raw, data)
    if name in ("clamp_min", "clamp_min_"):
        return Op(_lower_bound_kind(node.args[1] if len(node.args) > 1 else None), raw, data)
    if name in ("hardtanh", "hardtanh_"):
        bound = node.kwargs.get("min_val", node.args[1] if len(node.args) > 1 else -1.0)
        return Op(_lower_bound_kind(bound), raw, data)
    kind = _FUNCTION_KINDS.get(name)
    if kind in ("sum", "mixed"):
        if kind == "sum" and len(data) < 2:
            return Op("other", raw, data)  # a bias shift: x + constant
        return Op(kind, raw, data)
    if kind is not None:
        return Op(kind, raw, data)
    if name in THROUGH_FUNCTIONS:
        return Op("through", raw, data[:1])
    return Op("other", raw, data)


def fx_feeds(model: nn.Module, names: Sequence[str]) -> dict[str, Feed]:
    """{layer name: what feeds it} for the modules `names` of a torch model; every layer is unknown when torch.fx
    cannot trace the model."""
    try:
        graph, reads = fx_graph(model)
    except Exception:  # noqa: BLE001 - an untraceable model: its layers' inputs are unknown, as documented
        return {name: UNKNOWN_FEED for name in names}
    return {name: graph.feed(reads[name]) if reads.get(name) is not None else UNKNOWN_FEED for name in names}


# --- ONNX graphs ----------------------------------------------------------------------------------------

def onnx_graph(model) -> Graph:
    """The graph of an ONNX model (`checkpoints.onnx_file.OnnxModel`), keyed by value name."""
    def is_const(name: str) -> bool:
        return model.tensor_proto(name) is not None

    def const_positive(name: str) -> bool:
        try:
            value = model.array(name)
            return bool(value.size) and bool((value > 0).all())
        except Exception:  # noqa: BLE001 - an unreadable constant counts as not known to be positive
            return False

    ops: dict[str, Op] = {name: Op("input", "input") for name in model.inputs}
    for node in model.nodes:
        data = tuple(v for v in node.inputs if v and not is_const(v))
        op_type, raw = node.op_type, node.op_type.lower()
        if node.domain not in ("", "ai.onnx"):
            op = Op("other", raw, data)
        elif op_type in _MUL or op_type in _DIV:
            consts = [v for v in node.inputs if v and is_const(v)]
            if len(data) == 1 and len(consts) == 1 and (op_type == "Mul" or node.inputs[0] == data[0]):
                op = Op(raw, raw, data, const_positive(consts[0]))
            else:
                op = Op("mul" if op_type == "Mul" and len(data) == 2 else "other", raw, data)
        elif op_type == "Clip":
            bound = None
            if len(node.inputs) > 1 and node.inputs[1] and is_const(node.inputs[1]):
                bound = float(model.array(node.inputs[1]).reshape(-1)[0])
            elif len(node.inputs) == 1:
                bound = next((float(a.f) for a in node.proto.attribute if a.name == "min"), None)
            op = Op(_lower_bound_kind(bound), raw, data)
        elif op_type in THROUGH_ONNX:
            op = Op("through", raw, tuple(v for v in node.inputs[:1] if v and not is_const(v)))
        elif op_type == "MatMul":
            op = Op("conv" if len(data) == 1 else "other", raw, data)
        elif op_type in _ONNX_KINDS:
            kind = _ONNX_KINDS[op_type]
            op = Op("other" if kind == "sum" and len(data) < 2 else kind, raw, data)
        else:
            op = Op("other", raw, data)
        for out in node.outputs:
            if out:
                ops[out] = op
    return Graph(ops)


def onnx_feeds(model, layers) -> dict[str, Feed]:
    """{layer name: what feeds it} for the `onnx_file.GraphLayer`s of an ONNX model."""
    graph = onnx_graph(model)
    return {layer.node.name: graph.feed(layer.node.inputs[0]) for layer in layers}

