"""The defaults that several stages share, and their validation: the level of the bias tests and the
re-initialization robustness threshold (docs/method.md, "Bias test" and "Criticality")."""
from __future__ import annotations

import math
from typing import Any

from .errors import UsageError

LEVEL = 0.05  # significance level of the per-layer bias tests, Holm-corrected over a network's layers
THRESHOLD = 0.1  # a layer is robust when re-initializing it costs at most this relative accuracy drop
# whether 1x1 convolutions are analyzed: the one default of `hparr projections` and `hparr reinit` (--include-1x1),
# so that the re-initialized layers are those with statistics (docs/method.md, "Which layers")
INCLUDE_1X1 = False


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
