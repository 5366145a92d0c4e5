"""Training with snapshots in the original layout, exact resume, TensorBoard and torchrun (DDP)."""
from __future__ import annotations

import contextlib
import logging
import math
import sys
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn
import torch.nn.functional as F
from tqdm.auto import tqdm

from . import checkpoints, distributed, files, layout, rundir, tensorboard_log
from .data import load_data, make_loader
from .errors import HparrError, UsageError
from .layers import check_model
from .metrics import autocast, evaluate
from .models import build_model
from .provenance import derive_seeds, resolve_seed
from .snapshots import Snapshots, resolve_resume
from .train_settings import (
    STOP_REASONS,
    EvaluateSettings,
    TrainResult,
    TrainSettings,
    data_options_with_seeds,
    duration_text,
    target_outlook,
)

log = logging.getLogger("hparr.train")

PLATEAU_EPOCHS = 10


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


def compile_model(model: nn.Module, backend: str = "inductor") -> nn.Module:
    """`model` compiled with torch.compile for training steps: a wrapper that shares its parameters, so the
    plain `model` still gives snapshots without the wrapper's `_orig_mod.` prefix and evaluates eagerly.
    Static shapes: a run compiles once for its batch size and once for the epoch's last, shorter batch.
    Under torchrun, DistributedDataParallel wraps the compiled module (the order PyTorch documents)."""
    return torch.compile(model, backend=backend, dynamic=False)


def make_optimizer(params, settings: TrainSettings):
    """The original's optimizers: SGD (momentum, weight decay, optional StepLR per epoch) or Adam(lr), Adam with
    the run's weight decay as its `weight_decay` (an L2 penalty added to the gradient; none by default, as the
    original's Adam had none)."""
    if settings.optimizer == "sgd":
        opt = torch.optim.SGD(params, lr=settings.lr, momentum=settings.momentum, weight_decay=settings.weight_decay)
    else:
        opt = torch.optim.Adam(params, lr=settings.lr, weight_decay=settings.weight_decay)
    sched = None
    if settings.optimizer == "sgd" and settings.lr_step > 0 and settings.lr_decay > 0:
        sched = torch.optim.lr_scheduler.StepLR(opt, step_size=settings.lr_step, gamma=settings.lr_decay)
    return opt, sched


def _amp_dtype(amp: str | None) -> torch.dtype | None:
    return {"bf16": torch.bfloat16, "fp16": torch.float16}.get(amp) if amp else None


