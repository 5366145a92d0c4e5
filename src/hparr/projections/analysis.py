"""The statistics of a network's layers and their result documents.

`analyze_layers` applies the statistics of `stats` to the layers found by `hparr.layers.discover_layers`,
`layer_stats` does both for a model, and `SnapshotAnalyzer` turns many snapshot files into result documents
quickly: the layers are discovered once per model configuration and the weights are read straight from
memory-mapped state_dicts, so a snapshot costs the reading of its analyzed weights only. A result on disk is
reused when it was computed from the same inputs (`reusable_result`).
"""
from __future__ import annotations

import functools
import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np
import pandas as pd
import scipy
import torch
import torch.nn as nn

from .. import checkpoints, files, inits, null, schema
from ..checkpoints import ModelConfig, check_metadata, check_state, snapshot_config
from ..defaults import LEVEL, check_level
from ..errors import HparrError, UsageError
from ..inputs import UNKNOWN_FEED, Feed, fx_feeds, negative_shares
from ..layers import LayerInfo, Skipped, discover_layers
from ..models import build_model
from ..provenance import versions
from ..results import PROJECTIONS_FORMAT, document_rows, read_json
from .stats import CORRECTION, STD_DDOF, bias_tests_of_layers, distances, holm, summarize, sums_and_cosines


@dataclass
class LayerStats:
    """The statistics of a network's analyzed layers.

    columns: the per-layer values, column -> one value per layer, in layer order (name, kind, stage, block, N,
    d, mean, std, mass, n_negative, p_sign, p_ks, p_value, p_adjusted, biased, null[, l2_dist, l_inf_dist][,
    input_kind, input_nonneg, input_neg_share]), and `table` the same as a DataFrame (made on first use);
    projections: each layer's per-filter projections
    by name; net: the network summary over the pooled projections (N, mean, std, mass, n_negative,
    n_layers, n_biased, p_value, biased); skipped: the conv/linear layers not analyzed and why; the test
    settings; and `null_assumed`, the layers whose initialization was not recorded when their model was built
    (`hparr.inits`), whose KS null is that of `init_scheme` (`null.SCHEMES`).
    """

    columns: dict[str, list]
    projections: dict[str, np.ndarray]
    net: dict[str, Any]
    skipped: list[dict[str, str]] = field(default_factory=list)
    level: float = LEVEL
    normalize: bool = True
    layer_order: str = "forward"
    correction: str = CORRECTION
    std_ddof: int = STD_DDOF
    init_scheme: str = null.DEFAULT_SCHEME
    null_assumed: list[str] = field(default_factory=list)

    @functools.cached_property
    def table(self) -> pd.DataFrame:
        """One row per layer."""
        return pd.DataFrame(self.columns)


def check_init_scheme(scheme: str) -> str:
    """`--init-scheme`: a scheme of `null.SCHEMES` or an entries' law (gaussian, uniform, truncnorm(C))."""
    try:
        null.law_of_scheme(scheme)
    except ValueError as exc:
        raise UsageError(f"--init-scheme: {exc}") from None
    return scheme


def layer_nulls(layers: Sequence[LayerInfo], dims: Sequence[int],
                init_scheme: str = null.DEFAULT_SCHEME) -> tuple[list[str], list[str]]:
    """(the null of each layer's KS test, the names of the layers whose null was assumed): the null of the law
    recorded for the layer's weight when its model was built (`inits.weight_law`), else that of `init_scheme`."""
    assumed_law = null.law_of_scheme(check_init_scheme(init_scheme))
    labels, assumed = [], []
    for layer, d in zip(layers, dims):
        law = inits.weight_law(layer.module)
        if law is None:
            law = assumed_law
            assumed.append(layer.name)
        labels.append(null.null_label(law, d))
    return labels, assumed


