"""Run the benchmark cases: `python -m bench [training] [reinit] [projections] [tracking] [study]` (the CPU
cases), or `python -m bench gpu [--device cpu] [--quick]` (one run on a GPU: bench/gpu_bench.py)."""
from __future__ import annotations

import importlib
import sys

import torch

from .common import emit, machine

CASES = {"training": "bench.training_bench", "reinit": "bench.reinit_bench", "projections": "bench.projections_bench",
         "tracking": "bench.tracking_bench", "study": "bench.study_bench"}


def main(argv: list[str]) -> int:
    if argv[:1] == ["gpu"]:
        from .gpu_bench import main as gpu_main

        return gpu_main(argv[1:])
    chosen = argv or list(CASES)
    unknown = [c for c in chosen if c not in CASES]
    if unknown:
        print(f"unknown case(s) {unknown}; choose from {list(CASES)}", file=sys.stderr)
        return 2
    torch.set_num_threads(machine()["cores"])
    emit({"case": "machine", **machine()})
    for name in chosen:
        for row in importlib.import_module(CASES[name]).run():
            emit(row)
    return 0


sys.exit(main(sys.argv[1:]))
