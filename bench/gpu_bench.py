"""`python -m bench gpu` (`make bench-gpu`): hparr on one GPU, in one short run (meant to take at most
8 minutes on an H100/H200).

Rows (one human line and one JSON line each, like `make bench`):

- gpu_data: writing 50,000 CIFAR-format training images (and the test set) in the official format,
  decoding them with hparr's loader, and placing the training set on the device.
- gpu_train_<arch>_<mode> for vgg11 and resnet18, modes fp32, bf16 (`--amp`) and bf16_compile
  (`--amp --compile`), batch 512, images per second of
    ours:     hparr's data path (ResidentLoader: the set held on the device, crop + flip and normalization
              there) feeding the training steps of `hparr train` (its SGD, channels_last, autocast, compile);
    floor:    the same model's steps on batches already on the device, in blocks that alternate with ours,
              so that a slow spell lands on both sides;
    baseline: torchvision's CIFAR10 + RandomCrop/RandomHorizontalFlip/ToTensor/Normalize + a DataLoader
              (worker processes, pinned memory), feeding the same steps.
  Goals: overhead_vs_floor at most 0.03; for bf16_compile, speedup_vs_fp32_baseline at least 3.
- gpu_reinit_vgg11: the shared-prefix sweep against the plain swap-evaluate-restore loop, 10,000 test images.
- gpu_projections_vgg11: `hparr projections --cuda` over 100 vgg11 snapshots, against the same command on
  the CPU.
- gpu_total: the wall time of the whole run.

Every measurement synchronizes the device before reading the clock. `--device cpu --quick` runs the same
code on the CPU with small sizes, so that the tests keep the script working on machines without a GPU;
there `--amp` trains in float32 (as `hparr train --amp` does on the CPU) and the compiled mode uses the
aot_eager backend unless `--compile-backend` says otherwise (inductor's C++ build of two models takes
minutes on a small CPU).
"""
from __future__ import annotations

import argparse
import contextlib
import datetime
import itertools
import shutil
import sys
import tempfile
import time
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from .common import emit, machine, timed, torchvision_cifar10
from .fakedata import random_images, random_labels, write_cifar10

ARCHS = ("vgg11", "resnet18")
MODES = ("fp32", "bf16", "bf16_compile")
OVERHEAD_GOAL, SPEEDUP_GOAL = 0.03, 3.0


@dataclass(frozen=True)
class Sizes:
    train_images: int = 50_000
    batch: int = 512
    blocks: int = 6  # alternating blocks of our steps and floor steps
    block_steps: int = 10
    baseline_steps: int = 40
    warmup_steps: int = 3
    floor_batches: int = 8  # distinct batches the floor cycles over
    reinit_images: int = 10_000
    reinit_batch: int = 500
    reinit_arch: str = "vgg11"
    snapshots: int = 100
    archs: tuple[str, ...] = ARCHS


# a check of the script, not a measurement: small models (hparr's vgg11 has a 100M-parameter classifier,
# slow to train or re-initialize on a small CPU), a few steps of each kind
QUICK = Sizes(train_images=256, batch=16, blocks=2, block_steps=1, baseline_steps=1, warmup_steps=1,
              floor_batches=2, reinit_images=32, reinit_batch=16, reinit_arch="lenet", snapshots=3,
              archs=("lenet", "resnet18"))


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def clock(device: torch.device) -> float:
    """perf_counter once the device has finished the work queued so far."""
    synchronize(device)
    return time.perf_counter()


def forever(loader):
    """The loader's batches, epoch after epoch."""
    while True:
        yield from loader


# ---------------------------------------------------------------------------------------------- data


def write_data(root: Path, sizes: Sizes) -> None:

    write_cifar10(root, random_images(sizes.train_images, 3, 32, 32, seed=1),
                  random_labels(sizes.train_images, 10, seed=1),
                  random_images(sizes.reinit_images, 3, 32, 32, seed=2), random_labels(sizes.reinit_images, 10, seed=2))


def ours_loader(data, sizes: Sizes, device: torch.device, channels_last: bool, seed: int = 0):
    """hparr's training loader on the device (what `make_loader` gives off the CPU), full batches only so that
    a compiled model sees one shape."""
    from hparr.data import ResidentLoader

    return ResidentLoader(data.train, sizes.batch, train=True, augment="crop+flip", mean=data.mean, std=data.std,
                          generator=torch.Generator().manual_seed(seed), device=device,
                          channels_last=channels_last, drop_last=True)


