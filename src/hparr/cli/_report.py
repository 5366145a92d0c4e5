"""`hparr report`: figures, summary.md and index.html of a run, from its result files alone."""
from __future__ import annotations

import argparse

from .. import report
from ..defaults import THRESHOLD
from ..layout import PAGE_NAME
from ..report import BIAS_MEASURES
from ..report.compare import build_comparison
from ..report.study import build_study_report
from ..results import read_study
from ._args import choice
from ._train import setup_logging

DESCRIPTION = (
    "Draws the report of a run from the JSON results of `hparr projections` and `hparr reinit` found below "
    "RUN_DIR (no model or data is loaded): per-layer distributions of the projections at initialization and "
    "trained with the null density, mass and mean across epochs with the null's band, the re-initialization "
    "heatmap, each layer's bias against its accuracy drop under re-initialization to epoch 0 (Spearman), "
    "layers.csv, report.json, summary.md and index.html, titled by what separates the run from a clean, full-data "
    "one (label noise, pixel shuffle, training-set size, class subset, why training stopped, drops measured on the "
    "training images). Written to RUN_DIR/report/ unless --out is given. "
    "Every JSON file below RUN_DIR that cannot be used is named, with the reason, on stderr and in the report, "
    "and the figures mark the epochs it leaves out; --strict makes it an error. "
    "For the folder of `hparr study`, the study's report: study.csv/parquet (every cell x snapshot x layer), "
    "statistics across seeds and corruptions, figures (a)-(d), summary.md and index.html. "
    "A folder that holds several runs (several `hparr reproduce` folders, or results of several training runs) "
    "gets one report per run, in OUT/<the run's folder>. Two or more RUN_DIRs, or --compare, put their runs side "
    "by side: one table per layer of each run's mass, bias and drop, and the figures overlaid, each run labelled by "
    "its condition; written to the runs' common folder/comparison/ unless --out is given.")


def add_arguments(p: argparse.ArgumentParser) -> None:

    p.add_argument("run_dir", metavar="RUN_DIR", nargs="+",
                   help="folder searched (recursively) for result JSON files; several: compare their runs")
    p.add_argument("--out", type=str, default=None, metavar="DIR", help="output folder [RUN_DIR/report]")
    p.add_argument("--threshold", type=float, default=THRESHOLD,
                   help="a layer is robust when its relative top-1 drop after re-initialization to epoch 0 is "
                        f"<= this, else critical [{THRESHOLD}]")
    p.add_argument("--bias-measure", choices=tuple(BIAS_MEASURES), type=choice(BIAS_MEASURES), default="mass",
                   help="a layer's bias in the bias-against-criticality correlation: "
                        + "; ".join(f"{k}: {v}" for k, v in BIAS_MEASURES.items()) + " [mass]")
    p.add_argument("--compare", action="store_true",
                   help="put the runs side by side even when one RUN_DIR holds them all (several RUN_DIRs always "
                        "are)")
    p.add_argument("--strict", action="store_true",
                   help="a result file that cannot be used (not JSON, truncated, another format, another run's "
                        "settings) is an error (exit 1) instead of a warning named in the report")


def _say_missing(statistics: dict) -> None:
    """How many cells of a study its report leaves out (not finished yet, or failed)."""
    missing = statistics.get("missing", [])
    if missing:
        print(f"{len(missing)} cell(s) of the study are not finished and missing from the report: "
              + ", ".join(missing[:5]) + (", ..." if len(missing) > 5 else ""))


def run(args) -> int:
    setup_logging()
    folders = args.run_dir
    options = {"threshold": args.threshold, "measure": args.bias_measure}
    if len(folders) > 1 or args.compare:  # runs side by side
        compared = build_comparison(folders, args.out, strict=args.strict, **options)
        print(f"compared {len(compared.members)} runs; "
              f"wrote {compared.files[PAGE_NAME].parent}/ ({', '.join(compared.files)})")
        return 0
    folder = folders[0]
    if read_study(folder) is not None:  # a folder of `hparr study`: the study's report
        written = build_study_report(folder, args.out, **options)
        for path in written.files.values():
            print(f"wrote {path}")
        _say_missing(written.statistics)
        return 0
    reports = report.build_reports(folder, args.out, strict=args.strict, **options)
    if len(reports) == 1:
        for path in next(iter(reports.values())).values():
            print(f"wrote {path}")
        return 0
    print(f"{folder} holds {len(reports)} runs: one report each")
    for name, written in reports.items():
        print(f"{name}: wrote {written[PAGE_NAME].parent}/ ({len(written)} files)")
    return 0
