"""The study's figures (a)-(d), drawn with matplotlib from the study's tables alone (PNG and PDF)."""
from __future__ import annotations

import contextlib
import textwrap
from pathlib import Path
from typing import Any, Mapping

import numpy as np
import pandas as pd

from .. import null
from ..layout import Corruption
from ._captions import CAPTIONS
from .figures import RC_PARAMS, grid_shape, hide_unused, new_figure, save_figure
from .stats import t_interval

STUDY_FIGURES = ("study_mass_by_condition", "study_mass_by_epoch", "study_bias_vs_criticality",
                 "study_bias_vs_learning")
MAX_COLUMNS = 6
MARKERS = "osD^v<>PX*"


def _conditions(part: pd.DataFrame) -> list[tuple[float, str]]:
    pairs = part[["noise", "condition"]].drop_duplicates()
    return sorted(((float(n), c) for n, c in pairs.itertuples(index=False)), key=lambda p: Corruption(p[0]).order)


def _layers(part: pd.DataFrame) -> list[tuple[str, int]]:
    """(layer, N) in network order."""
    rows = part[part["trained"]].drop_duplicates("layer").sort_values(["stage", "block"], kind="stable")
    return [(r["layer"], int(r["N"])) for _, r in rows.iterrows()]


@contextlib.contextmanager
def _condition_panels(table: pd.DataFrame, width: float, height: float):
    """A figure with one panel per setting x condition, inside the report's style: yields (fig, axes, panels),
    panels being (setting key, the setting's rows, noise, condition label)."""
    import matplotlib  # on first use: start-up time

    panels = [(key, part, noise, label) for key, part in _settings(table) for noise, label in _conditions(part)]
    nrows, ncols = grid_shape(len(panels), 4)
    with matplotlib.rc_context(RC_PARAMS):
        fig = new_figure(width * ncols, height * nrows + 0.8)
        yield fig, fig.subplots(nrows, ncols, squeeze=False), panels


def _suptitle(fig, text: str) -> None:
    """The figure's title, each line wrapped to the figure's width (a one-panel figure is narrow)."""
    chars = max(30, int(fig.get_figwidth() * 72 / (0.6 * 12)))  # figure.titlesize 12 pt, ~0.6 em per character
    fig.suptitle("\n".join(textwrap.fill(line, chars) for line in text.split("\n")))


def _settings(table: pd.DataFrame):
    return table.groupby(["arch", "dataset", "subsample", "train_size"], sort=False)


def _setting_title(key) -> str:
    arch, dataset, k, n = key
    return f"{arch} on {dataset}" + (f" ({k} classes)" if k else "") + (f", {n} images" if n else "")


def plot_mass_by_condition(table: pd.DataFrame, out: Path) -> list[Path]:
    """(a) per layer, the trained mass against the condition: seeds, their mean and 95% t interval, the
    mass at initialization and the null band."""
    import matplotlib  # on first use: start-up time

    panels = [(key, part, layer, n) for key, part in _settings(table) for layer, n in _layers(part)]
    nrows, ncols = grid_shape(len(panels), MAX_COLUMNS)
    with matplotlib.rc_context(RC_PARAMS):
        fig = new_figure(3.0 * ncols, 3.1 * nrows + 0.6)
        axes = fig.subplots(nrows, ncols, squeeze=False)
        for ax, (key, part, layer, n) in zip(axes.flat, panels):
            conditions = _conditions(part)
            ax.axhspan(*null.mass_band(n), color="0.88", label="null 95% band")
            ax.axhline(0.5, color="0.5", lw=0.8)
            rows = part[part["trained"] & (part["layer"] == layer)]
            init = part[(part["epoch"] == 0) & (part["layer"] == layer)]
            for i, (noise, _) in enumerate(conditions):
                masses = rows[rows["noise"] == noise].sort_values("seed")["mass"].to_numpy(float)
                offsets = np.linspace(-0.15, 0.15, len(masses)) if len(masses) > 1 else np.zeros(len(masses))
                ax.scatter(i + offsets, masses, s=12, color="0.45", zorder=3,
                           label="seeds" if i == 0 else None)
                t = t_interval(masses.tolist(), bounds=(0.0, 1.0))
                err = None if not np.isfinite(t["low"]) else [[t["mean"] - t["low"]], [t["high"] - t["mean"]]]
                ax.errorbar([i + 0.28], [t["mean"]], yerr=err, fmt="o", color="C0", ms=5, capsize=3, zorder=4,
                            label="mean, 95% CI" if i == 0 else None)
                m0 = init[init["noise"] == noise]["mass"].astype(float)
                if len(m0):
                    ax.scatter([i + 0.28], [m0.mean()], marker="x", color="k", s=30, zorder=5,
                               label="at init (mean)" if i == 0 else None)
            ax.set_xticks(range(len(conditions)), labels=[c for _, c in conditions], rotation=30, ha="right",
                          rotation_mode="anchor")
            ax.set_xlim(-0.5, len(conditions) - 0.3)
            ax.set_ylim(-0.03, 1.03)
            ax.set_title(f"{_setting_title(key)}\n{layer} (N={n})")
            ax.set_ylabel("trained mass (share p <= 0)")
        hide_unused(axes, len(panels))
        axes.flat[0].legend(loc="best")
        _suptitle(fig, CAPTIONS["study_mass_by_condition"].title)
        return save_figure(fig, out, "study_mass_by_condition")


