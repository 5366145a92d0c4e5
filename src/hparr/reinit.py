"""Layer re-initialization test of Zhang, Bengio & Singer ("Are All Layers Created Equal?").

For one layer at a time, the trained network's layer parameters (weight and bias) are replaced by
those of an earlier snapshot (re-initialization) or of a fresh initialization (re-randomization,
`rand`), and the test accuracy is measured. BatchNorm parameters and statistics stay as trained.

Only one layer changes at a time, so everything the network computes before that layer is the
trained network's own. `reinit_sweep` therefore runs the trained network once per batch, keeps the
values that the part of the network downstream of each re-initialized layer reads, and re-runs only
that part for each alternative parameter set. The graph comes from `torch.fx`. Every operation runs
on the same batch, with the same shapes, as in the whole network, so the predictions equal those of
the swap-evaluate-restore loop (`plain_reinit_sweep`) exactly. Models that cannot be traced, or whose
in-place operations would change a kept value, are evaluated by that loop.

A unit may also be several layers at once (`reinit_groups`: a residual block or a stage, as Zhang et al.
did for ResNets), with the BatchNorm after each of them (`with_bn`: its parameters and running
statistics). Besides top-1/top-k, every alternative records its test loss and the agreement of its top-1
predictions with the trained model's; these too equal the plain loop's exactly.
"""
from __future__ import annotations

import dataclasses
import logging
import math
import os
import sys
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence

import numpy as np
import torch
import torch.fx as fx
import torch.nn as nn
import torch.nn.functional as F

from . import checkpoints, distributed, files, layout
from .data import Data, DataOptions
from .errors import HparrError, UsageError, first_line
from .metrics import topk_hits
from .provenance import derive_seeds, versions
from .results import EVAL_SPLITS, RAND, REINIT_FORMAT, check_eval_split, read_json, relative_drops

log = logging.getLogger("hparr.reinit")

BATCHNORM_NOTE = ("BatchNorm parameters and running statistics are left as trained; only the weight "
                  "and bias of the re-initialized layer change")

Batches = Iterable[tuple[torch.Tensor, torch.Tensor]]


# --- layers and their alternative parameters -----------------------------------------------------

def reinit_layers(model: nn.Module, with_linear: bool = False, input_shape: Sequence[int] | None = None) -> list[str]:
    """Names of the layers to re-initialize, in forward order: every Conv2d (1x1 included), plus Linear.

    The original code reset every conv of `features`; Zhang et al. also reset the Linear layers.
    """
    return [info.name for info in _discover(model, with_linear, input_shape)[0]]


def _discover(model: nn.Module, with_linear: bool, input_shape: Sequence[int] | None):
    from .layers import discover_layers

    infos, skipped = discover_layers(model, input_shape, with_linear=with_linear, include_1x1=True)
    if not infos:
        raise HparrError(f"{type(model).__name__} has no {'conv or linear' if with_linear else 'conv'} layer "
                         "to re-initialize" + ("" if with_linear else " (try --with-linear)"))
    return infos, skipped


# --- results -------------------------------------------------------------------------------------

@dataclass
class ReinitResult:
    """Correct-prediction counts of a sweep: `correct[a, l] = (top-1, top-k)` for alternative a, layer l."""

    layers: list[str]
    labels: list[str]
    correct: np.ndarray
    trained_correct: tuple[int, int]
    total: int
    topk: int
    method: str
    notes: list[str] = field(default_factory=list)
    agree: np.ndarray | None = None  # [a, l]: test images whose top-1 class is the trained model's
    loss: np.ndarray | None = None  # [a, l]: mean test cross-entropy
    trained_loss: float | None = None
    groups: dict[str, list[str]] | None = None  # {unit: its modules} (a layer alone, a block, a stage)

    def accuracy(self, k: int = 1) -> dict[str, list[float]]:
        """Test accuracy in percent, {label: [one value per layer]} (k=1 or the sweep's top-k)."""
        col = 0 if k == 1 else 1
        return {label: [100.0 * int(c) / self.total for c in self.correct[i, :, col]]
                for i, label in enumerate(self.labels)}

    def trained_accuracy(self, k: int = 1) -> float:
        return 100.0 * self.trained_correct[0 if k == 1 else 1] / self.total

    def agreement(self) -> dict[str, list[float]]:
        """{label: [share of test images whose top-1 class is the trained model's, one per layer]}."""
        return {label: [int(c) / self.total for c in self.agree[i]] for i, label in enumerate(self.labels)}

    def test_loss(self) -> dict[str, list[float]]:
        """{label: [mean test cross-entropy, one per layer]}."""
        return {label: [float(v) for v in self.loss[i]] for i, label in enumerate(self.labels)}

    def relative_drop(self):
        """(acc_trained - acc_reinit) / acc_trained of top-1, a DataFrame: rows labels, columns layers."""
        import pandas as pd

        return pd.DataFrame.from_dict(relative_drops(self.trained_accuracy(), self.accuracy()), orient="index",
                                      columns=list(self.layers))


