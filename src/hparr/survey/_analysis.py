"""The survey's tests of the prediction (docs/survey.md): a trained layer is biased where its input is
non-negative, and much less where its input has both signs.

`compare` tests it across the layers of the survey and within networks, paired; `by_kind` describes each kind
of input; `control` reads the controlled test: the first layer of hparr runs that differ only in whether their
pixels were normalized (both signs) or not ([0, 1]: non-negative), paired by seed. Torch-free.
"""
from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd

from . import _stats as stats

NONNEG, SIGNED = "nonneg", "signed"
# the two readings of a layer's bias: its test's call, and its deviation |mass - 1/2|
MEASURES = {"share_biased": "the share of layers called biased (Holm-adjusted bias test)",
            "deviation": "the mean |mass - 1/2| of the layers"}
CONTROL_KEY = ["arch", "dataset", "train_size", "noise"]


def _reading(difference: float, p: float, level: float) -> str:
    """How one test reads: as predicted (non-negative inputs more biased, p <= level), against the prediction
    (less biased, p <= level), or no difference shown."""
    if not np.isfinite(p) or not np.isfinite(difference):
        return "not tested"
    if p <= level:
        return "as predicted" if difference > 0 else "against the prediction"
    return "no difference shown"


def compare(table: pd.DataFrame, level: float = 0.05, confidence: float = stats.LEVEL, seed: int = 0
            ) -> dict[str, Any]:
    """The prediction tested on a survey table (`collect.COLUMNS`): layers with non-negative inputs against
    those whose inputs have both signs (layers of unknown input are left out and counted).

    across_layers: the shares of biased layers (`stats.compare_shares`: Clopper-Pearson intervals, Fisher's and
    Boschloo's exact tests) and the mean |mass - 1/2| (`stats.compare_means`: t intervals, Welch's interval of
    the difference, a permutation test). within_networks: for each network that has layers of both kinds, its
    share of biased layers and its mean |mass - 1/2| among the non-negative-input layers minus among the others;
    `stats.paired_differences` of each (t interval, exact sign test, Wilcoxon). `reading`: each test read at
    `level` (two-sided)."""
    known = table[table["input_sign"].isin([NONNEG, SIGNED])]
    pos, neg = known[known["input_sign"] == NONNEG], known[known["input_sign"] == SIGNED]
    shares = stats.compare_shares(int(pos["biased"].sum()), len(pos), int(neg["biased"].sum()), len(neg),
                                  confidence)
    means = stats.compare_means(pos["deviation"].to_numpy(float), neg["deviation"].to_numpy(float), confidence,
                                seed=seed)
    paired_rows = []
    for network, part in known.groupby("network", sort=False):
        a, b = part[part["input_sign"] == NONNEG], part[part["input_sign"] == SIGNED]
        if len(a) and len(b):
            paired_rows.append({"network": network, "n_nonneg": len(a), "n_signed": len(b),
                                "share_biased_nonneg": float(a["biased"].mean()),
                                "share_biased_signed": float(b["biased"].mean()),
                                "deviation_nonneg": float(a["deviation"].mean()),
                                "deviation_signed": float(b["deviation"].mean())})
    paired = pd.DataFrame(paired_rows, columns=["network", "n_nonneg", "n_signed", "share_biased_nonneg",
                                                "share_biased_signed", "deviation_nonneg", "deviation_signed"])
    within = {}
    for measure in MEASURES:
        d = (paired[f"{measure}_nonneg"] - paired[f"{measure}_signed"]).to_numpy(float)
        within[measure] = stats.paired_differences(d, confidence)
    reading = {
        "across_layers_share_biased": {
            "fisher": _reading(shares["difference"], shares["p_fisher"], level),
            "boschloo": _reading(shares["difference"], shares["p_boschloo"], level)},
        "across_layers_deviation": {"permutation": _reading(means["difference"], means["p_permutation"], level)},
        **{f"within_networks_{m}": {"sign": _reading(w["mean"], w["p_sign"], level),
                                    "wilcoxon": _reading(w["mean"], w["p_wilcoxon"], level)}
           for m, w in within.items()}}
    return {"level": level, "confidence": confidence, "layers": int(len(table)),
            "layers_nonneg": int(len(pos)), "layers_signed": int(len(neg)),
            "layers_unknown": int(len(table) - len(known)),
            "networks": int(table["network"].nunique()), "networks_paired": int(len(paired)),
            "across_layers": {"share_biased": shares, "deviation": means},
            "within_networks": within, "paired": paired.to_dict(orient="records"), "reading": reading}


