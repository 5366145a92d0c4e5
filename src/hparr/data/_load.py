"""`load_data`: a dataset read from its files, with the data options applied, as a `Data`.

Small datasets (digits, MNIST, Fashion-MNIST, KMNIST, CIFAR-10/100, SVHN) are decoded from their official
on-disk formats into uint8 tensors held in memory (`ImageSet`), once per process with `keep_decoded`; ImageNet is
streamed from an ImageFolder tree (`FolderSet`). The user's own data, an image folder (`imagefolder`, cached on disk
once decoded) or the splits of a factory (`module.path:factory`, read once per process), is held in memory as the
small datasets are, with the constants read from it (`own_data`, `describe`).

Order of operations: subsample classes -> carve the validation split -> keep a stratified subset of
--train-size images of the remaining training part -> corrupt the labels or shuffle the pixels of that
training part only (validation and test stay clean).
Every random choice comes from a generator seeded by an option; global RNG state is never touched.
"""
from __future__ import annotations

import dataclasses
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..errors import HparrError, UsageError
from ..layout import Corruption
from ..provenance import versions
from ._catalog import (
    DataOptions,
    DatasetInfo,
    augmentation_text,
    canonical_dataset_args,
    check_subsample_classes,
    dataset_info,
    dataset_kind,
)
from ._corrupt import (
    choose_classes,
    corrupt_labels,
    shuffle_pixels,
    split_indices,
    stratified_subset,
    subsample_indices,
)
from ._factory import read_factory
from ._imagefolder import list_folder, read_image_folder
from ._imagenet import FolderSet, imagenet_transform
from ._own import OwnData
from .formats import imagenet_folders, missing_files, read_arrays

log = logging.getLogger("hparr.data")


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


# --- decoding, once per process when kept ----------------------------------------------------------

_decoded: dict[tuple[str, str], tuple[np.ndarray, ...]] | None = None  # see keep_decoded


def keep_decoded(enabled: bool = True) -> None:
    """Keep the decoded arrays of the last in-memory dataset (digits, MNIST, CIFAR) in this process, so
    that later `load_data` calls on the same files skip the decoding (a process running many runs, such as
    a worker of `hparr study`, decodes each dataset once). Each call gets its own copy."""
    global _decoded
    _decoded = {} if enabled else None


def _decode(dataset: str, root: Path, download: bool, train: bool = True) -> tuple[np.ndarray | None, ...]:
    """(x_train, y_train, x_test, y_test) of an in-memory dataset, decoded from its files; without `train`
    the training files are not read and the first two are None."""
    if _decoded is None:
        return read_arrays(dataset, root, download, train)
    key = (dataset, "" if dataset == "digits" else str(root.resolve()))
    if key not in _decoded or (train and _decoded[key][0] is None):
        arrays = read_arrays(dataset, root, download, train)
        _decoded.clear()  # one dataset at a time
        _decoded[key] = arrays
    arrays = _decoded[key]
    return tuple(None if a is None or (not train and i < 2) else a.copy() for i, a in enumerate(arrays))


# --- the user's own data ------------------------------------------------------------------------------------

_own: dict[tuple, OwnData] = {}  # the last factory's splits, read once per process
_said: set[str] = set()  # what the reading of the user's data changed, said once per process


def own_data(options: DataOptions) -> OwnData:
    """The image folder (decoded, or read from its cache) or the factory's splits (read once per process) that
    `options` name, with their constants; what the reading changed is logged once."""
    if dataset_kind(options.dataset) == "imagefolder":
        own = read_image_folder(Path(options.data_path).expanduser(), options.input_size)
    else:
        key = (options.dataset, canonical_dataset_args(options.dataset_args))
        if key not in _own:
            own = read_factory(options.dataset, options.dataset_args)
            _own.clear()  # one dataset at a time
            _own[key] = own
        own = _own[key]
    for note in own.notes:
        if note not in _said:
            _said.add(note)
            log.warning("%s", note)
    return own


def describe(options: DataOptions) -> DatasetInfo:
    """The class count, channels, image size, mean and std of the data `options` name: a built-in dataset's
    constants, or those read from an image folder or a factory's splits (which are read for it)."""
    options.validate()
    if dataset_kind(options.dataset) == "builtin":
        return dataset_info(options.dataset)
    return own_data(options).info


def check_files(options: DataOptions) -> None:
    """Check, without reading or decoding any image, that the data `options` name is there, with the one-line
    error that reading it would give: a built-in dataset's files (unless --download fetches them), the split and
    class folders and image files of an image folder, a factory that can be imported. A study's dry run calls it."""
    options.validate()
    kind = dataset_kind(options.dataset)
    if kind == "imagefolder":
        list_folder(Path(options.data_path).expanduser())
    elif kind == "factory":
        from ..models import import_factory  # the one importer of a user's `module.path:factory`

        import_factory(options.dataset, "--dataset")
    elif not (options.download and options.dataset != "imagenet"):
        error = missing_files(options.dataset, Path(options.data_path).expanduser())
        if error is not None:
            raise error


# --- load_data -----------------------------------------------------------------------------------------

SPLITS = ("train", "test")


