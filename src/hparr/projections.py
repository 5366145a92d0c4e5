"""Per-layer hyperplane statistics (method.md §2) and a test of bias against the null of §3.

Pure functions compute the statistics from weight tensors or arrays, in float64:
`projections`, `summarize`, `distances`, `bias_tests`, `holm`. `layer_table` applies them to the
layers found by `hparr.layers.discover_layers`, `layer_stats` does both for a model, and
`SnapshotAnalyzer` turns many snapshot files into result documents quickly: the layers are
discovered once per model configuration and the weights are read straight from memory-mapped
state_dicts, so a snapshot costs the reading of its analyzed weights only.

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

import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence

import numpy as np
import pandas as pd
import scipy
import torch
import torch.nn as nn
from scipy import special, stats

from . import checkpoints
from .checkpoints import (ModelConfig, check_metadata, check_state,  # noqa: F401 - public here too
                          results_directory, snapshot_config)
from .errors import HparrError, UsageError
from .layers import LayerInfo, Skipped, discover_layers
from .provenance import versions

DEFAULT_LEVEL = 0.05
CORRECTION = "holm"
STD_DDOF = 0
FORMAT = "hparr-projections-1"


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
    sums = f.sum(dim=1)
    norms = torch.linalg.vector_norm(f, dim=1)
    # a filter of zeros has no orientation: its cosine is taken as 0 (it counts as <= 0)
    cos = torch.where(norms > 0, sums / (norms * math.sqrt(d)), torch.zeros_like(sums))
    return sums.cpu().numpy(), cos.cpu().numpy(), d


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
    """l2_dist = ||W - W0||_F / ||W0||_F and l_inf_dist = max|W - W0| / max|W0| (method.md §2)."""
    w = torch.as_tensor(weight).detach().to(torch.float64)
    w0 = torch.as_tensor(init_weight).detach().to(device=w.device, dtype=torch.float64)
    if w.shape != w0.shape:
        raise HparrError(f"initial weight has shape {tuple(w0.shape)}, not {tuple(w.shape)}")
    diff = w - w0
    return {"l2_dist": float(torch.linalg.vector_norm(diff) / torch.linalg.vector_norm(w0)),
            "l_inf_dist": float(diff.abs().max() / w0.abs().max())}


def null_cdf(t, d: int) -> np.ndarray:
    """CDF of the cosine between a uniformly random direction of R^d and a fixed one (d >= 2)."""
    a = (d - 1) / 2
    return special.betainc(a, a, np.clip((1 + np.asarray(t, dtype=np.float64)) / 2, 0.0, 1.0))


def bias_tests(cosines, d: int) -> dict[str, float]:
    """p-values of one layer under the null of method.md §3.

    p_sign: two-sided exact binomial test of #(cosine <= 0) against Binomial(N, 1/2);
    p_ks: Kolmogorov-Smirnov test of the cosines against `null_cdf` (NaN when d < 2);
    p_value: min(1, k x the smallest of the k available p-values).
    """
    c = np.asarray(cosines, dtype=np.float64).ravel()
    n = c.size
    p_sign = float(stats.binomtest(int(np.count_nonzero(c <= 0)), n, 0.5).pvalue)
    p_ks = float(stats.kstest(c, lambda x: null_cdf(x, d)).pvalue) if d >= 2 else float("nan")
    available = [p for p in (p_sign, p_ks) if not math.isnan(p)]
    return {"p_sign": p_sign, "p_ks": p_ks, "p_value": min(1.0, len(available) * min(available))}


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

def layer_table(layers: Sequence[LayerInfo], weights: Mapping[str, Any], normalize: bool = True,
                init: Mapping[str, Any] | None = None, level: float = DEFAULT_LEVEL,
                skipped: Sequence[Skipped] = ()) -> pd.DataFrame:
    """One row per layer from weight tensors keyed like a state_dict (`layer.weight_key`).

    Columns: name, kind, stage, block, N, d, mean, std, mass, n_negative, p_sign, p_ks, p_value,
    p_adjusted, biased, [l2_dist, l_inf_dist when `init` is given], projections (an array per row).
    `df.attrs` holds the network summary ("net"), the skipped layers and the test settings.
    """
    if not 0 < level < 1:
        raise UsageError(f"the test level must be in (0, 1), got {level}")
    if not layers:
        raise HparrError("no layers to analyze (every conv layer is skipped; try --with-linear or --include-1x1)")
    rows = []
    for layer in layers:
        weight = _weight(weights, layer, "snapshot")
        sums, cos, d = _sums_and_cosines(weight)
        p = cos if normalize else sums
        row = {"name": layer.name, "kind": layer.kind, "stage": layer.stage, "block": layer.block, "d": d,
               **summarize(p), **bias_tests(cos, d)}
        if init is not None:
            row.update(distances(weight, _weight(init, layer, "initial weights")))
        row["projections"] = p
        rows.append(row)
    df = pd.DataFrame(rows)
    df["p_adjusted"] = holm(df["p_value"].to_numpy())
    df["biased"] = df["p_adjusted"] <= level
    first = ["name", "kind", "stage", "block", "N", "d", "mean", "std", "mass", "n_negative",
             "p_sign", "p_ks", "p_value", "p_adjusted", "biased"]
    df = df[first + [c for c in df.columns if c not in first]]
    pooled = np.concatenate(list(df["projections"]))
    tested = df["p_value"].dropna()
    net = {**summarize(pooled), "n_layers": len(df), "n_biased": int(df["biased"].sum()),
           "p_value": min(1.0, len(tested) * float(tested.min())) if len(tested) else float("nan"),
           "biased": bool(df["biased"].any()), "projections": pooled}
    df.attrs.update(net=net, skipped=[vars(s).copy() for s in skipped], level=level, correction=CORRECTION,
                    normalize=normalize, std_ddof=STD_DDOF,
                    layer_order="forward" if all(layer.traced for layer in layers) else "modules")
    return df


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
                input_shape: Sequence[int] | None = None, level: float = DEFAULT_LEVEL) -> pd.DataFrame:
    """Statistics and bias tests of every analyzed layer of `model` (see `layer_table`).

    Layers come from `discover_layers(model, input_shape, with_linear, include_1x1)`; `init` (a model
    or a state_dict of the same architecture) adds the distances from initialization.
    """
    layers, skipped = discover_layers(model, input_shape, with_linear=with_linear, include_1x1=include_1x1)
    return layer_table(layers, weights_of(model), normalize=normalize,
                       init=None if init is None else weights_of(init), level=level, skipped=skipped)


# --- result documents (the original JSON layout plus new fields) and tidy rows ----------------------

LAYER_FIELDS = ("name", "kind", "N", "d", "std", "n_negative", "p_sign", "p_ks", "p_value", "p_adjusted", "biased")


def _plain(x: Any) -> Any:
    """JSON-ready value: numpy scalars to Python, NaN to None."""
    if isinstance(x, np.ndarray):
        if x.dtype.kind != "f" or not np.isnan(x).any():
            return x.tolist()
        return [_plain(v) for v in x.tolist()]
    if isinstance(x, (np.generic,)):
        x = x.item()
    if isinstance(x, float) and math.isnan(x):
        return None
    return x


def result_document(df: pd.DataFrame, **fields: Any) -> dict[str, Any]:
    """The original `stage -> block -> {projections, mean, mass[, l2_dist, l_inf_dist]}` + `net` layout,
    with the new per-layer fields and the test settings; `fields` (arch, dataset, seed, epoch, ...) are added.
    In a residual network the key under a stage is the layer's position in it, and `block` is an entry field."""
    doc: dict[str, Any] = {}
    has_dist = "l2_dist" in df.columns
    # In a residual network several layers share a block: they are keyed by their position in the stage,
    # and every entry records its block (in the paper's networks the two are the same).
    position = df.groupby("stage").cumcount().tolist()
    residual = any(int(b) != p for b, p in zip(df["block"], position))
    for i, row in enumerate(df.itertuples(index=False)):
        row = row._asdict()
        entry = {"projections": _plain(row["projections"]), "mean": row["mean"], "mass": row["mass"]}
        if has_dist:
            entry.update(l2_dist=row["l2_dist"], l_inf_dist=row["l_inf_dist"])
        entry.update({k: _plain(row[k]) for k in LAYER_FIELDS})
        if residual:
            entry["block"] = int(row["block"])
        doc.setdefault(str(row["stage"]), {})[str(position[i] if residual else row["block"])] = entry
    net = dict(df.attrs["net"])
    doc["net"] = {"projections": _plain(net.pop("projections")), "mean": net.pop("mean"), "mass": net.pop("mass"),
                  **{k: _plain(v) for k, v in net.items()}}
    doc.update({k: _plain(v) for k, v in fields.items()})
    doc.update(format=FORMAT, level=df.attrs["level"], correction=CORRECTION, normalize=df.attrs["normalize"],
               std_ddof=STD_DDOF, layer_order=df.attrs["layer_order"], skipped=df.attrs["skipped"])
    return doc