def torchvision_loader(root: Path, sizes: Sizes, device: torch.device, workers: int):
    return torch.utils.data.DataLoader(torchvision_cifar10(root), batch_size=sizes.batch, shuffle=True,
                                       num_workers=workers, pin_memory=device.type == "cuda", drop_last=True,
                                       persistent_workers=workers > 0, generator=torch.Generator().manual_seed(0))


def same_batches(data, sizes: Sizes, device: torch.device, count: int = 3) -> bool:
    """Whether the device path's first batches equal, bit for bit, those of the CPU path for the same seed."""
    from hparr.data import TensorLoader

    cpu = TensorLoader(data.train, sizes.batch, train=True, augment="crop+flip", mean=data.mean, std=data.std,
                       generator=torch.Generator().manual_seed(5), drop_last=True)
    dev = ours_loader(data, sizes, device, channels_last=False, seed=5)
    pairs = list(zip(itertools.islice(cpu, count), itertools.islice(dev, count)))
    return len(pairs) == count and all(torch.equal(xc, xd.cpu()) and torch.equal(yc, yd.cpu())
                                       for (xc, yc), (xd, yd) in pairs)


def data_case(root: Path, sizes: Sizes, device: torch.device) -> tuple[dict, object]:
    from hparr.data import DataOptions, load_data

    write_s, _ = timed(write_data, root, sizes)
    load_s, data = timed(load_data, DataOptions(dataset="cifar10", data_path=str(root), augmentation=True))
    start = clock(device)
    ours_loader(data, sizes, device, channels_last=device.type == "cuda")
    place_s = clock(device) - start
    return {"case": "gpu_data", "device": str(device), "images": sizes.train_images, "write_s": round(write_s, 3),
            "decode_s": round(load_s, 3), "place_on_device_s": round(place_s, 3),
            "same_batches_as_cpu": same_batches(data, sizes, device)}, data


# ---------------------------------------------------------------------------------------------- training


def make_step(net, optimizer, device: torch.device, amp_dtype: torch.dtype | None):
    """One training step as `hparr train` takes it."""

    def step(x, y):
        optimizer.zero_grad(set_to_none=True)
        with torch.autocast(device.type, dtype=amp_dtype, enabled=amp_dtype is not None):
            loss = F.cross_entropy(net(x), y)
        loss.backward()
        optimizer.step()

    return step


def interleaved_blocks(step, batches, held, sizes: Sizes, device: torch.device) -> dict:
    """Blocks of our steps (batch fetch included) and of floor steps, alternating (and alternating which
    side goes first), the device synchronized at the edges of each block: (seconds, images) of each side."""
    ours_s = floor_s = 0.0
    seen = floor_seen = 0
    cycle = itertools.cycle(held)
    for block in range(sizes.blocks):
        for side in ((0, 1) if block % 2 == 0 else (1, 0)):
            start = clock(device)
            for _ in range(sizes.block_steps):
                x, y = next(batches) if side == 0 else next(cycle)
                step(x, y)
                if side == 0:
                    seen += y.numel()
                else:
                    floor_seen += y.numel()
            elapsed = clock(device) - start
            if side == 0:
                ours_s += elapsed
            else:
                floor_s += elapsed
    return {"ours_s": ours_s, "floor_s": floor_s, "images": seen, "floor_images": floor_seen}


def timed_steps(step, batches, count: int, device: torch.device, channels_last: bool) -> tuple[float, int]:
    """(seconds, images) of `count` steps on host batches moved to the device as a training loop moves them."""
    seen = 0
    start = clock(device)
    for _ in range(count):
        x, y = next(batches)
        x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
        if channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        step(x, y)
        seen += y.numel()
    return clock(device) - start, seen


