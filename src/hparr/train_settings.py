"""What a training run is asked to do (`TrainSettings`, which checks itself) and what it returns (`TrainResult`)."""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import Any

import torch

from .data import DataOptions
from .errors import UsageError
from .models import check_arch
from .provenance import derive_seeds

# why a training run stopped, as its final snapshot, its result and the manifest of `reproduce` record it
STOP_REASONS = {"epochs": "epochs exhausted", "target": "target reached", "plateau": "plateau"}


@dataclass
class TrainSettings:
    """Every option of a training run (the paper's train.py flags, plus the new ones)."""

    arch: str
    data: DataOptions = field(default_factory=DataOptions)
    epochs: int = 20
    start_epoch: int = 0
    batch_size: int = 128
    optimizer: str = "sgd"
    lr: float = 0.001
    lr_step: int = 0
    lr_decay: float = 0.0
    weight_decay: float = 1e-4
    momentum: float = 0.9
    seed: int | None = None
    models_path: str = "./models"
    tb_logdir: str | None = "./tensorboard"
    snapshot_every: int = 0
    snapshot_all_until: int = 0
    resume_from: str | None = None
    overwrite: bool = False  # replace a run of another configuration in the run directory
    kill_plateaus: bool = False
    train_acc: bool = False
    pretrained: bool = False
    weights: str | None = None
    state_dict_prefix: str | None = None
    cuda: bool = False
    amp: str | None = None  # None, "bf16" or "fp16"
    compile: str | None = None  # None, or the torch.compile backend of the training steps ("inductor")
    channels_last: str = "auto"  # "auto", "on" or "off"
    sync_bn: bool = False
    workers: int = 1
    progress: bool = True
    log: str | None = "train.log"
    track: bool = True
    track_every_steps: int = 0
    until_train_acc: float | None = None  # stop after the first epoch whose own-label train top-1 (%) reaches it

    def validate(self) -> None:
        check_arch(self.arch)
        self.data.validate()
        checks = [
            (self.epochs >= 0, f"--epochs must be >= 0, got {self.epochs}"),
            (self.start_epoch >= 0, f"--start-epoch must be >= 0, got {self.start_epoch}"),
            (self.batch_size >= 1, f"--batch-size must be >= 1, got {self.batch_size}"),
            (self.optimizer in ("sgd", "adam"), f"unknown optimizer {self.optimizer!r}; supported: sgd, adam"),
            (self.lr > 0 and math.isfinite(self.lr), f"--lr must be > 0, got {self.lr}"),
            (self.lr_step >= 0, f"--lr-step must be >= 0, got {self.lr_step}"),
            (self.lr_decay >= 0, f"--lr-decay must be >= 0, got {self.lr_decay}"),
            (self.weight_decay >= 0, f"--weight-decay must be >= 0, got {self.weight_decay}"),
            (0 <= self.momentum < 1, f"--momentum must be in [0, 1), got {self.momentum}"),
            (self.snapshot_every >= 0, f"--snapshot-every must be >= 0, got {self.snapshot_every}"),
            (self.snapshot_all_until >= 0, f"--snapshot-all-until must be >= 0, got {self.snapshot_all_until}"),
            (self.amp in (None, "bf16", "fp16"), f"--amp must be bf16 or fp16, got {self.amp!r}"),
            (self.channels_last in ("auto", "on", "off"), f"--channels-last must be auto, on or off, "
                                                           f"got {self.channels_last!r}"),
            (self.workers >= 0, f"--workers must be >= 0, got {self.workers}"),
            (self.track_every_steps >= 0, f"--track-every-steps must be >= 0, got {self.track_every_steps}"),
            (self.until_train_acc is None or 0 < self.until_train_acc <= 100,
             f"--until-train-acc must be a top-1 percentage in (0, 100], got {self.until_train_acc}"),
        ]
        for ok, message in checks:
            if not ok:
                raise UsageError(message)
        if self.compile is not None and self.compile not in torch.compiler.list_backends(exclude_tags=()):
            raise UsageError(f"unknown --compile backend {self.compile!r}; supported: "
                             f"{', '.join(torch.compiler.list_backends())}, or a debugging backend such as aot_eager")


@dataclass
class EvaluateSettings:
    """`hparr train --evaluate/--evaluate-train`: the --resume-from snapshot of `train` measured on `split`
    ("test" or "train"); nothing is trained or written."""

    train: TrainSettings
    split: str = "test"

    def validate(self) -> None:
        if not self.train.resume_from:
            raise UsageError("--evaluate/--evaluate-train need a snapshot: pass --resume-from")
        if self.split not in ("test", "train", "val"):
            raise UsageError(f"the evaluated split must be test, train or val, got {self.split!r}")
        self.train.validate()


@dataclass
class TrainResult:
    """What a training run produced. Its snapshots are its saved output, written as the run goes
    (an interrupted run keeps them and resumes from them), so there is nothing left to save at the end.

    run_dir: the run's snapshot folder; seed: the seed used (drawn when none was given); converged:
    False when --kill-plateaus stopped the run; snapshots: the files written by this call; final:
    the metrics of the final model ({"test": ..., "val": ...}); history: one record per epoch; stopped: why
    and after which epoch training stopped (as the final snapshot records it).
    """

    run_dir: str
    seed: int
    converged: bool
    snapshots: list[str]
    final: dict[str, Any]
    history: list[dict[str, Any]]
    stopped: dict[str, Any] = field(default_factory=dict)  # {"reason": STOP_REASONS[...], "epoch": epochs trained}

    @property
    def epochs_trained(self) -> int:
        """The epoch of the final model (the cap --epochs, or the earlier one where --until-train-acc stopped)."""
        return int(self.stopped["epoch"])

    def as_dict(self, history: bool = True) -> dict[str, Any]:
        out = asdict(self)
        if not history:
            out.pop("history")
        return out


def data_options_with_seeds(opts: DataOptions, seed: int) -> DataOptions:
    """Fill unset data seeds deterministically from the run seed, so every rank and every rerun agrees."""
    derived = derive_seeds(seed, "noise", "split", "class_sample", "train_size")
    return DataOptions(**{**asdict(opts),
                          "train_size_seed": opts.train_size_seed if opts.train_size_seed is not None
                          else derived["train_size"],
                          "noise_seed": opts.noise_seed if opts.noise_seed is not None else derived["noise"],
                          "split_seed": opts.split_seed if opts.split_seed is not None else derived["split"],
                          "class_sample_seed": opts.class_sample_seed if opts.class_sample_seed is not None
                          else derived["class_sample"]})
