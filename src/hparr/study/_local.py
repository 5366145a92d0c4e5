"""The local launcher: a pool of worker processes on this machine, each with its torch threads."""
from __future__ import annotations

import logging
import multiprocessing
import os
import threading
import time
from concurrent.futures import ProcessPoolExecutor, as_completed
from concurrent.futures.process import BrokenProcessPool
from pathlib import Path
from typing import Iterator

from .. import files
from ..errors import UsageError, first_line
from ..layout import WORKERS_LOCK
from ..provenance import available_cores
from ._cell import CellJob, CellOutcome, run_cell
from ._settings import StudySettings, check_workers

log = logging.getLogger("hparr.study")

def pool_size(jobs: int | None, threads: int | None, todo: int, cores: int | None = None) -> tuple[int, int]:
    """(worker processes, torch threads each) of the local launcher, with jobs x threads <= cores."""
    cores = cores or available_cores()
    check_workers(jobs, threads)
    if jobs is None:
        jobs = max(1, min(cores // (threads or 1), max(todo, 1)))
    threads = threads or max(1, cores // jobs)
    if jobs * threads > cores:
        raise UsageError(f"--jobs {jobs} x --threads {threads} = {jobs * threads} exceeds the {cores} cores "
                         "of this machine")
    return jobs, threads


_held: list = []  # the locks a worker process holds while it lives



def _init_worker(threads: int, workers_lock: str, parent: int) -> None:
    """Each worker: torch threads, decoded datasets kept for its later cells, a shared lock held while it
    lives, and an exit as soon as the study process is gone (so a killed study leaves no cell running)."""
    import torch  # torch-free module: torch only in the worker processes

    from .. import data  # torch-free module: the data loaders import torch

    torch.set_num_threads(threads)
    data.keep_decoded(True)
    _held.append(files.flock(workers_lock, shared=True))  # held for the life of the process

    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(0.5)
        os._exit(1)

    threading.Thread(target=watch, daemon=True, name="hparr-parent-watch").start()


def run_local(settings: StudySettings, jobs: list[CellJob], processes: int, threads: int) -> Iterator[CellOutcome]:
    out = Path(settings.out)
    workers_lock = out / WORKERS_LOCK
    waited = files.flock(workers_lock, wait=False)  # the workers of a killed earlier run exit within a second
    if waited is None:
        log.info("waiting for the workers of an earlier run of this study to exit")
        waited = files.flock(workers_lock)
    waited.close()
    context = multiprocessing.get_context("spawn")
    pool = ProcessPoolExecutor(max_workers=processes, mp_context=context, initializer=_init_worker,
                               initargs=(threads, str(workers_lock), os.getpid()))
    try:
        futures = {pool.submit(run_cell, job): job for job in jobs}
        for future in as_completed(futures):
            job = futures[future]
            try:
                outcome = future.result()
            except BrokenProcessPool as exc:  # a worker process died (killed, out of memory)
                outcome = CellOutcome(job.cell, "failed", job.log, f"the worker process died: {first_line(exc)}")
            except Exception as exc:  # noqa: BLE001 - anything else the worker raised
                outcome = CellOutcome(job.cell, "failed", job.log, first_line(exc))
            yield outcome
    except BaseException:  # interrupted: start no other cell (the running ones end with this process)
        pool.shutdown(wait=False, cancel_futures=True)
        raise
    finally:
        pool.shutdown(wait=True)
