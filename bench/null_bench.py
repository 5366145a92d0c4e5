"""The bias test at initialization: how often it calls an untrained layer biased (its false-positive rate at
level 0.05), over a grid of filter sizes d and filter counts N, for each law of initial weights.

A layer of N filters of d i.i.d. weights is drawn `draws` times per cell and tested alone (`hparr.projections.
bias_tests_of_layers` with the null of its law, `hparr.null.null_label`); the cell's rate is the share of draws
whose p-value is <= 0.05, and it must stay within 0.05 + 2 Monte-Carlo standard errors (sqrt(0.05 x 0.95 /
draws)). The cosine of a filter does not depend on the scale of its weights, so the schemes of one law give the
same cells: PyTorch's default (kaiming_uniform_(a=sqrt(5))), kaiming_uniform and xavier_uniform are the uniform
column; kaiming_normal, xavier_normal and timm's trunc_normal_(std=.02, a=-2, b=2), cut at 100 sd where no draw
reaches, the Gaussian one; timm's trunc_normal_tf_ (cut at 2 sd) its own. Each row also gives the rate the
Beta null alone would have had (`fpr_beta_null`): what the test did before it followed the initialization.

The weights are drawn in float32 (as networks hold them) with `numpy.random.default_rng`; the N filters of a
cell are the first N of a draw of the largest N of that d, so the cells of one d share their draws. Sizes:
`--quick` d <= 576 and N x d <= 2^20 with 100 draws per cell; the default N x d <= 2^23 with 200 draws; `--full`
the whole grid (d up to 4608, N up to 16384) with 400 draws.
"""
from __future__ import annotations

import math
import time
import zlib

import numpy as np

from hparr import null
from hparr.projections import bias_tests_of_layers

from .common import pick

LEVEL = 0.05
DIMS = (4, 9, 25, 27, 144, 576, 4608)
COUNTS = (16, 64, 256, 1024, 4096, 16384)
LAWS = {
    null.UNIFORM: "pytorch default (kaiming_uniform a=sqrt(5)), kaiming_uniform, xavier_uniform",
    null.GAUSSIAN: "kaiming_normal, xavier_normal, timm trunc_normal (std .02, cut at +/-2 = 100 sd)",
    "truncnorm(2)": "timm trunc_normal_tf (cut at 2 sd)",
}


def cells(mode: str) -> tuple[int, list[tuple[int, list[int]]]]:
    """(draws per cell, [(d, [N...])]) of a mode."""
    draws, largest, max_d = pick(mode, quick=(100, 2 ** 20, 576), default=(200, 2 ** 23, 4608),
                                 full=(400, 2 ** 40, 4608))
    grid = [(d, [n for n in COUNTS if n * d <= largest]) for d in DIMS if d <= max_d]
    return draws, [(d, ns) for d, ns in grid if ns]


def fpr_row(law: str, d: int, counts: list[int], draws: int, seed: int = 0) -> dict:
    """The false-positive rates of one law and dimension, for each filter count."""
    start = time.perf_counter()
    rng = np.random.default_rng([seed, d, zlib.crc32(law.encode())])
    n_max = max(counts)
    cos = np.stack([null.draw_cosines(law, d, n_max, rng, dtype=np.float32) for _ in range(draws)])
    label = null.null_label(law, d)
    se = math.sqrt(LEVEL * (1 - LEVEL) / draws)
    out = {"case": "null_fpr", "law": law, "schemes": LAWS[law], "null": label, "d": d, "draws": draws,
           "N": counts, "fpr": [], "fpr_ks": [], "fpr_sign": [], "fpr_beta_null": [],
           "limit": round(LEVEL + 2 * se, 4)}
    for n in counts:
        layers = [(cos[r, :n], d) for r in range(draws)]
        tests = bias_tests_of_layers(layers, [label] * draws)
        out["fpr"].append(float(np.mean([t["p_value"] <= LEVEL for t in tests])))
        out["fpr_ks"].append(float(np.mean([t["p_ks"] <= LEVEL for t in tests])))
        out["fpr_sign"].append(float(np.mean([t["p_sign"] <= LEVEL for t in tests])))
        beta = tests if label == null.BETA else bias_tests_of_layers(layers)
        out["fpr_beta_null"].append(float(np.mean([t["p_value"] <= LEVEL for t in beta])))
    out["within"] = all(f <= out["limit"] for f in out["fpr"])
    out["seconds"] = round(time.perf_counter() - start, 2)
    return out


def run(mode: str = "default") -> list[dict]:
    """One row per law and d (rates by N), then the total: cells, cells within the limit, the worst excess."""
    draws, grid = cells(mode)
    rows = [fpr_row(law, d, counts, draws) for law in LAWS for d, counts in grid]
    n_cells = sum(len(r["N"]) for r in rows)
    within = sum(f <= r["limit"] for r in rows for f in r["fpr"])
    worst = max(f - r["limit"] for r in rows for f in r["fpr"])
    beta_over = sum(f > r["limit"] for r in rows for f in r["fpr_beta_null"])
    rows.append({"case": "null_fpr_total", "level": LEVEL, "draws": draws, "cells": n_cells, "cells_within": within,
                 "all_within": within == n_cells, "worst_margin": round(worst, 4),
                 "cells_over_with_beta_null": beta_over, "seconds": round(sum(r["seconds"] for r in rows), 1)})
    return rows


if __name__ == "__main__":
    import sys

    for row in run(sys.argv[1] if len(sys.argv) > 1 else "default"):
        print(row)
