"""Training with snapshots in the original layout, exact resume, TensorBoard and torchrun (DDP)."""
from __future__ import annotations

import contextlib
import functools
import logging
import math
import sys
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn
import torch.nn.functional as F

from . import checkpoints, distributed, files, layout
from .data import DataOptions, load_data, make_loader
from .errors import HparrError, UsageError
from .metrics import correct_counts
from .models import build_model, check_arch
from .provenance import derive_seeds, resolve_seed, versions
from .results import SNAPSHOT_FORMAT

log = logging.getLogger("hparr.train")

PLATEAU_EPOCHS = 10
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


CHANNELS_LAST_MAX_WIDTH = 128


def use_channels_last(model: nn.Module, device: torch.device, choice: str = "auto") -> bool:
    """Whether to train in channels_last. "auto": always on the GPU; on the CPU only for narrow convnets
    (at most 128 channels), where it was measured 1.6x faster for lenet and 2-5% slower for VGG/AlexNet.
    The rule depends on the model alone, so a resumed run makes the same choice."""
    if choice != "auto":
        return choice == "on"
    widths = [m.out_channels for m in model.modules() if isinstance(m, nn.Conv2d)]
    if not widths:
        return False
    return device.type == "cuda" or max(widths) <= CHANNELS_LAST_MAX_WIDTH


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
def compile_model(model: nn.Module, backend: str = "inductor") -> nn.Module:
    """`model` compiled with torch.compile for training steps: a wrapper that shares its parameters, so the
    plain `model` still gives snapshots without the wrapper's `_orig_mod.` prefix and evaluates eagerly.
    Static shapes: a run compiles once for its batch size and once for the epoch's last, shorter batch.
    Under torchrun, DistributedDataParallel wraps the compiled module (the order PyTorch documents)."""
    return torch.compile(model, backend=backend, dynamic=False)


def make_optimizer(params, settings: TrainSettings):
    """The original's optimizers: SGD (momentum, weight decay, optional StepLR per epoch) or Adam(lr)."""
    if settings.optimizer == "sgd":
        opt = torch.optim.SGD(params, lr=settings.lr, momentum=settings.momentum, weight_decay=settings.weight_decay)
    else:
        opt = torch.optim.Adam(params, lr=settings.lr)
    sched = None
    if settings.optimizer == "sgd" and settings.lr_step > 0 and settings.lr_decay > 0:
        sched = torch.optim.lr_scheduler.StepLR(opt, step_size=settings.lr_step, gamma=settings.lr_decay)
    return opt, sched


def evaluate(model: nn.Module, loader, device: torch.device, amp_dtype: torch.dtype | None = None) -> dict[str, float]:
    """Mean loss, top-1 and top-5 accuracy (%) over `loader`, summed across ranks under torchrun."""
    was_training = model.training
    model.eval()
    loss_sum, c1, c5, n = 0.0, 0, 0, 0
    with torch.inference_mode(), _autocast(device, amp_dtype):
        for x, y in loader:
            x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
            out = model(x).float()
            loss_sum += float(F.cross_entropy(out, y, reduction="sum"))
            a, b = correct_counts(out, y, 5).tolist()
            c1, c5, n = c1 + a, c5 + b, n + y.numel()
    model.train(was_training)
    loss_sum, c1, c5, n = distributed.all_reduce_sum([loss_sum, c1, c5, n], device)
    if n == 0:
        raise HparrError("evaluation set is empty")
    return {"loss": loss_sum / n, "top1": 100.0 * c1 / n, "top5": 100.0 * c5 / n, "count": int(n)}


def _autocast(device: torch.device, dtype: torch.dtype | None):
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=dtype)


def _amp_dtype(amp: str | None) -> torch.dtype | None:
    return {"bf16": torch.bfloat16, "fp16": torch.float16}.get(amp) if amp else None


