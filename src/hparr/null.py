"""The null of docs/method.md §3: the statistics of a layer of random (untrained) filters. No torch.

The cosine t = <w, 1> / (||w|| sqrt(d)) of a d-dimensional filter with i.i.d. symmetric weights does not
depend on their scale, only on the shape of their law (the *entries' law*):

- `gaussian` (every normal scheme: kaiming/xavier normal, N(0, s^2), a truncation far in the tails): exactly
  (1 + t)/2 ~ Beta((d-1)/2, (d-1)/2) (§3.3). `distribution(d)` is that law on [-1, 1] (the report draws its
  density); its null is called `beta`.
- `uniform` (every uniform scheme: PyTorch's default kaiming_uniform_(a=sqrt(5)), kaiming/xavier uniform):
  the Beta law plus a correction of order 1/d (§3.3, "Other initializations").
- `truncnorm(c)`: a normal truncated at +/- c of its standard deviations (timm's trunc_normal_tf_, c = 2).

`null_label(law, d)` names the null the KS test uses for a layer (`beta`, `uniform`, `truncnorm(2)`), and
`cdf(t, d, null)` is its CDF. For a law other than the Gaussian, the CDF is the Beta CDF plus a deviation:
for d < `TABLE_BELOW`, a table of the empirical CDF of `TABLE_DRAWS` simulated filters (fixed seed,
computed once per (law, d), kept in memory and in `layout.cache_dir()`); from `TABLE_BELOW` on, the first
term of the Edgeworth expansion of Student's t statistic in the excess kurtosis of the entries. Both are
within `PRECISION` of the true CDF (sup norm), docs/method.md §3.3 gives the measurements.

The count of filters with t <= 0 among N is Binomial(N, 1/2) for every symmetric continuous law, so the
mass has mean 1/2 and sd 1/(2 sqrt(N)); the mean of N cosines has mean 0 and sd sqrt(1/d) / sqrt(N) (the
variance of t is 1/d for every symmetric law). The bands are 95% (+/- 1.96 sd).
"""
from __future__ import annotations

import functools
import json
import math
import re
import threading
import zlib
from dataclasses import dataclass

import numpy as np

from . import files
from .errors import HparrError, UsageError

Z95 = 1.959963984540054

# --- entry laws, nulls and initialization schemes ----------------------------------------------------

GAUSSIAN, UNIFORM = "gaussian", "uniform"
BETA = "beta"  # the null of Gaussian entries (and the only null of results written before nulls were recorded)
_TRUNCNORM = re.compile(r"truncnorm\(([0-9.eE+]+)\)$")

# the initialization schemes `--init-scheme` accepts, and the law of the entries each one draws (up to scale)
SCHEMES = {
    "pytorch": UNIFORM,  # PyTorch's default for Conv and Linear layers: kaiming_uniform_(a=sqrt(5))
    "kaiming_uniform": UNIFORM,
    "xavier_uniform": UNIFORM,
    "uniform": UNIFORM,
    "kaiming_normal": GAUSSIAN,
    "xavier_normal": GAUSSIAN,
    "normal": GAUSSIAN,
    "trunc_normal": GAUSSIAN,  # timm's and torch's trunc_normal_(std=.02, a=-2, b=2): cut at 100 sd
    "trunc_normal_tf": "truncnorm(2)",  # timm's trunc_normal_tf_: cut at 2 sd
}
DEFAULT_SCHEME = "pytorch"  # what a layer of unknown origin is assumed to be: PyTorch's default

TABLE_BELOW = 64  # d below this: a Monte-Carlo table; from here on, the Edgeworth term
TABLE_DRAWS = 2 ** 23  # filters simulated per table
TABLE_SEED = 20261203
TABLE_POINTS = 1024  # the table holds the deviation at the Beta quantiles k / TABLE_POINTS
TABLE_VERSION = 2  # changes with anything that changes a table's numbers (the cache keys on it)
PRECISION = 1e-3  # every CDF of `cdf` is within this of the true one (sup norm); docs/method.md §3.3
NEGLIGIBLE = 1e-9  # a truncation whose total variation from the Gaussian (for the whole filter) is below this
# is the Gaussian: d * P(|Z| > c) bounds it


def truncnorm_law(c: float) -> str:
    """The entries' law of a normal truncated at +/- `c` standard deviations."""
    return f"truncnorm({float(c):g})"


def truncation(law: str) -> float | None:
    """The `c` of a `truncnorm(c)` law, else None."""
    m = _TRUNCNORM.match(law)
    return float(m.group(1)) if m else None


