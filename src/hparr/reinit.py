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

from . import checkpoints, distributed, files
from .data import Data, DataOptions
from .errors import HparrError, UsageError
from .provenance import derive_seeds, versions

log = logging.getLogger("hparr.reinit")

BATCHNORM_NOTE = ("BatchNorm parameters and running statistics are left as trained; only the weight "
                  "and bias of the re-initialized layer change")
RAND = "rand"
RESULTS_FORMAT = "hparr-reinit-1"

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


def layer_parameters(model: nn.Module, state: Mapping[str, torch.Tensor], layers: Sequence[str],
                     source: str = "snapshot") -> dict[str, tuple[torch.Tensor, torch.Tensor | None]]:
    """The (weight, bias) of each layer in `state`, as tensors laid out like the model's own parameters."""
    out = {}
    for layer in layers:
        module = model.get_submodule(layer)
        pair = []
        for pname in ("weight", "bias"):
            own = getattr(module, pname, None)
            if own is None:
                pair.append(None)
                continue
            key = f"{layer}.{pname}"
            if key not in state:
                raise HparrError(f"{source} has no parameter {key}")
            value = state[key]
            if tuple(value.shape) != tuple(own.shape):
                raise HparrError(f"{source}: {key} has shape {tuple(value.shape)}, the model {tuple(own.shape)}")
            # Same dtype, device and strides as the model's parameter, so the layer computes the same
            # way as after a copy into the model.
            pair.append(torch.empty_like(own, requires_grad=False).copy_(value.detach()))
        out[layer] = (pair[0], pair[1])
    return out


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

    def accuracy(self, k: int = 1) -> dict[str, list[float]]:
        """Test accuracy in percent, {label: [one value per layer]} (k=1 or the sweep's top-k)."""
        col = 0 if k == 1 else 1
        return {label: [100.0 * int(c) / self.total for c in self.correct[i, :, col]]
                for i, label in enumerate(self.labels)}

    def trained_accuracy(self, k: int = 1) -> float:
        return 100.0 * self.trained_correct[0 if k == 1 else 1] / self.total

    def relative_drop(self):
        """(acc_trained - acc_reinit) / acc_trained of top-1, a DataFrame: rows labels, columns layers."""
        return relative_drop_frame(self.trained_accuracy(), self.accuracy(), self.layers)


def relative_drops(trained_acc: float, accuracies: Mapping[str, Sequence[float]]) -> dict[str, list[float]]:
    """{label: [(acc_trained - acc) / acc_trained per layer]} (NaN when the trained accuracy is 0)."""
    return {label: [(trained_acc - a) / trained_acc if trained_acc else float("nan") for a in accs]
            for label, accs in accuracies.items()}


def relative_drop_frame(trained_acc: float, accuracies: Mapping[str, Sequence[float]], layers: Sequence[str]):
    """The relative drop table (rows: labels, columns: layers) from a trained accuracy and the
    re-initialized accuracies, e.g. `top1_test` and `init_from_epoch` of a results file."""
    import pandas as pd

    return pd.DataFrame.from_dict(relative_drops(trained_acc, accuracies), orient="index", columns=list(layers))


def _count(logits: torch.Tensor, labels: torch.Tensor, k: int) -> torch.Tensor:
    """(top-1, top-k) correct predictions of a batch, as a tensor on the logits' device."""
    if not isinstance(logits, torch.Tensor) or logits.dim() != 2:
        raise HparrError("the model must return a (batch, classes) tensor of logits")
    hits = logits.topk(min(k, logits.shape[1]), dim=1).indices == labels[:, None]
    return torch.stack((hits[:, 0].sum(), hits.any(dim=1).sum()))


# --- the reference loop --------------------------------------------------------------------------

def _prepare(model: nn.Module, alternatives: Mapping[str, Mapping[str, torch.Tensor]], layers, with_linear):
    layers = list(layers) if layers is not None else reinit_layers(model, with_linear)
    params = {str(label): layer_parameters(model, state, layers, source=f"alternative {label!r}")
              for label, state in alternatives.items()}
    if not params:
        raise HparrError("no alternative parameter sets to evaluate")
    return layers, params


def _device_of(model: nn.Module) -> torch.device:
    p = next(model.parameters(), None)
    return p.device if p is not None else torch.device("cpu")


