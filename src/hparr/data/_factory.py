"""`--dataset module.path:factory [--dataset-args k=v,...]`: the user's own torch Datasets.

The factory (imported from the current directory or PYTHONPATH, as `--arch module.path:factory` is) is called with
the --dataset-args as keyword arguments and returns the splits: `(train, test)`, or a mapping with "train" and
"test" (or "val") and, optionally, the normalization as "mean" and "std" (one value per channel, in [0, 1] units).
Each split is a torch Dataset whose items are (image tensor (C, S, S), int label): uint8, or floats in [0, 1] as
`ToTensor` gives them (quantized to 8 bits, which is said where it changes them). Every item is read once into the
in-memory uint8 arrays of the built-in sets; the class count is the length of the training split's `classes` where
it has one, else the largest label plus one. Every bad return is one UsageError.
"""
from __future__ import annotations

import logging
import numbers
from collections.abc import Mapping
from typing import Any

import numpy as np
import torch

from ..errors import UsageError, first_line
from ..files import digest, hasher, jsonable
from ._catalog import DatasetInfo, canonical_dataset_args, parse_dataset_args
from ._own import OwnData, channel_stats, check_normalization

log = logging.getLogger("hparr.data")

SPLIT_KEYS = ("train", "test")


def _label(value: Any) -> int | None:
    """An int label: a Python or numpy integer, or a 0-dimensional integer tensor (TensorDataset's); else None."""
    if isinstance(value, bool):
        return None
    if isinstance(value, numbers.Integral):
        return int(value)
    if isinstance(value, torch.Tensor) and value.dim() == 0 and not value.is_floating_point() \
            and not value.is_complex() and value.dtype != torch.bool:
        return int(value)
    return None


def _describe(item: Any) -> str:
    if isinstance(item, (tuple, list)):
        return "(" + ", ".join(type(v).__name__ if not isinstance(v, torch.Tensor) else
                               f"{v.dtype} tensor {tuple(v.shape)}" for v in item) + ")"
    return type(item).__name__


def materialize(name: str, split: str, dataset: Any) -> tuple[np.ndarray, np.ndarray, bool]:
    """(uint8 images (N, C, S, S), int64 labels (N,), whether floats were rounded to 8 bits) of one split: every
    item read once and checked."""
    what = f"--dataset {name}: the {split} split"
    try:
        n = len(dataset)
        items = (dataset[i] for i in range(n))
    except TypeError:
        try:
            items = iter(dataset)
        except TypeError:
            raise UsageError(f"{what} is a {type(dataset).__name__}, not a torch Dataset of (image tensor, int "
                             "label)") from None
    images, labels, rounded = [], [], False
    shape = None
    i = 0
    while True:
        try:
            item = next(items)
        except StopIteration:
            break
        except UsageError:
            raise
        except Exception as exc:  # noqa: BLE001 - the user's code: its error quoted in one line
            raise UsageError(f"{what} raised {type(exc).__name__} at item {i}: \"{first_line(exc)}\"") from None
        x = item[0] if isinstance(item, (tuple, list)) and len(item) == 2 else None
        label = _label(item[1]) if x is not None else None
        if not isinstance(x, torch.Tensor) or label is None or x.dim() != 3:
            raise UsageError(f"{what}: item {i} is {_describe(item)}, not (image tensor (C, H, W), int label)")
        if shape is None:
            shape = tuple(x.shape)
            if shape[1] != shape[2] or min(shape) < 1:
                raise UsageError(f"{what}: item {i} is an image of shape {shape}; hparr takes square images "
                                 "(C, S, S)")
        elif tuple(x.shape) != shape:
            raise UsageError(f"{what}: item {i} is an image of shape {tuple(x.shape)}, item 0 one of {shape}")
        if x.dtype == torch.uint8:
            q = x
        elif x.is_floating_point():
            lo, hi = float(x.min()), float(x.max())
            if not (0.0 <= lo and hi <= 1.0):
                raise UsageError(f"{what}: item {i} has values in [{lo:.3g}, {hi:.3g}]; give the images unnormalized "
                                 "(uint8, or floats in [0, 1] as ToTensor gives them) and the normalization as "
                                 "'mean' and 'std'")
            q = (x.double() * 255).round().to(torch.uint8)
            rounded = rounded or not torch.allclose(q.double() / 255, x.double(), rtol=0, atol=1e-6)
        else:
            raise UsageError(f"{what}: item {i} is a {x.dtype} image; give uint8 or floats in [0, 1]")
        if label < 0:
            raise UsageError(f"{what}: item {i} has the label {label}; labels are 0, 1, ... (the class index)")
        images.append(q.detach().cpu())
        labels.append(label)
        i += 1
    if not images:
        raise UsageError(f"{what} is empty")
    return torch.stack(images).numpy(), np.asarray(labels, dtype=np.int64), rounded


