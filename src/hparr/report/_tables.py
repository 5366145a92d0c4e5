"""The report's tables: each layer of the trained model joined across its projection and re-initialization
results, and the paper's main claim measured on them (are the biased layers the critical ones?)."""
from __future__ import annotations

import math
from typing import Any, Mapping, Sequence

import pandas as pd

from ..defaults import THRESHOLD, check_threshold
from ..errors import UsageError
from ..results import RAND, drop_frame, layer_entries, stage_unknown
from ..schema import INPUT, LAYER_COLUMNS, typed
from .discovery import RunResults
from .stats import spearman

BIAS_MEASURES = {
    "mass": "|mass - 0.5|",
    "mass_z": "|mass - 0.5| x 2 sqrt(N), the z-score of the mass under Binomial(N, 1/2)",
    "neglog10_p": "-log10 p_value of the layer's bias test (a p-value of 0 counts as 1e-300)",
}


def _merge_order(first: Sequence[str], second: Sequence[str]) -> list[str]:
    """`first`, with the names only in `second` inserted after their nearest predecessor in `second`."""
    out = list(first)
    for i, name in enumerate(second):
        if name in out:
            continue
        pos = next((out.index(prev) + 1 for prev in reversed(second[:i]) if prev in out), 0)
        out.insert(pos, name)
    return out


def as_float(value: Any) -> float:
    """`value` as a float: NaN for None and for a value that is not a number."""
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


def check_options(threshold: float, measure: str) -> None:
    check_threshold(threshold)
    if measure not in BIAS_MEASURES:
        raise UsageError(f"unknown bias measure {measure!r}; choose from {', '.join(BIAS_MEASURES)}")


def layer_columns(leave_out: Sequence[str] = (), name: str = "name") -> list[str]:
    """The per-layer columns of hparr.schema that a report table keeps, in the report's order: the layer's
    identity (named `name`), its mass (the report's headline), then the others in the schema's order."""
    keep = [c for c in LAYER_COLUMNS if c not in leave_out]
    first = keep.index("d") + 1 if "d" in keep else keep.index("block") + 1
    columns = [*keep[:first], "mass", *(c for c in keep[first:] if c != "mass")]
    return [name if c == "name" else c for c in columns]


TABLE_COLUMNS = [*layer_columns(leave_out=("n_negative", "p_sign", "p_ks")), *INPUT, "mass_init", "mean_init", "bias",
                 "top1_trained", "top1_reinit_0", "drop_reinit_0", "top1_rand", "drop_rand", "verdict", "missing"]


def joined_table(results: RunResults, threshold: float = THRESHOLD, measure: str = "mass") -> pd.DataFrame:
    """One row per layer of the trained model, joined by module name across projections and reinit.

    mass, mean, std, p_value, p_adjusted (Holm), biased, l2_dist, l_inf_dist: the trained model's
    projection results; mass_init, mean_init: at epoch 0; bias: `measure` of the layer (see
    BIAS_MEASURES); top1_*: test accuracies (percent) of the trained model and after re-initializing
    the layer to epoch 0 or re-randomizing it; drop_*: (top1_trained - top1_after) / top1_trained;
    verdict: "robust" when drop_reinit_0 <= `threshold`, else "critical"; missing: the side that has
    no result for the layer. `attrs` records the threshold, the measure and the test level.
    """
    check_options(threshold, measure)
    entries = {e["name"]: e for e in layer_entries(results.trained_doc)}
    if stage_unknown(results.trained_doc):  # checkpoint-only projections: layers in the file's order
        entries = {name: {**e, "stage": None, "block": None} for name, e in entries.items()}
    init = {e["name"]: e for e in layer_entries(results.init_doc)}
    doc = results.reinit_doc
    r_layers = list(doc["layers"]) if doc else []
    r_kinds = dict(zip(r_layers, doc.get("layer_kinds") or [])) if doc else {}
    r_stage_block = dict(zip(r_layers, doc.get("layer_stage_block") or [])) if doc else {}
    acc = doc["init_from_epoch"] if doc else {}
    drops = doc["relative_drop"] if doc else {}
    top1 = as_float(doc["top1_test"]) if doc else float("nan")

    def after(label: str, i: int) -> tuple[float, float]:
        if label not in acc:
            return float("nan"), float("nan")
        return as_float(acc[label][i]), as_float(drops[label][i])

    rows = []
    for name in _merge_order(list(entries), r_layers):
        e = entries.get(name, {})
        i = r_layers.index(name) if name in r_layers else None
        stage, block = e.get("stage"), e.get("block")
        if not e and name in r_stage_block:
            stage, block = r_stage_block[name]
        row = {"name": name, "kind": e.get("kind", r_kinds.get(name)), "stage": stage, "block": block,
               "N": e.get("N"), "d": e.get("d"), **{k: as_float(e.get(k)) for k in
                                                     ("mass", "mean", "std", "p_value", "p_adjusted",
                                                      "l2_dist", "l_inf_dist")},
               "biased": e.get("biased"), "null": e.get("null"), **{k: e.get(k) for k in INPUT},
               "mass_init": as_float(init.get(name, {}).get("mass")),
               "mean_init": as_float(init.get(name, {}).get("mean"))}
        row["bias"] = bias_measure(row["mass"], as_float(row["N"]), row["p_value"], measure) if e else float("nan")
        row["top1_trained"] = top1 if i is not None else float("nan")
        row["top1_reinit_0"], row["drop_reinit_0"] = after("0", i) if i is not None else (float("nan"),) * 2
        row["top1_rand"], row["drop_rand"] = after(RAND, i) if i is not None else (float("nan"),) * 2
        drop = row["drop_reinit_0"]
        row["verdict"] = None if math.isnan(drop) else "robust" if drop <= threshold else "critical"
        row["missing"] = "reinit" if i is None and doc else "projections" if not e and entries else None
        rows.append(row)
    table = typed(pd.DataFrame(rows, columns=TABLE_COLUMNS))
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
    r = spearman(both[bias], both[drop], names=("bias", "drop"), unit="layer")
    out["spearman_rho"], out["p_value"], out["note"] = r["rho"], r["p_value"], r["note"]
    return out


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
    drop = drop_frame(doc)
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
                row[m] = as_float(values[i]) if values is not None else float("nan")
            for m in REINIT_MEASURES:
                values = std_sources[m] if label == RAND else None
                row[f"{m}_sd"] = as_float(values[i]) if values is not None else float("nan")
            rows.append(row)
    return pd.DataFrame(rows, columns=columns)