def plain_reinit_sweep(model: nn.Module, alternatives: Mapping[str, Mapping[str, torch.Tensor]],
                       batches: Batches, layers: Sequence[str] | None = None, with_linear: bool = False,
                       topk: int = 5) -> ReinitResult:
    """The reference: for each layer and alternative, swap the parameters in, evaluate the whole network, restore.

    `alternatives` maps a label to a state_dict (only the layers' weight/bias are read). `batches`
    yields (images, labels) ready for the model; it is iterated once (every pass of a batch happens
    while it is in memory). The model's parameters are restored bit for bit, also on error.
    """
    layers, params = _prepare(model, alternatives, layers, with_linear)
    return _run_sweep(model, layers, params, batches, topk, _plain_batch, "plain")


def _plain_batch(model, layers, params, x, y, k, counts):
    """One batch of the plain loop; returns the trained network's logits."""
    trained = model(x)
    for li, layer in enumerate(layers):
        module = model.get_submodule(layer)
        saved = [p.detach().clone() if p is not None else None for p in (module.weight, module.bias)]
        try:
            for ai, label in enumerate(params):
                for own, new in zip((module.weight, module.bias), params[label][layer]):
                    if own is not None:
                        own.detach().copy_(new)
                counts[ai, li] += _count(model(x), y, k)
        finally:
            for own, old in zip((module.weight, module.bias), saved):
                if own is not None:
                    own.detach().copy_(old)
    return trained


def _run_sweep(model, layers, params, batches, topk, per_batch, method, notes=()):
    device = _device_of(model)
    was_training = model.training
    model.eval()
    counts = trained = None
    total = 0
    k = topk
    try:
        with torch.inference_mode():
            for x, y in batches:
                x = x.to(device, non_blocking=True)
                y = y.to(device, non_blocking=True)
                if counts is None:
                    counts = torch.zeros(len(params), len(layers), 2, dtype=torch.int64, device=device)
                    trained = torch.zeros(2, dtype=torch.int64, device=device)
                logits = per_batch(model, layers, params, x, y, k, counts)
                trained += _count(logits, y, k)
                k = min(k, logits.shape[1])
                total += int(y.shape[0])
    finally:
        model.train(was_training)
    if not total:
        raise HparrError("the test set is empty")
    c = trained.cpu().tolist()
    return ReinitResult(layers=list(layers), labels=list(params), correct=counts.cpu().numpy(),
                        trained_correct=(int(c[0]), int(c[1])), total=total, topk=k, method=method,
                        notes=list(notes))


# --- the shared-prefix sweep ---------------------------------------------------------------------

class NotShareable(Exception):
    """The model's graph does not allow sharing the trained prefix (the plain loop is used)."""


class _Swapped(nn.Module):
    """Calls a Conv2d/Linear with weight and bias given as arguments instead of its own."""

    def __init__(self, module: nn.Module):
        super().__init__()
        self.module = module

    def forward(self, x, weight, bias):
        if isinstance(self.module, nn.Linear):
            return F.linear(x, weight, bias)
        return self.module._conv_forward(x, weight, bias)


@dataclass
class _Suffix:
    layer: str
    inputs: list[fx.Node]  # the values it reads from the trained pass
    body: list[fx.Node]  # the nodes downstream of the layer, in order
    calls: set[fx.Node]  # the layer's own calls among them
    module: fx.GraphModule | None = None  # module(*inputs, weight, bias) -> [logits]


@dataclass
class _Stage:
    inputs: list[fx.Node]
    outputs: list[fx.Node]
    module: fx.GraphModule
    suffixes: list[_Suffix]


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


