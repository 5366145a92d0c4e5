"""Per-layer hyperplane statistics (docs/method.md §2) and a test of bias against the null of §3.

Pure functions compute the statistics from weight tensors or arrays, in float64:
`projections`, `summarize`, `distances`, `bias_tests`, `holm`. `analyze_layers` applies them to the
layers found by `hparr.layers.discover_layers`, `layer_stats` does both for a model, and
`SnapshotAnalyzer` turns many snapshot files into result documents quickly: the layers are
discovered once per model configuration and the weights are read straight from memory-mapped
state_dicts, so a snapshot costs the reading of its analyzed weights only. `run_projections` is the
stage behind `hparr projections` (settings in, result out) and `save` writes its result files.

The standard deviation is the population one (ddof=0). The bias test of a layer combines a two-sided
exact binomial test of its number of filters with projection <= 0 against Binomial(N, 1/2) and a
Kolmogorov-Smirnov test of its normalized projections against the exact null: (1 + t)/2 ~
Beta((d-1)/2, (d-1)/2), the cosine of a uniformly random direction in R^d. The layer's p-value is
min(1, 2 x the smaller of the two); a layer is biased when its Holm-adjusted p-value (over the
layers of the network) is <= the level, so the chance that any layer of an untrained network is
called biased is at most the level (exactly so for Gaussian initializations; for uniform ones the
null of the cosine is off by O(1/d), far below what the KS test can see with N filters).
"""
from __future__ import annotations

import functools
import logging
import math
import os
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np
import pandas as pd
import scipy
import torch
import torch.nn as nn
from scipy import stats

from . import checkpoints, files, null
from .checkpoints import ModelConfig, check_metadata, check_state, snapshot_config
from .defaults import LEVEL, check_level
from .errors import HparrError, UsageError
from .layers import LayerInfo, Skipped, discover_layers
from .layout import results_directory
from .provenance import versions
from .results import PROJECTIONS_FORMAT, document_rows, projections_table, read_json

try:  # scipy's Durbin matrix evaluation of the exact KS law (see `ks_sf`)
    from scipy.stats._ksstats import _kolmogn_DMTW
except ImportError:  # a scipy without it: its public `kstwo` alone, slower, gives the same law
    _kolmogn_DMTW = None

log = logging.getLogger("hparr.projections")

CHECKPOINT_ONLY = "checkpoint"  # the results folder of checkpoint-only projections, in place of the arch
NO_DATASET = "no-dataset"
CORRECTION = "holm"
STD_DDOF = 0


# --- the statistics --------------------------------------------------------------------------------

def filter_matrix(weight) -> torch.Tensor:
    """A layer's weight as an (N, d) float64 tensor: one row per output filter (or Linear output)."""
    w = torch.as_tensor(weight).detach()
    if w.dim() < 2:
        raise HparrError(f"a weight needs at least 2 dimensions (filters, inputs...), got shape {tuple(w.shape)}")
    return w.reshape(w.shape[0], -1).to(torch.float64)


def _sums_and_cosines(weight) -> tuple[np.ndarray, np.ndarray, int]:
    f = filter_matrix(weight)
    d = f.shape[1]
    sums = f.sum(dim=1).cpu().numpy()
    norms = torch.linalg.vector_norm(f, dim=1).cpu().numpy()
    # a filter of zeros has no orientation: its cosine is taken as 0 (it counts as <= 0)
    cos = np.divide(sums, norms * math.sqrt(d), out=np.zeros_like(sums), where=norms > 0)
    return sums, cos, d


def projections(weight, normalize: bool = True) -> np.ndarray:
    """p_j = <w_j, 1>, or with `normalize` the cosine <w_j, 1> / (||w_j||_2 sqrt(d)), one per filter."""
    sums, cos, _ = _sums_and_cosines(weight)
    return cos if normalize else sums


