"""One cell of a study: `reproduce` into its folder, its messages to its own log, its failure recorded rather
than raised. Torch is imported only inside `run_cell`, so that the study's other modules stay torch-free."""
from __future__ import annotations

import contextlib
import logging
import time
import traceback
from dataclasses import dataclass
from typing import Any, Iterator, Sequence

from .. import files
from ..attempt import Attempt
from ..defaults import LEVEL, THRESHOLD
from ..errors import HparrError, first_line
from ..layout import CELL_LOG
from ._folder import cell_dir
from ._grid import Cell
from ._settings import StudySettings

log = logging.getLogger("hparr.study")


@dataclass
class CellJob:
    """What a worker needs to run one cell."""

    cell: Cell
    settings: Any  # training.TrainSettings
    out: str
    log: str
    with_linear: bool = False
    threshold: float = THRESHOLD
    level: float = LEVEL
    threads: int | None = None
    eval_splits: Sequence[str] = ("test",)


@dataclass
class CellOutcome:
    """status: "finished" (run now), "skipped" (finished before) or "failed" (error: its first line)."""

    cell: Cell
    status: str
    log: str
    error: str | None = None
    seconds: float = float("nan")


@contextlib.contextmanager
def _only_to(log_path: str) -> Iterator[None]:
    """The hparr messages (and Python warnings) of the block go to `log_path` alone, not to the console."""
    logger = logging.getLogger("hparr")
    saved = (list(logger.handlers), logger.level, logger.propagate)
    for handler in saved[0]:
        if not isinstance(handler, logging.FileHandler):
            logger.removeHandler(handler)
    logger.setLevel(logging.INFO)
    logger.propagate = False
    logging.captureWarnings(True)
    warnings_logger = logging.getLogger("py.warnings")
    warnings_propagate, warnings_logger.propagate = warnings_logger.propagate, False
    try:
        with files.log_to(log_path), files.log_to(log_path, "py.warnings"):
            yield
    finally:
        logging.captureWarnings(False)
        warnings_logger.propagate = warnings_propagate
        for handler in list(logger.handlers):
            logger.removeHandler(handler)
        for handler in saved[0]:
            logger.addHandler(handler)
        logger.setLevel(saved[1])
        logger.propagate = saved[2]


def run_cell(job: CellJob) -> CellOutcome:
    """Run one cell (`reproduce` into its folder), its messages to its log file; an error is returned, not
    raised, so that one failed cell does not stop the others."""
    import torch  # torch-free module: torch only where a cell trains

    from .. import pipeline  # torch-free module: the pipeline imports torch

    if job.threads:
        torch.set_num_threads(job.threads)
    start = time.perf_counter()
    error = None
    try:
        with _only_to(job.log):
            log.info("cell %s: %s", job.cell.describe(), job.out)
            try:
                with Attempt(job.out) as record:  # who runs the cell, and how it ended (`hparr study --status`)
                    record.begin()  # a cell that fails in reproduce's checks has failed: it is recorded
                    pipeline.reproduce(job.settings, job.out, with_linear=job.with_linear, threshold=job.threshold,
                                       level=job.level, eval_splits=job.eval_splits)
                log.info("cell finished in %.1f s", time.perf_counter() - start)
            except Exception as exc:  # noqa: BLE001 - recorded as the cell's failure, the study goes on
                error = first_line(exc)
                log.error("cell failed: %s\n%s", error, traceback.format_exc())
    except HparrError as exc:  # the cell's folder or log cannot be written
        error = first_line(exc)
    return CellOutcome(job.cell, "failed" if error else "finished", job.log, error, time.perf_counter() - start)


def cell_jobs(settings: StudySettings, cells: Sequence[Cell], threads: int | None) -> list[CellJob]:
    return [CellJob(cell=c, settings=settings.cell_settings(c), out=str(cell_dir(settings, c)),
                    log=str(cell_dir(settings, c) / CELL_LOG), with_linear=settings.with_linear,
                    threshold=settings.threshold, level=settings.level, threads=threads,
                    eval_splits=tuple(settings.eval_splits)) for c in cells]
