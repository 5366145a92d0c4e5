"""A study's grid with the local launcher against the same cells as `hparr reproduce` processes run one after
another: lenet on digits (3 epochs; 1 with --quick), seeds 0 to CELLS-1 (8 cells with --full, 4 by default, 2 with
--quick), the same flags on both sides.

The two sides take turns, A B A B, in rounds of `cores` cells (the cells one `hparr study` runs at once; at
least two rounds from 4 cells): the baseline's `hparr reproduce` processes for the seeds of a round, then
`hparr study` over the same seeds (a study folder of its own per round), then the next round. A busy spell of a
shared machine so lands on both sides, and the ratio comes from one run: the ratio of the sums, with the rounds'
own ratios beside it.

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

from .common import ROOT, pick, timed

CELLS = 8  # with --full


def flags(epochs: int) -> list[str]:
    return ["--arch", "lenet", "--dataset", "digits", "--epochs", str(epochs), "--lr", "0.02", "--snapshot-every",
            "1", "--snapshot-all-until", "0", "--tb-logdir", "", "--no-progress"]


def _run(cmd: list[str]) -> float:
    seconds, proc = timed(subprocess.run, cmd, capture_output=True, text=True, cwd=ROOT)
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd[:4])} failed: {proc.stderr.strip()[-500:]}")
    return seconds


def rounds(cells: int, per_round: int) -> list[list[int]]:
    """The seeds 0..cells-1 in consecutive rounds of `per_round` (the last one may be shorter)."""
    return [list(range(start, min(start + per_round, cells))) for start in range(0, cells, per_round)]


def run(mode: str = "default") -> list[dict]:
    from hparr.provenance import available_cores
    from hparr.report.study import build_study_report

    cells = pick(mode, quick=2, default=4, full=CELLS)
    epochs = pick(mode, quick=1, default=3, full=3)
    cores = available_cores()
    root = Path(tempfile.mkdtemp(prefix="hparr-bench-study-"))
    hparr = [sys.executable, "-m", "hparr"]
    baseline = ours = report_s = 0.0
    per_round: list[float] = []
    try:
        # at least two rounds where there are 4 cells or more, so that the sides alternate
        for r, seeds in enumerate(rounds(cells, max(2, min(cores, cells // 2)))):
            base = sum(_run([*hparr, "reproduce", *flags(epochs), "--seed", str(seed),
                             "--out", str(root / f"base{seed}")]) for seed in seeds)
            study_dir = root / f"study{r}"
            seeds_flag = f"{seeds[0]}-{seeds[-1]}" if len(seeds) > 1 else str(seeds[0])
            study_s = _run([*hparr, "study", *flags(epochs), "--seeds", seeds_flag, "--out", str(study_dir)])
            report_s += timed(build_study_report, study_dir)[0]
            baseline, ours = baseline + base, ours + study_s
            per_round.append(round(base / study_s, 2))
        return [{"case": f"study_local_{cells}_cells", "cells": cells, "epochs": epochs, "cores": cores,
                 "rounds": len(per_round), "seconds": round(ours, 2), "baseline_s": round(baseline, 2),
                 "ratio": round(baseline / ours, 2), "round_ratios": per_round,
                 "study_report_s": round(report_s, 2),
                 "ratio_cells_only": round(baseline / max(ours - report_s, 1e-9), 2), "target_ratio": 1.6}]
    finally:
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    for row in run(sys.argv[1] if len(sys.argv) > 1 else "default"):
        print(row)