def summarize(p) -> dict[str, float]:
    """mean, std (population, ddof=0), mass (fraction <= 0), n_negative and N of projections `p`."""
    p = np.asarray(p, dtype=np.float64).ravel()
    if p.size == 0:
        raise HparrError("no projections to summarize")
    negative = int(np.count_nonzero(p <= 0))
    return {"N": int(p.size), "mean": float(p.mean()), "std": float(p.std(ddof=STD_DDOF)),
            "mass": negative / p.size, "n_negative": negative}


def distances(weight, init_weight) -> dict[str, float]:
    """l2_dist = ||W - W0||_F / ||W0||_F and l_inf_dist = max|W - W0| / max|W0| (docs/method.md §2)."""
    w = torch.as_tensor(weight).detach().to(torch.float64)
    w0 = torch.as_tensor(init_weight).detach().to(device=w.device, dtype=torch.float64)
    if w.shape != w0.shape:
        raise HparrError(f"initial weight has shape {tuple(w0.shape)}, not {tuple(w.shape)}")
    diff = w - w0
    return {"l2_dist": float(torch.linalg.vector_norm(diff) / torch.linalg.vector_norm(w0)),
            "l_inf_dist": float(diff.abs().max() / w0.abs().max())}


def bias_tests(cosines, d: int) -> dict[str, float]:
    """p-values of one layer under the null of docs/method.md §3.

    p_sign: two-sided exact binomial test of #(cosine <= 0) against Binomial(N, 1/2);
    p_ks: Kolmogorov-Smirnov test of the cosines against the CDF of `null.distribution(d)` (NaN when d < 2);
    p_value: min(1, k x the smallest of the k available p-values).
    """
    return bias_tests_of_layers([(cosines, d)])[0]


def bias_tests_of_layers(layers: Sequence[tuple[Any, int]]) -> list[dict[str, float]]:
    """`bias_tests` of many layers, (cosines, d) each, with one evaluation of each law for all of them.

    The values are those of `scipy.stats.binomtest(K, N, 0.5)` and `scipy.stats.kstest(cosines,
    null.distribution(d).cdf)` (exact mode), to the last bit or within a few units of it (see `sign_pvalues`
    and `ks_sf`); tests check this for every small layer size.
    """
    cos = [np.asarray(c, dtype=np.float64).ravel() for c, _ in layers]
    p_sign = sign_pvalues([np.count_nonzero(c <= 0) for c in cos], [c.size for c in cos]).tolist()
    tested = [i for i, (_, d) in enumerate(layers) if d >= 2]
    p_ks = [float("nan")] * len(layers)
    if tested:
        x = [np.sort(cos[i]) for i in tested]
        sizes = [c.size for c in x]
        f = null.cdf(np.concatenate(x), np.repeat([layers[i][1] for i in tested], sizes))  # all layers at once
        stat = [ks_statistic(part) for part in np.split(f, np.cumsum(sizes)[:-1])]
        p = ks_sf(stat, sizes)
        for i, value in zip(tested, p.tolist()):
            p_ks[i] = value
    out = []
    for ps, pk in zip(p_sign, p_ks):
        available = [p for p in (ps, pk) if not math.isnan(p)]
        out.append({"p_sign": ps, "p_ks": pk, "p_value": min(1.0, len(available) * min(available))})
    return out


def sign_pvalues(negative, n) -> np.ndarray:
    """Two-sided exact binomial test of K = `negative` filters <= 0 among N = `n` against Binomial(N, 1/2),
    elementwise. That law is symmetric, so the outcomes no likelier than K are those at most min(K, N - K)
    and their mirror images: p = min(1, 2 P(X <= min(K, N - K))), and 1 at K = N/2 (`scipy.stats.binomtest`'s
    p-value to within 2e-15, in one call for many layers)."""
    k, n = np.asarray(negative), np.asarray(n)
    p = np.minimum(1.0, 2 * stats.binom.cdf(np.minimum(k, n - k), n, 0.5))
    return np.where(2 * k == n, 1.0, p)


