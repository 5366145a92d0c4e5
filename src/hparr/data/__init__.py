"""Datasets, the original train.py's corruption options, and the loaders that batch them.

- `catalog`: what hparr knows of each dataset, and the data options (`DataOptions`) that check themselves;
- `formats`: readers of the official on-disk formats and where each dataset's files are looked for;
- `corrupt`: class subsets, validation splits, training subsets, label noise and pixel shuffle;
- `imagenet`: ImageNet streamed from an ImageFolder tree;
- `load`: `load_data`, which reads a dataset and applies the options, giving a `Data`;
- `loaders`: `make_loader` and the loaders it picks.
"""
from .catalog import (
    CROP_PADDING,
    DATASETS,
    DataOptions,
    DatasetInfo,
    check_subsample_classes,
    dataset_info,
)
from .corrupt import (
    choose_classes,
    corrupt_labels,
    image_permutation,
    shuffle_pixels,
    split_indices,
    stratified_subset,
    subsample_indices,
)
from .formats import read_idx, read_svhn_mat
from .imagenet import FolderSet, imagenet_transform
from .load import Data, ImageSet, keep_decoded, load_data
from .loaders import (
    DeviceLoader,
    EpochSampler,
    ResidentLoader,
    TensorLoader,
    make_loader,
    rank_indices,
    resident_pixels,
)

__all__ = [
    "CROP_PADDING", "DATASETS", "Data", "DataOptions", "DatasetInfo", "DeviceLoader", "EpochSampler", "FolderSet",
    "ImageSet", "ResidentLoader", "TensorLoader", "check_subsample_classes", "choose_classes", "corrupt_labels",
    "dataset_info", "image_permutation", "imagenet_transform", "keep_decoded", "load_data", "make_loader",
    "rank_indices", "read_idx", "read_svhn_mat", "resident_pixels", "shuffle_pixels", "split_indices",
    "stratified_subset", "subsample_indices",
]
