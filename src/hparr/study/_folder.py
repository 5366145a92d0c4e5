"""The study folder: study.json (the grid, the shared flags, the launcher, the versions), the cells' folders
and the `hparr reproduce` command line of each cell."""
from __future__ import annotations

import dataclasses
import shlex
import sys
from pathlib import Path
from typing import Sequence

from .. import files, layout, results
from ..provenance import versions
from ._grid import Cell, unique
from ._settings import StudySettings, check_out


def prepare(settings: StudySettings, cells: Sequence[Cell]) -> Path:
    """Create the study folder, or check that an existing one is a study of the same shared settings and data
    files, and write study.json (the grid, the shared flags, the data files' sizes and hashes, the launcher,
    the versions)."""
    out = check_out(settings)
    files.ensure_dir(out)
    previous = results.read_study(out) or {}
    known = unique([*previous.get("cells", []), *(str(c.relpath) for c in cells)])
    files.write_json(out / layout.STUDY_NAME, {
        "format": results.STUDY_FORMAT,
        "grid": {"arch": list(settings.archs), "dataset": list(settings.datasets), "seeds": list(settings.seeds),
                 "noise": list(settings.noises), "subsample_classes": list(settings.subsample_classes),
                 **({"train_size": list(settings.train_sizes)} if settings.train_sizes != (None,) else {})},
        "flags": list(settings.flags), "shared": settings.shared(),
        "data_files": {**(previous.get("data_files") or {}), **settings.data_files()}, "launcher": settings.launcher,
        **({"slurm": files.jsonable(dataclasses.asdict(settings.slurm))} if settings.launcher == "slurm" else {}),
        **({"slurm_arrays": previous["slurm_arrays"]} if previous.get("slurm_arrays") else {}),
        "cells": known, "versions": versions(with_torch="torch" in sys.modules)})
    return out


def cell_dir(settings: StudySettings, cell: Cell) -> Path:
    return Path(settings.out) / cell.relpath


def command_line(settings: StudySettings, cell: Cell) -> str:
    """The `hparr reproduce` command that runs one cell."""
    argv = ["hparr", "reproduce", "--arch", cell.arch, "--dataset", cell.dataset, "--seed", str(cell.seed),
            "--noise", f"{cell.noise:g}", "--subsample-classes", str(cell.subsample_classes),
            *(["--train-size", str(cell.train_size)] if cell.train_size is not None else []),
            *settings.flags, "--out", str(cell_dir(settings, cell))]
    return shlex.join(argv)


def plan(settings: StudySettings, cells: Sequence[Cell]) -> list[tuple[Cell, Path, bool]]:
    """(cell, folder, finished) for each cell."""
    return [(c, folder, results.run_finished(folder, layout.RUN_REPORT_FILES))
            for c, folder in ((c, cell_dir(settings, c)) for c in cells)]