def _splits(name: str, out: Any) -> tuple[Any, Any, Any, Any]:
    """(train, test, mean, std) of what a factory returned."""
    if isinstance(out, Mapping):
        test_key = "test" if "test" in out else "val"
        if "train" not in out or test_key not in out:
            raise UsageError(f"--dataset {name}: the factory returned a mapping of {sorted(map(str, out))}; it needs "
                             "'train' and 'test' (or 'val')")
        return out["train"], out[test_key], out.get("mean"), out.get("std")
    if isinstance(out, (tuple, list)) and len(out) == 2:
        return out[0], out[1], None, None
    raise UsageError(f"--dataset {name}: the factory returned {_describe(out)}, not (train, test) torch Datasets "
                     "or a mapping with 'train' and 'test'")


def read_factory(name: str, args: str | None = None) -> OwnData:
    """The splits of the factory `name` called with the --dataset-args `args`, read into memory."""
    from ..models import import_factory  # the one importer of a user's `module.path:factory`

    kwargs = parse_dataset_args(args)
    factory = import_factory(name, "--dataset")
    try:
        out = factory(**kwargs)
    except Exception as exc:  # noqa: BLE001 - the user's code: its error quoted in one line
        raise UsageError(f"--dataset {name}: the factory raised {type(exc).__name__}: \"{first_line(exc)}\"") from None
    train, test, mean, std = _splits(name, out)
    x_train, y_train, rounded_train = materialize(name, "train", train)
    x_test, y_test, rounded_test = materialize(name, "test", test)
    if x_train.shape[1:] != x_test.shape[1:]:
        raise UsageError(f"--dataset {name}: the train images are {x_train.shape[1:]}, the test images "
                         f"{x_test.shape[1:]}")
    classes = getattr(train, "classes", None)
    if isinstance(classes, (list, tuple)) and classes:
        names = [str(c) for c in classes]
    else:
        names = [str(c) for c in range(int(max(y_train.max(), y_test.max())) + 1)]
    top = int(max(y_train.max(), y_test.max()))
    if top >= len(names):
        raise UsageError(f"--dataset {name}: a label is {top}, but the training split has {len(names)} classes")
    channels, size = int(x_train.shape[1]), int(x_train.shape[2])
    notes = []
    if rounded_train or rounded_test:
        notes.append(f"--dataset {name}: the images are floats that are not multiples of 1/255; they are rounded to "
                     "8 bits (at most 0.5/255 off)")
    if (mean is None) != (std is None):
        raise UsageError(f"--dataset {name}: the factory gave {'mean' if std is None else 'std'} without "
                         f"{'std' if std is None else 'mean'}")
    if mean is None:
        mean, std = channel_stats(x_train)
        how = "computed on the training images"
    else:
        mean, std = check_normalization(mean, std, channels, f"--dataset {name}")
        how = "given by the factory"
    h = hasher()
    for array in (x_train, y_train, x_test, y_test):
        h.update(f"{array.dtype}\0{array.shape}\0".encode())
        h.update(np.ascontiguousarray(array).tobytes())
    source = {"kind": "factory", "factory": name, "args": jsonable(kwargs), "args_text": canonical_dataset_args(args),
              "files": {"train": len(y_train), "test": len(y_test)}, "hash": digest(h), "normalization": how}
    info = DatasetInfo(name, len(names), channels, size, tuple(mean), tuple(std))
    log.info("--dataset %s: %d train and %d test images of %dx%dx%d, %d classes", name, len(y_train), len(y_test),
             channels, size, size, len(names))
    return OwnData(x_train, y_train, x_test, y_test, names, info, source, notes)
