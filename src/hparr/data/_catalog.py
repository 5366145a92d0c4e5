"""What hparr knows of each dataset (classes, channels, image size, normalization, augmentation) and the
data options, which check themselves against it. Torch-free."""
from __future__ import annotations

import ast
import math
import re
from dataclasses import dataclass
from typing import Any

import numpy as np

from ..errors import UsageError
from ..layout import Corruption

DATASETS: tuple[str, ...] = ("digits", "mnist", "fashionmnist", "kmnist", "cifar10", "cifar100", "svhn", "imagenet")
IMAGEFOLDER = "imagefolder"  # your own images: --data-path DIR with DIR/train/<class>/* and DIR/val/<class>/*
# your own torch Datasets: module.path:factory (a Python module path, then the name of a callable in it)
_FACTORY = re.compile(r"[A-Za-z_]\w*(\.[A-Za-z_]\w*)*:[A-Za-z_]\w*(\.[A-Za-z_]\w*)*")

CROP_PADDING = 4
DEFAULT_SEED = 0  # what an unset seed option resolves to (recorded in Data.meta)
SEED_OPTIONS = ("noise_seed", "class_sample_seed", "split_seed", "train_size_seed")


@dataclass(frozen=True)
class DatasetInfo:
    name: str
    num_classes: int
    in_channels: int
    image_size: int
    mean: tuple[float, ...]
    std: tuple[float, ...]


_INFO = {
    # digits: mean/std over all pixels (population std) of the 1347 training images after the 32x32
    # bilinear resize and uint8 quantization (formats.read_digits), divided by 255; recomputed by tests/test_data.py.
    "digits": DatasetInfo("digits", 10, 1, 32, (0.3052,), (0.3236,)),
    "mnist": DatasetInfo("mnist", 10, 1, 28, (0.1307,), (0.3015,)),
    # the published per-pixel mean and std of the 60,000 training images (Fashion-MNIST, KMNIST) and of the
    # 73,257 SVHN training images, as the torchvision examples and the datasets' papers use them
    "fashionmnist": DatasetInfo("fashionmnist", 10, 1, 28, (0.2860,), (0.3530,)),
    "kmnist": DatasetInfo("kmnist", 10, 1, 28, (0.1918,), (0.3483,)),
    "svhn": DatasetInfo("svhn", 10, 3, 32, (0.4377, 0.4438, 0.4728), (0.1980, 0.2010, 0.1970)),
    # the original code's CIFAR constants (the CIFAR-10 std is not the true per-pixel std; kept so
    # that old snapshots evaluate the same)
    "cifar10": DatasetInfo("cifar10", 10, 3, 32, (0.4914, 0.4822, 0.4465), (0.2023, 0.1994, 0.2010)),
    "cifar100": DatasetInfo("cifar100", 100, 3, 32, (0.5071, 0.4865, 0.4409), (0.2009, 0.1984, 0.2023)),
    "imagenet": DatasetInfo("imagenet", 1000, 3, 224, (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)),
}

# training-time augmentation of the in-memory datasets (see TensorLoader's `augment`)
# (digits, characters and house numbers are not mirrored; clothes and natural images are)
AUGMENT = {"digits": "crop", "mnist": "crop", "fashionmnist": "crop+flip", "kmnist": "crop",
           "cifar10": "crop+flip", "cifar100": "crop+flip", "svhn": "crop"}
_AUGMENT_TEXT = {
    "crop": f"random crop with padding {CROP_PADDING}",
    "crop+flip": f"random crop with padding {CROP_PADDING} + horizontal flip",
    "imagenet": "RandomResizedCrop(224) + RandomHorizontalFlip",
}


def dataset_kind(name: Any) -> str:
    """What a --dataset name is (the one rule of it): "builtin" (one of DATASETS), "imagefolder" (IMAGEFOLDER, read
    from --data-path) or "factory" (`module.path:factory`, a function of the user's that returns the splits);
    a UsageError for anything else."""
    if name in DATASETS:
        return "builtin"
    if name == IMAGEFOLDER:
        return "imagefolder"
    if isinstance(name, str) and _FACTORY.fullmatch(name):
        return "factory"
    raise UsageError(f"unknown dataset {name!r}; choose one of: {', '.join(DATASETS)}, {IMAGEFOLDER} (your own "
                     "images, with --data-path), or module.path:factory for your own torch Datasets")


def is_builtin(name: str) -> bool:
    """Whether `name` is one of the built-in datasets, whose constants `dataset_info` knows without reading data."""
    return name in DATASETS


def dataset_info(name: str) -> DatasetInfo:
    """Shape, class count and normalization constants of a built-in dataset (ImageNet: 1000 classes, 224). Those of
    an image folder or a factory come from their data: `hparr.data.describe`."""
    dataset_kind(name)
    try:
        return _INFO[name]
    except (KeyError, TypeError):
        raise UsageError(f"the constants of --dataset {name} come from its data: use hparr.data.describe") from None


def augmentation_rule(dataset: str) -> str:
    """The training-time augmentation of an in-memory dataset (TensorLoader's `augment`): the dataset's own rule,
    and for an image folder or a factory's data a random crop with padding 4 alone (hparr cannot know whether
    their classes survive a mirror image)."""
    return AUGMENT.get(dataset, "crop")