ROW_CONTEXT = ("stem", "source", "arch", "dataset", "seed", "epoch", "normalize", "level")


def document_rows(doc: Mapping[str, Any]) -> list[dict[str, Any]]:
    """Tidy rows (one per layer, plus a `kind == "net"` row) of a result document, without the projections."""
    context = {k: doc.get(k) for k in ROW_CONTEXT}
    try:
        context["epoch"] = int(context["epoch"])
    except (TypeError, ValueError):
        pass
    rows = []
    for stage in sorted((k for k in doc if k.isdigit()), key=int):
        for block in sorted(doc[stage], key=int):
            entry = doc[stage][block]
            rows.append({**context, "stage": int(stage), "block": int(block),
                         **{k: v for k, v in entry.items() if k != "projections"}})
    net = doc["net"]
    rows.append({**context, "name": "net", "kind": "net", "stage": None, "block": None,
                 **{k: v for k, v in net.items() if k not in ("projections",)}})
    return rows


def results_table(docs: Iterable[Mapping[str, Any]]) -> pd.DataFrame:
    """The tidy table of many documents, sorted by epoch then layer order."""
    rows = [r for doc in docs for r in document_rows(doc)]
    df = pd.DataFrame(rows)
    if df.empty:
        return df
    first = [c for c in (*ROW_CONTEXT, "name", "kind", "stage", "block", "N", "d", "mean", "std", "mass",
                         "n_negative", "p_sign", "p_ks", "p_value", "p_adjusted", "biased", "l2_dist",
                         "l_inf_dist") if c in df.columns]
    df = df[first + [c for c in df.columns if c not in first]]
    for col in ("stage", "block", "N", "d", "n_negative", "n_layers", "n_biased"):
        if col in df.columns:
            df[col] = pd.to_numeric(df[col]).astype("Int64")
    df["_net"] = df["kind"] == "net"
    df["_epoch"] = pd.to_numeric(df["epoch"], errors="coerce")
    df = df.sort_values(["_epoch", "stem", "_net", "stage", "block"], kind="stable", na_position="last")
    return df.drop(columns=["_net", "_epoch"]).reset_index(drop=True)


