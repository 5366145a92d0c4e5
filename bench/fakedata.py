"""Small datasets written in the official on-disk formats, for the tests and the benchmarks.

Everything here goes through `hparr.files` and writes files that the real loaders of `hparr.data`
(and torchvision's) read as they read the published datasets:

- CIFAR-10 / CIFAR-100 "python version": dicts pickled the way the official files were (Python 2
  cPickle, protocol 2: byte strings as BINSTRING, numpy arrays via numpy.core.multiarray._reconstruct),
  or with Python 3's pickle at a given protocol.
- MNIST, Fashion-MNIST, KMNIST: IDX files (plain or .gz), in torchvision's `<folder>/raw/` layout or flat.
- SVHN: `train_32x32.mat` and `test_32x32.mat` (MATLAB v5, as published), written with scipy.io.
- ImageNet: an ImageFolder tree of small JPEGs.
"""
from __future__ import annotations

import gzip
import io
import pickle
import struct
from pathlib import Path
from typing import Sequence

import numpy as np

from hparr import files


def random_images(n: int, channels: int, height: int, width: int, seed: int = 0) -> np.ndarray:
    """uint8 (n, channels, height, width) noise images; distinct with overwhelming probability."""
    return np.random.default_rng(seed).integers(0, 256, size=(n, channels, height, width), dtype=np.uint8)


def random_labels(n: int, num_classes: int, seed: int = 0) -> np.ndarray:
    """int64 labels in which every class occurs (n >= num_classes)."""
    rng = np.random.default_rng(seed)
    labels = np.concatenate([np.arange(num_classes), rng.integers(0, num_classes, n - num_classes)])
    return rng.permutation(labels).astype(np.int64)


def _py2_str(b: bytes) -> bytes:
    return b"U" + bytes([len(b)]) + b if len(b) < 256 else b"T" + struct.pack("<i", len(b)) + b


def _py2_int(v: int) -> bytes:
    if 0 <= v < 256:
        return b"K" + bytes([v])
    if 0 <= v < 65536:
        return b"M" + struct.pack("<H", v)
    return b"J" + struct.pack("<i", v)


def _py2_value(v) -> bytes:
    if isinstance(v, bytes):
        return _py2_str(v)
    if isinstance(v, (int, np.integer)):
        return _py2_int(int(v))
    if isinstance(v, list):
        return b"](" + b"".join(_py2_value(x) for x in v) + b"e"
    if isinstance(v, np.ndarray):
        if v.dtype != np.uint8:
            raise TypeError(f"only uint8 arrays can be written as a Python 2 pickle, got {v.dtype}")
        v = np.ascontiguousarray(v)
        shape = b"(" + b"".join(_py2_int(d) for d in v.shape) + b"t"
        minus_one = b"J" + struct.pack("<i", -1)
        dtype = (b"cnumpy\ndtype\n" + _py2_str(b"u1") + _py2_int(0) + _py2_int(1) + b"\x87R"
                 + b"(" + _py2_int(3) + _py2_str(b"|") + b"NNN" + minus_one + minus_one + _py2_int(0) + b"tb")
        return (b"cnumpy.core.multiarray\n_reconstruct\ncnumpy\nndarray\n" + _py2_int(0) + b"\x85"
                + _py2_str(b"b") + b"\x87R" + b"(" + _py2_int(1) + shape + dtype + b"\x89"
                + _py2_str(v.tobytes()) + b"tb")
    raise TypeError(f"cannot write {type(v).__name__} as a Python 2 pickle")


def py2_pickle(obj: dict) -> bytes:
    """A dict of byte strings, ints, lists and uint8 arrays, pickled as Python 2's cPickle did (protocol 2)."""
    return b"\x80\x02}(" + b"".join(_py2_str(k) + _py2_value(v) for k, v in obj.items()) + b"u."


def _pickle(path: Path, obj: dict, protocol: int | None) -> None:
    files.write_bytes(path, py2_pickle(obj) if protocol is None else pickle.dumps(obj, protocol=protocol))


def _cifar_batch(images: np.ndarray, labels: np.ndarray, label_keys: dict[bytes, list[int]], name: str) -> dict:
    images = np.asarray(images, dtype=np.uint8)
    if images.shape[1:] != (3, 32, 32):
        raise ValueError(f"CIFAR images must be (n, 3, 32, 32), got {images.shape}")
    return {b"batch_label": name.encode(), **label_keys, b"data": images.reshape(len(images), 3072),
            b"filenames": [f"img_{i}.png".encode() for i in range(len(images))]}


def write_cifar10(root: str | Path, train_images: np.ndarray, train_labels: np.ndarray,
                  test_images: np.ndarray, test_labels: np.ndarray, *, protocol: int | None = None) -> Path:
    """<root>/cifar-10-batches-py/{data_batch_1..5, test_batch, batches.meta}; the training set is cut
    into 5 consecutive batches. protocol None: the official Python 2 pickles; else Python 3's pickle
    at that protocol. Returns the folder."""
    folder = Path(root) / "cifar-10-batches-py"
    for i, idx in enumerate(np.array_split(np.arange(len(train_labels)), 5), start=1):
        batch = _cifar_batch(train_images[idx], train_labels[idx],
                             {b"labels": [int(v) for v in train_labels[idx]]}, f"training batch {i} of 5")
        _pickle(folder / f"data_batch_{i}", batch, protocol)
    _pickle(folder / "test_batch", _cifar_batch(test_images, test_labels,
                                                {b"labels": [int(v) for v in test_labels]}, "testing batch 1 of 1"),
            protocol)
    _pickle(folder / "batches.meta", {b"num_cases_per_batch": 10000, b"num_vis": 3072,
                                      b"label_names": [f"class{i}".encode() for i in range(10)]}, protocol)
    return folder


