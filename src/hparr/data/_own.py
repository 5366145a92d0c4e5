"""Datasets of the user's own (an image folder, a factory's torch Datasets): what they are decoded into (`OwnData`,
the in-memory uint8 arrays of the built-in sets plus the constants read from them), their normalization constants,
and their identity (what a run records of its data, and how a later command tells whether it has the same)."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Mapping

import numpy as np

from ..errors import UsageError
from ..files import HASH_ALGORITHM
from ._catalog import DatasetInfo


@dataclass
class OwnData:
    """A dataset of the user's own, decoded: uint8 images (N, C, S, S) and int64 labels of its training and test
    splits, the names of its classes, its constants (`info`: class count, channels, size, mean and std), and its
    identity (`source`, recorded in every run on it). `notes`: what the reading changed, said once per command
    (gray images made RGB, floats quantized to 8 bits)."""

    x_train: np.ndarray
    y_train: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray
    classes: list[str]
    info: DatasetInfo
    source: dict[str, Any]
    notes: list[str] = field(default_factory=list)

    def arrays(self) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """Copies of the four arrays (each `load_data` call gets its own, as with the built-in sets)."""
        return self.x_train.copy(), self.y_train.copy(), self.x_test.copy(), self.y_test.copy()


def channel_stats(images: np.ndarray) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Per-channel mean and population standard deviation of uint8 images (N, C, H, W), in [0, 1] units: for
    channel c with pixel values x_i / 255 (i over all N*H*W pixels), mean_c = (1/n) sum x_i and
    std_c = sqrt((1/n) sum (x_i - mean_c)^2), as `numpy.mean` and `numpy.std(ddof=0)` give them, computed in float64
    from the exact 256-bin histogram of each channel. The constants of the built-in sets are of the same kind
    (docs/train.md, "Datasets and corruptions")."""
    images = np.asarray(images)
    if images.dtype != np.uint8 or images.ndim != 4 or images.shape[0] == 0:
        raise ValueError(f"channel_stats takes uint8 images (N, C, H, W), N > 0, got {images.dtype} {images.shape}")
    values = np.arange(256, dtype=np.float64) / 255.0
    means, stds = [], []
    for c in range(images.shape[1]):
        counts = np.bincount(images[:, c].reshape(-1), minlength=256).astype(np.float64)
        n = counts.sum()
        mean = float((counts * values).sum() / n)
        var = float((counts * (values - mean) ** 2).sum() / n)
        means.append(mean)
        stds.append(float(np.sqrt(var)))
    return tuple(means), tuple(stds)


def check_normalization(mean: Any, std: Any, channels: int, what: str) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Normalization constants given by the user: one finite mean and one positive std per channel."""
    try:
        m = tuple(float(v) for v in np.atleast_1d(np.asarray(mean, dtype=np.float64)))
        s = tuple(float(v) for v in np.atleast_1d(np.asarray(std, dtype=np.float64)))
    except (TypeError, ValueError):
        raise UsageError(f"{what}: mean and std must be numbers, one per channel, got {mean!r} and {std!r}") from None
    if len(m) == 1 and len(s) == 1 and channels > 1:
        m, s = m * channels, s * channels
    usable = len(m) == len(s) == channels and np.all(np.isfinite(m)) and np.all(np.isfinite(s) & (np.asarray(s) > 0))
    if not usable:
        raise UsageError(f"{what}: mean and std must give one finite mean and one positive std per channel "
                         f"({channels}), got {list(m)} and {list(s)}")
    return m, s


# --- identity ---------------------------------------------------------------------------------------------

@dataclass(frozen=True, eq=False)
class SourceKey:
    """A dataset's identity as runs compare it: equal when the content hashes are; shown as what it is
    (`imagefolder DIR (42 files, xxh3-128:1a2b3c4d5e6f)`)."""

    text: str
    hash: str

    def __eq__(self, other: object) -> bool:
        return isinstance(other, SourceKey) and other.hash == self.hash

    def __hash__(self) -> int:
        return hash(self.hash)

    def __str__(self) -> str:
        return self.text


def source_key(source: Any) -> SourceKey | None:
    """The identity of the `source` record of a dataset (`OwnData.source`, as runs record it under
    data.source), or None where there is none (the built-in sets, runs of an earlier hparr)."""
    if not isinstance(source, Mapping) or not isinstance(source.get("hash"), str):
        return None
    short = source["hash"].partition(":")[2][:12] or source["hash"][:12]
    if source.get("kind") == "imagefolder":
        files = source.get("files") if isinstance(source.get("files"), Mapping) else {}
        count = sum(int(v) for v in files.values() if isinstance(v, int))
        text = f"imagefolder {source.get('path')} ({count} files, {HASH_ALGORITHM}:{short})"
    else:
        args = source.get("args") if isinstance(source.get("args"), Mapping) else {}
        call = ", ".join(f"{k}={v!r}" for k, v in args.items())
        text = f"{source.get('factory')}({call}) ({HASH_ALGORITHM}:{short})"
    return SourceKey(text, source["hash"])


def source_change(recorded: Any, current: Any) -> str | None:
    """Why the data `current` (a `source` record) is not the data a model was trained on (`recorded`), as
    "was trained on <recorded>, not on <current>", or None when it is (or when either records no identity)."""
    a, b = source_key(recorded), source_key(current)
    if a is None or b is None or a == b:
        return None
    return f"was trained on {a}, not on {b}"
