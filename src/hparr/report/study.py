"""The report of a study (`hparr study`), drawn from its cells' result files alone (no model, no data, no torch).

`load_study` reads every finished cell below STUDY/cells (its manifest, projection documents, re-initialization
result and final metrics) into one tidy table, one row per cell x snapshot epoch x layer. `claims` measures the
paper's three claims across seeds and corruptions:

1. bias emerges with training (the trained bias against the bias at initialization, paired by seed) and goes
   with learning (across cells, the bias against test top-1 and against train top-1 on the cell's own labels);
2. memorization changes it (each corruption against the clean condition, paired by seed);
3. the biased layers are the critical ones (per seed, the Spearman correlation over layers of bias and the
   accuracy drop under re-initialization to epoch 0, pooled over seeds).

Methods (docs/study.md states them too): means over seeds come with Student-t 95% intervals; the pooled
correlation is the mean of the per-seed Spearman rhos, with a 95% percentile bootstrap interval that resamples
seeds (scipy.stats.bootstrap) and a two-sided permutation p-value that shuffles the layers within each seed
(scipy.stats.permutation_test, permutation_type="pairings"; exact when the shuffles are few); correlations across
cells are Spearman's, with scipy's p-value and a Fisher-z interval (standard error sqrt(1.06 / (n - 3))). Every
random draw comes from numpy Generators seeded with STATS_SEED.
"""
from __future__ import annotations

import html
import math
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np
import pandas as pd
from scipy import stats

from .. import files
from ..defaults import LEVEL, THRESHOLD
from ..errors import HparrError
from ..layout import CELLS_DIR, MANIFEST_NAME, Corruption
from ..provenance import versions
from ..results import drop_frame, read_json, read_manifest, read_study, run_finished
from .discovery import load_run, tracked_curves
from .render import markdown_table
from .tables import _num, bias_measure, check_options

CONFIDENCE = 0.95
N_BOOTSTRAP = 10_000
N_PERMUTATIONS = 9_999
STATS_SEED = 0

COLUMNS = ["arch", "dataset", "subsample", "train_size", "noise", "condition", "seed", "cell", "epoch", "trained",
           "layer", "kind", "stage", "block", "N", "d", "mass", "mean", "std", "p_value", "p_adjusted", "biased",
           "l2_dist", "mass_init", "bias", "drop_reinit_0", "drop_rand", "drop_reinit_0_train", "drop_rand_train",
           "test_top1", "train_top1", "num_classes", "regime"]
CURVE_COLUMNS = ["arch", "dataset", "subsample", "train_size", "noise", "condition", "seed", "cell", "step", "epoch",
                 "layer", "stage", "block", "mass", "mean", "p_adjusted", "biased", "l2_dist"]
TRACKED_COLUMNS = ["arch", "dataset", "subsample", "train_size", "noise", "condition", "layer", "stage", "block",
                   "epoch", "n_seeds", "mass", "mass_low", "mass_high", "mean", "mean_low", "mean_high", "share_biased"]
CELL_COLUMNS = ["arch", "dataset", "subsample", "train_size", "setting", "noise", "condition", "seed", "cell", "epoch",
                "n_layers", "share_biased", "share_biased_init", "bias", "bias_init", "test_top1", "train_top1",
                "num_classes", "regime"]

# What a cell did with its training labels, from its own final accuracies (top-1 %, chance = 100 / classes):
# learned when test top-1 is more than CHANCE_MARGIN points above chance; memorized when test top-1 is within
# CHANCE_MARGIN points of chance while top-1 on its own (possibly corrupted) training labels is at least
# MEMORIZED_TRAIN_TOP1; neither otherwise.
CHANCE_MARGIN = 10.0
MEMORIZED_TRAIN_TOP1 = 95.0
REGIMES = ("learned", "memorized", "neither")
REGIME_RULE = (f"learned: test top-1 more than {CHANCE_MARGIN:g} points above chance (100 / classes); memorized: "
               f"test top-1 within {CHANCE_MARGIN:g} points of chance and top-1 on the cell's own training labels "
               f">= {MEMORIZED_TRAIN_TOP1:g}%; neither: otherwise")


def cell_regime(test_top1: float, train_top1: float, num_classes: int) -> str:
    """"learned", "memorized" or "neither" (see REGIME_RULE) from a cell's final accuracies in %."""
    chance = 100.0 / num_classes
    if test_top1 > chance + CHANCE_MARGIN:
        return "learned"
    return "memorized" if train_top1 >= MEMORIZED_TRAIN_TOP1 else "neither"


def setting_label(arch: str, dataset: str, subsample: int, train_size: int = 0) -> str:
    """`lenet on digits`, with ` (<k> classes)` for a class subset and `, <N> training images` for a
    --train-size subset (0: all of them)."""
    return (f"{arch} on {dataset}" + (f" ({subsample} classes)" if subsample else "")
            + (f", {train_size} training images" if train_size else ""))


# --- loading -------------------------------------------------------------------------------------

@dataclass
class StudyData:
    """study: study.json; table: one row per cell x snapshot epoch x layer (COLUMNS); cells: one row per
    finished cell (CELL_COLUMNS, at its final epoch); missing: the cells of study.json not finished; curves: the
    rows of the cells' tracking.csv files (CURVE_COLUMNS, one per cell x tracked step x layer); tracked: the
    curves over seeds (`tracked_by_epoch`)."""

    study_dir: Path
    study: dict
    table: pd.DataFrame
    cells: pd.DataFrame
    missing: list[str] = field(default_factory=list)
    measure: str = "mass"
    curves: pd.DataFrame = field(default_factory=lambda: pd.DataFrame(columns=CURVE_COLUMNS))
    tracked: pd.DataFrame = field(default_factory=lambda: pd.DataFrame(columns=TRACKED_COLUMNS))
    at_chance: list[str] = field(default_factory=list)  # clean cells whose test top-1 is not above chance