class SharedPrefixPlan:
    """The model's graph cut into stages of the trained pass and, per layer, the part downstream of it.

    Stage i runs the nodes between two cuts; after it, every layer whose inputs from the trained pass
    are all known is evaluated for each alternative by its suffix module. Between stages only the
    values still read later are kept, so memory stays that of one forward pass plus those inputs.
    """

    def __init__(self, model: nn.Module, layers: Sequence[str]):
        try:
            traced = fx.symbolic_trace(model)
        except Exception as exc:  # noqa: BLE001 - any tracing failure means: use the plain loop
            raise NotShareable(f"torch.fx cannot trace {type(model).__name__}: {_first_line(exc)}") from None
        self._traced = traced
        nodes = list(traced.graph.nodes)
        pos = {n: i for i, n in enumerate(nodes)}
        inputs = [n for n in nodes if n.op == "placeholder"]
        if len(inputs) != 1 or nodes[-1].op != "output" or not isinstance(nodes[-1].args[0], fx.Node):
            raise NotShareable("the model must take one input and return one tensor")
        self.input, self.output = inputs[0], nodes[-1].args[0]

        calls: dict[str, list[fx.Node]] = {}
        boundary: dict[str, int] = {}
        suffixes: dict[str, _Suffix] = {}
        for layer in layers:
            calls[layer] = [n for n in nodes if n.op == "call_module" and n.target == layer]
            if not calls[layer] or any(len(n.args) != 1 or n.kwargs for n in calls[layer]):
                raise NotShareable(f"layer {layer} is not called as a module on one input")
            if any(n.op == "get_attr" and n.target.startswith(layer + ".") for n in nodes):
                raise NotShareable(f"the parameters of {layer} are used outside the layer")
            down: set[fx.Node] = set()
            stack = list(calls[layer])
            while stack:
                n = stack.pop()
                if n not in down and n.op != "output":
                    down.add(n)
                    stack.extend(n.users)
            if self.output not in down:
                raise NotShareable(f"layer {layer} does not reach the output")
            frontier = sorted({a for n in down for a in n.all_input_nodes if a not in down}, key=pos.get)
            boundary[layer] = max(pos[a] for a in frontier) + 1
            suffixes[layer] = _Suffix(layer, frontier, sorted(down, key=pos.get), set(calls[layer]))

        self._kept = set().union(*(s.inputs for s in suffixes.values()))
        for layer, suffix in suffixes.items():
            suffix.module = self._module(suffix.body, suffix.inputs, [self.output],
                                         swap=(suffix.calls, _Swapped(model.get_submodule(layer))))

        cuts = sorted(set(boundary.values()))
        last = len(nodes) - 1  # the output node
        self.stages = []
        for start, end in zip([1] + cuts, cuts + [last]):
            live_in = self._live(nodes, pos, start, boundary, suffixes)
            live_out = [self.output] if end == last else self._live(nodes, pos, end, boundary, suffixes)
            here = [suffixes[layer] for layer in layers if boundary[layer] == end and end != last]
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
                swap: tuple[set[fx.Node], nn.Module] | None = None) -> fx.GraphModule:
        """A module computing `outputs` from `inputs` by the nodes `body`; with `swap`, the layer's
        calls take the weight and bias as two extra arguments."""
        g = fx.Graph()
        env = {n: g.placeholder(f"in_{i}") for i, n in enumerate(inputs)}
        root: dict[str, Any] = {}
        swapped = set()
        if swap is not None:
            swapped, root["_hparr_swapped"] = swap
            weight, bias = g.placeholder("weight"), g.placeholder("bias")
        for n in body:
            if n in swapped:
                env[n] = g.call_module("_hparr_swapped", (env[n.args[0]], weight, bias))
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
    def run(model, layers, params, x, y, k, counts):
        index = {layer: i for i, layer in enumerate(layers)}
        values = {plan.input: x}
        for stage in plan.stages:
            outs = stage.module(*[values[n] for n in stage.inputs])
            values = dict(zip(stage.outputs, outs))
            for suffix in stage.suffixes:
                args = [values[n] for n in suffix.inputs]
                li = index[suffix.layer]
                for ai, label in enumerate(params):
                    weight, bias = params[label][suffix.layer]
                    (logits,) = suffix.module(*args, weight, bias)
                    counts[ai, li] += _count(logits, y, k)
        return values[plan.output]

    return run


