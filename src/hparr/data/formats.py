"""Readers of the datasets' official on-disk formats, and where each dataset's files are looked for.

CIFAR's python pickles (through an unpickler that admits plain containers and numpy arrays only), IDX files
(MNIST, Fashion-MNIST, KMNIST; plain or .gz), SVHN's .mat files, scikit-learn's digits, and ImageNet's
ImageFolder trees. `read_arrays` gives an in-memory dataset as (train images, train labels, test images,
test labels), uint8 (N, C, H, W) and int64; every malformed file is one HparrError naming it.
"""
from __future__ import annotations

import builtins
import codecs
import gzip
import logging
import pickle
import zlib
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from ..errors import HparrError, first_line
from ._catalog import dataset_info

try:
    from numpy._core import multiarray
except ImportError:  # numpy < 2
    from numpy.core import multiarray

log = logging.getLogger("hparr.data")

# --- raw readers of the official formats ----------------------------------------------------------

class _RestrictedUnpickler(pickle.Unpickler):
    """Unpickles plain containers and numpy arrays only; any other global is refused."""

    _NUMPY = {"_reconstruct", "scalar"}
    _BUILTINS = {"list", "dict", "tuple", "set", "frozenset", "bytes", "bytearray", "str", "int", "float",
                 "complex", "bool"}

    def find_class(self, module: str, name: str) -> Any:
        if module in ("numpy.core.multiarray", "numpy._core.multiarray") and name in self._NUMPY:
            return getattr(multiarray, name)
        if module == "numpy" and name in ("ndarray", "dtype"):
            return getattr(np, name)
        if module == "_codecs" and name == "encode":  # how protocol-2 pickles store bytes
            return codecs.encode
        if module in ("builtins", "__builtin__") and name in self._BUILTINS:
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


# --- each dataset's files, as (train images, train labels, test images, test labels) -------------------

def read_digits() -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """scikit-learn's 8x8 digits, resized to 32x32 uint8, and its fixed stratified split of 450 test images."""
    # start-up time: scikit-learn only when digits are read
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


def _idx_not_found(name: str, root: Path) -> HparrError:
    folder_name, _ = _IDX_FOLDERS[name]
    return HparrError(f"{name} not found: expected {root}/{folder_name}/raw/ (or {root}/) with "
                      f"{', '.join(_MNIST_FILES)} (IDX files, optionally .gz); pass --data-path or --download")


def _load_idx_dataset(name: str, root: Path, download: bool, train: bool = True) -> tuple[np.ndarray | None, ...]:
    """MNIST, Fashion-MNIST or KMNIST: the 4 IDX files (plain or .gz) in <root>/<folder>/raw/ or <root>/;
    the training files are read only with `train`."""
    folder_name, title = _IDX_FOLDERS[name]
    files = _find_idx(root, folder_name)
    if files is None and download:
        _download(name, root)
        files = _find_idx(root, folder_name)
    if files is None:
        raise _idx_not_found(name, root)
    x_train, y_train, x_test, y_test = (read_idx(p) if train or i >= 2 else None for i, p in enumerate(files))
    parts = ((x_train, y_train, files[0], files[1]),) if train else ()
    for images, labels, img_path, lbl_path in (*parts, (x_test, y_test, files[2], files[3])):
        if images.ndim != 3 or images.shape[1:] != (28, 28):
            raise HparrError(f"malformed {title} images {img_path}: expected (N, 28, 28), got {images.shape}")
        if labels.ndim != 1 or labels.shape[0] != images.shape[0]:
            raise HparrError(f"malformed {title} labels {lbl_path}: {labels.shape} labels for "
                             f"{images.shape[0]} images in {img_path.name}")
        if labels.size and labels.max() > 9:
            raise HparrError(f"malformed {title} labels {lbl_path}: labels outside 0..9")
    if not train:
        return None, None, x_test[:, None], y_test.astype(np.int64)
    return x_train[:, None], y_train.astype(np.int64), x_test[:, None], y_test.astype(np.int64)