def augmentation_text(dataset: str) -> str:
    """How a result file names the training-time augmentation of `dataset`."""
    return _AUGMENT_TEXT["imagenet" if dataset == "imagenet" else augmentation_rule(dataset)]


def check_subsample_classes(dataset: str, k: Any, num_classes: int | None = None) -> int:
    """The one rule of --subsample-classes: 0 (all classes) or 2..the dataset's class count (one class leaves
    nothing to classify). The class count is `num_classes` where the data was read, else the catalog's for a
    built-in dataset (ImageNet's 1000 bounds it before its class folders, which may be fewer, are read and
    `load_data` checks it again); an image folder's and a factory's are their data's, and the upper bound waits
    until they are read."""
    if num_classes is None and is_builtin(dataset):
        num_classes = dataset_info(dataset).num_classes
    integer = not isinstance(k, bool) and isinstance(k, (int, np.integer))
    if not integer or k < 0 or k == 1 or (num_classes is not None and k > num_classes):
        n = "the class count" if num_classes is None else num_classes
        raise UsageError(f"--subsample-classes must be 0 (all) or 2..{n}, got {k if integer else repr(k)}")
    return int(k)


def parse_dataset_args(text: str | None) -> dict[str, Any]:
    """`--dataset-args k=v,k2=v2` -> {k: v, k2: v2}, the keyword arguments of a dataset factory. A value is read as
    a Python literal where it is one (`n=40` -> 40, `gray=True`, `name='a'`), else kept as text (`root=/data`)."""
    if text is None or not str(text).strip():
        return {}
    out: dict[str, Any] = {}
    for item in str(text).split(","):
        key, sep, value = item.partition("=")
        key, value = key.strip(), value.strip()
        if not sep or not key.isidentifier():
            raise UsageError(f"--dataset-args {text!r}: expected key=value items separated by commas, got {item!r}")
        if key in out:
            raise UsageError(f"--dataset-args {text!r}: {key} is given twice")
        try:
            out[key] = ast.literal_eval(value)
        except (ValueError, SyntaxError, TypeError, MemoryError, RecursionError):
            out[key] = value
    return out


def canonical_dataset_args(text: str | None) -> str | None:
    """--dataset-args as recorded in a run: its items sorted by key (`b=2,a=1` -> `a=1,b=2`), None when empty."""
    args = parse_dataset_args(text)
    if not args:
        return None
    items = {k.strip(): v.strip() for k, _, v in (item.partition("=") for item in str(text).split(","))}
    return ",".join(f"{k}={items[k]}" for k in sorted(args))


@dataclass(frozen=True)
class DataOptions:
    """The original train.py's data flags. Unset seeds resolve to 0."""

    dataset: str = "digits"
    data_path: str = "./data"
    download: bool = False
    noise: float = 0.0
    noise_seed: int | None = None
    subsample_classes: int = 0
    class_sample_seed: int | None = None
    split: float = 0.0
    split_seed: int | None = None
    stratified: bool = False
    shuffle: bool = False
    augmentation: bool = False
    unnormalize: bool = False
    train_size: int | None = None  # a stratified, seeded subset of this many training images (None: all)
    train_size_seed: int | None = None
    input_size: int | None = None  # an image folder's images resized to this size (None: their own size)
    dataset_args: str | None = None  # the keyword arguments of a factory dataset, `k=v,...`

    def validate(self) -> None:
        """Raise UsageError for values the loaders cannot honour."""
        kind = dataset_kind(self.dataset)
        Corruption.parse(self.noise)
        try:
            split = float(self.split)
        except (TypeError, ValueError):
            raise UsageError(f"split must be a number, got {self.split!r}") from None
        if not math.isfinite(split) or not 0.0 <= split < 1.0:
            raise UsageError(f"split must be in [0, 1) (0 = no validation split), got {self.split}")
        check_subsample_classes(self.dataset, self.subsample_classes)
        n = self.train_size
        if n is not None and (isinstance(n, bool) or not isinstance(n, (int, np.integer)) or n < 1):
            raise UsageError(f"--train-size must be a positive number of training images, got {n!r}")
        size = self.input_size
        if size is not None:
            if isinstance(size, bool) or not isinstance(size, (int, np.integer)) or size < 1:
                raise UsageError(f"--input-size must be a positive number of pixels, got {size!r}")
            if kind != "imagefolder":
                raise UsageError(f"--input-size resizes the images of --dataset {IMAGEFOLDER}; {self.dataset} "
                                 "has images of its own size")
        if self.dataset_args is not None:
            if kind != "factory":
                raise UsageError(f"--dataset-args are the arguments of a dataset factory (--dataset "
                                 f"module.path:factory), not of {self.dataset}")
            parse_dataset_args(self.dataset_args)
        for name in SEED_OPTIONS:
            seed = getattr(self, name)
            if seed is not None and (isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0):
                raise UsageError(f"{name} must be a non-negative integer, got {seed!r}")

    def seeds(self) -> dict[str, int]:
        """The seed options as used: an unset one resolves to DEFAULT_SEED."""
        return {name: DEFAULT_SEED if getattr(self, name) is None else int(getattr(self, name))
                for name in SEED_OPTIONS}
