"""Datasets, the original train.py's corruption options, and in-memory loaders.

Small datasets (digits, MNIST, Fashion-MNIST, KMNIST, CIFAR-10/100, SVHN) are decoded once from their official
on-disk formats into uint8 tensors; `TensorLoader` batches them with shuffling, augmentation and normalization done
as tensor ops, and `ResidentLoader` gives the same batches from a copy held on the GPU. ImageNet is
streamed from an ImageFolder tree through a torch DataLoader.

Order of operations: subsample classes -> carve the validation split -> keep a stratified subset of
--train-size images of the remaining training part -> corrupt the labels or shuffle the pixels of that
training part only (validation and test stay clean).
Every random choice comes from a generator seeded by an option; global RNG state is never touched.
"""
from __future__ import annotations

import dataclasses
import gzip
import logging
import math
import pickle
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.weak import WeakIdKeyDictionary

from .errors import HparrError, UsageError, first_line
from .layout import Corruption
from .provenance import versions

log = logging.getLogger("hparr.data")

DATASETS: tuple[str, ...] = ("digits", "mnist", "fashionmnist", "kmnist", "cifar10", "cifar100", "svhn", "imagenet")

CROP_PADDING = 4
_DEFAULT_SEED = 0  # what an unset seed option resolves to (recorded in Data.meta)


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
    # bilinear resize and uint8 quantization below, divided by 255; recomputed by tests/test_data.py.
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
_AUGMENT = {"digits": "crop", "mnist": "crop", "fashionmnist": "crop+flip", "kmnist": "crop",
            "cifar10": "crop+flip", "cifar100": "crop+flip", "svhn": "crop"}
_AUGMENT_TEXT = {
    "crop": f"random crop with padding {CROP_PADDING}",
    "crop+flip": f"random crop with padding {CROP_PADDING} + horizontal flip",
    "imagenet": "RandomResizedCrop(224) + RandomHorizontalFlip",
}


def dataset_info(name: str) -> DatasetInfo:
    """Shape, class count and normalization constants of a dataset (ImageNet: 1000 classes, 224)."""
    try:
        return _INFO[name]
    except (KeyError, TypeError):
        raise UsageError(f"unknown dataset {name!r}; choose one of: {', '.join(DATASETS)}") from None


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

    def validate(self) -> None:
        """Raise UsageError for values the loaders cannot honour."""
        info = dataset_info(self.dataset)
        Corruption.parse(self.noise)
        split = _number("split", self.split)
        if not 0.0 <= split < 1.0:
            raise UsageError(f"split must be in [0, 1) (0 = no validation split), got {self.split}")
        k = self.subsample_classes
        if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or k < 0:
            raise UsageError(f"subsample_classes must be an integer >= 0 (0 = all classes), got {k!r}")
        if self.dataset != "imagenet" and k > info.num_classes:  # imagenet: checked against its folders
            raise UsageError(f"cannot subsample {k} classes: {self.dataset} has {info.num_classes}")
        n = self.train_size
        if n is not None and (isinstance(n, bool) or not isinstance(n, (int, np.integer)) or n < 1):
            raise UsageError(f"--train-size must be a positive number of training images, got {n!r}")
        for name in ("noise_seed", "class_sample_seed", "split_seed", "train_size_seed"):
            seed = getattr(self, name)
            if seed is not None and (isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0):
                raise UsageError(f"{name} must be a non-negative integer, got {seed!r}")


def _number(name: str, value: Any) -> float:
    try:
        value = float(value)
    except (TypeError, ValueError):
        raise UsageError(f"{name} must be a number, got {value!r}") from None
    if not math.isfinite(value):
        raise UsageError(f"{name} must be finite, got {value}")
    return value


def _seed(value: int | None) -> int:
    return _DEFAULT_SEED if value is None else int(value)


@dataclass
class ImageSet:
    """An in-memory split: uint8 images (N, C, H, W), contiguous, and int64 labels (N,)."""

    images: torch.Tensor
    labels: torch.Tensor

    def __post_init__(self) -> None:
        if self.images.dtype != torch.uint8 or self.images.dim() != 4:
            raise HparrError(f"ImageSet images must be uint8 (N, C, H, W), got {self.images.dtype} "
                             f"{tuple(self.images.shape)}")
        self.images = self.images.contiguous()
        self.labels = torch.as_tensor(self.labels, dtype=torch.int64)
        if self.labels.shape != (self.images.shape[0],):
            raise HparrError(f"ImageSet has {self.images.shape[0]} images but labels of shape "
                             f"{tuple(self.labels.shape)}")

    def __len__(self) -> int:
        return int(self.images.shape[0])


@dataclass
class Data:
    """A decoded dataset: its splits (ImageSet, or a torch Dataset for imagenet), the dataset's constants
    (`info`), and what this selection of it has: the class count after --subsample-classes, the chosen classes,
    the normalization in use (the dataset's, or constants recorded in a snapshot) and the record of it all."""

    options: DataOptions
    info: DatasetInfo
    train: Any
    val: Any
    test: Any
    num_classes: int
    classes: list[int] | None
    mean: tuple[float, ...]
    std: tuple[float, ...]
    meta: dict

    @property
    def in_channels(self) -> int:
        return self.info.in_channels

    @property
    def image_size(self) -> int:
        return self.info.image_size


# ----------------------------------------------------------------------------------------------
# Raw readers of the official formats


class _RestrictedUnpickler(pickle.Unpickler):
    """Unpickles plain containers and numpy arrays only; any other global is refused."""

    _NUMPY = {"_reconstruct", "scalar"}
    _BUILTINS = {"list", "dict", "tuple", "set", "frozenset", "bytes", "bytearray", "str", "int", "float",
                 "complex", "bool"}

    def find_class(self, module: str, name: str) -> Any:
        if module in ("numpy.core.multiarray", "numpy._core.multiarray") and name in self._NUMPY:
            try:
                from numpy._core import multiarray
            except ImportError:  # numpy < 2
                from numpy.core import multiarray
            return getattr(multiarray, name)
        if module == "numpy" and name in ("ndarray", "dtype"):
            return getattr(np, name)
        if module == "_codecs" and name == "encode":  # how protocol-2 pickles store bytes
            import codecs
            return codecs.encode
        if module in ("builtins", "__builtin__") and name in self._BUILTINS:
            import builtins
            return getattr(builtins, name)
        raise pickle.UnpicklingError(f"forbidden global {module}.{name}")


