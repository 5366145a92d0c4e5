"""The report of a run, drawn from its result files alone (no model, no data, no training).

`load_run` walks a run directory for the JSON documents of `hparr projections` and `hparr reinit`
(recognized by their `format` field, or by the original code's layout), chooses one projection run
and one re-initialization result, and tabulates them. `layer_table` joins both per layer (by module
name), `bias_vs_criticality` measures the paper's main claim (are the biased layers the critical
ones?) as a Spearman correlation, and `build_report` writes the figures (PNG and PDF), the layer table
(CSV), `report.json`, `summary.md` and `index.html`.

The null of method.md §3: the normalized projection of a d-dimensional Gaussian filter satisfies
(1 + t)/2 ~ Beta((d-1)/2, (d-1)/2); the mass of a layer of N filters has mean 1/2 and sd 1/(2 sqrt(N));
the mean of N normalized projections has mean 0 and sd sqrt(1/d) / sqrt(N). Bands are 95% (+/- 1.96 sd).
For plain sums the null's spread depends on the initialization's scale, which the results do not
record: the spread measured at epoch 0 stands in for it, and the figures say so.
"""
from __future__ import annotations

import html
import json
import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence

import numpy as np
import pandas as pd
from scipy import stats

from . import files
from . import projections as proj
from . import reinit as rein
from .errors import HparrError, UsageError
from .provenance import versions

REPORT_FORMAT = "hparr-report-1"
REPORT_DIR = "report"
DEFAULT_THRESHOLD = 0.1
Z95 = 1.959963984540054
BIAS_MEASURES = {
    "mass": "|mass - 0.5|",
    "mass_z": "|mass - 0.5| x 2 sqrt(N), the z-score of the mass under Binomial(N, 1/2)",
    "neglog10_p": "-log10 p_value of the layer's bias test (a p-value of 0 counts as 1e-300)",
}
FIGURES = ("distributions", "mass_mean_by_epoch", "reinit_heatmap", "bias_vs_criticality")
DPI = 130


# --- the null -------------------------------------------------------------------------------------

def null_density(t, d: int) -> np.ndarray:
    """Density of the normalized projection of a random d-dimensional filter (d >= 2) at t in [-1, 1]."""
    a = (d - 1) / 2
    return stats.beta.pdf((1 + np.asarray(t, dtype=np.float64)) / 2, a, a) / 2


def mass_band(n: int) -> tuple[float, float]:
    """95% band of a layer's mass under the null: 0.5 +/- 1.96 / (2 sqrt(N))."""
    half = Z95 / (2 * math.sqrt(n))
    return 0.5 - half, 0.5 + half


def mean_band(n: int, d: int | None = None, sd: float | None = None) -> tuple[float, float]:
    """95% band of the mean of N projections under the null: 0 +/- 1.96 s / sqrt(N), where s is
    sqrt(1/d) for normalized projections (give `d`) or a stated per-filter sd (give `sd`)."""
    s = math.sqrt(1 / d) if sd is None else sd
    half = Z95 * s / math.sqrt(n)
    return -half, half


# --- finding and choosing the result files --------------------------------------------------------

def _is_projection_doc(doc: Any) -> bool:
    if not isinstance(doc, dict):
        return False
    if doc.get("format") == proj.FORMAT:
        return True
    if "format" in doc or not isinstance(doc.get("net"), dict):
        return False
    # the original layout: stage -> block -> {projections, mean, mass, ...}
    stages = [v for k, v in doc.items() if k.isdigit()]
    return bool(stages) and all(isinstance(s, dict) and all(isinstance(e, dict) and "mass" in e and "projections" in e
                                                            for e in s.values()) for s in stages)


def _is_reinit_doc(doc: Any) -> bool:
    if not isinstance(doc, dict):
        return False
    if doc.get("format") == rein.RESULTS_FORMAT:
        return True
    return "format" not in doc and isinstance(doc.get("init_from_epoch"), dict) and "top1_test" in doc


def _result_files(run_dir: Path, exclude: Sequence[Path]) -> tuple[list[tuple[Path, dict]], list[tuple[Path, dict]]]:
    """(projection documents, reinit documents) below `run_dir`, skipping hidden and excluded folders."""
    excluded = {p.resolve() for p in exclude}
    found_p, found_r = [], []
    for root, dirs, names in os.walk(run_dir):
        here = Path(root)
        dirs[:] = sorted(d for d in dirs if not d.startswith(".") and (here / d).resolve() not in excluded)
        for name in sorted(names):
            if not name.endswith(".json") or name.startswith("."):
                continue
            path = here / name
            try:
                doc = json.loads(path.read_text())
            except (OSError, ValueError, UnicodeDecodeError):
                continue
            if _is_projection_doc(doc):
                found_p.append((path, doc))
            elif _is_reinit_doc(doc):
                found_r.append((path, doc))
    return found_p, found_r


def _seed(value: Any) -> str | None:
    return None if value in (None, "None", "") else str(value)


def _experiment(doc: Mapping[str, Any]) -> tuple:
    return doc.get("arch"), doc.get("dataset"), _seed(doc.get("seed"))


def _same_experiment(a: Mapping[str, Any], b: Mapping[str, Any]) -> bool:
    """Same arch, dataset and seed, where both documents record them (a projection run without --seed
    records "None", while its re-initialization result records the seed the model was trained with)."""
    return all(x is None or y is None or x == y for x, y in zip(_experiment(a), _experiment(b)))


def _epoch(doc: Mapping[str, Any]) -> int | None:
    try:
        return int(doc.get("epoch"))
    except (TypeError, ValueError):
        return None


def _complete_projection_doc(doc: dict) -> dict:
    """A copy in which every layer has a name and N (documents in the original layout have neither)."""
    doc = json.loads(json.dumps(doc))
    for stage, blocks in doc.items():
        if stage.isdigit():
            for block, entry in blocks.items():
                entry.setdefault("name", f"stage{stage}.block{block}")
                entry.setdefault("N", len(entry.get("projections") or []))
                entry.setdefault("biased", None)
    return doc


def _complete_reinit_doc(doc: dict) -> dict:
    doc = json.loads(json.dumps(doc))
    if "layers" not in doc:
        n = len(next(iter(doc["init_from_epoch"].values()), []))
        doc["layers"] = [f"layer{i}" for i in range(n)]
    return doc


_SETTINGS = ("normalize", "with_linear", "include_1x1", "level", "init_from", "num_classes")


