"""Training data path: ours (in-memory uint8 + tensor augmentation) against torchvision's CIFAR10 +
transforms + a 1-worker DataLoader (the paper's pipeline), and the floor (the same model's steps on
batches already made, interleaved step for step with ours)."""
from __future__ import annotations

import tempfile
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from .common import pick, timed, torchvision_cifar10
from .fakedata import random_images, random_labels, write_cifar10

N_IMAGES = 50_000
BATCH = 128


def write_dataset(root: Path, images: int = N_IMAGES) -> None:

    write_cifar10(root, random_images(images, 3, 32, 32, seed=1), random_labels(images, 10, seed=1),
                  random_images(100, 3, 32, 32, seed=2), random_labels(100, 10, seed=2))


def train_steps(model, batches, max_batches: int) -> int:
    """Plain SGD steps over `batches`; returns the number of images seen."""
    opt = torch.optim.SGD(model.parameters(), lr=1e-3, momentum=0.9)
    model.train()
    seen = 0
    for i, (x, y) in enumerate(batches):
        if i == max_batches:
            break
        opt.zero_grad(set_to_none=True)
        F.cross_entropy(model(x), y).backward()
        opt.step()
        seen += y.numel()
    return seen


def ours(root: Path, channels_last: bool = False):
    from hparr.data import DataOptions, load_data, make_loader

    data = load_data(DataOptions(dataset="cifar10", data_path=str(root), augmentation=True))
    return make_loader(data, "train", BATCH, generator=torch.Generator().manual_seed(0), channels_last=channels_last)


def baseline(root: Path):
    return torch.utils.data.DataLoader(torchvision_cifar10(root), batch_size=BATCH, shuffle=True, num_workers=1,
                                       generator=torch.Generator().manual_seed(0))


def floor_batches(loader, count: int, distinct: int = 8):
    """`count` batches cycling over `distinct` ones materialized before timing: the model's own cost, with
    inputs as warm in cache as a fresh batch is (a 600 MB list of stored batches would be slower than that)."""
    held = []
    for i, b in enumerate(loader):
        if i == distinct:
            break
        held.append(b)
    return [held[i % len(held)] for i in range(count)]


def interleaved(model, loader, held, max_batches: int) -> dict:
    """Our loader's steps and floor steps, alternating on one model, so that a slow spell on a shared
    machine lands on both sides instead of on whichever was timed during it.

    Returns the summed seconds of our steps (batch fetch included), of the floor steps and of the batch
    fetches alone, and the number of images each side saw.
    """
    opt = torch.optim.SGD(model.parameters(), lr=1e-3, momentum=0.9)
    model.train()

    def step(x, y):
        opt.zero_grad(set_to_none=True)
        F.cross_entropy(model(x), y).backward()
        opt.step()

    ours_s = floor_s = fetch_s = 0.0
    seen = floor_seen = 0
    batches = iter(loader)
    for i in range(min(max_batches, len(loader))):
        start = time.perf_counter()
        x, y = next(batches)
        fetched = time.perf_counter()
        step(x, y)
        done = time.perf_counter()
        hx, hy = held[i % len(held)]
        step(hx, hy)
        floor_s += time.perf_counter() - done
        ours_s += done - start
        fetch_s += fetched - start
        seen += y.numel()
        floor_seen += hy.numel()
    return {"ours_s": ours_s, "floor_s": floor_s, "fetch_s": fetch_s, "images": seen, "floor_images": floor_seen}


def case(arch: str, root: Path, max_batches: int, warmup: int = 3) -> dict:
    from hparr.models import build_model
    from hparr.training import use_channels_last

    fast = use_channels_last(build_model(arch, num_classes=10), torch.device("cpu"))  # what `hparr train` picks
    loader_ours = ours(root, channels_last=fast)
    loader_base = baseline(root)
    held = floor_batches(loader_ours, 8, distinct=8)
    plain = floor_batches(loader_base, warmup, distinct=warmup)

    model = build_model(arch, num_classes=10, in_channels=3, input_size=32, seed=0)
    model = model.to(memory_format=torch.channels_last) if fast else model
    train_steps(model, held, warmup)  # warm-up before timing
    both = interleaved(model, loader_ours, held, max_batches)

    model = build_model(arch, num_classes=10, in_channels=3, input_size=32, seed=0)
    train_steps(model, plain, warmup)
    base_s, base_seen = timed(train_steps, model, loader_base, max_batches)

    ours_rate, floor_rate = both["images"] / both["ours_s"], both["floor_images"] / both["floor_s"]
    return {"case": f"train_{arch}", "batches": min(max_batches, len(loader_ours)), "channels_last": fast,
            "ours_img_s": ours_rate, "baseline_img_s": base_seen / base_s, "floor_img_s": floor_rate,
            "speedup_vs_baseline": ours_rate * base_s / base_seen,
            "overhead_vs_floor": floor_rate / ours_rate - 1.0,
            "fetch_ms_per_batch": 1e3 * both["fetch_s"] / min(max_batches, len(loader_ours)),
            "fetch_share": both["fetch_s"] / both["ours_s"]}


def run(mode: str = "default") -> list[dict]:
    """The decoding of the training set, then lenet (the first batches of an epoch; the whole epoch with
    --full) and vgg11 (its first batches)."""
    images = pick(mode, quick=10_000, default=N_IMAGES, full=N_IMAGES)
    lenet_batches = pick(mode, quick=20, default=120, full=10**9)
    vgg11_batches, warmup = pick(mode, quick=(2, 1), default=(6, 3), full=(30, 3))  # (timed, warm-up) steps
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        write_dataset(root, images)
        load_s, _ = timed(ours, root)
        rows = [{"case": "cifar10_load", "images": images, "seconds": load_s}]
        rows.append(case("lenet", root, max_batches=lenet_batches, warmup=warmup))
        rows.append(case("vgg11", root, max_batches=vgg11_batches, warmup=warmup))
    return rows