def _load_pickle(path: Path) -> Any:
    try:
        with open(path, "rb") as fh:
            return _RestrictedUnpickler(fh, encoding="bytes").load()
    except pickle.UnpicklingError as exc:
        if "forbidden global" in str(exc):
            raise HparrError(f"refused to load {path}: it is not a plain dataset pickle ({exc})") from None
        raise HparrError(f"corrupt dataset file {path}: {exc}") from None
    except (EOFError, OSError, ValueError, TypeError, AttributeError, IndexError, KeyError) as exc:
        raise HparrError(f"corrupt dataset file {path}: {type(exc).__name__}: {exc}") from None


def _read_cifar_batch(path: Path, label_key: str, num_classes: int) -> tuple[np.ndarray, np.ndarray]:
    """(images uint8 (N, 3, 32, 32), labels int64 (N,)) from one CIFAR python batch file."""
    obj = _load_pickle(path)
    if not isinstance(obj, dict):
        raise HparrError(f"malformed CIFAR batch {path}: expected a dict, got {type(obj).__name__}")
    get = lambda key: obj.get(key.encode(), obj.get(key))  # noqa: E731 - official files have bytes keys
    data, labels = get("data"), get(label_key)
    if not isinstance(data, np.ndarray) or data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != 3072:
        desc = f"{data.dtype} {data.shape}" if isinstance(data, np.ndarray) else type(data).__name__
        raise HparrError(f"malformed CIFAR batch {path}: 'data' must be uint8 (N, 3072), got {desc}")
    try:
        labels = np.asarray(labels, dtype=np.int64)
    except (TypeError, ValueError):
        labels = None
    if labels is None or labels.shape != (data.shape[0],):
        raise HparrError(f"malformed CIFAR batch {path}: '{label_key}' must hold {data.shape[0]} labels")
    if labels.size and (labels.min() < 0 or labels.max() >= num_classes):
        raise HparrError(f"malformed CIFAR batch {path}: labels outside 0..{num_classes - 1}")
    return data.reshape(-1, 3, 32, 32), labels


_IDX_DTYPES = {0x08: np.uint8}


def read_idx(path: str | Path) -> np.ndarray:
    """An IDX file (MNIST's format, optionally gzipped) as a numpy array; HparrError if malformed."""
    path = Path(path)
    try:
        opener = gzip.open if path.suffix == ".gz" else open
        with opener(path, "rb") as fh:
            raw = fh.read()
    except (OSError, EOFError, zlib.error) as exc:  # a truncated or corrupt .gz among them
        raise HparrError(f"cannot read IDX file {path}: {exc}") from None
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0 or raw[2] not in _IDX_DTYPES or raw[3] == 0:
        raise HparrError(f"malformed IDX file {path}: bad magic number {raw[:4].hex() or '(empty)'}")
    ndim = raw[3]
    header = 4 + 4 * ndim
    if len(raw) < header:
        raise HparrError(f"malformed IDX file {path}: truncated header")
    shape = tuple(int(d) for d in np.frombuffer(raw, dtype=">u4", count=ndim, offset=4))
    dtype = np.dtype(_IDX_DTYPES[raw[2]])
    expected = header + int(np.prod(shape)) * dtype.itemsize
    if len(raw) != expected:
        raise HparrError(f"malformed IDX file {path}: {len(raw)} bytes, expected {expected} for shape {shape}")
    return np.frombuffer(raw, dtype=dtype, offset=header).reshape(shape).copy()


# ----------------------------------------------------------------------------------------------
# Per-dataset loading into (train images, train labels, test images, test labels)


def _load_digits() -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    digits = load_digits()
    x = torch.as_tensor(digits.images, dtype=torch.float32)[:, None] / 16.0
    x = F.interpolate(x, size=(32, 32), mode="bilinear", align_corners=False)
    images = (x * 255).round().clamp(0, 255).to(torch.uint8).numpy()
    labels = digits.target.astype(np.int64)
    idx = np.arange(len(labels))
    train_idx, test_idx = train_test_split(idx, test_size=450, stratify=labels, random_state=0)
    train_idx, test_idx = np.sort(train_idx), np.sort(test_idx)
    return images[train_idx], labels[train_idx], images[test_idx], labels[test_idx]


_MNIST_FILES = ("train-images-idx3-ubyte", "train-labels-idx1-ubyte", "t10k-images-idx3-ubyte",
                "t10k-labels-idx1-ubyte")
# the IDX datasets: torchvision's folder below --data-path (<root>/<folder>/raw/), and the name in messages
_IDX_FOLDERS = {"mnist": ("MNIST", "MNIST"), "fashionmnist": ("FashionMNIST", "Fashion-MNIST"),
                "kmnist": ("KMNIST", "KMNIST")}


def _find_idx(root: Path, folder_name: str) -> list[Path] | None:
    for folder in (root / folder_name / "raw", root):
        found = []
        for name in _MNIST_FILES:
            candidates = [folder / name, folder / f"{name}.gz"]
            hit = next((p for p in candidates if p.is_file()), None)
            if hit is None:
                break
            found.append(hit)
        else:
            return found
    return None


def _load_idx_dataset(name: str, root: Path, download: bool, train: bool = True) -> tuple[np.ndarray, ...]:
    """MNIST, Fashion-MNIST or KMNIST: the 4 IDX files (plain or .gz) in <root>/<folder>/raw/ or <root>/."""
    folder_name, title = _IDX_FOLDERS[name]
    files = _find_idx(root, folder_name)
    if files is None and download:
        _download(name, root)
        files = _find_idx(root, folder_name)
    if files is None:
        raise HparrError(f"{name} not found: expected {root}/{folder_name}/raw/ (or {root}/) with "
                         f"{', '.join(_MNIST_FILES)} (IDX files, optionally .gz); pass --data-path or --download")
    x_test, y_test = read_idx(files[2]), read_idx(files[3])
    x_train, y_train = (read_idx(files[0]), read_idx(files[1])) if train else _no_train(x_test, y_test)
    for images, labels, img_path, lbl_path in ((x_train, y_train, files[0], files[1]),
                                              (x_test, y_test, files[2], files[3])):
        if images.ndim != 3 or images.shape[1:] != (28, 28):
            raise HparrError(f"malformed {title} images {img_path}: expected (N, 28, 28), got {images.shape}")
        if labels.ndim != 1 or labels.shape[0] != images.shape[0]:
            raise HparrError(f"malformed {title} labels {lbl_path}: {labels.shape} labels for "
                             f"{images.shape[0]} images in {img_path.name}")
        if labels.size and labels.max() > 9:
            raise HparrError(f"malformed {title} labels {lbl_path}: labels outside 0..9")
    return x_train[:, None], y_train.astype(np.int64), x_test[:, None], y_test.astype(np.int64)


