"""The original train.py's corruption options as pure functions of labels, images and seeds: class subsets,
validation splits, stratified training subsets, label noise and pixel shuffle."""
from __future__ import annotations

from typing import Sequence

import numpy as np
import torch

from ..errors import HparrError, UsageError


def choose_classes(num_classes: int, k: int, seed: int) -> list[int]:
    """k distinct class ids out of num_classes, sorted: k a class subset that `check_subsample_classes` allows
    for num_classes, but 0 (all classes, which the caller handles by choosing none)."""
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