def reinit_sweep(model: nn.Module, alternatives: Mapping[str, Mapping[str, torch.Tensor]], batches: Batches,
                 layers: Sequence[str] | None = None, with_linear: bool = False, topk: int = 5,
                 method: str = "auto") -> ReinitResult:
    """Accuracy of the model with each layer in turn given each alternative's weight and bias.

    `alternatives` maps a label (an epoch, "rand") to a state_dict; `batches` yields (images,
    labels) ready for the model and is iterated once. Layers default to every Conv2d (plus Linear
    with `with_linear`). `method`: "shared" (trained prefix computed once per batch; an error if the
    model's graph does not allow it), "plain" (swap, evaluate, restore), or "auto" (shared when
    possible). The counts equal those of `plain_reinit_sweep`; the model is left unchanged.
    """
    if method not in ("auto", "shared", "plain"):
        raise ValueError(f"method must be auto, shared or plain, not {method!r}")
    layers, params = _prepare(model, alternatives, layers, with_linear)
    if method == "plain":
        return _run_sweep(model, layers, params, batches, topk, _plain_batch, "plain")
    notes: list[str] = []

    def fall_back(exc: NotShareable):
        if method == "shared":
            raise HparrError(f"cannot share the trained prefix: {exc}") from None
        log.warning("evaluating with the plain loop: %s", exc)
        notes.append(f"plain loop: {exc}")
        return _plain_batch

    try:
        plan = SharedPrefixPlan(model, layers)
    except NotShareable as exc:
        return _run_sweep(model, layers, params, batches, topk, fall_back(exc), "plain", notes)
    chosen = []  # the per-batch function, decided on the first batch

    def per_batch(model, layers, params, x, y, k, counts):
        if not chosen:
            try:
                plan.verify(model, x[:2])
                chosen.append(_shared_batch(plan))
            except NotShareable as exc:
                chosen.append(fall_back(exc))
        return chosen[0](model, layers, params, x, y, k, counts)

    result = _run_sweep(model, layers, params, batches, topk, per_batch, "shared-prefix", notes)
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
        hit = next((c for c in candidates if c.is_file()), None)
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
    """Every option of a re-initialization run (the original reinit_layers.py flags and the new ones)."""

    load_from: str
    data: DataOptions
    arch: str | None = None
    inits_from: str | None = None
    rand: bool = False
    with_linear: bool = False
    seed: int | None = None
    batch_size: int = 128
    cuda: bool = False
    workers: int = 1
    method: str = "auto"
    progress: bool = False
    state_dict_prefix: str | None = None


def _snapshot_data_options(options: DataOptions, meta: Mapping[str, Any], source: str) -> DataOptions:
    """The data options of the flags, completed from (and checked against) the data a snapshot of
    `hparr train` records: its class subset and whether its inputs were normalized."""
    recorded = meta.get("data") if isinstance(meta.get("data"), dict) else {}
    updates: dict[str, Any] = {}
    subset = recorded.get("class_subset")
    if isinstance(subset, dict) and subset.get("k"):
        k, seed = int(subset["k"]), subset.get("seed")
        if options.subsample_classes not in (0, k):
            raise HparrError(f"{source} was trained on {k} classes, not --subsample-classes {options.subsample_classes}")
        if seed is not None and options.class_sample_seed not in (None, seed):
            raise HparrError(f"{source} chose its {k} classes with seed {seed}, not --class-sample-seed "
                             f"{options.class_sample_seed}")
        updates.update(subsample_classes=k, class_sample_seed=seed)
    normalized = (recorded.get("normalization") or {}).get("normalized")
    if normalized is False and not options.unnormalize:
        updates["unnormalize"] = True
    elif normalized is True and options.unnormalize:
        raise HparrError(f"{source} was trained on normalized inputs; drop --unnormalize")
    return dataclasses.replace(options, **updates) if updates else options


def _snapshot_normalization(data: Data, meta: Mapping[str, Any], source: str) -> Data:
    """Use the normalization constants the snapshot was trained with, when it records them."""
    norm = meta.get("normalization")
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
class ReinitRun:
    """What `run_reinit` produced: the results document, the sweep and where results go."""

    document: dict[str, Any]
    result: ReinitResult
    stem: str


