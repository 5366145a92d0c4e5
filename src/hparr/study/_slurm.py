"""The SLURM launcher: the cells as one job array through submitit (or submitit's local executor), followed with
sacct (submitit's) or squeue (hparr's), and sbatch asked beforehand whether it takes the job (`sbatch --test-only`
on a script of the same #SBATCH lines). Only submitit's public API is used."""
from __future__ import annotations

import contextlib
import logging
import os
import shlex
import subprocess
import tempfile
import time
import warnings
from pathlib import Path
from typing import Any, Iterable, Iterator, Sequence

from .. import files, layout, results
from ..errors import HparrError, UsageError, first_line
from ..layout import SUBMITIT_DIR
from ._cell import CellJob, CellOutcome, run_cell
from ._grid import unique
from ._settings import StudySettings

log = logging.getLogger("hparr.study")

# how many times a cell past its time limit (or preempted) is requeued to resume from its snapshots
MAX_REQUEUES = 10
# the states in which squeue shows a task that has ended (a task it no longer lists has ended too); any other state,
# PREEMPTED included (a requeue follows), is a task still queued or running
SQUEUE_ENDED = frozenset({"BOOT_FAIL", "CANCELLED", "COMPLETED", "DEADLINE", "FAILED", "NODE_FAIL", "OUT_OF_MEMORY",
                          "REVOKED", "TIMEOUT"})
GONE = "no longer in squeue"
# the parameters of submitit's SlurmExecutor that are no sbatch flag of their own: the array's size limit, the
# delay of its --signal, lines run before the cell, and flags given as they are
NOT_FLAGS = ("array_parallelism", "signal_delay_s", "setup", "additional_parameters")


def make_executor(settings: StudySettings, cluster: str, folder: str | os.PathLike | None = None):
    """The submitit executor of a study: `submitit.SlurmExecutor` ("slurm") or `submitit.LocalExecutor` ("local"),
    one task per cell, with the resources of `settings.slurm` (the local one: its time limit); its files go to
    STUDY/submitit/<job id>/ (or `folder`)."""
    import submitit  # optional extra (hparr[slurm])

    folder = Path(folder) if folder is not None else Path(settings.out) / SUBMITIT_DIR / "%j"
    if cluster == "slurm":
        executor = submitit.SlurmExecutor(folder=folder, max_num_timeout=MAX_REQUEUES)
        executor.update_parameters(**settings.slurm.executor_parameters())
    else:
        executor = submitit.LocalExecutor(folder=folder)
        executor.update_parameters(timeout_min=settings.slurm.time_min, nodes=1, tasks_per_node=1)
    return executor


class SlurmCell:
    """Runs one cell in an array task. SLURM signals the task before its time limit (or when it is preempted);
    submitit then calls `checkpoint` and requeues the task, which resumes from the cell's snapshots (`reproduce`
    resumes a run and reuses its finished results). `seconds`: the time the earlier attempts ran."""

    def __init__(self, seconds: float = 0.0) -> None:
        self.seconds = seconds
        self._started = time.time()

    def __call__(self, job: CellJob) -> CellOutcome:
        self._started = time.time()
        outcome = run_cell(job)
        outcome.seconds += self.seconds
        return outcome

    def checkpoint(self, job: CellJob):
        from submitit.helpers import DelayedSubmission  # optional extra (hparr[slurm])

        ran = time.time() - self._started
        log.warning("cell stopped by SLURM (time limit or preemption) after %.0f s: requeued, it resumes from its "
                    "snapshots", ran)
        return DelayedSubmission(SlurmCell(self.seconds + ran), job)


def sacct_works() -> bool:
    """Whether `sacct` answers (it does not where SLURM keeps no accounting)."""
    try:
        done = subprocess.run(["sacct", "-n", "-X", "-j", "1"], capture_output=True, text=True, timeout=60)
    except (OSError, subprocess.TimeoutExpired):
        return False
    return done.returncode == 0


def squeue_states(job_ids: Iterable[str]) -> dict[str, str] | None:
    """{"<job>_<task>": state} of the array tasks SLURM still knows (`squeue`, every state, one line per task);
    None when squeue does not answer."""
    ids = sorted({str(j).split("_")[0] for j in job_ids})
    if not ids:
        return {}
    try:
        done = subprocess.run(["squeue", "-h", "-r", "-t", "all", "-o", "%i|%T", "-j", ",".join(ids)],
                              capture_output=True, text=True, timeout=120)
    except (OSError, subprocess.TimeoutExpired):
        return None
    if done.returncode != 0 and "invalid job id" not in done.stderr.lower():
        return None
    states = {}
    for line in done.stdout.splitlines():
        task, _, state = line.strip().partition("|")
        if task and state:
            states[task] = state.strip()
    return states


def ended_by_squeue(jobs: Sequence, every: float = 10.0, grace: float = 15.0) -> Iterator[tuple[Any, str | None]]:
    """Follow submitit's array tasks `jobs` with squeue where sacct does not answer. Yields (job, None) for a task
    whose result file is there, and (job, its last state) for one that squeue has shown ended, or no longer listed,
    for `grace` seconds without a result file (a shared file system may show the file late); polls every `every` s."""
    todo = list(jobs)
    ended_since: dict[str, float] = {}  # the tasks seen ended without a result file: since when
    while todo:
        waiting = []
        for job in todo:
            if job.paths.result_pickle.exists():
                yield job, None
            else:
                waiting.append(job)
        states = squeue_states(str(job.job_id) for job in waiting) if waiting else {}
        todo, now = [], time.monotonic()
        for job in waiting:
            task = str(job.job_id)
            state = None if states is None else states.get(task, GONE)  # None: squeue did not answer
            if state is not None and state != GONE and state.upper() not in SQUEUE_ENDED:
                ended_since.pop(task, None)  # queued or running (again, once requeued)
                todo.append(job)
            elif state is not None and now - ended_since.setdefault(task, now) >= grace:
                yield job, state
            else:
                todo.append(job)
        if todo:
            time.sleep(every)


