"""The report's figures, drawn with matplotlib from result documents and tables alone (PNG and PDF)."""
from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Any, Mapping

import numpy as np
import pandas as pd
from scipy import stats

from .. import files, layout, null
from ..defaults import THRESHOLD
from ..layout import HEATMAP_STEM
from ..results import alternative_label, drop_frame, layer_entries
from ._found import missing_text, tracked_curves
from .discovery import RunResults

FIGURES = ("distributions", "mass_mean_by_epoch", HEATMAP_STEM, "bias_vs_criticality")  # <name>.png, .pdf
DPI = 130

# the font sizes of every report figure (run, comparison, study), as matplotlib rc parameters
RC_PARAMS = {"font.size": 10, "axes.titlesize": 10, "axes.labelsize": 10, "legend.fontsize": 8,
             "xtick.labelsize": 9, "ytick.labelsize": 9, "figure.titlesize": 12}


def new_figure(width: float, height: float):
    """A matplotlib Figure of `width` x `height` inches, laid out by the constrained engine."""
    from matplotlib.figure import Figure  # on first use: start-up time

    # A bare Figure renders with Agg (PNG) or the PDF backend on save; no pyplot state, nothing to close.
    return Figure(figsize=(width, height), layout="constrained")


def save_figure(fig, out_dir: Path, name: str) -> list[Path]:
    """Write `fig` as `out_dir`/`name`.png and .pdf (atomically, at DPI); returns the two paths."""
    written = []
    for fmt in ("png", "pdf"):
        path = out_dir / f"{name}.{fmt}"
        with files.atomic_path(path) as tmp:
            fig.savefig(tmp, format=fmt, dpi=DPI)
        fig.set_layout_engine("none")  # keep the positions laid out for the PNG; the PDF needs no second pass
        written.append(path)
    return written


def grid_shape(n: int, ncols: int = 4) -> tuple[int, int]:
    """(rows, columns) of a grid of `n` panels, at most `ncols` columns wide."""
    ncols = max(1, min(ncols, n))
    return math.ceil(n / ncols), ncols


def hide_unused(axes, used: int) -> None:
    """Hide the panels of a grid after the first `used` (a grid of `grid_shape` has up to ncols - 1 spare)."""
    for ax in list(axes.flat)[used:]:
        ax.set_visible(False)


def plot_distributions(results: RunResults, out_dir: Path) -> list[Path]:
    """Histograms of each layer's projections at epoch 0 and trained, with the null density overlaid."""
    import matplotlib  # on first use: start-up time

    trained, init = results.trained_doc, results.init_doc
    layers = layer_entries(trained)
    init_by_name = {e["name"]: e for e in layer_entries(init) if init is not trained}
    normalize = results.normalize is True
    nrows, ncols = grid_shape(len(layers))
    with matplotlib.rc_context(RC_PARAMS):
        fig = new_figure(3.4 * ncols, 2.9 * nrows + 0.6)
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
                              label=f"{results.trained_label} (trained)")
            heights.append(h.max())
            t = np.linspace(-lim, lim, 400)
            density = None
            if normalize and d and d >= 2:  # the null the layer's test used (docs/method.md §3.3)
                density = null.density(t, d, e.get("null") or null.BETA)
                ax.plot(t, density, color="k", lw=1.3, label="null: random filter")
            elif not normalize and null_sd > 0:
                density = stats.norm.pdf(t, scale=null_sd)
                ax.plot(t, density, color="k", lw=1.3, ls="--", label="null ~ N(0, sd at epoch 0)")
            top = max(heights)
            if density is not None and np.isfinite(density).any():
                top = max(top, min(float(np.nanmax(density[np.isfinite(density)])), 3 * top))
            ax.set_ylim(0, 1.12 * top if top > 0 else 1)
            ax.axvline(0, color="k", lw=0.7, ls=":")
            mass0 = init_by_name.get(e["name"], {}).get("mass")
            ax.set_title(f"{e['name']} (N={e.get('N')}" + (f", d={d})" if d else ")") + f"\nmass {e['mass']:.2f}"
                         + (f" (init {mass0:.2f})" if mass0 is not None else "")
                         + (", biased" if e.get("biased") else "")
                         + (f"; input {e['input_kind']}" + (" >= 0" if e.get("input_nonneg") is True else "")
                            if e.get("input_kind") else ""))
            if e.get("input_nonneg") is True:  # the layers whose input is non-negative (hparr.inputs)
                ax.plot(0.03, 0.94, marker="^", color="C2", ms=9, transform=ax.transAxes, clip_on=False)
            ax.set_xlabel("normalized projection <w,1>/(|w| sqrt d)" if normalize else "projection <w, 1>")
            ax.set_ylabel("density")
        hide_unused(axes, len(layers))
        axes.flat[0].legend(loc="upper left")
        fig.suptitle(f"{results.title}\ndistribution of the filters' projections per layer"
                     + ("\ngreen triangle: the layer's input is non-negative"
                        if any(e.get("input_nonneg") is True for e in layers) else "")
                     + (f"\n{missing_text(results.missing_epochs)}" if results.missing_epochs else ""))
        return save_figure(fig, out_dir, "distributions")