def train_cases(arch: str, data, root: Path, sizes: Sizes, device: torch.device, backend: str,
                workers: int) -> list[dict]:
    from hparr.models import build_model
    from hparr.training import TrainSettings, compile_model, make_optimizer, use_channels_last

    model = build_model(arch, num_classes=10, in_channels=3, input_size=32, seed=0)
    channels_last = use_channels_last(model, device)  # what `hparr train` picks
    model.to(device, memory_format=torch.channels_last if channels_last else torch.preserve_format)
    ours = forever(ours_loader(data, sizes, device, channels_last))
    held = [(x.clone(), y.clone()) for x, y in itertools.islice(
        ours_loader(data, sizes, device, channels_last, seed=1), sizes.floor_batches)]
    vision = forever(torchvision_loader(root, sizes, device, workers))
    rows: list[dict] = []
    fp32_baseline = None
    for mode in MODES:
        amp_dtype = torch.bfloat16 if mode != "fp32" and device.type == "cuda" else None  # as `hparr train --amp`
        net = compile_model(model, backend) if mode.endswith("compile") else model
        optimizer, _ = make_optimizer(model.parameters(), TrainSettings(arch=arch))
        step = make_step(net, optimizer, device, amp_dtype)
        start = clock(device)
        for i in range(sizes.warmup_steps):  # the first calls compile and pick convolution algorithms
            step(*held[i % len(held)])
        step(*next(ours))
        timed_steps(step, vision, 1, device, channels_last)
        warmup_s = clock(device) - start
        both = interleaved_blocks(step, ours, held, sizes, device)
        for _ in range(2 * workers):  # what the idle workers prefetched meanwhile: not the steady state
            next(vision)
        base_s, base_seen = timed_steps(step, vision, sizes.baseline_steps, device, channels_last)
        ours_rate, floor_rate = both["images"] / both["ours_s"], both["floor_images"] / both["floor_s"]
        base_rate = base_seen / base_s
        fp32_baseline = base_rate if mode == "fp32" else fp32_baseline
        row = {"case": f"gpu_train_{arch}_{mode}", "arch": arch, "mode": mode, "device": str(device),
               "batch": sizes.batch, "amp_dtype": str(amp_dtype or torch.float32).replace("torch.", ""),
               "compile_backend": backend if mode.endswith("compile") else None, "channels_last": channels_last,
               "steps": sizes.blocks * sizes.block_steps, "warmup_s": round(warmup_s, 3),
               "ours_img_s": ours_rate, "floor_img_s": floor_rate, "baseline_img_s": base_rate,
               "baseline_workers": workers, "overhead_vs_floor": floor_rate / ours_rate - 1.0,
               "speedup_vs_baseline": ours_rate / base_rate, "speedup_vs_fp32_baseline": ours_rate / fp32_baseline}
        row["overhead_goal_met"] = row["overhead_vs_floor"] <= OVERHEAD_GOAL
        if mode == "bf16_compile":
            row["speedup_goal_met"] = row["speedup_vs_fp32_baseline"] >= SPEEDUP_GOAL
        rows.append(row)
    return rows


# ---------------------------------------------------------------------------------------------- reinit


def reinit_case(data, sizes: Sizes, device: torch.device) -> dict:
    from hparr.data import make_loader
    from hparr.models import build_model
    from hparr.reinit import plain_reinit_sweep, reinit_layers, reinit_sweep

    from .reinit_bench import ideal_speedup, layer_flops

    arch = sizes.reinit_arch
    model = build_model(arch, 10, 3, 32, seed=0)
    layers = reinit_layers(model)
    ideal = ideal_speedup(layer_flops(model, (3, 32, 32)), layers, 3)
    model.to(device)
    alternatives = {"0": build_model(arch, 10, 3, 32, seed=1).state_dict(),
                    "5": build_model(arch, 10, 3, 32, seed=2).state_dict(),
                    "rand": build_model(arch, 10, 3, 32, seed=3).state_dict()}
    loader = make_loader(data, "test", sizes.reinit_batch, device=device, resident=True)  # as `hparr reinit`
    # a warm-up batch each (convolution algorithms, the shared plan's checks)
    first = [next(iter(loader))]
    reinit_sweep(model, alternatives, first, layers=layers, method="shared")
    plain_reinit_sweep(model, alternatives, first, layers=layers)
    start = clock(device)
    shared = reinit_sweep(model, alternatives, loader, layers=layers, method="shared")
    sweep_s = clock(device) - start
    start = clock(device)
    plain = plain_reinit_sweep(model, alternatives, loader, layers=layers)
    plain_s = clock(device) - start
    equal = bool(np.array_equal(shared.correct, plain.correct) and shared.trained_correct == plain.trained_correct)
    return {"case": f"gpu_reinit_{arch}", "device": str(device), "images": len(data.test), "layers": len(layers),
            "alternatives": len(alternatives), "test_passes_plain": 1 + len(alternatives) * len(layers),
            "sweep_s": round(sweep_s, 3), "plain_s": round(plain_s, 3), "speedup": round(plain_s / sweep_s, 3),
            "ideal_speedup": round(ideal, 3), "equal_counts": equal}


# ---------------------------------------------------------------------------------------------- projections


