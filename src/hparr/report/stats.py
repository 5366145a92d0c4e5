"""The report's statistics, pure functions of numbers: the Student-t interval of a mean over seeds, Spearman's
rank correlation (one helper over paired values, one vectorized for permutation tests), the correlation of bias
and criticality pooled over seeds (bootstrap interval, permutation p-value), the correlation across cells (Fisher-z
interval), the binomial test of an accuracy against chance, and the verdict that every claim line words from an
interval and a p-value. Every random draw comes from a numpy Generator seeded by the caller (STATS_SEED by
default)."""
from __future__ import annotations

import math
from typing import Any, Mapping, Sequence

import numpy as np
from scipy import stats

from ..defaults import LEVEL

CONFIDENCE = 0.95
N_BOOTSTRAP = 10_000
N_PERMUTATIONS = 9_999
STATS_SEED = 0


def t_interval(values: Sequence[float], confidence: float = CONFIDENCE,
               bounds: tuple[float, float] | None = None) -> dict[str, float]:
    """Mean of the finite `values` with its Student-t interval: mean +/- t(n-1) sd / sqrt(n) (NaN for n < 2),
    cut to `bounds` (the range the quantity can take, e.g. (0, 1) for a share)."""
    x = np.asarray([v for v in values if v is not None and np.isfinite(v)], dtype=float)
    n = len(x)
    mean = float(x.mean()) if n else float("nan")
    if n < 2:
        return {"mean": mean, "low": float("nan"), "high": float("nan"), "n": n}
    half = float(stats.t.ppf(0.5 + confidence / 2, n - 1) * x.std(ddof=1) / math.sqrt(n))
    low, high = mean - half, mean + half
    if bounds is not None:
        low, high = max(low, bounds[0]), min(high, bounds[1])
    return {"mean": mean, "low": low, "high": high, "n": n}


def spearman(x: Sequence[float], y: Sequence[float], names: tuple[str, str] = ("x", "y"),
             unit: str = "point") -> dict[str, Any]:
    """Spearman's rho of the pairs where both values are finite, with scipy's two-sided p-value (scipy.stats.
    spearmanr). With fewer than 3 pairs, or a side that is the same everywhere, rho and p are NaN and `note`
    says why, naming the sides `names` and the pairs `unit`."""
    x, y = np.asarray(x, dtype=float), np.asarray(y, dtype=float)
    ok = np.isfinite(x) & np.isfinite(y)
    x, y = x[ok], y[ok]
    out: dict[str, Any] = {"rho": float("nan"), "p_value": float("nan"), "n": int(len(x)), "note": None}
    if len(x) < 3:
        out["note"] = f"{len(x)} {unit}(s) have both a {names[0]} and a {names[1]}; at least 3 are needed"
    elif np.ptp(x) == 0 or np.ptp(y) == 0:
        out["note"] = f"the {names[0] if np.ptp(x) == 0 else names[1]} is the same for every {unit}: no ranking"
    else:
        res = stats.spearmanr(x, y)
        out["rho"], out["p_value"] = float(res.statistic), float(res.pvalue)
    return out