_SVHN_FILES = ("train_32x32.mat", "test_32x32.mat")


def read_svhn_mat(path: str | Path) -> tuple[np.ndarray, np.ndarray]:
    """(images uint8 (N, 3, 32, 32), labels int64 (N,)) of an SVHN cropped-digits file (`train_32x32.mat`,
    `test_32x32.mat`: X uint8 (32, 32, 3, N), y (N, 1) in 1..10 where 10 is the digit 0), read with scipy.io
    and laid out as torchvision's SVHN does; HparrError naming the file if it is truncated or malformed."""
    import scipy.io

    path = Path(path)
    try:
        mat = scipy.io.loadmat(str(path), variable_names=["X", "y"])
    except Exception as exc:  # noqa: BLE001 - scipy raises ValueError, OSError, TypeError... for a bad file
        raise HparrError(f"cannot read SVHN file {path}: {first_line(exc, None) or type(exc).__name__}") from None
    x, y = mat.get("X"), mat.get("y")
    if not isinstance(x, np.ndarray) or x.dtype != np.uint8 or x.ndim != 4 or x.shape[:3] != (32, 32, 3):
        desc = f"{x.dtype} {x.shape}" if isinstance(x, np.ndarray) else "missing"
        raise HparrError(f"malformed SVHN file {path}: 'X' must be uint8 (32, 32, 3, N), got {desc}")
    n = x.shape[3]
    if not isinstance(y, np.ndarray) or y.size != n:
        raise HparrError(f"malformed SVHN file {path}: 'y' must hold {n} labels")
    labels = y.reshape(-1).astype(np.int64)
    if labels.size and (labels.min() < 1 or labels.max() > 10):
        raise HparrError(f"malformed SVHN file {path}: labels outside 1..10")
    labels[labels == 10] = 0
    return np.ascontiguousarray(np.transpose(x, (3, 2, 0, 1))), labels


def _load_svhn(root: Path, download: bool, train: bool = True) -> tuple[np.ndarray, ...]:
    """SVHN's train_32x32.mat and test_32x32.mat, in <root>/ (torchvision's layout) or <root>/svhn/."""
    def find() -> list[Path] | None:
        for folder in (root, root / "svhn", root / "SVHN"):
            if all((folder / f).is_file() for f in _SVHN_FILES):
                return [folder / f for f in _SVHN_FILES]
        return None

    found = find()
    if found is None and download:
        _download("svhn", root)
        found = find()
    if found is None:
        missing = [f for f in _SVHN_FILES if not (root / f).is_file()]
        raise HparrError(f"svhn not found: expected {root}/ (or {root}/svhn/) with {' and '.join(_SVHN_FILES)} "
                         f"(the 'cropped digits' .mat files); missing {', '.join(missing)}; "
                         "pass --data-path or --download")
    test = read_svhn_mat(found[1])
    return (*(read_svhn_mat(found[0]) if train else _no_train(*test)), *test)


_CIFAR = {
    "cifar10": ("cifar-10-batches-py", [f"data_batch_{i}" for i in range(1, 6)], ["test_batch"], "labels",
                "data_batch_1..5 and test_batch (the 'CIFAR-10 python version')"),
    "cifar100": ("cifar-100-python", ["train"], ["test"], "fine_labels",
                 "train and test (the 'CIFAR-100 python version')"),
}


def _load_cifar(name: str, root: Path, download: bool, train: bool = True) -> tuple[np.ndarray, ...]:
    folder_name, train_files, test_files, label_key, desc = _CIFAR[name]
    folder = root / folder_name
    missing = lambda: [f for f in train_files + test_files if not (folder / f).is_file()]  # noqa: E731
    if missing() and download:
        _download(name, root)
    if missing():
        raise HparrError(f"{name} not found: expected {folder}/{desc}; missing {', '.join(missing())}; "
                         "pass --data-path or --download")
    num_classes = _INFO[name].num_classes

    def read(names: list[str]) -> tuple[np.ndarray, np.ndarray]:
        parts = [_read_cifar_batch(folder / f, label_key, num_classes) for f in names]
        return np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts])

    test = read(test_files)
    return (*(read(train_files) if train else _no_train(*test)), *test)


def _download(name: str, root: Path) -> None:
    import torchvision.datasets as tvd

    log.info("downloading %s to %s", name, root)
    try:
        if name == "svhn":
            for split in ("train", "test"):
                tvd.SVHN(root=str(root), split=split, download=True)
            return
        cls = {"mnist": tvd.MNIST, "fashionmnist": tvd.FashionMNIST, "kmnist": tvd.KMNIST,
               "cifar10": tvd.CIFAR10, "cifar100": tvd.CIFAR100}[name]
        cls(root=str(root), train=True, download=True)
    except Exception as exc:  # noqa: BLE001 - network, checksum and extraction failures all read the same
        raise HparrError(f"downloading {name} to {root} failed: {first_line(exc, None)}") from None


# ----------------------------------------------------------------------------------------------
# The corruption options, as pure functions of labels and seeds


def choose_classes(num_classes: int, k: int, seed: int) -> list[int]:
    """k distinct class ids out of num_classes, sorted (k = 0: None is handled by the caller)."""
    if not 0 < k <= num_classes:
        raise UsageError(f"cannot subsample {k} classes out of {num_classes}")
    rng = np.random.default_rng(seed)
    return sorted(int(c) for c in rng.choice(num_classes, size=k, replace=False))


def subsample_indices(labels: np.ndarray, classes: Sequence[int]) -> tuple[np.ndarray, np.ndarray]:
    """(indices of the samples of `classes`, their labels remapped to 0..k-1 in sorted class order)."""
    lookup = np.full(max(int(labels.max(initial=0)), max(classes)) + 1, -1, dtype=np.int64)
    lookup[np.asarray(classes)] = np.arange(len(classes))
    idx = np.flatnonzero(lookup[labels] >= 0)
    return idx, lookup[labels[idx]]