def not_above_chance(top1: float, count: int, num_classes: int, level: float = LEVEL) -> bool:
    """Whether a test top-1 (percent, over `count` images) is not above chance (1 / `num_classes`): the
    one-sided exact binomial test of its correct count against Binomial(count, 1 / num_classes) does not
    reject at `level`."""
    correct = int(round(top1 * count / 100))
    return bool(stats.binomtest(correct, count, 1 / num_classes, alternative="greater").pvalue >= level)


def _clean_cell_at_chance(cell_dir: Path) -> bool:
    """A clean cell whose final test top-1 stayed at chance (the class count from its projection results)."""
    manifest = read_manifest(cell_dir) or {}
    data = (manifest.get("settings") or {}).get("data") or {}
    test = (manifest.get("final") or {}).get("test") or {}
    if float(data.get("noise") or 0.0) != 0 or not test.get("count") or manifest.get("projections") is None:
        return False
    docs = (read_json(p) for p in sorted(Path(manifest["projections"]).glob("*.json")))
    classes = next((d.get("num_classes") for d in docs if isinstance(d, dict) and d.get("num_classes")), None)
    return bool(classes) and not_above_chance(float(test["top1"]), int(test["count"]), int(classes))


def _cell_rows(cell_dir: Path, base: Path, measure: str) -> tuple[list[dict[str, Any]], pd.DataFrame]:
    """The cell's rows of the study table and its tracked curves (empty when training was not tracked)."""
    manifest = read_manifest(cell_dir)
    settings = manifest.get("settings") or {}
    data = settings.get("data") or {}
    run = load_run(cell_dir)
    proj = run.projections
    proj = proj[proj["kind"] != "net"]
    final = manifest["final"]
    trained_epoch = max(int(e) for e in manifest["epochs"])
    drops = drop_frame(run.reinit_doc) if run.reinit_doc is not None else pd.DataFrame()
    splits = manifest.get("reinit_splits") if isinstance(manifest.get("reinit_splits"), dict) else {}
    train_doc = read_json(Path(splits["train"])) if splits.get("train") else None
    drops_train = drop_frame(train_doc) if isinstance(train_doc, dict) else pd.DataFrame()
    init = {r["name"]: r for _, r in proj[pd.to_numeric(proj["epoch"]) == 0].iterrows()}
    subsample = int(data.get("subsample_classes") or 0)
    # older manifests do not record the class count: the class subset's, else the 10 of most datasets
    num_classes = int(manifest.get("num_classes") or subsample or 10)
    train_size = data.get("train_size")
    context = {"arch": settings.get("arch") or run.reinit_doc.get("arch"),
               "dataset": data.get("dataset") or run.reinit_doc.get("dataset"),
               "subsample": subsample, "train_size": int(train_size or 0),  # 0: every training image
               "noise": float(data.get("noise") or 0.0), "seed": int(settings["seed"]),
               "cell": str(cell_dir.relative_to(base)), "num_classes": num_classes,
               "regime": cell_regime(float(final["test"]["top1"]), float(final["train"]["top1"]), num_classes)}
    context["condition"] = Corruption(context["noise"]).label
    rows = []
    for _, r in proj.iterrows():
        name, epoch = r["name"], int(r["epoch"])

        def drop(label: str, frame: pd.DataFrame = drops) -> float:
            if label in frame.index and name in frame.columns:
                return float(frame.loc[label, name])
            return float("nan")

        mass = float(r["mass"])
        rows.append({**context, "epoch": epoch, "trained": epoch == trained_epoch, "layer": name,
                     "kind": r.get("kind"), "stage": r.get("stage"), "block": r.get("block"), "N": r.get("N"),
                     "d": r.get("d"), "mass": mass, "mean": r.get("mean"), "std": r.get("std"),
                     "p_value": r.get("p_value"), "p_adjusted": r.get("p_adjusted"), "biased": r.get("biased"),
                     "l2_dist": r.get("l2_dist"), "mass_init": float(init[name]["mass"]) if name in init else np.nan,
                     "bias": bias_measure(mass, _num(r.get("N")), _num(r.get("p_value")), measure),
                     "drop_reinit_0": drop("0"), "drop_rand": drop("rand"),
                     "drop_reinit_0_train": drop("0", drops_train), "drop_rand_train": drop("rand", drops_train),
                     "test_top1": float(final["test"]["top1"]), "train_top1": float(final["train"]["top1"])})
    tracked = tracked_curves(run)
    if tracked is None:
        return rows, pd.DataFrame(columns=CURVE_COLUMNS)
    return rows, tracked.rename(columns={"name": "layer"}).assign(**context).reindex(columns=CURVE_COLUMNS)


def finished_cells(study_dir: Path) -> list[Path]:
    """The finished cell folders below STUDY/cells, in path order."""
    root = study_dir / CELLS_DIR
    found = sorted(p.parent for p in root.rglob(MANIFEST_NAME)) if root.is_dir() else []
    return [p for p in found if run_finished(p)]


