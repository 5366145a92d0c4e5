"""The report of a run, drawn from its result files alone (no model, no data, no training, no torch).

`find_runs` and `load_run` (discovery) find the JSON documents of `hparr projections` and `hparr reinit`:
those named by the manifest of `hparr reproduce`, else every one below the folder, grouped by training run;
for one run, one folder of projection results and one re-initialization result are chosen. `build_reports`
writes one report per run of a folder, and `report.compare` puts several runs side by side. `joined_table`
(tables) joins a run's results per layer by module name, `bias_vs_criticality` measures the paper's main claim
(are the biased layers the critical ones?) as a Spearman correlation, and `build_report` writes the figures (PNG
and PDF), the layer table (CSV), `report.json`, `summary.md` and `index.html` (summary.md rendered by
`report._html`), their titles naming the run's condition (`report._condition`). `save_reinit_plots` draws the
heatmap that `hparr reinit --plots` writes beside a re-initialization result. The null's bands come from
`hparr.null` (docs/method.md §3); for plain sums the null's spread depends on the initialization's scale, which
the results do not record: the spread measured at epoch 0 stands in for it, and the figures say so.
"""
from __future__ import annotations

import logging
import os
from pathlib import Path

from .. import files
from ..defaults import THRESHOLD
from ..errors import HparrError
from ..layout import HEATMAP_STEM, LAYERS_TABLE, PAGE_NAME, REINIT_TABLE, REPORT_DIR, REPORT_NAME, SUMMARY_NAME
from ..results import REPORT_FORMAT
from . import _render as render
from ._found import ProjectionFolder, describe_unusable, missing_text, tracked_curves
from ._html import markdown_html
from ._tables import (
    BIAS_MEASURES,
    bias_measure,
    bias_vs_criticality,
    check_options,
    joined_table,
    reinit_measures,
)
from .discovery import FoundRun, RunResults, RunsFound, find_runs, load_run
from .figures import (
    FIGURES,
    plot_bias_vs_criticality,
    plot_distributions,
    plot_epochs,
    save_heatmap,
    save_reinit_plots,
)

__all__ = ["BIAS_MEASURES", "FIGURES", "FoundRun", "ProjectionFolder", "RunResults", "RunsFound", "bias_measure",
           "bias_vs_criticality", "build_report", "build_reports", "find_runs", "joined_table", "load_run",
           "save_heatmap", "save_reinit_plots", "tracked_curves"]

log = logging.getLogger("hparr.report")


def report_unusable(results: RunResults, strict: bool = False) -> None:
    """Name every result file the report cannot use, and the epochs missing from the figures, on stderr
    (the "hparr" logger); with `strict`, raise an HparrError instead (nothing is written)."""
    items = [describe_unusable(u, results.run_dir) for u in results.unusable]
    if strict and (items or results.skipped):
        raise HparrError(f"{len(items) + len(results.skipped)} result file(s) not used (--strict): "
                         + "; ".join(items + results.skipped)
                         + (f"; {missing_text(results.missing_epochs)}" if results.missing_epochs else ""))
    for item in items:
        log.warning("warning: result file not used: %s", item)
    for item in results.skipped:
        log.warning("warning: result file left out: %s", item)
    if results.missing_epochs:
        log.warning("warning: figures: %s", missing_text(results.missing_epochs))


def build_reports(folder: str | os.PathLike, out_dir: str | os.PathLike | None = None, threshold: float = THRESHOLD,
                  measure: str = "mass", strict: bool = False) -> dict[str, dict[str, Path]]:
    """Write the report of every run of `folder` (see `find_runs`): of its one run to `out_dir` (default
    FOLDER/report), of each of several runs to OUT/<run's folder> (nested as the run's folder is below
    `folder`). Returns {run name: {file name: path}}; a study folder below is left to its own report."""
    folder = Path(folder)
    out = Path(out_dir) if out_dir is not None else folder / REPORT_DIR
    check_options(threshold, measure)
    found = find_runs(folder, exclude=[out])
    for study in found.studies:
        log.warning("warning: %s is a study: left out here; its report: hparr report %s", study, study)
    if len(found.runs) == 1:
        return {found.runs[0].name: build_report(folder, out, threshold, measure, strict, run=found.runs[0])}
    if not found.runs:
        raise HparrError(f"no result files under {folder} outside its study folder(s) "
                         f"{', '.join(str(s) for s in found.studies)}: report a study with `hparr report STUDY`")
    return {run.name: build_report(folder, out / run_folder(run.name), threshold, measure, strict, run=run)
            for run in found.runs}