def plot_mass_by_epoch(table: pd.DataFrame, out: Path, curves: pd.DataFrame) -> list[Path]:
    """(b) one panel per layer (per setting): each condition in one colour, each seed's mass across epochs as a
    thin line (every tracked epoch from `curves`, the cells' tracking.csv rows, else its snapshots) ending with a
    dot where that seed stopped, and the mean over the condition's seeds as a thick line up to the epoch where
    its first seed stopped (beyond it the mean would be over fewer seeds); the null's band of the layer's size."""
    import matplotlib  # on first use: start-up time

    panels = [(key, part, layer, n) for key, part in _settings(table) for layer, n in _layers(part)]
    several = table.groupby(["arch", "dataset", "subsample", "train_size"]).ngroups > 1
    nrows, ncols = grid_shape(len(panels), 3)
    with matplotlib.rc_context(RC_PARAMS):
        fig = new_figure(4.4 * ncols, 3.5 * nrows + 1.4)
        axes = fig.subplots(nrows, ncols, squeeze=False)
        legend: dict[str, Any] = {}
        for ax, (key, part, layer, n) in zip(axes.flat, panels):
            ax.axhspan(*null.mass_band(n), color="0.88", zorder=0)
            ax.axhline(0.5, color="0.5", lw=0.8, zorder=0)
            tracked = _tracked_part(curves, key) if len(curves) else curves
            for i, (noise, label) in enumerate(_conditions(part)):
                color = f"C{i % 10}"
                lines = seed_lines(part, tracked, noise, layer)
                for x, y in lines.values():
                    ax.plot(x, y, "-", color=color, lw=0.7, alpha=0.45, zorder=2)
                    ax.plot(x[-1:], y[-1:], "o", color=color, ms=3, alpha=0.8, zorder=3)
                x, y = seed_mean(lines)
                handle, = ax.plot(x, y, "-", color=color, lw=2.2, zorder=4)
                name = (f"{_setting_title(key)}: " if several else "") + label
                legend.setdefault(name, (handle, f"{name}: {len(lines)} seed(s), mean to epoch {x[-1]:g}"
                                         if len(x) else f"{name}: {len(lines)} seed(s)"))
            ax.set_ylim(-0.03, 1.03)
            ax.set_title((f"{_setting_title(key)}\n" if several else "") + f"{layer} (N={n})")
            ax.set_xlabel("epoch")
            ax.set_ylabel("mass (share p <= 0)")
        hide_unused(axes, len(panels))
        from matplotlib.lines import Line2D  # on first use: start-up time
        from matplotlib.patches import Patch

        handles = [h for h, _ in legend.values()] + [Line2D([], [], color="0.3", lw=0.7, marker="o", ms=3),
                                                      Patch(color="0.88")]
        labels = [t for _, t in legend.values()] + ["one seed (dot: where it stopped)", "null 95% band"]
        fig.legend(handles, labels, loc="outside lower center", ncols=min(len(labels), 3))
        setting = "" if several else f", {_setting_title(next(iter(_settings(table)))[0])}"
        _suptitle(fig, f"{CAPTIONS['study_mass_by_epoch'].title} per layer{setting}\nthick: the mean over seeds up "
                       "to the epoch where the first seed stopped; thin: each seed")
        return save_figure(fig, out, "study_mass_by_epoch")