@dataclass
class ProjectionRun:
    """The projection documents of one folder made with the same settings, one per epoch."""

    directory: Path
    settings: dict[str, Any]
    docs: list[dict]
    paths: list[Path]

    @property
    def normalize(self) -> bool | None:
        return self.settings.get("normalize")

    def describe(self, base: Path) -> str:
        where = _relative(self.directory, base)
        kind = {True: "normalized", False: "unnormalized (plain sums)"}.get(self.normalize, "normalization unknown")
        epochs = ", ".join(str(_epoch(d)) for d in self.docs)
        return f"{where}: {kind}, {len(self.docs)} snapshot(s) (epochs {epochs})"


@dataclass
class RunResults:
    """What a run directory holds, as chosen for the report.

    projections: tidy table (one row per snapshot x layer plus "net" rows) of the chosen projection run;
    reinit: one row per alternative (epoch label or "rand") x layer: top1, top5, relative_drop;
    trained_epoch: the epoch of the model the layer table describes; notes: choices and gaps, in words.
    """

    run_dir: Path
    projection_run: ProjectionRun | None
    projections: pd.DataFrame
    reinit_doc: dict | None
    reinit_path: Path | None
    reinit: pd.DataFrame
    trained_epoch: int | None
    notes: list[str] = field(default_factory=list)
    other_runs: list[str] = field(default_factory=list)

    def projection_doc(self, epoch: int | None) -> dict | None:
        if self.projection_run is None or epoch is None:
            return None
        return next((d for d in self.projection_run.docs if _epoch(d) == epoch), None)

    @property
    def trained_doc(self) -> dict | None:
        return self.projection_doc(self.trained_epoch)

    @property
    def init_doc(self) -> dict | None:
        return self.projection_doc(0)

    @property
    def normalize(self) -> bool | None:
        return self.projection_run.normalize if self.projection_run else None


def _relative(path: Path, base: Path) -> str:
    try:
        return str(Path(path).resolve().relative_to(base.resolve())) or "."
    except ValueError:
        return str(path)


def _projection_runs(found: Sequence[tuple[Path, dict]], base: Path, notes: list[str],
                     preferred: set[str] = frozenset()) -> list[ProjectionRun]:
    """Runs of documents grouped by folder and settings; of two documents of one epoch, the one whose
    snapshot is in `preferred` (the re-initialized models) is kept, else the last by file name."""
    groups: dict[tuple, list[tuple[Path, dict]]] = {}
    for path, doc in found:
        key = (str(path.parent.resolve()), *_experiment(doc), *(json.dumps(doc.get(k)) for k in _SETTINGS))
        groups.setdefault(key, []).append((path, doc))
    runs = []
    for key, members in groups.items():
        by_epoch: dict[int, tuple[Path, dict]] = {}
        for path, doc in sorted(members, key=lambda m: (str(m[1].get("source")) in preferred, m[0].name)):
            epoch = _epoch(doc)
            if epoch is None:
                notes.append(f"{_relative(path, base)} records no epoch; not used")
                continue
            if epoch in by_epoch:
                notes.append(f"{_relative(by_epoch[epoch][0], base)} and {_relative(path, base)} are both epoch "
                             f"{epoch}; using {path.name}")
            by_epoch[epoch] = (path, _complete_projection_doc(doc))
        if by_epoch:
            chosen = [by_epoch[e] for e in sorted(by_epoch)]
            first = chosen[0][1]
            runs.append(ProjectionRun(Path(key[0]), {k: first.get(k) for k in _SETTINGS},
                                      [d for _, d in chosen], [p for p, _ in chosen]))
    return runs


def _reinit_table(doc: Mapping[str, Any] | None) -> pd.DataFrame:
    columns = ["label", "epoch", "layer", "index", "top1", "top5", "relative_drop"]
    if doc is None:
        return pd.DataFrame(columns=columns)
    layers = list(doc["layers"])
    drop = rein.relative_drop_frame(doc["top1_test"], doc["init_from_epoch"], layers)
    top5 = doc.get("top5_init_from_epoch") or {}
    rows = []
    for label, accs in doc["init_from_epoch"].items():
        for i, layer in enumerate(layers):
            rows.append({"label": label, "epoch": None if label == rein.RAND else int(label), "layer": layer,
                         "index": i, "top1": float(accs[i]),
                         "top5": float(top5[label][i]) if label in top5 else float("nan"),
                         "relative_drop": float(drop.loc[label, layer])})
    return pd.DataFrame(rows, columns=columns)


def load_run(run_dir: str | os.PathLike, exclude: Iterable[str | os.PathLike] = ()) -> RunResults:
    """Find, choose and tabulate the result files below `run_dir` (folders in `exclude` are skipped).

    Projection runs are grouped by folder and settings; a normalized run is preferred, then one of the
    experiment (arch, dataset, seed) of a re-initialization result, then the one with most snapshots.
    The re-initialization result of that experiment whose trained snapshot is one of the run's
    snapshots is preferred, then the latest epoch. Every choice is stated in `notes`.
    """
    base = Path(run_dir)
    if not base.is_dir():
        raise HparrError(f"run directory {base} does not exist" if not base.exists() else f"{base} is not a directory")
    found_p, found_r = _result_files(base, [Path(p) for p in exclude])
    if not found_p and not found_r:
        raise HparrError(f"no result files under {base}: expected the JSON files of `hparr projections` "
                         "and/or `hparr reinit`")
    notes: list[str] = []
    reinits = [(p, _complete_reinit_doc(d)) for p, d in found_r]
    runs = _projection_runs(found_p, base, notes, {str(d["load_from"]) for _, d in reinits if d.get("load_from")})
    def run_rank(r: ProjectionRun):
        sources = {str(d.get("source")) for d in r.docs}
        return (r.normalize is True, any(str(d.get("load_from")) in sources for _, d in reinits),
                any(_same_experiment(r.docs[0], d) for _, d in reinits), len(r.docs), str(r.directory))

    runs.sort(key=run_rank, reverse=True)
    chosen = runs[0] if runs else None
    other_runs = [r.describe(base) for r in runs[1:]]
    if chosen is not None:
        if chosen.normalize is not True:
            notes.append(("no normalized projection run found" if chosen.normalize is False else
                          "the projection results do not record whether they are normalized")
                         + ": the figures treat them as plain sums <w, 1>, whose null spread is estimated "
                         "from epoch 0")

    reinit_doc = reinit_path = None
    if reinits:
        sources = {str(d.get("source")) for d in chosen.docs} if chosen else set()
        candidates = [(p, d) for p, d in reinits if chosen is None or str(d.get("load_from")) in sources
                      or _same_experiment(d, chosen.docs[0])]
        if candidates:
            candidates.sort(key=lambda m: (m[1].get("granularity", "layer") == "layer",  # per-layer results first
                                           m[1].get("load_from") is not None and str(m[1]["load_from"]) in sources,
                                           -1 if _epoch(m[1]) is None else _epoch(m[1]), str(m[0])))
            reinit_path, reinit_doc = candidates[-1]
            for p, _ in reinits:
                if p != reinit_path:
                    notes.append(f"re-initialization result not used: {_relative(p, base)}")
        else:
            notes.append("no re-initialization result of " + "/".join(map(str, _experiment(chosen.docs[0])))
                         + f"; ignored {len(reinits)} of other experiments")
    else:
        notes.append("no re-initialization result found: no heatmap, no accuracy drops")

    trained_epoch = None
    if chosen is not None:
        epochs = [_epoch(d) for d in chosen.docs]
        if reinit_doc is not None:
            load_from = reinit_doc.get("load_from")
            by_source = [e for e, d in zip(epochs, chosen.docs) if load_from and d.get("source") == load_from]
            if by_source:
                trained_epoch = by_source[0]
            elif _epoch(reinit_doc) in epochs:
                trained_epoch = _epoch(reinit_doc)
            else:
                trained_epoch = max(epochs)
                notes.append(f"no projections of the re-initialized model (epoch {reinit_doc.get('epoch')}); "
                             f"the layer table uses epoch {trained_epoch}")
        else:
            trained_epoch = max(epochs)
        if 0 not in epochs:
            notes.append("no projections at initialization (epoch 0): the distributions show the trained model only")
    elif reinit_doc is not None:
        trained_epoch = _epoch(reinit_doc)
        notes.append("no projection results found: no bias statistics")

    table = proj.results_table(chosen.docs) if chosen else pd.DataFrame()
    return RunResults(base, chosen, table, reinit_doc, reinit_path, _reinit_table(reinit_doc), trained_epoch,
                      notes, other_runs)


