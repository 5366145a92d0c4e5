"""The report of a study (`hparr study`), drawn from its cells' result files alone (no model, no data, no torch).

`build_study_report` writes it: the tables of `report.study_tables` (loading, the claims in numbers), the figures
of `report._study_figures`, the text of `report._study_text` (captions and methods from `report._captions`) and the
page of `report._html`; the statistics are `report.stats`. This module also re-exports the names that callers
and tests reach as `report.study.<name>`.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .. import files
from ..defaults import THRESHOLD
from ..layout import (
    PAGE_NAME,
    REPORT_DIR,
    STATISTICS_NAME,
    STUDY_PARQUET,
    STUDY_TABLE,
    SUMMARY_NAME,
    TRACKED_TABLE,
)
from ..provenance import versions
from . import _study_figures as study_figures
from ._html import markdown_html
from ._study_text import answer_lines, summary_markdown
from ._tables import BIAS_MEASURES, check_options
from .stats import not_above_chance, pooled_spearman, spearman_across, t_interval
from .study_tables import (
    COLUMNS,
    CURVE_COLUMNS,
    REGIME_RULE,
    TRACKED_COLUMNS,
    StudyData,
    cell_regime,
    cell_rows,
    cell_table,
    claims,
    load_study,
)

__all__ = ["COLUMNS", "CURVE_COLUMNS", "REGIME_RULE", "TRACKED_COLUMNS", "StudyData", "StudyReport", "answer_lines",
           "build_study_report", "cell_regime", "cell_rows", "cell_table", "claims", "load_study", "not_above_chance",
           "pooled_spearman", "spearman_across", "summary_markdown", "t_interval"]


@dataclass(frozen=True)
class StudyReport:
    """What `build_study_report` wrote and computed."""

    files: dict[str, Path]  # {file name: path} of every file written
    statistics: dict[str, Any]  # the content of statistics.json, as written (JSON values: NaN as None)


def build_study_report(study_dir: str | os.PathLike, out_dir: str | os.PathLike | None = None,
                       threshold: float = THRESHOLD, measure: str = "mass") -> StudyReport:
    """Write the report of a study folder to `out_dir` (default STUDY/report): study.csv, study.parquet,
    tracked_by_epoch.csv (when the cells tracked their training), statistics.json, figures (a)-(d) as PNG and
    PDF, summary.md and index.html (summary.md rendered). Returns the files written and the statistics."""
    check_options(threshold, measure)
    data = load_study(study_dir, measure)
    out = Path(out_dir) if out_dir is not None else data.study_dir / REPORT_DIR
    files.ensure_dir(out)
    numbers = claims(data)
    written: list[Path] = []
    with files.atomic_path(out / STUDY_TABLE) as tmp:
        data.table.to_csv(tmp, index=False)
    written.append(out / STUDY_TABLE)
    try:
        with files.atomic_path(out / STUDY_PARQUET) as tmp:
            data.table.to_parquet(tmp, index=False)
        written.append(out / STUDY_PARQUET)
    except ImportError:  # no pyarrow: the CSV alone
        pass
    if len(data.tracked):
        with files.atomic_path(out / TRACKED_TABLE) as tmp:
            data.tracked.to_csv(tmp, index=False)
        written.append(out / TRACKED_TABLE)
    measure_text = BIAS_MEASURES[measure]
    figures, paths = study_figures.draw_all(data, numbers, out, threshold, measure_text)
    written += paths
    statistics = files.jsonable({
        "format": "hparr-study-report-1", "study_dir": str(data.study_dir.resolve()), "missing": data.missing,
        "threshold": threshold, **numbers, "cells": data.cells.to_dict(orient="records"),
        "versions": versions(with_torch=False)})
    files.write_json(out / STATISTICS_NAME, statistics)
    text = summary_markdown(data, numbers, figures, measure_text)
    files.write_text(out / SUMMARY_NAME, text)
    files.write_text(out / PAGE_NAME, markdown_html(text, f"hparr study: {data.study_dir.name}"))
    written += [out / STATISTICS_NAME, out / SUMMARY_NAME, out / PAGE_NAME]
    return StudyReport({p.name: p for p in written}, statistics)