def run_reinit(settings: ReinitSettings) -> ReinitRun:
    """Load the trained snapshot, the alternatives and the test set; sweep; return the results document."""
    from .data import dataset_info, load_data, make_loader
    from .models import build_model, check_arch

    if settings.batch_size < 1:
        raise UsageError(f"--batch-size must be >= 1, got {settings.batch_size}")
    if settings.inits_from is None and not settings.rand:
        raise UsageError("nothing to evaluate: pass --inits-from (snapshots to re-initialize from) and/or --rand")
    if not settings.load_from:
        raise UsageError("--load-from is required: the trained snapshot to evaluate")
    settings.data.validate()
    init_paths = read_inits_list(settings.inits_from) if settings.inits_from is not None else []

    load_from = Path(settings.load_from)
    trained = checkpoints.read_checkpoint(load_from)
    trained_obj, state = trained.obj, trained.state
    epoch = checkpoints.snapshot_epoch_or_none(trained_obj, load_from)
    # keep the metadata only (a bare state_dict has none), not a second copy of the weights
    meta = {k: v for k, v in trained_obj.items() if k not in _SNAPSHOT_STATES and not isinstance(v, torch.Tensor)}
    checkpoints.check_metadata(meta, str(load_from), settings.data.dataset, settings.seed)
    arch = settings.arch or (meta.get("arch") if isinstance(meta.get("arch"), str) else None)
    if arch is None:
        raise UsageError(f"--arch is required: {load_from} does not record its architecture")
    check_arch(arch)
    seed = settings.seed
    own_seeds = meta.get("seeds") if isinstance(meta.get("seeds"), dict) else {}
    data_options = _snapshot_data_options(settings.data, meta, str(load_from))
    data = load_data(data_options)
    data = _snapshot_normalization(data, meta, str(load_from))
    info = dataset_info(data_options.dataset)
    default = checkpoints.ModelConfig(arch, data.num_classes, data.in_channels, data.image_size)
    config = checkpoints.snapshot_config(meta, default, str(load_from))
    if config.num_classes != data.num_classes or config.in_channels != data.in_channels:
        raise HparrError(f"{load_from} is a model of {config.num_classes} classes and {config.in_channels} input "
                         f"channels; the test set has {data.num_classes} and {data.in_channels}")
    device = distributed.select_device(settings.cuda)
    model = build_model(arch, config.num_classes, config.in_channels, config.input_size, seed=0)
    state = checkpoints.match_prefix(state, model, settings.state_dict_prefix, source=str(load_from))
    checkpoints.load_weights(model, dict(state), source=str(load_from))
    del trained_obj, state, trained
    model.to(device)
    reference = {k: tuple(v.shape) for k, v in model.state_dict().items()}

    size = config.input_size
    infos, skipped = _discover(model, settings.with_linear, (2, config.in_channels, size, size))
    layers = [info.name for info in infos]

    alternatives, sources = _load_alternatives(init_paths, load_from, config, reference, data_options.dataset, seed,
                                               settings.state_dict_prefix)
    # the re-randomization seed derives from --seed, else from the snapshot's own seed, else from 0
    base_seed = seed if seed is not None else own_seeds.get("seed") if isinstance(own_seeds.get("seed"), int) else 0
    rand_seed = None
    if settings.rand:
        rand_seed = derive_seeds(int(base_seed), "reinit_rand")["reinit_rand"]
        alternatives[RAND] = build_model(arch, config.num_classes, config.in_channels, size, seed=rand_seed).state_dict()
        sources[RAND] = f"build_model({arch!r}, seed={rand_seed})"
    if not alternatives:
        raise UsageError(f"--inits-from {settings.inits_from} holds no snapshot other than the trained one")

    loader = make_loader(data, "test", settings.batch_size, device=device, workers=settings.workers,
                         channels_last=device.type == "cpu" and any(i.kind == "conv" for i in infos))
    batches: Iterable = loader
    if settings.progress:
        from tqdm import tqdm

        batches = tqdm(loader, desc="reinit", unit="batch", file=sys.stderr)
    log.info("re-initializing %d layer(s) of %s from %s", len(layers), arch, ", ".join(alternatives))
    result = reinit_sweep(model, alternatives, batches, layers=layers, method=settings.method)
    del alternatives

    stage_block = {i.name: (i.stage, i.block) for i in infos}
    seeds = {"seed": seed, "rand": rand_seed, "rand_derived_from": int(base_seed) if settings.rand else None,
             "class_sample_seed": data_options.class_sample_seed, "model": own_seeds or None}
    document = results_document(
        result, arch=arch, dataset=data_options.dataset, seed=seed, epoch=epoch,
        load_from=str(load_from.resolve()), init_files=sources, layer_kinds=[i.kind for i in infos],
        layer_stage_block=[stage_block[name] for name in layers],
        skipped=[{"name": s.name, "kind": s.kind, "reason": s.reason} for s in skipped],
        with_linear=settings.with_linear, seeds=seeds, subsample_classes=data_options.subsample_classes,
        class_subset=(data.meta or {}).get("class_subset"),
        normalization={"mean": list(data.mean), "std": list(data.std), "normalized": not data_options.unnormalize,
                       "dataset_default": {"mean": list(info.mean), "std": list(info.std)}},
        batch_size=settings.batch_size, device=str(device))
    return ReinitRun(document=document, result=result, stem=f"reinit_{load_from.stem}")