# --- the layer table and the main claim -----------------------------------------------------------

def _layer_entries(doc: Mapping[str, Any] | None) -> list[dict[str, Any]]:
    """The layer entries of a projection document in stage/block order (without the "net" row)."""
    if doc is None:
        return []
    return [{**doc[s][b], "stage": int(s), "block": int(doc[s][b].get("block", b))}
            for s in sorted((k for k in doc if k.isdigit()), key=int) for b in sorted(doc[s], key=int)]


def _merge_order(first: Sequence[str], second: Sequence[str]) -> list[str]:
    """`first`, with the names only in `second` inserted after their nearest predecessor in `second`."""
    out = list(first)
    for i, name in enumerate(second):
        if name in out:
            continue
        pos = next((out.index(prev) + 1 for prev in reversed(second[:i]) if prev in out), 0)
        out.insert(pos, name)
    return out


def _num(value: Any) -> float:
    try:
        return float("nan") if value is None else float(value)
    except (TypeError, ValueError):
        return float("nan")


def bias_measure(mass: float, n: float, p_value: float, measure: str = "mass") -> float:
    """A layer's bias as a number (larger = more biased); `measure` is one of BIAS_MEASURES."""
    if measure == "mass":
        return abs(mass - 0.5)
    if measure == "mass_z":
        return abs(mass - 0.5) * 2 * math.sqrt(n)
    if measure == "neglog10_p":
        return -math.log10(max(p_value, 1e-300)) if not math.isnan(p_value) else float("nan")
    raise UsageError(f"unknown bias measure {measure!r}; choose from {', '.join(BIAS_MEASURES)}")


def _check_options(threshold: float, measure: str) -> None:
    if not (isinstance(threshold, (int, float)) and math.isfinite(threshold) and threshold >= 0):
        raise UsageError(f"the robustness threshold must be a number >= 0, got {threshold}")
    if measure not in BIAS_MEASURES:
        raise UsageError(f"unknown bias measure {measure!r}; choose from {', '.join(BIAS_MEASURES)}")


TABLE_COLUMNS = ["name", "kind", "stage", "block", "N", "d", "mass", "mean", "std", "p_value", "p_adjusted", "biased",
                 "l2_dist", "l_inf_dist", "mass_init", "mean_init", "bias", "top1_trained", "top1_reinit_0",
                 "drop_reinit_0", "top1_rand", "drop_rand", "verdict", "missing"]


def layer_table(results: RunResults, threshold: float = DEFAULT_THRESHOLD, measure: str = "mass") -> pd.DataFrame:
    """One row per layer of the trained model, joined by module name across projections and reinit.

    mass, mean, std, p_value, p_adjusted (Holm), biased, l2_dist, l_inf_dist: the trained model's
    projection results; mass_init, mean_init: at epoch 0; bias: `measure` of the layer (see
    BIAS_MEASURES); top1_*: test accuracies (percent) of the trained model and after re-initializing
    the layer to epoch 0 or re-randomizing it; drop_*: (top1_trained - top1_after) / top1_trained;
    verdict: "robust" when drop_reinit_0 <= `threshold`, else "critical"; missing: the side that has
    no result for the layer. `attrs` records the threshold, the measure and the test level.
    """
    _check_options(threshold, measure)
    entries = {e["name"]: e for e in _layer_entries(results.trained_doc)}
    init = {e["name"]: e for e in _layer_entries(results.init_doc)}
    doc = results.reinit_doc
    r_layers = list(doc["layers"]) if doc else []
    r_kinds = dict(zip(r_layers, doc.get("layer_kinds") or [])) if doc else {}
    r_stage_block = dict(zip(r_layers, doc.get("layer_stage_block") or [])) if doc else {}
    acc = doc["init_from_epoch"] if doc else {}
    top1 = _num(doc["top1_test"]) if doc else float("nan")

    def after(label: str, i: int) -> tuple[float, float]:
        if label not in acc:
            return float("nan"), float("nan")
        a = _num(acc[label][i])
        return a, (top1 - a) / top1 if top1 else float("nan")

    rows = []
    for name in _merge_order(list(entries), r_layers):
        e = entries.get(name, {})
        i = r_layers.index(name) if name in r_layers else None
        stage, block = e.get("stage"), e.get("block")
        if not e and name in r_stage_block:
            stage, block = r_stage_block[name]
        row = {"name": name, "kind": e.get("kind", r_kinds.get(name)), "stage": stage, "block": block,
               "N": e.get("N"), "d": e.get("d"), **{k: _num(e.get(k)) for k in
                                                     ("mass", "mean", "std", "p_value", "p_adjusted",
                                                      "l2_dist", "l_inf_dist")},
               "biased": e.get("biased"), "mass_init": _num(init.get(name, {}).get("mass")),
               "mean_init": _num(init.get(name, {}).get("mean"))}
        row["bias"] = bias_measure(row["mass"], _num(row["N"]), row["p_value"], measure) if e else float("nan")
        row["top1_trained"] = top1 if i is not None else float("nan")
        row["top1_reinit_0"], row["drop_reinit_0"] = after("0", i) if i is not None else (float("nan"),) * 2
        row["top1_rand"], row["drop_rand"] = after(rein.RAND, i) if i is not None else (float("nan"),) * 2
        drop = row["drop_reinit_0"]
        row["verdict"] = None if math.isnan(drop) else "robust" if drop <= threshold else "critical"
        row["missing"] = "reinit" if i is None and doc else "projections" if not e and entries else None
        rows.append(row)
    table = pd.DataFrame(rows, columns=TABLE_COLUMNS)
    for col in ("stage", "block", "N", "d"):
        table[col] = pd.to_numeric(table[col]).astype("Int64")
    table["biased"] = table["biased"].astype("boolean")
    trained = results.trained_doc or {}
    table.attrs.update(threshold=float(threshold), measure=measure, measure_text=BIAS_MEASURES[measure],
                       level=trained.get("level"), correction=trained.get("correction"),
                       trained_epoch=results.trained_epoch, normalize=results.normalize)
    return table


