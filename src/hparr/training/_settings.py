"""What a training run is asked to do (`TrainSettings`, which checks itself) and what it returns (`TrainResult`)."""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import Any, Mapping, Sequence

import torch

from ..data import DataOptions
from ..defaults import STOP_REASONS
from ..errors import UsageError
from ..layout import TRAIN_LOG
from ..models import check_arch
from ..provenance import derive_seeds

# why a training run stopped, as its final snapshot, its result and the manifest of `reproduce` record it
OPTIMIZERS = ("sgd", "adam")
# the weight decay of a run that sets none, per optimizer: the paper's code gave SGD 1e-4 and Adam none
DEFAULT_WEIGHT_DECAY = {"sgd": 1e-4, "adam": 0.0}


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
    weight_decay: float | None = None  # None: DEFAULT_WEIGHT_DECAY of the optimizer (set when the settings are made)
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
    log: str | None = TRAIN_LOG
    track: bool = True
    track_every_steps: int = 0
    until_train_acc: float | None = None  # stop after the first epoch whose own-label train top-1 (%) reaches it

    def __post_init__(self) -> None:
        if self.weight_decay is None:
            self.weight_decay = DEFAULT_WEIGHT_DECAY.get(self.optimizer, DEFAULT_WEIGHT_DECAY["sgd"])

    def validate(self) -> None:
        check_arch(self.arch)
        self.data.validate()
        checks = [
            (self.epochs >= 0, f"--epochs must be >= 0, got {self.epochs}"),
            (self.start_epoch >= 0, f"--start-epoch must be >= 0, got {self.start_epoch}"),
            (self.batch_size >= 1, f"--batch-size must be >= 1, got {self.batch_size}"),
            (self.optimizer in OPTIMIZERS, f"unknown optimizer {self.optimizer!r}; supported: {', '.join(OPTIMIZERS)}"),
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
    and after which epoch training stopped (as the final snapshot records it), and where --until-train-acc
    looked out of reach (`target_outlook`).
    """

    run_dir: str
    seed: int
    converged: bool
    snapshots: list[str]
    final: dict[str, Any]
    history: list[dict[str, Any]]
    # {"reason": STOP_REASONS[...], "epoch": epochs trained[, "out_of_reach": target_outlook(...) of the epoch
    # where --until-train-acc first looked out of reach within --epochs]}
    stopped: dict[str, Any] = field(default_factory=dict)

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


# --- what a run says as it goes and at its end -----------------------------------------------------------

OUTLOOK_EPOCHS = 5  # the epochs over which `target_outlook` measures the current rate


def target_outlook(history: Sequence[Mapping[str, Any]], target: float, epochs: int,
                   window: int | None = None) -> dict[str, Any] | None:
    """Whether --until-train-acc `target` looks out of reach within `epochs` at the current rate.

    From the own-label train top-1 `a` of the last epoch `k` and of epoch `k - window` (the epochs' records in
    `history`; `window` is OUTLOOK_EPOCHS unless given), the current rate is the mean gain per epoch over the
    window, `rate = (a_k - a_(k-window)) / window`, and the projection carries it on in a straight line to the
    last epoch: `projected = a_k + rate * (epochs - k)`, clipped to [0, 100]. Returns {"epoch": k,
    "train_top1": a_k, "rate": rate, "window": window, "projected": projected} when `projected < target`; None
    when it is not, when the target is reached, and until both epochs are measured (the first `window` epochs).
    Accuracy curves flatten as they rise, so a straight line from recent progress tends to overestimate what the
    last epoch reaches, and the warning comes late rather than early; a run that plateaus and then jumps (a lr
    schedule, a late phase of memorization) can still reach a target this called out of reach.
    """
    window = OUTLOOK_EPOCHS if window is None else window
    top1 = {int(r["epoch"]): float(r["train_top1"]) for r in history
            if r.get("train_top1") is not None and r.get("epoch") is not None}
    if not top1:
        return None
    k = max(top1)
    if k - window not in top1 or top1[k] >= target or k >= epochs:
        return None
    rate = (top1[k] - top1[k - window]) / window
    projected = min(100.0, max(0.0, top1[k] + rate * (epochs - k)))
    if projected >= target:
        return None
    return {"epoch": k, "train_top1": top1[k], "rate": rate, "window": window, "projected": projected}


def duration_text(seconds: float) -> str:
    """A duration to the second, as a person reads it: 42s, 3m05s, 2h07m."""
    total = max(0, round(seconds))
    hours, rest = divmod(total, 3600)
    minutes, secs = divmod(rest, 60)
    if hours:
        return f"{hours}h{minutes:02d}m"
    return f"{minutes}m{secs:02d}s" if minutes else f"{secs}s"




def final_headline(final: Mapping[str, Mapping[str, Any]], stopped: Mapping[str, Any], epochs: int,
                   until_train_acc: float | None = None) -> str:
    """One line on the final model of a run: its epoch of `epochs`, why training stopped, and its top-1 on
    each split of `final` ({"test": {"top1": ...}, "val": ..., "train": ...}; train: on the labels it was
    trained on, corrupted where they were)."""
    reason = str(stopped.get("reason", STOP_REASONS["epochs"]))
    if until_train_acc is not None and reason != STOP_REASONS["target"]:
        reason += f"; --until-train-acc {until_train_acc:g} not reached"
        seen = stopped.get("out_of_reach")
        if isinstance(seen, Mapping):
            reason += f", out of reach at the rate of epochs {seen['epoch'] - seen['window']}-{seen['epoch']}"
    accuracies = ", ".join(f"{split} top-1 {final[split]['top1']:.2f}%" + (" (the labels it was trained on)"
                                                                           if split == "train" else "")
                           for split in ("test", "val", "train") if split in final)
    return f"final model, epoch {stopped.get('epoch', epochs)} of {epochs} ({reason}): {accuracies or 'not evaluated'}"