def ks_sf(stat, n) -> np.ndarray:
    """P(D_N >= D): the exact law of the two-sided KS statistic D of N values (`scipy.stats.kstwo.sf`, the
    law of `kstest`'s exact mode), elementwise. Where scipy evaluates it by Pomeranz's recursion (N <= 140,
    1 < ND < N - 1, D < 1/2 and 0.754693 < ND^2 <= 4; a Python loop of 2N + 2 steps, near a millisecond for
    N = 64), scipy's Durbin matrix evaluation of the same law (Marsaglia, Tsang & Wang 2003) is used
    instead: ten times faster, and equal to within 1e-13 there, where the p-values are above 3e-4 (a test
    checks every N of that range)."""
    stat, n = np.broadcast_arrays(np.asarray(stat, dtype=np.float64), np.asarray(n))
    shape, stat, n = stat.shape, stat.ravel(), n.ravel()
    t = n * stat
    durbin = (n <= 140) & (t > 1) & (t < n - 1) & (stat < 0.5) & (t * stat > 0.754693) & (t * stat <= 4)
    if _kolmogn_DMTW is None:
        durbin[:] = False
    p = np.empty(stat.shape)
    if not durbin.all():
        p[~durbin] = stats.kstwo.sf(stat[~durbin], n[~durbin])
    for i in np.flatnonzero(durbin):
        p[i] = _kolmogn_DMTW(int(n[i]), float(stat[i]), cdf=False)
    return np.clip(p, 0.0, 1.0).reshape(shape)


def ks_statistic(cdf) -> float:
    """D = max(D+, D-) = sup_t |F_N(t) - F(t)| of a sample, from the null CDF F at its sorted values `cdf`."""
    cdf = np.asarray(cdf, dtype=np.float64)
    n = cdf.size
    d_plus = float((np.arange(1.0, n + 1) / n - cdf).max())
    d_minus = float((cdf - np.arange(0.0, n) / n).max())
    return d_plus if d_plus > d_minus else d_minus


def holm(pvalues) -> np.ndarray:
    """Holm's step-down adjusted p-values (NaN entries stay NaN and do not count)."""
    p = np.asarray(pvalues, dtype=np.float64)
    out = np.full(p.shape, np.nan)
    idx = np.flatnonzero(~np.isnan(p))
    order = idx[np.argsort(p[idx], kind="stable")]
    m = len(order)
    running = 0.0
    for rank, i in enumerate(order):
        running = max(running, min(1.0, (m - rank) * p[i]))
        out[i] = running
    return out


# --- tables ----------------------------------------------------------------------------------------

