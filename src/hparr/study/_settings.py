"""The settings of a study (the grid's axes, the shared `reproduce` settings, the launcher and the SLURM
resources) and their validation, which reads the study folder and each setting's data but writes nothing."""
from __future__ import annotations

import dataclasses
import logging
import re
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Sequence

from .. import files, layout, results
from ..defaults import LEVEL, THRESHOLD, check_level, check_threshold
from ..errors import HparrError, UsageError
from ._datafiles import data_differences, data_identity
from ._grid import Cell

LAUNCHERS = ("local", "slurm", "print")
# a SLURM job array run by submitit's local executor: the submission path of `slurm`, on a machine without SLURM
HIDDEN_LAUNCHERS = ("submitit-local",)
# the settings that each cell sets for itself; every other one is shared by the cells of a study
_PER_CELL = ("arch", "seed", "models_path", "tb_logdir", "resume_from", "progress")
_PER_CELL_DATA = ("dataset", "noise", "subsample_classes", "train_size")
# settings added after studies were first recorded: left out of the record while unset, so that an earlier
# study folder keeps its shared settings
_RECORDED_WHEN_SET = ("until_train_acc", "train_size_seed", "input_size", "dataset_args")

log = logging.getLogger("hparr.study")

_MEM = re.compile(r"(\d+)\s*([KMGT]?)B?", re.IGNORECASE)


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
        """The parameters of submitit's SlurmExecutor (its `update_parameters`): its names for sbatch's flags."""
        params: dict[str, Any] = dict(job_name="hparr-study", time=self.time_min, nodes=1, ntasks_per_node=1,
                                      cpus_per_task=self.cpus_per_task, array_parallelism=self.array_parallelism,
                                      signal_delay_s=self.signal_delay_s)
        for key, value in (("partition", self.partition), ("gpus_per_task", self.gpus_per_task),
                           ("mem", self.mem), ("account", self.account), ("qos", self.qos),
                           ("constraint", self.constraint)):
            if value:
                params[key] = value.strip() if isinstance(value, str) else value
        if self.extra:
            params["additional_parameters"] = dict(self.extra)
        if self.setup:
            params["setup"] = list(self.setup)
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
    _data_files: dict | None = field(default=None, init=False, repr=False, compare=False)

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

    def data_files(self) -> dict[str, dict[str, dict[str, Any]]]:
        """{dataset: {file name: {"size", "hash"}}} of the files each dataset of the grid is read from (below
        --data-path; fetched first with --download), each read whole once: missing or unreadable files are
        refused here, before anything is written (`datafiles`)."""
        if self._data_files is None:
            self._data_files = {d: data_identity(dataclasses.replace(self.base.data, dataset=d))
                                for d in self.datasets}
        return self._data_files

    def validate(self) -> list[Cell]:
        """Validate the launcher, the grid, every cell's settings and the study folder before anything is written;
        returns the grid."""
        launcher = self.launcher
        if launcher not in LAUNCHERS + HIDDEN_LAUNCHERS:
            raise UsageError(f"unknown launcher {launcher!r}; choose one of: {', '.join(LAUNCHERS)}")
        for name, axis in (("--arch", self.archs), ("--dataset", self.datasets), ("--seeds", self.seeds),
                           ("--noise", self.noises), ("--subsample-classes", self.subsample_classes),
                           ("--train-size", self.train_sizes)):
            if not len(axis):
                raise UsageError(f"empty grid: {name} lists no value")
        cells = self.cells()
        folders: dict[Path, Cell] = {}
        for cell in cells:
            self.cell_settings(cell).validate()
            other = folders.setdefault(cell.relpath, cell)
            if other != cell:
                raise UsageError(f"--noise values {other.noise:g} and {cell.noise:g} share the folder {cell.condition}")
        check_threshold(self.threshold)
        check_level(self.level)
        results.parse_eval_splits(self.eval_splits)
        check_out(self)
        self.data_files()
        check_train_sizes(self, cells)
        if launcher in ("slurm", "submitit-local"):
            try:
                import submitit  # noqa: F401 - optional extra (hparr[slurm])
            except ImportError:
                raise HparrError(f"--launcher {launcher} needs submitit, which is not installed: "
                                 "pip install 'hparr[slurm]' (or submitit)") from None
            self.slurm.validate()
            for tool in ("sbatch", "srun") if launcher == "slurm" else ():
                if shutil.which(tool) is None:
                    raise HparrError(f"--launcher slurm: {tool} is not on PATH (no SLURM here); use --launcher local, "
                                     "or --launcher print for another scheduler")
        if launcher == "local":
            check_workers(self.jobs, self.threads)
        if not self.wait and launcher != "slurm":
            raise UsageError("--no-wait applies to --launcher slurm alone")
        return cells


