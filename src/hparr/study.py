"""`hparr study`: a grid of `hparr reproduce` runs (cells) over seeds, label corruptions, architectures, datasets
and class subsets, run as independent jobs by an existing engine: a local process pool
(`concurrent.futures`), a SLURM job array (`submitit`), or any other scheduler fed the printed command lines.

Each cell is exactly `reproduce(settings, STUDY/cells/<arch>/<dataset>[_k]/<condition>/seed_<s>)`, so
`hparr report CELL_DIR` works on each. A cell is finished when its manifest, the files the manifest names and
its report are there (`results.run_finished`); finished cells are skipped, so a study stopped in any way
(even `kill -9`) is completed by running the same command again, and no finished file is rewritten.
This module imports torch only inside the functions that train.
"""
from __future__ import annotations

import contextlib
import dataclasses
import logging
import math
import os
import re
import shlex
import shutil
import subprocess
import sys
import threading
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator, Sequence

from . import files, layout, results
from .defaults import LEVEL, THRESHOLD, check_level, check_threshold
from .errors import HparrError, UsageError, first_line
from .layout import Corruption
from .provenance import available_cores

log = logging.getLogger("hparr.study")

LAUNCHERS = ("local", "slurm", "print")
# a SLURM job array run by submitit's local executor: the submission path of `slurm`, on a machine without SLURM
HIDDEN_LAUNCHERS = ("submitit-local",)
CELL_LOG = "cell.log"
SUBMITIT_DIR = "submitit"
_STUDY_LOCK, _WORKERS_LOCK = ".study.lock", ".workers.lock"
# the settings that each cell sets for itself; every other one is shared by the cells of a study
_PER_CELL = ("arch", "seed", "models_path", "tb_logdir", "resume_from", "progress")
_PER_CELL_DATA = ("dataset", "noise", "subsample_classes", "train_size")
# settings added after studies were first recorded: left out of the record while unset, so that an earlier
# study folder keeps its shared settings
_RECORDED_WHEN_SET = ("until_train_acc", "train_size_seed")


# --- the grid ------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Cell:
    """One point of the grid."""

    arch: str
    dataset: str
    seed: int
    noise: float = 0.0
    subsample_classes: int = 0
    train_size: int | None = None  # a --train-size subset of the training images (None: all)

    @property
    def condition(self) -> str:
        return Corruption(self.noise).condition

    @property
    def data_name(self) -> str:
        return layout.cell_data_name(self.dataset, self.subsample_classes, self.train_size)

    @property
    def relpath(self) -> Path:
        """`cells/<arch>/<dataset>[_k][_n<N>]/<condition>/seed_<s>`, below the study folder (n<N>: --train-size)."""
        return layout.cell_path(self.arch, self.dataset, self.seed, self.noise, self.subsample_classes, self.train_size)

    def describe(self) -> str:
        return f"{self.arch} {self.data_name} {self.condition} seed {self.seed}"


def _items(flag: str, text: str) -> list[str]:
    if not text.strip():
        raise UsageError(f"empty grid: {flag} lists no value")
    items = [item.strip() for item in text.split(",")]
    for position, item in enumerate(items, 1):
        if not item:
            raise UsageError(f"{flag}: malformed list {text!r}: item {position} is empty")
    return items


def _unique(values: Iterable) -> list:
    out = []
    for v in values:
        if v not in out:
            out.append(v)
    return out


def parse_names(flag: str, text: str) -> list[str]:
    """`a,b,c` -> ["a", "b", "c"] (repeats dropped)."""
    return _unique(_items(flag, text))