# --- many snapshots ---------------------------------------------------------------------------------

@dataclass(frozen=True)
class Settings:
    """What changes the numbers of a result: compared before a result on disk is reused."""

    normalize: bool = True
    with_linear: bool = False
    include_1x1: bool = False
    level: float = DEFAULT_LEVEL
    init_from: str | None = None

    def as_dict(self) -> dict[str, Any]:
        return {"normalize": self.normalize, "with_linear": self.with_linear, "include_1x1": self.include_1x1,
                "level": self.level, "init_from": self.init_from}


def reusable_result(path: str | os.PathLike, settings: Settings) -> dict[str, Any] | None:
    """The result document at `path` if it exists and was made with `settings`; None if there is none.

    A document made with other settings raises a UsageError (keeping it would mix settings).
    """
    import json

    path = Path(path)
    if not path.is_file():
        return None
    try:
        doc = json.loads(path.read_text())
    except (OSError, ValueError):
        return None  # unreadable: compute it again
    if not isinstance(doc, dict) or doc.get("format") != FORMAT or "net" not in doc:
        return None
    differ = [f"{k}={doc.get(k)!r}" for k, v in settings.as_dict().items() if doc.get(k) != v]
    if differ:
        raise UsageError(f"{path} was computed with other settings ({', '.join(differ)}); "
                         "pass --overwrite to replace it, or choose another --results directory")
    return doc