def analyze_layers(layers: Sequence[LayerInfo], weights: Mapping[str, Any], normalize: bool = True,
                   init: Mapping[str, Any] | None = None, level: float = LEVEL,
                   skipped: Sequence[Skipped] = (), inputs: Mapping[str, Mapping[str, Any]] | None = None,
                   init_scheme: str = null.DEFAULT_SCHEME) -> LayerStats:
    """The statistics and bias tests of `layers`, from weight tensors keyed like a state_dict
    (`layer.weight_key`); `init` (weights at initialization, same keys) adds the distances, and `inputs`
    ({layer name: {column: value}} for the columns of `schema.INPUT`, see `input_columns`) what feeds each layer.
    The KS test of a layer uses the null of its recorded initialization, else that of `init_scheme`
    (`layer_nulls`)."""
    check_level(level, "the test level")
    if not layers:
        raise HparrError("no layers to analyze (every conv layer is skipped; try --with-linear or --include-1x1)")
    rows, per_filter, cosines = [], {}, []
    for layer in layers:
        weight = _weight(weights, layer, "snapshot")
        sums, cos, d = sums_and_cosines(weight)
        p = cos if normalize else sums
        row = {"name": layer.name, "kind": layer.kind, "stage": layer.stage, "block": layer.block,
               **summarize(p), "d": d}
        if init is not None:
            row.update(distances(weight, _weight(init, layer, "initial weights")))
        per_filter[layer.name] = p
        cosines.append((cos, d))
        rows.append(row)
    nulls, assumed = layer_nulls(layers, [d for _, d in cosines], init_scheme)
    for row, tests in zip(rows, bias_tests_of_layers(cosines, nulls)):
        row.update(tests)
    p_adjusted = holm([row["p_value"] for row in rows])
    table = {c: [row[c] for row in rows] for c in schema.COMPUTED}
    table.update(p_adjusted=p_adjusted.tolist(), biased=(p_adjusted <= level).tolist(), null=nulls)
    if init is not None:
        table.update({c: [row[c] for row in rows] for c in schema.DISTANCES})
    if inputs is not None:
        table.update({c: [inputs.get(layer.name, {}).get(c) for layer in layers] for c in schema.INPUT})
    pooled = np.concatenate(list(per_filter.values()))
    tested = [p for p in table["p_value"] if not math.isnan(p)]
    net = {**summarize(pooled), "n_layers": len(rows), "n_biased": sum(table["biased"]),
           "p_value": min(1.0, len(tested) * min(tested)) if tested else float("nan"),
           "biased": any(table["biased"])}
    return LayerStats(table, per_filter, net, skipped=[vars(s).copy() for s in skipped], level=level,
                      normalize=normalize,
                      layer_order="forward" if all(layer.traced for layer in layers) else "modules",
                      init_scheme=init_scheme, null_assumed=assumed)


def input_columns(feeds: Mapping[str, Feed], image_nonneg: bool | None = None,
                  shares: Mapping[str, float] | None = None) -> dict[str, dict[str, Any]]:
    """{layer: {input_kind, input_nonneg, input_neg_share}} from what feeds each layer (`hparr.inputs`), whether
    the network's input is non-negative (its pixels not normalized; None: unknown) and the measured shares."""
    return {name: {"input_kind": feed.kind, "input_nonneg": feed.nonneg(image_nonneg),
                   "input_neg_share": None if shares is None else shares.get(name)}
            for name, feed in feeds.items()}


def _weight(weights: Mapping[str, Any], layer: LayerInfo, what: str):
    w = weights.get(layer.weight_key)
    if w is None:
        raise HparrError(f"{what} has no weight {layer.weight_key!r} for layer {layer.name}")
    if tuple(w.shape) != layer.shape:
        raise HparrError(f"{what}: {layer.weight_key} has shape {tuple(w.shape)}, the model's is {layer.shape}")
    return w


def weights_of(model_or_state: nn.Module | Mapping[str, Any]) -> Mapping[str, Any]:
    """A state_dict-like mapping of weights from a model or a state_dict."""
    if isinstance(model_or_state, nn.Module):
        return model_or_state.state_dict()
    return model_or_state