def plot_epochs(results: RunResults, out_dir: Path) -> list[Path]:
    """Mass of negative projections (top) and mean projection (bottom) of every layer across epochs,
    with the null's 95% band; with a `tracking.csv`, a line through every tracked epoch and the snapshots
    as points."""
    import matplotlib  # on first use: start-up time

    tracked = tracked_curves(results)
    style = "o" if tracked is not None else "o-"
    tab = results.projections
    tab = tab[(tab["kind"] != "net") & (pd.to_numeric(tab["epoch"], errors="coerce") >= 0)].copy()
    tab["epoch"] = pd.to_numeric(tab["epoch"])
    names = [e["name"] for e in layer_entries(results.trained_doc)]
    normalize = results.normalize is True
    init = {e["name"]: e for e in layer_entries(results.init_doc)}
    nrows, ncols = grid_shape(len(names))
    with matplotlib.rc_context(RC_PARAMS):
        fig = new_figure(3.3 * ncols, 4.4 * nrows + 0.6)
        axes = fig.subplots(2 * nrows, ncols, squeeze=False)
        for i, name in enumerate(names):
            r, c = divmod(i, ncols)
            ax_m, ax_mu = axes[2 * r, c], axes[2 * r + 1, c]
            sub = tab[tab["name"] == name].sort_values("epoch")
            epochs = sub["epoch"].to_numpy(float)
            n = int(sub["N"].iloc[-1])
            d = sub["d"].iloc[-1] if "d" in sub else pd.NA
            ax_m.axhspan(*null.mass_band(n), color="0.85", label="null 95% band")
            ax_m.axhline(0.5, color="0.5", lw=0.8)
            line = tracked[tracked["name"] == name] if tracked is not None else None
            if line is not None:
                ax_m.plot(line["epoch"].to_numpy(float), line["mass"].to_numpy(float), "-", color="C0", lw=1.1,
                          label="mass, tracked")
                ax_mu.plot(line["epoch"].to_numpy(float), line["mean"].to_numpy(float), "-", color="C3", lw=1.1,
                           label="mean, tracked")
            ax_m.plot(epochs, pd.to_numeric(sub["mass"]).to_numpy(float), style, color="C0", ms=4, label="mass")
            ax_m.set_ylim(-0.03, 1.03)
            ax_m.set_title(f"{name} (N={n})")
            ax_m.set_ylabel("mass (share p <= 0)")
            band = None
            if normalize and not pd.isna(d) and int(d) >= 1:
                band = null.mean_band(n, d=int(d))
            elif not normalize and name in init and init[name].get("std"):
                band = null.mean_band(n, sd=float(init[name]["std"]))
            if band is not None:
                ax_mu.axhspan(*band, color="0.85", label="null 95% band" + ("" if normalize else " (sd at epoch 0)"))
            ax_mu.axhline(0, color="0.5", lw=0.8)
            ax_mu.plot(epochs, pd.to_numeric(sub["mean"]).to_numpy(float), "s" if tracked is not None else "s-",
                       color="C3", ms=4, label="mean")
            ax_mu.set_ylabel("mean projection")
            ax_mu.set_xlabel("epoch")
            ax_m.set_xlabel("epoch")
            for k, epoch in enumerate(results.missing_epochs):  # no usable result: marked, not silently skipped
                for ax in (ax_m, ax_mu):
                    ax.axvline(epoch, color="C1", ls=":", lw=1.2, label="missing result" if k == 0 else None)
        for r in range(nrows):
            for c in range(ncols):
                if r * ncols + c >= len(names):
                    axes[2 * r, c].set_visible(False)
                    axes[2 * r + 1, c].set_visible(False)
        axes[0, 0].legend(loc="best")
        axes[1, 0].legend(loc="best")
        what = "normalized projections" if normalize else "projections <w, 1>"
        fig.suptitle(f"{results.title}\nmass of negative {what} and their mean, per layer, across epochs"
                     + (f"\n{missing_text(results.missing_epochs)} (dotted lines)" if results.missing_epochs else ""))
        return save_figure(fig, out_dir, "mass_mean_by_epoch")


