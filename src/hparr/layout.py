"""Every path and name of hparr's on-disk layout, and the one corruption value that names part of it.

Run directories keep the original code's layout (docs/method.md, "File formats"); results, study cells and
result files are named here and nowhere else. Torch-free: the report and the study read the layout too.
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
    """`<dataset>[_<k>]`: k, a --subsample-classes subset."""
    return f"{dataset}_{subsample_classes}" if subsample_classes else dataset


def _legacy_noise_folder(noise: float) -> str:
    """The name label noise once had in run directories (the percent rounded to an integer)."""
    return f"noise_{round(noise * 100):g}"


def run_directory(models_path: str | os.PathLike, dataset: str, arch: str, seed: int | None,
                  subsample_classes: int = 0, noise: float = 0.0, train_size: int | None = None) -> Path:
    """`<models>/<dataset>[_<k>][/train_<N>]/[noise_<pct>|pixel_shuffle/]<arch>/<seed>/`, as the original code
    laid it out (train_<N>: a --train-size subset of N training images). A run written under the older name
    of a fractional percent (`noise_12` for 0.125) is found there."""
    base = Path(models_path) / dataset_folder(dataset, subsample_classes)
    if train_size is not None:
        base /= f"train_{int(train_size)}"
    corruption = Corruption(noise)
    if not corruption.clean:
        folder = base / corruption.condition
        legacy = base / _legacy_noise_folder(noise)
        base = legacy if corruption.label_noise and not folder.exists() and legacy.exists() else folder
    path = base / folder_name(arch)
    return path / str(seed) if seed is not None else path


def results_directory(results: str | os.PathLike, dataset: str, arch: str, seed: int | None = None,
                      subsample_classes: int = 0) -> Path:
    """`<results>/<dataset>[_<k>]/<arch>[/<seed>]`, where the per-snapshot JSON files go."""
    path = Path(results) / dataset_folder(dataset, subsample_classes) / folder_name(arch)
    return path / str(seed) if seed is not None else path


# --- snapshot names -------------------------------------------------------------------------------

SNAPSHOT_SUFFIXES = (".pt", ".tar", ".pth")


def init_name(arch: str, pretrained: bool = False) -> str:
    return f"{arch}_{'pretrained' if pretrained else 'init'}_0.pt"


def epoch_name(arch: str, epoch_index: int) -> str:
    """Periodic snapshot after the epoch with 0-based index `epoch_index`."""
    return f"{arch}_{epoch_index}.tar"


def final_name(arch: str, epochs: int, pretrained: bool = False) -> str:
    return f"{arch}_{'pretrained_' if pretrained else ''}{epochs}.pt"


def epoch_from_filename(path: str | os.PathLike) -> int | None:
    """The original file-name rule: 'pretrained' -> -1, 'init' -> 0, `<arch>_<e>.tar` -> e+1, and a final
    `<arch>_<N>.pt` -> N, the epochs it ran (the original labelled it N+1), as are `<arch>_<N>.safetensors`
    files and sharded `<arch>_<N>/` folders, which hold weights only; None for a name without a number."""
    stem, suffix = os.path.splitext(os.path.basename(str(path)))
    parts = stem.split("_")
    if "pretrained" in parts:
        return -1
    if "init" in parts:
        return 0
    if not parts[-1].isdigit():
        return None
    number = int(parts[-1])
    return number if suffix in (".pt", ".safetensors", "") else number + 1


# --- result files ---------------------------------------------------------------------------------

MANIFEST_NAME = "manifest.json"  # what `hparr reproduce` produced, in its --out folder
STUDY_NAME = "study.json"  # a study folder's settings and cells
REPORT_DIR = "report"  # a run's or a study's report, below its folder
COMPARISON_DIR = "comparison"  # `hparr report RUN_A RUN_B`'s report, below the runs' common folder
TRACKING_NAME = "tracking.csv"  # the statistics tracked during training, in the run directory


def projection_name(stem: str) -> str:
    """The projections document of the snapshot `<stem>.<suffix>`."""
    return f"{stem}.json"


def reinit_stem(load_from: str | os.PathLike, granularity: str = "layer", with_bn: bool = False,
                eval_split: str = "test") -> str:
    """File stem of a re-initialization document: `reinit_<snapshot>[_<granularity>][_bn][_train]` (`_train`:
    evaluated on the training images, --eval-split train)."""
    return (f"reinit_{Path(load_from).stem}" + ("" if granularity == "layer" else f"_{granularity}")
            + ("_bn" if with_bn else "") + ("" if eval_split == "test" else f"_{eval_split}"))


# --- study cells ----------------------------------------------------------------------------------

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