def parse_ints(flag: str, text: str) -> list[int]:
    """Comma list of integers >= 0 and ranges: `0-4,7` -> [0, 1, 2, 3, 4, 7] (ranges include both ends)."""
    out: list[int] = []
    for item in _items(flag, text):
        single, span = re.fullmatch(r"\d+", item), re.fullmatch(r"(\d+)\s*-\s*(\d+)", item)
        if single:
            out.append(int(item))
        elif span:
            lo, hi = int(span.group(1)), int(span.group(2))
            if hi < lo:
                raise UsageError(f"{flag}: backwards range {item!r} in {text!r} (write {hi}-{lo})")
            out.extend(range(lo, hi + 1))
        else:
            raise UsageError(f"{flag}: malformed list {text!r}: {item!r} is not an integer >= 0 or a range a-b")
    return _unique(out)


def parse_floats(flag: str, text: str) -> list[float]:
    """Comma list of numbers: `0,0.5,1,-1` -> [0.0, 0.5, 1.0, -1.0]."""
    out = []
    for item in _items(flag, text):
        try:
            value = float(item)
        except ValueError:
            raise UsageError(f"{flag}: malformed list {text!r}: {item!r} is not a number") from None
        if not math.isfinite(value):
            raise UsageError(f"{flag}: malformed list {text!r}: {item!r} is not a finite number")
        out.append(value + 0.0)  # -0.0 -> 0.0
    return _unique(out)


# --- settings ------------------------------------------------------------------------------------

_MEM = re.compile(r"(\d+)\s*([KMGT]?)B?", re.IGNORECASE)
# how many times a cell past its time limit (or preempted) is requeued to resume from its snapshots
MAX_REQUEUES = 10


def parse_slurm_extra(items: Iterable[str]) -> dict[str, str]:
    """`--slurm-extra KEY=VALUE` items -> {KEY: VALUE} (an sbatch option and its value, e.g. `mail-type=END`)."""
    out: dict[str, str] = {}
    for item in items:
        key, sep, value = item.partition("=")
        key = key.strip().lstrip("-")
        if not sep or not key or not value.strip():
            raise UsageError(f"--slurm-extra {item!r}: expected KEY=VALUE, an sbatch option and its value "
                             "(e.g. mail-type=END)")
        out[key] = value.strip()
    return out


@dataclass
class SlurmOptions:
    """The resources of each array task (`--launcher slurm`).

    mem: memory of each task (one task per node), an sbatch size such as 4G or 500M; account, qos, constraint:
    those of sbatch; extra: other sbatch options {name: value} (submitit's slurm_additional_parameters);
    setup: shell lines run in the job before the cell (such as `module load cuda`)."""

    partition: str | None = None
    gpus_per_task: int = 0
    cpus_per_task: int = 4
    time_min: int = 240
    array_parallelism: int = 64
    mem: str | None = None
    account: str | None = None
    qos: str | None = None
    constraint: str | None = None
    extra: dict[str, str] = field(default_factory=dict)
    setup: Sequence[str] = ()

    def validate(self) -> None:
        for flag, value, least in (("--cpus-per-task", self.cpus_per_task, 1),
                                   ("--gpus-per-task", self.gpus_per_task, 0), ("--time", self.time_min, 1),
                                   ("--array-parallelism", self.array_parallelism, 1)):
            if value < least:
                raise UsageError(f"{flag} must be >= {least}, got {value}")
        if self.mem is not None:
            size = _MEM.fullmatch(self.mem.strip())
            if not size or int(size.group(1)) == 0:
                raise UsageError(f"--mem must be a memory size above 0 such as 4G or 500M, got {self.mem!r}")
        for flag, value in (("--partition", self.partition), ("--account", self.account), ("--qos", self.qos),
                            ("--constraint", self.constraint)):
            if value is not None and not value.strip():
                raise UsageError(f"{flag} is empty")

    @property
    def signal_delay_s(self) -> int:
        """Seconds before the time limit when SLURM signals a cell to requeue itself: submitit's 90, less for
        limits of a few minutes (SLURM may signal up to a minute early)."""
        return min(90, max(5, self.time_min * 6))

    def executor_parameters(self) -> dict[str, Any]:
        """The parameters of submitit's AutoExecutor."""
        params: dict[str, Any] = dict(name="hparr-study", timeout_min=self.time_min, nodes=1, tasks_per_node=1,
                                      cpus_per_task=self.cpus_per_task,
                                      slurm_array_parallelism=self.array_parallelism,
                                      slurm_signal_delay_s=self.signal_delay_s)
        for key, value in (("partition", self.partition), ("gpus_per_task", self.gpus_per_task),
                           ("mem", self.mem), ("account", self.account), ("qos", self.qos),
                           ("constraint", self.constraint)):
            if value:
                params[f"slurm_{key}"] = value.strip() if isinstance(value, str) else value
        if self.extra:
            params["slurm_additional_parameters"] = dict(self.extra)
        if self.setup:
            params["slurm_setup"] = list(self.setup)
        return params

    def describe(self) -> str:
        """The options as the sbatch flags they give, for --dry-run."""
        flags = [f"--time={self.time_min}", f"--cpus-per-task={self.cpus_per_task}"]
        for key, value in (("partition", self.partition), ("gpus-per-task", self.gpus_per_task), ("mem", self.mem),
                           ("account", self.account), ("qos", self.qos), ("constraint", self.constraint),
                           *self.extra.items()):
            if value:
                flags.append(f"--{key}={value}")
        flags.append(f"--array=...%{self.array_parallelism}")
        return " ".join(flags) + "".join(f"; setup: {line}" for line in self.setup)