def bias_vs_criticality(table: pd.DataFrame, bias: str = "bias", drop: str = "drop_reinit_0") -> dict[str, Any]:
    """Spearman correlation, over the layers that have both, of their bias and their accuracy drop under
    re-initialization to epoch 0 (the paper's claim: the biased layers are the critical ones)."""
    both = table[["name", bias, drop]].copy()
    both[bias] = pd.to_numeric(both[bias], errors="coerce")
    both[drop] = pd.to_numeric(both[drop], errors="coerce")
    both = both.dropna()
    out: dict[str, Any] = {"spearman_rho": float("nan"), "p_value": float("nan"), "n_layers": int(len(both)),
                           "bias_measure": table.attrs.get("measure_text", bias),
                           "drop": "relative top-1 drop, re-initialized to epoch 0", "layers": list(both["name"]),
                           "note": None}
    x, y = both[bias].to_numpy(float), both[drop].to_numpy(float)
    if len(both) < 3:
        out["note"] = f"{len(both)} layer(s) have both a bias and a drop; at least 3 are needed"
    elif np.ptp(x) == 0 or np.ptp(y) == 0:
        out["note"] = "the " + ("bias" if np.ptp(x) == 0 else "drop") + " is the same for every layer: no ranking"
    else:
        res = stats.spearmanr(x, y)
        out["spearman_rho"], out["p_value"] = float(res.statistic), float(res.pvalue)
    return out


# --- figures --------------------------------------------------------------------------------------

_RC = {"font.size": 10, "axes.titlesize": 10, "axes.labelsize": 10, "legend.fontsize": 8,
       "xtick.labelsize": 9, "ytick.labelsize": 9, "figure.titlesize": 12}


def _figure(width: float, height: float):
    from matplotlib.figure import Figure

    # A bare Figure renders with Agg (PNG) or the PDF backend on save; no pyplot state, nothing to close.
    return Figure(figsize=(width, height), layout="constrained")


def _save(fig, out_dir: Path, name: str) -> list[Path]:
    written = []
    for fmt in ("png", "pdf"):
        path = out_dir / f"{name}.{fmt}"
        with files.atomic_path(path) as tmp:
            fig.savefig(tmp, format=fmt, dpi=DPI)
        fig.set_layout_engine("none")  # keep the positions laid out for the PNG; the PDF needs no second pass
        written.append(path)
    return written


def _title(results: RunResults) -> str:
    doc = results.trained_doc or results.reinit_doc or {}
    seed = _seed(doc.get("seed"))
    return f"{doc.get('arch')} on {doc.get('dataset')}" + (f", seed {seed}" if seed is not None else "")


def _grid(n: int, ncols: int = 4) -> tuple[int, int]:
    ncols = max(1, min(ncols, n))
    return math.ceil(n / ncols), ncols


def plot_distributions(results: RunResults, out_dir: Path) -> list[Path]:
    """Histograms of each layer's projections at epoch 0 and trained, with the null density overlaid."""
    import matplotlib

    trained, init = results.trained_doc, results.init_doc
    layers = _layer_entries(trained)
    init_by_name = {e["name"]: e for e in _layer_entries(init) if init is not trained}
    normalize = results.normalize is True
    nrows, ncols = _grid(len(layers))
    with matplotlib.rc_context(_RC):
        fig = _figure(3.4 * ncols, 2.9 * nrows + 0.6)
        axes = fig.subplots(nrows, ncols, squeeze=False)
        for ax, e in zip(axes.flat, layers):
            p = np.asarray(e["projections"], dtype=float)
            p0 = np.asarray(init_by_name[e["name"]]["projections"], dtype=float) if e["name"] in init_by_name else None
            d = e.get("d")
            null_sd = (math.sqrt(1 / d) if normalize and d else
                       float(p0.std()) if p0 is not None and p0.size > 1 else 0.0)
            spread = max(float(np.abs(np.concatenate([p] + ([p0] if p0 is not None else []))).max()), 4 * null_sd)
            lim = spread * 1.08 or 1.0
            if normalize:
                lim = min(lim, 1.0)
            bins = int(np.clip(2 * math.sqrt(len(p)), 6, 40))
            edges = np.linspace(-lim, lim, bins + 1)
            heights = []
            if p0 is not None:
                h, _, _ = ax.hist(p0, edges, density=True, color="0.55", alpha=0.55, label="epoch 0 (init)")
                heights.append(h.max())
            h, _, _ = ax.hist(p, edges, density=True, color="C0", alpha=0.55,
                              label=f"epoch {results.trained_epoch} (trained)")
            heights.append(h.max())
            t = np.linspace(-lim, lim, 400)
            null = None
            if normalize and d and d >= 2:
                null = null_density(t, d)
                ax.plot(t, null, color="k", lw=1.3, label="null: random filter")
            elif not normalize and null_sd > 0:
                null = stats.norm.pdf(t, scale=null_sd)
                ax.plot(t, null, color="k", lw=1.3, ls="--", label="null ~ N(0, sd at epoch 0)")
            top = max(heights)
            if null is not None and np.isfinite(null).any():
                top = max(top, min(float(np.nanmax(null[np.isfinite(null)])), 3 * top))
            ax.set_ylim(0, 1.12 * top if top > 0 else 1)
            ax.axvline(0, color="k", lw=0.7, ls=":")
            mass0 = init_by_name.get(e["name"], {}).get("mass")
            ax.set_title(f"{e['name']} (N={e.get('N')}, d={d})\nmass {e['mass']:.2f}"
                         + (f" (init {mass0:.2f})" if mass0 is not None else "")
                         + (", biased" if e.get("biased") else ""))
            ax.set_xlabel("normalized projection <w,1>/(|w| sqrt d)" if normalize else "projection <w, 1>")
            ax.set_ylabel("density")
        for ax in list(axes.flat)[len(layers):]:
            ax.set_visible(False)
        axes.flat[0].legend(loc="upper left")
        fig.suptitle(f"{_title(results)}: distribution of the filters' projections per layer")
        return _save(fig, out_dir, "distributions")


