"""Runs side by side (`hparr report RUN_A RUN_B ...`): clean against noisy without a study.

Each run is read as for its own report (`load_run`, `joined_table`, `bias_vs_criticality`) and labelled by what
separates it from the others (its condition, else its seed or its folder). The comparison writes, per layer, a
table of each run's mass, bias and drop; the runs overlaid in four figures (mass across epochs, the trained
projections' distributions, the drops under re-initialization to epoch 0, bias against criticality);
layers.csv (every run's layer table, one row per run x layer), report.json, summary.md and index.html.
No torch, no model, no data: the result files alone.
"""
from __future__ import annotations

import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import pandas as pd

from .. import files, null
from ..defaults import THRESHOLD
from ..errors import UsageError
from ..layout import COMPARISON_DIR, LAYERS_TABLE, PAGE_NAME, REPORT_DIR, REPORT_NAME, SUMMARY_NAME, Corruption
from ..null import BETA
from ..null import density as null_density
from ..results import REPORT_FORMAT, layer_entries, seed_of
from ._captions import CAPTIONS
from ._found import describe_unusable, tracked_curves
from ._html import markdown_html
from ._render import condition_lines, markdown_table
from ._tables import bias_vs_criticality, check_options, joined_table
from .discovery import FoundRun, RunResults, find_runs, load_run
from .figures import RC_PARAMS, grid_shape, hide_unused, new_figure, save_figure

MARKERS = "osD^v<>PX*"


@dataclass
class Member:
    """One run of the comparison: its results, its layer table and correlation, and how it is labelled."""

    results: RunResults
    table: pd.DataFrame
    correlation: dict
    label: str = ""
    where: str = ""  # its folder as given, for the inputs


def _describe(results: RunResults) -> dict[str, str]:
    """What a run is, setting by setting, in words (the label keeps those that differ between the runs)."""
    c = results.condition
    doc = results.trained_doc or results.reinit_doc or {}
    corruption = ("condition not recorded" if c.noise is None else Corruption(c.noise).label)
    out = {"experiment": " on ".join(str(doc[k]) for k in ("arch", "dataset") if doc.get(k)) or "checkpoint",
           "seed": f"seed {seed_of(doc)}" if seed_of(doc) is not None else "",
           "corruption": corruption,
           "train_size": ("" if c.train_size is None else f"{c.train_size} training images" if c.train_size
                          else "all training images"),
           "classes": "" if c.classes is None else f"{c.classes} classes" if c.classes else "all classes",
           "stop": c.stop or (f"{c.stop_epoch} epochs" if c.stop_epoch is not None else
                              f"trained model at {results.trained_label}"),
           "split": f"drops on {c.eval_split}" if c.eval_split else "no drops"}
    return out


def run_labels(members: Sequence[RunResults], names: Sequence[str]) -> list[str]:
    """One label per run: the settings that differ between the runs (corruption, training-set size, class subset,
    stop, split, seed, experiment), else the run's folder; a label that two runs share gets its folder added."""
    described = [_describe(r) for r in members]
    keys = ["corruption", "train_size", "classes", "stop", "split", "seed", "experiment"]
    differ = [k for k in keys if len({d[k] for d in described}) > 1]
    labels = [", ".join(d[k] for k in differ if d[k]) or name for d, name in zip(described, names)]
    return [f"{label} [{name}]" if labels.count(label) > 1 else label for label, name in zip(labels, names)]


def gather(folders: Sequence[str | os.PathLike], exclude: Sequence[Path] = ()) -> list[tuple[Path, FoundRun]]:
    """Every run of every folder, in the order given (a folder of several runs gives each of them)."""
    runs: list[tuple[Path, FoundRun]] = []
    for folder in folders:
        folder = Path(folder)
        found = find_runs(folder, exclude=[*exclude, folder / REPORT_DIR])  # a study folder: its cells
        runs += [(folder, run) for run in found.runs]
    if len(runs) < 2:
        raise UsageError(f"nothing to compare: {' and '.join(map(str, folders))} "
                         f"hold{'s' if len(folders) == 1 else ''} {len(runs)} run(s); give two or more")
    return runs


def default_out(folders: Sequence[str | os.PathLike]) -> Path:
    """Where a comparison goes without --out: COMPARISON_DIR below the folders' common folder."""
    paths = [str(Path(f).resolve()) for f in folders]
    common = Path(os.path.commonpath(paths))
    return common / COMPARISON_DIR


@dataclass(frozen=True)
class Comparison:
    """What `build_comparison` wrote and computed."""

    files: dict[str, Path]  # {file name: path} of every file written
    members: list[Member]  # the runs side by side, in the order of the tables and figures


