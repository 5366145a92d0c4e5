"""A study's grid with the local launcher against the same cells as `hparr reproduce` processes run one after
another: 8 cells (lenet on digits, 3 epochs, seeds 0-7), the same flags on both sides.

The baseline pays, for every cell, a process start, the imports of torch and the rest, the decoding of the
dataset and a run on every core; `hparr study` starts its worker processes once, each decodes the dataset once
for all its cells, and runs cores-many cells at once with one thread each. Ours is the whole `hparr study`
command, including the study's own report, which the baseline does not draw; that report is timed again
alone so that the ratio of the cells themselves can be read too.
"""
from __future__ import annotations

import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

from .common import ROOT, timed

CELLS = 8
FLAGS = ["--arch", "lenet", "--dataset", "digits", "--epochs", "3", "--lr", "0.02", "--snapshot-every", "1",
         "--snapshot-all-until", "0", "--tb-logdir", "", "--no-progress"]


def _run(cmd: list[str]) -> float:
    seconds, proc = timed(subprocess.run, cmd, capture_output=True, text=True, cwd=ROOT)
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd[:4])} failed: {proc.stderr.strip()[-500:]}")
    return seconds


def run() -> list[dict]:
    from hparr.provenance import available_cores
    from hparr.report.study import build_study_report

    root = Path(tempfile.mkdtemp(prefix="hparr-bench-study-"))
    hparr = [sys.executable, "-m", "hparr"]
    try:
        baseline = sum(_run([*hparr, "reproduce", *FLAGS, "--seed", str(seed), "--out", str(root / f"base{seed}")])
                       for seed in range(CELLS))
        ours = _run([*hparr, "study", *FLAGS, "--seeds", f"0-{CELLS - 1}", "--out", str(root / "study")])
        report_s, _ = timed(build_study_report, root / "study")
        return [{"case": "study_local_8_cells", "cells": CELLS, "cores": available_cores(),
                 "seconds": round(ours, 2), "baseline_s": round(baseline, 2), "ratio": round(baseline / ours, 2),
                 "study_report_s": round(report_s, 2),
                 "ratio_cells_only": round(baseline / max(ours - report_s, 1e-9), 2), "target_ratio": 1.6}]
    finally:
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    for row in run():
        print(row)