def plot_epochs(results: RunResults, out_dir: Path) -> list[Path]:
    """Mass of negative projections (top) and mean projection (bottom) of every layer across epochs,
    with the null's 95% band."""
    import matplotlib

    tab = results.projections
    tab = tab[(tab["kind"] != "net") & (pd.to_numeric(tab["epoch"], errors="coerce") >= 0)].copy()
    tab["epoch"] = pd.to_numeric(tab["epoch"])
    names = [e["name"] for e in _layer_entries(results.trained_doc)]
    normalize = results.normalize is True
    init = {e["name"]: e for e in _layer_entries(results.init_doc)}
    nrows, ncols = _grid(len(names))
    with matplotlib.rc_context(_RC):
        fig = _figure(3.3 * ncols, 4.4 * nrows + 0.6)
        axes = fig.subplots(2 * nrows, ncols, squeeze=False)
        for i, name in enumerate(names):
            r, c = divmod(i, ncols)
            ax_m, ax_mu = axes[2 * r, c], axes[2 * r + 1, c]
            sub = tab[tab["name"] == name].sort_values("epoch")
            epochs = sub["epoch"].to_numpy(float)
            n = int(sub["N"].iloc[-1])
            d = sub["d"].iloc[-1] if "d" in sub else pd.NA
            ax_m.axhspan(*mass_band(n), color="0.85", label="null 95% band")
            ax_m.axhline(0.5, color="0.5", lw=0.8)
            ax_m.plot(epochs, pd.to_numeric(sub["mass"]).to_numpy(float), "o-", color="C0", ms=4, label="mass")
            ax_m.set_ylim(-0.03, 1.03)
            ax_m.set_title(f"{name} (N={n})")
            ax_m.set_ylabel("mass (share p <= 0)")
            band = None
            if normalize and not pd.isna(d) and int(d) >= 1:
                band = mean_band(n, d=int(d))
            elif not normalize and name in init and init[name].get("std"):
                band = mean_band(n, sd=float(init[name]["std"]))
            if band is not None:
                ax_mu.axhspan(*band, color="0.85", label="null 95% band" + ("" if normalize else " (sd at epoch 0)"))
            ax_mu.axhline(0, color="0.5", lw=0.8)
            ax_mu.plot(epochs, pd.to_numeric(sub["mean"]).to_numpy(float), "s-", color="C3", ms=4, label="mean")
            ax_mu.set_ylabel("mean projection")
            ax_mu.set_xlabel("epoch")
            ax_m.set_xlabel("epoch")
        for r in range(nrows):
            for c in range(ncols):
                if r * ncols + c >= len(names):
                    axes[2 * r, c].set_visible(False)
                    axes[2 * r + 1, c].set_visible(False)
        axes[0, 0].legend(loc="best")
        axes[1, 0].legend(loc="best")
        what = "normalized projections" if normalize else "projections <w, 1>"
        fig.suptitle(f"{_title(results)}: mass of negative {what} and their mean, per layer, across epochs")
        return _save(fig, out_dir, "mass_mean_by_epoch")


def plot_bias_vs_criticality(table: pd.DataFrame, correlation: Mapping[str, Any], out_dir: Path,
                             title: str = "") -> list[Path]:
    """Each layer's bias against its accuracy drop under re-initialization to epoch 0, named points."""
    import matplotlib

    sub = table[table["name"].isin(correlation["layers"])]
    threshold = table.attrs.get("threshold", DEFAULT_THRESHOLD)
    with matplotlib.rc_context(_RC):
        fig = _figure(6.4, 4.8)
        ax = fig.subplots()
        for biased, color, label in ((True, "C3", "biased"), (False, "C0", "not biased")):
            part = sub[sub["biased"].fillna(False) == biased]
            if len(part):
                ax.scatter(part["bias"].astype(float), part["drop_reinit_0"].astype(float), s=40, color=color,
                           label=label, zorder=3)
        for _, row in sub.iterrows():
            ax.annotate(row["name"], (float(row["bias"]), float(row["drop_reinit_0"])), xytext=(4, 4),
                        textcoords="offset points", fontsize=8)
        ax.axhline(threshold, color="0.4", ls="--", lw=1, label=f"critical above {threshold:g}")
        ax.set_xlabel(f"bias: {correlation['bias_measure'].split(',')[0]}")
        ax.set_ylabel("relative top-1 drop, layer re-initialized to epoch 0")
        rho, p = correlation["spearman_rho"], correlation["p_value"]
        stat = (f"Spearman rho = {rho:.2f} (p = {p:.2g}, {correlation['n_layers']} layers)" if not math.isnan(rho)
                else f"Spearman rho undefined ({correlation['note']})")
        ax.set_title(f"{title}: bias against criticality\n{stat}" if title else stat)
        ax.legend(loc="best")
        ax.grid(alpha=0.3)
        ax.margins(x=0.15, y=0.1)
        return _save(fig, out_dir, "bias_vs_criticality")


# --- tables as text -------------------------------------------------------------------------------

DISPLAY = [("layer", "name"), ("stage.block", None), ("N", "N"), ("d", "d"), ("mass", "mass"),
           ("mass at init", "mass_init"), ("mean", "mean"), ("p-value", "p_value"), ("p (Holm)", "p_adjusted"),
           ("biased", "biased"), ("l2 dist from init", "l2_dist"), ("top-1 trained %", "top1_trained"),
           ("top-1 reinit epoch 0 %", "top1_reinit_0"), ("drop reinit 0", "drop_reinit_0"),
           ("drop rand", "drop_rand"), ("robust/critical", "verdict")]
