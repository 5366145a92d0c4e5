"""The study itself: every cell of the grid not finished yet, run with the chosen launcher under the study's lock."""
from __future__ import annotations

import logging
import os
import socket
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

from .. import files
from ..errors import HparrError, UsageError
from ..layout import CELL_LOG
from ..provenance import available_cores
from ._cell import CellOutcome, cell_jobs
from ._folder import plan, prepare
from ._grid import Cell
from ._local import pool_size, run_local
from ._settings import StudySettings
from ._slurm import check_sbatch, run_submitit, submit, submitit_quiet
from ._status import SLURM_PENDING, STUDY_LOCK, study_status

log = logging.getLogger("hparr.study")


def check_not_queued(out: Path, todo: Sequence[Cell]) -> None:
    """Refuse to submit cells that an earlier array of the study still has queued or running."""
    names = {str(c.relpath) for c in todo}
    busy = [s for s in study_status(out) if s.cell in names and s.task and
            (s.state == "running" or s.slurm.upper() in SLURM_PENDING)]
    if busy:
        jobs = sorted({s.task.split("_")[0] for s in busy if s.task})
        raise HparrError(f"{len(busy)} cell(s) of {out} are still {busy[0].state} in SLURM job {', '.join(jobs)}: "
                         f"wait for them (hparr study {out} --status), or scancel {' '.join(jobs)}")


def record_run(lock, settings: StudySettings, todo: Sequence[Cell]) -> None:
    """Write who runs the study and the cells it runs into its lock file (`hparr study --status` reads it)."""
    if not hasattr(lock, "fileno"):
        return
    record = {"pid": os.getpid(), "host": socket.gethostname(), "started": time.time(),
              "launcher": settings.launcher, "cells": [str(c.relpath) for c in todo]}
    try:
        files.write_holder(lock, record)
    except OSError:  # a full disk: --status then calls the cells not started until they start
        pass


@dataclass
class StudyResult:
    """outcomes: those of the cells that ended (and the finished ones skipped); submitted: the job id of the
    array submitted without waiting (`--no-wait`) and its number of cells."""

    out: Path
    outcomes: list[CellOutcome]
    submitted: tuple[str, int] | None = None

    @property
    def failed(self) -> list[CellOutcome]:
        return [o for o in self.outcomes if o.status == "failed"]

    def count(self, status: str) -> int:
        return sum(o.status == status for o in self.outcomes)


def run_study(settings: StudySettings, on_outcome: Callable[[CellOutcome, int, int], None] | None = None
              ) -> StudyResult:
    """Run every cell of the grid that is not finished yet with the chosen launcher (not `print`), calling
    `on_outcome(outcome, done, total)` as cells end; a failed cell is recorded and the others go on."""
    if settings.launcher == "print":
        raise UsageError("--launcher print prints the cells' commands; it runs nothing")
    cells = settings.validate()
    if settings.launcher == "slurm":
        check_sbatch(settings)
    out = prepare(settings, cells)
    lock = files.flock(out / STUDY_LOCK, wait=False, patience=0.5)  # --status tests it for an instant
    if lock is None:
        raise HparrError(f"another `hparr study` is running in {out}")
    try:
        outcomes: list[CellOutcome] = []
        todo = []
        for cell, folder, finished in plan(settings, cells):
            if finished:
                outcomes.append(CellOutcome(cell, "skipped", str(folder / CELL_LOG)))
            else:
                todo.append(cell)
        done, total = len(outcomes), len(cells)
        record_run(lock, settings, todo)
        if on_outcome is not None:
            for o in outcomes:
                on_outcome(o, done, total)
        if not todo:
            return StudyResult(out, outcomes)
        if settings.launcher == "local":
            processes, threads = pool_size(settings.jobs, settings.threads, len(todo))
            log.info("%d cell(s) to run, %d finished; %d worker(s) x %d thread(s)", len(todo), done, processes,
                     threads)
            stream = run_local(settings, cell_jobs(settings, todo, threads), processes, threads)
        else:
            cluster = "slurm" if settings.launcher == "slurm" else "local"
            threads = settings.slurm.cpus_per_task if cluster == "slurm" else \
                max(1, available_cores() // len(todo))
            if cluster == "slurm":
                check_not_queued(out, todo)
            if not settings.wait:
                with submitit_quiet():
                    submitted = submit(settings, cell_jobs(settings, todo, threads), cluster)
                return StudyResult(out, outcomes, (str(submitted[0].job_id).split("_")[0], len(submitted)))
            stream = run_submitit(settings, cell_jobs(settings, todo, threads), cluster)
        for outcome in stream:
            outcomes.append(outcome)
            done += 1
            if on_outcome is not None:
                on_outcome(outcome, done, total)
        order = {c: i for i, c in enumerate(cells)}
        outcomes.sort(key=lambda o: order[o.cell])
        return StudyResult(out, outcomes)
    finally:
        lock.close()
