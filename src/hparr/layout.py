"""Every path and name of hparr's on-disk layout, and the one corruption value that names part of it.

Run directories keep the original code's layout (docs/method.md, "File formats"); run directories, results,
reports, study cells, logs, locks and caches are named here and nowhere else (tests/test_layout.py fails when
another module spells one of these names). Its functions only compute paths: none reads a file, except that
`run_directory` and `snapshot_file` look whether an older name exists. Torch-free: the report and the study
read the layout too.
"""
from __future__ import annotations

import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .errors import UsageError

# --- the corruption of the training set ------------------------------------------------------------

PIXEL_SHUFFLE = -1.0  # the `--noise` value that asks for pixel shuffling instead of label noise


@dataclass(frozen=True, order=False)
class Corruption:
    """What `--noise` asks of the training set: nothing (0), label noise with ratio p in (0, 1], or pixel
    shuffle (-1), docs/method.md "Corruptions"."""

    noise: float = 0.0

    @classmethod
    def parse(cls, value: Any) -> Corruption:
        """The corruption of a `--noise` value; a UsageError for anything else."""
        try:
            noise = float(value)
        except (TypeError, ValueError):
            raise UsageError(f"noise must be a number, got {value!r}") from None
        if not math.isfinite(noise):
            raise UsageError(f"noise must be finite, got {noise}")
        if not (noise == PIXEL_SHUFFLE or 0.0 <= noise <= 1.0):
            raise UsageError(f"noise must be in [0, 1] (label noise ratio) or -1 (pixel shuffle), got {value}")
        return cls(noise)

    @property
    def clean(self) -> bool:
        return self.noise == 0

    @property
    def pixel_shuffle(self) -> bool:
        return self.noise < 0

    @property
    def label_noise(self) -> float:
        """The ratio of corrupted labels (0 unless label noise)."""
        return self.noise if self.noise > 0 else 0.0

    @property
    def percent(self) -> str:
        return f"{round(self.noise * 100, 4):g}"

    @property
    def condition(self) -> str:
        """The folder of a study cell's corruption: `clean`, `noise_<percent>` or `pixel_shuffle`."""
        return "clean" if self.clean else "pixel_shuffle" if self.pixel_shuffle else f"noise_{self.percent}"

    @property
    def label(self) -> str:
        """How figures and text name it: clean, noise 50%, pixel shuffle."""
        return "clean" if self.clean else "pixel shuffle" if self.pixel_shuffle else f"noise {self.percent}%"

    @property
    def order(self) -> tuple:
        """Sort key: clean, label noise by ratio, then pixel shuffle."""
        return (self.pixel_shuffle, self.noise)


# --- run and results directories -------------------------------------------------------------------

def folder_name(arch: str) -> str:
    """An architecture's name as a folder name: without `:` (`torchvision:resnet18` -> `torchvision-resnet18`)."""
    return arch.replace(":", "-")


def dataset_folder(dataset: str, subsample_classes: int = 0) -> str:
    """`<dataset>[_<k>]`: k, a --subsample-classes subset; a factory dataset without `:`
    (`mylib.data:make` -> `mylib.data-make`)."""
    name = folder_name(dataset)
    return f"{name}_{subsample_classes}" if subsample_classes else name


def _legacy_noise_folder(noise: float) -> str:
    """The name label noise once had in run directories (the percent rounded to an integer)."""
    return f"noise_{round(noise * 100):g}"


def _data_folder(dataset: str, subsample_classes: int = 0, train_size: int | None = None) -> Path:
    """`<dataset>[_<k>][/train_<N>]` (train_<N>: a --train-size subset of N training images)."""
    base = Path(dataset_folder(dataset, subsample_classes))
    return base / f"train_{int(train_size)}" if train_size is not None else base


def run_directory(models_path: str | os.PathLike, dataset: str, arch: str, seed: int | None,
                  subsample_classes: int = 0, noise: float = 0.0, train_size: int | None = None) -> Path:
    """`<models>/<dataset>[_<k>][/train_<N>]/[noise_<pct>|pixel_shuffle/]<arch>/<seed>/`, as the original code
    laid it out (train_<N>: a --train-size subset of N training images). A run written under the older name
    of a fractional percent (`noise_12` for 0.125) is found there."""
    base = Path(models_path) / _data_folder(dataset, subsample_classes, train_size)
    corruption = Corruption(noise)
    if not corruption.clean:
        folder = base / corruption.condition
        legacy = base / _legacy_noise_folder(noise)
        base = legacy if corruption.label_noise and not folder.exists() and legacy.exists() else folder
    path = base / folder_name(arch)
    return path / str(seed) if seed is not None else path