@dataclass
class StudySettings:
    """A study: the grid's axes, the `reproduce` settings every cell shares, and how to run the cells.

    base: a `training.TrainSettings` whose arch, seed, dataset, noise and class subset each cell replaces;
    flags: the shared `hparr reproduce` flags as a command line (for `print` and the record in study.json);
    jobs, threads: local worker processes and torch threads each (default: every core, 1 thread each,
    at most one worker per cell to run); slurm: the resources of each array task; wait: False submits the
    array and returns (`--no-wait`, SLURM only).
    """

    base: Any
    archs: Sequence[str]
    datasets: Sequence[str]
    seeds: Sequence[int]
    noises: Sequence[float] = (0.0,)
    subsample_classes: Sequence[int] = (0,)
    train_sizes: Sequence[int | None] = (None,)
    eval_splits: Sequence[str] = ("test",)
    out: str = "runs/study"
    with_linear: bool = False
    threshold: float = THRESHOLD
    level: float = LEVEL
    launcher: str = "local"
    jobs: int | None = None
    threads: int | None = None
    slurm: SlurmOptions = field(default_factory=SlurmOptions)
    flags: Sequence[str] = ()
    progress: bool = True
    wait: bool = True

    def cells(self) -> list[Cell]:
        """The grid, arch by arch, then dataset, class subset, training-set size, corruption and seed."""
        return [Cell(a, d, s, n, k, t) for a in self.archs for d in self.datasets for k in self.subsample_classes
                for t in self.train_sizes for n in self.noises for s in self.seeds]

    def cell_settings(self, cell: Cell):
        """The `reproduce` settings of one cell."""
        data = dataclasses.replace(self.base.data, dataset=cell.dataset, noise=cell.noise,
                                   subsample_classes=cell.subsample_classes, train_size=cell.train_size)
        return dataclasses.replace(self.base, arch=cell.arch, seed=cell.seed, data=data, progress=False)

    def shared(self) -> dict[str, Any]:
        """The settings every cell shares, as recorded in study.json (a rerun must match them)."""
        out = {k: v for k, v in dataclasses.asdict(self.base).items() if k not in _PER_CELL}
        out["data"] = {k: v for k, v in out["data"].items() if k not in _PER_CELL_DATA}
        for record in (out, out["data"]):
            for key in _RECORDED_WHEN_SET:
                if key in record and record[key] is None:
                    del record[key]
        out.update(with_linear=self.with_linear, threshold=self.threshold, level=self.level)
        if tuple(self.eval_splits) != ("test",):
            out["eval_splits"] = list(self.eval_splits)
        return files.jsonable(out)