_FORMATS = {"mass": ".3f", "mass_init": ".3f", "mean": ".3g", "p_value": ".2g", "p_adjusted": ".2g",
            "l2_dist": ".3f", "top1_trained": ".2f", "top1_reinit_0": ".2f", "drop_reinit_0": ".3f",
            "drop_rand": ".3f"}


def display_table(table: pd.DataFrame) -> pd.DataFrame:
    """The layer table as rounded strings, for summary.md and index.html (the CSV keeps every digit)."""
    out = {}
    for header, col in DISPLAY:
        if col is None:
            out[header] = [f"{s}.{b}" if not (pd.isna(s) or pd.isna(b)) else "" for s, b in
                           zip(table["stage"], table["block"])]
            continue
        values = []
        for v in table[col]:
            if v is None or (not isinstance(v, str) and pd.isna(v)):
                values.append("")
            elif col == "biased":
                values.append("yes" if v else "no")
            elif col in _FORMATS:
                values.append(format(float(v), _FORMATS[col]))
            else:
                values.append(str(v))
        out[header] = values
    return pd.DataFrame(out)


def _markdown(df: pd.DataFrame) -> str:
    def cell(v: Any) -> str:
        return str(v).replace("|", "\\|").replace("\n", " ")

    lines = ["| " + " | ".join(map(cell, df.columns)) + " |", "|" + "---|" * len(df.columns)]
    lines += ["| " + " | ".join(cell(v) for v in row) + " |" for row in df.itertuples(index=False)]
    return "\n".join(lines)


def _names(table: pd.DataFrame, mask) -> str:
    names = list(table.loc[mask, "name"])
    return ", ".join(names) if names else "none"


def answer(results: RunResults, table: pd.DataFrame, correlation: Mapping[str, Any]) -> list[str]:
    """The answer in numbers, as Markdown bullet lines."""
    lines = []
    level, threshold = table.attrs.get("level"), table.attrs["threshold"]
    with_stats = table[table["mass"].notna()]
    if len(with_stats):
        biased = with_stats["biased"].fillna(False).astype(bool)
        lines.append(f"- Trained model (epoch {results.trained_epoch}): **{int(biased.sum())} of {len(with_stats)}** "
                     f"layers biased at level {level} ({str(table.attrs.get('correction')).capitalize()}-corrected): "
                     f"{_names(with_stats, biased)}.")
        init = results.init_doc
        if init is not None and init is not results.trained_doc:
            init_biased = [e["name"] for e in _layer_entries(init) if e.get("biased")]
            lines.append(f"- At initialization (epoch 0): {len(init_biased)} of {len(_layer_entries(init))} "
                         f"layers biased{': ' + ', '.join(init_biased) if init_biased else ''}.")
    with_drop = table[table["drop_reinit_0"].notna()]
    if len(with_drop):
        critical = with_drop["verdict"] == "critical"
        lines.append(f"- Re-initialization to epoch 0 (critical when the relative top-1 drop > {threshold:g}): "
                     f"**{int(critical.sum())} of {len(with_drop)}** layers critical: "
                     + (", ".join(f"{r['name']} ({r['drop_reinit_0']:.3f})" for _, r in with_drop[critical].iterrows())
                        or "none") + f"; robust: {_names(with_drop, ~critical)}.")
        both = with_drop[with_drop["mass"].notna()]
        if len(both):
            b = both["biased"].fillna(False).astype(bool)
            c = both["verdict"] == "critical"
            lines.append(f"- Biased and critical: {int((b & c).sum())}; biased and robust: {int((b & ~c).sum())}; "
                         f"not biased and critical: {int((~b & c).sum())}; not biased and robust: "
                         f"{int((~b & ~c).sum())}.")
    elif results.reinit_doc is not None:
        lines.append("- The re-initialization result has no epoch-0 row: no robust/critical verdicts.")
    rho = correlation["spearman_rho"]
    if not math.isnan(rho):
        lines.append(f"- Bias against criticality: **Spearman rho = {rho:.3f}** (p = {correlation['p_value']:.3g}, "
                     f"{correlation['n_layers']} layers), bias measured as {correlation['bias_measure']}.")
    else:
        lines.append(f"- Bias against criticality: Spearman rho undefined ({correlation['note']}).")
    return lines


# --- the report -----------------------------------------------------------------------------------

def _provenance(results: RunResults) -> dict[str, Any]:
    import matplotlib
    import scipy

    trained, r = results.trained_doc or {}, results.reinit_doc or {}
    return {
        "seeds": {"projections": {k: trained.get(k) for k in ("seed", "init_seed", "snapshot_seeds") if k in trained},
                  "reinit": r.get("seeds", {"seed": r.get("seed")} if r else {})},
        "normalization": {"training": trained.get("snapshot_normalization"), "reinit": r.get("normalization")},
        "versions": {"report": {**versions(), "scipy": scipy.__version__, "pandas": pd.__version__,
                                "matplotlib": matplotlib.__version__},
                     "projections": trained.get("versions"), "reinit": r.get("versions")},
    }


def _plain(value: Any) -> Any:
    if isinstance(value, float) and math.isnan(value):
        return None
    if isinstance(value, (np.generic,)):
        return _plain(value.item())
    if value is pd.NA:
        return None
    return value


FIGURE_HELP = {
    "distributions": ("Distribution of the projections per layer",
                      "One panel per layer: histogram of the filters' projections at initialization (grey) and "
                      "trained (blue), with the null density of a random filter (black). A biased layer has its "
                      "trained histogram shifted to one side of 0 or spread far beyond the null curve."),
    "mass_mean_by_epoch": ("Mass and mean across epochs",
                           "Per layer, top: the share of filters with projection <= 0 (mass) at each snapshot; "
                           "bottom: the mean projection. The grey band is where 95% of random (untrained) layers "
                           "of that size fall; points outside it are biased."),
    "reinit_heatmap": ("Re-initialization heatmap",
                       "Rows: the snapshot a layer was re-initialized from (epoch 0 = initialization; rand = a "
                       "fresh random draw); columns: layers; value: relative top-1 drop. Near 0 = robust layer, "
                       "near 1 = critical layer."),
    "bias_vs_criticality": ("Bias against criticality",
                            "One point per layer: its bias (x) against its accuracy drop when re-initialized to "
                            "epoch 0 (y); red = biased by the test. The paper's claim predicts a positive rank "
                            "correlation: the biased layers are the critical ones. Above the dashed line a layer is "
                            "critical."),
}