_SVHN_FILES = ("train_32x32.mat", "test_32x32.mat")


def read_svhn_mat(path: str | Path) -> tuple[np.ndarray, np.ndarray]:
    """(images uint8 (N, 3, 32, 32), labels int64 (N,)) of an SVHN cropped-digits file (`train_32x32.mat`,
    `test_32x32.mat`: X uint8 (32, 32, 3, N), y (N, 1) in 1..10 where 10 is the digit 0), read with scipy.io
    and laid out as torchvision's SVHN does; HparrError naming the file if it is truncated or malformed."""
    import scipy.io  # start-up time: scipy.io only when SVHN is read

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


def _find_svhn(root: Path) -> list[Path] | None:
    for folder in (root, root / "svhn", root / "SVHN"):
        if all((folder / f).is_file() for f in _SVHN_FILES):
            return [folder / f for f in _SVHN_FILES]
    return None


def _svhn_not_found(root: Path) -> HparrError:
    missing = [f for f in _SVHN_FILES if not (root / f).is_file()]
    return HparrError(f"svhn not found: expected {root}/ (or {root}/svhn/) with {' and '.join(_SVHN_FILES)} "
                      f"(the 'cropped digits' .mat files); missing {', '.join(missing)}; "
                      "pass --data-path or --download")


def _load_svhn(root: Path, download: bool, train: bool = True) -> tuple[np.ndarray | None, ...]:
    """SVHN's train_32x32.mat and test_32x32.mat, in <root>/ (torchvision's layout) or <root>/svhn/; the
    training file is read only with `train`."""
    found = _find_svhn(root)
    if found is None and download:
        _download("svhn", root)
        found = _find_svhn(root)
    if found is None:
        raise _svhn_not_found(root)
    return (*(read_svhn_mat(found[0]) if train else (None, None)), *read_svhn_mat(found[1]))


_CIFAR = {
    "cifar10": ("cifar-10-batches-py", [f"data_batch_{i}" for i in range(1, 6)], ["test_batch"], "labels",
                "data_batch_1..5 and test_batch (the 'CIFAR-10 python version')"),
    "cifar100": ("cifar-100-python", ["train"], ["test"], "fine_labels",
                 "train and test (the 'CIFAR-100 python version')"),
}


def _cifar_not_found(name: str, root: Path) -> HparrError | None:
    folder_name, train_files, test_files, _, desc = _CIFAR[name]
    folder = root / folder_name
    missing = [f for f in train_files + test_files if not (folder / f).is_file()]
    if not missing:
        return None
    return HparrError(f"{name} not found: expected {folder}/{desc}; missing {', '.join(missing)}; "
                      "pass --data-path or --download")


def _load_cifar(name: str, root: Path, download: bool, train: bool = True) -> tuple[np.ndarray | None, ...]:
    """CIFAR-10/100's python batches below <root>/<folder>/; the training batches are read only with `train`."""
    folder_name, train_files, test_files, label_key, desc = _CIFAR[name]
    folder = root / folder_name
    if _cifar_not_found(name, root) is not None and download:
        _download(name, root)
    if (error := _cifar_not_found(name, root)) is not None:
        raise error
    num_classes = dataset_info(name).num_classes

    def read(names: list[str]) -> tuple[np.ndarray, np.ndarray]:
        parts = [_read_cifar_batch(folder / f, label_key, num_classes) for f in names]
        return np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts])

    return (*(read(train_files) if train else (None, None)), *read(test_files))


def _download(name: str, root: Path) -> None:
    import torchvision.datasets as tvd  # start-up time: torchvision only for --download

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