def rank_correlation(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Spearman's rho along the last axis (average ranks for ties; NaN when either side is constant), for
    many rows at once (the per-seed rhos and the permutation test of `pooled_spearman`)."""
    rx = stats.rankdata(np.asarray(x, dtype=float), axis=-1)
    ry = stats.rankdata(np.asarray(y, dtype=float), axis=-1)
    rx = rx - rx.mean(axis=-1, keepdims=True)
    ry = ry - ry.mean(axis=-1, keepdims=True)
    with np.errstate(invalid="ignore", divide="ignore"):
        return (rx * ry).sum(axis=-1) / np.sqrt((rx * rx).sum(axis=-1) * (ry * ry).sum(axis=-1))


def pooled_spearman(groups: Mapping[Any, tuple[Sequence[float], Sequence[float]]], seed: int = STATS_SEED,
                    n_bootstrap: int = N_BOOTSTRAP, n_permutations: int = N_PERMUTATIONS) -> dict[str, Any]:
    """The pooled correlation of bias and criticality over seeds.

    `groups`: {seed: (bias per layer, drop per layer)}. Layers with a missing value in any seed are left out
    (the permutation test needs the same layers in each seed); a seed whose bias or drop is constant has no
    rho and is left out. Returns the per-seed rhos, their mean (`rho`), its 95% percentile bootstrap interval
    resampling seeds, and the two-sided permutation p-value of the mean under shuffles of the layers within
    each seed (exact when the shuffles number at most `n_permutations`).
    """
    out: dict[str, Any] = {"rho": float("nan"), "low": float("nan"), "high": float("nan"),
                           "p_value": float("nan"), "per_seed": {}, "n_seeds": 0, "n_layers": 0, "exact": None,
                           "note": None}
    keys = list(groups)
    if not keys:
        out["note"] = "no seed"
        return out
    xs = [np.asarray(groups[k][0], dtype=float) for k in keys]
    ys = [np.asarray(groups[k][1], dtype=float) for k in keys]
    if len({len(x) for x in xs + ys}) != 1:
        raise ValueError("every seed needs the same layers")
    keep = np.logical_and.reduce([np.isfinite(x) & np.isfinite(y) for x, y in zip(xs, ys)])
    xs, ys = [x[keep] for x in xs], [y[keep] for y in ys]
    out["n_layers"] = int(keep.sum())
    if out["n_layers"] < 3:
        out["note"] = f"{out['n_layers']} layer(s) have a bias and a drop in every seed; at least 3 are needed"
        return out
    rhos = {k: float(rank_correlation(x, y)) for k, x, y in zip(keys, xs, ys)}
    out["per_seed"] = rhos
    used = [i for i, k in enumerate(keys) if np.isfinite(rhos[k])]
    out["n_seeds"] = len(used)
    if not used:
        out["note"] = "the bias or the drop is the same for every layer in every seed: no ranking"
        return out
    xs, ys = [xs[i] for i in used], [ys[i] for i in used]
    values = np.array([rhos[keys[i]] for i in used])
    out["rho"] = float(values.mean())
    if len(used) >= 2:
        ci = stats.bootstrap((values,), np.mean, n_resamples=n_bootstrap, confidence_level=CONFIDENCE,
                             method="percentile", rng=np.random.default_rng(seed)).confidence_interval
        out["low"], out["high"] = float(ci.low), float(ci.high)
    else:
        out["note"] = "one seed: no interval over seeds"

    def statistic(*drops, axis=-1):
        return np.mean([rank_correlation(x, d) for x, d in zip(xs, drops)], axis=0)

    test = stats.permutation_test(tuple(ys), statistic, permutation_type="pairings", vectorized=True,
                                  n_resamples=n_permutations, alternative="two-sided",
                                  rng=np.random.default_rng(seed))
    out["p_value"] = float(test.pvalue)
    out["exact"] = len(test.null_distribution) < n_permutations or \
        math.factorial(out["n_layers"]) ** len(used) <= n_permutations
    return out


def spearman_across(x: Sequence[float], y: Sequence[float], confidence: float = CONFIDENCE) -> dict[str, Any]:
    """`spearman` over paired finite values, with a Fisher-z interval tanh(atanh(rho) +/- z sqrt(1.06 / (n - 3)))
    (NaN for n < 4)."""
    r = spearman(x, y)
    out = {"rho": r["rho"], "p_value": r["p_value"], "low": float("nan"), "high": float("nan"), "n": r["n"]}
    n = r["n"]
    if not np.isfinite(out["rho"]) or n <= 3:
        return out
    if abs(out["rho"]) < 1:
        z, se = math.atanh(out["rho"]), math.sqrt(1.06 / (n - 3))
        q = float(stats.norm.ppf(0.5 + confidence / 2))
        out["low"], out["high"] = math.tanh(z - q * se), math.tanh(z + q * se)
    else:
        out["low"] = out["high"] = out["rho"]
    return out


def not_above_chance(top1: float, count: int, num_classes: int, level: float = LEVEL) -> bool:
    """Whether a test top-1 (percent, over `count` images) is not above chance (1 / `num_classes`): the
    one-sided exact binomial test of its correct count against Binomial(count, 1 / num_classes) does not
    reject at `level`."""
    correct = int(round(top1 * count / 100))
    return bool(stats.binomtest(correct, count, 1 / num_classes, alternative="greater").pvalue >= level)


# the words of a verdict: (above 0, below 0, neither), for a claim that wants the quantity above 0 and for a
# claim of a change in either direction
CLAIM_WORDS = ("supported", "contradicted", "not supported by this data")
CHANGE_WORDS = ("changes it", "changes it", "no change detected")


def verdict(low: float, high: float, p_value: float | None = None, level: float = LEVEL, up: str = "",
            down: str = "", too_few: str = "too few seeds for an interval",
            words: tuple[str, str, str] = CLAIM_WORDS) -> str:
    """What a 95% interval [low, high] (and, when given, a p-value at `level`) says about a quantity, in bold
    Markdown: words[0] (with `up`) when the interval lies above 0, words[1] (with `down`) below 0, each also
    needing p < level when a p-value is given; words[2] otherwise; undetermined without an interval."""
    if not (np.isfinite(low) and np.isfinite(high)):
        return f"**undetermined**: {too_few}"
    significant = p_value is None or p_value < level
    if low > 0 and significant:
        return f"**{words[0]}**" + (f": {up}" if up else "")
    if high < 0 and significant:
        return f"**{words[1]}**" + (f": {down}" if down else "")
    return f"**{words[2]}**" + ("" if p_value is not None else ": the 95% interval includes 0")
