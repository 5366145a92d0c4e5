"""Run the benchmark cases: `python -m bench [--quick | --full] [--original DIR] [training] [reinit] [projections]
[tracking] [study] [imagefolder] [null]` (the CPU cases; each row prints its ratio against a baseline measured
in the same run; DIR: a checkout of the paper's original code, which the reinit case runs in turns with hparr's
script), or
`python -m bench gpu [--device cpu] [--quick]` (one run on a GPU: bench/gpu_bench.py).

Modes: the default takes at most 10 minutes on 2 cores; `--quick` (at most 3 minutes) runs every case on less
work, to check them and read rough ratios; `--full` runs the long sizes (about half an hour on 2 cores)."""
from __future__ import annotations

import argparse
import importlib
import sys
import time

from .common import MODES, emit, machine
from .original_bench import original_folder_error

CASES = {"training": "bench.training_bench", "reinit": "bench.reinit_bench", "projections": "bench.projections_bench",
         "tracking": "bench.tracking_bench", "study": "bench.study_bench", "imagefolder": "bench.imagefolder_bench",
         "null": "bench.null_bench"}


def parse(argv: list[str]) -> tuple[str, list[str], str | None]:
    """(mode, cases, original folder or None) of a command line; a usage error exits with status 2 and one line."""
    p = argparse.ArgumentParser(prog="python -m bench", description=__doc__.split("\n\n")[0])
    size = p.add_mutually_exclusive_group()
    size.add_argument("--quick", dest="mode", action="store_const", const="quick",
                      help="every case on less work (at most 3 minutes on 2 cores)")
    size.add_argument("--full", dest="mode", action="store_const", const="full",
                      help="the long sizes (the figures quoted in the docs)")
    p.add_argument("--original", metavar="DIR",
                   help="a folder of the paper's original code (reinit_layers.py ...): the reinit case runs it in "
                        "turns with hparr's reinit_weights.py on the same files")
    p.add_argument("cases", nargs="*", metavar="CASE", help=f"cases to run, from {', '.join(CASES)} [all]")
    args = p.parse_args(argv)
    unknown = [c for c in args.cases if c not in CASES]
    if unknown:
        p.error(f"unknown case(s) {', '.join(unknown)}; choose from {', '.join(CASES)}")
    if args.original is not None and (why := original_folder_error(args.original)):
        p.error(why)
    mode = args.mode or "default"
    assert mode in MODES
    return mode, args.cases or list(CASES), args.original


def main(argv: list[str]) -> int:
    if argv[:1] == ["gpu"]:
        from .gpu_bench import main as gpu_main

        return gpu_main(argv[1:])
    mode, chosen, original = parse(argv)
    import torch

    torch.set_num_threads(machine()["cores"])
    start = time.perf_counter()
    emit({"case": "machine", "mode": mode, **machine()})
    for name in chosen:
        options = {"original": original} if name == "reinit" else {}
        for row in importlib.import_module(CASES[name]).run(mode, **options):
            emit(row)
    emit({"case": "bench_total", "mode": mode, "cases": chosen, "seconds": round(time.perf_counter() - start, 1)})
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