@dataclass
class LayerStats:
    """The statistics of a network's analyzed layers.

    columns: the per-layer values, column -> one value per layer, in layer order (name, kind, stage, block, N,
    d, mean, std, mass, n_negative, p_sign, p_ks, p_value, p_adjusted, biased[, l2_dist, l_inf_dist]), and
    `table` the same as a DataFrame (made on first use); projections: each layer's per-filter projections
    by name; net: the network summary over the pooled projections (N, mean, std, mass, n_negative,
    n_layers, n_biased, p_value, biased); skipped: the conv/linear layers not analyzed and why; and the
    test settings.
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

    @functools.cached_property
    def table(self) -> pd.DataFrame:
        """One row per layer."""
        return pd.DataFrame(self.columns)


def analyze_layers(layers: Sequence[LayerInfo], weights: Mapping[str, Any], normalize: bool = True,
                   init: Mapping[str, Any] | None = None, level: float = LEVEL,
                   skipped: Sequence[Skipped] = ()) -> LayerStats:
    """The statistics and bias tests of `layers`, from weight tensors keyed like a state_dict
    (`layer.weight_key`); `init` (weights at initialization, same keys) adds the distances."""
    check_level(level, "the test level")
    if not layers:
        raise HparrError("no layers to analyze (every conv layer is skipped; try --with-linear or --include-1x1)")
    rows, per_filter, cosines = [], {}, []
    for layer in layers:
        weight = _weight(weights, layer, "snapshot")
        sums, cos, d = _sums_and_cosines(weight)
        p = cos if normalize else sums
        row = {"name": layer.name, "kind": layer.kind, "stage": layer.stage, "block": layer.block,
               **summarize(p), "d": d}
        if init is not None:
            row.update(distances(weight, _weight(init, layer, "initial weights")))
        per_filter[layer.name] = p
        cosines.append((cos, d))
        rows.append(row)
    for row, tests in zip(rows, bias_tests_of_layers(cosines)):
        row.update(tests)
    p_adjusted = holm([row["p_value"] for row in rows])
    columns = ["name", "kind", "stage", "block", "N", "d", "mean", "std", "mass", "n_negative",
               "p_sign", "p_ks", "p_value"]
    table = {c: [row[c] for row in rows] for c in columns}
    table.update(p_adjusted=p_adjusted.tolist(), biased=(p_adjusted <= level).tolist())
    if init is not None:
        table.update({c: [row[c] for row in rows] for c in ("l2_dist", "l_inf_dist")})
    pooled = np.concatenate(list(per_filter.values()))
    tested = [p for p in table["p_value"] if not math.isnan(p)]
    net = {**summarize(pooled), "n_layers": len(rows), "n_biased": sum(table["biased"]),
           "p_value": min(1.0, len(tested) * min(tested)) if tested else float("nan"),
           "biased": any(table["biased"])}
    return LayerStats(table, per_filter, net, skipped=[vars(s).copy() for s in skipped], level=level,
                      normalize=normalize,
                      layer_order="forward" if all(layer.traced for layer in layers) else "modules")


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
                input_shape: Sequence[int] | None = None, level: float = LEVEL) -> LayerStats:
    """Statistics and bias tests of every analyzed layer of `model` (see `analyze_layers`); `.table` is
    the per-layer DataFrame and `.net` the network summary.

    Layers come from `discover_layers(model, input_shape, with_linear, include_1x1)`; `init` (a model
    or a state_dict of the same architecture) adds the distances from initialization.
    """
    layers, skipped = discover_layers(model, input_shape, with_linear=with_linear, include_1x1=include_1x1)
    return analyze_layers(layers, weights_of(model), normalize=normalize,
                          init=None if init is None else weights_of(init), level=level, skipped=skipped)


# --- result documents (the original JSON layout plus new fields) and tidy rows ----------------------

LAYER_FIELDS = ("name", "kind", "N", "d", "std", "n_negative", "p_sign", "p_ks", "p_value", "p_adjusted", "biased")


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
        entry.update({k: row[k] for k in LAYER_FIELDS})
        if residual:
            entry["block"] = int(row["block"])
        doc.setdefault(str(row["stage"]), {})[str(position[i] if residual else row["block"])] = entry
    net = dict(stats_.net)
    pooled = np.concatenate(list(stats_.projections.values()))
    doc["net"] = {"projections": pooled, "mean": net.pop("mean"), "mass": net.pop("mass"), **net}
    doc.update(fields)
    doc.update(format=PROJECTIONS_FORMAT, level=stats_.level, correction=stats_.correction,
               normalize=stats_.normalize, std_ddof=stats_.std_ddof, layer_order=stats_.layer_order,
               skipped=stats_.skipped)
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

    def as_dict(self) -> dict[str, Any]:
        return {"normalize": self.normalize, "with_linear": self.with_linear, "include_1x1": self.include_1x1,
                "level": self.level, "init_from": self.init_from}


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


class SnapshotAnalyzer:
    """Result documents for many snapshots of one architecture.

    The model of each configuration (class count, input channels, size) is built once to discover its
    layers; a snapshot is then read memory-mapped and only its analyzed weights are touched.
    `context` (dataset, seed, ...) is copied into every document; snapshots whose metadata names another
    architecture, `dataset` or `seed` are refused.
    """

    def __init__(self, default: ModelConfig, options: AnalysisOptions, context: Mapping[str, Any] | None = None,
                 device: str | torch.device = "cpu", init_state: Mapping[str, Any] | None = None,
                 dataset: str | None = None, seed: int | None = None, state_dict_prefix: str | None = None):
        self.default = default
        self.prefix = state_dict_prefix
        self.dataset, self.seed = dataset, seed
        self.options = options
        self.context = dict(context or {})
        self.device = torch.device(device)
        self.init_state = init_state
        self._plans: dict[ModelConfig, tuple[list[LayerInfo], list[Skipped], dict[str, tuple[int, ...]]]] = {}

    def plan(self, config: ModelConfig, model: nn.Module | None = None):
        """(layers, skipped, reference shapes) of a configuration, built on first use."""
        if config not in self._plans:
            from .models import build_model

            if model is None:
                model = build_model(config.arch, config.num_classes, config.in_channels, config.input_size, seed=0)
            layers, skipped = discover_layers(model, (2, config.in_channels, config.input_size, config.input_size),
                                              with_linear=self.options.with_linear,
                                              include_1x1=self.options.include_1x1)
            reference = {k: tuple(v.shape) for k, v in model.state_dict().items()}
            self._plans[config] = (layers, skipped, reference)
        return self._plans[config]

    def _document(self, config: ModelConfig, state: Mapping[str, Any], layers, skipped,
                  checkpoint: Path | None = None, **fields) -> dict[str, Any]:
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
                                level=self.options.level, skipped=skipped)
        if config.arch is None:
            stats_.layer_order = FILE_ORDER
        return projection_document(
            stats_, **self.context, **fields, num_classes=config.num_classes, in_channels=config.in_channels,
            input_size=config.input_size, with_linear=self.options.with_linear,
            include_1x1=self.options.include_1x1, init_from=self.options.init_from, **identity,
            versions={**versions(), "scipy": scipy.__version__})

    def analyze_file(self, path: str | os.PathLike) -> dict[str, Any]:
        """The result document of one snapshot file (plain state_dict, original .tar, or `hparr train`'s)."""
        path = Path(path)
        ckpt = checkpoints.read_checkpoint(path)
        obj = ckpt.obj
        check_metadata(obj, str(path), self.dataset, self.seed)
        if self.default.arch is None:  # no model: every conv weight of the file, in the file's order
            config = self.default
            state = checkpoints.match_prefix(ckpt.state, None, self.prefix, source=str(path))
            layers, skipped = file_layers(state, self.options, str(path))
        else:
            config = snapshot_config(obj, self.default, str(path))
            layers, skipped, reference = self.plan(config)
            state = checkpoints.match_prefix(ckpt.state, reference, self.prefix, source=str(path))
            check_state(reference, checkpoints.shapes_of(state), str(path))
        meta = obj if isinstance(obj, dict) else {}
        extra = {k: meta[k] for k in ("seeds", "dataset", "top1_acc", "top5_acc") if k in meta}
        normalization = checkpoints.recorded_normalization(meta)
        if normalization is not None:
            extra["normalization"] = normalization
        extra = {f"snapshot_{k}": v for k, v in extra.items()}
        epoch = checkpoints.snapshot_epoch_or_none(obj, path)
        return self._document(config, state, layers, skipped, checkpoint=path, stem=path.stem,
                              epoch=None if epoch is None else str(epoch), checkpoint_format=ckpt.format, **extra)

    def analyze_model(self, model: nn.Module, stem: str, epoch: int, source: str, **fields) -> dict[str, Any]:
        """The result document of an in-memory model (random initialization, pretrained weights)."""
        config = self.default
        self._plans.pop(config, None)
        layers, skipped, _ = self.plan(config, model)
        return self._document(config, model.state_dict(), layers, skipped, stem=stem, source=source,
                              epoch=str(epoch), **fields)


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


# --- the stage behind `hparr projections` -----------------------------------------------------------

@dataclass
class ProjectionSettings:
    """Every option of `hparr projections` (the original compute_projections.py flags and the new ones).

    `load_from`: snapshot files, directories or globs, in any checkpoint format of
    `checkpoints.read_checkpoint`; none analyzes the random initialization of `arch` with `seed` (or, with
    `pretrained`, the ImageNet weights; `weights`: their file, which implies `pretrained`).
    `state_dict_prefix` selects the keys under a prefix (found automatically otherwise).
    """

    arch: str | None  # None: checkpoint-only (every conv weight of the --load-from files, no model)
    dataset: str | None
    load_from: str | os.PathLike | Sequence[str | os.PathLike] | None = None
    init_from: str | None = None
    seed: int | None = None
    subsample_classes: int = 0
    normalize: bool = True
    with_linear: bool = False
    include_1x1: bool = False
    level: float = LEVEL
    pretrained: bool = False
    weights: str | None = None
    state_dict_prefix: str | None = None
    device: str | torch.device = "cpu"
    overwrite: bool = False
    progress: bool = True
    num_classes: int | None = None  # overrides of what the dataset implies (None: the dataset's)
    in_channels: int | None = None
    input_size: int | None = None

    @property
    def relpath(self) -> Path:
        """The folder of the results below a results folder: <dataset>[_<k>]/<arch>[/<seed>], where a
        checkpoint-only run's arch is "checkpoint" and a run without a dataset's is "no-dataset"."""
        return results_directory("", self.dataset or NO_DATASET, self.arch or CHECKPOINT_ONLY, self.seed,
                                 self.subsample_classes)

    def model_config(self) -> ModelConfig:
        """The model's class count, input channels and size: the overrides, else the dataset's."""
        if self.dataset is None:
            missing = [f for f, v in (("--num-classes", self.num_classes), ("--in-channels", self.in_channels),
                                      ("--input-size", self.input_size)) if v is None]
            if self.arch is not None and missing:
                raise UsageError(f"--arch {self.arch} without --dataset needs {', '.join(missing)}")
            return ModelConfig(self.arch, self.num_classes, self.in_channels, self.input_size)  # None: unknown
        from .data import dataset_info

        info = dataset_info(self.dataset)
        return ModelConfig(self.arch, self.num_classes or self.subsample_classes or info.num_classes,
                           self.in_channels or info.in_channels, self.input_size or info.image_size)

    def options(self) -> AnalysisOptions:
        init_from = str(Path(self.init_from).resolve()) if self.init_from else None
        return AnalysisOptions(normalize=self.normalize, with_linear=self.with_linear,
                               include_1x1=self.include_1x1, level=self.level, init_from=init_from)


@dataclass
class ProjectionsResult:
    """The documents of a projections run, by file name (`<snapshot stem>.json`), and which of them this run
    computed (the others were kept from an earlier run with the same options)."""

    relpath: Path
    options: AnalysisOptions
    documents: dict[str, dict[str, Any]]
    computed: list[str]
    replaced: dict[str, str] = field(default_factory=dict)  # name -> why its earlier result was not reused

    @property
    def n_biased(self) -> int:
        return sum(int(d["net"]["n_biased"]) for d in self.documents.values())


def run_projections(settings: ProjectionSettings, root: str | os.PathLike | None = None) -> ProjectionsResult:
    """Analyze the snapshots of `settings`; results already in the results folder `root` made with the same
    options are kept (unless `settings.overwrite`) instead of computed again."""
    from tqdm import tqdm

    from .checkpoints import find_snapshots
    from .models import build_model, pretrained_file

    s = settings
    options = s.options()
    config = s.model_config()
    shape = (config.num_classes, config.in_channels, config.input_size)
    analyzer = SnapshotAnalyzer(
        config, options,
        context={"arch": s.arch, "dataset": s.dataset, "seed": None if s.seed is None else str(s.seed)},
        device=s.device, init_state=load_init_state(options.init_from) if options.init_from else None,
        dataset=s.dataset, seed=s.seed, state_dict_prefix=s.state_dict_prefix)
    pretrained = s.pretrained or s.weights is not None
    if s.arch is None and not s.load_from:
        raise UsageError("--arch is required unless --load-from names the checkpoints to analyze")
    if s.load_from:
        paths = find_snapshots(s.load_from)
        stems = [p.stem for p in paths]
        twice = sorted({t for t in stems if stems.count(t) > 1})
        if twice:
            raise UsageError(f"several snapshots are named {', '.join(twice)}: their results would overwrite "
                             "each other; analyze them into different --results folders")
        jobs = [(p.stem, p) for p in paths]
    else:
        jobs = [(f"{'pretrained' if pretrained else 'init'}_{s.arch}", None)]

    out_dir = Path(root) / s.relpath if root is not None else None
    docs: dict[str, dict[str, Any]] = {}
    computed: list[str] = []
    replaced: dict[str, str] = {}
    # what changes the numbers besides the options: the model's configuration, and for a model without a
    # file the seed of its initialization or the pretrained weights (a file's tensors are compared by hash)
    fields: dict[str, Any] = {"arch": s.arch, "num_classes": config.num_classes, "in_channels": config.in_channels,
                              "input_size": config.input_size}
    for stem, path in tqdm(jobs, desc="projections", unit="snapshot", file=sys.stderr,
                           disable=not s.progress or not sys.stderr.isatty()):
        name = f"{stem}.json"
        doc = why = None
        if not s.overwrite and out_dir is not None:
            wanted = dict(fields)
            if path is None and pretrained:
                wanted["source"] = str(Path(s.weights).resolve()) if s.weights else str(pretrained_file(s.arch))
            elif path is None:
                wanted["init_seed"] = 0 if s.seed is None else s.seed
            if path is not None:  # a snapshot may record its own configuration; its tensors are compared
                wanted = {"arch": s.arch}
            doc, why = reusable_result(out_dir / name, options, wanted, checkpoint=path,
                                       init_from=options.init_from, state_dict_prefix=s.state_dict_prefix)
            if why is not None:
                replaced[name] = why
                log.info("recomputing %s: %s", out_dir / name, why)
        if doc is None:
            if path is not None:
                doc = analyzer.analyze_file(path)
            elif pretrained:
                model = build_model(s.arch, *shape, pretrained=True, weights=s.weights,
                                    state_dict_prefix=s.state_dict_prefix)
                doc = analyzer.analyze_model(model, stem, -1, str(Path(s.weights).resolve()) if s.weights
                                             else str(pretrained_file(s.arch)))
            else:
                init_seed = 0 if s.seed is None else s.seed
                doc = analyzer.analyze_model(build_model(s.arch, *shape, seed=init_seed), stem, 0,
                                             f"random initialization (seed {init_seed})", init_seed=init_seed)
            computed.append(name)
            for line in log_lines(doc):
                log.debug(line)
        docs[name] = doc
    return ProjectionsResult(s.relpath, options, docs, computed, replaced)


def save(result: ProjectionsResult, root: str | os.PathLike, parquet: bool = False,
         log_name: str | None = "positive_orthant.log") -> Path:
    """Write the documents this run computed to `root`/<dataset>[_<k>]/<arch>[/<seed>]/<stem>.json, the
    tidy table of every document in that folder made with the same options (`projections.csv`, and
    `.parquet` with `parquet`), and append their summary lines to the log file there. Returns the folder."""
    out_dir = Path(root) / result.relpath
    with files.log_to(out_dir / log_name if log_name else None) as note:
        for name in result.computed:
            files.write_json(out_dir / name, result.documents[name])
            for line in log_lines(result.documents[name]):
                note(line)
    table = table_of(result, root)
    with files.atomic_path(out_dir / "projections.csv") as tmp:
        table.to_csv(tmp, index=False)
    if parquet:
        with files.atomic_path(out_dir / "projections.parquet") as tmp:
            table.to_parquet(tmp, index=False)
    return out_dir


def table_of(result: ProjectionsResult, root: str | os.PathLike) -> pd.DataFrame:
    """The tidy table of a run's documents and of the others in its results folder made with the same options."""
    out_dir = Path(root) / result.relpath
    return projections_table(collect_results(out_dir, result.options,
                                             {out_dir / n: d for n, d in result.documents.items()}))
