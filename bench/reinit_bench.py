"""Layer re-initialization: the shared-prefix sweep against the plain swap-evaluate-restore loop.

Both evaluate the same in-memory test batches in the same run, with 2 checkpoints and --rand
(random weights: accuracy does not matter for timing), and must give equal counts. They take turns
batch by batch (`alternate`): the sweep on batch 0, the loop on batch 0, the sweep on batch 1, ...,
so that a busy spell of a shared machine slows both sides of a pair alike, and the speed-up is the
ratio of paired sums. The ideal speed-up is the plain loop's conv/linear FLOPs over the sweep's,
counted with forward hooks: the plain loop runs the whole network 1 + K*L times per batch, the sweep
once plus, for each of the L layers, K times the part of the network from that layer on.

A third case runs `python reinit_weights.py` end to end (process start, CIFAR-format test set of
10,000 images read from disk, snapshots in the original code's formats, 19 test passes' worth of
work for lenet), in turns with the paper's original `reinit_layers.py` when its folder is given
(`python -m bench --original DIR`): bench/original_bench.py.

The last cases split the sweep's batches across 2 worker processes of one thread each, against one process of 2
threads: on a quiet machine, and with another process spinning on one core meanwhile (a shared machine), where
intra-op threads wait on each other.
"""
from __future__ import annotations

import contextlib
import subprocess
import sys
import threading
import time
from typing import Any, Callable, Iterable, Sequence

import numpy as np
import torch
import torch.nn as nn

from .common import CIFAR_MEAN, CIFAR_STD, pick, timed
from .original_bench import command_case

BATCH = 128


def layer_flops(model: nn.Module, input_shape) -> list[tuple[str, int]]:
    """(name, multiply-adds per image) of every Conv2d and Linear, in execution order."""
    out: list[tuple[str, int]] = []

    def hook(module, args, output):
        per_out = module.weight[0].numel()  # (in_channels / groups) * kh * kw, or in_features
        out.append((names[module], output[0].numel() * per_out))

    names = {m: n for n, m in model.named_modules() if isinstance(m, (nn.Conv2d, nn.Linear))}
    handles = [m.register_forward_hook(hook) for m in names]
    try:
        with torch.inference_mode():
            model.eval()(torch.zeros(1, *input_shape))
    finally:
        for h in handles:
            h.remove()
    return out


def ideal_speedup(flops: list[tuple[str, int]], layers: list[str], alternatives: int) -> float:
    """Plain loop FLOPs over shared-sweep FLOPs (chain networks: a layer's suffix is everything after it)."""
    order = [name for name, _ in flops]
    total = sum(f for _, f in flops)
    suffix = {name: sum(f for _, f in flops[order.index(name):]) for name in layers}
    plain = total * (1 + alternatives * len(layers))
    shared = total + alternatives * sum(suffix.values())
    return plain / shared


def _loader(n: int, seed: int = 0):
    from hparr.data import ImageSet, TensorLoader

    gen = torch.Generator().manual_seed(seed)
    images = torch.randint(0, 256, (n, 3, 32, 32), dtype=torch.uint8, generator=gen)
    labels = torch.randint(0, 10, (n,), generator=gen)
    return TensorLoader(ImageSet(images, labels), BATCH, train=False, augment=None, mean=CIFAR_MEAN, std=CIFAR_STD,
                        channels_last=True)