def pool_size(jobs: int | None, threads: int | None, todo: int, cores: int | None = None) -> tuple[int, int]:
    """(worker processes, torch threads each) of the local launcher, with jobs x threads <= cores."""
    cores = cores or available_cores()
    for flag, value in (("--jobs", jobs), ("--threads", threads)):
        if value is not None and value < 1:
            raise UsageError(f"{flag} must be >= 1, got {value}")
    if jobs is None:
        jobs = max(1, min(cores // (threads or 1), max(todo, 1)))
    threads = threads or max(1, cores // jobs)
    if jobs * threads > cores:
        raise UsageError(f"--jobs {jobs} x --threads {threads} = {jobs * threads} exceeds the {cores} cores "
                         "of this machine")
    return jobs, threads


def check(settings: StudySettings) -> list[Cell]:
    """Validate the launcher, the grid, every cell's settings and the study folder before anything is written;
    returns the grid."""
    launcher = settings.launcher
    if launcher not in LAUNCHERS + HIDDEN_LAUNCHERS:
        raise UsageError(f"unknown launcher {launcher!r}; choose one of: {', '.join(LAUNCHERS)}")
    for name, axis in (("--arch", settings.archs), ("--dataset", settings.datasets), ("--seeds", settings.seeds),
                       ("--noise", settings.noises), ("--subsample-classes", settings.subsample_classes),
                       ("--train-size", settings.train_sizes)):
        if not len(axis):
            raise UsageError(f"empty grid: {name} lists no value")
    cells = settings.cells()
    folders: dict[Path, Cell] = {}
    for cell in cells:
        settings.cell_settings(cell).validate()
        other = folders.setdefault(cell.relpath, cell)
        if other != cell:
            raise UsageError(f"--noise values {other.noise:g} and {cell.noise:g} share the folder {cell.condition}")
    check_threshold(settings.threshold)
    check_level(settings.level)
    results.parse_eval_splits(settings.eval_splits)
    check_train_sizes(settings, cells)
    check_out(settings)
    if launcher in ("slurm", "submitit-local"):
        try:
            import submitit  # noqa: F401
        except ImportError:
            raise HparrError(f"--launcher {launcher} needs submitit, which is not installed: "
                             "pip install 'hparr[slurm]' (or submitit)") from None
        settings.slurm.validate()
        for tool in ("sbatch", "srun") if launcher == "slurm" else ():
            if shutil.which(tool) is None:
                raise HparrError(f"--launcher slurm: {tool} is not on PATH (no SLURM here); use --launcher local, "
                                 "or --launcher print for another scheduler")
    if not settings.wait and launcher != "slurm":
        raise UsageError("--no-wait applies to --launcher slurm alone")
    return cells


def check_sbatch(settings: StudySettings) -> None:
    """Ask sbatch whether it takes the cells' job with the study's options (`sbatch --test-only`, nothing is
    submitted); a refusal is one line quoting sbatch."""
    import tempfile

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
    return "; ".join(_unique(errors)) or "no message"


def check_train_sizes(settings: StudySettings, cells: Sequence[Cell]) -> None:
    """A --train-size larger than the training images a cell has (after its class subset and validation split)
    is refused before any cell runs: the data of each setting is read here once, with its largest size."""
    from .data import load_data

    largest: dict = {}
    for cell in cells:
        options = settings.cell_settings(cell).data
        if options.train_size is not None:
            key = dataclasses.replace(options, noise=0.0, train_size=None)
            largest[key] = max(largest.get(key, 0), options.train_size)
    quiet = logging.getLogger("hparr.data")
    level = quiet.level
    quiet.setLevel(logging.WARNING)
    try:
        for options, size in largest.items():
            load_data(dataclasses.replace(options, train_size=size))
    finally:
        quiet.setLevel(level)


# --- the study folder ----------------------------------------------------------------------------

def check_out(settings: StudySettings) -> Path:
    """--out: a new or empty folder, or a study of the same shared settings (its finished cells are kept)."""
    out = Path(settings.out)
    if out.exists() and not out.is_dir():
        raise UsageError(f"--out {out} is a file, not a study folder")
    if out.is_dir():
        existing = results.read_study(out)
        if existing is None and any(out.iterdir()) and not _only_a_report(out):
            raise UsageError(f"--out {out} holds files that are not a study (no {layout.STUDY_NAME}); "
                             "choose an empty or new folder")
        if existing is not None and existing.get("shared") != settings.shared():
            before, now = existing.get("shared") or {}, settings.shared()
            diff = sorted(k for k in set(before) | set(now) if before.get(k) != now.get(k))
            raise UsageError(f"--out {out} holds a study with other shared settings ({', '.join(diff)} differ); "
                             "use another --out")
    return out


REPORT_SUFFIXES = (".png", ".pdf", ".csv", ".parquet", ".json", ".md", ".html")


def _only_a_report(out: Path) -> bool:
    """Whether `out` holds nothing but a study report's files in report/ (such as the figures of a study kept
    without its cells): a study may be run there, and its report replaces them."""
    entries = list(out.iterdir())
    if [e.name for e in entries] != ["report"] or not entries[0].is_dir():
        return False
    return all(p.is_file() and p.suffix in REPORT_SUFFIXES for p in entries[0].rglob("*"))


def prepare(settings: StudySettings, cells: Sequence[Cell]) -> Path:
    """Create the study folder, or check that an existing one is a study of the same shared settings, and
    write study.json (the grid, the shared flags, the launcher, the versions)."""
    from .provenance import versions

    out = check_out(settings)
    files.ensure_dir(out)
    previous = results.read_study(out) or {}
    known = _unique([*previous.get("cells", []), *(str(c.relpath) for c in cells)])
    files.write_json(out / layout.STUDY_NAME, {
        "format": results.STUDY_FORMAT,
        "grid": {"arch": list(settings.archs), "dataset": list(settings.datasets), "seeds": list(settings.seeds),
                 "noise": list(settings.noises), "subsample_classes": list(settings.subsample_classes),
                 **({"train_size": list(settings.train_sizes)} if settings.train_sizes != (None,) else {})},
        "flags": list(settings.flags), "shared": settings.shared(), "launcher": settings.launcher,
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
    return [(c, cell_dir(settings, c), results.run_finished(cell_dir(settings, c))) for c in cells]


# --- one cell ------------------------------------------------------------------------------------

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
    import torch

    from . import pipeline

    if job.threads:
        torch.set_num_threads(job.threads)
    start = time.perf_counter()
    error = None
    try:
        with _only_to(job.log):
            log.info("cell %s: %s", job.cell.describe(), job.out)
            try:
                pipeline.reproduce(job.settings, job.out, with_linear=job.with_linear, threshold=job.threshold,
                                   level=job.level, eval_splits=job.eval_splits)
                log.info("cell finished in %.1f s", time.perf_counter() - start)
            except Exception as exc:  # noqa: BLE001 - recorded as the cell's failure, the study goes on
                error = first_line(exc)
                log.error("cell failed: %s\n%s", error, traceback.format_exc())
    except HparrError as exc:  # the cell's folder or log cannot be written
        error = first_line(exc)
    return CellOutcome(job.cell, "failed" if error else "finished", job.log, error, time.perf_counter() - start)


def _jobs(settings: StudySettings, cells: Sequence[Cell], threads: int | None) -> list[CellJob]:
    return [CellJob(cell=c, settings=settings.cell_settings(c), out=str(cell_dir(settings, c)),
                    log=str(cell_dir(settings, c) / CELL_LOG), with_linear=settings.with_linear,
                    threshold=settings.threshold, level=settings.level, threads=threads,
                    eval_splits=tuple(settings.eval_splits)) for c in cells]


# --- the local launcher: a pool of worker processes -----------------------------------------------

_held: list = []  # the locks a worker process holds while it lives


def _init_worker(threads: int, workers_lock: str, parent: int) -> None:
    """Each worker: torch threads, decoded datasets kept for its later cells, a shared lock held while it
    lives, and an exit as soon as the study process is gone (so a killed study leaves no cell running)."""
    import torch

    from . import data

    torch.set_num_threads(threads)
    data.keep_decoded(True)
    _held.append(files.flock(workers_lock, shared=True))  # held for the life of the process

    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(0.5)
        os._exit(1)

    threading.Thread(target=watch, daemon=True, name="hparr-parent-watch").start()


def _local(settings: StudySettings, jobs: list[CellJob], processes: int, threads: int) -> Iterator[CellOutcome]:
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor, as_completed
    from concurrent.futures.process import BrokenProcessPool

    out = Path(settings.out)
    workers_lock = out / _WORKERS_LOCK
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


# --- the SLURM launcher: a job array through submitit ---------------------------------------------

def make_executor(settings: StudySettings, cluster: str, folder: str | os.PathLike | None = None):
    """The submitit executor of a study: SLURM ("slurm") or submitit's local executor ("local"), one task per
    cell, with the resources of `settings.slurm`; its files go to STUDY/submitit/<job id>/ (or `folder`)."""
    import submitit

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
        from submitit.helpers import DelayedSubmission

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
    from submitit.slurm.slurm import SlurmInfoWatcher

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
def _submitit_quiet() -> Iterator[None]:
    """submitit's warnings and messages go to the debug log, not the console."""
    import warnings

    logger = logging.getLogger("submitit")
    saved = logger.level
    logger.setLevel(logging.ERROR)
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", module=r"submitit(\.|$)")
        try:
            yield
        finally:
            logger.setLevel(saved)


def _submit(settings: StudySettings, jobs: list[CellJob], cluster: str) -> list:
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


def _submitit(settings: StudySettings, jobs: list[CellJob], cluster: str) -> Iterator[CellOutcome]:
    from submitit.helpers import as_completed

    with _submitit_quiet():
        submitted = _submit(settings, jobs, cluster)
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


def _check_not_queued(out: Path, todo: Sequence[Cell]) -> None:
    """Refuse to submit cells that an earlier array of the study still has queued or running."""
    names = {str(c.relpath) for c in todo}
    busy = [s for s in study_status(out) if s.cell in names and s.state in ("pending", "running")]
    if busy:
        jobs = sorted({s.task.split("_")[0] for s in busy if s.task})
        raise HparrError(f"{len(busy)} cell(s) of {out} are still {busy[0].state} in SLURM job {', '.join(jobs)}: "
                         f"wait for them (hparr study {out} --status), or scancel {' '.join(jobs)}")


# --- a study's state ----------------------------------------------------------------------------

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


# --- the study -----------------------------------------------------------------------------------

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
    cells = check(settings)
    if settings.launcher == "slurm":
        check_sbatch(settings)
    out = prepare(settings, cells)
    lock = files.flock(out / _STUDY_LOCK, wait=False)
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
        if on_outcome is not None:
            for o in outcomes:
                on_outcome(o, done, total)
        if not todo:
            return StudyResult(out, outcomes)
        if settings.launcher == "local":
            processes, threads = pool_size(settings.jobs, settings.threads, len(todo))
            log.info("%d cell(s) to run, %d finished; %d worker(s) x %d thread(s)", len(todo), done, processes,
                     threads)
            stream = _local(settings, _jobs(settings, todo, threads), processes, threads)
        else:
            cluster = "slurm" if settings.launcher == "slurm" else "local"
            threads = settings.slurm.cpus_per_task if cluster == "slurm" else \
                max(1, available_cores() // len(todo))
            if cluster == "slurm":
                _check_not_queued(out, todo)
            if not settings.wait:
                with _submitit_quiet():
                    submitted = _submit(settings, _jobs(settings, todo, threads), cluster)
                return StudyResult(out, outcomes, (str(submitted[0].job_id).split("_")[0], len(submitted)))
            stream = _submitit(settings, _jobs(settings, todo, threads), cluster)
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