def layer_stats(model: nn.Module, normalize: bool = True, with_linear: bool = False,
                init: nn.Module | Mapping[str, Any] | None = None, include_1x1: bool = False,
                input_shape: Sequence[int] | None = None, level: float = LEVEL,
                init_scheme: str = null.DEFAULT_SCHEME) -> LayerStats:
    """Statistics and bias tests of every analyzed layer of `model` (see `analyze_layers`); `.table` is
    the per-layer DataFrame and `.net` the network summary.

    Layers come from `discover_layers(model, input_shape, with_linear, include_1x1)`; `init` (a model
    or a state_dict of the same architecture) adds the distances from initialization. A model built by
    `hparr.models.build_model` carries the law of each layer's initialization; for another, every layer's
    null is that of `init_scheme` (PyTorch's default unless given).
    """
    layers, skipped = discover_layers(model, input_shape, with_linear=with_linear, include_1x1=include_1x1)
    feeds = fx_feeds(model, [layer.name for layer in layers])
    return analyze_layers(layers, weights_of(model), normalize=normalize,
                          init=None if init is None else weights_of(init), level=level, skipped=skipped,
                          inputs=input_columns(feeds), init_scheme=init_scheme)


# --- result documents (the original JSON layout plus new fields) and tidy rows ----------------------

def projection_document(stats_: LayerStats, **fields: Any) -> dict[str, Any]:
    """The original `stage -> block -> {projections, mean, mass[, l2_dist, l_inf_dist]}` + `net` layout,
    with the new per-layer fields and the test settings; `fields` (arch, dataset, seed, epoch, ...) are added.
    Every value is JSON-ready (NaN as None). In a residual network the key under a stage is the layer's
    position in it, and `block` is an entry field."""
    doc: dict[str, Any] = {}
    df = stats_.table
    has_dist = "l2_dist" in df.columns
    # In a residual network several layers share a block: they are keyed by their position in the stage,
    # and every entry records its block (in the paper's networks the two are the same).
    position = df.groupby("stage").cumcount().tolist()
    residual = any(int(b) != p for b, p in zip(df["block"], position))
    for i, row in enumerate(df.to_dict(orient="records")):
        entry = {"projections": stats_.projections[row["name"]], "mean": row["mean"], "mass": row["mass"]}
        if has_dist:
            entry.update(l2_dist=row["l2_dist"], l_inf_dist=row["l_inf_dist"])
        entry.update({k: row[k] for k in schema.ENTRY_FIELDS})
        entry.update({k: row[k] for k in schema.INPUT if k in row})
        if residual:
            entry["block"] = int(row["block"])
        doc.setdefault(str(row["stage"]), {})[str(position[i] if residual else row["block"])] = entry
    net = dict(stats_.net)
    pooled = np.concatenate(list(stats_.projections.values()))
    doc["net"] = {"projections": pooled, "mean": net.pop("mean"), "mass": net.pop("mass"), **net}
    doc.update(fields)
    doc.update(format=PROJECTIONS_FORMAT, level=stats_.level, correction=stats_.correction,
               normalize=stats_.normalize, std_ddof=stats_.std_ddof, layer_order=stats_.layer_order,
               skipped=stats_.skipped, init_scheme=stats_.init_scheme, null_assumed=stats_.null_assumed,
               nulls={name: null.describe(name) for name in dict.fromkeys(df["null"])})
    return files.jsonable(doc)


# --- many snapshots ---------------------------------------------------------------------------------

@dataclass(frozen=True)
class AnalysisOptions:
    """What changes the numbers of a result: compared before a result on disk is reused."""

    normalize: bool = True
    with_linear: bool = False
    include_1x1: bool = False
    level: float = LEVEL
    init_from: str | None = None
    init_scheme: str = null.DEFAULT_SCHEME  # the initialization assumed where the model does not record one

    def as_dict(self) -> dict[str, Any]:
        return {"normalize": self.normalize, "with_linear": self.with_linear, "include_1x1": self.include_1x1,
                "level": self.level, "init_from": self.init_from, "init_scheme": self.init_scheme}