def load_study(study_dir: str | os.PathLike, measure: str = "mass") -> StudyData:
    """Read every finished cell of a study folder into the tidy table and the per-cell table."""
    base = Path(study_dir)
    study = read_study(base)
    if study is None:
        raise HparrError(f"{base} is not a study folder (no study.json of `hparr study`)")
    check_options(THRESHOLD, measure)
    cells = finished_cells(base)
    if not cells:
        raise HparrError(f"no finished cell under {base / CELLS_DIR}: run `hparr study` first")
    parts = [_cell_rows(c, base, measure) for c in cells]
    table = pd.DataFrame([row for rows, _ in parts for row in rows], columns=COLUMNS)
    for col in ("stage", "block", "N", "d"):
        table[col] = pd.to_numeric(table[col]).astype("Int64")
    table["biased"] = table["biased"].astype("boolean")
    table = _in_order(table, "epoch")
    curves = [c for _, c in parts if len(c)]
    curves = _in_order(pd.concat(curves, ignore_index=True), "step") if curves else pd.DataFrame(columns=CURVE_COLUMNS)
    done = {str(c.relative_to(base)) for c in cells}
    missing = [c for c in study.get("cells", []) if c not in done]
    at_chance = [str(c.relative_to(base)) for c in cells if _clean_cell_at_chance(c)]
    return StudyData(base, study, table, cell_table(table), missing, measure, curves, tracked_by_epoch(curves),
                     at_chance)


def _in_order(table: pd.DataFrame, time: str) -> pd.DataFrame:
    """Rows by setting, condition (clean, noise levels, pixel shuffle), seed, `time` and layer."""
    return table.sort_values(["arch", "dataset", "subsample", "train_size", "noise", "seed", time, "stage", "block"],
                             key=lambda s: s.map(lambda n: Corruption(n).order) if s.name == "noise" else s,
                             kind="stable").reset_index(drop=True)


def tracked_by_epoch(curves: pd.DataFrame) -> pd.DataFrame:
    """The tracked curves over seeds: per setting x condition x layer x tracked epoch, the mean over the seeds
    tracked there of the layer's mass and mean projection with their Student-t 95% intervals (`t_interval`), and
    the share of those seeds in which the layer is biased."""
    keys = ["arch", "dataset", "subsample", "train_size", "noise", "condition", "layer", "stage", "block", "epoch"]
    rows = []
    for key, part in curves.groupby(keys, sort=False, dropna=False):
        mass, mean = t_interval(part["mass"], bounds=BOUNDS["mass"]), t_interval(part["mean"])
        rows.append({**dict(zip(keys, key)), "n_seeds": int(part["seed"].nunique()),
                     "mass": mass["mean"], "mass_low": mass["low"], "mass_high": mass["high"],
                     "mean": mean["mean"], "mean_low": mean["low"], "mean_high": mean["high"],
                     "share_biased": float(part["biased"].fillna(False).astype(bool).mean())})
    return pd.DataFrame(rows, columns=TRACKED_COLUMNS)


def cell_table(table: pd.DataFrame) -> pd.DataFrame:
    """One row per cell at its final epoch: the share of biased layers and the mean bias over layers, trained
    and at epoch 0, and the cell's accuracies."""
    rows = []
    for cell, part in table.groupby("cell", sort=False):
        trained = part[part["trained"]]
        init = part[part["epoch"] == 0]
        first = part.iloc[0]
        rows.append({"arch": first["arch"], "dataset": first["dataset"], "subsample": int(first["subsample"]),
                     "train_size": int(first["train_size"]),
                     "setting": setting_label(first["arch"], first["dataset"], int(first["subsample"]),
                                              int(first["train_size"])),
                     "noise": float(first["noise"]), "condition": first["condition"], "seed": int(first["seed"]),
                     "cell": cell, "epoch": int(trained["epoch"].max()) if len(trained) else None,
                     "n_layers": len(trained),
                     "share_biased": float(trained["biased"].fillna(False).astype(bool).mean()),
                     "share_biased_init": float(init["biased"].fillna(False).astype(bool).mean()) if len(init)
                     else np.nan,
                     "bias": float(trained["bias"].mean()), "bias_init": float(init["bias"].mean()) if len(init)
                     else np.nan,
                     "test_top1": float(first["test_top1"]), "train_top1": float(first["train_top1"]),
                     "num_classes": int(first["num_classes"]), "regime": first["regime"]})
    return pd.DataFrame(rows, columns=CELL_COLUMNS)


# --- statistics ----------------------------------------------------------------------------------

def t_interval(values: Sequence[float], confidence: float = CONFIDENCE,
               bounds: tuple[float, float] | None = None) -> dict[str, float]:
    """Mean of the finite `values` with its Student-t interval: mean +/- t(n-1) sd / sqrt(n) (NaN for n < 2),
    cut to `bounds` (the range the quantity can take, e.g. (0, 1) for a share)."""
    x = np.asarray([v for v in values if v is not None and np.isfinite(v)], dtype=float)
    n = len(x)
    mean = float(x.mean()) if n else float("nan")
    if n < 2:
        return {"mean": mean, "low": float("nan"), "high": float("nan"), "n": n}
    half = float(stats.t.ppf(0.5 + confidence / 2, n - 1) * x.std(ddof=1) / math.sqrt(n))
    low, high = mean - half, mean + half
    if bounds is not None:
        low, high = max(low, bounds[0]), min(high, bounds[1])
    return {"mean": mean, "low": low, "high": high, "n": n}


BOUNDS = {"share_biased": (0.0, 1.0), "share_biased_init": (0.0, 1.0), "test_top1": (0.0, 100.0),
          "train_top1": (0.0, 100.0), "mass": (0.0, 1.0)}