def build_comparison(folders: Sequence[str | os.PathLike], out_dir: str | os.PathLike | None = None,
                     threshold: float = THRESHOLD, measure: str = "mass", strict: bool = False) -> Comparison:
    """Write the comparison of every run of `folders` to `out_dir` (default: see `default_out`). Returns the
    files written and the runs compared. Result files a run cannot use are named on stderr and in the summary;
    with `strict` they are an error and nothing is written."""
    from . import report_unusable  # the run report's: one wording of unusable files

    check_options(threshold, measure)
    out = Path(out_dir) if out_dir is not None else default_out(folders)
    found = gather(folders, exclude=[out])
    members = []
    for folder, run in found:
        results = load_run(folder, run=run)
        report_unusable(results, strict)
        table = joined_table(results, threshold=threshold, measure=measure)
        where = str(folder) if run.name == "." else str(folder / run.name)
        members.append(Member(results, table, bias_vs_criticality(table), where=where))
    for m, label in zip(members, run_labels([m.results for m in members], [m.where for m in members])):
        m.label = label
    files.ensure_dir(out)
    written: list[Path] = []
    figures: list[str] = []
    drawn = [("compare_mass_by_epoch", plot_mass_by_epoch), ("compare_distributions", plot_distributions),
             ("compare_drops", plot_drops), ("compare_bias_vs_criticality", plot_bias_vs_criticality)]
    for name, draw in drawn:
        paths = draw(members, out, threshold)
        if paths:
            written += paths
            figures.append(name)
        else:
            for fmt in ("png", "pdf"):
                (out / f"{name}.{fmt}").unlink(missing_ok=True)
    long = pd.concat([m.table.assign(run=m.label, folder=m.where) for m in members], ignore_index=True)
    long = long[["run", "folder", *[c for c in long.columns if c not in ("run", "folder")]]]
    with files.atomic_path(out / LAYERS_TABLE) as tmp:
        long.to_csv(tmp, index=False)
    title = comparison_title(members)
    files.write_json(out / REPORT_NAME, {
        "format": REPORT_FORMAT, "kind": "comparison", "title": title, "threshold": float(threshold),
        "bias_measure": measure, "figures": figures,
        "runs": [{"label": m.label, "folder": m.where, "run_dir": str(m.results.run_dir.resolve()),
                  "title": m.results.title, "condition": m.results.condition.to_dict(),
                  "trained_epoch": m.results.trained_epoch,
                  "projections": [str(p.resolve()) for p in m.results.projection_folder.paths]
                  if m.results.projection_folder else [],
                  "reinit": str(m.results.reinit_path.resolve()) if m.results.reinit_path else None,
                  "bias_vs_criticality": dict(m.correlation), "notes": m.results.notes,
                  "unusable_results": [{"path": str(u.path.resolve()), "reason": u.reason} for u in
                                       m.results.unusable]} for m in members],
        "layers": long.to_dict(orient="records")})
    text = summary_markdown(members, figures, title)
    files.write_text(out / SUMMARY_NAME, text)
    files.write_text(out / PAGE_NAME, markdown_html(text, f"hparr report: {title}"))
    written += [out / LAYERS_TABLE, out / REPORT_NAME, out / SUMMARY_NAME, out / PAGE_NAME]
    return Comparison({p.name: p for p in written}, members)


def comparison_title(members: Sequence[Member]) -> str:
    """`<what the runs share>: <label> vs <label> ...`."""
    described = [_describe(m.results) for m in members]
    shared = [described[0][k] for k in ("experiment", "seed") if len({d[k] for d in described}) == 1
              and described[0][k]]
    return (", ".join(shared) + ": " if shared else "") + " vs ".join(m.label for m in members)


# --- text ---------------------------------------------------------------------------------------------------

def _fmt(value: Any, spec: str) -> str:
    try:
        v = float(value)
    except (TypeError, ValueError):
        return ""
    return "" if math.isnan(v) else format(v, spec)


def _final(results: RunResults) -> tuple[str, str]:
    """(test top-1 %, top-1 % on the run's own training set) as text ("" where not recorded)."""
    final = (results.manifest or {}).get("final") or {}
    test = final.get("test", {}).get("top1") if isinstance(final.get("test"), dict) else None
    train = final.get("train", {}).get("top1") if isinstance(final.get("train"), dict) else None
    doc = results.reinit_doc or {}
    if test is None and doc.get("top1_test") is not None and (doc.get("eval_split") or "test") == "test":
        test = doc["top1_test"]
    return _fmt(test, ".2f"), _fmt(train, ".2f")


