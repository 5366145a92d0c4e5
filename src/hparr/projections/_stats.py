"""Per-layer hyperplane statistics (docs/method.md §2) and the bias tests against the null of §3: pure functions
of weight tensors or arrays, in float64, that read and write no file.

The standard deviation is the population one (ddof=0). The bias test of a layer combines a two-sided
exact binomial test of its number of filters with projection <= 0 against Binomial(N, 1/2) (exact for every
symmetric initialization) and a Kolmogorov-Smirnov test of its normalized projections against the null of the
law its weights were drawn from (`hparr.null`): for Gaussian weights the exact (1 + t)/2 ~ Beta((d-1)/2,
(d-1)/2), the cosine of a uniformly random direction in R^d (`beta`); for uniform weights (PyTorch's default,
kaiming and xavier uniform) or a normal truncated near its center, that law plus its deviation of order 1/d,
which a KS test on thousands of filters does see for small d. The layer's p-value is min(1, 2 x the smaller of
the two); a layer is biased when its Holm-adjusted p-value (over the layers of the network) is <= the level, so
the chance that any layer of an untrained network is called biased is at most the level (docs/method.md §3.3
gives the measured rates).
"""
from __future__ import annotations

import math
from typing import Any, Sequence

import numpy as np
import torch
from scipy import stats

from .. import null
from ..errors import HparrError

try:  # scipy's Durbin matrix evaluation of the exact KS law (see `ks_sf`); private to scipy, hence guarded
    from scipy.stats._ksstats import _kolmogn_DMTW
except ImportError:  # a scipy without it: its public `kstwo` alone, slower, gives the same law
    _kolmogn_DMTW = None

CORRECTION = "holm"
STD_DDOF = 0


def filter_matrix(weight) -> torch.Tensor:
    """A layer's weight as an (N, d) float64 tensor: one row per output filter (or Linear output)."""
    w = torch.as_tensor(weight).detach()
    if w.dim() < 2:
        raise HparrError(f"a weight needs at least 2 dimensions (filters, inputs...), got shape {tuple(w.shape)}")
    return w.reshape(w.shape[0], -1).to(torch.float64)


def sums_and_cosines(weight) -> tuple[np.ndarray, np.ndarray, int]:
    f = filter_matrix(weight)
    d = f.shape[1]
    sums = f.sum(dim=1).cpu().numpy()
    norms = torch.linalg.vector_norm(f, dim=1).cpu().numpy()
    # a filter of zeros has no orientation: its cosine is taken as 0 (it counts as <= 0)
    cos = np.divide(sums, norms * math.sqrt(d), out=np.zeros_like(sums), where=norms > 0)
    return sums, cos, d


def projections(weight, normalize: bool = True) -> np.ndarray:
    """p_j = <w_j, 1>, or with `normalize` the cosine <w_j, 1> / (||w_j||_2 sqrt(d)), one per filter."""
    sums, cos, _ = sums_and_cosines(weight)
    return cos if normalize else sums


def summarize(p) -> dict[str, float]:
    """mean, std (population, ddof=0), mass (fraction <= 0), n_negative and N of projections `p`."""
    p = np.asarray(p, dtype=np.float64).ravel()
    if p.size == 0:
        raise HparrError("no projections to summarize")
    negative = int(np.count_nonzero(p <= 0))
    return {"N": int(p.size), "mean": float(p.mean()), "std": float(p.std(ddof=STD_DDOF)),
            "mass": negative / p.size, "n_negative": negative}


def distances(weight, init_weight) -> dict[str, float]:
    """l2_dist = ||W - W0||_F / ||W0||_F and l_inf_dist = max|W - W0| / max|W0| (docs/method.md §2)."""
    w = torch.as_tensor(weight).detach().to(torch.float64)
    w0 = torch.as_tensor(init_weight).detach().to(device=w.device, dtype=torch.float64)
    if w.shape != w0.shape:
        raise HparrError(f"initial weight has shape {tuple(w0.shape)}, not {tuple(w.shape)}")
    diff = w - w0
    return {"l2_dist": float(torch.linalg.vector_norm(diff) / torch.linalg.vector_norm(w0)),
            "l_inf_dist": float(diff.abs().max() / w0.abs().max())}


def bias_tests(cosines, d: int, null_name: str = null.BETA) -> dict[str, float]:
    """p-values of one layer under the null of docs/method.md §3.

    p_sign: two-sided exact binomial test of #(cosine <= 0) against Binomial(N, 1/2);
    p_ks: Kolmogorov-Smirnov test of the cosines against the CDF of the null `null_name` in dimension d
    (`null.cdf`; `beta`, the default, is `null.distribution(d)`), NaN when d < 2;
    p_value: min(1, k x the smallest of the k available p-values).
    """
    return bias_tests_of_layers([(cosines, d)], [null_name])[0]