def seed_lines(part: pd.DataFrame, tracked: pd.DataFrame, noise: float, layer: str
               ) -> dict[int, tuple[np.ndarray, np.ndarray]]:
    """{seed: (epochs, mass)} of one layer of one condition: every tracked epoch where the cell tracked its
    training (`tracked`: its tracking.csv rows), else its snapshots."""
    out = {}
    rows = part[(part["noise"] == noise) & (part["layer"] == layer)]
    for seed, sub in rows.groupby("seed", sort=True):
        line = tracked[(tracked["noise"] == noise) & (tracked["layer"] == layer) & (tracked["seed"] == seed)] \
            if len(tracked) else tracked
        source = line if len(line) else sub
        source = source.assign(epoch=pd.to_numeric(source["epoch"])).sort_values("epoch", kind="stable")
        source = source.drop_duplicates("epoch", keep="last")  # several tracked steps of one epoch: its end
        out[int(seed)] = (source["epoch"].to_numpy(float), source["mass"].to_numpy(float))
    return out


def seed_mean(lines: Mapping[int, tuple[np.ndarray, np.ndarray]]) -> tuple[np.ndarray, np.ndarray]:
    """The mean over seeds at the epochs every seed has, up to the epoch where the first seed stopped."""
    if not lines:
        return np.array([]), np.array([])
    stop = min(float(x[-1]) for x, _ in lines.values() if len(x))
    frames = [pd.Series(y, index=x) for x, y in lines.values()]
    both = pd.concat(frames, axis=1, join="inner").sort_index()
    both = both[both.index <= stop]
    return both.index.to_numpy(float), both.mean(axis=1).to_numpy(float)


def _tracked_part(tracked: pd.DataFrame, key) -> pd.DataFrame:
    """The rows of `tracked` of one setting (arch, dataset, subsample, train size)."""
    arch, dataset, subsample, train_size = key
    keep = ((tracked["arch"] == arch) & (tracked["dataset"] == dataset) & (tracked["subsample"] == subsample)
            & (tracked["train_size"] == train_size))
    return tracked[keep]


def plot_bias_vs_criticality(table: pd.DataFrame, numbers: Mapping[str, Any], out: Path, threshold: float,
                             measure_text: str, split: str = "test") -> list[Path]:
    """(c) one point per layer x seed, per condition: trained bias against the drop under re-initialization
    to epoch 0, with the per-seed and pooled correlations; with split "train", (c') the drop on the training
    images of the clean cells and of the memorized ones."""
    on_train = split == "train"
    drop, entry = ("drop_reinit_0_train", "criticality_train") if on_train else ("drop_reinit_0", "criticality")
    if on_train:
        table = table[(table["noise"] == 0) | (table["regime"] == "memorized")]
    pooled = {(s["arch"], s["dataset"], s["subsample"], s["train_size"], c["noise"]): c.get(entry, {})
              for s in numbers["settings"] for c in s["conditions"]}
    with _condition_panels(table, 4.0, 3.6) as (fig, axes, panels):
        for ax, (key, part, noise, label) in zip(axes.flat, panels):
            k = pooled.get((*key, noise), {})
            rows = part[part["trained"] & (part["noise"] == noise)]
            for j, (seed, sub) in enumerate(rows.groupby("seed")):
                rho = k.get("per_seed", {}).get(int(seed), float("nan"))
                ax.scatter(sub["bias"].astype(float), sub[drop].astype(float), s=22, color=f"C{j % 10}",
                           marker=MARKERS[j % len(MARKERS)], label=f"seed {seed}: rho {rho:.2f}", zorder=3)
            ax.axhline(threshold, color="0.4", ls="--", lw=1)
            rho = k.get("rho", float("nan"))
            if np.isfinite(rho):
                ci = f" [{k['low']:.2f}, {k['high']:.2f}]" if np.isfinite(k["low"]) else ""
                stat = f"pooled rho {rho:.2f}{ci}, perm. p {k['p_value']:.2g}"
            else:
                stat = f"rho undefined ({k.get('note')})"
            ax.set_title(f"{_setting_title(key)}: {label}\n{stat}")
            ax.set_xlabel(f"bias: {measure_text.split(',')[0]}")
            ax.set_ylabel("drop, re-initialized to epoch 0" + (" (train)" if on_train else ""))
            ax.grid(alpha=0.3)
            ax.legend(loc="best", fontsize=7)
        hide_unused(axes, len(panels))
        name = "study_bias_vs_criticality" + ("_train" if on_train else "")
        _suptitle(fig, CAPTIONS[name].title + (" with their own labels, clean and memorized cells\n" if on_train
                                               else ", ") + f"one point per layer x seed (dashed: critical above "
                                                            f"{threshold:g})")
        return save_figure(fig, out, name)