def results_directory(results: str | os.PathLike, dataset: str, arch: str, seed: int | None = None,
                      subsample_classes: int = 0, noise: float = 0.0, train_size: int | None = None) -> Path:
    """`<results>/<dataset>[_<k>][/train_<N>]/[noise_<pct>|pixel_shuffle/]<arch>[/<seed>]`, where the result
    files of a run go: the run's whole condition, as in its run directory (`run_directory`), so that results of
    two conditions never share a folder. A clean run on the whole training set keeps the original layout
    `<results>/<dataset>[_<k>]/<arch>[/<seed>]`."""
    base = Path(results) / _data_folder(dataset, subsample_classes, train_size)
    corruption = Corruption(noise)
    path = (base if corruption.clean else base / corruption.condition) / folder_name(arch)
    return path / str(seed) if seed is not None else path


def earlier_results_directory(results: str | os.PathLike, dataset: str, arch: str, seed: int | None = None,
                              subsample_classes: int = 0) -> Path:
    """`<results>/<dataset>[_<k>]/<arch>[/<seed>]`: where versions of hparr before `results_directory` named the
    condition put the results of every condition (read, never written)."""
    return results_directory(results, dataset, arch, seed, subsample_classes)


# --- the condition of a run: what separates its folder from another run's ----------------------------

CONDITION_FLAGS = {"dataset": "--dataset", "subsample_classes": "--subsample-classes", "train_size": "--train-size",
                   "noise": "--noise", "seed": "--seed"}  # the settings of a run's folder besides its arch


@dataclass(frozen=True)
class RunCondition:
    """What separates the folder of a run from another run's besides its architecture (`run_directory`): the
    dataset, the class subset, the --train-size subset, the corruption (`noise`, as `Corruption`) and the seed.
    `recorded`: the settings read from the snapshots themselves (the others come from the flags, or are the
    defaults: all classes, the whole training set, clean)."""

    dataset: str | None = None
    subsample_classes: int = 0
    train_size: int | None = None
    noise: float = 0.0
    seed: int | None = None
    recorded: tuple[str, ...] = ()

    def results_directory(self, results: str | os.PathLike, arch: str, dataset: str | None = None) -> Path:
        """`results_directory` of this condition (`dataset`: the folder's name where the condition has none)."""
        return results_directory(results, self.dataset or dataset or "", arch, self.seed, self.subsample_classes,
                                 self.noise, self.train_size)

    def as_dict(self) -> dict[str, Any]:
        """What a result document records of it (`condition`): the settings, the corruption's folder name
        (`clean`, `noise_<pct>`, `pixel_shuffle`), and which settings the snapshots recorded."""
        return {"dataset": self.dataset, "subsample_classes": self.subsample_classes, "train_size": self.train_size,
                "noise": self.noise, "corruption": Corruption(self.noise).condition, "seed": self.seed,
                "from_snapshot": list(self.recorded)}


def shown_setting(key: str, value: Any) -> str:
    """A condition setting's value as a refusal shows it: `--noise 1`, `--train-size unset`."""
    if value is None:
        return "unset" if key != "train_size" else "unset (the whole training set)"
    if key == "noise":
        return f"{float(value):g}"
    return str(value)


# --- snapshot names -------------------------------------------------------------------------------

SNAPSHOT_SUFFIXES = (".pt", ".tar", ".pth")


def init_name(arch: str, pretrained: bool = False) -> str:
    """`<arch>_init_0.pt` (`<arch>_pretrained_0.pt`), with the arch as in folder names (no `:`)."""
    return f"{folder_name(arch)}_{'pretrained' if pretrained else 'init'}_0.pt"


def epoch_name(arch: str, epoch_index: int) -> str:
    """Periodic snapshot after the epoch with 0-based index `epoch_index`: `<arch>_<index>.tar`."""
    return f"{folder_name(arch)}_{epoch_index}.tar"


