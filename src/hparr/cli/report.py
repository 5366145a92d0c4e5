"""`hparr report`: figures, summary.md and index.html of a run, from its result files alone."""
from __future__ import annotations

import argparse
import json
from pathlib import Path

from .. import report
from ..defaults import THRESHOLD
from ..report import BIAS_MEASURES
from ..report.study import build_study_report
from ..results import read_study
from .args import choice
from .train import setup_logging

DESCRIPTION = (
    "Draws the report of a run from the JSON results of `hparr projections` and `hparr reinit` found below "
    "RUN_DIR (no model or data is loaded): per-layer distributions of the projections at initialization and "
    "trained with the null density, mass and mean across epochs with the null's band, the re-initialization "
    "heatmap, each layer's bias against its accuracy drop under re-initialization to epoch 0 (Spearman), "
    "layers.csv, report.json, summary.md and index.html. Written to RUN_DIR/report/ unless --out is given. "
    "Every JSON file below RUN_DIR that cannot be used is named, with the reason, on stderr and in the report, "
    "and the figures mark the epochs it leaves out; --strict makes it an error. "
    "For the folder of `hparr study`, the study's report: study.csv/parquet (every cell x snapshot x layer), "
    "statistics across seeds and corruptions, figures (a)-(d), summary.md and index.html.")


def add_arguments(p: argparse.ArgumentParser) -> None:

    p.add_argument("run_dir", metavar="RUN_DIR", help="folder searched (recursively) for result JSON files")
    p.add_argument("--out", type=str, default=None, metavar="DIR", help="output folder [RUN_DIR/report]")
    p.add_argument("--threshold", type=float, default=THRESHOLD,
                   help="a layer is robust when its relative top-1 drop after re-initialization to epoch 0 is "
                        f"<= this, else critical [{THRESHOLD}]")
    p.add_argument("--bias-measure", choices=tuple(BIAS_MEASURES), type=choice(BIAS_MEASURES), default="mass",
                   help="a layer's bias in the bias-against-criticality correlation: "
                        + "; ".join(f"{k}: {v}" for k, v in BIAS_MEASURES.items()) + " [mass]")
    p.add_argument("--strict", action="store_true",
                   help="a result file that cannot be used (not JSON, truncated, another format, another run's "
                        "settings) is an error (exit 1) instead of a warning named in the report")


def _say_missing(statistics) -> None:
    """How many cells of a study its report leaves out (not finished yet, or failed)."""
    missing = json.loads(Path(statistics).read_text()).get("missing", [])
    if missing:
        print(f"{len(missing)} cell(s) of the study are not finished and missing from the report: "
              + ", ".join(missing[:5]) + (", ..." if len(missing) > 5 else ""))


def run(args) -> int:
    setup_logging()
    if read_study(args.run_dir) is not None:  # a folder of `hparr study`: the study's report
        written = build_study_report(args.run_dir, args.out, threshold=args.threshold, measure=args.bias_measure)
    else:
        written = report.build_report(args.run_dir, args.out, threshold=args.threshold, measure=args.bias_measure,
                                      strict=args.strict)
    for path in written.values():
        print(f"wrote {path}")
    if "statistics.json" in written and read_study(args.run_dir) is not None:
        _say_missing(written["statistics.json"])
    return 0
