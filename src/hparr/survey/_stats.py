"""The statistics of the survey (docs/survey.md "The tests"): pure float64 functions of counts and arrays, no torch,
no file. Each names the scipy call it matches; tests/test_survey.py checks them against plain loops.

Two groups of layers are compared: those whose input is non-negative and the rest (both signs). A layer's bias
is read two ways: whether its test called it biased (a count, compared as a share), and its deviation
|mass - 1/2| (a number, compared as a mean). Across layers the layers of one network are not independent draws,
so the comparison is also made within networks, paired: one difference per network that has layers of both
groups.
"""
from __future__ import annotations

import math
from typing import Any, Sequence

import numpy as np
from scipy import stats

LEVEL = 0.95  # the confidence of every interval
RESAMPLES = 9_999  # permutations of a Monte-Carlo permutation test, when the exact one has more arrangements


def _nan_interval() -> tuple[float, float]:
    return float("nan"), float("nan")


def proportion_ci(k: int, n: int, level: float = LEVEL) -> tuple[float, float]:
    """Clopper-Pearson interval of a share k/n: [B(a/2; k, n-k+1), B(1-a/2; k+1, n-k)] with B the Beta quantile,
    0 and 1 at the ends (`scipy.stats.binomtest(k, n).proportion_ci(level, method="exact")`); NaN when n = 0."""
    if n == 0:
        return _nan_interval()
    ci = stats.binomtest(int(k), int(n)).proportion_ci(confidence_level=level, method="exact")
    return float(ci.low), float(ci.high)


def mean_ci(x: Sequence[float], level: float = LEVEL) -> tuple[float, float, float]:
    """(mean, low, high): the t interval mean +/- t_{n-1, (1+level)/2} s / sqrt(n), s the sample sd (ddof=1)
    (`scipy.stats.ttest_1samp(x, 0).confidence_interval(level)`); the interval is NaN for fewer than 2 values."""
    x = np.asarray(x, dtype=np.float64)
    if x.size == 0:
        return (float("nan"), *_nan_interval())
    mean = float(x.mean())
    if x.size < 2:
        return (mean, *_nan_interval())
    if np.all(x == x[0]):
        return mean, mean, mean
    ci = stats.ttest_1samp(x, 0.0).confidence_interval(confidence_level=level)
    return mean, float(ci.low), float(ci.high)


def compare_shares(k1: int, n1: int, k2: int, n2: int, level: float = LEVEL) -> dict[str, Any]:
    """The shares k1/n1 and k2/n2 (biased layers among non-negative-input layers, and among the rest), each with
    its Clopper-Pearson interval, their difference, and two exact two-sided tests of equal shares on the 2x2
    table [[k1, n1-k1], [k2, n2-k2]]: Fisher's (conditional on both margins; `scipy.stats.fisher_exact`, p the
    sum of the hypergeometric probabilities no larger than the observed one) and Boschloo's (unconditional,
    more powerful; `scipy.stats.boschloo_exact`). NaN where a group is empty."""
    out: dict[str, Any] = {"k1": int(k1), "n1": int(n1), "k2": int(k2), "n2": int(n2)}
    for i, (k, n) in enumerate(((k1, n1), (k2, n2)), 1):
        out[f"share{i}"] = k / n if n else float("nan")
        out[f"share{i}_low"], out[f"share{i}_high"] = proportion_ci(k, n, level)
    out["difference"] = out["share1"] - out["share2"]
    if n1 and n2:
        table = [[k1, n1 - k1], [k2, n2 - k2]]
        out["p_fisher"] = float(stats.fisher_exact(table).pvalue)
        # Boschloo's p-value is a maximum over the nuisance share: with an empty row or column it is 1
        out["p_boschloo"] = 1.0 if 0 in (k1 + k2, n1 + n2 - k1 - k2) else \
            float(min(1.0, stats.boschloo_exact(table).pvalue))
    else:
        out["p_fisher"] = out["p_boschloo"] = float("nan")
    return out