class _TensorBoard:
    """A SummaryWriter whose failed writes (a full disk, ...) are one-line HparrErrors naming its folder."""

    def __init__(self, log_dir: Path):
        from torch.utils.tensorboard import SummaryWriter

        self.log_dir = log_dir
        self._writer = self._call(SummaryWriter, log_dir=str(log_dir))

    def _call(self, method, *args, **kwargs):
        try:
            return method(*args, **kwargs)
        except OSError as exc:  # raised by the writer's thread, or again by each later call
            raise (files.write_error(exc, self.log_dir, "snapshots") or exc) from None

    def add_summary(self, summary, global_step: int) -> None:
        """A summary of many values as one event (the bias tracker's step)."""
        self._call(self._writer._get_file_writer().add_summary, summary, global_step)

    def __getattr__(self, name: str):
        if name.startswith("_"):
            raise AttributeError(name)
        attr = getattr(self._writer, name)
        return functools.partial(self._call, attr) if callable(attr) else attr


def _data_options_with_seeds(opts: DataOptions, seed: int) -> DataOptions:
    """Fill unset data seeds deterministically from the run seed, so every rank and every rerun agrees."""
    derived = derive_seeds(seed, "noise", "split", "class_sample", "train_size")
    return DataOptions(**{**asdict(opts),
                          "train_size_seed": opts.train_size_seed if opts.train_size_seed is not None
                          else derived["train_size"],
                          "noise_seed": opts.noise_seed if opts.noise_seed is not None else derived["noise"],
                          "split_seed": opts.split_seed if opts.split_seed is not None else derived["split"],
                          "class_sample_seed": opts.class_sample_seed if opts.class_sample_seed is not None
                          else derived["class_sample"]})


def _resolve_resume(spec: str, run_dir: Path, exclude: tuple[Path, ...] = ()) -> Path | None:
    """The snapshot to resume from; 'auto' on a run with no snapshot yet (`exclude` aside) means a fresh start."""
    if spec == "auto":
        try:
            return checkpoints.newest_snapshot(run_dir, exclude)
        except (HparrError, UsageError):
            log.info("no snapshot of this configuration in %s yet: starting from scratch", run_dir)
            return None
    if Path(spec).is_dir():
        return checkpoints.newest_snapshot(spec)
    return Path(spec)