def by_kind(table: pd.DataFrame, confidence: float = stats.LEVEL) -> pd.DataFrame:
    """One row per input kind: its sign, layers, biased layers, their share with its Clopper-Pearson interval,
    and the mean |mass - 1/2| with its t interval."""
    rows = []
    for (kind, sign), part in table.groupby(["input_kind", "input_sign"], sort=True, dropna=False):
        k, n = int(part["biased"].sum()), len(part)
        low, high = stats.proportion_ci(k, n, confidence)
        mean, mlow, mhigh = stats.mean_ci(part["deviation"].to_numpy(float), confidence)
        rows.append({"input_kind": kind, "input_sign": sign, "layers": n, "networks": part["network"].nunique(),
                     "biased": k, "share_biased": k / n, "share_low": low, "share_high": high,
                     "deviation": mean, "deviation_low": mlow, "deviation_high": mhigh})
    return pd.DataFrame(rows)


def _plain(value: Any) -> Any:
    """A setting's value as written: None for a missing one, an integer for a whole number (a CSV's 4000.0)."""
    if value is None or (isinstance(value, float) and np.isnan(value)):
        return None
    if isinstance(value, (float, np.floating)) and float(value).is_integer():
        return int(value)
    return value.item() if isinstance(value, np.generic) else value


def control(table: pd.DataFrame, confidence: float = stats.LEVEL) -> list[dict[str, Any]]:
    """The controlled test: the first layer of hparr runs (format "run", depth 0) whose pixels were normalized
    (zero mean: both signs) against runs of the same architecture, data, training-set size and corruption whose
    pixels were not ([0, 1]: non-negative). For each such setting and each normalization: the seeds, the first
    layer's mass, |mass - 1/2| and mean normalized projection (mean cosine) with t intervals over the seeds, and
    its share of seeds called biased with a Clopper-Pearson interval; then, paired by seed, unnormalized minus
    normalized |mass - 1/2| and |mean cosine| (`stats.paired_differences`)."""
    runs = table[(table["format"] == "run") & (table["depth"] == 0) & table["normalized"].notna()]
    out = []
    for key, part in runs.groupby(CONTROL_KEY, sort=True, dropna=False):
        groups = {bool(v): g for v, g in part.groupby("normalized")}
        if set(groups) != {True, False}:
            continue
        entry: dict[str, Any] = {**dict(zip(CONTROL_KEY, (_plain(v) for v in key))),
                                 "layer": str(part["layer"].iloc[0])}
        for normalized, g in groups.items():
            name = "normalized" if normalized else "unnormalized"
            k, n = int(g["biased"].sum()), len(g)
            entry[name] = {
                "seeds": sorted(int(s) for s in g["seed"]), "N": sorted({int(x) for x in g["N"]}),
                "mass": dict(zip(("mean", "low", "high"), stats.mean_ci(g["mass"].to_numpy(float), confidence))),
                "deviation": dict(zip(("mean", "low", "high"),
                                      stats.mean_ci(g["deviation"].to_numpy(float), confidence))),
                "mean_cosine": dict(zip(("mean", "low", "high"),
                                        stats.mean_ci(g["mean"].to_numpy(float), confidence))),
                "biased": k, "share_biased": k / n,
                "share_biased_ci": list(stats.proportion_ci(k, n, confidence))}
        a = groups[False].set_index("seed")
        b = groups[True].set_index("seed")
        seeds = sorted(set(a.index) & set(b.index))
        entry["paired_seeds"] = [int(s) for s in seeds]
        entry["paired"] = {
            "deviation": stats.paired_differences(
                (a.loc[seeds, "deviation"] - b.loc[seeds, "deviation"]).to_numpy(float), confidence),
            "abs_mean_cosine": stats.paired_differences(
                (a.loc[seeds, "mean"].abs() - b.loc[seeds, "mean"].abs()).to_numpy(float), confidence)}
        out.append(entry)
    return out