def plot_bias_vs_learning(cells: pd.DataFrame, numbers: Mapping[str, Any], out: Path, measure_text: str) -> list[Path]:
    """(d) per cell, the share of biased layers and the mean bias against test and train top-1."""
    import matplotlib  # on first use: start-up time

    learning = {s["setting"]: s["learning"] for s in numbers["settings"]}
    settings = list(dict.fromkeys(cells["setting"]))
    conditions = sorted({(float(n), c) for n, c in cells[["noise", "condition"]].itertuples(index=False)},
                        key=lambda p: Corruption(p[0]).order)
    colors = {c: f"C{i % 10}" for i, (_, c) in enumerate(conditions)}
    with matplotlib.rc_context(RC_PARAMS):
        fig = new_figure(10.0, 7.6)
        axes = fig.subplots(2, 2, squeeze=False)
        for r, (ycol, ylabel) in enumerate((("share_biased", "share of biased layers"),
                                            ("bias", f"mean bias ({measure_text.split(',')[0]})"))):
            for c, (xcol, xlabel) in enumerate((("test_top1", "test top-1 %"),
                                                ("train_top1", "train top-1 % on the cell's own labels"))):
                ax = axes[r, c]
                for i, setting in enumerate(settings):
                    for _, cond in conditions:
                        sub = cells[(cells["setting"] == setting) & (cells["condition"] == cond)]
                        if len(sub):
                            ax.scatter(sub[xcol], sub[ycol], color=colors[cond], marker=MARKERS[i % len(MARKERS)],
                                       s=28, label=f"{cond}" + (f", {setting}" if len(settings) > 1 else ""))
                stats_text = []
                for setting in settings:
                    s = learning[setting][f"{ycol}_vs_{xcol}"]
                    ci = f" [{s['low']:.2f}, {s['high']:.2f}]" if np.isfinite(s["low"]) else ""
                    stats_text.append((f"{setting}: " if len(settings) > 1 else "")
                                      + (f"rho {s['rho']:.2f}{ci}, p {s['p_value']:.2g}" if np.isfinite(s["rho"])
                                         else "rho undefined"))
                ax.set_title("Spearman " + "; ".join(stats_text), fontsize=9)
                ax.set_xlabel(xlabel)
                ax.set_ylabel(ylabel)
                ax.grid(alpha=0.3)
        axes[0, 0].legend(loc="best", fontsize=7)
        _suptitle(fig, f"{CAPTIONS['study_bias_vs_learning'].title}, one point per cell")
        return save_figure(fig, out, "study_bias_vs_learning")


def draw_all(data, numbers: Mapping[str, Any], out: Path, threshold: float, measure_text: str
             ) -> tuple[list[str], list[Path]]:
    """Draw (a)-(d), and (c') where the cells measured the drops on their training images; (names drawn, files
    written). Figures of an earlier report are replaced."""
    written = []
    written += plot_mass_by_condition(data.table, out)
    written += plot_mass_by_epoch(data.table, out, data.curves)
    written += plot_bias_vs_criticality(data.table, numbers, out, threshold, measure_text)
    names = list(STUDY_FIGURES)
    on_train = data.table[(data.table["noise"] == 0) | (data.table["regime"] == "memorized")]
    if on_train["drop_reinit_0_train"].notna().any():
        written += plot_bias_vs_criticality(data.table, numbers, out, threshold, measure_text, split="train")
        names.insert(names.index("study_bias_vs_criticality") + 1, "study_bias_vs_criticality_train")
    written += plot_bias_vs_learning(data.cells, numbers, out, measure_text)
    return names, written