def plot_bias_vs_criticality(table: pd.DataFrame, correlation: Mapping[str, Any], out_dir: Path,
                             title: str = "") -> list[Path]:
    """Each layer's bias against its accuracy drop under re-initialization to epoch 0, named points."""
    import matplotlib  # on first use: start-up time

    sub = table[table["name"].isin(correlation["layers"])]
    threshold = table.attrs.get("threshold", THRESHOLD)
    with matplotlib.rc_context(RC_PARAMS):
        fig = new_figure(6.4, 4.8)
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
        ax.set_title(f"{title}\nbias against criticality: {stat}" if title else stat, wrap=True)
        ax.legend(loc="best")
        ax.grid(alpha=0.3)
        ax.margins(x=0.15, y=0.1)
        return save_figure(fig, out_dir, "bias_vs_criticality")


def save_heatmap(document: Mapping[str, Any], png: str | os.PathLike | None = None,
                 pdf: str | os.PathLike | None = None, title: str | None = None) -> None:
    """Heatmap of the relative top-1 drop stored in a reinit document (rows: epochs, then rand; columns:
    layers), PNG and/or PDF. `title`: what the run is (default: the document's architecture and dataset)."""
    from matplotlib.figure import Figure  # on first use: start-up time

    layers = list(document["layers"])
    frame = drop_frame(document)
    values = frame.to_numpy(dtype=float)
    fig = Figure(figsize=(max(4.0, 0.9 * len(layers) + 2.5), max(2.5, 0.55 * len(frame) + 1.8)),
                 layout="constrained")
    ax = fig.subplots()
    finite = values[np.isfinite(values)]
    vmin = min(0.0, float(finite.min())) if finite.size else 0.0
    vmax = max(1.0, float(finite.max())) if finite.size else 1.0
    image = ax.imshow(values, cmap="viridis", vmin=vmin, vmax=vmax, aspect="auto")
    ax.set_xticks(range(len(layers)), labels=layers, rotation=45, ha="right", rotation_mode="anchor")
    trials = document.get("rand_trials")
    k = trials.get("k") if isinstance(trials, Mapping) else None
    ax.set_yticks(range(len(frame)), labels=[alternative_label(r) + (f" (mean of {k})" if k and r == "rand" else "")
                                            for r in frame.index])
    ax.set_xlabel("layer")
    ax.set_ylabel("re-initialized from")
    for (i, j), v in np.ndenumerate(values):
        if np.isfinite(v):
            dark = (v - vmin) / (vmax - vmin) < 0.6
            ax.text(j, i, f"{v:.2f}", ha="center", va="center", fontsize=8, color="white" if dark else "black")
    fig.colorbar(image, ax=ax, label="(acc_trained - acc_reinit) / acc_trained")
    split = document.get("eval_split") or "test"
    if title is None:
        title = " on ".join(str(document[k]) for k in ("arch", "dataset") if document.get(k)) or "checkpoint"
    epoch = document.get("epoch")
    model = f"trained model (epoch {epoch})" if epoch not in (None, "", "None") else "trained model"
    ax.set_title(f"{title}\n{model}: top-1 {document['top1_test']:.2f}% on the {split} set"
                 + (" (its own training labels)" if split == "train" else ""), wrap=True)
    for path, fmt in ((png, "png"), (pdf, "pdf")):
        if path is not None:
            with files.atomic_path(path) as tmp:
                fig.savefig(tmp, format=fmt, dpi=150)


def save_reinit_plots(document: Mapping[str, Any], json_path: str | os.PathLike,
                      plots: str | os.PathLike = "") -> list[Path]:
    """The heatmap of a re-initialization result saved at `json_path` (`hparr reinit --plots`), as PNG and PDF
    named after it: beside it when `plots` is "" (the bare --plots), else under `plots`/<dataset>/<arch>/ (the
    original code's --plots PATH). Returns the files written."""
    json_path = Path(json_path)
    folder = json_path.parent if str(plots) == "" else \
        Path(plots) / layout.folder_name(str(document["dataset"])) / str(document["arch"])
    png, pdf = folder / f"{json_path.stem}.png", folder / f"{json_path.stem}.pdf"
    save_heatmap(document, png, pdf)
    return [png, pdf]