def final_name(arch: str, epochs: int, pretrained: bool = False) -> str:
    """The final snapshot: `<arch>_[pretrained_]<epochs>.pt`."""
    return f"{folder_name(arch)}_{'pretrained_' if pretrained else ''}{epochs}.pt"


def snapshot_file(run_dir: str | os.PathLike, arch: str, name: str) -> Path:
    """`run_dir`/`name` (a name of `init_name`, `epoch_name` or `final_name`), or the same snapshot under the
    name an earlier version gave it, with the `:` of a custom arch kept (`mymod:net_0.tar`), where only that
    one exists."""
    path = Path(run_dir) / name
    prefix = folder_name(arch)
    older = Path(run_dir) / (arch + name[len(prefix):]) if name.startswith(prefix) else path
    return older if older != path and not path.exists() and older.exists() else path


def epoch_from_filename(path: str | os.PathLike) -> int | None:
    """The original file-name rule: 'pretrained' -> -1, 'init' -> 0, `<arch>_<e>.tar` -> e+1, and a final
    `<arch>_<N>.pt` -> N, the epochs it ran (the original labelled it N+1), as are `<arch>_<N>.safetensors`
    files, sharded `<arch>_<N>/` folders and `<name>_<N>.onnx` models, which hold weights only; None for a name
    without a number."""
    stem, suffix = os.path.splitext(os.path.basename(str(path)))
    parts = stem.split("_")
    if "pretrained" in parts:
        return -1
    if "init" in parts:
        return 0
    if not parts[-1].isdigit():
        return None
    number = int(parts[-1])
    return number if suffix in (".pt", ".safetensors", ".onnx", "") else number + 1


# --- the folder of `hparr reproduce --out` (a study's cells are such folders) ------------------------------

MODELS_DIR = "models"  # the run directories (`run_directory`), as --models-path
TENSORBOARD_DIR = "tensorboard"  # the TensorBoard logs, as --tb-logdir
RESULTS_DIR = "results"  # the projection results (`results_directory`), as --results
REINIT_DIR = "reinit"  # the re-initialization results, below RESULTS_DIR
REPORT_DIR = "report"  # a run's or a study's report, below its folder
MANIFEST_NAME = "manifest.json"  # what `hparr reproduce` produced, in its --out folder
ATTEMPT_NAME = ".attempt.json"  # in a --out folder: who runs `hparr reproduce` there, and how it ended

# --- in a run directory ---------------------------------------------------------------------------

TRACKING_NAME = "tracking.csv"  # the statistics tracked during training
TRAIN_LOG = "train.log"  # the log of `hparr train` (its --log default)
TRAIN_LOCK_NAME = ".train.lock"  # while a run writes there: who holds it, as JSON

# --- in a results folder --------------------------------------------------------------------------

PROJECTIONS_LOG = "positive_orthant.log"  # `hparr projections`' log (the original code's name, under ./log)
REINIT_LOG = "reinit_weights.log"  # `hparr reinit`'s log, beside its result (the original code's name)
PROJECTIONS_TABLE = "projections.csv"  # the tidy table of a folder's projection results
PROJECTIONS_PARQUET = "projections.parquet"  # the same table, with --parquet
RESULT_SUFFIXES = (".json", ".csv", ".parquet", ".log", ".png", ".pdf")  # what `reproduce --overwrite` removes


def result_name(stem: str) -> str:
    """The result document `<stem>.json`: of the snapshot `<stem>.<suffix>` (projections), or of a
    `reinit_stem` (re-initialization)."""
    return f"{stem}.json"


def reinit_stem(load_from: str | os.PathLike, granularity: str = "layer", with_bn: bool = False,
                eval_split: str = "test") -> str:
    """File stem of a re-initialization document: `reinit_<snapshot>[_<granularity>][_bn][_train]` (`_train`:
    evaluated on the training images, --eval-split train)."""
    return (f"reinit_{Path(load_from).stem}" + ("" if granularity == "layer" else f"_{granularity}")
            + ("_bn" if with_bn else "") + ("" if eval_split == "test" else f"_{eval_split}"))


# --- reports ----------------------------------------------------------------------------------------