def rank_correlation(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Spearman's rho along the last axis (average ranks for ties; NaN when either side is constant)."""
    rx = stats.rankdata(np.asarray(x, dtype=float), axis=-1)
    ry = stats.rankdata(np.asarray(y, dtype=float), axis=-1)
    rx = rx - rx.mean(axis=-1, keepdims=True)
    ry = ry - ry.mean(axis=-1, keepdims=True)
    with np.errstate(invalid="ignore", divide="ignore"):
        return (rx * ry).sum(axis=-1) / np.sqrt((rx * rx).sum(axis=-1) * (ry * ry).sum(axis=-1))


def pooled_spearman(groups: Mapping[Any, tuple[Sequence[float], Sequence[float]]], seed: int = STATS_SEED,
                    n_bootstrap: int = N_BOOTSTRAP, n_permutations: int = N_PERMUTATIONS) -> dict[str, Any]:
    """The pooled correlation of bias and criticality over seeds.

    `groups`: {seed: (bias per layer, drop per layer)}. Layers with a missing value in any seed are left out
    (the permutation test needs the same layers in each seed); a seed whose bias or drop is constant has no
    rho and is left out. Returns the per-seed rhos, their mean (`rho`), its 95% percentile bootstrap interval
    resampling seeds, and the two-sided permutation p-value of the mean under shuffles of the layers within
    each seed (exact when the shuffles number at most `n_permutations`).
    """
    out: dict[str, Any] = {"rho": float("nan"), "low": float("nan"), "high": float("nan"),
                           "p_value": float("nan"), "per_seed": {}, "n_seeds": 0, "n_layers": 0, "exact": None,
                           "note": None}
    keys = list(groups)
    if not keys:
        out["note"] = "no seed"
        return out
    xs = [np.asarray(groups[k][0], dtype=float) for k in keys]
    ys = [np.asarray(groups[k][1], dtype=float) for k in keys]
    if len({len(x) for x in xs + ys}) != 1:
        raise ValueError("every seed needs the same layers")
    keep = np.logical_and.reduce([np.isfinite(x) & np.isfinite(y) for x, y in zip(xs, ys)])
    xs, ys = [x[keep] for x in xs], [y[keep] for y in ys]
    out["n_layers"] = int(keep.sum())
    if out["n_layers"] < 3:
        out["note"] = f"{out['n_layers']} layer(s) have a bias and a drop in every seed; at least 3 are needed"
        return out
    rhos = {k: float(rank_correlation(x, y)) for k, x, y in zip(keys, xs, ys)}
    out["per_seed"] = rhos
    used = [i for i, k in enumerate(keys) if np.isfinite(rhos[k])]
    out["n_seeds"] = len(used)
    if not used:
        out["note"] = "the bias or the drop is the same for every layer in every seed: no ranking"
        return out
    xs, ys = [xs[i] for i in used], [ys[i] for i in used]
    values = np.array([rhos[keys[i]] for i in used])
    out["rho"] = float(values.mean())
    if len(used) >= 2:
        ci = stats.bootstrap((values,), np.mean, n_resamples=n_bootstrap, confidence_level=CONFIDENCE,
                             method="percentile", rng=np.random.default_rng(seed)).confidence_interval
        out["low"], out["high"] = float(ci.low), float(ci.high)
    else:
        out["note"] = "one seed: no interval over seeds"

    def statistic(*drops, axis=-1):
        return np.mean([rank_correlation(x, d) for x, d in zip(xs, drops)], axis=0)

    test = stats.permutation_test(tuple(ys), statistic, permutation_type="pairings", vectorized=True,
                                  n_resamples=n_permutations, alternative="two-sided",
                                  rng=np.random.default_rng(seed))
    out["p_value"] = float(test.pvalue)
    out["exact"] = len(test.null_distribution) < n_permutations or \
        math.factorial(out["n_layers"]) ** len(used) <= n_permutations
    return out


def spearman_across(x: Sequence[float], y: Sequence[float], confidence: float = CONFIDENCE) -> dict[str, Any]:
    """Spearman's rho over paired finite values, scipy's p-value, and a Fisher-z interval
    tanh(atanh(rho) +/- z sqrt(1.06 / (n - 3))) (NaN for n < 4)."""
    x, y = np.asarray(x, dtype=float), np.asarray(y, dtype=float)
    ok = np.isfinite(x) & np.isfinite(y)
    x, y = x[ok], y[ok]
    out = {"rho": float("nan"), "p_value": float("nan"), "low": float("nan"), "high": float("nan"), "n": int(len(x))}
    if len(x) < 3 or np.ptp(x) == 0 or np.ptp(y) == 0:
        return out
    res = stats.spearmanr(x, y)
    out["rho"], out["p_value"] = float(res.statistic), float(res.pvalue)
    if len(x) > 3 and abs(out["rho"]) < 1:
        z, se = math.atanh(out["rho"]), math.sqrt(1.06 / (len(x) - 3))
        q = float(stats.norm.ppf(0.5 + confidence / 2))
        out["low"], out["high"] = math.tanh(z - q * se), math.tanh(z + q * se)
    elif len(x) > 3:
        out["low"] = out["high"] = out["rho"]
    return out


def _paired(cells: pd.DataFrame, a: str, b: str | None = None, other: pd.DataFrame | None = None) -> dict:
    """t interval of cells[a] - cells[b] (same cell), or of cells[a] - other[a] paired by seed."""
    if other is None:
        return t_interval((cells[a] - cells[b]).tolist())
    joined = cells.set_index("seed")[[a]].join(other.set_index("seed")[[a]], suffixes=("", "_other"), how="inner")
    return {**t_interval((joined[a] - joined[f"{a}_other"]).tolist()), "seeds": sorted(joined.index.tolist())}


def _criticality(table: pd.DataFrame, cells: pd.DataFrame, drop: str, seed: int) -> dict[str, Any]:
    """`pooled_spearman` of the trained bias and the drop column `drop` over the layers of `cells`, by seed."""
    trained = table[table["cell"].isin(cells["cell"]) & table["trained"]]
    layers = list(dict.fromkeys(trained["layer"]))
    groups = {}
    for s, rows in trained.groupby("seed"):
        rows = rows.set_index("layer").reindex(layers)
        groups[int(s)] = (rows["bias"].astype(float).to_numpy(), rows[drop].astype(float).to_numpy())
    return pooled_spearman(groups, seed=seed)


def claims(data: StudyData, seed: int = STATS_SEED) -> dict[str, Any]:
    """The numbers behind the three claims, per setting (architecture x dataset x class subset x training-set
    size). Each cell is learned, memorized or neither (`cell_regime`); claim 2 compares the memorized cells of a
    corruption with the clean cells of the same seeds; claim 3 is measured on the test split for every condition
    and, where the cells measured it, on the training split: for the clean cells and the memorized ones."""
    out = []
    cells, table = data.cells, data.table
    for setting, part in cells.groupby("setting", sort=False):
        conditions = []
        clean = part[part["noise"] == 0]
        for noise in sorted(part["noise"].unique(), key=lambda n: Corruption(n).order):
            c = part[part["noise"] == noise]
            entry: dict[str, Any] = {"condition": Corruption(noise).label, "noise": float(noise),
                                     "seeds": sorted(c["seed"].tolist()),
                                     "regimes": {r: sorted(c.loc[c["regime"] == r, "seed"].tolist()) for r in REGIMES}}
            for col in ("share_biased", "share_biased_init", "bias", "bias_init", "test_top1", "train_top1"):
                bounds = BOUNDS.get(col, (0.0, 0.5) if data.measure == "mass" else (0.0, math.inf))
                entry[col] = t_interval(c[col].tolist(), bounds=bounds)
            entry["emergence"] = _paired(c, "bias", "bias_init")
            entry["emergence_share"] = _paired(c, "share_biased", "share_biased_init")
            memorized = c[c["regime"] == "memorized"]
            if noise != 0 and len(clean):
                entry["vs_clean"] = {"bias": _paired(c, "bias", other=clean),
                                     "share_biased": _paired(c, "share_biased", other=clean),
                                     "test_top1": _paired(c, "test_top1", other=clean),
                                     "train_top1": _paired(c, "train_top1", other=clean)}
                if len(memorized):
                    entry["memorized_vs_clean"] = {"bias": _paired(memorized, "bias", other=clean),
                                                   "share_biased": _paired(memorized, "share_biased", other=clean)}
            entry["criticality"] = _criticality(table, c, "drop_reinit_0", seed)
            # on the training split: the clean cells, and the cells that memorized their corrupted training set
            on_train = c if noise == 0 else memorized
            trained_rows = table[table["cell"].isin(on_train["cell"]) & table["trained"]]
            if len(on_train) and trained_rows["drop_reinit_0_train"].notna().any():
                entry["criticality_train"] = _criticality(table, on_train, "drop_reinit_0_train", seed)
                entry["criticality_train"]["cells"] = "clean" if noise == 0 else "memorized"
            conditions.append(entry)
        learning = {f"{y}_vs_{x}": spearman_across(part[y], part[x])
                    for y in ("bias", "share_biased") for x in ("test_top1", "train_top1")}
        first = part.iloc[0]
        out.append({"setting": setting, "arch": first["arch"], "dataset": first["dataset"],
                    "subsample": int(first["subsample"]), "train_size": int(first["train_size"]),
                    "cells": len(part), "conditions": conditions,
                    "learning": learning})
    return {"settings": out, "confidence": CONFIDENCE, "n_bootstrap": N_BOOTSTRAP, "n_permutations": N_PERMUTATIONS,
            "stats_seed": seed, "bias_measure": data.measure, "regime_rule": REGIME_RULE}


# --- text ----------------------------------------------------------------------------------------

def _f(value: float, fmt: str = ".3f") -> str:
    return "n/a" if value is None or not np.isfinite(value) else format(value, fmt)


def _ci(t: Mapping[str, float], fmt: str = ".3f") -> str:
    """`mean [low, high]` (or `mean (one seed)`)."""
    if not np.isfinite(t["low"]):
        return f"{_f(t['mean'], fmt)} (n = {t['n']}: no interval)"
    return f"{_f(t['mean'], fmt)} [{_f(t['low'], fmt)}, {_f(t['high'], fmt)}]"


def verdict(low: float, high: float, up: str, down: str) -> str:
    """What an interval says about a quantity that the claim wants above 0."""
    if not (np.isfinite(low) and np.isfinite(high)):
        return "**undetermined**: too few seeds for an interval"
    if low > 0:
        return f"**supported**: {up}"
    if high < 0:
        return f"**contradicted**: {down}"
    return "**not supported by this data**: the 95% interval includes 0"


def _rho_text(r: Mapping[str, Any]) -> str:
    ci = f" [{_f(r['low'], '.2f')}, {_f(r['high'], '.2f')}]" if np.isfinite(r["low"]) else ""
    return f"rho = {_f(r['rho'], '.2f')}{ci}, p = {_f(r['p_value'], '.2g')}, n = {r['n']} cells"


def answer_lines(numbers: Mapping[str, Any], measure_text: str) -> list[str]:
    """The three claims in numbers, as Markdown."""
    lines = []
    for s in numbers["settings"]:
        lines += [f"### {s['setting']} ({s['cells']} cells)", ""]
        lines += ["**Claim 1: bias emerges with training and goes with learning.**", ""]
        for c in s["conditions"]:
            e = c["emergence"]
            lines.append(
                f"- {c['condition']} ({len(c['seeds'])} seeds): share of biased layers "
                f"{_ci(c['share_biased_init'], '.2f')} at init -> {_ci(c['share_biased'], '.2f')} trained; "
                f"mean {measure_text} {_ci(c['bias_init'])} -> {_ci(c['bias'])}; change {_ci(e)}: "
                + verdict(e["low"], e["high"], "the bias grows with training", "the bias shrinks with training")
                + ".")
        learn = s["learning"]
        lines.append(f"- Across the cells, mean {measure_text} against test top-1: "
                     f"{_rho_text(learn['bias_vs_test_top1'])}; "
                     f"against train top-1 on the cell's own labels: {_rho_text(learn['bias_vs_train_top1'])}. "
                     f"Share of biased layers against test top-1: {_rho_text(learn['share_biased_vs_test_top1'])}; "
                     f"against train top-1: {_rho_text(learn['share_biased_vs_train_top1'])}.")
        r = learn["bias_vs_test_top1"]
        lines += ["- Bias and learning (test top-1): " + verdict(r["low"], r["high"], "more bias where the model "
                  "learned more", "less bias where the model learned more") + ".", ""]
        lines += ["**Claim 2: memorization (corrupted labels, shuffled pixels) changes the bias.**", ""]
        corrupted = [c for c in s["conditions"] if "vs_clean" in c]
        clean_top1 = next(((c["test_top1"], c["train_top1"]) for c in s["conditions"] if c["noise"] == 0), None)
        if not corrupted:
            lines.append("- No corrupted condition with a clean one to compare: not tested.")
        for c in corrupted:
            regimes = c["regimes"]
            counts = (f"{len(regimes['memorized'])} of {len(c['seeds'])} cells memorized their training labels, "
                      f"{len(regimes['learned'])} learned, {len(regimes['neither'])} neither")
            if "memorized_vs_clean" in c:
                m = c["memorized_vs_clean"]
                lines.append(f"- {c['condition']}: {counts}. Memorized cells minus the clean cells of the same seeds "
                             f"({len(m['bias'].get('seeds', []))} seeds): mean {measure_text} {_ci(m['bias'])}, "
                             f"share of biased layers {_ci(m['share_biased'], '.2f')}: {_change_word(m['bias'])}.")
            else:
                lines.append(f"- {c['condition']}: {counts}: **no cell memorized**, so this condition does not test "
                             "claim 2 (the comparison below is of training on corrupted data, not of memorization).")
            v = c["vs_clean"]
            lines.append(
                f"- All {c['condition']} cells minus clean, paired by seed ({len(v['bias'].get('seeds', []))} seeds): "
                f"mean {measure_text} {_ci(v['bias'])}, share of biased layers {_ci(v['share_biased'], '.2f')}: "
                f"{_change_word(v['bias'])}. The {c['condition']} cells reach test top-1 {_ci(c['test_top1'], '.1f')}% "
                f"and train top-1 {_ci(c['train_top1'], '.1f')}% on their own labels (clean: "
                f"{_ci(clean_top1[0], '.1f')}% and {_ci(clean_top1[1], '.1f')}%).")
        lines += ["", "**Claim 3: the biased layers are the critical ones.**", ""]
        for c in s["conditions"]:
            lines.append(_criticality_line(c["condition"], "test images, all cells", c["criticality"]))
            if "criticality_train" in c:
                k = c["criticality_train"]
                lines.append(_criticality_line(c["condition"], f"own training labels, {k['cells']} cells", k))
        if not any("criticality_train" in c for c in s["conditions"]):
            lines.append("- The cells measured the drop on the test images only (--eval-split test): a network at "
                         "chance on the test set drops by about nothing there whichever layer is re-initialized.")
        lines.append("")
    return lines


def _change_word(change: Mapping[str, Any]) -> str:
    if np.isfinite(change["low"]) and (change["low"] > 0 or change["high"] < 0):
        return "**changes it**: " + ("higher" if change["low"] > 0 else "lower") + " than clean"
    if np.isfinite(change["low"]):
        return "**no change detected**: the 95% interval includes 0"
    return "**undetermined**: too few paired seeds for an interval"


def _criticality_line(condition: str, where: str, k: Mapping[str, Any]) -> str:
    per_seed = ", ".join(f"seed {seed}: {_f(r, '.2f')}" for seed, r in k["per_seed"].items())
    if not np.isfinite(k["rho"]):
        return f"- {condition} ({where}): undefined ({k['note']})."
    ci = f"[{_f(k['low'], '.2f')}, {_f(k['high'], '.2f')}]" if np.isfinite(k["low"]) else "(no interval)"
    ok = np.isfinite(k["low"]) and k["low"] > 0 and k["p_value"] < LEVEL
    word = ("**undetermined**: too few seeds for an interval" if not np.isfinite(k["low"]) else
            "**supported**" if ok else "**contradicted**" if np.isfinite(k["high"]) and k["high"] < 0 and
            k["p_value"] < LEVEL else "**not supported by this data**")
    return (f"- {condition} ({where}): pooled Spearman rho = {_f(k['rho'], '.2f')} {ci} over {k['n_seeds']} seeds x "
            f"{k['n_layers']} layers, permutation p = {_f(k['p_value'], '.3g')}{' (exact)' if k['exact'] else ''}; "
            f"per seed: {per_seed}: {word}.")


METHODS = [
    "- Means over seeds: Student-t 95% interval, mean +/- t(0.975, n-1) sd / sqrt(n), cut to the range the "
    "quantity can take (a share to [0, 1], an accuracy to [0, 100], |mass - 0.5| to [0, 0.5]); no interval for "
    "one seed.",
    "- Changes (trained minus init; a corruption minus clean): the same interval on the per-seed differences "
    "(paired by seed: a seed fixes the initialization).",
    "- Bias against criticality: per seed, Spearman's rho over the layers of the trained bias and the relative "
    "top-1 drop under re-initialization to epoch 0; pooled: the mean of the per-seed rhos; 95% interval: "
    f"percentile bootstrap resampling seeds ({N_BOOTSTRAP} resamples, scipy.stats.bootstrap); p-value: two-sided "
    f"permutation test shuffling the layers within each seed ({N_PERMUTATIONS} shuffles, exact enumeration when "
    f"there are fewer, scipy.stats.permutation_test). Supported when the interval lies above 0 and p < {LEVEL:g}.",
    "- Bias against learning: Spearman's rho across cells (scipy's p-value), 95% interval by the Fisher z "
    "transform with standard error sqrt(1.06 / (n - 3)).",
    f"- Random draws: numpy Generators seeded with {STATS_SEED}, so the report is the same on every run.",
    f"- What each cell did, from its own final accuracies: {REGIME_RULE}. Claim 2 compares the memorized cells of a "
    "corruption with the clean cells of the same seeds; claim 3 is measured on the test images for every "
    "condition, and on the training images with the labels trained on (--eval-split train) for the clean cells "
    "and the memorized ones.",
]

FIGURE_HELP = {
    "study_mass_by_condition": ("(a) Trained mass per layer against the condition",
                                "One panel per layer: the trained mass of each seed (grey dots), their mean with its "
                                "95% t interval (blue), the mean mass at initialization (black x) and the null's "
                                "95% band (grey)."),
    "study_mass_by_epoch": ("(b) Mass across epochs",
                            "One panel per condition: each layer's mass, the mean over seeds. Where the cells "
                            "tracked their training (tracking.csv), the line follows every tracked epoch with the "
                            "95% t interval over seeds as its band, and the points are the snapshots; otherwise "
                            "the line joins the snapshots and the band is the range of the seeds. The grey band is "
                            "the null's 95% band of the smallest layer."),
    "study_bias_vs_criticality": ("(c) Bias against criticality, pooled over seeds",
                                  "One point per layer x seed: its trained bias against its drop under "
                                  "re-initialization to epoch 0, one colour per seed with its Spearman rho; the "
                                  "title gives the pooled rho, its bootstrap interval over seeds and the "
                                  "permutation p-value."),
    "study_bias_vs_criticality_train": ("(c') Bias against criticality on the training images",
                                        "As (c), with the drop measured on each cell's training images and the "
                                        "labels it was trained on (--eval-split train), for the clean cells and "
                                        "the memorized ones: where a network at chance on the test set keeps what "
                                        "it memorized."),
    "study_bias_vs_learning": ("(d) Bias against learning",
                               "One point per cell: the share of biased layers (top) and the mean bias (bottom) "
                               "against test top-1 (left) and train top-1 on the cell's own labels (right), "
                               "with Spearman's rho across cells."),
}


def condition_table(numbers: Mapping[str, Any]) -> pd.DataFrame:
    rows = []
    for s in numbers["settings"]:
        for c in s["conditions"]:
            k = c["criticality"]
            rows.append({"setting": s["setting"], "condition": c["condition"], "seeds": len(c["seeds"]),
                         "learned / memorized / neither": " / ".join(str(len(c["regimes"][r])) for r in REGIMES),
                         "test top-1 %": _ci(c["test_top1"], ".1f"), "train top-1 % (own labels)":
                         _ci(c["train_top1"], ".1f"), "share biased (trained)": _ci(c["share_biased"], ".2f"),
                         "share biased (init)": _ci(c["share_biased_init"], ".2f"), "mean bias": _ci(c["bias"]),
                         "pooled rho (bias, drop)": _f(k["rho"], ".2f"),
                         "p (perm.)": _f(k["p_value"], ".2g"),
                         "pooled rho, train split": _f(c.get("criticality_train", {}).get("rho", float("nan")),
                                                       ".2f")})
    return pd.DataFrame(rows)


def summary_markdown(data: StudyData, numbers: Mapping[str, Any], figures: Sequence[str], measure_text: str) -> str:
    grid = data.study.get("grid", {})
    lines = [f"# Study: {len(data.cells)} finished cells", "",
             "**Question.** Across seeds and corruptions: does hyperplane-arrangement bias emerge with training and "
             "go with learning, does memorization change it, and are the biased layers the critical ones?", "",
             "Grid: " + "; ".join(f"{k}: {', '.join(map(str, v))}" for k, v in grid.items()) + ".", ""]
    if data.missing:
        lines += [f"Not finished ({len(data.missing)}): " + ", ".join(data.missing) + ". The numbers below use the "
                  "finished cells only.", ""]
    if data.at_chance:
        lines += [f"**Warning: {len(data.at_chance)} clean cell(s) stayed at chance** (test top-1 not above chance, "
                  f"one-sided binomial test at {LEVEL:g}): " + ", ".join(data.at_chance)
                  + ". They did not learn: train longer (--epochs) or with another --lr before reading the claims "
                  "about learning.", ""]
    lines += ["## The claims in numbers", "",
              f"Intervals are 95%; bias is {measure_text} of a layer's trained projections; a layer is biased when "
              "its Holm-corrected test rejects the null at its level.", "",
              f"Each cell is classified from its own final accuracies: {REGIME_RULE}.", "",
              *answer_lines(numbers, measure_text),
              "## Per condition", "", markdown_table(condition_table(numbers)), "", "## Figures", ""]
    for name in figures:
        head, text = FIGURE_HELP[name]
        lines += [f"### {head}", "", f"![{head}]({name}.png) ([PDF]({name}.pdf))", "", text, ""]
    lines += ["## Methods", "", *METHODS, "", "## Files", "",
              "- study.csv and study.parquet: one row per cell x snapshot epoch x layer; statistics.json: every "
              "number above; each cell's own report: cells/<arch>/<dataset>/<condition>/seed_<s>/report/."]
    if len(data.tracked):
        lines.append(f"- tracked_by_epoch.csv: the tracked training of {data.curves['cell'].nunique()} cells "
                     "over seeds, one row per condition x layer x tracked epoch: the mean mass and mean projection "
                     "with their 95% t intervals, and the share of seeds in which the layer is biased.")
    return "\n".join([*lines, ""])


def markdown_html(text: str, title: str) -> str:
    """The summary's Markdown (headings, bullets, tables, images, bold) as a standalone HTML page."""
    def inline(s: str) -> str:
        s = html.escape(s)
        s = re.sub(r"!\[([^\]]*)\]\(([^)]+)\)", r'<a href="\2"><img src="\2" alt="\1"></a>', s)
        s = re.sub(r"\[([^\]]+)\]\(([^)]+)\)", r'<a href="\2">\1</a>', s)
        return re.sub(r"\*\*(.+?)\*\*", r"<strong>\1</strong>", s)

    body, in_list, table = [], False, []

    def flush_table() -> None:
        if table:
            head, rows = table[0], table[2:]
            body.append("<table><tr>" + "".join(f"<th>{inline(c)}</th>" for c in head) + "</tr>"
                        + "".join("<tr>" + "".join(f"<td>{inline(c)}</td>" for c in r) + "</tr>" for r in rows)
                        + "</table>")
            table.clear()

    for line in text.splitlines():
        if line.startswith("|"):
            table.append([c.strip() for c in line.strip("|").split(" | ")])
            continue
        flush_table()
        if line.startswith("- "):
            if not in_list:
                body.append("<ul>")
                in_list = True
            body.append(f"<li>{inline(line[2:])}</li>")
            continue
        if in_list:
            body.append("</ul>")
            in_list = False
        heading = re.match(r"(#+) (.*)", line)
        if heading:
            level = len(heading.group(1))
            body.append(f"<h{level}>{inline(heading.group(2))}</h{level}>")
        elif line.strip():
            body.append(f"<p>{inline(line)}</p>")
    flush_table()
    if in_list:
        body.append("</ul>")
    style = ("body{font-family:sans-serif;max-width:1200px;margin:2em auto;padding:0 1em;line-height:1.4}"
             "table{border-collapse:collapse;font-size:0.9em}th,td{border:1px solid #ccc;padding:3px 6px}"
             "img{max-width:100%;border:1px solid #eee}")
    return (f"<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\"><title>{html.escape(title)}</title>"
            f"<style>{style}</style></head><body>\n" + "\n".join(body) + "\n</body></html>\n")


# --- the report ----------------------------------------------------------------------------------

def build_study_report(study_dir: str | os.PathLike, out_dir: str | os.PathLike | None = None,
                       threshold: float = THRESHOLD, measure: str = "mass") -> dict[str, Path]:
    """Write the report of a study folder to `out_dir` (default STUDY/report): study.csv, study.parquet,
    tracked_by_epoch.csv (when the cells tracked their training), statistics.json, figures (a)-(d) as PNG and
    PDF, summary.md and index.html. Returns {file name: path}."""
    from .study_figures import draw_all
    from .tables import BIAS_MEASURES

    check_options(threshold, measure)
    data = load_study(study_dir, measure)
    out = Path(out_dir) if out_dir is not None else data.study_dir / "report"
    files.ensure_dir(out)
    numbers = claims(data)
    written: list[Path] = []
    with files.atomic_path(out / "study.csv") as tmp:
        data.table.to_csv(tmp, index=False)
    written.append(out / "study.csv")
    try:
        with files.atomic_path(out / "study.parquet") as tmp:
            data.table.to_parquet(tmp, index=False)
        written.append(out / "study.parquet")
    except ImportError:  # no pyarrow: the CSV alone
        pass
    if len(data.tracked):
        with files.atomic_path(out / "tracked_by_epoch.csv") as tmp:
            data.tracked.to_csv(tmp, index=False)
        written.append(out / "tracked_by_epoch.csv")
    measure_text = BIAS_MEASURES[measure]
    figures, paths = draw_all(data, numbers, out, threshold, measure_text)
    written += paths
    files.write_json(out / "statistics.json", {
        "format": "hparr-study-report-1", "study_dir": str(data.study_dir.resolve()), "missing": data.missing,
        "threshold": threshold, **numbers, "cells": data.cells.to_dict(orient="records"),
        "versions": versions(with_torch=False)})
    text = summary_markdown(data, numbers, figures, measure_text)
    files.write_text(out / "summary.md", text)
    files.write_text(out / "index.html", markdown_html(text, f"hparr study: {data.study_dir.name}"))
    written += [out / "statistics.json", out / "summary.md", out / "index.html"]
    return {p.name: p for p in written}
