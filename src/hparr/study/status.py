"""The state of a study's cells (`hparr study STUDY --status`), from their folders and SLURM's queue."""
from __future__ import annotations

import os
import shutil
from dataclasses import dataclass
from pathlib import Path

from .. import layout, results
from ..errors import UsageError
from .folder import CELL_LOG, SUBMITIT_DIR
from .slurm import squeue_states


@dataclass
class CellStatus:
    """state: finished, running, pending, failed or not started; log: the cell's log (its submitit log when the
    cell wrote none); task: its array task (SLURM), if any."""

    cell: str
    state: str
    log: str | None = None
    task: str | None = None
    detail: str = ""


def study_status(study_dir: str | os.PathLike) -> list[CellStatus]:
    """The state of every cell of a study, from the cell folders and, for the cells of a SLURM array, squeue
    (or sacct where squeue no longer lists the task)."""
    out = Path(study_dir)
    doc = results.read_study(out)
    if doc is None:
        raise UsageError(f"{out} is not a study folder (no {layout.STUDY_NAME})")
    task_of: dict[str, str] = {}
    for array in doc.get("slurm_arrays", []):
        for task, cell in array.get("tasks", {}).items():
            task_of[cell] = task  # the newest array of each cell
    states = (squeue_states(task_of.values()) or {}) if task_of and shutil.which("squeue") else {}
    statuses = []
    for cell in doc.get("cells", []):
        folder, task = out / cell, task_of.get(cell)
        log_path = folder / CELL_LOG
        if results.run_finished(folder):
            statuses.append(CellStatus(cell, "finished", str(log_path), task))
            continue
        state = states.get(task, "") if task else ""
        if state in ("PENDING", "REQUEUED", "REQUEUE_HOLD", "REQUEUE_FED", "CONFIGURING", "SUSPENDED"):
            statuses.append(CellStatus(cell, "pending", None, task, state.lower()))
        elif state in ("RUNNING", "COMPLETING", "RESIZING", "SIGNALING", "STAGE_OUT"):
            statuses.append(CellStatus(cell, "running", str(log_path), task))
        else:
            stderr = out / SUBMITIT_DIR / task / f"{task}_0_log.err" if task else None
            log_file = log_path if log_path.exists() else stderr if stderr and stderr.exists() else None
            if log_file is None:  # never ran (or cancelled before it started)
                statuses.append(CellStatus(cell, "not started", None, task, state.lower()))
            else:
                statuses.append(CellStatus(cell, "failed", str(log_file), task, state.lower()))
    return statuses