class SnapshotAnalyzer:
    """Result documents for many snapshots of one architecture.

    The model of each configuration (class count, input channels, size) is built once to discover its
    layers; a snapshot is then read memory-mapped and only its analyzed weights are touched.
    `context` (dataset, seed, ...) is copied into every document; snapshots whose metadata names another
    architecture, `dataset` or `seed` are refused.
    """

    def __init__(self, default: ModelConfig, settings: Settings, context: Mapping[str, Any] | None = None,
                 device: str | torch.device = "cpu", init_state: Mapping[str, Any] | None = None,
                 dataset: str | None = None, seed: int | None = None, state_dict_prefix: str | None = None):
        self.default = default
        self.prefix = state_dict_prefix
        self.dataset, self.seed = dataset, seed
        self.settings = settings
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
                                              with_linear=self.settings.with_linear,
                                              include_1x1=self.settings.include_1x1)
            reference = {k: tuple(v.shape) for k, v in model.state_dict().items()}
            self._plans[config] = (layers, skipped, reference)
        return self._plans[config]

    def _document(self, config: ModelConfig, state: Mapping[str, Any], layers, skipped, **fields) -> dict[str, Any]:
        weights = {layer.weight_key: state[layer.weight_key].to(self.device) for layer in layers}
        init = None
        if self.init_state is not None:
            init_state = checkpoints.match_prefix(self.init_state, [layer.weight_key for layer in layers],
                                                  self.prefix, source="--init-from")
            init = {layer.weight_key: _weight(init_state, layer, "--init-from").to(self.device)
                    for layer in layers}
        df = layer_table(layers, weights, normalize=self.settings.normalize, init=init,
                         level=self.settings.level, skipped=skipped)
        return result_document(
            df, **self.context, **fields, num_classes=config.num_classes, in_channels=config.in_channels,
            input_size=config.input_size, with_linear=self.settings.with_linear,
            include_1x1=self.settings.include_1x1, init_from=self.settings.init_from,
            versions={**versions(), "scipy": scipy.__version__})

    def analyze_file(self, path: str | os.PathLike) -> dict[str, Any]:
        """The result document of one snapshot file (plain state_dict, original .tar, or `hparr train`'s)."""
        path = Path(path)
        ckpt = checkpoints.read_checkpoint(path)
        obj = ckpt.obj
        config = snapshot_config(obj, self.default, str(path))
        check_metadata(obj, str(path), self.dataset, self.seed)
        layers, skipped, reference = self.plan(config)
        state = checkpoints.match_prefix(ckpt.state, reference, self.prefix, source=str(path))
        check_state(reference, checkpoints.shapes_of(state), str(path))
        meta = obj if isinstance(obj, dict) else {}
        extra = {k: meta[k] for k in ("seeds", "normalization", "dataset", "top1_acc", "top5_acc") if k in meta}
        extra = {f"snapshot_{k}": _jsonable(v) for k, v in extra.items()}
        epoch = checkpoints.snapshot_epoch_or_none(obj, path)
        return self._document(config, state, layers, skipped, stem=path.stem, source=str(path.resolve()),
                              epoch=None if epoch is None else str(epoch), checkpoint_format=ckpt.format, **extra)

    def analyze_model(self, model: nn.Module, stem: str, epoch: int, source: str, **fields) -> dict[str, Any]:
        """The result document of an in-memory model (random initialization, pretrained weights)."""
        config = self.default
        self._plans.pop(config, None)
        layers, skipped, _ = self.plan(config, model)
        return self._document(config, model.state_dict(), layers, skipped, stem=stem, source=source,
                              epoch=str(epoch), **fields)


def _jsonable(value: Any) -> Any:
    if isinstance(value, torch.Tensor):
        return value.tolist()
    if isinstance(value, Mapping):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, (str, int, float, bool)) or value is None:
        return _plain(value)
    return str(value)


def collect_results(directory: str | os.PathLike, settings: Settings,
                    known: Mapping[Path, Mapping[str, Any]] | None = None) -> list[Mapping[str, Any]]:
    """`known` documents plus every other result document in `directory` made with `settings`."""
    import json

    known = dict(known or {})
    docs = list(known.values())
    seen = {Path(p).resolve() for p in known}
    for path in sorted(Path(directory).glob("*.json")):
        if path.name.startswith(".") or path.resolve() in seen:
            continue
        try:
            doc = json.loads(path.read_text())
        except (OSError, ValueError):
            continue
        if isinstance(doc, dict) and doc.get("format") == FORMAT and \
                all(doc.get(k) == v for k, v in settings.as_dict().items()):
            docs.append(doc)
    return docs


def log_lines(doc: Mapping[str, Any]) -> list[str]:
    """Human-readable lines of one result document, for the log file."""
    head = f"{doc.get('stem')} (epoch {doc.get('epoch')})"
    lines = []
    for row in document_rows(doc):
        where = "net" if row["kind"] == "net" else f"stage {row['stage']} block {row['block']} {row['name']}"
        p = row.get("p_adjusted", row.get("p_value"))
        lines.append(f"{head} {where}: mean {row['mean']:.6g} mass {row['mass']:.4f} N {row['N']} "
                     f"p {p if p is None else format(p, '.3g')}{' BIASED' if row['biased'] else ''}")
    return lines


