"""The state of a study's cells (`hparr study STUDY --status`), whatever ran them.

A cell is
- finished when its results are complete (`results.run_finished`);
- running while a process holds its attempt record (`hparr.attempt`: each cell is `hparr reproduce`, which keeps
  one, so this holds for the local pool, a SLURM array and any other scheduler alike), or while SLURM says its
  task runs;
- pending while SLURM holds its task in the queue, or while the `hparr study` that runs it is alive and has not
  started it in this run;
- failed when the last attempt ended with an error (its first line), when its process died without ending (the
  record has no end and no process holds it: kill -9, out of memory, a cancelled job, a node that failed), or
  when it left only its log (its last error line) or submitit's;
- not started otherwise (no trace of it, and nothing queues it).
"""
from __future__ import annotations

import os
import re
import shutil
from dataclasses import dataclass
from pathlib import Path

from .. import layout, results
from ..attempt import AttemptRecord, clock, read_attempt, read_lock_record
from ..errors import UsageError
from ..layout import CELL_LOG, STUDY_LOCK
from ._slurm import squeue_states

SLURM_PENDING = ("PENDING", "REQUEUED", "REQUEUE_HOLD", "REQUEUE_FED", "CONFIGURING", "SUSPENDED")
SLURM_RUNNING = ("RUNNING", "COMPLETING", "RESIZING", "SIGNALING", "STAGE_OUT")
STATES = ("finished", "running", "pending", "failed", "not started")

# a line of a log that `files.log_to` writes: date, time, logger, level, message
_LOG_LINE = re.compile(r"^\S+ \S+ \S+ (?:ERROR|CRITICAL) (.+)$")


@dataclass
class CellStatus:
    """state: one of STATES; log: the cell's log (its submitit log when the cell wrote none); task: its array
    task (SLURM), if any; slurm: the task's state in SLURM, if known; detail: running, who runs it and since when;
    pending, what holds it; failed, why."""

    cell: str
    state: str
    log: str | None = None
    task: str | None = None
    detail: str = ""
    slurm: str = ""


@dataclass
class StudyRun:
    """The `hparr study` process running cells in a study folder now: its record in the study's lock (who, since
    when) and the cells it runs."""

    record: AttemptRecord
    cells: frozenset[str]


def running_study(out: Path) -> StudyRun | None:
    """The `hparr study` that holds the study's lock now, or None."""
    found = read_lock_record(out / STUDY_LOCK)
    if found is None or not found[1] or found[0].running is not True:
        return None
    record, doc = found
    cells = doc.get("cells") if isinstance(doc.get("cells"), list) else []
    return StudyRun(record, frozenset(str(c) for c in cells))


def last_error_line(log: Path) -> str | None:
    """The message of the last ERROR (or CRITICAL) line of a log written by hparr, or None."""
    try:
        text = log.read_text(errors="replace")
    except OSError:
        return None
    for line in reversed(text.splitlines()):
        match = _LOG_LINE.match(line)
        if match:
            message = match.group(1).strip()
            return message.removeprefix("cell failed: ")
    return None


def last_line(path: Path) -> str | None:
    """The last line of a file that is not blank, or None."""
    try:
        lines = [line.strip() for line in path.read_text(errors="replace").splitlines() if line.strip()]
    except OSError:
        return None
    return lines[-1] if lines else None


def cell_status(out: Path, cell: str, task: str | None = None, slurm_state: str = "",
                study_run: StudyRun | None = None) -> CellStatus:
    """The state of the cell folder `out/cell` (see the module's text). task, slurm_state: its array task and
    the task's state in SLURM, if any; study_run: the running `hparr study`, if it runs this cell."""
    folder = out / cell
    log = folder / CELL_LOG
    slurm = slurm_state.lower()
    status = lambda state, detail="", log_file=None: CellStatus(  # noqa: E731
        cell, state, str(log_file) if log_file else None, task, detail, slurm)
    if results.run_finished(folder, layout.RUN_REPORT_FILES):
        return status("finished", log_file=log)
    attempt = read_attempt(folder)
    running = attempt.running if attempt is not None else False
    if running is not False:
        detail = f"{attempt.who()} since {clock(attempt.started)}"
        return status("running", detail + ("" if running else "; not verified: file locks cannot be tested here"),
                      log)
    if slurm_state in SLURM_PENDING:
        return status("pending", "queued by SLURM")
    if slurm_state in SLURM_RUNNING:
        return status("running", "its SLURM task is starting", log)
    run = study_run.record if study_run is not None else None
    if run is not None and (attempt is None or attempt.started is None or run.started is None
                            or attempt.started < run.started):
        return status("pending", f"queued by hparr study, {run.who()}")
    stderr = layout.submitit_stderr(out, task) if task else None
    if attempt is not None:
        return status("failed", _why(attempt, log), log if log.exists() else stderr)
    if log.exists():
        return status("failed", last_error_line(log) or "stopped before finishing; no error recorded", log)
    if stderr is not None and stderr.exists():
        return status("failed", last_line(stderr) or "its SLURM task ended before the cell began", stderr)
    return status("not started")


def _why(attempt: AttemptRecord, log: Path) -> str:
    if attempt.error:
        return attempt.error
    if attempt.ended is not None:
        return f"it ended at {clock(attempt.ended)} but its results are incomplete (removed since?)"
    return (f"its process ({attempt.who()}, started {clock(attempt.started)}) ended without finishing or recording "
            "an error: killed, out of memory, its job cancelled or its node lost")


def study_status(study_dir: str | os.PathLike) -> list[CellStatus]:
    """The state of every cell of a study, from the cell folders, the running `hparr study` and, for the cells
    of a SLURM array, squeue."""
    out = Path(study_dir)
    doc = results.read_study(out)
    if doc is None:
        raise UsageError(f"{out} is not a study folder (no {layout.STUDY_NAME})")
    task_of: dict[str, str] = {}
    for array in doc.get("slurm_arrays", []):
        for task, cell in array.get("tasks", {}).items():
            task_of[cell] = task  # the newest array of each cell
    states = (squeue_states(task_of.values()) or {}) if task_of and shutil.which("squeue") else {}
    study_run = running_study(out)
    statuses = []
    for cell in doc.get("cells", []):
        task = task_of.get(cell)
        statuses.append(cell_status(out, cell, task, states.get(task, "") if task else "",
                                    study_run if study_run is not None and cell in study_run.cells else None))
    return statuses
