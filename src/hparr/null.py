"""The null of docs/method.md §3: the statistics of a layer of random (untrained) filters. No torch.

For a d-dimensional filter with i.i.d. Gaussian weights, the cosine t between its normal and the identity
line satisfies (1 + t)/2 ~ Beta((d-1)/2, (d-1)/2): `distribution(d)` is that law on [-1, 1], used by the
bias test (its CDF) and by the report (its density). The count of filters with t <= 0 among N is
Binomial(N, 1/2), so the mass has mean 1/2 and sd 1/(2 sqrt(N)); the mean of N cosines has mean 0 and
sd sqrt(1/d) / sqrt(N). The bands are 95% (+/- 1.96 sd).
"""
from __future__ import annotations

import functools
import math

import numpy as np
from scipy import stats

Z95 = 1.959963984540054


@functools.lru_cache(maxsize=256)
def distribution(d: int):
    """The law of the normalized projection of a random d-dimensional filter (d >= 2), a frozen scipy
    distribution on [-1, 1]: `beta((d-1)/2, (d-1)/2, loc=-1, scale=2)` (built once per d: freezing a scipy
    distribution costs more than the test that uses it)."""
    if d < 2:
        raise ValueError(f"the null needs d >= 2, got {d}")
    a = (d - 1) / 2
    return stats.beta(a, a, loc=-1, scale=2)


def cdf(t, d):
    """The CDF of `distribution(d)` at `t`, elementwise over arrays of `t` and `d` (each d >= 2): the same
    values as `distribution(d).cdf(t)`, in one call for the filters of many layers."""
    a = (np.asarray(d, dtype=np.float64) - 1) / 2
    return stats.beta.cdf(t, a, a, loc=-1, scale=2)


def mass_band(n: int) -> tuple[float, float]:
    """95% band of a layer's mass under the null: 0.5 +/- 1.96 / (2 sqrt(N))."""
    half = Z95 / (2 * math.sqrt(n))
    return 0.5 - half, 0.5 + half


def mean_band(n: int, d: int | None = None, sd: float | None = None) -> tuple[float, float]:
    """95% band of the mean of N projections under the null: 0 +/- 1.96 s / sqrt(N), where s is
    sqrt(1/d) for normalized projections (give `d`) or a stated per-filter sd (give `sd`)."""
    s = math.sqrt(1 / d) if sd is None else sd
    half = Z95 * s / math.sqrt(n)
    return -half, half