def reusable_result(path: str | os.PathLike, options: AnalysisOptions, fields: Mapping[str, Any] | None = None,
                    checkpoint: str | os.PathLike | None = None, init_from: str | os.PathLike | None = None,
                    state_dict_prefix: str | None = None) -> tuple[dict[str, Any] | None, str | None]:
    """(the result document at `path`, None) when it was computed from the same inputs, else (None, why not):
    None when there is no readable result there.

    The same inputs: the options that change its numbers (`options`, and `fields` such as the class count or
    the seed of a random initialization, as the document records them), and the same `checkpoint` file and
    `init_from` file, with the same tensors (`checkpoints.identity_change`).
    """
    path = Path(path)
    if not path.is_file():
        return None, None
    doc = read_json(path)  # unreadable: computed again
    if not isinstance(doc, dict) or doc.get("format") != PROJECTIONS_FORMAT or "net" not in doc:
        return None, f"{path.name} is not a readable result"
    wanted = {**options.as_dict(), **(fields or {})}
    differ = [f"{k} {doc.get(k)!r} there, {v!r} here" for k, v in wanted.items() if doc.get(k) != v]
    if differ:
        return None, f"computed with other settings ({', '.join(differ)})"
    for key, source in (("checkpoint", checkpoint), ("init_checkpoint", init_from)):
        if source is not None:
            recorded = doc.get(key)
            keys = recorded.get("keys") if isinstance(recorded, dict) else None
            why = checkpoints.identity_change(
                recorded, source, lambda src=source: checkpoints.load_state(src, prefix=state_dict_prefix,
                                                                          reference=keys))
            if why is not None:
                return None, ("--init-from: " if key == "init_checkpoint" else "") + why
    return doc, None


INPUT_KINDS = "hparr-inputs-1"  # how the input kinds of a result were read (`hparr.inputs`)
PROBE_IMAGES = 256  # the test images a probe runs through the model (`--probe-data`)