def load_init_state(path: str | os.PathLike) -> Mapping[str, torch.Tensor]:
    """The weights of an initialization snapshot (`--init-from`, any checkpoint format), memory-mapped."""
    return checkpoints.read_checkpoint(path).state


def analyze_snapshots(arch: str, dataset: str, results: str | os.PathLike, load_from=None,
                      init_from: str | None = None, seed: int | None = None, subsample_classes: int = 0,
                      normalize: bool = True, with_linear: bool = False, include_1x1: bool = False,
                      level: float = 0.05, pretrained: bool = False, device: str | torch.device = "cpu",
                      overwrite: bool = False, parquet: bool = False, log: str = "positive_orthant.log", progress: bool = True,
                      weights: str | None = None, state_dict_prefix: str | None = None):
    """Analyze snapshots (files, directories or globs; none = the random init or --pretrained weights) and write
    one JSON per snapshot plus `projections.csv` to `<results>/<dataset>[_<k>]/<arch>[/<seed>]/`.

    Every checkpoint format of `checkpoints.read_checkpoint` is read; `state_dict_prefix` selects the keys
    under a prefix (found automatically otherwise). `weights`: the file of pretrained weights (implies
    `pretrained`). Results already there are kept unless `overwrite`. Returns (out_dir, table, docs, computed).
    """
    import sys

    from tqdm import tqdm

    from . import files
    from .checkpoints import find_snapshots
    from .data import dataset_info
    from .models import build_model, pretrained_file

    info = dataset_info(dataset)
    k = subsample_classes
    out_dir = results_directory(results, dataset, arch, seed, k)
    init_from = str(Path(init_from).resolve()) if init_from else None
    settings = Settings(normalize=normalize, with_linear=with_linear, include_1x1=include_1x1, level=level,
                        init_from=init_from)
    config = ModelConfig(arch, k or info.num_classes, info.in_channels, info.image_size)
    shape = (config.num_classes, config.in_channels, config.input_size)
    analyzer = SnapshotAnalyzer(
        config, settings, context={"arch": arch, "dataset": dataset, "seed": str(seed)},
        device=device, init_state=load_init_state(init_from) if init_from else None, dataset=dataset, seed=seed,
        state_dict_prefix=state_dict_prefix)
    pretrained = pretrained or weights is not None
    if load_from:
        paths = find_snapshots(load_from)
        stems = [p.stem for p in paths]
        twice = sorted({s for s in stems if stems.count(s) > 1})
        if twice:
            raise UsageError(f"several snapshots are named {', '.join(twice)}: their results would overwrite "
                             "each other; analyze them into different --results folders")
        jobs = [(p.stem, p) for p in paths]
    else:
        jobs = [(f"{'pretrained' if pretrained else 'init'}_{arch}", None)]

    log_path = out_dir / log
    lines = log_path.read_text().splitlines() if log_path.is_file() else []
    docs, computed = {}, 0
    for stem, path in tqdm(jobs, desc="projections", unit="snapshot", file=sys.stderr,
                           disable=not progress or not sys.stderr.isatty()):
        out = out_dir / f"{stem}.json"
        doc = None if overwrite else reusable_result(out, settings)
        if doc is not None:
            docs[out] = doc
            continue
        if path is not None:
            doc = analyzer.analyze_file(path)
        elif pretrained:
            model = build_model(arch, *shape, pretrained=True, weights=weights, state_dict_prefix=state_dict_prefix)
            doc = analyzer.analyze_model(model, stem, -1, str(Path(weights).resolve()) if weights
                                         else str(pretrained_file(arch)))
        else:
            init_seed = 0 if seed is None else seed
            model = build_model(arch, *shape, seed=init_seed)
            doc = analyzer.analyze_model(model, stem, 0, f"random initialization (seed {init_seed})",
                                         init_seed=init_seed)
        files.write_json(out, doc)
        docs[out] = doc
        computed += 1
        lines += log_lines(doc)
        files.write_text(log_path, "\n".join(lines) + "\n")

    table = results_table(collect_results(out_dir, settings, docs))
    with files.atomic_path(out_dir / "projections.csv") as tmp:
        table.to_csv(tmp, index=False)
    if parquet:
        with files.atomic_path(out_dir / "projections.parquet") as tmp:
            table.to_parquet(tmp, index=False)
    return out_dir, table, docs, computed