def bias_tests_of_layers(layers: Sequence[tuple[Any, int]],
                         nulls: Sequence[str] | None = None) -> list[dict[str, float]]:
    """`bias_tests` of many layers, (cosines, d) each with its null in `nulls` (all `beta` when None), with
    one evaluation of each law for all of them.

    The values are those of `scipy.stats.binomtest(K, N, 0.5)` and `scipy.stats.kstest(cosines, F)` (exact
    mode) with F the null's CDF (`null.distribution(d).cdf` for `beta`), to the last bit or within a few units
    of it (see `sign_pvalues` and `ks_sf`); tests check this for every small layer size.
    """
    nulls = [null.BETA] * len(layers) if nulls is None else list(nulls)
    if len(nulls) != len(layers):
        raise ValueError(f"{len(nulls)} nulls for {len(layers)} layers")
    cos = [np.asarray(c, dtype=np.float64).ravel() for c, _ in layers]
    p_sign = sign_pvalues([np.count_nonzero(c <= 0) for c in cos], [c.size for c in cos]).tolist()
    p_ks = [float("nan")] * len(layers)
    for name in dict.fromkeys(nulls):  # the layers of one null at once
        tested = [i for i, (_, d) in enumerate(layers) if d >= 2 and nulls[i] == name]
        if not tested:
            continue
        x = [np.sort(cos[i]) for i in tested]
        sizes = [c.size for c in x]
        f = null.cdf(np.concatenate(x), np.repeat([layers[i][1] for i in tested], sizes), name)
        stat = [ks_statistic(part) for part in np.split(f, np.cumsum(sizes)[:-1])]
        p = ks_sf(stat, sizes)
        for i, value in zip(tested, p.tolist()):
            p_ks[i] = value
    out = []
    for ps, pk in zip(p_sign, p_ks):
        available = [p for p in (ps, pk) if not math.isnan(p)]
        out.append({"p_sign": ps, "p_ks": pk, "p_value": min(1.0, len(available) * min(available))})
    return out


def sign_pvalues(negative, n) -> np.ndarray:
    """Two-sided exact binomial test of K = `negative` filters <= 0 among N = `n` against Binomial(N, 1/2),
    elementwise. That law is symmetric, so the outcomes no likelier than K are those at most min(K, N - K)
    and their mirror images: p = min(1, 2 P(X <= min(K, N - K))), and 1 at K = N/2 (`scipy.stats.binomtest`'s
    p-value to within 2e-15, in one call for many layers)."""
    k, n = np.asarray(negative), np.asarray(n)
    p = np.minimum(1.0, 2 * stats.binom.cdf(np.minimum(k, n - k), n, 0.5))
    return np.where(2 * k == n, 1.0, p)


def ks_sf(stat, n) -> np.ndarray:
    """P(D_N >= D): the exact law of the two-sided KS statistic D of N values (`scipy.stats.kstwo.sf`, the
    law of `kstest`'s exact mode), elementwise. Where scipy evaluates it by Pomeranz's recursion (N <= 140,
    1 < ND < N - 1, D < 1/2 and 0.754693 < ND^2 <= 4; a Python loop of 2N + 2 steps, near a millisecond for
    N = 64), scipy's Durbin matrix evaluation of the same law (Marsaglia, Tsang & Wang 2003) is used
    instead: ten times faster, and equal to within 1e-13 there, where the p-values are above 3e-4. That function
    is private to scipy; where a scipy lacks it, `kstwo.sf` serves every N (a test checks every N of that range,
    with and without it)."""
    stat, n = np.broadcast_arrays(np.asarray(stat, dtype=np.float64), np.asarray(n))
    shape, stat, n = stat.shape, stat.ravel(), n.ravel()
    t = n * stat
    durbin = (n <= 140) & (t > 1) & (t < n - 1) & (stat < 0.5) & (t * stat > 0.754693) & (t * stat <= 4)
    if _kolmogn_DMTW is None:
        durbin[:] = False
    p = np.empty(stat.shape)
    if not durbin.all():
        p[~durbin] = stats.kstwo.sf(stat[~durbin], n[~durbin])
    for i in np.flatnonzero(durbin):
        p[i] = _kolmogn_DMTW(int(n[i]), float(stat[i]), cdf=False)
    return np.clip(p, 0.0, 1.0).reshape(shape)


def ks_statistic(cdf) -> float:
    """D = max(D+, D-) = sup_t |F_N(t) - F(t)| of a sample, from the null CDF F at its sorted values `cdf`."""
    cdf = np.asarray(cdf, dtype=np.float64)
    n = cdf.size
    d_plus = float((np.arange(1.0, n + 1) / n - cdf).max())
    d_minus = float((cdf - np.arange(0.0, n) / n).max())
    return d_plus if d_plus > d_minus else d_minus


def holm(pvalues) -> np.ndarray:
    """Holm's step-down adjusted p-values (NaN entries stay NaN and do not count)."""
    p = np.asarray(pvalues, dtype=np.float64)
    out = np.full(p.shape, np.nan)
    idx = np.flatnonzero(~np.isnan(p))
    order = idx[np.argsort(p[idx], kind="stable")]
    m = len(order)
    running = 0.0
    for rank, i in enumerate(order):
        running = max(running, min(1.0, (m - rank) * p[i]))
        out[i] = running
    return out