class SnapshotAnalyzer:
    """Result documents for many snapshots of one architecture.

    The model of each configuration (class count, input channels, size) is built once to discover its
    layers and what feeds each (`hparr.inputs`); a snapshot is then read memory-mapped and only its analyzed
    weights are touched. Without an architecture (`default.arch` None) a checkpoint's conv weights are read
    without a model, and an ONNX file's layers come from its graph. `context` (dataset, seed, ...) is copied
    into every document; snapshots whose metadata names another architecture, `dataset` or `seed` are refused.
    `probe` (data options): one batch of `probe_images` images of that data's test split is run through each
    model to measure the share of negative values in every layer's input (the model is then loaded whole).
    """

    def __init__(self, default: ModelConfig, options: AnalysisOptions, context: Mapping[str, Any] | None = None,
                 device: str | torch.device = "cpu", init_state: Mapping[str, Any] | None = None,
                 dataset: str | None = None, seed: int | None = None, state_dict_prefix: str | None = None,
                 probe: Any = None, probe_images: int = PROBE_IMAGES):
        self.default = default
        self.prefix = state_dict_prefix
        self.dataset, self.seed = dataset, seed
        self.options = options
        self.context = dict(context or {})
        self.device = torch.device(device)
        self.init_state = init_state
        self.probe, self.probe_images = probe, int(probe_images)
        self._plans: dict[ModelConfig, tuple[list[LayerInfo], list[Skipped], dict[str, tuple[int, ...]]]] = {}
        self._feeds: dict[ModelConfig, dict[str, Feed]] = {}
        self._models: dict[ModelConfig, nn.Module] = {}
        self._probe_data: dict[Any, Any] = {}

    @property
    def inputs(self) -> dict[str, Any]:
        """What a document records of how its input columns were obtained (compared before a result is reused):
        the way kinds are read, and the probe's data options (None without a probe)."""
        probe = None
        if self.probe is not None:
            o = self.probe
            probe = {"dataset": o.dataset, "split": "test", "images": self.probe_images,
                     "subsample_classes": o.subsample_classes, "class_sample_seed": o.class_sample_seed,
                     "unnormalize": o.unnormalize}
        return {"kinds": INPUT_KINDS, "probe": probe}

    def plan(self, config: ModelConfig, model: nn.Module | None = None):
        """(layers, skipped, reference shapes) of a configuration, built on first use."""
        if config not in self._plans:
            if model is None:
                model = build_model(config.arch, config.num_classes, config.in_channels, config.input_size, seed=0)
            layers, skipped = discover_layers(model, (2, config.in_channels, config.input_size, config.input_size),
                                              with_linear=self.options.with_linear,
                                              include_1x1=self.options.include_1x1)
            reference = {k: tuple(v.shape) for k, v in model.state_dict().items()}
            self._plans[config] = (layers, skipped, reference)
            self._feeds[config] = fx_feeds(model, [layer.name for layer in layers])
            if self.probe is not None:
                self._models[config] = model
        return self._plans[config]

    def _document(self, config: ModelConfig, state: Mapping[str, Any], layers, skipped,
                  checkpoint: Path | None = None, inputs: Mapping[str, Any] | None = None,
                  **fields) -> dict[str, Any]:
        keys = [layer.weight_key for layer in layers]
        weights = {key: state[key] for key in keys}
        identity = {}
        if checkpoint is not None:
            identity = {"source": str(checkpoint.resolve()),
                        "checkpoint": checkpoints.checkpoint_identity(checkpoint, weights, keys)}
        weights = {key: w.to(self.device) for key, w in weights.items()}
        init = None
        if self.init_state is not None:
            init_state = checkpoints.match_prefix(self.init_state, keys, self.prefix, source="--init-from")
            init = {layer.weight_key: _weight(init_state, layer, "--init-from") for layer in layers}
            if self.options.init_from:  # the file the initial weights came from (a library caller may give none)
                identity["init_checkpoint"] = checkpoints.checkpoint_identity(self.options.init_from, init, keys)
            init = {key: w.to(self.device) for key, w in init.items()}
        stats_ = analyze_layers(layers, weights, normalize=self.options.normalize, init=init,
                                level=self.options.level, skipped=skipped, inputs=inputs,
                                init_scheme=self.options.init_scheme)
        if config.arch is None:
            stats_.layer_order = FILE_ORDER
        return projection_document(
            stats_, **self.context, **fields, num_classes=config.num_classes, in_channels=config.in_channels,
            input_size=config.input_size, with_linear=self.options.with_linear,
            include_1x1=self.options.include_1x1, init_from=self.options.init_from, **identity,
            inputs=self.inputs, versions={**versions(), "scipy": scipy.__version__})

    def analyze_file(self, path: str | os.PathLike) -> dict[str, Any]:
        """The result document of one snapshot file (plain state_dict, original .tar, `hparr train`'s, or an
        ONNX model)."""
        path = Path(path)
        ckpt = checkpoints.read_checkpoint(path)
        obj = ckpt.obj
        check_metadata(obj, str(path), self.dataset, self.seed)
        extra: dict[str, Any] = {}
        run = None  # (model, {layer: module name}, its static input shape or None) where it can run on data
        if self.default.arch is None and ckpt.graph is not None:  # an ONNX model: the layers of its graph
            config = self.default
            layers, skipped, feeds, state = onnx_layers(ckpt.graph, self.options)
            extra["onnx"] = _onnx_file().describe(ckpt.graph)
            if self.probe is not None:
                run = _onnx_module(ckpt.graph, layers)
        elif self.default.arch is None:  # no model: every conv weight of the file, in the file's order
            config = self.default
            state = checkpoints.match_prefix(ckpt.state, None, self.prefix, source=str(path))
            layers, skipped = file_layers(state, self.options, str(path))
            feeds = {layer.name: UNKNOWN_FEED for layer in layers}
            if self.probe is not None:
                raise HparrError(f"--probe-data: {path} is read without its model (no --arch), so no image can be "
                                 "run through it; give --arch, or an ONNX file")
        else:
            config = snapshot_config(obj, self.default, str(path))
            layers, skipped, reference = self.plan(config)
            state = checkpoints.match_prefix(ckpt.state, reference, self.prefix, source=str(path))
            check_state(reference, checkpoints.shapes_of(state), str(path))
            feeds = self._feeds[config]
            if self.probe is not None:
                model = self._models[config]
                model.load_state_dict(dict(state))
                run = (model, {layer.name: layer.name for layer in layers}, None)
        meta = obj if isinstance(obj, dict) else {}
        extra.update({f"snapshot_{k}": meta[k] for k in ("seeds", "dataset", "top1_acc", "top5_acc") if k in meta})
        normalization = checkpoints.recorded_normalization(meta)
        if normalization is not None:
            extra["snapshot_normalization"] = normalization
        normalized = (normalization or {}).get("normalized")
        shares = None
        if run is not None:
            shares, extra["probe"] = self._measure(*run, meta=meta, source=str(path))
        inputs = input_columns(feeds, None if not isinstance(normalized, bool) else not normalized, shares)
        epoch = checkpoints.snapshot_epoch_or_none(obj, path)
        return self._document(config, state, layers, skipped, checkpoint=path, inputs=inputs, stem=path.stem,
                              epoch=None if epoch is None else str(epoch), checkpoint_format=ckpt.format, **extra)

    def analyze_model(self, model: nn.Module, stem: str, epoch: int, source: str, **fields) -> dict[str, Any]:
        """The result document of an in-memory model (random initialization, pretrained weights)."""
        config = self.default
        self._plans.pop(config, None)
        layers, skipped, _ = self.plan(config, model)
        shares = None
        if self.probe is not None:
            shares, fields["probe"] = self._measure(model, {layer.name: layer.name for layer in layers}, None,
                                                    meta={}, source=source)
        return self._document(config, model.state_dict(), layers, skipped, stem=stem, source=source,
                              epoch=str(epoch), inputs=input_columns(self._feeds[config], None, shares), **fields)

    def _measure(self, model: nn.Module, modules: Mapping[str, str], shape: Sequence[int | None] | None, *,
                 meta: Mapping[str, Any], source: str) -> tuple[dict[str, float], dict[str, Any]]:
        """The share of negative values in each layer's input over one batch of the probe's test images,
        normalized as the snapshot records (else as the probe's options say), and what was run. `shape`: the
        model's static input shape where it has one (an ONNX graph's; a fixed batch size is run in chunks)."""
        from ..data import load_data, make_loader  # the data only where a probe is asked for
        from ..reinit.snapshots import snapshot_data_options, snapshot_normalization

        options = snapshot_data_options(self.probe, meta, source)
        if options not in self._probe_data:
            self._probe_data[options] = load_data(options, splits=("test",))
        data = snapshot_normalization(self._probe_data[options], meta, source)
        images, _ = next(iter(make_loader(data, "test", self.probe_images, train=False)))
        if shape is not None:
            if len(shape) != images.dim() or \
                    tuple(images.shape[1:]) != tuple(d if d else s for d, s in zip(shape[1:], images.shape[1:])):
                raise HparrError(f"--probe-data: {source} takes inputs of shape {tuple(shape)}, the {options.dataset} "
                                 f"test images are {tuple(images.shape[1:])}")
        batches = images.split(shape[0]) if shape is not None and shape[0] else [images]
        ref = next(iter(model.parameters()), None)
        device = ref.device if ref is not None else torch.device("cpu")
        try:
            shares = negative_shares(model, modules, [b.to(device) for b in batches])
        except RuntimeError as exc:
            raise HparrError(f"--probe-data: running {options.dataset} test images through {source} failed: "
                             f"{str(exc).strip().splitlines()[0][:200] if str(exc).strip() else type(exc).__name__}"
                             ) from None
        record = {**self.inputs["probe"], "images": int(images.shape[0]), "normalized": not options.unnormalize,
                  "mean": [float(v) for v in data.mean], "std": [float(v) for v in data.std]}
        return shares, record