def check_law(law: str) -> str:
    """`law` if it names an entries' law (gaussian, uniform, truncnorm(c) with c > 0), else ValueError."""
    c = truncation(law)
    if law in (GAUSSIAN, UNIFORM) or (c is not None and c > 0):
        return law
    raise ValueError(f"unknown law of the weights {law!r}: gaussian, uniform or truncnorm(C) with C > 0")


def law_of_scheme(scheme: str) -> str:
    """The entries' law of an initialization scheme (`SCHEMES`) or of a law named directly; ValueError else."""
    if scheme in SCHEMES:
        return SCHEMES[scheme]
    try:
        return check_law(scheme)
    except ValueError:
        raise ValueError(f"unknown initialization scheme {scheme!r}; choose from {', '.join(SCHEMES)}, or name "
                         "the law of the weights: gaussian, uniform or truncnorm(C) (a normal cut at +/- C "
                         "standard deviations)") from None


def check_scheme(scheme: str, flag: str = "--init-scheme") -> str:
    """`scheme` if `law_of_scheme` knows it, else a UsageError naming `flag`."""
    try:
        law_of_scheme(scheme)
    except ValueError as exc:
        raise UsageError(f"{flag}: {exc}") from None
    return scheme


def null_label(law: str, d: int) -> str:
    """The null of the KS test for filters of `d` weights drawn from `law`: `beta` for the Gaussian (and a
    truncation whose effect on the whole filter is below `NEGLIGIBLE` in total variation), else the law."""
    c = truncation(check_law(law))
    if law == GAUSSIAN or (c is not None and d * 2 * ndtr(-c) <= NEGLIGIBLE):
        return BETA
    return law


def describe(null: str) -> str:
    """What a null label means, in words."""
    if null == BETA:
        return "Beta((d-1)/2, (d-1)/2) of (1 + t)/2: i.i.d. Gaussian weights (exact)"
    if null == UNIFORM:
        return (f"i.i.d. uniform weights (Monte-Carlo table for d < {TABLE_BELOW}, Edgeworth term above; "
                f"within {PRECISION:g})")
    c = truncation(null)
    if c is not None:
        return (f"i.i.d. normal weights truncated at +/- {c:g} sd (Monte-Carlo table for d < {TABLE_BELOW}, "
                f"Edgeworth term above; within {PRECISION:g})")
    raise ValueError(f"unknown null {null!r}")


def ndtr(x: float) -> float:
    """The standard normal CDF (`scipy.special.ndtr`), without importing scipy."""
    return 0.5 * math.erfc(-x / math.sqrt(2))


def note(doc) -> list[str]:
    """What the report says of the nulls of a projection document (a Markdown paragraph and a blank line, or
    nothing without a document): the null of its layers, and where one was assumed, which and what it means."""
    entries = [e for k, v in (doc.items() if isinstance(doc, dict) else ()) if k.isdigit() and isinstance(v, dict)
               for e in v.values() if isinstance(e, dict)]
    if not any("p_ks" in e for e in entries):  # no document, or one without tests (the original code's)
        return []
    if "init_scheme" not in doc:
        return ["KS null: the Beta law of Gaussian weights for every layer (these results predate nulls that "
                "follow the initialization: for uniform initial weights, such as PyTorch's default, it is off by "
                "O(1/d); docs/method.md §3.3).", ""]
    counts: dict[str, int] = {}
    for entry in entries:
        counts[entry.get("null", BETA)] = counts.get(entry.get("null", BETA), 0) + 1
    used = ", ".join(f"{name} ({n} layer{'s' if n > 1 else ''})" for name, n in counts.items())
    text = f"KS null, from the law of each layer's initial weights (docs/method.md §3.3): {used}."
    assumed = doc.get("null_assumed") or []
    if assumed:
        scheme = doc["init_scheme"]
        text += (f" The initialization of {len(assumed)} layer(s) is not recorded ({', '.join(assumed[:6])}"
                 f"{' ...' if len(assumed) > 6 else ''}): their null assumes --init-scheme {scheme} "
                 f"({law_of_scheme(scheme)} weights). If they were drawn otherwise, the KS p-values of their small "
                 "filters are off (by O(1/d) in the CDF); analyze them with --arch, or give --init-scheme.")
    return [text, ""]


# --- the laws --------------------------------------------------------------------------------------

@functools.lru_cache(maxsize=256)
def distribution(d: int):
    """The law of the normalized projection of a random d-dimensional filter with Gaussian weights (d >= 2),
    a frozen scipy distribution on [-1, 1]: `beta((d-1)/2, (d-1)/2, loc=-1, scale=2)` (built once per d:
    freezing a scipy distribution costs more than the test that uses it)."""
    from scipy import stats  # start-up time: scipy.stats only where a law is evaluated

    if d < 2:
        raise ValueError(f"the null needs d >= 2, got {d}")
    a = (d - 1) / 2
    return stats.beta(a, a, loc=-1, scale=2)


