"""The sweep split across worker processes: the test set's batches go to N forked workers, each with one
torch thread, which on a small model (where a layer is a few microseconds of work and dispatch dominates)
is faster than one process with N intra-op threads.

The workers inherit the model and every alternative's tensors from the parent (fork: nothing is rebuilt or
re-read); the parent reads the batches once and hands each to a worker. A worker returns the batch's counts
and loss sums, and the parent adds them in batch order, so every count, loss and agreement equals the
single-process sweep's exactly (the same float64 additions in the same order).
"""
from __future__ import annotations

import multiprocessing
import sys
from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
from typing import Any

import torch
import torch.nn as nn

from ..errors import UsageError
from ..provenance import available_cores
from ._sweep import Batches, Tally, sweep_result

# Below this many parameters a model is "small": one process per core beats intra-op threads.
SMALL_MODEL_PARAMETERS = 2_000_000

_WORK: tuple | None = None  # (model, units, params, per_batch, topk), inherited by the forked workers


def parse_eval_processes(value: Any) -> int | str:
    """--eval-processes: a count >= 1, or "auto"."""
    if isinstance(value, str) and value.strip().lower() == "auto":
        return "auto"
    try:
        count = int(value)
    except (TypeError, ValueError):
        count = 0
    if isinstance(value, bool) or count < 1 or (isinstance(value, float) and value != count):
        raise UsageError(f"--eval-processes must be a count >= 1 or auto, got {value!r}")
    return count


def choose_processes(requested: int | str, model: nn.Module, device: torch.device,
                     batches: int | None = None) -> dict[str, Any]:
    """How the sweep runs: {"processes", "threads" (torch threads per process), "why"}."""
    cores = available_cores()
    threads = torch.get_num_threads()
    if device.type != "cpu":
        return {"processes": 1, "threads": threads, "why": f"evaluated on {device.type}"}
    if not sys.platform.startswith("linux"):
        return {"processes": 1, "threads": threads, "why": "worker processes need fork (Linux)"}
    size = sum(p.numel() for p in model.parameters())
    if requested == "auto":
        if cores < 2:
            return {"processes": 1, "threads": threads, "why": f"auto: {cores} core available"}
        if size >= SMALL_MODEL_PARAMETERS:
            return {"processes": 1, "threads": threads,
                    "why": f"auto: {size} parameters (>= {SMALL_MODEL_PARAMETERS}), intra-op threads scale"}
        count, why = cores, f"auto: {size} parameters (< {SMALL_MODEL_PARAMETERS}), {cores} cores"
    else:
        count, why = int(requested), f"--eval-processes {requested}"
    if batches is not None and count > batches:
        count, why = max(batches, 1), why + f", capped at the {batches} batch(es)"
    if count <= 1:
        return {"processes": 1, "threads": threads, "why": why}
    return {"processes": count, "threads": 1, "why": why}


def _start(threads: int) -> None:
    torch.set_num_threads(threads)


def _one_batch(index: int, x: torch.Tensor, y: torch.Tensor):
    model, units, params, per_batch, topk = _WORK
    tally = Tally(len(params), len(units), torch.device("cpu"))
    with torch.inference_mode():
        logits = per_batch(model, units, params, x, y, topk, tally)
        tally.close_batch(logits, y, topk)
    return (index, tally.counts.numpy(), tally.loss.numpy(), tally.trained.numpy(), float(tally.trained_loss),
            int(y.shape[0]), int(logits.shape[1]))


def run_in_processes(model: nn.Module, units, params, batches: Batches, topk: int, per_batch, method: str,
                     notes=(), processes: int = 2):
    """`sweep.run_sweep` with the batches evaluated by `processes` forked workers of one thread each."""
    global _WORK
    was_training = model.training
    model.eval()
    tally = Tally(len(params), len(units), torch.device("cpu"))
    done: dict[int, tuple] = {}
    state = {"next": 0, "total": 0, "k": topk}

    def add_ready():  # in batch order, so the float64 sums add up as in one process
        while state["next"] in done:
            _, counts, loss, trained, trained_loss, n, classes = done.pop(state["next"])
            tally.counts += torch.from_numpy(counts)
            tally.loss += torch.from_numpy(loss)
            tally.trained += torch.from_numpy(trained)
            tally.trained_loss += trained_loss
            state["total"] += n
            state["k"] = min(state["k"], classes)
            state["next"] += 1

    _WORK = (model, units, params, per_batch, topk)
    try:
        with ProcessPoolExecutor(processes, mp_context=multiprocessing.get_context("fork"), initializer=_start,
                                 initargs=(1,)) as pool:
            pending = set()
            for index, (x, y) in enumerate(batches):
                pending.add(pool.submit(_one_batch, index, x.cpu(), y.cpu()))
                if len(pending) >= 2 * processes:  # a bounded number of batches in flight
                    finished, pending = wait(pending, return_when=FIRST_COMPLETED)
                    done.update((r[0], r) for r in (f.result() for f in finished))
                    add_ready()
            for future in pending:
                result = future.result()
                done[result[0]] = result
            add_ready()
    finally:
        _WORK = None
        model.train(was_training)
    return sweep_result(tally, state["total"], units, params, state["k"], method, notes)

