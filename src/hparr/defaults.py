"""The defaults that several stages share, and their validation: the level of the bias tests and the
re-initialization robustness threshold (docs/method.md, "Bias test" and "Criticality"), and the training recipe
of `hparr reproduce` and of a study's cells."""
from __future__ import annotations

import math
from types import MappingProxyType
from typing import Any

from .errors import UsageError

LEVEL = 0.05  # significance level of the per-layer bias tests, Holm-corrected over a network's layers
THRESHOLD = 0.1  # a layer is robust when re-initializing it costs at most this relative accuracy drop
# whether 1x1 convolutions are analyzed: the one default of `hparr projections` and `hparr reinit` (--include-1x1),
# so that the re-initialized layers are those with statistics (docs/method.md, "Which layers")
INCLUDE_1X1 = False
# `hparr reproduce`'s training recipe, the one place it is written: lenet on the embedded digits dataset, 30 epochs
# of SGD at lr 0.01, a snapshot at every epoch to the 10th and at every 5th after, seed 0. It reaches >= 95% test
# top-1 in a few minutes on 2 CPU cores (`make demo`). Keyed by the options of `TrainSettings` and, for the data,
# `DataOptions` (the flags' names); every option it leaves out keeps their default, so `hparr train` (20 epochs
# at lr 0.001, the paper's train.py) and `hparr reproduce` differ in these values alone. `hparr reproduce` and
# `pipeline.ReproduceSettings` start from it, and the default grid of `hparr study` is its arch, dataset and seed.
REPRODUCE_RECIPE = MappingProxyType({"arch": "lenet", "dataset": "digits", "epochs": 30, "lr": 0.01, "seed": 0,
                                     "snapshot_every": 5, "snapshot_all_until": 10})


def _finite(name: str, value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise UsageError(f"{name} must be a number, got {value!r}")
    return float(value)


def check_level(level: Any, name: str = "--level") -> float:
    """A significance level: a number in (0, 1)."""
    if not 0 < _finite(name, level) < 1:
        raise UsageError(f"{name} must be in (0, 1), got {level}")
    return float(level)


def check_threshold(threshold: Any, name: str = "--threshold") -> float:
    """A robustness threshold on the relative accuracy drop: a number in (0, 1)."""
    if not 0 < _finite(name, threshold) < 1:
        raise UsageError(f"{name} must be in (0, 1), got {threshold}")
    return float(threshold)

# why a training run stopped, as its final snapshot, its results and its report say it (read without torch by the
# report): --epochs ran out, --until-train-acc was reached, --kill-plateaus saw a plateau
STOP_REASONS = MappingProxyType({"epochs": "epochs exhausted", "target": "target reached", "plateau": "plateau"})