def alternate(first: Callable[[Iterable], Any], second: Callable[[Iterable], Any], batches: Sequence,
              clock: Callable[[], float] = time.perf_counter):
    """Run `first(batches)` and `second(batches)` in turns, one batch each: first on batch 0, second on
    batch 0, first on batch 1, and so on. Each runs in its own thread, but only one at a time.

    Returns (results, seconds, setup): the two results; for each side, the seconds it spent on each
    batch (from handing the batch out to the request for the next one); for each side, the seconds
    from its start to its request for the first batch, all read off `clock`. An exception in either side is
    raised here, after both have stopped.
    """
    turn = threading.Condition()
    state = {"turn": 0, "done": [False, False]}
    results: list[Any] = [None, None]
    errors: list[BaseException | None] = [None, None]
    seconds: tuple[list[float], list[float]] = ([], [])
    setup = [0.0, 0.0]

    def wait(side: int) -> None:
        with turn:
            turn.wait_for(lambda: state["turn"] == side or state["done"][1 - side])

    def give(side: int) -> None:
        with turn:
            state["turn"] = 1 - side
            turn.notify_all()

    def fed(side: int, started: float):
        for i, batch in enumerate(batches):
            if i == 0:
                setup[side] = clock() - started
            handed = clock()
            yield batch
            seconds[side].append(clock() - handed)
            give(side)
            wait(side)

    def run(side: int, fn: Callable[[Iterable], Any]) -> None:
        try:
            wait(side)
            results[side] = fn(fed(side, clock()))
        except BaseException as exc:  # noqa: BLE001 - handed to the caller after both sides stop
            errors[side] = exc
        finally:
            with turn:
                state["done"][side] = True
                state["turn"] = 1 - side
                turn.notify_all()

    threads = [threading.Thread(target=run, args=(side, fn), daemon=True) for side, fn in enumerate((first, second))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for exc in errors:
        if exc is not None:
            raise exc
    return results, seconds, setup


def sweep_case(arch: str, images: int, repeats: int = 1) -> dict:
    """Time the shared sweep and the plain loop on the same in-memory batches, taking turns batch by batch
    (`repeats` times over the data, times summed); check that their counts are equal."""
    from hparr.models import build_model
    from hparr.reinit import plain_reinit_sweep, reinit_layers, reinit_sweep

    model = build_model(arch, 10, 3, 32, seed=0).eval()
    alternatives = {"0": build_model(arch, 10, 3, 32, seed=1).state_dict(),
                    "5": build_model(arch, 10, 3, 32, seed=2).state_dict(),
                    "rand": build_model(arch, 10, 3, 32, seed=3).state_dict()}
    layers = reinit_layers(model)
    batches = list(_loader(images))  # made once: both sides read the same tensors
    sweep_s = plain_s = setup_s = 0.0
    ratios: list[float] = []
    for _ in range(repeats):
        (shared, plain), (sweep_times, plain_times), setup = alternate(
            lambda b: reinit_sweep(model, alternatives, b, layers=layers, method="shared"),
            lambda b: plain_reinit_sweep(model, alternatives, b, layers=layers), batches)
        if shared.method != "shared-prefix":
            raise RuntimeError(f"{arch}: the sweep fell back to the plain loop ({shared.notes})")
        if not (np.array_equal(shared.correct, plain.correct) and shared.trained_correct == plain.trained_correct):
            raise RuntimeError(f"{arch}: the shared sweep and the plain loop disagree")
        sweep_s, plain_s, setup_s = sweep_s + sum(sweep_times), plain_s + sum(plain_times), setup_s + setup[0]
        ratios += [p / s for s, p in zip(sweep_times, plain_times)]
    ideal = ideal_speedup(layer_flops(model, (3, 32, 32)), layers, len(alternatives))
    measured = plain_s / sweep_s
    q1, median, q3 = np.quantile(ratios, [0.25, 0.5, 0.75])
    return {"case": f"reinit_{arch}", "images": images, "layers": len(layers), "alternatives": len(alternatives),
            "test_passes_plain": 1 + len(alternatives) * len(layers), "sweep_s": round(sweep_s, 3),
            "plain_s": round(plain_s, 3), "speedup": round(measured, 3), "ideal_speedup": round(ideal, 3),
            "measured_over_ideal": round(measured / ideal, 3), "equal_counts": True, "repeats": repeats,
            "torch_threads": torch.get_num_threads(), "paired_batches": len(ratios),
            "batch_speedup_median": round(float(median), 3),
            "batch_speedup_quartiles": [round(float(q1), 3), round(float(q3), 3)],
            "sweep_setup_s": round(setup_s, 3)}


@contextlib.contextmanager
def busy_neighbour():
    """Another process spinning on one core meanwhile, as on a shared machine."""
    spinner = subprocess.Popen([sys.executable, "-c", "while True: pass"])
    try:
        yield
    finally:
        spinner.kill()
        spinner.wait()


def processes_case(arch: str = "lenet", images: int = 10_000, rounds: int = 2, processes: int = 2,
                   neighbour: bool = False) -> dict:
    """The sweep split across `processes` worker processes of one torch thread each against one process with
    `processes` threads, on the same in-memory batches, in turns A B A B (`rounds` of each); their results
    must be equal to the last count. The ratio is the median of the rounds' single/multi ratios. With
    `neighbour`, another process keeps one core busy meanwhile (`busy_neighbour`)."""
    with busy_neighbour() if neighbour else contextlib.nullcontext():
        row = _processes_rounds(arch, images, rounds, processes)
    return {**row, "case": row["case"] + ("_busy_neighbour" if neighbour else "")}


def _processes_rounds(arch: str, images: int, rounds: int, processes: int) -> dict:
    from hparr.models import build_model
    from hparr.reinit import reinit_sweep

    model = build_model(arch, 10, 3, 32, seed=0).eval()
    alternatives = {"0": build_model(arch, 10, 3, 32, seed=1).state_dict(),
                    "5": build_model(arch, 10, 3, 32, seed=2).state_dict(),
                    "rand": build_model(arch, 10, 3, 32, seed=3).state_dict()}
    batches = list(_loader(images))
    threads = torch.get_num_threads()
    torch.set_num_threads(processes)
    single: list[float] = []
    multi: list[float] = []
    try:
        for _ in range(rounds):
            one_s, one = timed(reinit_sweep, model, alternatives, batches, method="shared")
            many_s, many = timed(reinit_sweep, model, alternatives, batches, method="shared", processes=processes)
            single.append(one_s)
            multi.append(many_s)
            if not (np.array_equal(one.correct, many.correct) and np.array_equal(one.agree, many.agree)
                    and np.array_equal(one.loss, many.loss) and one.trained_correct == many.trained_correct):
                raise RuntimeError(f"{arch}: the multi-process sweep differs from the single-process sweep")
    finally:
        torch.set_num_threads(threads)
    ratios = [s / m for s, m in zip(single, multi)]
    return {"case": f"reinit_{arch}_processes", "images": images, "processes": processes,
            "single_process_threads": processes, "single_s": [round(s, 3) for s in single],
            "multi_s": [round(s, 3) for s in multi], "speedup_median": round(float(np.median(ratios)), 3),
            "speedups": [round(r, 3) for r in ratios], "goal": 1.6, "equal_results": True}


def run(mode: str = "default", original: str | None = None) -> list[dict]:
    """The cases in `mode`; `original`: the folder of the paper's code, for the end-to-end comparison."""
    lenet = pick(mode, quick=(1_000, 1), default=(5_000, 1), full=(10_000, 2))  # (images, repeats)
    vgg11 = pick(mode, quick=32, default=128, full=1_000)
    return [sweep_case("lenet", lenet[0], repeats=lenet[1]), sweep_case("vgg11", vgg11),
            command_case(rounds=pick(mode, quick=1, default=2, full=3), original=original),
            processes_case(images=pick(mode, quick=1_000, default=3_000, full=10_000)),
            processes_case(images=pick(mode, quick=500, default=2_000, full=5_000), neighbour=True)]


if __name__ == "__main__":
    torch.set_num_threads(2)
    for row in run(sys.argv[1] if len(sys.argv) > 1 else "default"):
        print(row)
