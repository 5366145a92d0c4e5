"""Datasets, the original train.py's corruption options, and the loaders that batch them.

- `catalog`: what hparr knows of each dataset, and the data options (`DataOptions`) that check themselves;
- `formats`: readers of the official on-disk formats and where each dataset's files are looked for;
- `corrupt`: class subsets, validation splits, training subsets, label noise and pixel shuffle;
- `imagenet`: ImageNet streamed from an ImageFolder tree;
- `imagefolder`, `factory`, `own`: the user's own data, an image folder or a factory's torch Datasets, decoded
  once into the in-memory arrays of the built-in sets, with its constants and its identity;
- `load`: `load_data`, which reads a dataset and applies the options, giving a `Data`; `describe`, a dataset's
  constants; `check_files`, whether its files are there;
- `loaders`: `make_loader` and the loaders it picks.
"""
from ._catalog import (
    CROP_PADDING,
    DATASETS,
    IMAGEFOLDER,
    DataOptions,
    DatasetInfo,
    canonical_dataset_args,
    check_subsample_classes,
    dataset_info,
    dataset_kind,
    is_builtin,
    parse_dataset_args,
)
from ._corrupt import (
    choose_classes,
    corrupt_labels,
    image_permutation,
    shuffle_pixels,
    split_indices,
    stratified_subset,
    subsample_indices,
)
from ._imagenet import FolderSet, imagenet_transform
from ._load import Data, ImageSet, check_files, describe, keep_decoded, load_data, own_data
from ._loaders import (
    DeviceLoader,
    EpochSampler,
    ResidentLoader,
    TensorLoader,
    make_loader,
    rank_indices,
    resident_pixels,
)
from ._own import OwnData, SourceKey, channel_stats, source_change, source_key
from .formats import read_idx, read_svhn_mat

__all__ = [
    "CROP_PADDING", "DATASETS", "Data", "DataOptions", "DatasetInfo", "DeviceLoader", "EpochSampler", "FolderSet",
    "IMAGEFOLDER", "ImageSet", "OwnData", "ResidentLoader", "SourceKey", "TensorLoader", "canonical_dataset_args",
    "channel_stats", "check_files", "check_subsample_classes", "choose_classes", "corrupt_labels", "dataset_info",
    "dataset_kind", "describe", "image_permutation", "imagenet_transform", "is_builtin", "keep_decoded",
    "load_data", "make_loader", "own_data", "parse_dataset_args", "rank_indices", "read_idx", "read_svhn_mat",
    "resident_pixels", "shuffle_pixels", "source_change", "source_key", "split_indices", "stratified_subset",
    "subsample_indices",
]