def run_folder(name: str) -> str:
    """The folder of a run's report below the report of a folder of several runs: the run's own folder below it
    ("#2" of two runs whose results share a folder: "-run2")."""
    return name.replace("#", "-run") if name != "." else "this-folder"


def build_report(run_dir: str | os.PathLike, out_dir: str | os.PathLike | None = None,
                 threshold: float = THRESHOLD, measure: str = "mass", strict: bool = False,
                 run: FoundRun | None = None) -> dict[str, Path]:
    """Write the report of `run_dir` (or of `run`, one of its runs) to `out_dir` (default RUN_DIR/report) from the
    result files alone. A folder of several runs is refused (a UsageError that names them; `build_reports`
    writes one report each).

    Returns {file name: path} of what was written: the figures (PNG and PDF) that the results allow,
    layers.csv, report.json, summary.md and index.html (summary.md rendered). Figures of an earlier report that the
    results no longer allow are removed. Result files that cannot be used are named on stderr and in
    the report; with `strict` they are an error and nothing is written.
    """
    run_dir = Path(run_dir)
    out = Path(out_dir) if out_dir is not None else run_dir / REPORT_DIR
    check_options(threshold, measure)
    results = load_run(run_dir, exclude=[out], run=run)
    report_unusable(results, strict)
    if results.trained_doc is None and results.reinit_doc is None:
        raise HparrError(f"nothing to report under {run_dir}: no usable projection result (per-layer statistics) "
                         "and no re-initialization result; " + "; ".join(results.notes))
    table = joined_table(results, threshold=threshold, measure=measure)
    correlation = bias_vs_criticality(table)
    files.ensure_dir(out)
    written: list[Path] = []
    figures: list[str] = []
    if results.trained_doc is not None:
        written += plot_distributions(results, out)
        written += plot_epochs(results, out)
        figures += ["distributions", "mass_mean_by_epoch"]
    if results.reinit_doc is not None:
        save_heatmap(results.reinit_doc, out / f"{HEATMAP_STEM}.png", out / f"{HEATMAP_STEM}.pdf", results.title)
        written += [out / f"{HEATMAP_STEM}.png", out / f"{HEATMAP_STEM}.pdf"]
        figures.append(HEATMAP_STEM)
    if correlation["n_layers"]:
        written += plot_bias_vs_criticality(table, correlation, out, results.title)
        figures.append("bias_vs_criticality")
    for name in FIGURES:
        if name not in figures:
            for fmt in ("png", "pdf"):
                (out / f"{name}.{fmt}").unlink(missing_ok=True)

    provenance = render.provenance(results)
    with files.atomic_path(out / LAYERS_TABLE) as tmp:
        table.to_csv(tmp, index=False)
    records = table.to_dict(orient="records")
    files.write_json(out / REPORT_NAME, {
        "format": REPORT_FORMAT, "run_dir": str(results.run_dir.resolve()), "title": results.title,
        "condition": results.condition.to_dict(),
        "inputs": {"projections": [str(p.resolve()) for p in results.projection_folder.paths]
                   if results.projection_folder else [],
                   "projection_settings": results.projection_folder.settings if results.projection_folder else None,
                   "reinit": str(results.reinit_path.resolve()) if results.reinit_path else None,
                   "other_projection_runs": results.other_runs},
        "trained_epoch": results.trained_epoch, "threshold": table.attrs["threshold"], "bias_measure": measure,
        "level": table.attrs.get("level"), "correction": table.attrs.get("correction"),
        "bias_vs_criticality": dict(correlation),
        "layers": records, "notes": results.notes, "figures": figures,
        "unusable_results": [{"path": str(u.path.resolve()), "reason": u.reason, "epoch": u.epoch}
                             for u in results.unusable],
        "missing_epochs": results.missing_epochs, **provenance})
    summary = render.summary_markdown(results, table, correlation, figures, provenance)
    if results.reinit_doc is not None:  # loss and agreement next to the top-1 drop
        with files.atomic_path(out / REINIT_TABLE) as tmp:
            reinit_measures(results.reinit_doc).to_csv(tmp, index=False)
        written.append(out / REINIT_TABLE)
    else:
        (out / REINIT_TABLE).unlink(missing_ok=True)
    files.write_text(out / SUMMARY_NAME, summary)
    files.write_text(out / PAGE_NAME, markdown_html(summary, f"hparr report: {results.title}"))
    written += [out / LAYERS_TABLE, out / REPORT_NAME, out / SUMMARY_NAME, out / PAGE_NAME]
    return {p.name: p for p in written}

