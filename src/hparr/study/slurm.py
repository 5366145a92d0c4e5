"""The SLURM launcher: the cells as one job array through submitit (or submitit's local executor), followed with
sacct or squeue, and sbatch asked beforehand whether it takes the job (`sbatch --test-only`)."""
from __future__ import annotations

import contextlib
import logging
import os
import subprocess
import tempfile
import time
import warnings
from pathlib import Path
from typing import Iterable, Iterator, Sequence

from .. import files, layout, results
from ..errors import HparrError, UsageError, first_line
from ..layout import SUBMITIT_DIR
from .cell import CellJob, CellOutcome, run_cell
from .grid import unique
from .settings import StudySettings

log = logging.getLogger("hparr.study")

# how many times a cell past its time limit (or preempted) is requeued to resume from its snapshots
MAX_REQUEUES = 10


def make_executor(settings: StudySettings, cluster: str, folder: str | os.PathLike | None = None):
    """The submitit executor of a study: SLURM ("slurm") or submitit's local executor ("local"), one task per
    cell, with the resources of `settings.slurm`; its files go to STUDY/submitit/<job id>/ (or `folder`)."""
    import submitit  # optional extra (hparr[slurm])

    folder = Path(folder) if folder is not None else Path(settings.out) / SUBMITIT_DIR / "%j"
    executor = submitit.AutoExecutor(folder=folder, cluster=cluster, slurm_max_num_timeout=MAX_REQUEUES)
    executor.update_parameters(**settings.slurm.executor_parameters())
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


def _squeue_watcher():
    """A submitit watcher that follows the array with `squeue` instead of `sacct`: a task SLURM no longer
    lists has ended (its result file, or its absence, tells how)."""
    from submitit.slurm.slurm import SlurmInfoWatcher  # optional extra (hparr[slurm])

    class SqueueWatcher(SlurmInfoWatcher):
        def update(self) -> None:
            todo = self._registered - self._finished
            if not todo:
                return
            self._num_calls += 1
            states = squeue_states(todo)
            self._last_status_check = time.time()
            if states is None:
                return
            for job_id in todo:
                self._info_dict[job_id] = {"JobID": job_id, "State": states.get(job_id, "ENDED")}
                if self.is_done(job_id, mode="cache"):
                    self._finished.add(job_id)

    return SqueueWatcher(delay_s=60)


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
            watcher = _squeue_watcher()
            for job in submitted:
                job.watcher = watcher
                watcher.register_job(str(job.job_id))
        by_job = {id(j): job for j, job in zip(submitted, jobs)}
        for done in as_completed(submitted, poll_frequency=2 if cluster == "local" else 10):
            job = by_job[id(done)]
            try:
                yield done.result()
            except Exception as exc:  # noqa: BLE001 - the task died (time limit, node failure, cancelled)
                yield CellOutcome(job.cell, "failed", job.log,
                                  f"the array task {done.job_id} failed: {first_line(exc)} (see {done.paths.stderr})")


def check_sbatch(settings: StudySettings) -> None:
    """Ask sbatch whether it takes the cells' job with the study's options (`sbatch --test-only`, nothing is
    submitted); a refusal is one line quoting sbatch."""
    with tempfile.TemporaryDirectory(prefix="hparr-sbatch-") as tmp:
        executor = make_executor(settings, "slurm", folder=tmp)._executor
        script = Path(tmp) / "test.sh"
        script.write_text(executor._make_submission_file_text("true", "test"))
        try:
            done = subprocess.run(["sbatch", "--test-only", str(script)], capture_output=True, text=True,
                                  timeout=120, cwd=tmp)
        except (OSError, subprocess.TimeoutExpired) as exc:
            raise HparrError(f"--launcher slurm: sbatch --test-only did not answer: {first_line(exc)}") from None
    if done.returncode != 0:
        raise UsageError(f"sbatch refuses the cells' job: {sbatch_message(done.stderr + done.stdout)}")


def sbatch_message(text: str) -> str:
    """sbatch's error lines, as one line."""
    lines = [line.strip() for line in text.splitlines() if line.strip() and not line.startswith("Try ")]
    errors = [line for line in lines if "error" in line.lower() or "failure" in line.lower()] or lines
    return "; ".join(unique(errors)) or "no message"