class Run:
    """One training run: built from settings, then `fit()` or `evaluate()`."""

    def __init__(self, settings: TrainSettings):
        settings.validate()
        self.settings = settings
        self.ctx = distributed.init_from_env(settings.cuda and torch.cuda.is_available())
        if not self.ctx.is_main:  # rank 0 alone reports
            logging.getLogger("hparr").setLevel(logging.WARNING)
        self.device = distributed.select_device(settings.cuda, self.ctx.local_rank)
        if self.device.type == "cuda":
            torch.backends.cudnn.benchmark = True
        self.amp_dtype = _amp_dtype(settings.amp) if self.device.type == "cuda" else None
        if settings.amp and self.device.type != "cuda":
            log.warning("--amp needs a GPU: training in float32")
        seed = resolve_seed(settings.seed)
        if self.ctx.distributed:  # one seed for all ranks, chosen by rank 0
            seed = int(distributed.all_reduce_sum([seed if self.ctx.is_main else 0], torch.device("cpu"))[0])
        self.seed = seed
        self.seeds = {"seed": seed, "model_init": seed, **derive_seeds(seed, "data_order", "dropout")}
        self.data_options = _data_options_with_seeds(settings.data, seed)
        self.data = load_data(self.data_options)
        self.seeds.update(noise_seed=self.data_options.noise_seed, split_seed=self.data_options.split_seed,
                          class_sample_seed=self.data_options.class_sample_seed,
                          train_size_seed=self.data_options.train_size_seed)
        self.run_dir = layout.run_directory(settings.models_path, self.data_options.dataset, settings.arch,
                                                 settings.seed, self.data_options.subsample_classes,
                                                 self.data_options.noise, self.data_options.train_size)
        self.model = build_model(settings.arch, self.data.num_classes, self.data.in_channels, self.data.image_size,
                                 seed=seed, pretrained=settings.pretrained, weights=settings.weights,
                                 state_dict_prefix=settings.state_dict_prefix)
        if settings.sync_bn and self.ctx.distributed:
            self.model = nn.SyncBatchNorm.convert_sync_batchnorm(self.model)
        self.channels_last = use_channels_last(self.model, self.device, settings.channels_last)
        self.model.to(self.device, memory_format=torch.channels_last if self.channels_last else torch.preserve_format)
        self.optimizer, self.scheduler = make_optimizer(self.model.parameters(), settings)
        self.data_generator = torch.Generator().manual_seed(self.seeds["data_order"])
        self.dropout_state = torch.Generator().manual_seed(self.seeds["dropout"]).get_state()
        self.cuda_states: list[torch.Tensor] | None = None
        self.start_epoch = settings.start_epoch
        self.stopped: dict[str, Any] | None = None  # set when training ends; recorded in the final snapshot
        self.history: list[dict[str, Any]] = []
        self.resumed_from: Path | None = None
        # snapshots of another configuration in the run directory: refused or replaced by fit(), never resumed
        self.config = checkpoints.weight_configuration(asdict(settings), self.seeds)
        self.other_runs = checkpoints.other_configurations(self.run_dir, self.config)
        others = tuple(p for p, _ in self.other_runs)
        resume = _resolve_resume(settings.resume_from, self.run_dir, others) if settings.resume_from else None
        if resume is not None:
            self._resume(resume)

    # -- loaders ------------------------------------------------------------------------------------
    def loader(self, split: str, train: bool | None = None):
        return make_loader(self.data, split, self.settings.batch_size, train=train,
                           generator=self.data_generator if (split == "train" if train is None else train) else None,
                           device=self.device, workers=self.settings.workers, rank=self.ctx.rank,
                           world_size=self.ctx.world_size, channels_last=self.channels_last)

    # -- snapshots ----------------------------------------------------------------------------------
    def _resume(self, path: Path) -> None:
        ckpt = checkpoints.read_checkpoint(path, mmap=False)
        obj = ckpt.obj
        state = checkpoints.match_prefix(ckpt.state, self.model, self.settings.state_dict_prefix, source=str(path))
        checkpoints.load_weights(self.model, dict(state), source=str(path))
        self.resumed_from = path
        if not (isinstance(obj, dict) and "model_state_dict" in obj):
            log.info("resumed weights from %s (a bare state_dict: optimizer starts fresh at epoch %d)",
                     path, self.start_epoch)
            return
        recorded = (obj.get("settings") or {}).get("optimizer") if isinstance(obj.get("settings"), dict) else None
        if isinstance(recorded, str) and recorded != self.settings.optimizer:
            raise HparrError(f"{path} was trained with --optimizer {recorded}: its optimizer state cannot be "
                             f"resumed with --optimizer {self.settings.optimizer}")
        try:
            if obj.get("optimizer_state_dict"):
                self.optimizer.load_state_dict(obj["optimizer_state_dict"])
            if self.scheduler is not None and obj.get("scheduler_state_dict"):
                self.scheduler.load_state_dict(obj["scheduler_state_dict"])
        except (KeyError, ValueError, TypeError, RuntimeError) as exc:
            raise HparrError(f"cannot resume the optimizer of {path} ({type(exc).__name__}: {exc}); it was "
                             "saved by another optimizer or model") from None
        self.start_epoch = checkpoints.snapshot_epoch(obj, path)
        rng = obj.get("rng") or {}
        if "data_order" in rng:
            self.data_generator.set_state(rng["data_order"])
        if "dropout" in rng:
            self.dropout_state = rng["dropout"]
        self.cuda_states = rng.get("cuda")
        self.history = list(obj.get("history") or [])
        log.info("resumed from %s: %d epochs completed", path, self.start_epoch)

    def _payload(self, epochs_completed: int, metrics: dict[str, Any]) -> dict[str, Any]:
        val = metrics.get("val") or metrics.get("test") or {}
        rng = {"data_order": self.data_generator.get_state(), "dropout": torch.get_rng_state()}
        if self.device.type == "cuda":
            rng["cuda"] = torch.cuda.get_rng_state_all()
        settings = asdict(self.settings)
        return {
            "format": SNAPSHOT_FORMAT,
            "arch": self.settings.arch, "dataset": self.data_options.dataset,
            "num_classes": self.data.num_classes, "in_channels": self.data.in_channels,
            "input_size": self.data.image_size, "pretrained": self.settings.pretrained,
            "epochs_completed": epochs_completed, "epoch": epochs_completed - 1,
            "top1_acc": val.get("top1"), "top5_acc": val.get("top5"), "metrics": metrics,
            "model_state_dict": self.model.state_dict(),
            "optimizer_state_dict": self.optimizer.state_dict(),
            "scheduler_state_dict": self.scheduler.state_dict() if self.scheduler is not None else {},
            "rng": rng, "seeds": dict(self.seeds), "settings": settings,
            "data": checkpoints.data_record(self.data.meta),
            "normalization": {"mean": list(self.data.mean), "std": list(self.data.std),
                              "normalized": not self.data_options.unnormalize},
            "versions": versions(), "history": list(self.history),
            **({"stopped": dict(self.stopped)} if self.stopped is not None else {}),
        }

    def save(self, name: str, epochs_completed: int, metrics: dict[str, Any]) -> Path | None:
        if not self.ctx.is_main:
            return None
        path = self.run_dir / name
        checkpoints.save_snapshot(path, self._payload(epochs_completed, metrics))
        log.info("saved %s", path)
        return path

    # -- the loop -----------------------------------------------------------------------------------
    def evaluate(self, split: str) -> dict[str, float]:
        """Loss, top-1 and top-5 of the current model on `split` ("test", "val" or "train")."""
        if split == "val" and self.data.val is None:
            raise UsageError("no validation set: use --split")
        return evaluate(self.model, self.loader(split, train=False), self.device, self.amp_dtype)

    def fit(self) -> TrainResult:
        """Train from `start_epoch` to `epochs`, writing snapshots; return a summary."""
        s = self.settings
        self._claim_run_dir()
        if self.ctx.is_main:
            files.ensure_dir(self.run_dir)
        log_path = self.run_dir / s.log if (s.log and self.ctx.is_main) else None
        with files.log_to(log_path, what="snapshots"), torch.random.fork_rng(devices=[]), self._writer() as writer:
            torch.set_rng_state(self.dropout_state)
            if self.cuda_states is not None and self.device.type == "cuda":
                torch.cuda.set_rng_state_all(self.cuda_states)
            elif self.device.type == "cuda":
                torch.cuda.manual_seed_all(self.seeds["dropout"])
            return self._fit(writer)

    def _claim_run_dir(self) -> None:
        """Refuse (before anything is written) to train into a run directory that holds snapshots of another
        configuration; with `overwrite`, remove them first and say so."""
        if not self.other_runs:
            return
        differences = "; ".join(self.other_runs[0][1])
        if not self.settings.overwrite:
            hint = ("; --seed was not given, so a new seed was drawn" if self.settings.seed is None
                    and "--seed " in differences else "")
            raise HparrError(f"{self.run_dir} already holds snapshots of another configuration ({differences}"
                             f"{hint}); pass --overwrite to replace that run, rerun with its flags and "
                             "--resume-from auto to continue it, or choose another --models-path")
        if self.ctx.is_main:
            names = [p.name for p, _ in self.other_runs]
            log.warning("--overwrite: replacing the run in %s (%s): removing its %d snapshot(s) %s", self.run_dir,
                        differences, len(names), ", ".join(names[:6]) + (" ..." if len(names) > 6 else ""))
            for path, _ in self.other_runs:
                files.remove(path)

            files.remove(self.run_dir / layout.TRACKING_NAME)  # the replaced run's tracked statistics go with it
        self.other_runs = []

    @contextlib.contextmanager
    def _writer(self):
        if not (self.settings.tb_logdir and self.ctx.is_main):
            yield None
            return
        models = self.settings.models_path
        rel = self.run_dir.relative_to(models) if self.run_dir.is_relative_to(models) \
            else Path(self.run_dir.name)
        writer = _TensorBoard(Path(self.settings.tb_logdir) / rel)
        try:
            yield writer
        except BaseException:
            with contextlib.suppress(Exception):  # the error on its way out says what went wrong
                writer.close()
            raise
        writer.close()

    def _fit(self, writer) -> TrainResult:
        s = self.settings
        model = compile_model(self.model, s.compile) if s.compile else self.model
        if self.ctx.distributed:
            model = nn.parallel.DistributedDataParallel(
                model, device_ids=[self.ctx.local_rank] if self.device.type == "cuda" else None)
        scaler = torch.amp.GradScaler("cuda") if self.amp_dtype == torch.float16 else None
        snapshots: list[str] = []
        if writer is not None and self.start_epoch == 0:
            writer.add_text("settings", "\n".join(f"    {k}: {v}" for k, v in asdict(s).items()), 0)
        log.info("training %s on %s: %d train / %s val / %d test samples, seed %d, run dir %s",
                 s.arch, self.data_options.dataset, len(self.data.train),
                 len(self.data.val) if self.data.val is not None else 0, len(self.data.test), self.seed, self.run_dir)
        if self.start_epoch == 0 and self.resumed_from is None:
            path = self.save(layout.init_name(s.arch, s.pretrained), 0, {})
            snapshots += [str(path)] if path else []
        train_loader = self.loader("train")
        tracker = self._start_tracking(writer, len(train_loader))
        with tracker if tracker is not None else contextlib.nullcontext():  # its file complete at the end
            return self._epochs(model, train_loader, scaler, writer, tracker, snapshots)

    def _target_reached(self, record: dict[str, Any]) -> bool:
        """Whether an epoch's record reaches --until-train-acc (top-1 on the model's own training labels)."""
        target = self.settings.until_train_acc
        return target is not None and record.get("train_top1") is not None and record["train_top1"] >= target

    def _epochs(self, model: nn.Module, train_loader, scaler, writer, tracker, snapshots: list[str]) -> TrainResult:
        s = self.settings
        every = s.snapshot_every if s.snapshot_every >= 1 else max(s.epochs, 1)
        converged, previous = True, None
        last = s.epochs
        stop = STOP_REASONS["epochs"]
        if self.history and self.history[-1].get("epoch") == self.start_epoch and self._target_reached(
                self.history[-1]):  # resumed from the epoch where the target was reached: nothing left to train
            last, stop = self.start_epoch, STOP_REASONS["target"]
        for epoch in range(self.start_epoch, last):
            model.train()
            train_loss = self._train_epoch(model, train_loader, epoch, scaler, tracker)
            if self.scheduler is not None:
                self.scheduler.step()
            lr = self.optimizer.param_groups[0]["lr"]
            record: dict[str, Any] = {"epoch": epoch + 1, "train_loss": train_loss, "lr": lr}
            snap = epoch < s.snapshot_all_until or (epoch + 1) % every == 0 or epoch + 1 == s.epochs
            watch = s.kill_plateaus and epoch < PLATEAU_EPOCHS
            metrics: dict[str, Any] = {}
            if self.data.val is not None and (snap or watch):
                metrics["val"] = self.evaluate("val")
            if s.train_acc and snap or (watch and self.data.val is None) or s.until_train_acc is not None:
                metrics["train"] = self.evaluate("train")  # eval mode, no augmentation, the labels trained on
            if snap:
                metrics["test"] = self.evaluate("test")  # reported only, never used for selection
            record.update({f"{k}_{m}": v for k, d in metrics.items() for m, v in d.items() if m != "count"})
            self.history.append(record)
            self._report(writer, epoch, record)
            if tracker is not None:
                tracker.step((epoch + 1) * len(train_loader), epoch=epoch + 1)
            if snap:
                if tracker is not None:
                    tracker.sync()  # a snapshot on disk always has its rows
                path = self.save(layout.epoch_name(s.arch, epoch), epoch + 1, metrics)
                snapshots += [str(path)] if path else []
            if self._target_reached(record):
                log.info("own-label train top-1 %.2f%% reached --until-train-acc %g at epoch %d: stopping",
                         record["train_top1"], s.until_train_acc, epoch + 1)
                last, stop = epoch + 1, STOP_REASONS["target"]
                break
            if watch:
                watched = (metrics.get("val") or metrics["train"])["top1"]
                if previous is not None and watched == previous:
                    log.warning("%s accuracy stalled at %.2f%% at epoch %d: stopping (--kill-plateaus)",
                                "validation" if "val" in metrics else "training", watched, epoch + 1)
                    converged = False
                    last, stop = epoch + 1, STOP_REASONS["plateau"]
                    break
                previous = watched
        if s.until_train_acc is not None and stop == STOP_REASONS["epochs"] and s.epochs > 0:
            log.warning("own-label train top-1 did not reach --until-train-acc %g in %d epochs",
                        s.until_train_acc, s.epochs)
        self.stopped = {"reason": stop, "epoch": last}
        final_metrics = {"test": self.evaluate("test")} if s.epochs > 0 else {}
        if self.data.val is not None and s.epochs > 0:
            final_metrics["val"] = self.evaluate("val")
        final = layout.final_name(s.arch, last, s.pretrained)
        # a run resumed from its own final snapshot leaves that file as it is (its size and mtime are part of the
        # identity that finished results record), and writes it where it is missing
        if converged and s.epochs > 0 and (self.start_epoch < last or
                                           (self.start_epoch == last and not (self.run_dir / final).is_file())):
            path = self.save(final, last, final_metrics)
            snapshots += [str(path)] if path else []
        if writer is not None and final_metrics:
            writer.add_scalar("Loss/test", final_metrics["test"]["loss"], last)
            writer.add_scalar("Accuracy/test/top1", final_metrics["test"]["top1"], last)
            writer.add_scalar("Accuracy/test/top5", final_metrics["test"]["top5"], last)
            hparams = {k: v for k, v in {**asdict(s), **asdict(self.data_options)}.items()
                       if isinstance(v, (int, float, str, bool))}
            writer.add_hparams(hparams, {"hparam/test_top1": final_metrics["test"]["top1"]}, run_name=".")
        if final_metrics:
            t = final_metrics["test"]
            log.info("test: loss %.4f top1 %.2f%% top5 %.2f%%", t["loss"], t["top1"], t["top5"])
        return TrainResult(run_dir=str(self.run_dir), seed=self.seed, converged=converged, snapshots=snapshots,
                           final=final_metrics, history=self.history, stopped=dict(self.stopped))

    def _train_epoch(self, model: nn.Module, loader, epoch: int, scaler, tracker=None) -> float:
        from tqdm.auto import tqdm

        show = self.settings.progress and self.ctx.is_main and sys.stderr.isatty()
        bar = tqdm(total=len(loader), desc=f"epoch {epoch + 1}/{self.settings.epochs}", leave=False, disable=not show)
        loss_sum = torch.zeros((), device=self.device, dtype=torch.float64)
        batches = 0
        for x, y in loader:
            x, y = x.to(self.device, non_blocking=True), y.to(self.device, non_blocking=True)
            self.optimizer.zero_grad(set_to_none=True)
            with _autocast(self.device, self.amp_dtype):
                loss = F.cross_entropy(model(x), y)
            if scaler is not None:
                scaler.scale(loss).backward()
                scaler.step(self.optimizer)
                scaler.update()
            else:
                loss.backward()
                self.optimizer.step()
            loss_sum += loss.detach()
            batches += 1
            if tracker is not None:
                self._track_within_epoch(tracker, epoch, batches, len(loader))
            if show and batches % 10 == 0:
                bar.set_postfix(loss=f"{float(loss_sum) / batches:.4f}")
            bar.update()
        bar.close()
        mean = float(loss_sum) / max(batches, 1)
        if not math.isfinite(mean):
            raise HparrError(f"the training loss became {mean} in epoch {epoch + 1}: stopping. The last good "
                             f"snapshot in {self.run_dir} is kept; try a smaller --lr")
        return mean

    # -- bias tracking (hparr.track) -----------------------------------------------------------------
    def _start_tracking(self, writer, per_epoch: int):
        """The bias tracker of this run (rank 0 alone, unless --no-track), writing `tracking.csv` in the run
        directory. A fresh run starts the file anew; a resumed one drops the rows after its snapshot (they
        are computed again) and tracks the resumed weights if their row is missing."""
        if not (self.settings.track and self.ctx.is_main):
            return None
        from .track import BiasTracker

        init = None
        if self.resumed_from is not None:
            name = layout.init_name(self.settings.arch, self.settings.pretrained)
            found = [p for p in (self.resumed_from.parent / name, self.run_dir / name) if p.is_file()]
            if found:
                init = checkpoints.load_state_dict_file(found[0])
            else:
                log.warning("no %s beside %s: tracking without the distances from initialization",
                            name, self.resumed_from)
        size = self.data.image_size
        tracker = BiasTracker(self.model, init_state=init, writer=writer, csv_path=self.run_dir / layout.TRACKING_NAME,
                              input_shape=(2, self.data.in_channels, size, size),
                              distances=self.resumed_from is None or init is not None,
                              append=self.resumed_from is not None)
        tracker.start(self.start_epoch * per_epoch, epoch=self.start_epoch)
        return tracker

    def _track_within_epoch(self, tracker, epoch: int, batch: int, per_epoch: int) -> None:
        """With --track-every-steps K, track after every K-th optimizer step (epoch ends are tracked by `_fit`)."""
        step = epoch * per_epoch + batch
        if self.settings.track_every_steps and step % self.settings.track_every_steps == 0 and batch < per_epoch:
            tracker.step(step, epoch=epoch + batch / per_epoch, flush=False)

    def _report(self, writer, epoch: int, record: dict[str, Any]) -> None:
        parts = [f"epoch {epoch + 1}/{self.settings.epochs}", f"loss {record['train_loss']:.4f}",
                 f"lr {record['lr']:.3g}"]
        for split in ("train", "val", "test"):
            if f"{split}_top1" in record:
                parts.append(f"{split} top1 {record[f'{split}_top1']:.2f}%")
        if self.ctx.is_main:
            log.info("  ".join(parts))
        if writer is None:
            return
        writer.add_scalar("Loss/train", record["train_loss"], epoch)
        writer.add_scalar("Lr", record["lr"], epoch)
        for split in ("train", "val", "test"):
            if f"{split}_top1" in record:
                writer.add_scalar(f"Loss/{split}" if split != "train" else "Loss/train_eval",
                                  record[f"{split}_loss"], epoch)
                writer.add_scalar(f"Accuracy/{split}/top1", record[f"{split}_top1"], epoch)
                writer.add_scalar(f"Accuracy/{split}/top5", record[f"{split}_top5"], epoch)


def train(settings: TrainSettings) -> TrainResult:
    """Run a whole training as the settings say; its snapshots are written as it goes."""
    run = Run(settings)
    try:
        return run.fit()
    finally:
        distributed.shutdown(run.ctx)