def results_document(result: ReinitResult, *, arch: str, dataset: str, seed: int | None, epoch: int,
                     **fields: Any) -> dict[str, Any]:
    """The original JSON (`init_from_epoch: {epoch: [top-1 per layer]}`, top1_test, top5_test, arch,
    dataset, seed, epoch) plus layer names, top-5, counts, relative drops and provenance."""
    top1, top5 = result.accuracy(1), result.accuracy(5)
    doc: dict[str, Any] = {"init_from_epoch": top1, "arch": arch, "dataset": dataset,
                           "top1_test": result.trained_accuracy(1), "top5_test": result.trained_accuracy(5)}
    if seed is not None:
        doc["seed"] = str(seed)
    doc["epoch"] = None if epoch is None else str(epoch)
    doc.update({
        "format": RESULTS_FORMAT,
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


def save_heatmap(document: Mapping[str, Any], png: str | os.PathLike | None = None,
                 pdf: str | os.PathLike | None = None) -> None:
    """Heatmap of the relative top-1 drop (rows: epochs, then rand; columns: layers), PNG and/or PDF."""
    from matplotlib.figure import Figure

    layers = list(document["layers"])
    frame = relative_drop_frame(document["top1_test"], document["init_from_epoch"], layers)
    values = frame.to_numpy(dtype=float)
    fig = Figure(figsize=(max(4.0, 0.9 * len(layers) + 2.5), max(2.5, 0.55 * len(frame) + 1.8)),
                 layout="constrained")
    ax = fig.subplots()
    finite = values[np.isfinite(values)]
    vmin = min(0.0, float(finite.min())) if finite.size else 0.0
    vmax = max(1.0, float(finite.max())) if finite.size else 1.0
    image = ax.imshow(values, cmap="viridis", vmin=vmin, vmax=vmax, aspect="auto")
    ax.set_xticks(range(len(layers)), labels=layers, rotation=45, ha="right", rotation_mode="anchor")
    ax.set_yticks(range(len(frame)), labels=[f"epoch {r}" if r != RAND else RAND for r in frame.index])
    ax.set_xlabel("layer")
    ax.set_ylabel("re-initialized from")
    for (i, j), v in np.ndenumerate(values):
        if np.isfinite(v):
            dark = (v - vmin) / (vmax - vmin) < 0.6
            ax.text(j, i, f"{v:.2f}", ha="center", va="center", fontsize=8, color="white" if dark else "black")
    fig.colorbar(image, ax=ax, label="(acc_trained - acc_reinit) / acc_trained")
    ax.set_title(f"{document.get('arch')} on {document.get('dataset')}, epoch {document.get('epoch')}: "
                 f"top-1 {document['top1_test']:.2f}%")
    for path, fmt in ((png, "png"), (pdf, "pdf")):
        if path is not None:
            with files.atomic_path(path) as tmp:
                fig.savefig(tmp, format=fmt, dpi=150)


def summary_lines(document: Mapping[str, Any]) -> list[str]:
    """Human-readable lines of a results document: trained accuracy, then one line per alternative."""
    lines = [f"{document['arch']} on {document['dataset']} (epoch {document['epoch']}, {document['num_test']} test "
             f"images): top-1 {document['top1_test']:.2f}%, top-5 {document['top5_test']:.2f}%",
             f"{document['batchnorm']}.",
             "layers: " + ", ".join(document["layers"])]
    for label, accs in document["init_from_epoch"].items():
        what = "re-randomized" if label == RAND else f"from epoch {label}"
        lines.append(f"{what}: top-1 " + " ".join(f"{a:.2f}" for a in accs))
    return lines