def _loss_sum(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """The summed cross-entropy of a batch, in float64."""
    return F.cross_entropy(logits.to(torch.float64), labels, reduction="sum")


class _Tally:
    """Per alternative and unit: top-1, top-k and agreement counts and the summed loss; and the trained model's.

    Agreement (the top-1 class equals the trained model's) is counted when the batch's trained logits are
    known, at `close_batch`: the shared-prefix sweep gets them only after every alternative of the batch.
    """

    def __init__(self, alternatives: int, units: int, device: torch.device):
        self.counts = torch.zeros(alternatives, units, 3, dtype=torch.int64, device=device)
        self.loss = torch.zeros(alternatives, units, dtype=torch.float64, device=device)
        self.trained = torch.zeros(2, dtype=torch.int64, device=device)
        self.trained_loss = torch.zeros((), dtype=torch.float64, device=device)
        self._top1: list[tuple[int, int, torch.Tensor]] = []

    def add(self, ai: int, ui: int, logits: torch.Tensor, y: torch.Tensor, k: int) -> None:
        hits, top1 = topk_hits(logits, y, k)
        self.counts[ai, ui, :2] += hits
        self.loss[ai, ui] += _loss_sum(logits, y)
        self._top1.append((ai, ui, top1))

    def close_batch(self, logits: torch.Tensor, y: torch.Tensor, k: int) -> None:
        hits, top1 = topk_hits(logits, y, k)
        self.trained += hits
        self.trained_loss += _loss_sum(logits, y)
        for ai, ui, other in self._top1:
            self.counts[ai, ui, 2] += (other == top1).sum()
        self._top1.clear()


# --- what one alternative replaces ---------------------------------------------------------------

LAYER_TENSORS = ("weight", "bias")
BATCHNORM_TENSORS = ("weight", "bias", "running_mean", "running_var")
GRANULARITIES = ("layer", "block", "stage")


@dataclass(frozen=True)
class Unit:
    """What one alternative re-initializes at once: `members` = ((module name, tensor names), ...),
    e.g. a conv's weight and bias, and with BatchNorm its weight, bias and running statistics."""

    name: str
    members: tuple[tuple[str, tuple[str, ...]], ...]

    @property
    def modules(self) -> list[str]:
        return [m for m, _ in self.members]


def _tensor_names(module: nn.Module, names: Sequence[str]) -> tuple[str, ...]:
    return tuple(n for n in names if isinstance(getattr(module, n, None), torch.Tensor))


def make_units(model: nn.Module, groups: Mapping[str, Sequence[str]],
               batchnorms: Mapping[str, str] | None = None) -> list[Unit]:
    """One Unit per group {unit name: [layer names]}: the layers' weight and bias, plus (with `batchnorms`,
    {layer: its BatchNorm}) the parameters and running statistics of each layer's BatchNorm."""
    units = []
    for name, layers in groups.items():
        members = []
        for layer in layers:
            members.append((layer, _tensor_names(model.get_submodule(layer), LAYER_TENSORS)))
            bn = (batchnorms or {}).get(layer)
            if bn is not None:
                members.append((bn, _tensor_names(model.get_submodule(bn), BATCHNORM_TENSORS)))
        units.append(Unit(str(name), tuple(members)))
    return units


def batchnorms_after(model: nn.Module, layers: Sequence[str],
                     input_shape: Sequence[int] | None = None) -> dict[str, str]:
    """{layer: the BatchNorm module applied directly to its output} (found with one dummy forward pass)."""
    from .layers import batched_shape, dummy_forward

    names = {id(m): n for n, m in model.named_modules()}
    wanted = set(layers)
    outputs: dict[int, str] = {}  # id of a layer's output tensor -> layer
    found: dict[str, str] = {}
    keep: list[torch.Tensor] = []  # the tensors whose ids are recorded stay alive during the pass

    def layer_hook(module, args, output):
        if isinstance(output, torch.Tensor):
            outputs[id(output)] = names[id(module)]
            keep.append(output)

    def bn_hook(module, args, output):
        if args and isinstance(args[0], torch.Tensor):
            layer = outputs.get(id(args[0]))
            if layer is not None and layer not in found:
                found[layer] = names[id(module)]

    hooks = [(module, layer_hook) for name, module in model.named_modules() if name in wanted]
    hooks += [(module, bn_hook) for name, module in model.named_modules()
              if name not in wanted and isinstance(module, nn.modules.batchnorm._BatchNorm)]
    dummy_forward(model, batched_shape(model, input_shape), hooks)
    return found


def reinit_groups(model: nn.Module, granularity: str = "layer", with_linear: bool = False,
                  input_shape: Sequence[int] | None = None) -> dict[str, list[str]]:
    """{unit name: [layer names]} of the layers re-initialized together, in forward order.

    layer: every conv (and Linear) alone; block: the layers of one residual block (`layer2.1`; in a
    network without residual blocks, and for a layer outside them, the layer alone); stage: the layers of
    one stage (`stage2`), by `hparr.layers` stage labels.
    """
    if granularity not in GRANULARITIES:
        raise UsageError(f"--granularity must be one of {', '.join(GRANULARITIES)}, got {granularity!r}")
    return groups_of(_discover(model, with_linear, input_shape)[0], granularity)


def unit_tensors(model: nn.Module, state: Mapping[str, torch.Tensor], units: Sequence[Unit],
                 source: str = "snapshot") -> dict[str, tuple[torch.Tensor, ...]]:
    """{unit name: its tensors from `state`, in member order}, laid out like the model's own tensors."""
    out = {}
    for unit in units:
        tensors = []
        for module_name, names in unit.members:
            module = model.get_submodule(module_name)
            for tname in names:
                own = getattr(module, tname)
                key = f"{module_name}.{tname}"
                if key not in state:
                    raise HparrError(f"{source} has no {'parameter' if tname in LAYER_TENSORS else 'buffer'} {key}")
                value = state[key]
                if tuple(value.shape) != tuple(own.shape):
                    raise HparrError(f"{source}: {key} has shape {tuple(value.shape)}, the model {tuple(own.shape)}")
                # Same dtype, device and strides as the model's own tensor, so the layer computes the same
                # way as after a copy into the model.
                tensors.append(torch.empty_like(own, requires_grad=False).copy_(value.detach()))
        out[unit.name] = tuple(tensors)
    return out


# --- the reference loop --------------------------------------------------------------------------

def _prepare(model: nn.Module, alternatives: Mapping[str, Any], layers, with_linear, groups=None,
             with_bn: bool = False, input_shape=None):
    """(units, {label: {unit: tensors}}). An alternative is a state_dict or a callable returning one."""
    if groups is None:
        layers = list(layers) if layers is not None else reinit_layers(model, with_linear, input_shape)
        groups = {layer: [layer] for layer in layers}
    batchnorms = batchnorms_after(model, [m for g in groups.values() for m in g], input_shape) if with_bn else None
    units = make_units(model, groups, batchnorms)
    params = {}
    for label, state in alternatives.items():
        state = state() if callable(state) else state
        params[str(label)] = unit_tensors(model, state, units, source=f"alternative {label!r}")
        del state
    if not params:
        raise HparrError("no alternative parameter sets to evaluate")
    return units, params


def _device_of(model: nn.Module) -> torch.device:
    p = next(model.parameters(), None)
    return p.device if p is not None else torch.device("cpu")


def plain_reinit_sweep(model: nn.Module, alternatives: Mapping[str, Mapping[str, torch.Tensor]],
                       batches: Batches, layers: Sequence[str] | None = None, with_linear: bool = False,
                       topk: int = 5, groups: Mapping[str, Sequence[str]] | None = None,
                       with_bn: bool = False) -> ReinitResult:
    """The reference: for each layer and alternative, swap the parameters in, evaluate the whole network, restore.

    `alternatives` maps a label to a state_dict (only the layers' weight/bias are read). `batches`
    yields (images, labels) ready for the model; it is iterated once (every pass of a batch happens
    while it is in memory). The model's parameters are restored bit for bit, also on error. `groups`
    ({unit name: [layers]}, see `reinit_groups`) swaps several layers at once; `with_bn` also swaps the
    BatchNorm after each of them (parameters and running statistics).
    """
    units, params = _prepare(model, alternatives, layers, with_linear, groups, with_bn)
    return _run_sweep(model, units, params, batches, topk, _plain_batch, "plain")


def _plain_batch(model, units, params, x, y, k, tally):
    """One batch of the plain loop; returns the trained network's logits."""
    trained = model(x)
    for ui, unit in enumerate(units):
        own = [getattr(model.get_submodule(m), t) for m, names in unit.members for t in names]
        saved = [t.detach().clone() for t in own]
        try:
            for ai, label in enumerate(params):
                for mine, new in zip(own, params[label][unit.name]):
                    mine.detach().copy_(new)
                tally.add(ai, ui, model(x), y, k)
        finally:
            for mine, old in zip(own, saved):
                mine.detach().copy_(old)
    return trained


def _run_sweep(model, units, params, batches, topk, per_batch, method, notes=()):
    device = _device_of(model)
    was_training = model.training
    model.eval()
    tally = None
    total = 0
    k = topk
    try:
        with torch.inference_mode():
            for x, y in batches:
                x = x.to(device, non_blocking=True)
                y = y.to(device, non_blocking=True)
                if tally is None:
                    tally = _Tally(len(params), len(units), device)
                logits = per_batch(model, units, params, x, y, k, tally)
                tally.close_batch(logits, y, k)
                k = min(k, logits.shape[1])
                total += int(y.shape[0])
    finally:
        model.train(was_training)
    if not total:
        raise HparrError("the test set is empty")
    c = tally.trained.cpu().tolist()
    counts = tally.counts.cpu().numpy()
    return ReinitResult(layers=[u.name for u in units], labels=list(params), correct=counts[:, :, :2].copy(),
                        trained_correct=(int(c[0]), int(c[1])), total=total, topk=k, method=method,
                        notes=list(notes), agree=counts[:, :, 2].copy(),
                        loss=tally.loss.cpu().numpy() / total, trained_loss=float(tally.trained_loss) / total,
                        groups={u.name: u.modules for u in units})


# --- the shared-prefix sweep ---------------------------------------------------------------------

class NotShareable(Exception):
    """The model's graph does not allow sharing the trained prefix (the plain loop is used)."""


class _Swapped(nn.Module):
    """Calls a module with some of its tensors (weight and bias, BatchNorm statistics) given as arguments."""

    def __init__(self, module: nn.Module, names: Sequence[str] = LAYER_TENSORS):
        super().__init__()
        self.module = module
        self.names = tuple(names)

    def forward(self, x, *tensors):
        m = self.module
        if self.names in (("weight", "bias"), ("weight",)):
            bias = tensors[1] if len(tensors) > 1 else None
            if type(m) is nn.Linear:
                return F.linear(x, tensors[0], bias)
            if type(m) in (nn.Conv1d, nn.Conv2d, nn.Conv3d):
                return m._conv_forward(x, tensors[0], bias)
        # any other module (a conv subclass with its own forward, BatchNorm): its own forward, with the tensors
        return torch.func.functional_call(m, dict(zip(self.names, tensors)), (x,))


@dataclass
class _Suffix:
    layer: str  # the unit's name
    inputs: list[fx.Node]  # the values it reads from the trained pass
    body: list[fx.Node]  # the nodes downstream of the unit, in order
    calls: set[fx.Node]  # the unit's own module calls among them
    module: fx.GraphModule | None = None  # module(*inputs, *tensors) -> [logits]


@dataclass
class _Stage:
    inputs: list[fx.Node]
    outputs: list[fx.Node]
    module: fx.GraphModule
    suffixes: list[_Suffix]


def _as_unit(model: nn.Module, unit: Unit | str) -> Unit:
    return unit if isinstance(unit, Unit) else make_units(model, {unit: [unit]})[0]


class SharedPrefixPlan:
    """The model's graph cut into stages of the trained pass and, per unit, the part downstream of it.

    Stage i runs the nodes between two cuts; after it, every unit whose inputs from the trained pass
    are all known is evaluated for each alternative by its suffix module. Between stages only the
    values still read later are kept, so memory stays that of one forward pass plus those inputs.
    A unit is a layer name or a `Unit` (several modules swapped at once).
    """

    def __init__(self, model: nn.Module, layers: Sequence[Unit | str]):
        from .layers import LeafTracer

        units = [_as_unit(model, u) for u in layers]
        try:
            traced = LeafTracer.trace(model)
        except Exception as exc:  # noqa: BLE001 - any tracing failure means: use the plain loop
            raise NotShareable(f"torch.fx cannot trace {type(model).__name__}: {first_line(exc)}") from None
        self._traced = traced
        nodes = list(traced.graph.nodes)
        pos = {n: i for i, n in enumerate(nodes)}
        inputs = [n for n in nodes if n.op == "placeholder"]
        if len(inputs) != 1 or nodes[-1].op != "output" or not isinstance(nodes[-1].args[0], fx.Node):
            raise NotShareable("the model must take one input and return one tensor")
        self.input, self.output = inputs[0], nodes[-1].args[0]

        boundary: dict[str, int] = {}
        suffixes: dict[str, _Suffix] = {}
        for unit in units:
            calls = []
            for module_name in unit.modules:
                mine = [n for n in nodes if n.op == "call_module" and n.target == module_name]
                if not mine or any(len(n.args) != 1 or n.kwargs for n in mine):
                    raise NotShareable(f"layer {module_name} is not called as a module on one input")
                if any(n.op == "get_attr" and n.target.startswith(module_name + ".") for n in nodes):
                    raise NotShareable(f"the parameters of {module_name} are used outside the layer")
                calls += mine
            down: set[fx.Node] = set()
            stack = list(calls)
            while stack:
                n = stack.pop()
                if n not in down and n.op != "output":
                    down.add(n)
                    stack.extend(n.users)
            if self.output not in down:
                raise NotShareable(f"layer {unit.name} does not reach the output")
            frontier = sorted({a for n in down for a in n.all_input_nodes if a not in down}, key=pos.get)
            boundary[unit.name] = max(pos[a] for a in frontier) + 1
            suffixes[unit.name] = _Suffix(unit.name, frontier, sorted(down, key=pos.get), set(calls))

        self._kept = set().union(*(s.inputs for s in suffixes.values()))
        for unit in units:
            suffix = suffixes[unit.name]
            suffix.module = self._module(suffix.body, suffix.inputs, [self.output], swap=unit)

        cuts = sorted(set(boundary.values()))
        last = len(nodes) - 1  # the output node
        self.stages = []
        for start, end in zip([1] + cuts, cuts + [last]):
            live_in = self._live(nodes, pos, start, boundary, suffixes)
            live_out = [self.output] if end == last else self._live(nodes, pos, end, boundary, suffixes)
            here = [suffixes[u.name] for u in units if boundary[u.name] == end and end != last]
            self.stages.append(_Stage(live_in, live_out, self._module(nodes[start:end], live_in, live_out), here))

    @staticmethod
    def _live(nodes, pos, at, boundary, suffixes) -> list[fx.Node]:
        """Values computed before position `at` that are read at or after it, by the graph or a suffix."""
        live = {n for n in nodes[:at] if any(pos[u] >= at for u in n.users)}
        for layer, b in boundary.items():
            if b >= at:
                live.update(n for n in suffixes[layer].inputs if pos[n] < at)
        return sorted(live, key=pos.get)

    def _lookup(self, target: str) -> Any:
        owner, _, attr = target.rpartition(".")
        return getattr(self._traced.get_submodule(owner) if owner else self._traced, attr)

    def _module(self, body: list[fx.Node], inputs: list[fx.Node], outputs: list[fx.Node],
                swap: Unit | None = None) -> fx.GraphModule:
        """A module computing `outputs` from `inputs` by the nodes `body`; with `swap`, the calls of the
        unit's modules take their tensors as extra arguments (in member order, after the inputs)."""
        g = fx.Graph()
        env = {n: g.placeholder(f"in_{i}") for i, n in enumerate(inputs)}
        root: dict[str, Any] = {}
        swapped: dict[str, tuple[str, list[fx.Node]]] = {}
        if swap is not None:
            for i, (module_name, names) in enumerate(swap.members):
                target = f"_hparr_swapped_{i}"
                root[target] = _Swapped(self._lookup(module_name), names)
                swapped[module_name] = (target, [g.placeholder(f"t{i}_{j}") for j in range(len(names))])
        for n in body:
            if n.op == "call_module" and n.target in swapped:
                target, tensors = swapped[n.target]
                env[n] = g.call_module(target, (env[n.args[0]], *tensors))
            else:
                env[n] = g.node_copy(n, lambda a: env[a])
                if n.op in ("call_module", "get_attr"):
                    root.setdefault(n.target, self._lookup(n.target))
        g.output([env[n] for n in outputs])
        return fx.GraphModule(root, g)

    def verify(self, model: nn.Module, x: torch.Tensor) -> None:
        """Run the graph once on `x`; raise NotShareable unless its output equals the model's own, bit for
        bit, and every in-place change hits a value read by nothing else, never one kept for a suffix."""
        seen: dict[fx.Node, tuple[torch.Tensor, int]] = {}

        class Recorder(fx.Interpreter):
            def run_node(self, n):
                value = super().run_node(n)
                if isinstance(value, torch.Tensor):
                    seen[n] = (value, value._version)
                return value

        # Inference tensors have no version counter: run this check in plain no-grad mode.
        with torch.inference_mode(False), torch.no_grad():
            out = Recorder(self._traced).run(x.clone())
            for n, (value, version) in seen.items():
                if value._version != version:
                    users = list(n.users)
                    benign = (n not in self._kept and len(users) == 1 and users[0] in seen
                              and seen[users[0]][0] is value)
                    if not benign:
                        raise NotShareable(f"an operation changes the value of {n.name} in place")
            if not (isinstance(out, torch.Tensor) and torch.equal(out, model(x.clone()))):
                raise NotShareable("the traced graph does not reproduce the model's output")


def _shared_batch(plan: SharedPrefixPlan):
    def run(model, units, params, x, y, k, tally):
        index = {unit.name: i for i, unit in enumerate(units)}
        values = {plan.input: x}
        for stage in plan.stages:
            outs = stage.module(*[values[n] for n in stage.inputs])
            values = dict(zip(stage.outputs, outs))
            for suffix in stage.suffixes:
                args = [values[n] for n in suffix.inputs]
                ui = index[suffix.layer]
                for ai, label in enumerate(params):
                    (logits,) = suffix.module(*args, *params[label][suffix.layer])
                    tally.add(ai, ui, logits, y, k)
        return values[plan.output]

    return run


def reinit_sweep(model: nn.Module, alternatives: Mapping[str, Mapping[str, torch.Tensor]], batches: Batches,
                 layers: Sequence[str] | None = None, with_linear: bool = False, topk: int = 5,
                 method: str = "auto", groups: Mapping[str, Sequence[str]] | None = None,
                 with_bn: bool = False) -> ReinitResult:
    """Accuracy of the model with each layer in turn given each alternative's weight and bias.

    `alternatives` maps a label (an epoch, "rand") to a state_dict (or a callable returning one); `batches`
    yields (images, labels) ready for the model and is iterated once. Layers default to every Conv2d
    (plus Linear with `with_linear`). `groups` ({unit name: [layers]}, see `reinit_groups`) re-initializes
    several layers at once (a residual block, a stage); `with_bn` also re-initializes the BatchNorm after
    each layer (its parameters and running statistics), which otherwise stays as trained. `method`:
    "shared" (trained prefix computed once per batch; an error if the model's graph does not allow it),
    "plain" (swap, evaluate, restore), or "auto" (shared when possible). The counts, losses and agreements
    equal those of `plain_reinit_sweep`; the model is left unchanged.
    """
    if method not in ("auto", "shared", "plain"):
        raise ValueError(f"method must be auto, shared or plain, not {method!r}")
    units, params = _prepare(model, alternatives, layers, with_linear, groups, with_bn)
    if method == "plain":
        return _run_sweep(model, units, params, batches, topk, _plain_batch, "plain")
    notes: list[str] = []

    def fall_back(exc: NotShareable):
        if method == "shared":
            raise HparrError(f"cannot share the trained prefix: {exc}") from None
        log.warning("evaluating with the plain loop: %s", exc)
        notes.append(f"plain loop: {exc}")
        return _plain_batch

    try:
        plan = SharedPrefixPlan(model, units)
    except NotShareable as exc:
        return _run_sweep(model, units, params, batches, topk, fall_back(exc), "plain", notes)
    chosen = []  # the per-batch function, decided on the first batch

    def per_batch(model, units, params, x, y, k, tally):
        if not chosen:
            try:
                plan.verify(model, x[:2])
                chosen.append(_shared_batch(plan))
            except NotShareable as exc:
                chosen.append(fall_back(exc))
        return chosen[0](model, units, params, x, y, k, tally)

    result = _run_sweep(model, units, params, batches, topk, per_batch, "shared-prefix", notes)
    if notes:
        result.method = "plain"
    return result


# --- from snapshot files to a results document ----------------------------------------------------

def read_inits_list(spec: str | os.PathLike) -> list[Path]:
    """Snapshot paths from --inits-from: a directory, a snapshot file or glob, or a text file of paths.

    In a text file: one path per line, blank lines ignored; a relative path is looked up from the
    current directory, then beside the list; a missing file is logged as a warning and skipped.
    """
    spec = str(spec)
    path = Path(spec)
    if not spec.strip():
        raise UsageError("--inits-from is empty: give a text file of snapshot paths or a directory of snapshots")
    if path.is_dir() or path.suffix in checkpoints.CHECKPOINT_SUFFIXES or (path.is_file() and zipfile.is_zipfile(path)):
        return checkpoints.find_snapshots(spec)
    if not path.is_file():
        if any(c in spec for c in "*?["):
            return checkpoints.find_snapshots(spec)
        raise UsageError(f"--inits-from {spec}: no such file or directory")
    try:
        lines = path.read_text().splitlines()
    except (OSError, UnicodeDecodeError) as exc:
        raise UsageError(f"--inits-from {spec}: cannot read it as a list of paths ({exc})") from None
    unique: dict[Path, Path] = {}  # resolved -> as listed; a file listed twice is used once
    for line in map(str.strip, lines):
        if not line:
            continue
        name = Path(line).expanduser()
        candidates = [name] if name.is_absolute() else [name, path.parent / name]
        hit = next((c for c in candidates if c.is_file() or (c / checkpoints.SHARD_INDEX).is_file()), None)
        if hit is None:
            log.warning("warning: file not found: %s; skipping it", line)
            continue
        unique.setdefault(hit.resolve(), hit)
    if not unique:
        raise UsageError(f"--inits-from {spec} lists no existing snapshot file")
    return list(unique.values())


_SNAPSHOT_STATES = ("model_state_dict", "state_dict", "model", "optimizer_state_dict", "scheduler_state_dict", "rng")


@dataclass
class ReinitSettings:
    """Every option of a re-initialization run (the original reinit_layers.py flags and the new ones).

    `inits_from`: a text file of snapshot paths, a directory or glob of snapshots (as --inits-from), or a
    list of snapshot paths.
    """

    load_from: str
    data: DataOptions
    arch: str | None = None
    inits_from: str | os.PathLike | Sequence[str | os.PathLike] | None = None
    rand: bool = False
    with_linear: bool = False
    seed: int | None = None
    batch_size: int = 128
    cuda: bool = False
    workers: int = 1
    method: str = "auto"
    progress: bool = False
    state_dict_prefix: str | None = None
    granularity: str = "layer"  # "layer", "block" (residual block) or "stage", re-initialized at once
    with_bn: bool = False  # also re-initialize the BatchNorm after each layer
    rand_trials: int = 1  # independent re-randomizations (more than 1 implies rand)
    max_test_images: int = 0  # evaluate on the first N test images only (0: all)
    num_classes: int | None = None  # the model's shape, where the snapshot does not record it (None: the data's)
    in_channels: int | None = None
    input_size: int | None = None
    eval_split: str = "test"  # "test" (the paper's), or "train": the images and labels the model was trained on


# what each split's accuracies are measured on, as result documents, reports and heatmaps say it
EVAL_SPLIT_TEXT = {"test": "test images",
                   "train": "training images with the labels the model was trained on (no augmentation)"}


def eval_split_of(document: Mapping[str, Any]) -> str:
    """The split a results document was evaluated on (documents without the field are of the test set)."""
    split = document.get("eval_split")
    return split if split in EVAL_SPLITS else "test"


def _snapshot_training_data(options: DataOptions, meta: Mapping[str, Any], source: str) -> DataOptions:
    """The data options a snapshot of `hparr train` was trained with (its class subset, validation split,
    --train-size subset, corruption and their resolved seeds), read from where --data-path points."""
    recorded = meta.get("data") if isinstance(meta.get("data"), dict) else {}
    fields = recorded.get("options") if isinstance(recorded.get("options"), dict) else None
    if fields is None:
        raise HparrError(f"{source} does not record the data it was trained on: --eval-split train needs a "
                         "snapshot written by `hparr train`")
    known = {f.name for f in dataclasses.fields(DataOptions)}
    out = DataOptions(**{k: v for k, v in fields.items() if k in known and k not in ("data_path", "download")},
                      data_path=options.data_path, download=options.download)
    if out.dataset != options.dataset:
        raise HparrError(f"{source} was trained on {out.dataset}, not --dataset {options.dataset}")
    return out


def _snapshot_data_options(options: DataOptions, meta: Mapping[str, Any], source: str) -> DataOptions:
    """The data options of the flags, completed from (and checked against) the data a snapshot of
    `hparr train` records: its class subset and whether its inputs were normalized."""
    recorded = meta.get("data") if isinstance(meta.get("data"), dict) else {}
    updates: dict[str, Any] = {}
    subset = recorded.get("class_subset")
    if isinstance(subset, dict) and subset.get("k"):
        k, seed = int(subset["k"]), subset.get("seed")
        if options.subsample_classes not in (0, k):
            raise HparrError(f"{source} was trained on {k} classes, "
                             f"not --subsample-classes {options.subsample_classes}")
        if seed is not None and options.class_sample_seed not in (None, seed):
            raise HparrError(f"{source} chose its {k} classes with seed {seed}, not --class-sample-seed "
                             f"{options.class_sample_seed}")
        updates.update(subsample_classes=k, class_sample_seed=seed)
    normalized = (checkpoints.recorded_normalization(meta) or {}).get("normalized")
    if normalized is False and not options.unnormalize:
        updates["unnormalize"] = True
    elif normalized is True and options.unnormalize:
        raise HparrError(f"{source} was trained on normalized inputs; drop --unnormalize")
    return dataclasses.replace(options, **updates) if updates else options


def _snapshot_normalization(data: Data, meta: Mapping[str, Any], source: str) -> Data:
    """Use the normalization constants the snapshot was trained with, when it records them."""
    norm = checkpoints.recorded_normalization(meta)
    if not isinstance(norm, dict) or "mean" not in norm or "std" not in norm:
        return data
    mean, std = tuple(float(v) for v in norm["mean"]), tuple(float(v) for v in norm["std"])
    if len(mean) != data.in_channels or len(std) != data.in_channels:
        raise HparrError(f"{source} records normalization constants for {len(mean)} channels, "
                         f"the data has {data.in_channels}")
    if (mean, std) != (tuple(data.mean), tuple(data.std)):
        log.warning("using the normalization constants recorded in %s: mean %s std %s", source, mean, std)
    return dataclasses.replace(data, mean=mean, std=std)


def _load_alternatives(paths: Sequence[Path], trained: Path, config, reference: Mapping[str, tuple],
                       dataset: str, seed: int | None, prefix: str | None = None,
                       ) -> tuple[dict[str, Mapping[str, torch.Tensor]], dict[str, str]]:
    """{epoch label: state_dict} and {epoch label: file} of the snapshots to re-initialize from, by epoch.

    Each is checked against the trained model (architecture, shapes, dataset and seed it records);
    the trained snapshot itself is skipped; two snapshots of the same epoch are an error.
    """
    states: dict[str, Mapping[str, torch.Tensor]] = {}
    sources: dict[str, str] = {}
    for path in paths:
        if path.resolve() == trained.resolve():
            log.info("skipping %s: it is the trained snapshot itself", path)
            continue
        ckpt = checkpoints.read_checkpoint(path)
        obj = ckpt.obj
        checkpoints.snapshot_config(obj, config, str(path))
        checkpoints.check_metadata(obj, str(path), dataset, seed)
        state = checkpoints.match_prefix(ckpt.state, reference, prefix, source=str(path))
        checkpoints.check_state(reference, checkpoints.shapes_of(state), str(path))
        label = str(checkpoints.snapshot_epoch(obj, path))
        if label in sources:
            raise UsageError(f"{sources[label]} and {path} are both snapshots of epoch {label}")
        states[label], sources[label] = state, str(path.resolve())
    order = sorted(states, key=int)
    return {label: states[label] for label in order}, {label: sources[label] for label in order}


@dataclass
class _Trained:
    """The trained checkpoint as the settings name it: the file read, its metadata, architecture and data
    options, and where its result goes."""

    checkpoint: Any  # checkpoints.Checkpoint
    meta: dict[str, Any]
    arch: str
    data: DataOptions
    relpath: Path  # below a results folder: <dataset>[_<k>]/<arch>[/<seed>]/reinit_<stem>[_<granularity>][_bn].json


def _trained(settings: ReinitSettings) -> _Trained:
    from .models import check_arch

    if not settings.load_from:
        raise UsageError("--load-from is required: the trained snapshot to evaluate")
    path = Path(settings.load_from)
    if not path.exists():
        raise UsageError(f"--load-from {path}: no such file or folder")
    ckpt = checkpoints.read_checkpoint(path)
    obj = ckpt.obj if isinstance(ckpt.obj, dict) else {}
    # keep the metadata only (a bare state_dict has none), not a second copy of the weights
    meta = {k: v for k, v in obj.items() if k not in _SNAPSHOT_STATES and not isinstance(v, torch.Tensor)}
    checkpoints.check_metadata(meta, str(path), settings.data.dataset, settings.seed)
    arch = settings.arch or (meta.get("arch") if isinstance(meta.get("arch"), str) else None)
    if arch is None:
        raise UsageError(f"--arch is required: {path} does not record its architecture")
    check_arch(arch)
    data = _snapshot_data_options(settings.data, meta, str(path))
    if check_eval_split(settings.eval_split) == "train":
        data = _snapshot_training_data(data, meta, str(path))
    relpath = layout.results_directory("", data.dataset, arch, settings.seed, data.subsample_classes) \
        / f"{layout.reinit_stem(path, settings.granularity, settings.with_bn, settings.eval_split)}.json"
    return _Trained(ckpt, meta, arch, data, relpath)


def _init_paths(settings: ReinitSettings) -> list[Path]:
    if settings.inits_from is None:
        return []
    if isinstance(settings.inits_from, (str, os.PathLike)):
        return read_inits_list(settings.inits_from)
    return [Path(p) for p in settings.inits_from]


def reinit_options(settings: ReinitSettings, data: DataOptions, init_paths: Sequence[Path]) -> dict[str, Any]:
    """The options that change the numbers of a re-initialization result (recorded in it as `options`; a
    rerun with others does not reuse it). `data`: the data options as completed from the snapshot."""
    return {"inits_from": [str(Path(p).resolve()) for p in init_paths],
            "rand": bool(settings.rand or settings.rand_trials > 1), "rand_trials": settings.rand_trials,
            "seed": settings.seed, "with_linear": settings.with_linear, "granularity": settings.granularity,
            "with_bn": settings.with_bn, "max_test_images": settings.max_test_images or None,
            "state_dict_prefix": settings.state_dict_prefix, "dataset": data.dataset,
            "subsample_classes": data.subsample_classes, "class_sample_seed": data.class_sample_seed,
            "unnormalize": data.unnormalize}


_OPTION_FLAGS = {"inits_from": "--inits-from", "rand": "--rand", "rand_trials": "--rand-trials", "seed": "--seed",
                 "with_linear": "--with-linear", "granularity": "--granularity", "with_bn": "--with-bn",
                 "max_test_images": "--max-test-images", "state_dict_prefix": "--state-dict-prefix",
                 "dataset": "--dataset", "subsample_classes": "--subsample-classes",
                 "class_sample_seed": "--class-sample-seed", "unnormalize": "--unnormalize"}


def _shown_option(key: str, value: Any) -> str:
    if key == "inits_from" and isinstance(value, list):
        return f"{len(value)} file(s)" if len(value) != 1 else Path(value[0]).name
    if isinstance(value, bool):
        return "on" if value else "off"
    return "unset" if value is None else str(value)


def stale_reason(settings: ReinitSettings, path: str | os.PathLike) -> str | None:
    """Whether the result at `path` can be reused for `settings`: None when it was computed from the same
    options and the same checkpoints (`checkpoints.identity_change`), else why it must be computed again (its
    checkpoints changed, or it cannot be read). A result computed with other options raises a UsageError:
    replacing it takes --overwrite."""
    path = Path(path)
    doc = read_json(path)
    if not isinstance(doc, dict) or doc.get("format") != REINIT_FORMAT:
        return f"{path.name} is not a readable result"
    trained = _trained(settings)
    current = reinit_options(settings, trained.data, _init_paths(settings))
    recorded = doc.get("options")
    if not isinstance(recorded, dict):
        differ = ["it records no options (an earlier hparr)"]
    else:
        differ = [f"{_OPTION_FLAGS[k]} {_shown_option(k, recorded.get(k))} there, {_shown_option(k, v)} here"
                  for k, v in current.items() if recorded.get(k) != v]
    if differ:
        raise UsageError(f"{path} was computed with other options ({'; '.join(differ)}); pass --overwrite to "
                         "replace it, or choose another --results folder")
    inputs = doc.get("inputs") if isinstance(doc.get("inputs"), dict) else {}
    prefix = settings.state_dict_prefix
    checks = [("the trained snapshot", inputs.get("trained"), trained.checkpoint.path)]
    inits = inputs.get("inits") if isinstance(inputs.get("inits"), dict) else {}
    checks += [(f"--inits-from epoch {label}", ident, Path(ident.get("path", "")))
               for label, ident in inits.items() if isinstance(ident, dict)]
    for what, ident, source in checks:
        keys = ident.get("keys") if isinstance(ident, dict) else None
        why = checkpoints.identity_change(
            ident, source, lambda src=source, k=keys: checkpoints.load_state(src, prefix=prefix, reference=k))
        if why is not None:
            return f"{what}: {why}"
    return None


def result_path(settings: ReinitSettings, root: str | os.PathLike) -> Path:
    """The file below the results folder `root` where the result of `settings` goes (and is found by a rerun)."""
    return Path(root) / _trained(settings).relpath


@dataclass
class ReinitRun:
    """What `run_reinit` produced: the results document, the sweep, and where below a results folder
    the document goes (`relpath`, see `result_path`)."""

    document: dict[str, Any]
    result: ReinitResult
    relpath: Path

    @property
    def stem(self) -> str:
        return self.relpath.stem


def run_reinit(settings: ReinitSettings) -> ReinitRun:
    """Load the trained snapshot, the alternatives and the test set; sweep; return the results document."""
    from .data import dataset_info, load_data, make_loader
    from .models import build_model

    if settings.batch_size < 1:
        raise UsageError(f"--batch-size must be >= 1, got {settings.batch_size}")
    if settings.granularity not in GRANULARITIES:
        raise UsageError(f"--granularity must be one of {', '.join(GRANULARITIES)}, got {settings.granularity!r}")
    if settings.rand_trials < 1:
        raise UsageError(f"--rand-trials must be >= 1, got {settings.rand_trials}")
    if settings.max_test_images < 0:
        raise UsageError(f"--max-test-images must be >= 0 (0 = all), got {settings.max_test_images}")
    if settings.rand_trials > 1 and not settings.rand:
        settings = dataclasses.replace(settings, rand=True)
    if settings.inits_from is None and not settings.rand:
        raise UsageError("nothing to evaluate: pass --inits-from (snapshots to re-initialize from) and/or --rand")
    settings.data.validate()
    init_paths = _init_paths(settings)

    trained = _trained(settings)
    load_from, meta, arch, seed = trained.checkpoint.path, trained.meta, trained.arch, settings.seed
    state = trained.checkpoint.state
    epoch = checkpoints.snapshot_epoch_or_none(trained.checkpoint.obj, load_from)
    own_seeds = meta.get("seeds") if isinstance(meta.get("seeds"), dict) else {}
    data_options = trained.data
    data = load_data(data_options)
    data = _snapshot_normalization(data, meta, str(load_from))
    info = dataset_info(data_options.dataset)
    default = checkpoints.ModelConfig(arch, settings.num_classes or data.num_classes,
                                      settings.in_channels or data.in_channels, settings.input_size or data.image_size)
    config = checkpoints.snapshot_config(meta, default, str(load_from))
    if config.num_classes != data.num_classes or config.in_channels != data.in_channels:
        raise HparrError(f"{load_from} is a model of {config.num_classes} classes and {config.in_channels} input "
                         f"channels; the test set has {data.num_classes} and {data.in_channels}")
    device = distributed.select_device(settings.cuda)
    model = build_model(arch, config.num_classes, config.in_channels, config.input_size, seed=0)
    state = checkpoints.match_prefix(state, model, settings.state_dict_prefix, source=str(load_from))
    checkpoints.load_weights(model, dict(state), source=str(load_from))
    inputs: dict[str, Any] = {"trained": checkpoints.checkpoint_identity(load_from, state, list(state))}
    trained.checkpoint = None
    del state
    model.to(device)
    reference = {k: tuple(v.shape) for k, v in model.state_dict().items()}

    size = config.input_size
    infos, skipped = _discover(model, settings.with_linear, (2, config.in_channels, size, size))

    alternatives, sources = _load_alternatives(init_paths, load_from, config, reference, data_options.dataset, seed,
                                               settings.state_dict_prefix)
    inputs["inits"] = {label: checkpoints.checkpoint_identity(sources[label], state, list(reference))
                       for label, state in alternatives.items()}
    # the re-randomization seed derives from --seed, else from the snapshot's own seed, else from 0
    base_seed = seed if seed is not None else own_seeds.get("seed") if isinstance(own_seeds.get("seed"), int) else 0
    rand_seed = None
    trial_seeds = rand_trial_seeds(int(base_seed), settings.rand_trials) if settings.rand else []
    if settings.rand:
        rand_seed = trial_seeds[0]
        for label, trial_seed in zip(rand_labels(settings.rand_trials), trial_seeds):
            # built when the sweep reads it, so that K trials never hold K models at once
            alternatives[label] = (lambda s=trial_seed: build_model(arch, config.num_classes, config.in_channels,
                                                                    size, seed=s).state_dict())
            sources[label] = f"build_model({arch!r}, seed={trial_seed})"
    if not alternatives:
        raise UsageError(f"--inits-from {settings.inits_from} holds no snapshot other than the trained one")

    loader = make_loader(data, settings.eval_split, settings.batch_size, train=False, device=device,
                         workers=settings.workers,
                         channels_last=device.type == "cpu" and any(i.kind == "conv" for i in infos))
    batches: Iterable = first_images(loader, settings.max_test_images) if settings.max_test_images else loader
    if settings.progress:
        from tqdm import tqdm

        batches = tqdm(batches, desc="reinit", unit="batch", file=sys.stderr)
    groups = groups_of(infos, settings.granularity)
    log.info("re-initializing %d %s(s) of %s from %s", len(groups), settings.granularity, arch,
             ", ".join(alternatives))
    result = reinit_sweep(model, alternatives, batches, method=settings.method, groups=groups,
                          with_bn=settings.with_bn)
    del alternatives

    by_name = {i.name: i for i in infos}
    firsts = [by_name[members[0]] for members in groups.values()]
    seeds = {"seed": seed, "rand": rand_seed, "rand_derived_from": int(base_seed) if settings.rand else None,
             "class_sample_seed": data_options.class_sample_seed, "model": own_seeds or None}
    if settings.rand_trials > 1:
        seeds["rand_trials"] = trial_seeds
    document = reinit_document(
        result, arch=arch, dataset=data_options.dataset, seed=seed, epoch=epoch,
        load_from=str(load_from.resolve()), init_files=sources, layer_kinds=[i.kind for i in firsts],
        layer_stage_block=[(i.stage, i.block) for i in firsts],
        **unit_fields(result, settings.granularity, settings.with_bn),
        skipped=[{"name": s.name, "kind": s.kind, "reason": s.reason} for s in skipped],
        with_linear=settings.with_linear, seeds=seeds, subsample_classes=data_options.subsample_classes,
        class_subset=(data.meta or {}).get("class_subset"),
        normalization={"mean": list(data.mean), "std": list(data.std), "normalized": not data_options.unnormalize,
                       "dataset_default": {"mean": list(info.mean), "std": list(info.std)}},
        batch_size=settings.batch_size, device=str(device), max_test_images=settings.max_test_images or None,
        options=reinit_options(settings, data_options, init_paths), inputs=inputs,
        eval_split=settings.eval_split, evaluated_on=EVAL_SPLIT_TEXT[settings.eval_split],
        **({"train_data": {k: (data.meta or {}).get(k) for k in ("split", "train_subset", "label_noise",
                                                                 "pixel_shuffle", "sizes")}}
           if settings.eval_split == "train" else {}))
    if settings.rand_trials > 1:
        document = aggregate_rand_trials(document, settings.rand_trials, trial_seeds)
    return ReinitRun(document=document, result=result, relpath=trained.relpath)


def save(run: ReinitRun, root: str | os.PathLike, plots: str | os.PathLike | None = None) -> list[Path]:
    """Write the results document to `root`/`run.relpath`; with `plots`, also the heatmap of the relative
    drop, as PNG and PDF: beside the document when `plots` is "" (the bare --plots), else under
    `plots`/<dataset>/<arch>/ (the original code's --plots PATH). Returns the files written."""
    from .report.figures import save_heatmap

    json_path = Path(root) / run.relpath
    files.write_json(json_path, run.document)
    written = [json_path]
    if plots is not None:
        folder = json_path.parent if str(plots) == "" else \
            Path(plots) / str(run.document["dataset"]) / str(run.document["arch"])
        png, pdf = folder / f"{run.stem}.png", folder / f"{run.stem}.pdf"
        save_heatmap(run.document, png, pdf)
        written += [png, pdf]
    return written


# --- block/stage granularity, BatchNorm, loss and agreement, repeated re-randomization -------------

BATCHNORM_REINIT_NOTE = ("BatchNorm parameters and running statistics of the re-initialized layers are "
                         "re-initialized with them (--with-bn)")


def first_images(batches: Batches, n: int):
    """The batches cut after the first `n` images (the test set's own order)."""
    seen = 0
    for x, y in batches:
        if seen >= n:
            break
        take = min(n - seen, int(y.shape[0]))
        yield x[:take], y[:take]
        seen += take


def groups_of(infos, granularity: str) -> dict[str, list[str]]:
    """{unit name: [layer names]} from discovered layers (see `reinit_groups`)."""
    groups: dict[str, list[str]] = {}
    for info in infos:
        key = info.name if granularity == "layer" else (info.unit or info.name) if granularity == "block" \
            else f"stage{info.stage}"
        groups.setdefault(key, []).append(info.name)
    return groups


def unit_fields(result: ReinitResult, granularity: str = "layer", with_bn: bool = False) -> dict[str, Any]:
    """Result-document fields beyond top-1/top-5: the test loss and the prediction agreement with the
    trained model per alternative and unit, the granularity and the groups re-initialized together."""
    out: dict[str, Any] = {"granularity": granularity, "with_bn": with_bn, "groups": dict(result.groups or {})}
    if with_bn:
        out["batchnorm"] = BATCHNORM_REINIT_NOTE
    if result.loss is not None:
        out["trained_loss"] = result.trained_loss
        out["loss_init_from_epoch"] = result.test_loss()
    if result.agree is not None:
        out["agreement_init_from_epoch"] = result.agreement()
    return out


def rand_labels(trials: int) -> list[str]:
    """Alternative labels of the re-randomizations: "rand", or "rand.0" ... "rand.<K-1>"."""
    return [RAND] if trials == 1 else [f"{RAND}.{t}" for t in range(trials)]


def rand_trial_seeds(base_seed: int, trials: int) -> list[int]:
    """Seeds of K re-randomizations derived from one seed; the first is the single draw's seed."""
    names = ["reinit_rand"] + [f"reinit_rand_{t}" for t in range(1, trials)]
    derived = derive_seeds(base_seed, *names)
    return [derived[name] for name in names]


def aggregate_rand_trials(document: Mapping[str, Any], trials: int, seeds: Sequence[int]) -> dict[str, Any]:
    """A results document whose K re-randomizations ("rand.0" ...) become one "rand" row: in every
    per-alternative field ({label: [value per layer]}) the mean over the trials, with their sample
    standard deviation in `rand_std[field]` and every trial's values in `rand_trials[field]`."""
    labels = rand_labels(trials)
    doc = dict(document)
    std: dict[str, list[float | None]] = {}
    per_trial: dict[str, list[list[Any]]] = {}
    for key, value in document.items():
        if not (isinstance(value, Mapping) and all(isinstance(value.get(label), list) for label in labels)):
            continue
        rows = [value[label] for label in labels]
        array = np.array([[np.nan if v is None else float(v) for v in row] for row in rows], dtype=float)
        mean = array.mean(axis=0)
        sd = array.std(axis=0, ddof=1)
        doc[key] = {k: v for k, v in value.items() if k not in labels}
        doc[key][RAND] = [float(m) if np.isfinite(m) else None for m in mean]
        std[key] = [float(v) if np.isfinite(v) else None for v in sd]
        per_trial[key] = [list(row) for row in rows]
    doc["rand_std"] = std
    doc["rand_trials"] = {"k": trials, "seeds": list(seeds), "values": per_trial,
                          "std": "sample standard deviation (ddof=1) over the trials"}
    files_ = doc.get("init_files")
    if isinstance(files_, Mapping):
        doc["init_files"] = {k: v for k, v in files_.items() if k not in labels}
        doc["init_files"][RAND] = [files_[label] for label in labels]
    return doc


def reinit_document(result: ReinitResult, *, arch: str, dataset: str, seed: int | None, epoch: int | None,
                    **fields: Any) -> dict[str, Any]:
    """The original JSON (`init_from_epoch: {epoch: [top-1 per layer]}`, top1_test, top5_test, arch,
    dataset, seed, epoch) plus layer names, top-5, counts, the relative drops and provenance."""
    top1, top5 = result.accuracy(1), result.accuracy(5)
    doc: dict[str, Any] = {"init_from_epoch": top1, "arch": arch, "dataset": dataset,
                           "top1_test": result.trained_accuracy(1), "top5_test": result.trained_accuracy(5)}
    if seed is not None:
        doc["seed"] = str(seed)
    doc["epoch"] = None if epoch is None else str(epoch)
    doc.update({
        "format": REINIT_FORMAT,
        "layers": list(result.layers),
        "top5_init_from_epoch": top5,
        "relative_drop": {label: [v if math.isfinite(v) else None for v in drops]
                          for label, drops in relative_drops(result.trained_accuracy(1), top1).items()},
        "correct_top1": {label: result.correct[i, :, 0].tolist() for i, label in enumerate(result.labels)},
        "correct_top5": {label: result.correct[i, :, 1].tolist() for i, label in enumerate(result.labels)},
        "trained_correct": {"top1": result.trained_correct[0], "top5": result.trained_correct[1]},
        "num_test": result.total, "topk": result.topk,
        "batchnorm": BATCHNORM_NOTE, "method": result.method, "notes": list(result.notes),
        "versions": versions(),
    })
    doc.update(fields)
    return doc


def summary_lines(document: Mapping[str, Any]) -> list[str]:
    """Human-readable lines of a results document: trained accuracy, then one line per alternative."""
    lines = [f"{document['arch']} on {document['dataset']} (epoch {document['epoch']}, {document['num_test']} "
             f"{EVAL_SPLIT_TEXT[eval_split_of(document)]}): top-1 {document['top1_test']:.2f}%, "
             f"top-5 {document['top5_test']:.2f}%",
             f"{document['batchnorm']}.",
             "layers: " + ", ".join(document["layers"])]
    for label, accs in document["init_from_epoch"].items():
        what = "re-randomized" if label == RAND else f"from epoch {label}"
        lines.append(f"{what}: top-1 " + " ".join(f"{a:.2f}" for a in accs))
        for key, name, fmt in (("loss_init_from_epoch", "test loss", ".3f"),
                               ("agreement_init_from_epoch", "agreement", ".3f")):
            values = (document.get(key) or {}).get(label)
            if values is not None:
                lines.append(f"{' ' * len(what)}  {name} " + " ".join("nan" if v is None else format(v, fmt)
                                                                     for v in values))
    if isinstance(document.get("rand_trials"), Mapping):
        lines.append(f"rand: mean of {document['rand_trials']['k']} re-randomizations; top-1 sd "
                     + " ".join("nan" if v is None else f"{v:.2f}"
                                for v in document["rand_std"].get("init_from_epoch", [])))
    return lines
