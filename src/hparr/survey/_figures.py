"""The survey's figures (PNG), from its table alone: each network's layers (mass against depth, marked by the sign
of their input), and the controlled test's first layers."""
from __future__ import annotations

import math
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import pandas as pd

from .. import files
from ..null import mass_band
from ._analysis import CONTROL_KEY

DPI = 130
_RC = {"font.size": 9, "axes.titlesize": 9, "axes.labelsize": 9, "legend.fontsize": 8, "xtick.labelsize": 8,
       "ytick.labelsize": 8, "figure.titlesize": 11}
# a layer's input sign is its colour, the kind of its input its marker (hparr.inputs kinds; others: KIND_OTHER)
SIGN_COLOUR = {"nonneg": ("tab:orange", "input non-negative"), "signed": ("tab:blue", "input of both signs"),
               "unknown": ("0.55", "input sign unknown")}
KIND_MARKER = {"image": "*", "relu": "o", "relu6": "p", "sigmoid": "8", "prelu": "v", "elu": "<", "silu": "^",
               "gelu": ">", "mish": "1", "hardswish": "D", "tanh": "d", "batchnorm": "s", "norm": "H", "conv": "P",
               "sum": "h", "mixed": "X", "unknown": "x"}
KIND_OTHER = "."


def _figure(width: float, height: float):
    from matplotlib.figure import Figure  # on first use: start-up time

    return Figure(figsize=(width, height), layout="constrained")


def _save(fig, path: Path) -> Path:
    with files.atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=DPI)
    return path


def _short(name: str, width: int = 40) -> str:
    """A panel's title: the name, its middle left out where it is too long (a run's study and seed stay)."""
    if len(name) <= width:
        return name
    head = (width - 3) // 2
    return name[:head] + "..." + name[-(width - 3 - head):]


def plot_layers(table: pd.DataFrame, path: Path, ncols: int = 4) -> Path:
    """One panel per network: each layer's mass against its depth (layer order), coloured by the sign of its
    input and shaped by the kind of its input, filled where the layer's test calls it biased, with the null's
    95% band of the mass (0.5 +/- 1.96 / (2 sqrt(N))) as a grey bar."""
    import matplotlib  # on first use: start-up time
    from matplotlib.lines import Line2D

    networks = list(dict.fromkeys(table["network"]))
    ncols = max(1, min(ncols, len(networks)))
    nrows = math.ceil(len(networks) / ncols)
    with matplotlib.rc_context(_RC):
        fig = _figure(3.2 * ncols, 2.4 * nrows + 0.9)
        axes = np.atleast_1d(fig.subplots(nrows, ncols, squeeze=False)).ravel()
        for ax, network in zip(axes, networks):
            part = table[table["network"] == network]
            for _, r in part.iterrows():
                low, high = mass_band(int(r["N"]))
                ax.plot([r["depth"]] * 2, [low, high], color="0.8", lw=4, solid_capstyle="butt", zorder=1)
            for (sign, kind), rows in part.groupby(["input_sign", "input_kind"], sort=False, dropna=False):
                colour = SIGN_COLOUR.get(sign, SIGN_COLOUR["unknown"])[0]
                biased = rows["biased"].astype(bool).to_numpy()
                ax.scatter(rows["depth"], rows["mass"], s=30, marker=KIND_MARKER.get(str(kind), KIND_OTHER),
                           zorder=3, edgecolors=colour, facecolors=[colour if b else "white" for b in biased],
                           linewidths=1.2)
            ax.axhline(0.5, color="0.3", lw=0.8, ls="--", zorder=2)
            ax.set_ylim(-0.02, 1.02)
            ax.set_title(_short(str(network)))
            ax.set_xlabel("layer (depth)")
            ax.set_ylabel("mass")
            ax.xaxis.get_major_locator().set_params(integer=True)
        for ax in axes[len(networks):]:
            ax.set_visible(False)
        handles = [Line2D([], [], ls="", marker="s", markeredgecolor=c, markerfacecolor=c, label=label)
                   for c, label in SIGN_COLOUR.values()]
        handles += [Line2D([], [], ls="", marker="o", markeredgecolor="0.2", markerfacecolor="white",
                           label="hollow: not biased (Holm)"),
                    Line2D([], [], color="0.8", lw=4, label="null 95% band of the mass")]
        kinds = list(dict.fromkeys(str(k) for k in table["input_kind"]))
        handles += [Line2D([], [], ls="", marker=KIND_MARKER.get(k, KIND_OTHER), markeredgecolor="0.2",
                           markerfacecolor="0.2", label=f"input: {k}") for k in kinds]
        fig.legend(handles=handles, loc="outside lower center", ncols=min(6, len(handles)), frameon=False)
        fig.suptitle("Each network's layers: mass (share of filters with projection <= 0) against depth")
        return _save(fig, path)


def plot_control(table: pd.DataFrame, control: Sequence[dict[str, Any]], path: Path) -> Path | None:
    """The controlled test: for each setting, the first layer's mean cosine and mass of every seed, normalized
    pixels against pixels in [0, 1], with the mean over seeds and its t interval."""
    if not control:
        return None
    import matplotlib  # on first use: start-up time


    runs = table[(table["format"] == "run") & (table["depth"] == 0) & table["normalized"].notna()]
    with matplotlib.rc_context(_RC):
        fig = _figure(7.0, 2.8 * len(control) + 0.6)
        axes = fig.subplots(len(control), 2, squeeze=False)
        for row, entry in zip(axes, control):
            mask = np.ones(len(runs), dtype=bool)
            for k in CONTROL_KEY:
                value = entry[k]
                mask &= runs[k].isna().to_numpy() if value is None else (runs[k] == value).to_numpy()
            part = runs[mask]
            for ax, column, label, key in ((row[0], "mean", "mean cosine of the first layer", "mean_cosine"),
                                           (row[1], "mass", "mass of the first layer", "mass")):
                for x, (normalized, name) in enumerate(((True, "normalized"), (False, "unnormalized"))):
                    g = part[part["normalized"] == normalized]
                    ax.scatter(np.full(len(g), x) + np.linspace(-0.08, 0.08, max(len(g), 1))[:len(g)], g[column],
                               color="tab:blue" if normalized else "tab:orange", s=22, zorder=3)
                    summary = entry[name][key]
                    ax.errorbar([x + 0.25], [summary["mean"]], yerr=[[summary["mean"] - summary["low"]],
                                                                      [summary["high"] - summary["mean"]]],
                                fmt="D", color="0.2", capsize=3, ms=4)
                ax.axhline(0.0 if column == "mean" else 0.5, color="0.3", lw=0.8, ls="--")
                ax.set_xticks([0, 1], ["normalized\n(both signs)", "[0, 1]\n(non-negative)"])
                ax.set_xlim(-0.5, 1.6)
                ax.set_ylabel(label)
            setting = ", ".join(f"{k} {entry[k]}" for k in CONTROL_KEY if entry[k] is not None)
            row[0].set_title(f"{entry['layer']}: {setting}", loc="left")
        fig.suptitle("Controlled test: one point per seed; diamond: mean over seeds with its 95% t interval")
        return _save(fig, path)
