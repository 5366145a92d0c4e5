"""The study's tables, read from its cells' result files alone (no model, no data, no torch).

`load_study` reads every finished cell below STUDY/cells (its manifest, projection documents, re-initialization
result and final metrics) into one tidy table, one row per cell x snapshot epoch x layer (COLUMNS), the per-cell
table (CELL_COLUMNS) and the tracked curves over seeds (TRACKED_COLUMNS). `claims` measures the paper's three
claims across seeds and corruptions on them:

1. bias emerges with training (the trained bias against the bias at initialization, paired by seed) and goes
   with learning (across cells, the bias against test top-1 and against train top-1 on the cell's own labels);
2. memorization changes it (each corruption against the clean condition, paired by seed);
3. the biased layers are the critical ones (per seed, the Spearman correlation over layers of bias and the
   accuracy drop under re-initialization to epoch 0, pooled over seeds).

The statistics are those of `report.stats`; the methods text that states them is `report.captions.METHODS`.
"""
from __future__ import annotations

import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from ..defaults import THRESHOLD
from ..errors import HparrError
from ..layout import CELLS_DIR, MANIFEST_NAME, RUN_REPORT_FILES, Corruption
from ..results import drop_frame, read_json, read_manifest, read_study, run_finished
from ..schema import typed
from ._found import tracked_curves
from ._tables import as_float, bias_measure, check_options, layer_columns
from .discovery import load_run
from .stats import (
    CONFIDENCE,
    N_BOOTSTRAP,
    N_PERMUTATIONS,
    STATS_SEED,
    not_above_chance,
    pooled_spearman,
    spearman_across,
    t_interval,
)

# a cell's identity, then the per-layer columns of hparr.schema that the study keeps (the layer as `layer`)
CELL_KEY = ["arch", "dataset", "subsample", "train_size", "noise", "condition", "seed", "cell"]
COLUMNS = [*CELL_KEY, "epoch", "trained",
           *layer_columns(leave_out=("n_negative", "p_sign", "p_ks", "l_inf_dist"), name="layer"),
           "mass_init", "bias", "drop_reinit_0", "drop_rand", "drop_reinit_0_train", "drop_rand_train",
           "test_top1", "train_top1", "num_classes", "regime"]
CURVE_COLUMNS = [*CELL_KEY, "step", "epoch",
                 *layer_columns(leave_out=("kind", "N", "d", "std", "n_negative", "p_sign", "p_ks", "p_value",
                                           "l_inf_dist"), name="layer")]
TRACKED_COLUMNS = [*CELL_KEY[:6], "layer", "stage", "block",
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


def cell_rows(cell_dir: Path, base: Path, measure: str) -> tuple[list[dict[str, Any]], pd.DataFrame]:
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
                     "bias": bias_measure(mass, as_float(r.get("N")), as_float(r.get("p_value")), measure),
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
    return [p for p in found if run_finished(p, RUN_REPORT_FILES)]


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
    parts = [cell_rows(c, base, measure) for c in cells]
    table = pd.DataFrame([row for rows, _ in parts for row in rows], columns=COLUMNS)
    typed(table)
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


BOUNDS = {"share_biased": (0.0, 1.0), "share_biased_init": (0.0, 1.0), "test_top1": (0.0, 100.0),
          "train_top1": (0.0, 100.0), "mass": (0.0, 1.0)}




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