def split_indices(labels: np.ndarray, fraction: float, *, seed: int, shuffle: bool, stratified: bool,
                  num_classes: int) -> tuple[np.ndarray, np.ndarray]:
    """(train indices, validation indices), both sorted.

    round(fraction * N) samples go to validation: the last ones in order, or the last ones of a
    seeded permutation with `shuffle`. `stratified` takes the same number from every class
    (round(fraction * N) // num_classes each).
    """
    n = len(labels)
    n_val = int(round(fraction * n))
    order = np.random.default_rng(seed).permutation(n) if shuffle else np.arange(n)
    if stratified:
        per_class = n_val // num_classes
        if per_class == 0:
            raise HparrError(f"a stratified split of {fraction} of {n} samples leaves no validation sample "
                             f"for some of the {num_classes} classes; use a larger split")
        val = []
        for c in range(num_classes):
            members = order[labels[order] == c]
            if len(members) <= per_class:
                raise HparrError(f"class {c} has {len(members)} training samples: too few for a stratified "
                                 f"split of {per_class} per class")
            val.append(members[-per_class:])
        val = np.concatenate(val)
    else:
        if n_val == 0 or n_val >= n:
            raise HparrError(f"a split of {fraction} of {n} training samples leaves "
                             f"{'no validation' if n_val == 0 else 'no training'} sample")
        val = order[n - n_val:]
    val = np.sort(val)
    train = np.setdiff1d(np.arange(n), val, assume_unique=True)
    return train, val


def stratified_subset(labels: np.ndarray, size: int, num_classes: int, seed: int) -> np.ndarray:
    """Sorted indices of `size` samples, each class in proportion to its share of `labels`: class c gets
    floor(size * n_c / N) samples, and the samples left over go one each to the classes with the largest
    remainders (ties to the lower class); the members of a class are drawn without replacement from a
    generator seeded with `seed`."""
    labels = np.asarray(labels, dtype=np.int64)
    n = len(labels)
    if not 0 < size <= n:
        raise UsageError(f"cannot take {size} of {n} training samples")
    counts = np.bincount(labels, minlength=num_classes)
    exact = size * counts / n
    quota = np.floor(exact).astype(np.int64)
    left = size - int(quota.sum())
    order = np.lexsort((np.arange(num_classes), -(exact - quota)))  # largest remainder first
    quota[order[:left]] += 1
    rng = np.random.default_rng(seed)
    chosen = [rng.choice(np.flatnonzero(labels == c), size=int(q), replace=False)
              for c, q in enumerate(quota) if q]
    return np.sort(np.concatenate(chosen)) if chosen else np.zeros(0, dtype=np.int64)