class Run(Snapshots):
    """One training run, built from settings, then `fit()` or `evaluate()`; a context manager that releases
    what the run holds (`close()`): `with Run(settings) as run: run.fit()`.

    A run that trains (`writes`, the default) holds an exclusive lock on its run directory from the start (rank 0
    alone, which alone writes there): a second run into it is refused at once, naming the first. A run built
    only to evaluate a snapshot (`writes=False`) takes no lock and writes nothing."""

    def __init__(self, settings: TrainSettings, writes: bool = True):
        settings.validate()
        self.settings = settings
        self.ctx = distributed.init_from_env(settings.cuda and torch.cuda.is_available())
        self._lock: rundir.RunDirectoryLock | None = None
        try:
            self._setup(settings, writes)
        except BaseException:
            self.close()
            raise

    def __enter__(self) -> Run:
        return self

    def __exit__(self, *exc_info) -> None:
        self.close()

    def close(self) -> None:
        """Release the run directory and leave the process group of torchrun (either may be done already)."""
        if self._lock is not None:
            self._lock.release()
            self._lock = None
        distributed.shutdown(self.ctx)

    def _setup(self, settings: TrainSettings, writes: bool) -> None:
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
            seed = int(distributed.all_reduce_sum([seed if self.ctx.is_main else 0], self.device)[0])
        self.seed = seed
        self.seeds = {"seed": seed, "model_init": seed, **derive_seeds(seed, "data_order", "dropout")}
        self.data_options = data_options_with_seeds(settings.data, seed)
        self.run_dir = layout.run_directory(settings.models_path, self.data_options.dataset, settings.arch,
                                            settings.seed, self.data_options.subsample_classes,
                                            self.data_options.noise, self.data_options.train_size)
        if writes:
            self._lock_run_dir()
        self.data = load_data(self.data_options)
        self.seeds.update(noise_seed=self.data_options.noise_seed, split_seed=self.data_options.split_seed,
                          class_sample_seed=self.data_options.class_sample_seed,
                          train_size_seed=self.data_options.train_size_seed)
        self.model = build_model(settings.arch, self.data.num_classes, self.data.in_channels, self.data.image_size,
                                 seed=seed, pretrained=settings.pretrained, weights=settings.weights,
                                 state_dict_prefix=settings.state_dict_prefix)
        # before anything is written: a model that cannot take the input hparr passes, or (when the bias
        # statistics are tracked) one with no layer to analyze, is refused in one line
        size = self.data.image_size
        check_model(self.model, (2, self.data.in_channels, size, size), f"--arch {settings.arch}",
                    analyzed=settings.track, no_layer_hint="pass --no-track to train it without tracking the bias "
                                                           "statistics")
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
        self.out_of_reach: dict[str, Any] | None = None  # when --until-train-acc first looked out of reach
        self.history: list[dict[str, Any]] = []
        self.resumed_from: Path | None = None
        # snapshots of another configuration in the run directory: refused or replaced by fit(), never resumed
        self.config = rundir.weight_configuration(asdict(settings), self.seeds, self.data.meta)
        self.other_runs = rundir.other_configurations(self.run_dir, self.config)
        others = tuple(p for p, _ in self.other_runs)
        resume = resolve_resume(settings.resume_from, self.run_dir, others) if settings.resume_from else None
        if resume is not None:
            self._resume(resume)

    def _lock_run_dir(self) -> None:
        """Rank 0 locks the run directory; every rank learns whether it could, so that none waits for the others
        in a collective call after rank 0 was refused."""
        refused = None
        if self.ctx.is_main:
            try:
                self._lock = rundir.RunDirectoryLock.acquire(self.run_dir)
            except HparrError as exc:
                refused = exc
        if self.ctx.distributed and distributed.all_reduce_sum([float(refused is not None)], self.device)[0]:
            refused = refused or UsageError(f"{self.run_dir} is in use by another training run (rank 0 names it)")
        if refused is not None:
            raise refused

    # -- loaders ------------------------------------------------------------------------------------
    def loader(self, split: str, train: bool | None = None):
        return make_loader(self.data, split, self.settings.batch_size, train=train,
                           generator=self.data_generator if (split == "train" if train is None else train) else None,
                           device=self.device, workers=self.settings.workers, rank=self.ctx.rank,
                           world_size=self.ctx.world_size, channels_last=self.channels_last)

    # -- the loop -----------------------------------------------------------------------------------
    def evaluate(self, split: str) -> dict[str, float]:
        """Loss, top-1 and top-5 of the current model on `split` ("test", "val" or "train")."""
        if split == "val" and self.data.val is None:
            raise UsageError("no validation set: use --split")
        return evaluate(self.model, self.loader(split, train=False), self.device, self.amp_dtype)

    def fit(self) -> TrainResult:
        """Train from `start_epoch` to `epochs`, writing snapshots; return a summary."""
        s = self.settings
        rundir.claim(self.run_dir, self.other_runs, s.overwrite, seed_drawn=s.seed is None, remove=self.ctx.is_main)
        self.other_runs = []
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

    def _writer(self):
        """The TensorBoard writer of this run (rank 0, unless --tb-logdir ''), as a context manager."""
        return tensorboard_log.open_writer(self.run_dir, self.settings.models_path,
                                           self.settings.tb_logdir if self.ctx.is_main else None)

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
        started = time.monotonic()
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
            per_epoch = (time.monotonic() - started) / (epoch + 1 - self.start_epoch)
            self._report(writer, epoch, record, per_epoch)
            if tracker is not None:
                tracker.step((epoch + 1) * len(train_loader), epoch=epoch + 1)
            if snap:
                if tracker is not None:
                    tracker.sync()  # a snapshot on disk always has its rows
                path = self.save(layout.epoch_name(s.arch, epoch), epoch + 1, metrics)
                snapshots += [str(path)] if path else []
            self._check_outlook()
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
        self.stopped = {"reason": stop, "epoch": last,
                        **({"out_of_reach": dict(self.out_of_reach)} if self.out_of_reach is not None else {})}
        final_metrics = {"test": self.evaluate("test")} if s.epochs > 0 else {}
        if self.data.val is not None and s.epochs > 0:
            final_metrics["val"] = self.evaluate("val")
        final = layout.final_name(s.arch, last, s.pretrained)
        # a run resumed from its own final snapshot leaves that file as it is (its size and mtime are part of the
        # identity that finished results record), and writes it where it is missing
        if converged and s.epochs > 0 and (self.start_epoch < last or (
                self.start_epoch == last and not layout.snapshot_file(self.run_dir, s.arch, final).is_file())):
            path = self.save(final, last, final_metrics)
            snapshots += [str(path)] if path else []
        if writer is not None and final_metrics:
            tensorboard_log.log_final(writer, final_metrics["test"], last, {**asdict(s), **asdict(self.data_options)})
        if final_metrics:
            t = final_metrics["test"]
            log.info("test: loss %.4f top1 %.2f%% top5 %.2f%%", t["loss"], t["top1"], t["top5"])
        return TrainResult(run_dir=str(self.run_dir), seed=self.seed, converged=converged, snapshots=snapshots,
                           final=final_metrics, history=self.history, stopped=dict(self.stopped))

    def _train_epoch(self, model: nn.Module, loader, epoch: int, scaler, tracker=None) -> float:
        show = self.settings.progress and self.ctx.is_main and sys.stderr.isatty()
        bar = tqdm(total=len(loader), desc=f"epoch {epoch + 1}/{self.settings.epochs}", leave=False, disable=not show)
        loss_sum = torch.zeros((), device=self.device, dtype=torch.float64)
        batches = 0
        for x, y in loader:
            x, y = x.to(self.device, non_blocking=True), y.to(self.device, non_blocking=True)
            self.optimizer.zero_grad(set_to_none=True)
            with autocast(self.device, self.amp_dtype):
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
        from .track import BiasTracker  # start-up time: the tracker (scipy, pandas) loads only when a run tracks

        init = None
        if self.resumed_from is not None:
            name = layout.init_name(self.settings.arch, self.settings.pretrained)
            found = [p for p in (layout.snapshot_file(d, self.settings.arch, name)
                                 for d in (self.resumed_from.parent, self.run_dir)) if p.is_file()]
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

    def _check_outlook(self) -> None:
        """With --until-train-acc, say once (on the console, in the log, and in the final snapshot's `stopped`)
        when the target first looks out of reach within --epochs at the current rate (`target_outlook`)."""
        s = self.settings
        if s.until_train_acc is None or self.out_of_reach is not None:
            return
        outlook = target_outlook(self.history, s.until_train_acc, s.epochs)
        if outlook is not None:
            self.out_of_reach = outlook
            log.warning("own-label train top-1 %.2f%% at epoch %d of %d, %+.2f points/epoch over the last %d epochs: "
                        "--until-train-acc %g looks out of reach within --epochs %d at this rate (about %.2f%% by "
                        "epoch %d)", outlook["train_top1"], outlook["epoch"], s.epochs, outlook["rate"],
                        outlook["window"], s.until_train_acc, s.epochs, outlook["projected"], s.epochs)

    def _report(self, writer, epoch: int, record: dict[str, Any], per_epoch: float | None = None) -> None:
        """The epoch's line (its train loss, lr, top-1 per split measured, and with `per_epoch`, the mean
        seconds per epoch of this process, the time left to --epochs), and its TensorBoard scalars."""
        s = self.settings
        parts = [f"epoch {epoch + 1}/{s.epochs}", f"train loss {record['train_loss']:.4f}",
                 f"lr {record['lr']:.3g}"]
        for split in ("train", "val", "test"):
            if f"{split}_top1" in record:
                parts.append(f"{split} top1 {record[f'{split}_top1']:.2f}%")
        left = s.epochs - (epoch + 1)
        if per_epoch is not None and left > 0:
            parts.append(f"{per_epoch:.1f} s/epoch, {'at most' if s.until_train_acc is not None else 'about'} "
                         f"{duration_text(left * per_epoch)} left")
        if self.ctx.is_main:
            log.info("  ".join(parts))
        if writer is not None:
            tensorboard_log.log_epoch(writer, epoch, record)



def train(settings: TrainSettings) -> TrainResult:
    """Run a whole training as the settings say; its snapshots are written as it goes."""
    with Run(settings) as run:
        return run.fit()


def evaluate_snapshot(settings: EvaluateSettings) -> dict[str, float]:
    """Loss, top-1 and top-5 (%) of the --resume-from snapshot on the split asked for; nothing is written."""
    settings.validate()
    with Run(settings.train, writes=False) as run:
        return run.evaluate(settings.split)
