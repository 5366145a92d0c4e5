"""The statistics of a network's layers and their result documents.

`analyze_layers` applies the statistics of `stats` to the layers found by `hparr.layers.discover_layers`,
`layer_stats` does both for a model, and `projection_document` is the result document of one snapshot;
`hparr.projections._snapshots` turns many snapshot files into such documents.
"""
from __future__ import annotations

import functools
import logging
import math
from dataclasses import dataclass, field
from typing import Any, Mapping, Sequence

import numpy as np
import pandas as pd
import torch.nn as nn

from .. import files, inits, null, schema
from ..defaults import INCLUDE_1X1, LEVEL, check_level
from ..errors import HparrError
from ..inputs import Feed, fx_feeds
from ..layers import LayerInfo, Skipped, discover_layers
from ..results import PROJECTIONS_FORMAT
from ._stats import CORRECTION, STD_DDOF, bias_tests_of_layers, distances, holm, summarize, sums_and_cosines

log = logging.getLogger("hparr.projections")


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


def layer_nulls(layers: Sequence[LayerInfo], dims: Sequence[int],
                init_scheme: str = null.DEFAULT_SCHEME) -> tuple[list[str], list[str]]:
    """(the null of each layer's KS test, the names of the layers whose null was assumed): the null of the law
    recorded for the layer's weight when its model was built (`inits.weight_law`), else that of `init_scheme`."""
    assumed_law = null.law_of_scheme(null.check_scheme(init_scheme))
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
    The KS test of a layer uses the null of its recorded initialization, else that of `init_scheme` (`layer_nulls`)."""
    check_level(level, "the test level")
    if not layers:
        raise HparrError("no layers to analyze (every conv layer is skipped; try --with-linear or --include-1x1)")
    rows, per_filter, cosines = [], {}, []
    for layer in layers:
        weight = layer_weight(weights, layer, "snapshot")
        sums, cos, d = sums_and_cosines(weight)
        p = cos if normalize else sums
        row = {"name": layer.name, "kind": layer.kind, "stage": layer.stage, "block": layer.block,
               **summarize(p), "d": d}
        if init is not None:
            row.update(distances(weight, layer_weight(init, layer, "initial weights")))
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


def layer_weight(weights: Mapping[str, Any], layer: LayerInfo, what: str):
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
                init: nn.Module | Mapping[str, Any] | None = None, include_1x1: bool = INCLUDE_1X1,
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