def corrupt_labels(labels: np.ndarray, ratio: float, num_classes: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """(new labels, corrupted mask): each label changes with probability `ratio` to a uniformly
    chosen different class."""
    labels = np.asarray(labels, dtype=np.int64)
    rng = np.random.default_rng(seed)
    mask = rng.random(len(labels)) < ratio
    if mask.any() and num_classes < 2:
        raise UsageError("label noise needs at least 2 classes")
    out = labels.copy()
    out[mask] = (labels[mask] + rng.integers(1, num_classes, size=int(mask.sum()))) % num_classes
    return out, mask


_SHUFFLE_CHUNK = 4096


def shuffle_pixels(images: torch.Tensor, seed: int) -> torch.Tensor:
    """Each image (N, C, H, W) with its own fixed random permutation of its H*W pixel positions,
    the same permutation for all channels. Deterministic in `seed` (chunked to bound memory)."""
    n, c, h, w = images.shape
    rng = np.random.default_rng(seed)
    flat = images.reshape(n, c, h * w)
    out = torch.empty_like(flat)
    for start in range(0, n, _SHUFFLE_CHUNK):
        stop = min(n, start + _SHUFFLE_CHUNK)
        perms = rng.permuted(np.tile(np.arange(h * w, dtype=np.int64), (stop - start, 1)), axis=1)
        index = torch.from_numpy(perms)[:, None, :].expand(-1, c, -1)
        torch.gather(flat[start:stop], 2, index, out=out[start:stop])
    return out.reshape(n, c, h, w)


def image_permutation(seed: int, index: int, num_pixels: int) -> torch.Tensor:
    """The fixed pixel permutation of one streamed image (ImageNet's pixel shuffle)."""
    return torch.from_numpy(np.random.default_rng([seed, index]).permutation(num_pixels))


# ----------------------------------------------------------------------------------------------
# ImageNet: a streamed ImageFolder tree


class FolderSet(torch.utils.data.Dataset):
    """Images listed as (path, label) pairs, decoded and transformed on access.

    An index may be an int or (int, seed): random transforms then draw from a forked RNG seeded
    with `seed`, so the result depends neither on worker processes nor on global RNG state.
    `pixel_seed` shuffles the pixels after the transform, per image, by (pixel_seed, source index).
    """

    def __init__(self, samples: list[tuple[str, int]], transform: Callable, *, random_transform: bool,
                 source_index: Sequence[int], class_names: list[str], pixel_seed: int | None = None):
        self.samples = list(samples)
        self.targets = [label for _, label in self.samples]
        self.transform = transform
        self.random_transform = random_transform
        self.source_index = [int(i) for i in source_index]
        self.classes = list(class_names)
        self.pixel_seed = pixel_seed

    def __len__(self) -> int:
        return len(self.samples)

    def with_transform(self, transform: Callable, random_transform: bool) -> "FolderSet":
        return FolderSet(self.samples, transform, random_transform=random_transform,
                         source_index=self.source_index, class_names=self.classes, pixel_seed=self.pixel_seed)

    def __getitem__(self, key: int | tuple[int, int]) -> tuple[torch.Tensor, int]:
        index, seed = key if isinstance(key, tuple) else (key, None)
        path, label = self.samples[index]
        from torchvision.datasets.folder import default_loader

        try:
            image = default_loader(path)
        except Exception as exc:  # noqa: BLE001 - PIL raises many types for unreadable files
            raise HparrError(f"cannot read image {path}: {exc}") from None
        if self.random_transform:
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(index if seed is None else seed)  # plain int keys: fixed per image
                x = self.transform(image)
        else:
            x = self.transform(image)
        if self.pixel_seed is not None:
            c, h, w = x.shape
            perm = image_permutation(self.pixel_seed, self.source_index[index], h * w)
            x = x.reshape(c, h * w)[:, perm].reshape(c, h, w)
        return x, label


def imagenet_transform(train: bool, mean: Sequence[float], std: Sequence[float], normalize: bool) -> Callable:
    """torchvision transforms: RandomResizedCrop(224)+flip for training, Resize(256)+CenterCrop(224) else."""
    import torchvision.transforms as T

    steps = ([T.RandomResizedCrop(224), T.RandomHorizontalFlip()] if train
             else [T.Resize(256), T.CenterCrop(224)])
    steps.append(T.ToTensor())
    if normalize:
        steps.append(T.Normalize(mean, std))
    return T.Compose(steps)


def _scan_folder(folder: Path):
    from torchvision.datasets import ImageFolder

    try:
        return ImageFolder(str(folder))
    except (FileNotFoundError, OSError) as exc:
        raise HparrError(f"imagenet folder {folder} is unusable: {first_line(exc, None)}") from None


def _imagenet_raw(root: Path):
    train_dir, val_dir = root / "train", root / "val"
    if not train_dir.is_dir() or not val_dir.is_dir():
        raise HparrError(f"imagenet not found: expected ImageFolder trees {train_dir}/<wnid>/*.JPEG and "
                         f"{val_dir}/<wnid>/*.JPEG (it cannot be downloaded); pass --data-path")
    train, val = _scan_folder(train_dir), _scan_folder(val_dir)
    unknown = sorted(set(val.classes) - set(train.classes))
    if unknown:
        raise HparrError(f"imagenet: {val_dir} has class folders missing from {train_dir}: "
                         f"{', '.join(unknown[:5])}{' ...' if len(unknown) > 5 else ''}")
    # label validation images by folder name, so a val tree lacking some classes stays aligned
    val_labels = np.array([train.class_to_idx[val.classes[t]] for t in val.targets], dtype=np.int64)
    return train, np.asarray(train.targets, dtype=np.int64), val, val_labels


# ----------------------------------------------------------------------------------------------
# load_data

_decoded: dict[tuple[str, str], tuple[np.ndarray, ...]] | None = None  # see keep_decoded


def keep_decoded(enabled: bool = True) -> None:
    """Keep the decoded arrays of the last in-memory dataset (digits, MNIST, CIFAR) in this process, so
    that later `load_data` calls on the same files skip the decoding (a process running many runs, such as
    a worker of `hparr study`, decodes each dataset once). Each call gets its own copy."""
    global _decoded
    _decoded = {} if enabled else None


def _decode(dataset: str, root: Path, download: bool, train: bool = True) -> tuple[np.ndarray, ...]:
    """(x_train, y_train, x_test, y_test) of an in-memory dataset, decoded from its files (without `train`, the
    training files are not read and the training arrays are empty)."""
    key = (dataset, "" if dataset == "digits" else str(root.resolve()))
    if _decoded is None or (not train and key not in _decoded):
        return _read_arrays(dataset, root, download, train)
    if key not in _decoded:
        arrays = _read_arrays(dataset, root, download)
        _decoded.clear()  # one dataset at a time
        _decoded[key] = arrays
    return tuple(a.copy() for a in _decoded[key])


def _read_arrays(dataset: str, root: Path, download: bool, train: bool = True) -> tuple[np.ndarray, ...]:
    if dataset == "digits":
        x_train, y_train, x_test, y_test = _load_digits()  # one file for both splits
        return (x_train, y_train, x_test, y_test) if train else (*_no_train(x_test, y_test), x_test, y_test)
    if dataset in _IDX_FOLDERS:
        return _load_idx_dataset(dataset, root, download, train)
    if dataset == "svhn":
        return _load_svhn(root, download, train)
    return _load_cifar(dataset, root, download, train)


def _no_train(x_test: np.ndarray, y_test: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Empty training arrays shaped like the test set's (the training files left unread)."""
    return np.empty((0, *x_test.shape[1:]), dtype=x_test.dtype), np.empty((0,), dtype=y_test.dtype)


def load_data(options: DataOptions, splits: Sequence[str] = ("train", "test")) -> Data:
    """Load a dataset and apply the options (subsample -> split -> corrupt the training part).

    `splits` without "train": the test set only; the training files are not decoded (in-memory datasets) and
    `train` and `val` are None."""
    options.validate()
    requested = options
    if "train" not in splits:  # nothing of the training part is applied
        options = dataclasses.replace(options, split=0.0, train_size=None, noise=0.0)
    info = dataset_info(options.dataset)
    root = Path(options.data_path).expanduser()
    if options.dataset == "imagenet":
        folder_train, y_train, folder_test, y_test = _imagenet_raw(root)
        num_classes = len(folder_train.classes)
        class_names = list(folder_train.classes)
    else:
        x_train, y_train, x_test, y_test = _decode(options.dataset, root, options.download, "train" in splits)
        num_classes = info.num_classes
    meta: dict[str, Any] = {"dataset": options.dataset,
                            "data_path": None if options.dataset == "digits" else str(root),
                            "options": dataclasses.asdict(requested),
                            "seeds": {"noise_seed": _seed(options.noise_seed),
                                      "class_sample_seed": _seed(options.class_sample_seed),
                                      "split_seed": _seed(options.split_seed),
                                      "train_size_seed": _seed(options.train_size_seed)},
                            "original_num_classes": num_classes}

    train_idx, test_idx = np.arange(len(y_train)), np.arange(len(y_test))
    classes = None
    k = int(options.subsample_classes)
    if k:
        if k > num_classes:
            raise UsageError(f"cannot subsample {k} classes: {options.dataset} has {num_classes}")
        classes = choose_classes(num_classes, k, _seed(options.class_sample_seed))
        train_idx, y_train = subsample_indices(y_train, classes)
        test_idx, y_test = subsample_indices(y_test, classes)
        num_classes = k
    meta["class_subset"] = None if classes is None else {
        "k": k, "seed": _seed(options.class_sample_seed), "classes": classes,
        **({"class_names": [class_names[c] for c in classes]} if options.dataset == "imagenet" else {})}

    val_idx = y_val = None
    if options.split:
        tr, va = split_indices(y_train, options.split, seed=_seed(options.split_seed), shuffle=options.shuffle,
                               stratified=options.stratified, num_classes=num_classes)
        val_idx, y_val = train_idx[va], y_train[va]
        train_idx, y_train = train_idx[tr], y_train[tr]
    meta["split"] = None if val_idx is None else {
        "fraction": options.split, "size": len(val_idx), "seed": _seed(options.split_seed),
        "shuffle": options.shuffle, "stratified": options.stratified,
        "per_class": np.bincount(y_val, minlength=num_classes).tolist()}

    meta["train_subset"] = None
    if options.train_size is not None:
        size, available = int(options.train_size), len(y_train)
        if size > available:
            of = f" of the {num_classes} chosen classes" if classes is not None else ""
            after = " left after the validation split" if val_idx is not None else ""
            raise UsageError(f"--train-size {size} is larger than the {available} training images{of}{after}")
        keep = stratified_subset(y_train, size, num_classes, _seed(options.train_size_seed))
        train_idx, y_train = train_idx[keep], y_train[keep]
        meta["train_subset"] = {"size": size, "of": available, "seed": _seed(options.train_size_seed),
                                "stratified": True, "per_class": np.bincount(y_train, minlength=num_classes).tolist()}

    corruption = Corruption(options.noise)
    pixel_shuffle = corruption.pixel_shuffle
    noise_seed = _seed(options.noise_seed)
    if corruption.label_noise:
        y_clean = y_train
        y_train, mask = corrupt_labels(y_clean, corruption.label_noise, num_classes, noise_seed)
        count = int(mask.sum())
        realised = count / max(len(y_train), 1)
        log.info("label noise %.3f requested: %d of %d training labels corrupted (%.4f), seed %d",
                 options.noise, count, len(y_train), realised, noise_seed)
        meta["label_noise"] = {"ratio": options.noise, "realised_ratio": realised, "count": count,
                               "seed": noise_seed}
    else:
        meta["label_noise"] = None
    meta["pixel_shuffle"] = {"seed": noise_seed} if pixel_shuffle else None

    normalize = not options.unnormalize
    mean = info.mean if normalize else (0.0,) * info.in_channels
    std = info.std if normalize else (1.0,) * info.in_channels

    if options.dataset == "imagenet":
        def folder_set(folder, idx, labels, train_part):
            samples = [(folder.samples[i][0], int(y)) for i, y in zip(idx, labels)]
            aug = train_part and options.augmentation
            return FolderSet(samples, imagenet_transform(aug, mean, std, normalize), random_transform=aug,
                             source_index=idx, class_names=[class_names[c] for c in (classes or
                                                            range(num_classes))],
                             pixel_seed=noise_seed if pixel_shuffle and train_part else None)

        train = folder_set(folder_train, train_idx, y_train, True)
        val = None if val_idx is None else folder_set(folder_train, val_idx, y_val, False)
        test = folder_set(folder_test, test_idx, y_test, False)
    else:
        def image_set(x, idx, labels):
            x = torch.from_numpy(np.ascontiguousarray(x))
            if not np.array_equal(idx, np.arange(len(x))):  # skip a copy of the whole set when unchanged
                x = x.index_select(0, torch.from_numpy(np.asarray(idx, dtype=np.int64)))
            return ImageSet(x, torch.from_numpy(np.array(labels, dtype=np.int64)))

        train = image_set(x_train, train_idx, y_train)
        val = None if val_idx is None else image_set(x_train, val_idx, y_val)
        test = image_set(x_test, test_idx, y_test)
        if pixel_shuffle:
            train.images = shuffle_pixels(train.images, noise_seed)

    augmentation = None
    if options.augmentation:
        augmentation = _AUGMENT_TEXT["imagenet" if options.dataset == "imagenet" else _AUGMENT[options.dataset]]
    meta.update({
        "num_classes": num_classes, "in_channels": info.in_channels, "image_size": info.image_size,
        "sizes": {"train": len(train), "val": 0 if val is None else len(val), "test": len(test)},
        "normalization": {"mean": list(mean), "std": list(std), "normalized": normalize},
        "augmentation": augmentation,
        "versions": versions(),
    })
    if "train" not in splits:
        train = val = None
        meta["sizes"].update(train=0, val=0)
    log.info("%s: %d train, %d val, %d test samples, %d classes", options.dataset, meta["sizes"]["train"],
             meta["sizes"]["val"], len(test), num_classes)
    return Data(options=requested, info=info, train=train, val=val, test=test, num_classes=num_classes,
                classes=classes, mean=tuple(mean), std=tuple(std), meta=meta)


# ----------------------------------------------------------------------------------------------
# Loaders


def rank_indices(order: torch.Tensor, rank: int, world_size: int, pad: bool) -> torch.Tensor:
    """This rank's share of `order`.

    pad (training): like DistributedSampler, repeat the head of `order` up to a multiple of
    world_size and take every world_size-th index from `rank`, so every rank gets the same count.
    Otherwise (evaluation): disjoint contiguous slices that cover every sample exactly once.
    """
    if world_size == 1:
        return order
    n = len(order)
    if not pad:
        return torch.tensor_split(order, world_size)[rank]
    total = math.ceil(n / world_size) * world_size
    if total > n:
        reps = math.ceil((total - n) / n) if n else 0
        order = torch.cat([order, order.repeat(reps)[: total - n]]) if n else order
    return order[rank:total:world_size]


def _check_rank(batch_size: int, rank: int, world_size: int) -> None:
    if int(batch_size) < 1:
        raise UsageError(f"batch size must be >= 1, got {batch_size}")
    if world_size < 1 or not 0 <= rank < world_size:
        raise UsageError(f"rank {rank} is outside world size {world_size}")


def _default_generator() -> torch.Generator:
    return torch.Generator().manual_seed(_DEFAULT_SEED)


class TensorLoader:
    """Batches from an ImageSet held in memory: shuffling, augmentation and normalization as tensor ops,
    no per-sample PIL work, no worker processes.

    augment: None, "crop" (random crop with zero padding 4, as torchvision RandomCrop(size, padding=4)),
    "flip" (horizontal, p=0.5) or "crop+flip". When `train`, each epoch draws a new permutation and the
    augmentation from `generator` (default: a generator seeded 0); with world_size > 1 every rank must
    pass a generator with the same seed.
    """

    def __init__(self, data: ImageSet, batch_size: int, *, train: bool, augment: str | None,
                 mean: Sequence[float], std: Sequence[float], generator: torch.Generator | None = None,
                 device: str | torch.device = "cpu", rank: int = 0, world_size: int = 1,
                 channels_last: bool = False, drop_last: bool = False):
        _check_rank(batch_size, rank, world_size)
        parts = set() if not augment else set(augment.split("+"))
        if not parts <= {"crop", "flip"}:
            raise UsageError(f"unknown augmentation {augment!r}; use 'crop', 'flip' or 'crop+flip'")
        self.dataset = data
        self.batch_size = int(batch_size)
        self.train = bool(train)
        self.crop, self.flip = "crop" in parts, "flip" in parts
        self.generator = generator if generator is not None else _default_generator()
        self.device = torch.device(device)
        self.rank, self.world_size = int(rank), int(world_size)
        self.channels_last = channels_last
        self.drop_last = drop_last
        self.labels = data.labels.to(self.device)
        self._augmenting = self.train and (self.crop or self.flip)
        # moved to `device` once; a cropping loader keeps the set zero-padded once instead of per batch
        self._pad = CROP_PADDING if self._augmenting and self.crop else 0
        self._source = self._padded_source(data.images)
        self._image_hw = tuple(data.images.shape[2:])
        c = data.images.shape[1]
        mean_t = torch.as_tensor(mean, dtype=torch.float64).expand(c)
        std_t = torch.as_tensor(std, dtype=torch.float64).expand(c)
        # (x / 255 - mean) / std as one multiply-add
        self._scale = (1.0 / (255.0 * std_t)).float().view(1, c, 1, 1).to(self.device)
        self._shift = (-mean_t / std_t).float().view(1, c, 1, 1).to(self.device)

    def _padded_source(self, images: torch.Tensor) -> torch.Tensor | None:
        images = images.to(self.device)
        return F.pad(images, (self._pad,) * 4) if self._pad else images

    def _num_samples(self) -> int:
        n = len(self.dataset)
        if self.world_size == 1:
            return n
        if self.train:
            return math.ceil(n / self.world_size)
        return len(torch.tensor_split(torch.arange(n), self.world_size)[self.rank])

    def __len__(self) -> int:
        n = self._num_samples()
        return n // self.batch_size if self.drop_last else math.ceil(n / self.batch_size)

    def _order(self) -> torch.Tensor:
        n = len(self.dataset)
        order = torch.randperm(n, generator=self.generator) if self.train else torch.arange(n)
        return rank_indices(order, self.rank, self.world_size, pad=self.train)

    def _augmented(self, idx: torch.Tensor) -> torch.Tensor:
        """Random crops (offsets into the padded set) and flips (reversed column order) as one gather."""
        b, c = len(idx), self._source.shape[1]
        (h, w), (hp, wp), p = self._image_hw, self._source.shape[2:], self._pad
        dev = self._source.device
        rows = torch.arange(h, device=dev).expand(b, h)
        cols = torch.arange(w, device=dev).expand(b, w)
        if self.crop:
            offsets = torch.randint(0, 2 * p + 1, (2, b), generator=self.generator).to(dev)
            rows, cols = rows + offsets[0, :, None], cols + offsets[1, :, None]
        if self.flip:
            flipped = (torch.rand(b, generator=self.generator) < 0.5).to(dev)
            cols = torch.where(flipped[:, None], cols.flip(1), cols)
        index = (rows[:, :, None] * wp + cols[:, None, :]).view(b, 1, h * w).expand(b, c, h * w)
        x = self._source.index_select(0, idx).view(b, c, hp * wp)
        return torch.gather(x, 2, index).view(b, c, h, w)

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        order = self._order().to(self.device)
        n = len(order)
        stop = n - n % self.batch_size if self.drop_last else n
        for start in range(0, stop, self.batch_size):
            idx = order[start:start + self.batch_size]
            x = self._augmented(idx) if self._augmenting else self._source.index_select(0, idx)
            x = torch.addcmul(self._shift, x.float(), self._scale)
            if self.channels_last:
                x = x.contiguous(memory_format=torch.channels_last)
            yield x, self.labels.index_select(0, idx)


_RESIDENT_CHUNK = 4096  # images normalized per step when a split is placed on a device
_resident: WeakIdKeyDictionary = WeakIdKeyDictionary()  # uint8 images -> {(device, pad, table): pixels}


def resident_pixels(images: torch.Tensor, pad: int, table: torch.Tensor, device: str | torch.device) -> torch.Tensor:
    """A split's uint8 images (N, C, H, W) on `device`, zero-padded by `pad` and normalized there:
    float32 (N, H + 2 pad, W + 2 pad, C), channels last.

    `table` (C, 256) holds the normalized value of each of the 256 values of each channel. Looking the
    pixels up in it, instead of computing (x / 255 - mean) / std on the device (which may round
    differently, e.g. with fused multiply-adds), gives exactly the table's values on every device.
    Made once per split, device, padding and table, and kept as long as `images` lives.
    """
    device = torch.device(device)
    key = (str(device), int(pad), table.numpy().tobytes())
    held = _resident.setdefault(images, {})
    if key not in held:
        n, c, h, w = images.shape
        out = torch.empty((n, h + 2 * pad, w + 2 * pad, c), dtype=torch.float32, device=device)
        values = table.to(device).reshape(-1)
        channel = torch.arange(c, dtype=torch.int32, device=device) * 256
        for start in range(0, n, _RESIDENT_CHUNK):
            block = images[start:start + _RESIDENT_CHUNK].to(device)
            if pad:
                block = F.pad(block, (pad,) * 4)
            index = block.permute(0, 2, 3, 1).int() + channel
            out[start:start + len(block)] = values.index_select(0, index.reshape(-1)).view(index.shape)
        held[key] = out
    return held[key]


class ResidentLoader(TensorLoader):
    """TensorLoader's batches, bit for bit, from a split held on `device` (meant for a GPU; works anywhere).

    The split is placed on the device once, padded for cropping and normalized (`resident_pixels`), with
    TensorLoader's own CPU arithmetic for the normalized values. Each epoch draws its permutation, crop
    offsets and flips from `generator` up front, in the order and amounts TensorLoader draws them, and
    sends them to the device in one copy; each batch is then one gather of pixels and one of labels on the
    device: nothing crosses the bus and nothing waits for the device. The generator ends each epoch in
    TensorLoader's state (an epoch left unfinished has already drawn all of its numbers).
    """

    def __init__(self, data: ImageSet, batch_size: int, **kwargs: Any):
        super().__init__(data, batch_size, **kwargs)
        c, (h, w), p = data.images.shape[1], self._image_hw, self._pad
        # x * scale + shift for each uint8 value, computed on the CPU as TensorLoader computes it
        values = torch.arange(256, dtype=torch.float32).expand(c, 256)
        table = torch.addcmul(self._shift.cpu().view(c, 1), values, self._scale.cpu().view(c, 1))
        self._pixels = resident_pixels(data.images, p, table, self.device)
        # position of each output pixel in a padded image, for a crop at offset (0, 0), unflipped and flipped
        grid = torch.arange(h).view(h, 1) * (w + 2 * p) + torch.arange(w).view(1, w)
        self._grid, self._grid_flipped = grid.to(self.device), grid.flip(1).to(self.device)

    def _padded_source(self, images: torch.Tensor) -> None:
        return None  # the set lives on the device, padded and normalized: see __init__

    def _epoch_plan(self) -> tuple[torch.Tensor, int]:
        """(rows on the device: sample indices, then with augmentation each sample's first padded-pixel
        row and flip flag; number of samples), drawn from the generator as TensorLoader draws them."""
        order = self._order()
        n = len(order)
        stop = n - n % self.batch_size if self.drop_last else n
        order = order[:stop]
        plan = [order]
        if self._augmenting:
            (h, w), p = self._image_hw, self._pad
            offsets, flips = [], []
            for start in range(0, stop, self.batch_size):
                b = min(self.batch_size, stop - start)
                if self.crop:
                    offsets.append(torch.randint(0, 2 * p + 1, (2, b), generator=self.generator))
                if self.flip:
                    flips.append(torch.rand(b, generator=self.generator) < 0.5)
            first = order * ((h + 2 * p) * (w + 2 * p))
            if offsets:
                dy, dx = torch.cat(offsets, 1)
                first = first + dy * (w + 2 * p) + dx
            plan += [first, torch.cat(flips).long() if flips else torch.zeros_like(order)]
        plan = torch.stack(plan)
        if self.device.type == "cuda":
            plan = plan.pin_memory()
        return plan.to(self.device, non_blocking=True), stop

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        plan, stop = self._epoch_plan()
        n, (h, w), c = len(self.dataset), self._image_hw, self._pixels.shape[-1]
        images = self._pixels.view(n, h * w * c) if not self._augmenting else None
        rows = self._pixels.view(-1, c)
        flipped = plan[2].bool() if self._augmenting and self.flip else None
        for start in range(0, stop, self.batch_size):
            end = min(start + self.batch_size, stop)
            idx = plan[0, start:end]
            if self._augmenting:
                grid = self._grid if flipped is None else \
                    torch.where(flipped[start:end, None, None], self._grid_flipped, self._grid)
                x = rows.index_select(0, (plan[1, start:end, None, None] + grid).view(-1))
            else:
                x = images.index_select(0, idx)
            x = x.view(end - start, h, w, c).permute(0, 3, 1, 2)  # NCHW shape, channels_last layout
            yield (x if self.channels_last else x.contiguous()), self.labels.index_select(0, idx)


class EpochSampler(torch.utils.data.Sampler):
    """Indices for a FolderSet: a new permutation per epoch from `generator` when training, in order
    otherwise; split across ranks like `rank_indices`. Yields (index, seed) pairs so random
    transforms draw from per-sample seeds taken from the same generator."""

    def __init__(self, n: int, *, train: bool, generator: torch.Generator, rank: int = 0, world_size: int = 1):
        self.n, self.train, self.generator = n, train, generator
        self.rank, self.world_size = rank, world_size

    def __len__(self) -> int:
        if self.world_size == 1:
            return self.n
        if self.train:
            return math.ceil(self.n / self.world_size)
        return len(torch.tensor_split(torch.arange(self.n), self.world_size)[self.rank])

    def __iter__(self) -> Iterator[tuple[int, int]]:
        order = torch.randperm(self.n, generator=self.generator) if self.train else torch.arange(self.n)
        mine = rank_indices(order, self.rank, self.world_size, pad=self.train)
        seeds = torch.randint(0, 2**62, (len(mine),), generator=self.generator)
        yield from zip(mine.tolist(), seeds.tolist())


class DeviceLoader:
    """A DataLoader whose batches are moved to `device` (and channels_last) as they are yielded."""

    def __init__(self, loader: torch.utils.data.DataLoader, device: str | torch.device, channels_last: bool):
        self.loader = loader
        self.dataset, self.sampler, self.batch_size = loader.dataset, loader.sampler, loader.batch_size
        self.device = torch.device(device)
        self.channels_last = channels_last

    def __len__(self) -> int:
        return len(self.loader)

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        for x, y in self.loader:
            x = x.to(self.device, non_blocking=True)
            if self.channels_last:
                x = x.contiguous(memory_format=torch.channels_last)
            yield x, y.to(self.device, non_blocking=True)


def make_loader(data: Data, split: str, batch_size: int, *, train: bool | None = None,
                generator: torch.Generator | None = None, device: str | torch.device = "cpu", workers: int = 1,
                rank: int = 0, world_size: int = 1, channels_last: bool = False, resident: bool | None = None):
    """A loader over data.<split> ('train', 'val' or 'test') yielding normalized float32 batches on `device`.

    `train` (default: split == 'train') shuffles each epoch and applies the dataset's augmentation
    when options.augmentation. In-memory datasets give a TensorLoader, or with `resident` (default: when
    `device` is not the CPU) a ResidentLoader, which yields the same batches from the split held on
    `device`; imagenet a DataLoader with `workers` worker processes, wrapped to move batches to `device`.
    """
    if split not in ("train", "val", "test"):
        raise UsageError(f"unknown split {split!r}; use 'train', 'val' or 'test'")
    dataset = getattr(data, split)
    if dataset is None:
        raise UsageError("there is no validation split: pass a split fraction (--split) to carve one")
    train = (split == "train") if train is None else bool(train)
    augment = data.options.augmentation and train
    generator = generator if generator is not None else _default_generator()
    if isinstance(dataset, ImageSet):
        on_device = torch.device(device).type != "cpu" if resident is None else bool(resident)
        cls = ResidentLoader if on_device else TensorLoader
        return cls(dataset, batch_size, train=train, augment=_AUGMENT[data.options.dataset] if augment else None,
                   mean=data.mean, std=data.std, generator=generator, device=device, rank=rank,
                   world_size=world_size, channels_last=channels_last)
    _check_rank(batch_size, rank, world_size)
    if augment != dataset.random_transform:
        dataset = dataset.with_transform(imagenet_transform(augment, data.mean, data.std,
                                                            not data.options.unnormalize), augment)
    sampler = EpochSampler(len(dataset), train=train, generator=generator, rank=rank, world_size=world_size)
    # DataLoader draws its worker base seed from this generator instead of the global RNG
    loader_gen = torch.Generator().manual_seed(int(torch.randint(0, 2**62, (1,), generator=generator)))
    loader = torch.utils.data.DataLoader(dataset, batch_size=int(batch_size), sampler=sampler,
                                         num_workers=max(0, int(workers)),
                                         pin_memory=torch.device(device).type == "cuda",
                                         persistent_workers=False, generator=loader_gen)
    return DeviceLoader(loader, device, channels_last)