def write_cifar100(root: str | Path, train_images: np.ndarray, train_labels: np.ndarray,
                   test_images: np.ndarray, test_labels: np.ndarray, *, protocol: int | None = None) -> Path:
    """<root>/cifar-100-python/{train, test, meta} with fine and coarse labels (protocol: as
    write_cifar10). Returns the folder."""
    folder = Path(root) / "cifar-100-python"
    for name, images, labels in (("train", train_images, train_labels), ("test", test_images, test_labels)):
        keys = {b"fine_labels": [int(v) for v in labels], b"coarse_labels": [int(v) // 5 for v in labels]}
        _pickle(folder / name, _cifar_batch(images, labels, keys, name), protocol)
    _pickle(folder / "meta", {b"fine_label_names": [f"fine{i}".encode() for i in range(100)],
                              b"coarse_label_names": [f"coarse{i}".encode() for i in range(20)]}, protocol)
    return folder


def idx_bytes(array: np.ndarray) -> bytes:
    """An uint8 array in the IDX format: magic 0x0000 08 <ndim>, big-endian dims, then the data."""
    array = np.ascontiguousarray(array, dtype=np.uint8)
    header = bytes([0, 0, 0x08, array.ndim]) + struct.pack(f">{array.ndim}I", *array.shape)
    return header + array.tobytes()


def write_idx(path: str | Path, array: np.ndarray) -> Path:
    """One IDX file, gzipped when the name ends with .gz."""
    path = Path(path)
    data = idx_bytes(array)
    if path.suffix == ".gz":
        buf = io.BytesIO()
        with gzip.GzipFile(fileobj=buf, mode="wb", mtime=0) as gz:
            gz.write(data)
        data = buf.getvalue()
    files.write_bytes(path, data)
    return path


MNIST_NAMES = ("train-images-idx3-ubyte", "train-labels-idx1-ubyte", "t10k-images-idx3-ubyte",
               "t10k-labels-idx1-ubyte")


IDX_FOLDERS = {"mnist": "MNIST", "fashionmnist": "FashionMNIST", "kmnist": "KMNIST"}


def write_mnist(root: str | Path, train_images: np.ndarray, train_labels: np.ndarray,
                test_images: np.ndarray, test_labels: np.ndarray, *, gz: bool = False,
                flat: bool = False, dataset: str = "mnist") -> list[Path]:
    """The 4 IDX files of MNIST (or Fashion-MNIST, KMNIST: `dataset`) in <root>/<MNIST|FashionMNIST|KMNIST>/raw/
    (torchvision's layout) or directly in <root> (flat)."""
    folder = Path(root) if flat else Path(root) / IDX_FOLDERS[dataset] / "raw"
    arrays = (train_images, train_labels, test_images, test_labels)
    return [write_idx(folder / (name + (".gz" if gz else "")), a) for name, a in zip(MNIST_NAMES, arrays)]


def write_svhn(root: str | Path, train_images: np.ndarray, train_labels: np.ndarray,
               test_images: np.ndarray, test_labels: np.ndarray) -> list[Path]:
    """<root>/train_32x32.mat and <root>/test_32x32.mat (torchvision's layout) from uint8 images (n, 3, 32, 32)
    and labels 0..9, stored as the published files store them: X (32, 32, 3, n), y (n, 1) with 10 for digit 0."""
    import scipy.io

    paths = []
    for name, images, labels in (("train_32x32.mat", train_images, train_labels),
                                 ("test_32x32.mat", test_images, test_labels)):
        x = np.ascontiguousarray(np.transpose(np.asarray(images, dtype=np.uint8), (2, 3, 1, 0)))
        y = np.asarray(labels, dtype=np.uint8).reshape(-1, 1).copy()
        y[y == 0] = 10
        buf = io.BytesIO()
        scipy.io.savemat(buf, {"X": x, "y": y})
        files.write_bytes(Path(root) / name, buf.getvalue())
        paths.append(Path(root) / name)
    return paths


def write_image_folder(root: str | Path, counts: dict[str, int], *, size: tuple[int, int] = (40, 30),
                       seed: int = 0) -> list[Path]:
    """<root>/<class>/<i>.JPEG: counts[class] random RGB JPEGs of size (width, height). Returns the paths
    in ImageFolder's order (classes sorted, files sorted)."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    paths = []
    for cls in sorted(counts):
        for i in range(counts[cls]):
            pixels = rng.integers(0, 256, size=(size[1], size[0], 3), dtype=np.uint8)
            buf = io.BytesIO()
            Image.fromarray(pixels).save(buf, format="JPEG", quality=90)
            path = Path(root) / cls / f"{cls}_{i:04d}.JPEG"
            files.write_bytes(path, buf.getvalue())
            paths.append(path)
    return paths


def write_imagenet(root: str | Path, classes: Sequence[str], train_per_class: int, val_per_class: int,
                   *, size: tuple[int, int] = (40, 30), seed: int = 0) -> Path:
    """<root>/train/<wnid>/*.JPEG and <root>/val/<wnid>/*.JPEG. Returns root."""
    write_image_folder(Path(root) / "train", {c: train_per_class for c in classes}, size=size, seed=seed)
    write_image_folder(Path(root) / "val", {c: val_per_class for c in classes}, size=size, seed=seed + 1)
    return Path(root)