def _summary(results: RunResults, table: pd.DataFrame, correlation: Mapping[str, Any], figures: Sequence[str],
             provenance: Mapping[str, Any]) -> str:
    base = results.run_dir
    lines = [f"# Hyperplane arrangement bias and layer criticality: {_title(results)}", "",
             "**Question.** Are the trained layers' hyperplane arrangements biased (their filters agree in "
             "orientation relative to the identity line far beyond a random initialization), and are the "
             "biased layers the critical ones of Zhang et al. (re-initializing them to their initial values "
             "hurts accuracy)?", "", "## Answer in numbers", "", *answer(results, table, correlation), "",
             "## Layers", "", _markdown(display_table(table)), "",
             f"mass: share of filters with projection <= 0; p-value: the layer's bias test (sign test and KS test "
             f"against the null), p (Holm): adjusted over the layers, biased when <= {table.attrs.get('level')}; "
             "l2 dist from init: ||W - W0|| / ||W0||; drop: (acc trained - acc re-initialized) / acc trained; "
             f"robust when the drop to epoch 0 is <= {table.attrs['threshold']:g}, else critical. "
             "Every digit is in layers.csv.", ""]
    missing_p = list(table.loc[table["missing"] == "projections", "name"])
    missing_r = list(table.loc[table["missing"] == "reinit", "name"])
    if missing_p:
        lines += [f"Layers with no projection results (e.g. 1x1 convs or Linear layers are not analyzed): "
                  f"{', '.join(missing_p)}.", ""]
    if missing_r:
        lines += [f"Layers with no re-initialization result: {', '.join(missing_r)}.", ""]
    lines += ["## Figures", ""]
    for name in figures:
        head, text = FIGURE_HELP[name]
        lines += [f"### {head}", "", f"![{head}]({name}.png) ([PDF]({name}.pdf))", "", text, ""]
    lines += ["## Inputs", ""]
    if results.projection_run is not None:
        lines.append(f"- Projections: {results.projection_run.describe(base)}; files: "
                     + ", ".join(_relative(p, base) for p in results.projection_run.paths))
    for other in results.other_runs:
        lines.append(f"- Projection run not used: {other}")
    if results.reinit_path is not None:
        lines.append(f"- Re-initialization: {_relative(results.reinit_path, base)}")
        if results.reinit_doc.get("batchnorm"):
            lines.append(f"- {results.reinit_doc['batchnorm']}.")
    lines += [f"- {n}" for n in results.notes]
    lines += ["", "## Provenance", "", "```json", json.dumps(provenance, indent=2, default=str), "```", ""]
    return "\n".join(lines)


def _html(results: RunResults, table: pd.DataFrame, correlation: Mapping[str, Any], figures: Sequence[str],
          provenance: Mapping[str, Any]) -> str:
    import re

    def inline(text: str) -> str:
        return re.sub(r"\*\*(.+?)\*\*", r"<strong>\1</strong>", html.escape(text))

    e = html.escape
    answer_items = "".join(f"<li>{inline(line[2:])}</li>" for line in answer(results, table, correlation))
    figs = "".join(f'<section><h3>{e(FIGURE_HELP[n][0])}</h3><p>{e(FIGURE_HELP[n][1])}</p>'
                   f'<a href="{e(n)}.pdf"><img src="{e(n)}.png" alt="{e(FIGURE_HELP[n][0])}"></a></section>'
                   for n in figures)
    table_html = display_table(table).to_html(index=False, escape=True, border=0, classes="layers")
    inputs = [f"Projections: {results.projection_run.describe(results.run_dir)}"] if results.projection_run else []
    inputs += [f"Projection run not used: {o}" for o in results.other_runs]
    if results.reinit_path is not None:
        inputs.append(f"Re-initialization: {_relative(results.reinit_path, results.run_dir)}")
    inputs += results.notes
    style = ("body{font-family:sans-serif;max-width:1200px;margin:2em auto;padding:0 1em;line-height:1.4}"
             "table.layers{border-collapse:collapse;font-size:0.9em}"
             "table.layers th,table.layers td{border:1px solid #ccc;padding:3px 6px;text-align:right}"
             "img{max-width:100%;border:1px solid #eee}pre{background:#f6f6f6;padding:1em;overflow:auto}")
    title = f"hparr report: {_title(results)}"
    return (f"<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\"><title>{e(title)}</title>"
            f"<style>{style}</style></head><body>\n<h1>{e(title)}</h1>\n"
            "<p><strong>Question.</strong> Are the trained layers' hyperplane arrangements biased, and are the "
            "biased layers the critical ones of Zhang et al.?</p>\n"
            f"<h2>Answer in numbers</h2><ul>{answer_items}</ul>\n<h2>Layers</h2>\n{table_html}\n"
            f"<p>Full precision: <a href=\"layers.csv\">layers.csv</a>; summary: "
            f"<a href=\"summary.md\">summary.md</a>.</p>\n<h2>Figures</h2>\n{figs}\n<h2>Inputs</h2><ul>"
            + "".join(f"<li>{e(i)}</li>" for i in inputs)
            + f"</ul>\n<h2>Provenance</h2><pre>{e(json.dumps(provenance, indent=2, default=str))}</pre>\n"
            "</body></html>\n")


# --- re-initialization: top-1 drop, test loss and agreement per alternative ------------------------

REINIT_MEASURES = ("top1", "relative_drop", "loss", "agreement")


def reinit_measures(doc: Mapping[str, Any] | None) -> pd.DataFrame:
    """One row per alternative x re-initialized unit of a reinit document: top-1 (%), relative top-1 drop,
    mean test loss and agreement (share of test images whose top-1 class is the trained model's), and for
    a "rand" row of several re-randomizations the standard deviation of each (`*_sd`)."""
    columns = ["label", "layer", "index", *REINIT_MEASURES, *(f"{m}_sd" for m in REINIT_MEASURES)]
    if doc is None:
        return pd.DataFrame(columns=columns)
    layers = list(doc["layers"])
    drop = rein.relative_drop_frame(doc["top1_test"], doc["init_from_epoch"], layers)
    sources = {"top1": doc["init_from_epoch"], "loss": doc.get("loss_init_from_epoch") or {},
               "agreement": doc.get("agreement_init_from_epoch") or {}}
    std = doc.get("rand_std") or {}
    std_sources = {"top1": std.get("init_from_epoch"), "relative_drop": std.get("relative_drop"),
                   "loss": std.get("loss_init_from_epoch"), "agreement": std.get("agreement_init_from_epoch")}
    rows = []
    for label in doc["init_from_epoch"]:
        for i, layer in enumerate(layers):
            row = {"label": label, "layer": layer, "index": i, "relative_drop": float(drop.loc[label, layer])}
            for m in ("top1", "loss", "agreement"):
                values = sources[m].get(label)
                row[m] = _num(values[i]) if values is not None else float("nan")
            for m in REINIT_MEASURES:
                values = std_sources[m] if label == rein.RAND else None
                row[f"{m}_sd"] = _num(values[i]) if values is not None else float("nan")
            rows.append(row)
    return pd.DataFrame(rows, columns=columns)