def runs_table(members: Sequence[Member]) -> pd.DataFrame:
    rows = []
    for m in members:
        t = m.table
        stats = t[t["mass"].notna()]
        drops = t[t["drop_reinit_0"].notna()]
        test, train = _final(m.results)
        rho = m.correlation["spearman_rho"]
        rows.append({"run": m.label, "folder": m.where, "trained": m.results.trained_label,
                     "test top-1 %": test, "own-train top-1 %": train,
                     "layers biased": f"{int(stats['biased'].fillna(False).astype(bool).sum())} of {len(stats)}"
                     if len(stats) else "",
                     "layers critical": f"{int((drops['verdict'] == 'critical').sum())} of {len(drops)}"
                     if len(drops) else "",
                     "drops on": m.results.condition.eval_split or "",
                     "Spearman rho (bias, drop)": "" if math.isnan(rho) else f"{rho:.3f}"})
    return pd.DataFrame(rows)


def layer_tables(members: Sequence[Member]) -> list[tuple[str, pd.DataFrame]]:
    """One table per layer (in the first run's order, then the others'): each run's N, mass, mass at init,
    p (Holm), biased, bias, drop under re-initialization to epoch 0 and verdict."""
    order: list[str] = []
    for m in members:
        order += [n for n in m.table["name"] if n not in order]
    out = []
    for name in order:
        rows = []
        for m in members:
            r = m.table[m.table["name"] == name]
            if r.empty:
                rows.append({"run": m.label, "N": "", "mass": "", "mass at init": "", "p (Holm)": "",
                             "biased": "not in this run", "bias": "", "drop reinit 0": "", "robust/critical": ""})
                continue
            r = r.iloc[0]
            biased = r["biased"]
            rows.append({"run": m.label, "N": "" if pd.isna(r["N"]) else str(int(r["N"])),
                         "mass": _fmt(r["mass"], ".3f"), "mass at init": _fmt(r["mass_init"], ".3f"),
                         "p (Holm)": _fmt(r["p_adjusted"], ".2g"),
                         "biased": "" if pd.isna(biased) else "yes" if biased else "no",
                         "bias": _fmt(r["bias"], ".3f"), "drop reinit 0": _fmt(r["drop_reinit_0"], ".3f"),
                         "robust/critical": r["verdict"] or ""})
        out.append((name, pd.DataFrame(rows)))
    return out


def summary_markdown(members: Sequence[Member], figures: Sequence[str], title: str) -> str:
    threshold = members[0].table.attrs["threshold"]
    measure = members[0].table.attrs["measure_text"]
    lines = [f"# Runs side by side: {title}", "",
             "**Question.** Does the condition of a run (its labels, pixels, training set, stop) change which "
             "layers are biased and which are critical?", "", "## The runs", "",
             markdown_table(runs_table(members)), ""]
    for m in members:
        lines += [f"**{m.label}**: {m.results.title}; {m.where}", "", *condition_lines(m.results), ""]
    lines += ["## Layers", "",
              f"mass: share of filters with projection <= 0; p (Holm): the layer's bias test adjusted over its run's "
              f"layers; bias: {measure}; drop: (acc trained - acc re-initialized to epoch 0) / acc trained, on the "
              f"split each run names; critical when the drop is > {threshold:g}. Every digit is in layers.csv.", ""]
    for name, table in layer_tables(members):
        lines += [f"### {name}", "", markdown_table(table), ""]
    lines += ["## Figures", ""]
    for name in figures:
        head, text = CAPTIONS[name]
        lines += [f"### {head}", "", f"![{head}]({name}.png) ([PDF]({name}.pdf))", "", text, ""]
    unusable = [f"- {m.label}: {describe_unusable(u, m.results.run_dir)}" for m in members for u in m.results.unusable]
    if unusable:
        lines += ["## Result files not used", "", *unusable, ""]
    lines += ["## Inputs", ""]
    for m in members:
        r = m.results
        if r.projection_folder is not None:
            lines.append(f"- {m.label}: projections {r.projection_folder.describe(r.run_dir)} (below {r.run_dir})")
        if r.reinit_path is not None:
            lines.append(f"- {m.label}: re-initialization {r.reinit_path}")
        lines += [f"- {m.label}: {n}" for n in r.notes]
    return "\n".join([*lines, ""])


# --- figures ------------------------------------------------------------------------------------------------

def _layer_names(members: Sequence[Member], with_stats: bool = True) -> list[str]:
    order: list[str] = []
    for m in members:
        names = [e["name"] for e in layer_entries(m.results.trained_doc)] if with_stats else list(m.table["name"])
        order += [n for n in names if n not in order]
    return order