def load_data(options: DataOptions, splits: tuple[str, ...] = SPLITS) -> Data:
    """Load a dataset and apply the options (subsample -> split -> corrupt the training part).

    `splits` names the parts needed; the test set is always read. Without "train" no training file is read
    (nor is the validation split carved), train and val are None, and meta records no split, subset or
    corruption; the class subset is the same either way (it depends on the class count and its seed only)."""
    options.validate()
    unknown = sorted(set(splits) - set(SPLITS))
    if unknown or not splits:
        raise UsageError(f"load_data reads the splits {' and '.join(SPLITS)}, not {unknown or 'none'}")
    requested, with_train = options, "train" in splits
    if not with_train:  # nothing is carved from or done to a training part that is not read
        options = dataclasses.replace(options, split=0, train_size=None, noise=0)
    kind = dataset_kind(options.dataset)
    root = Path(options.data_path).expanduser()
    seeds = options.seeds()
    class_names, source = None, None
    if options.dataset == "imagenet":
        info = dataset_info(options.dataset)
        folder_train, y_train, folder_test, y_test = imagenet_folders(root)
        num_classes = len(folder_train.classes)
        class_names = list(folder_train.classes)
    elif kind == "builtin":
        info = dataset_info(options.dataset)
        x_train, y_train, x_test, y_test = _decode(options.dataset, root, options.download, with_train)
        num_classes = info.num_classes
    else:
        own = own_data(options)
        info, class_names, source = own.info, own.classes, own.source
        x_train, y_train, x_test, y_test = own.arrays()
        num_classes = info.num_classes
    if not with_train:
        y_train = np.zeros(0, dtype=np.int64)
    meta: dict[str, Any] = {"dataset": options.dataset,
                            "data_path": None if options.dataset == "digits" or kind == "factory" else str(root),
                            **({"source": source} if source is not None else {}),
                            "options": dataclasses.asdict(requested),
                            **({} if with_train else {"splits_read": ["test"]}),
                            "seeds": seeds,
                            "original_num_classes": num_classes}

    train_idx, test_idx = np.arange(len(y_train)), np.arange(len(y_test))
    classes = None
    k = check_subsample_classes(options.dataset, options.subsample_classes, num_classes)  # the count read
    if k:
        classes = choose_classes(num_classes, k, seeds["class_sample_seed"])
        train_idx, y_train = subsample_indices(y_train, classes)
        test_idx, y_test = subsample_indices(y_test, classes)
        num_classes = k
    meta["class_subset"] = None if classes is None else {
        "k": k, "seed": seeds["class_sample_seed"], "classes": classes,
        **({"class_names": [class_names[c] for c in classes]} if class_names is not None else {})}

    val_idx = y_val = None
    if options.split:
        tr, va = split_indices(y_train, options.split, seed=seeds["split_seed"], shuffle=options.shuffle,
                               stratified=options.stratified, num_classes=num_classes)
        val_idx, y_val = train_idx[va], y_train[va]
        train_idx, y_train = train_idx[tr], y_train[tr]
    meta["split"] = None if val_idx is None else {
        "fraction": options.split, "size": len(val_idx), "seed": seeds["split_seed"],
        "shuffle": options.shuffle, "stratified": options.stratified,
        "per_class": np.bincount(y_val, minlength=num_classes).tolist()}

    meta["train_subset"] = None
    if options.train_size is not None:
        size, available = int(options.train_size), len(y_train)
        if size > available:
            of = f" of the {num_classes} chosen classes" if classes is not None else ""
            after = " left after the validation split" if val_idx is not None else ""
            raise UsageError(f"--train-size {size} is larger than the {available} training images{of}{after}")
        keep = stratified_subset(y_train, size, num_classes, seeds["train_size_seed"])
        train_idx, y_train = train_idx[keep], y_train[keep]
        meta["train_subset"] = {"size": size, "of": available, "seed": seeds["train_size_seed"],
                                "stratified": True, "per_class": np.bincount(y_train, minlength=num_classes).tolist()}

    corruption = Corruption(options.noise)
    pixel_shuffle = corruption.pixel_shuffle
    noise_seed = seeds["noise_seed"]
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

        train = folder_set(folder_train, train_idx, y_train, True) if with_train else None
        val = None if val_idx is None else folder_set(folder_train, val_idx, y_val, False)
        test = folder_set(folder_test, test_idx, y_test, False)
    else:
        def image_set(x, idx, labels):
            x = torch.from_numpy(np.ascontiguousarray(x))
            if not np.array_equal(idx, np.arange(len(x))):  # skip a copy of the whole set when unchanged
                x = x.index_select(0, torch.from_numpy(np.asarray(idx, dtype=np.int64)))
            return ImageSet(x, torch.from_numpy(np.array(labels, dtype=np.int64)))

        train = image_set(x_train, train_idx, y_train) if with_train else None
        val = None if val_idx is None else image_set(x_train, val_idx, y_val)
        test = image_set(x_test, test_idx, y_test)
        if pixel_shuffle:
            train.images = shuffle_pixels(train.images, noise_seed)

    augmentation = augmentation_text(options.dataset) if options.augmentation else None
    meta.update({
        "num_classes": num_classes, "in_channels": info.in_channels, "image_size": info.image_size,
        "sizes": {"train": 0 if train is None else len(train), "val": 0 if val is None else len(val),
                  "test": len(test)},
        "normalization": {"mean": list(mean), "std": list(std), "normalized": normalize},
        "augmentation": augmentation,
        "versions": versions(),
    })
    log.info("%s: %d train, %d val, %d test samples, %d classes", options.dataset, meta["sizes"]["train"],
             meta["sizes"]["val"], len(test), num_classes)
    return Data(options=requested, info=info, train=train, val=val, test=test, num_classes=num_classes,
                classes=classes, mean=tuple(mean), std=tuple(std), meta=meta)