def projections_command(snapshots: Path, results: Path, cuda: bool) -> float:
    from hparr.cli import main as hparr_main

    start = time.perf_counter()
    with contextlib.redirect_stdout(None):
        rc = hparr_main(["projections", "--arch", "vgg11", "--dataset", "cifar10", "--normalize", "--no-progress",
                         "--load-from", str(snapshots), "--results", str(results), *(["--cuda"] if cuda else [])])
    if rc != 0:
        raise RuntimeError(f"hparr projections failed with exit code {rc}")
    return time.perf_counter() - start


def projections_case(root: Path, sizes: Sizes, device: torch.device) -> dict:
    from .projections_bench import write_snapshots

    snaps = root / "snapshots"
    snaps.mkdir()
    write_snapshots(snaps, sizes.snapshots)
    cuda = device.type == "cuda"
    ours_s = projections_command(snaps, root / "results_device", cuda)
    cpu_s = projections_command(snaps, root / "results_cpu", False)
    shutil.rmtree(snaps)
    n = sizes.snapshots
    return {"case": "gpu_projections_vgg11", "device": str(device) if cuda else "cpu", "snapshots": n,
            "seconds": round(ours_s, 3), "snapshots_per_s": round(n / ours_s, 2), "cpu_seconds": round(cpu_s, 3),
            "cpu_snapshots_per_s": round(n / cpu_s, 2), "speedup_vs_cpu": round(cpu_s / ours_s, 3)}


# ---------------------------------------------------------------------------------------------- the run


def run(device: torch.device, sizes: Sizes, backend: str = "inductor", workers: int = 8,
        workdir: str | None = None) -> list[dict]:
    """Every case, in order; the rows are emitted as they come and returned."""
    start = time.perf_counter()
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True  # as `hparr train` on the GPU
    rows: list[dict] = []

    def out(row: dict) -> None:
        emit(row)
        rows.append(row)

    root = Path(tempfile.mkdtemp(prefix="hparr-bench-gpu-", dir=workdir))
    try:
        row, data = data_case(root, sizes, device)
        out(row)
        for arch in sizes.archs:
            for row in train_cases(arch, data, root, sizes, device, backend, workers):
                out(row)
        out(reinit_case(data, sizes, device))
        del data
        out(projections_case(root, sizes, device))
    finally:
        shutil.rmtree(root, ignore_errors=True)
    out({"case": "gpu_total", "device": str(device), "seconds": round(time.perf_counter() - start, 1)})
    return rows


def describe(device: torch.device) -> dict:
    row = {"case": "machine", **machine(), "date": datetime.datetime.now().astimezone().isoformat(timespec="seconds"),
           "device": str(device)}
    if device.type == "cuda":
        props = torch.cuda.get_device_properties(device)
        row.update(gpu=props.name, gpu_memory_gib=round(props.total_memory / 2**30, 1),
                   cuda=torch.version.cuda, cudnn=torch.backends.cudnn.version())
    return row


def main(argv: list[str]) -> int:
    p = argparse.ArgumentParser(prog="python -m bench gpu", description=__doc__.split("\n\n")[0])
    p.add_argument("--device", default="cuda", help="cuda (default) or cpu")
    p.add_argument("--quick", action="store_true", help="a few batches and a few hundred images (checks the script)")
    p.add_argument("--archs", default=None,
                   help=f"comma-separated architectures to train "
                        f"[{','.join(ARCHS)}; {','.join(QUICK.archs)} with --quick]")
    p.add_argument("--compile-backend", default=None,
                   help="torch.compile backend of the compiled mode [inductor; aot_eager with --quick on the CPU]")
    p.add_argument("--workers", type=int, default=None,
                   help="worker processes of the torchvision baseline [min(8, cores); 1 with --quick]")
    args = p.parse_args(argv)
    try:
        device = torch.device(args.device)
    except RuntimeError:
        p.error(f"unknown device {args.device!r}")
    if device.type == "cuda" and not torch.cuda.is_available():
        print("python -m bench gpu: error: no GPU here; `python -m bench gpu --device cpu --quick` checks the script "
              "on the CPU", file=sys.stderr)
        return 2
    sizes = QUICK if args.quick else Sizes()
    if args.archs:
        sizes = replace(sizes, archs=tuple(a for a in args.archs.split(",") if a))
    backend = args.compile_backend or ("aot_eager" if args.quick and device.type == "cpu" else "inductor")
    cores = machine()["cores"]
    workers = args.workers if args.workers is not None else (1 if args.quick else min(8, cores))
    # a check on a CPU that may be shared: one thread, no spinning threads waiting on busy cores
    torch.set_num_threads(1 if args.quick and device.type == "cpu" else cores)
    emit(describe(device))
    run(device, sizes, backend, workers)
    return 0