def _suptitle(fig, members: Sequence[Member], what: str) -> None:
    fig.suptitle(f"{comparison_title(members)}\n{what}")


def _legend(fig, axes) -> None:
    handles, labels = axes.flat[0].get_legend_handles_labels()
    for ax in axes.flat[1:]:
        for h, lab in zip(*ax.get_legend_handles_labels()):
            if lab not in labels:
                handles.append(h)
                labels.append(lab)
    fig.legend(handles, labels, loc="outside lower center", ncols=min(len(labels), 4))


def plot_mass_by_epoch(members: Sequence[Member], out: Path, threshold: float) -> list[Path]:
    """Per layer, each run's mass across epochs: its tracked line and its snapshots."""
    import matplotlib  # on first use: start-up time

    names = _layer_names(members)
    if not names:
        return []
    nrows, ncols = grid_shape(len(names))
    tracked_runs = [tracked_curves(m.results) for m in members]  # each run's tracking.csv read once (and noted once)
    with matplotlib.rc_context(RC_PARAMS):
        fig = new_figure(3.6 * ncols, 3.0 * nrows + 1.4)
        axes = fig.subplots(nrows, ncols, squeeze=False)
        for ax, name in zip(axes.flat, names):
            n = None
            for i, m in enumerate(members):
                tab = m.results.projections
                if tab.empty:
                    continue
                sub = tab[(tab["name"] == name) & (pd.to_numeric(tab["epoch"], errors="coerce") >= 0)]
                if sub.empty:
                    continue
                sub = sub.assign(epoch=pd.to_numeric(sub["epoch"])).sort_values("epoch")
                n = n or int(sub["N"].iloc[-1])
                color, marker = f"C{i % 10}", MARKERS[i % len(MARKERS)]  # a marker each: lines that coincide
                tracked = tracked_runs[i]
                line = tracked[tracked["name"] == name] if tracked is not None else None
                if line is not None and len(line):
                    ax.plot(line["epoch"].to_numpy(float), line["mass"].to_numpy(float), "-", color=color, lw=1.2,
                            alpha=0.8)
                    ax.plot(sub["epoch"].to_numpy(float), sub["mass"].to_numpy(float), marker, color=color, ms=4,
                            mfc="none", label=m.label)
                else:
                    ax.plot(sub["epoch"].to_numpy(float), sub["mass"].to_numpy(float), "-" + marker, color=color,
                            ms=4, mfc="none", lw=1.2, alpha=0.8, label=m.label)
            if n:
                ax.axhspan(*null.mass_band(n), color="0.88", zorder=0, label="null 95% band")
            ax.axhline(0.5, color="0.5", lw=0.8, zorder=0)
            ax.set_ylim(-0.03, 1.03)
            ax.set_title(f"{name}" + (f" (N={n})" if n else ""))
            ax.set_xlabel("epoch")
            ax.set_ylabel("mass (share p <= 0)")
        hide_unused(axes, len(names))
        _legend(fig, axes)
        _suptitle(fig, members, "mass across epochs, per layer")
        return save_figure(fig, out, "compare_mass_by_epoch")


def plot_distributions(members: Sequence[Member], out: Path, threshold: float) -> list[Path]:
    """Per layer, each run's trained projections as an outlined histogram, and the null density."""
    import matplotlib  # on first use: start-up time

    names = _layer_names(members)
    if not names:
        return []
    normalized = all(m.results.normalize is True for m in members if m.results.trained_doc is not None)
    nrows, ncols = grid_shape(len(names))
    with matplotlib.rc_context(RC_PARAMS):
        fig = new_figure(3.6 * ncols, 2.9 * nrows + 1.4)
        axes = fig.subplots(nrows, ncols, squeeze=False)
        for ax, name in zip(axes.flat, names):
            entries = [(i, m, next((e for e in layer_entries(m.results.trained_doc) if e["name"] == name), None))
                       for i, m in enumerate(members)]
            entries = [(i, m, e) for i, m, e in entries if e is not None and e.get("projections")]
            if not entries:
                continue
            values = [np.asarray(e["projections"], dtype=float) for _, _, e in entries]
            lim = max(float(np.abs(v).max()) for v in values) * 1.08 or 1.0
            lim = min(lim, 1.0) if normalized else lim
            bins = int(np.clip(2 * math.sqrt(max(len(v) for v in values)), 6, 40))
            edges = np.linspace(-lim, lim, bins + 1)
            top = 0.0
            for (i, m, e), v in zip(entries, values):
                h, _, _ = ax.hist(v, edges, density=True, histtype="step", lw=1.6, color=f"C{i % 10}",
                                  label=m.label)
                top = max(top, float(h.max()))
            d = entries[0][2].get("d")
            if normalized and d and int(d) >= 2:
                t = np.linspace(-lim, lim, 400)
                density = null_density(t, int(d), entries[0][2].get("null") or BETA)  # the null its test used
                ax.plot(t, density, color="k", lw=1.1, label="null: random filter")
                top = max(top, min(float(np.nanmax(density)), 3 * top))
            ax.set_ylim(0, 1.12 * top if top > 0 else 1)
            ax.axvline(0, color="k", lw=0.7, ls=":")
            ax.set_title(f"{name} (N={entries[0][2].get('N')}" + (f", d={d})" if d else ")"))
            ax.set_xlabel("normalized projection" if normalized else "projection <w, 1>")
            ax.set_ylabel("density")
        hide_unused(axes, len(names))
        _legend(fig, axes)
        _suptitle(fig, members, "trained projections per layer")
        return save_figure(fig, out, "compare_distributions")