def _located(dataset: str, root: Path) -> list[Path] | None:
    """The files that the loader of `dataset` reads below `root`, found where it finds them (ImageNet: its
    train/ and val/ folders; digits: none; a dataset read from a folder tree: the folder), or None where some are
    missing; nothing is read."""
    if dataset == "digits":
        return []
    if dataset in _IDX_FOLDERS:
        return _find_idx(root, _IDX_FOLDERS[dataset][0])
    if dataset == "svhn":
        return _find_svhn(root)
    if dataset in _CIFAR:
        folder, train_files, test_files = root / _CIFAR[dataset][0], _CIFAR[dataset][1], _CIFAR[dataset][2]
        return [folder / f for f in train_files + test_files] if _cifar_not_found(dataset, root) is None else None
    if dataset == "imagenet":
        return [root / "train", root / "val"] if (root / "train").is_dir() and (root / "val").is_dir() else None
    return [root]


def missing_files(dataset: str, root: Path) -> HparrError | None:
    """The error that reading the built-in `dataset` below `root` would raise because its files are not there (the
    one message of it), or None when they are; nothing is read or downloaded."""
    if _located(dataset, root) is not None:
        return None
    if dataset in _IDX_FOLDERS:
        return _idx_not_found(dataset, root)
    if dataset == "svhn":
        return _svhn_not_found(root)
    if dataset == "imagenet":
        return _imagenet_not_found(root)
    return _cifar_not_found(dataset, root)


def read_arrays(dataset: str, root: Path, download: bool, train: bool = True) -> tuple[np.ndarray | None, ...]:
    """(train images, train labels, test images, test labels) of an in-memory dataset, read from its files
    below `root` (fetched first with `download` when they are missing). Without `train` the training files
    are not read and the first two are None."""
    if dataset == "digits":
        arrays = read_digits()  # one small in-package file: both splits come from it
        return arrays if train else (None, None, *arrays[2:])
    if dataset in _IDX_FOLDERS:
        return _load_idx_dataset(dataset, root, download, train)
    if dataset == "svhn":
        return _load_svhn(root, download, train)
    return _load_cifar(dataset, root, download, train)


def dataset_files(dataset: str, root: Path) -> list[Path]:
    """The files that the loader of `dataset` reads below `root`, found where it finds them but not read
    (`_located`). Where some are missing, the loader's own error is raised; nothing is downloaded."""
    found = _located(dataset, root)
    if found is None:
        raise missing_files(dataset, root)
    return found


# --- ImageNet: ImageFolder trees -----------------------------------------------------------------------

def _scan_folder(folder: Path):
    from torchvision.datasets import ImageFolder  # start-up time: torchvision only where ImageNet is read

    try:
        return ImageFolder(str(folder))
    except (FileNotFoundError, OSError) as exc:
        raise HparrError(f"imagenet folder {folder} is unusable: {first_line(exc, None)}") from None


def _imagenet_not_found(root: Path) -> HparrError:
    return HparrError(f"imagenet not found: expected ImageFolder trees {root / 'train'}/<wnid>/*.JPEG and "
                      f"{root / 'val'}/<wnid>/*.JPEG (it cannot be downloaded); pass --data-path")


def imagenet_folders(root: Path):
    """ImageNet's train/ and val/ ImageFolder trees below `root`, and their labels (val's by folder name)."""
    train_dir, val_dir = root / "train", root / "val"
    if not train_dir.is_dir() or not val_dir.is_dir():
        raise _imagenet_not_found(root)
    train, val = _scan_folder(train_dir), _scan_folder(val_dir)
    unknown = sorted(set(val.classes) - set(train.classes))
    if unknown:
        raise HparrError(f"imagenet: {val_dir} has class folders missing from {train_dir}: "
                         f"{', '.join(unknown[:5])}{' ...' if len(unknown) > 5 else ''}")
    # label validation images by folder name, so a val tree lacking some classes stays aligned
    val_labels = np.array([train.class_to_idx[val.classes[t]] for t in val.targets], dtype=np.int64)
    return train, np.asarray(train.targets, dtype=np.int64), val, val_labels