COMPARISON_DIR = "comparison"  # `hparr report RUN_A RUN_B`'s report, below the runs' common folder
REPORT_NAME = "report.json"  # what a report was made from, and its numbers
SUMMARY_NAME = "summary.md"  # the report's text (also the survey's)
PAGE_NAME = "index.html"  # the report's page, from the same text
LAYERS_TABLE = "layers.csv"  # one row per layer (of a run, or of the compared runs)
REINIT_TABLE = "reinit.csv"  # the re-initialization drops of a run, one row per layer
HEATMAP_STEM = "reinit_heatmap"  # the figure of the relative drops (.png and .pdf)
STATISTICS_NAME = "statistics.json"  # a study report's numbers
STUDY_TABLE = "study.csv"  # a study report's tidy table (and study.parquet)
STUDY_PARQUET = "study.parquet"
TRACKED_TABLE = "tracked_by_epoch.csv"  # a study report's tracked training of its cells
REPORT_SUFFIXES = (".png", ".pdf", ".csv", ".parquet", ".json", ".md", ".html")  # the files a report folder holds
# the files below a run's folder that a finished report leaves (`results.run_finished` asks for them)
RUN_REPORT_FILES = tuple(Path(REPORT_DIR) / name for name in (REPORT_NAME, SUMMARY_NAME, PAGE_NAME))

# --- the survey's output folder -------------------------------------------------------------------

SURVEY_TABLE, SURVEY_NETWORKS, SURVEY_KINDS = "survey.csv", "networks.csv", "by_kind.csv"
SURVEY_VERDICTS = "verdicts.json"
SURVEY_FIGURE, SURVEY_CONTROL_FIGURE = "survey.png", "control.png"


# --- study folders and cells ----------------------------------------------------------------------

STUDY_NAME = "study.json"  # a study folder's settings and cells
STUDY_LOCK = ".study.lock"  # held by the `hparr study` that runs cells in the folder; its record names them
WORKERS_LOCK = ".workers.lock"  # held by the local launcher's worker pool
CELL_LOG = "cell.log"  # in a cell's folder: the log of its `hparr reproduce`
SUBMITIT_DIR = "submitit"  # below the study folder: submitit's files of the SLURM jobs


def submitit_stderr(study_dir: str | os.PathLike, task: str) -> Path:
    """The stderr file submitit writes for the array task `task` (`<task>_0_log.err`, its own naming)."""
    return Path(study_dir) / SUBMITIT_DIR / task / f"{task}_0_log.err"


CELLS_DIR = "cells"  # a study's cells: STUDY/cells/<arch>/<dataset>[_k][_n<N>]/<condition>/seed_<s>/


def cell_data_name(dataset: str, subsample_classes: int = 0, train_size: int | None = None) -> str:
    """`<dataset>[_k][_n<N>]` (n<N>: a --train-size subset)."""
    name = dataset_folder(dataset, subsample_classes)
    return name if train_size is None else f"{name}_n{train_size}"


def cell_path(arch: str, dataset: str, seed: int, noise: float = 0.0, subsample_classes: int = 0,
              train_size: int | None = None) -> Path:
    """`cells/<arch>/<dataset>[_k][_n<N>]/<condition>/seed_<s>`, below the study folder."""
    return (Path(CELLS_DIR) / folder_name(arch) / cell_data_name(dataset, subsample_classes, train_size)
            / Corruption(noise).condition / f"seed_{seed}")


# --- caches: decoded images, computed nulls ----------------------------------------------------------

DATA_CACHE_DIR = ".hparr-cache"  # an image folder's decoded images, below its --data-path


def data_cache_file(root: str | os.PathLike, kind: str, key: str) -> Path:
    """`<root>/.hparr-cache/<kind>-<key>.pt`: the decoded images of the data below `root` (`key`: of their
    files and options)."""
    return Path(root) / DATA_CACHE_DIR / f"{kind}-{key}.pt"


def cache_dir() -> Path:
    """Where hparr keeps what it computes once per machine (the null tables of `hparr.null`): $HPARR_CACHE_DIR,
    else $XDG_CACHE_HOME/hparr, else ~/.cache/hparr."""
    if os.environ.get("HPARR_CACHE_DIR"):
        return Path(os.environ["HPARR_CACHE_DIR"])
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "hparr"


def null_table_path(law: str, d: int, version: int) -> Path:
    """`<cache>/null/<law>_d<d>_v<version>.json`, the table of the null of `law` in dimension `d`."""
    name = "".join(ch for ch in law if ch.isalnum() or ch == ".")
    return cache_dir() / "null" / f"{name}_d{d}_v{version}.json"
