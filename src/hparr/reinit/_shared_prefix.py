"""The shared-prefix sweep: the model's torch.fx graph cut so that the trained network runs once per batch
and only the part downstream of each unit runs per alternative; its counts equal the plain loop's."""
from __future__ import annotations

import functools
import itertools
import logging
from dataclasses import dataclass
from typing import Any, Mapping, Sequence

import torch
import torch.fx as fx
import torch.nn as nn
import torch.nn.functional as F

from ..errors import HparrError, first_line
from ..residual import LeafTracer
from ._processes import run_in_processes
from ._sweep import Batches, SweepCounts, device_of, plain_batch, run_sweep
from ._units import LAYER_TENSORS, Unit, make_units, prepare

log = logging.getLogger("hparr.reinit")


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
                 with_bn: bool = False, processes: int = 1) -> SweepCounts:
    """Accuracy of the model with each layer in turn given each alternative's weight and bias.

    `alternatives` maps a label (an epoch, "rand") to a state_dict (or a callable returning one); `batches`
    yields (images, labels) ready for the model and is iterated once. Layers default to every Conv2d
    (plus Linear with `with_linear`). `groups` ({unit name: [layers]}, see `reinit_groups`) re-initializes
    several layers at once (a residual block, a stage); `with_bn` also re-initializes the BatchNorm after
    each layer (its parameters and running statistics), which otherwise stays as trained. `method`:
    "shared" (trained prefix computed once per batch; an error if the model's graph does not allow it),
    "plain" (swap, evaluate, restore), or "auto" (shared when possible). The counts, losses and agreements
    equal those of `plain_reinit_sweep`; the model is left unchanged. `processes` > 1 (CPU, Linux) splits the
    batches across that many forked worker processes of one torch thread each (`processes.run_in_processes`);
    the results are the same to the last count.
    """
    if method not in ("auto", "shared", "plain"):
        raise ValueError(f"method must be auto, shared or plain, not {method!r}")
    units, params = prepare(model, alternatives, layers, with_linear, groups, with_bn)
    runner = run_sweep if processes <= 1 else functools.partial(run_in_processes, processes=processes)
    if method == "plain":
        return runner(model, units, params, batches, topk, plain_batch, "plain")
    notes: list[str] = []

    def fall_back(exc: NotShareable):
        if method == "shared":
            raise HparrError(f"cannot share the trained prefix: {exc}") from None
        log.warning("evaluating with the plain loop: %s", exc)
        notes.append(f"plain loop: {exc}")
        return plain_batch

    try:
        plan = SharedPrefixPlan(model, units)
    except NotShareable as exc:
        return runner(model, units, params, batches, topk, fall_back(exc), "plain", notes)

    def decide(x: torch.Tensor):
        """The per-batch function: shared when the graph reproduces the model on `x`, else the plain loop."""
        try:
            plan.verify(model, x[:2])
            return _shared_batch(plan)
        except NotShareable as exc:
            return fall_back(exc)

    if processes > 1:  # decided here, once, before the workers start
        batches = iter(batches)
        first = next(batches, None)
        per_batch = plain_batch
        if first is not None:
            was_training = model.training
            model.eval()
            try:
                per_batch = decide(first[0].to(device_of(model)))
            finally:
                model.train(was_training)
            batches = itertools.chain([first], batches)
    else:
        chosen = []  # the per-batch function, decided on the first batch

        def per_batch(model, units, params, x, y, k, tally):
            if not chosen:
                chosen.append(decide(x))
            return chosen[0](model, units, params, x, y, k, tally)

    result = runner(model, units, params, batches, topk, per_batch, "shared-prefix", notes)
    if notes:
        result.method = "plain"
    return result