def _onnx_file():
    from ..checkpoints import onnx_file  # the optional extra: only for ONNX files

    return onnx_file


def onnx_layers(graph: Any, options: AnalysisOptions):
    """(layers, skipped, feeds, weights) of an ONNX model (`checkpoints.onnx_file.OnnxModel`) read without
    converting it: its Conv nodes (and with `with_linear` its Gemm/MatMul nodes) whose weight is a constant, in
    the graph's topological order, named by their nodes; what feeds each (`hparr.inputs.onnx_feeds`); and the
    analyzed weights, read lazily from the initializers. Stage and block are unknown (stage 0, numbered in
    order), as for a checkpoint read without its model."""
    from ..inputs import onnx_feeds

    onnx_file = _onnx_file()
    found, skipped = onnx_file.graph_layers(graph, options.with_linear, options.include_1x1)
    onnx_file.check_no_conv(graph, found, options.with_linear)
    layers = [LayerInfo(g.node.name, None, g.kind, 0, i, i, g.weight, g.shape, traced=False, unit=g.node.name)
              for i, g in enumerate(found)]
    return layers, skipped, onnx_feeds(graph, found), onnx_file.layer_weights(graph, found)


def _onnx_module(graph: Any, layers: Sequence[LayerInfo]):
    """An ONNX model converted to a torch module, {layer: its module}, and the graph's static input shape."""
    converted = _onnx_file().to_torch(graph)
    return (converted.module, {layer.name: converted.modules[layer.name] for layer in layers},
            _onnx_file().graph_input_shape(graph))