@contextlib.contextmanager
def submitit_quiet() -> Iterator[None]:
    """submitit's warnings and messages go to the debug log, not the console."""
    logger = logging.getLogger("submitit")
    saved = logger.level
    logger.setLevel(logging.ERROR)
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", module=r"submitit(\.|$)")
        try:
            yield
        finally:
            logger.setLevel(saved)


def submit(settings: StudySettings, jobs: list[CellJob], cluster: str) -> list:
    executor = make_executor(settings, cluster)
    task = SlurmCell() if cluster == "slurm" else run_cell
    try:
        submitted = executor.map_array(task, jobs)
    except Exception as exc:  # noqa: BLE001 - sbatch refused the array
        raise HparrError(f"sbatch refuses the cells' job array: {sbatch_message(str(exc))}") from None
    ids = sorted({str(j.job_id).split("_")[0] for j in submitted})
    log.info("submitted %d cell(s) as job array %s (%s)", len(submitted), ", ".join(ids), cluster)
    if cluster == "slurm":
        record_array(Path(settings.out), ids[0], jobs, submitted)
    return submitted


def record_array(out: Path, job_id: str, jobs: Sequence[CellJob], submitted: Sequence) -> None:
    """Add the array to study.json: its job id and the task of each cell (for `hparr study STUDY --status`)."""
    doc = results.read_study(out) or {}
    arrays = [a for a in doc.get("slurm_arrays", []) if a.get("job_id") != job_id]
    arrays.append({"job_id": job_id, "submitted": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
                   "tasks": {str(j.job_id): str(Path(job.out).relative_to(out)) for j, job in zip(submitted, jobs)}})
    files.write_json(out / layout.STUDY_NAME, {**doc, "slurm_arrays": arrays})


def run_submitit(settings: StudySettings, jobs: list[CellJob], cluster: str) -> Iterator[CellOutcome]:
    from submitit.helpers import as_completed  # optional extra (hparr[slurm])

    with submitit_quiet():
        submitted = submit(settings, jobs, cluster)
        if cluster == "slurm" and not sacct_works():
            log.info("sacct does not answer here (no SLURM accounting): following the array with squeue")
            ended = ended_by_squeue(submitted)
        else:  # submitit follows the tasks (sacct on SLURM); a task without a result raises in `result()`
            ended = ((done, None) for done in as_completed(submitted, poll_frequency=2 if cluster == "local" else 10))
        by_job = {id(j): job for j, job in zip(submitted, jobs)}
        for done, state in ended:
            job = by_job[id(done)]
            if state is not None:
                yield CellOutcome(job.cell, "failed", job.log, f"the array task {done.job_id} ended ({state}) "
                                  f"without a result (see {done.paths.stderr})")
                continue
            try:
                yield done.result()
            except Exception as exc:  # noqa: BLE001 - the task died (time limit, node failure, cancelled)
                yield CellOutcome(job.cell, "failed", job.log,
                                  f"the array task {done.job_id} failed: {first_line(exc)} (see {done.paths.stderr})")


def check_sbatch(settings: StudySettings) -> None:
    """Ask sbatch whether it takes the cells' job with the study's options (`sbatch --test-only`, nothing is
    submitted); a refusal is one line quoting sbatch."""
    with tempfile.TemporaryDirectory(prefix="hparr-sbatch-") as tmp:
        script = Path(tmp) / "test.sh"
        script.write_text(sbatch_test_script(make_executor(settings, "slurm", folder=tmp).parameters))
        try:
            done = subprocess.run(["sbatch", "--test-only", str(script)], capture_output=True, text=True,
                                  timeout=120, cwd=tmp)
        except (OSError, subprocess.TimeoutExpired) as exc:
            raise HparrError(f"--launcher slurm: sbatch --test-only did not answer: {first_line(exc)}") from None
    if done.returncode != 0:
        raise UsageError(f"sbatch refuses the cells' job: {sbatch_message(done.stderr + done.stdout)}")


def sbatch_test_script(parameters: dict) -> str:
    """A batch script that runs `true` with the #SBATCH lines that submitit writes for a SlurmExecutor's
    `parameters`: each parameter as its flag (job_name as --job-name), --signal, then the flags given as they are.
    The array's own lines (--array, --output, --error) are left out: hparr sets none of them."""
    import submitit  # optional extra (hparr[slurm])

    flags = {key.replace("_", "-"): value for key, value in parameters.items() if key not in NOT_FLAGS}
    flags["signal"] = f"{submitit.JobEnvironment.USR_SIG}@{parameters['signal_delay_s']}"
    extra = parameters.get("additional_parameters") or {}
    flags.update({key.replace("_", "-"): value for key, value in extra.items()})
    lines = [f"#SBATCH --{key}" if value is True else f"#SBATCH --{key}={shlex.quote(str(value))}"
             for key, value in sorted(flags.items())]
    return "\n".join(["#!/bin/bash", *lines, "true", ""])


def sbatch_message(text: str) -> str:
    """sbatch's error lines, as one line."""
    lines = [line.strip() for line in text.splitlines() if line.strip() and not line.startswith("Try ")]
    errors = [line for line in lines if "error" in line.lower() or "failure" in line.lower()] or lines
    return "; ".join(unique(errors)) or "no message"