def plot_drops(members: Sequence[Member], out: Path, threshold: float) -> list[Path]:
    """Per layer, one bar per run: the relative top-1 drop under re-initialization to epoch 0."""
    import matplotlib  # on first use: start-up time

    with_drops = [m for m in members if m.table["drop_reinit_0"].notna().any()]
    if not with_drops:
        return []
    names = [n for n in _layer_names(members, with_stats=False)
             if any(m.table.loc[m.table["name"] == n, "drop_reinit_0"].notna().any() for m in with_drops)]
    width = 0.8 / len(members)
    with matplotlib.rc_context(RC_PARAMS):
        fig = new_figure(max(6.0, 0.45 * len(names) * len(members) + 2.5), 4.6)
        ax = fig.subplots()
        x = np.arange(len(names))
        for i, m in enumerate(members):
            drops = m.table.set_index("name")["drop_reinit_0"].reindex(names).astype(float).to_numpy()
            split = m.results.condition.eval_split
            ax.bar(x - 0.4 + width * (i + 0.5), np.nan_to_num(drops, nan=0.0), width, color=f"C{i % 10}",
                   label=m.label + (f" (drops on {split})" if split else " (no drops)"))
        ax.axhline(threshold, color="0.4", ls="--", lw=1, label=f"critical above {threshold:g}")
        ax.axhline(0, color="k", lw=0.7)
        ax.set_xticks(x, labels=names, rotation=45, ha="right", rotation_mode="anchor")
        ax.set_ylabel("relative top-1 drop, re-initialized to epoch 0")
        ax.legend(loc="best", fontsize=8)
        ax.grid(axis="y", alpha=0.3)
        _suptitle(fig, members, "drop under re-initialization to epoch 0, per layer")
        return save_figure(fig, out, "compare_drops")


def plot_bias_vs_criticality(members: Sequence[Member], out: Path, threshold: float) -> list[Path]:
    """One point per layer and run: trained bias against the drop under re-initialization to epoch 0."""
    import matplotlib  # on first use: start-up time

    parts = [(i, m, m.table[m.table["name"].isin(m.correlation["layers"])]) for i, m in enumerate(members)]
    parts = [(i, m, p) for i, m, p in parts if len(p)]
    if not parts:
        return []
    with matplotlib.rc_context(RC_PARAMS):
        fig = new_figure(7.0, 5.2)
        ax = fig.subplots()
        for i, m, part in parts:
            rho = m.correlation["spearman_rho"]
            stat = f"rho {rho:.2f}" if not math.isnan(rho) else "rho undefined"
            ax.scatter(part["bias"].astype(float), part["drop_reinit_0"].astype(float), s=36, color=f"C{i % 10}",
                       marker=MARKERS[i % len(MARKERS)], label=f"{m.label}: {stat}", zorder=3)
            for _, row in part.iterrows():
                ax.annotate(row["name"], (float(row["bias"]), float(row["drop_reinit_0"])), xytext=(3, 3),
                            textcoords="offset points", fontsize=7, color=f"C{i % 10}")
        ax.axhline(threshold, color="0.4", ls="--", lw=1, label=f"critical above {threshold:g}")
        ax.set_xlabel(f"bias: {members[0].table.attrs['measure_text'].split(',')[0]}")
        ax.set_ylabel("relative top-1 drop, layer re-initialized to epoch 0")
        ax.legend(loc="best", fontsize=8)
        ax.grid(alpha=0.3)
        ax.margins(x=0.15, y=0.1)
        _suptitle(fig, members, "bias against criticality, one point per layer and run")
        return save_figure(fig, out, "compare_bias_vs_criticality")