def welch_ci(x: Sequence[float], y: Sequence[float], level: float = LEVEL) -> tuple[float, float]:
    """Welch's interval of mean(x) - mean(y): the difference +/- t_{v, (1+level)/2} se, with se^2 = s1^2/n1 +
    s2^2/n2 (sample variances, ddof=1) and the Welch-Satterthwaite degrees of freedom v = se^4 / ((s1^2/n1)^2 /
    (n1-1) + (s2^2/n2)^2 / (n2-1)) (`scipy.stats.ttest_ind(x, y, equal_var=False).confidence_interval(level)`);
    the difference itself when both samples are constant, NaN with fewer than 2 values in a sample."""
    x, y = np.asarray(x, dtype=np.float64), np.asarray(y, dtype=np.float64)
    if x.size < 2 or y.size < 2:
        return _nan_interval()
    diff = float(x.mean() - y.mean())
    a, b = x.var(ddof=1) / x.size, y.var(ddof=1) / y.size
    if a + b <= 1e-30 * max(1.0, diff * diff):
        return diff, diff
    df = (a + b) ** 2 / (a * a / (x.size - 1) + b * b / (y.size - 1))
    half = float(stats.t.ppf((1 + level) / 2, df) * math.sqrt(a + b))
    return diff - half, diff + half


def _abs_mean_difference(x, y, axis=-1):
    return np.abs(np.mean(x, axis=axis) - np.mean(y, axis=axis))


def compare_means(x: Sequence[float], y: Sequence[float], level: float = LEVEL, resamples: int = RESAMPLES,
                  seed: int = 0) -> dict[str, Any]:
    """mean(x) - mean(y) (mean |mass - 1/2| of the non-negative-input layers minus that of the rest) with Welch's
    t interval (`welch_ci`), and a two-sided
    permutation test of the difference of means: p is the share of the C(n1 + n2, n1) relabellings whose
    |difference| is at least the observed one (`scipy.stats.permutation_test` of the statistic |difference|,
    independent samples, alternative "greater"). It is exact when
    there are at most `resamples` relabellings, else a Monte-Carlo estimate from `resamples` of them drawn with
    `numpy.random.default_rng(seed)` (`exact` says which). NaN where a group is empty."""
    x, y = np.asarray(x, dtype=np.float64), np.asarray(y, dtype=np.float64)
    out: dict[str, Any] = {"n1": int(x.size), "n2": int(y.size)}
    out["mean1"], out["mean1_low"], out["mean1_high"] = mean_ci(x, level)
    out["mean2"], out["mean2_low"], out["mean2_high"] = mean_ci(y, level)
    out["difference"] = out["mean1"] - out["mean2"]
    out["difference_low"] = out["difference_high"] = out["p_permutation"] = float("nan")
    out["exact"] = None
    if x.size and y.size:
        if x.size >= 2 and y.size >= 2:
            out["difference_low"], out["difference_high"] = welch_ci(x, y, level)
        arrangements = math.comb(x.size + y.size, x.size)
        exact = arrangements <= resamples
        res = stats.permutation_test((x, y), _abs_mean_difference, permutation_type="independent",
                                     vectorized=True, n_resamples=math.inf if exact else resamples,
                                     alternative="greater",
                                     rng=np.random.default_rng(seed))
        out["p_permutation"] = float(min(1.0, res.pvalue))
        out["exact"] = bool(exact)
    return out


def paired_differences(d: Sequence[float], level: float = LEVEL) -> dict[str, Any]:
    """Tests of paired differences d_i (one per network: its non-negative-input layers minus its others) against 0:
    their mean with its t interval (`mean_ci`); the exact two-sided sign test, K = #(d_i > 0) among the nonzero
    d_i against Binomial(n, 1/2) (`scipy.stats.binomtest(K, n, 0.5)`); and Wilcoxon's signed-rank test
    (`scipy.stats.wilcoxon(d, zero_method="wilcox")`, zeros dropped; exact when the nonzero |d_i| have no ties,
    else its normal approximation: `wilcoxon_method` says which). NaN where there are too few differences."""
    d = np.asarray(d, dtype=np.float64)
    nonzero = d[d != 0]
    out: dict[str, Any] = {"n": int(d.size), "n_positive": int(np.count_nonzero(d > 0)),
                           "n_negative": int(np.count_nonzero(d < 0))}
    out["mean"], out["mean_low"], out["mean_high"] = mean_ci(d, level)
    out["p_sign"] = float(stats.binomtest(out["n_positive"], nonzero.size, 0.5).pvalue) if nonzero.size else \
        float("nan")
    out["p_wilcoxon"], out["wilcoxon_method"] = float("nan"), None
    if nonzero.size:
        ties = np.unique(np.abs(nonzero)).size < nonzero.size
        method = "approx" if ties else "exact"
        out["p_wilcoxon"] = float(stats.wilcoxon(nonzero, zero_method="wilcox", method=method).pvalue)
        out["wilcoxon_method"] = method
    return out
