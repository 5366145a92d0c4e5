"""The cost of tracking the bias during training (`hparr train`'s default): the tracker's end-of-epoch step
(statistics of every layer, TensorBoard scalars and histograms, the atomic rewrite of tracking.csv, handed to
its thread) against an epoch. Epochs with and without a tracker step alternate on one model, so that a busy spell
on a shared machine slows both alike. Printed: the tracker step's share of an epoch, and the ratio of the epoch
times with and without tracking (every side effect included, but noisier; for lenet with the 95% interval of
the extra time of a tracked epoch, as a share of an untracked one).

lenet on digits is trained by `hparr train`'s own epochs, with the settings of `make demo` and with
`hparr train`'s default learning rate; vgg11 at 32 px by plain steps on batches in memory, extrapolated to a
CIFAR-10 epoch."""
from __future__ import annotations

import contextlib
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from .common import pick
from .training_bench import train_steps

CIFAR10_BATCHES = 391  # one epoch of the 50,000 CIFAR-10 training images in batches of 128


def tracker_for(model, in_channels: int, size: int, out: Path):
    """A tracker in a plain loop: distances from the current weights, the TensorBoard writer of `hparr train` (a
    step's values as one event) and a CSV file."""
    from hparr.training import BiasTracker, TensorBoard

    writer = TensorBoard(out / "tb")
    return writer, BiasTracker(model, writer=writer, csv_path=out / "tracking.csv",
                               input_shape=(2, in_channels, size, size))


def alternate(train_epoch, tracker, rounds: int, steps_per_epoch: int) -> dict:
    """`rounds` rounds of an epoch of training (`train_epoch(epoch)`) followed by a tracker step and an epoch
    without one (in turn first and second). Returns the epoch times with and without tracking (the tracker
    step included in the former) and the tracker steps' own times (mean and largest), in seconds."""
    with_s, without_s, track_s = [], [], []
    epoch = 0
    for r in range(rounds):
        for tracked in ((True, False) if r % 2 == 0 else (False, True)):
            start = time.perf_counter()
            train_epoch(epoch)
            done = time.perf_counter()
            epoch += 1
            if tracked:
                tracker.step(epoch * steps_per_epoch, epoch=epoch)
                track_s.append(time.perf_counter() - done)
            (with_s if tracked else without_s).append(time.perf_counter() - start)
    tracker.close()
    return {"with_s": sum(with_s) / rounds, "without_s": sum(without_s) / rounds, "track_s": sum(track_s) / rounds,
            "track_max_s": max(track_s), "extra_ci95_s": _interval([a - b for a, b in zip(with_s, without_s)])}


def _interval(differences: list[float]) -> tuple[float, float]:
    """Student-t 95% interval of the mean of paired differences."""
    from scipy import stats

    d = np.asarray(differences)
    half = stats.t.ppf(0.975, d.size - 1) * d.std(ddof=1) / np.sqrt(d.size)
    return float(d.mean() - half), float(d.mean() + half)


def lenet_digits(lr: float = 0.01, epochs: int = 30) -> dict:
    """lenet on the embedded digits dataset, trained by `hparr train`'s own epochs: by default with the
    settings of `make demo` (`hparr reproduce`: lr 0.01, 30 epochs). With lr 0.001 (`hparr train`'s default)
    the weights stay near their initialization longer, where the exact KS law costs most."""
    from hparr.data import DataOptions
    from hparr.training import TrainSettings, loader, open_writer, setup, start_tracking, train_one_epoch

    with tempfile.TemporaryDirectory() as tmp:
        settings = TrainSettings(arch="lenet", data=DataOptions(dataset="digits"), epochs=epochs, lr=lr, seed=0,
                                 models_path=str(Path(tmp) / "models"), tb_logdir=str(Path(tmp) / "tb"),
                                 progress=False, log=None)
        with setup(settings) as prepared:
            train_loader = loader(prepared, "train")

            def train_epoch(epoch: int) -> None:
                train_one_epoch(prepared, prepared.model, train_loader, epoch)

            train_epoch(0)  # warm-up before timing
            with open_writer(prepared.run_dir, settings.models_path, settings.tb_logdir) as writer:
                # as `hparr train` sets it up (and its first step)
                tracker = start_tracking(prepared, writer, len(train_loader))
                t = alternate(train_epoch, tracker, epochs // 2, len(train_loader))
    return {"case": "track_lenet_digits", "lr": lr, "epochs": epochs, "batches_per_epoch": len(train_loader),
            "layers": len(tracker.layers), "epoch_s_without": t["without_s"], "epoch_s_with": t["with_s"],
            "track_ms": 1e3 * t["track_s"], "track_ms_max": 1e3 * t["track_max_s"],
            "track_share_of_epoch": t["track_s"] / t["without_s"],
            "epoch_ratio_with_vs_without": t["with_s"] / t["without_s"],
            "epoch_cost_share_ci95": [x / t["without_s"] for x in t["extra_ci95_s"]]}


def vgg11_32px(batches: int = 4, rounds: int = 2) -> dict:
    """vgg11 at 32 px: a few training steps on batches in memory per round, extrapolated to a CIFAR-10 epoch
    (391 batches): the tracker's share of that epoch."""
    from hparr.models import build_model

    gen = torch.Generator().manual_seed(0)
    held = [(torch.randn(128, 3, 32, 32, generator=gen), torch.randint(0, 10, (128,), generator=gen))
            for _ in range(2)]
    model = build_model("vgg11", 10, 3, 32, seed=0)

    def train_epoch(epoch: int) -> None:
        train_steps(model, [held[i % len(held)] for i in range(batches)], batches)

    with tempfile.TemporaryDirectory() as tmp:
        writer, tracker = tracker_for(model, 3, 32, Path(tmp))
        with contextlib.closing(writer):
            train_steps(model, held, 2)  # warm-up before timing
            tracker.step(0, epoch=0)
            t = alternate(train_epoch, tracker, rounds, batches)
    batch_s = t["without_s"] / batches
    epoch_s = batch_s * CIFAR10_BATCHES
    return {"case": "track_vgg11_32px", "timed_batches": 2 * rounds * batches, "batch_s": batch_s,
            "epoch_s_cifar10_estimate": epoch_s, "layers": len(tracker.layers), "track_ms": 1e3 * t["track_s"],
            "track_share_of_epoch": t["track_s"] / epoch_s}


def run(mode: str = "default") -> list[dict]:
    epochs = pick(mode, quick=4, default=10, full=30)  # half of them tracked
    batches = pick(mode, quick=1, default=2, full=4)  # vgg11's steps per epoch
    return [lenet_digits(epochs=epochs), lenet_digits(lr=0.001, epochs=epochs), vgg11_32px(batches=batches)]