def cdf(t, d, null: str = BETA):
    """The CDF of the null `null` (a label of `null_label`) at `t`, elementwise over arrays of `t` and `d`
    (each d >= 2). For `beta`, `scipy.stats.beta.cdf(t, a, a, loc=-1, scale=2)` with a = (d-1)/2 (the values
    of `distribution(d).cdf(t)`, in one call for the filters of many layers); for another null, that plus the
    deviation of `deviation(null, d)`."""
    from scipy import stats  # start-up time, as above

    a = (np.asarray(d, dtype=np.float64) - 1) / 2
    p = stats.beta.cdf(t, a, a, loc=-1, scale=2)
    if null == BETA:
        return p
    p = np.array(p, dtype=np.float64)
    t, dims = np.broadcast_arrays(np.asarray(t, dtype=np.float64), np.asarray(d))
    for dim in np.unique(dims):
        at = dims == dim
        p[at] = deviation(null, int(dim)).apply(p[at], t[at])
    return p[()]


def density(t, d: int, null: str = BETA) -> np.ndarray:
    """The density of the null `null` for filters of `d` weights on the increasing grid `t` (what the report's
    histograms draw): for `beta`, `scipy.stats.beta.pdf(t, a, a, loc=-1, scale=2)` with a = (d-1)/2; for
    another null, the slope of its `cdf` on the grid (`numpy.gradient`), which integrates to that CDF's rise."""
    t = np.asarray(t, dtype=np.float64)
    if null == BETA:
        return distribution(d).pdf(t)
    return np.gradient(cdf(t, d, null), t)


def kurtosis(law: str) -> float:
    """The excess kurtosis of the entries' law: 0 for the Gaussian, -6/5 for the uniform, that of
    `scipy.stats.truncnorm(-c, c)` for a truncation at c."""
    if law == GAUSSIAN:
        return 0.0
    if law == UNIFORM:
        return -1.2
    from scipy import stats  # start-up time, as above

    c = truncation(check_law(law))
    return float(stats.truncnorm(-c, c).stats(moments="k"))


@dataclass(frozen=True)
class Edgeworth:
    """F(t) = F_beta(t) + kappa / (12 d) He3(T) phi(T), T = sqrt(d - 1) t / sqrt(1 - t^2): the first term in
    1/d of the Edgeworth expansion of Student's t statistic T of d i.i.d. symmetric values with excess kurtosis
    kappa (Hall 1987, "Edgeworth expansion for Student's t statistic under minimal moment conditions"),
    beyond its Gaussian law (which the Beta CDF is); the error is O(1/d^2) (docs/method.md §3.3)."""

    law: str
    d: int
    kappa: float

    def apply(self, p: np.ndarray, t: np.ndarray) -> np.ndarray:
        from scipy import stats  # start-up time, as above

        with np.errstate(divide="ignore", invalid="ignore"):
            big_t = np.sqrt(self.d - 1) * t / np.sqrt(1 - t * t)
            term = (big_t ** 3 - 3 * big_t) * stats.norm.pdf(big_t)
        term = np.where(np.isfinite(term), term, 0.0)
        return np.clip(p + self.kappa / (12 * self.d) * term, 0.0, 1.0)


@dataclass(frozen=True)
class Table:
    """The deviation F(t) - F_beta(t) of the null of `law` in dimension `d`, at the Beta quantiles
    p_k = k / points (k = 0..points), from the symmetrized empirical CDF of `draws` simulated filters:
    F(x) ~ (#{t <= x} + #{t >= -x}) / (2 draws), exact at 0. Between two quantiles it is interpolated linearly
    in p = F_beta(t), which keeps F increasing."""

    law: str
    d: int
    draws: int
    seed: int
    values: tuple[float, ...]

    @functools.cached_property
    def _arrays(self) -> tuple[np.ndarray, np.ndarray]:
        return np.linspace(0.0, 1.0, len(self.values)), np.asarray(self.values)

    def apply(self, p: np.ndarray, t: np.ndarray) -> np.ndarray:
        grid, values = self._arrays
        return np.clip(p + np.interp(p, grid, values), 0.0, 1.0)

    def as_dict(self) -> dict:
        return {"format": "hparr-null-table", "version": TABLE_VERSION, "law": self.law, "d": self.d,
                "draws": self.draws, "seed": self.seed, "points": len(self.values) - 1, "deviation": list(self.values)}


_LOCK = threading.Lock()