def _reinit_display(doc: Mapping[str, Any]) -> pd.DataFrame:
    """Per unit: top-1 drop, loss and agreement after re-initialization to epoch 0 and re-randomization."""
    table = reinit_measures(doc)
    out: dict[str, list[str]] = {"layer": list(doc["layers"])}

    def fmt(v: float, sd: float, spec: str) -> str:
        if math.isnan(v):
            return ""
        return format(v, spec) + ("" if math.isnan(sd) else f" ± {format(sd, spec)}")

    for label, name in (("0", "epoch 0"), (rein.RAND, "rand")):
        part = table[table["label"] == label]
        if part.empty:
            continue
        for m, head, spec in (("relative_drop", "drop", ".3f"), ("loss", "loss", ".3f"),
                              ("agreement", "agreement", ".3f")):
            out[f"{head} {name}"] = [fmt(v, sd, spec) for v, sd in zip(part[m], part[f"{m}_sd"])]
    return pd.DataFrame(out)


def _reinit_section(doc: Mapping[str, Any] | None) -> str:
    """The Markdown section on the re-initialization measures ("" without a reinit result)."""
    if doc is None:
        return ""
    trained_loss = doc.get("trained_loss")
    lines = ["## Re-initialization: top-1 drop, test loss and agreement", "",
             _markdown(_reinit_display(doc)), "",
             f"Trained: top-1 {doc['top1_test']:.2f}%"
             + (f", test loss {trained_loss:.3f}" if trained_loss is not None else "") + ". "
             "drop: relative top-1 drop; loss: mean test cross-entropy; agreement: share of test images whose "
             "top-1 class is the trained model's"
             + (f"; rand: mean ± standard deviation of {doc['rand_trials']['k']} re-randomizations"
                if isinstance(doc.get("rand_trials"), Mapping) else "")
             + f"; re-initialized at once: {doc.get('granularity', 'layer')}. Every alternative is in reinit.csv.", ""]
    return "\n".join(lines)


def build_report(run_dir: str | os.PathLike, out_dir: str | os.PathLike | None = None,
                 threshold: float = DEFAULT_THRESHOLD, measure: str = "mass") -> dict[str, Path]:
    """Write the report of `run_dir` to `out_dir` (default RUN_DIR/report) from the result files alone.

    Returns {file name: path} of what was written: the figures (PNG and PDF) that the results allow,
    layers.csv, report.json, summary.md and index.html. Figures of an earlier report that the
    results no longer allow are removed.
    """
    run_dir = Path(run_dir)
    out = Path(out_dir) if out_dir is not None else run_dir / REPORT_DIR
    _check_options(threshold, measure)
    results = load_run(run_dir, exclude=[out])
    table = layer_table(results, threshold=threshold, measure=measure)
    correlation = bias_vs_criticality(table)
    files.ensure_dir(out)
    written: list[Path] = []
    figures: list[str] = []
    if results.trained_doc is not None:
        written += plot_distributions(results, out)
        written += plot_epochs(results, out)
        figures += ["distributions", "mass_mean_by_epoch"]
    if results.reinit_doc is not None:
        rein.save_heatmap(results.reinit_doc, out / "reinit_heatmap.png", out / "reinit_heatmap.pdf")
        written += [out / "reinit_heatmap.png", out / "reinit_heatmap.pdf"]
        figures.append("reinit_heatmap")
    if correlation["n_layers"]:
        written += plot_bias_vs_criticality(table, correlation, out, _title(results))
        figures.append("bias_vs_criticality")
    for name in FIGURES:
        if name not in figures:
            for fmt in ("png", "pdf"):
                (out / f"{name}.{fmt}").unlink(missing_ok=True)

    provenance = _provenance(results)
    with files.atomic_path(out / "layers.csv") as tmp:
        table.to_csv(tmp, index=False)
    records = [{k: _plain(v) for k, v in row.items()} for row in table.to_dict(orient="records")]
    files.write_json(out / "report.json", {
        "format": REPORT_FORMAT, "run_dir": str(run_dir.resolve()),
        "inputs": {"projections": [str(p.resolve()) for p in results.projection_run.paths]
                   if results.projection_run else [],
                   "projection_settings": results.projection_run.settings if results.projection_run else None,
                   "reinit": str(results.reinit_path.resolve()) if results.reinit_path else None,
                   "other_projection_runs": results.other_runs},
        "trained_epoch": results.trained_epoch, "threshold": table.attrs["threshold"], "bias_measure": measure,
        "level": table.attrs.get("level"), "correction": table.attrs.get("correction"),
        "bias_vs_criticality": {k: _plain(v) for k, v in correlation.items()},
        "layers": records, "notes": results.notes, "figures": figures, **provenance})
    summary = _summary(results, table, correlation, figures, provenance)
    page = _html(results, table, correlation, figures, provenance)
    if results.reinit_doc is not None:  # loss and agreement next to the top-1 drop
        with files.atomic_path(out / "reinit.csv") as tmp:
            reinit_measures(results.reinit_doc).to_csv(tmp, index=False)
        written.append(out / "reinit.csv")
        summary = summary.replace("## Figures", _reinit_section(results.reinit_doc) + "\n## Figures", 1)
        section = ("<h2>Re-initialization: top-1 drop, test loss and agreement</h2>\n"
                   + _reinit_display(results.reinit_doc).to_html(index=False, escape=True, border=0, classes="layers")
                   + '\n<p>All alternatives: <a href="reinit.csv">reinit.csv</a>.</p>\n')
        page = page.replace("<h2>Figures</h2>", section + "<h2>Figures</h2>", 1)
    else:
        (out / "reinit.csv").unlink(missing_ok=True)
    files.write_text(out / "summary.md", summary)
    files.write_text(out / "index.html", page)
    written += [out / "layers.csv", out / "report.json", out / "summary.md", out / "index.html"]
    return {p.name: p for p in written}