def check_workers(jobs: int | None, threads: int | None) -> None:
    """--jobs and --threads of the local launcher, where given: at least 1."""
    for flag, value in (("--jobs", jobs), ("--threads", threads)):
        if value is not None and value < 1:
            raise UsageError(f"{flag} must be >= 1, got {value}")


def check_train_sizes(settings: StudySettings, cells: Sequence[Cell]) -> None:
    """A --train-size larger than the training images a cell has (after its class subset and validation split)
    is refused before any cell runs: the data of each setting is read here once, with its largest size."""
    from ..data import load_data  # torch-free module: the data loaders import torch

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
        if existing is None:
            return out
        shared = existing.get("shared") or {}
        # the data files are compared by their sizes and contents, not by the folder they were read from
        before, now = _beside_the_files(shared), _beside_the_files(settings.shared())
        if before != now:
            diff = sorted(k for k in set(before) | set(now) if before.get(k) != now.get(k))
            raise UsageError(f"--out {out} holds a study with other shared settings ({', '.join(diff)} differ); "
                             "use another --out")
        recorded = existing.get("data_files")
        if not isinstance(recorded, dict):  # an earlier hparr recorded the folder alone
            recorded = _files_there_now(settings, shared)
        differ = data_differences(recorded, settings.data_files())
        if differ:
            raise UsageError(f"--out {out} holds a study of other data files: {'; '.join(differ[:4])}"
                             f"{'; ...' if len(differ) > 4 else ''}; pass the --data-path of its files, or "
                             "use another --out")
    return out


def _files_there_now(settings: StudySettings, shared: dict[str, Any]) -> dict[str, dict]:
    """The data files, as they are now, of a study that recorded their folder alone (an earlier hparr): those of
    each dataset below that folder; a dataset with none there now (so that no cell can have read them there) is
    left out, and the files below --data-path are taken for it, with a warning."""
    data = shared.get("data") if isinstance(shared.get("data"), dict) else {}
    then = data.get("data_path")
    if then is None or then == settings.base.data.data_path:
        return settings.data_files()
    found = {}
    for dataset in settings.datasets:
        try:
            found[dataset] = data_identity(dataclasses.replace(settings.base.data, dataset=dataset, data_path=then,
                                                               download=False))
        except HparrError:
            log.warning("%s records no data files (an earlier hparr), and the --data-path it ran with, %s, holds no "
                        "readable %s files now: those below --data-path %s are taken for the study's",
                        Path(settings.out) / layout.STUDY_NAME, then, dataset, settings.base.data.data_path)
    return found


# the data options that say where the files are and whether to fetch them, not what they hold
_WHERE_THE_FILES_ARE = ("data_path", "download")


def _beside_the_files(shared: dict[str, Any]) -> dict[str, Any]:
    """The shared settings without where the data files are (compared by their content instead)."""
    data = shared.get("data")
    if not isinstance(data, dict):
        return shared
    return {**shared, "data": {k: v for k, v in data.items() if k not in _WHERE_THE_FILES_ARE}}


def _only_a_report(out: Path) -> bool:
    """Whether `out` holds nothing but a study report's files in report/ (such as the figures of a study kept
    without its cells): a study may be run there, and its report replaces them."""
    entries = list(out.iterdir())
    if [e.name for e in entries] != [layout.REPORT_DIR] or not entries[0].is_dir():
        return False
    return all(p.is_file() and p.suffix in layout.REPORT_SUFFIXES for p in entries[0].rglob("*"))