FILE_ORDER = "file"  # the layer order of checkpoint-only projections: stage and block unknown


def file_layers(state: Mapping[str, Any], options: AnalysisOptions,
                source: str) -> tuple[list[LayerInfo], list[Skipped]]:
    """The layers of a checkpoint read without its model: every convolution weight (a `*weight` tensor of
    3 to 5 dimensions; 1x1 ones with `include_1x1`) and with `with_linear` every 2-d `*weight`, in the file's
    order. Stage and block are unknown: every layer is put in stage 0, numbered in file order, and the
    document's `layer_order` says "file"."""
    shapes = checkpoints.shapes_of(state)
    layers: list[LayerInfo] = []
    skipped: list[Skipped] = []
    for key in state:
        if not key.endswith("weight"):
            continue
        shape = tuple(shapes[key].shape)
        name = key[:-len(".weight")] if key.endswith(".weight") else key
        if 3 <= len(shape) <= 5:
            if all(k == 1 for k in shape[2:]) and not options.include_1x1:
                skipped.append(Skipped(name, "conv", "1x1 convolution (use --include-1x1)"))
                continue
            kind = "conv"
        elif len(shape) == 2:
            if not options.with_linear:
                skipped.append(Skipped(name, "linear", "linear layer (use --with-linear)"))
                continue
            kind = "linear"
        else:
            continue
        layers.append(LayerInfo(name, None, kind, 0, len(layers), len(layers), key, shape, traced=False, unit=name))
    if not layers:
        raise HparrError(f"{source} holds no convolution weight (a *weight tensor of 3 to 5 dimensions)"
                         + ("" if options.with_linear else "; try --with-linear"))
    return layers, skipped


def collect_results(directory: str | os.PathLike, options: AnalysisOptions,
                    known: Mapping[Path, Mapping[str, Any]] | None = None) -> list[Mapping[str, Any]]:
    """`known` documents plus every other result document in `directory` made with `options`."""
    known = dict(known or {})
    docs = list(known.values())
    seen = {Path(p).resolve() for p in known}
    for path in sorted(Path(directory).glob("*.json")):
        if path.name.startswith(".") or path.resolve() in seen:
            continue
        doc = read_json(path)
        if isinstance(doc, dict) and doc.get("format") == PROJECTIONS_FORMAT and \
                all(doc.get(k) == v for k, v in options.as_dict().items()):
            docs.append(doc)
    return docs


def log_lines(doc: Mapping[str, Any]) -> list[str]:
    """Human-readable lines of one result document, for the log file."""
    head = f"{doc.get('stem')} (epoch {doc.get('epoch')})"
    lines = []
    for row in document_rows(doc):
        where = "net" if row["kind"] == "net" else row["name"] if row["stage"] is None else \
            f"stage {row['stage']} block {row['block']} {row['name']}"
        # a layer's p-value is Holm-adjusted over the network's layers; the net row's is the Bonferroni minimum
        label, p = ("p", row.get("p_value")) if row["kind"] == "net" or "p_adjusted" not in row else \
            ("p (Holm-adjusted)", row["p_adjusted"])
        lines.append(f"{head} {where}: mean {row['mean']:.6g} mass {row['mass']:.4f} N {row['N']} "
                     f"{label} {p if p is None else format(p, '.3g')}{' BIASED' if row['biased'] else ''}")
    return lines


def load_init_state(path: str | os.PathLike) -> Mapping[str, torch.Tensor]:
    """The weights of an initialization snapshot (`--init-from`, any checkpoint format), memory-mapped."""
    return checkpoints.read_checkpoint(path).state