@functools.lru_cache(maxsize=512)
def deviation(null: str, d: int) -> Edgeworth | Table:
    """How the null `null` (not `beta`) in dimension `d` departs from the Beta law: a `Table` for d <
    `TABLE_BELOW` (read from the cache folder, else computed and written there), an `Edgeworth` term above."""
    check_law(null)
    if null == GAUSSIAN or d < 2:
        raise ValueError(f"no deviation from the Beta null for {null!r} in dimension {d}")
    if d >= TABLE_BELOW:
        return Edgeworth(null, d, kurtosis(null))
    with _LOCK:  # one thread computes a table, the others wait for it
        table = _cached_table(null, d)
        if table is None:
            table = simulate_table(null, d)
            _store_table(table)
    return table


def _table_path(law: str, d: int):
    from .layout import null_table_path  # torch-free, like this module

    return null_table_path(law, d, TABLE_VERSION)


def _cached_table(law: str, d: int) -> Table | None:
    """The table of the cache folder, when it is there, readable and made by these very settings."""
    try:
        doc = json.loads(_table_path(law, d).read_text())
        table = Table(doc["law"], int(doc["d"]), int(doc["draws"]), int(doc["seed"]),
                      tuple(float(v) for v in doc["deviation"]))
    except (OSError, ValueError, KeyError, TypeError):
        return None
    expected = (law, d, TABLE_DRAWS, TABLE_SEED, TABLE_POINTS + 1, TABLE_VERSION)
    found = (table.law, table.d, table.draws, table.seed, len(table.values), doc.get("version"))
    return table if found == expected else None


def _store_table(table: Table) -> None:
    """Write the table to the cache folder; a folder that cannot be written only means computing it again."""
    try:
        files.write_json(_table_path(table.law, table.d), table.as_dict())
    except (OSError, HparrError):
        pass


def draw_cosines(law: str, d: int, n: int, rng: np.random.Generator, dtype=np.float64) -> np.ndarray:
    """The cosines t of `n` filters of `d` i.i.d. weights of `law` (any scale: t does not depend on it),
    drawn with `rng`, in float64 (the weights themselves in `dtype`)."""
    out = np.empty(n)
    rows = max(1, (1 << 20) // d)
    for start in range(0, n, rows):
        m = min(rows, n - start)
        w = draw_weights(law, (m, d), rng, dtype)
        sums = w.sum(axis=1, dtype=np.float64)
        norms = np.sqrt(np.einsum("ij,ij->i", w, w, dtype=np.float64))
        out[start:start + m] = sums / (norms * math.sqrt(d))
    return out


def draw_weights(law: str, shape: tuple[int, ...], rng: np.random.Generator, dtype=np.float64) -> np.ndarray:
    """I.i.d. weights of `law` at unit scale: N(0, 1), U(-1, 1), or N(0, 1) truncated at +/- c (by rejection)."""
    if law == GAUSSIAN:
        return rng.standard_normal(shape, dtype=dtype)
    if law == UNIFORM:
        w = rng.random(shape, dtype=dtype)
        w *= 2
        w -= 1
        return w
    c = truncation(check_law(law))
    size = math.prod(shape)
    keep = 1 - 2 * ndtr(-c)
    out = np.empty(0, dtype=dtype)
    while out.size < size:
        g = rng.standard_normal(int((size - out.size) / keep * 1.02) + 64, dtype=dtype)
        out = np.concatenate([out, g[np.abs(g) <= c]])
    return out[:size].reshape(shape)


def simulate_table(law: str, d: int, draws: int = TABLE_DRAWS, seed: int = TABLE_SEED,
                   points: int = TABLE_POINTS) -> Table:
    """The `Table` of `law` in dimension `d` from `draws` filters drawn with `numpy.random.default_rng` seeded
    by (seed, d, the law's CRC-32): the same numbers on every machine."""
    rng = np.random.default_rng([seed, d, zlib.crc32(law.encode())])
    t = np.sort(draw_cosines(law, d, draws, rng))
    p = np.linspace(0.0, 1.0, points + 1)
    x = distribution(d).ppf(p[1:-1])
    below = np.searchsorted(t, x, side="right")  # #{t <= x}
    above = draws - np.searchsorted(t, -x, side="left")  # #{t >= -x} = #{-t <= x}
    dev = (below + above) / (2 * draws) - p[1:-1]
    dev = (dev - dev[::-1]) / 2  # F(-x) = 1 - F(x) exactly (the quantiles are symmetric up to rounding)
    return Table(law, d, draws, seed, (0.0, *dev.tolist(), 0.0))


# --- bands -----------------------------------------------------------------------------------------

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
