"""The training recipe, read top to bottom: `train` sets a run up (`setup`), then for each epoch runs
`train_one_epoch`, measures the model with `evaluate`, reports, tracks the bias statistics, and writes snapshots
with `save_snapshot`; with exact resume, TensorBoard and torchrun (DDP)."""
from __future__ import annotations

import contextlib
import logging
import math
import sys
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any, Mapping

import torch
import torch.nn as nn
import torch.nn.functional as F
from tqdm.auto import tqdm

from .. import checkpoints, files, layout
from ..errors import HparrError, UsageError
from ..metrics import correct_counts
from ._distributed import all_reduce_sum
from ._rundir import claim
from ._settings import STOP_REASONS, EvaluateSettings, TrainResult, TrainSettings, duration_text, target_outlook
from ._setup import Setup, compile_model, loader, setup
from ._snapshots import snapshot_payload, write_snapshot
from ._tensorboard import TensorBoard, log_epoch, log_final, open_writer

log = logging.getLogger("hparr.train")

PLATEAU_EPOCHS = 10  # --kill-plateaus watches the first epochs only


def autocast(device: torch.device, dtype: torch.dtype | None):
    """torch.autocast to `dtype` on `device`'s type, or nothing when `dtype` is None (full precision)."""
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=dtype)


def train_one_epoch(s: Setup, model: nn.Module, train_loader, epoch: int, scaler=None, tracker=None) -> float:
    """One epoch of optimizer steps of `model` (`s.model`, or its compiled or DDP wrapper) over `train_loader`;
    with --track-every-steps K, the bias statistics after every K-th step within the epoch (the epoch's end is
    tracked by `train`). Returns the mean training loss; a loss that is no longer finite stops the run."""
    show = s.settings.progress and s.ctx.is_main and sys.stderr.isatty()
    per_epoch = len(train_loader)
    every = s.settings.track_every_steps
    bar = tqdm(total=per_epoch, desc=f"epoch {epoch + 1}/{s.settings.epochs}", leave=False, disable=not show)
    loss_sum = torch.zeros((), device=s.device, dtype=torch.float64)
    batches = 0
    model.train()
    for x, y in train_loader:
        x, y = x.to(s.device, non_blocking=True), y.to(s.device, non_blocking=True)
        s.optimizer.zero_grad(set_to_none=True)
        with autocast(s.device, s.amp_dtype):
            loss = F.cross_entropy(model(x), y)
        if scaler is not None:
            scaler.scale(loss).backward()
            scaler.step(s.optimizer)
            scaler.update()
        else:
            loss.backward()
            s.optimizer.step()
        loss_sum += loss.detach()
        batches += 1
        step = epoch * per_epoch + batches
        if tracker is not None and every and step % every == 0 and batches < per_epoch:
            tracker.step(step, epoch=epoch + batches / per_epoch, flush=False)
        if show and batches % 10 == 0:
            bar.set_postfix(loss=f"{float(loss_sum) / batches:.4f}")
        bar.update()
    bar.close()
    mean = float(loss_sum) / max(batches, 1)
    if not math.isfinite(mean):
        raise HparrError(f"the training loss became {mean} in epoch {epoch + 1}: stopping. The last good "
                         f"snapshot in {s.run_dir} is kept; try a smaller --lr")
    return mean


def evaluate(model: nn.Module, data_loader, device: torch.device, amp_dtype: torch.dtype | None = None
             ) -> dict[str, float]:
    """Mean loss, top-1 and top-5 accuracy (%) of `model` over `data_loader`, summed across ranks under torchrun."""
    was_training = model.training
    model.eval()
    loss_sum, c1, c5, n = 0.0, 0, 0, 0
    with torch.inference_mode(), autocast(device, amp_dtype):
        for x, y in data_loader:
            x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
            out = model(x).float()
            loss_sum += float(F.cross_entropy(out, y, reduction="sum"))
            a, b = correct_counts(out, y, 5).tolist()
            c1, c5, n = c1 + a, c5 + b, n + y.numel()
    model.train(was_training)
    loss_sum, c1, c5, n = all_reduce_sum([loss_sum, c1, c5, n], device)
    if n == 0:
        raise HparrError("evaluation set is empty")
    return {"loss": loss_sum / n, "top1": 100.0 * c1 / n, "top5": 100.0 * c5 / n, "count": int(n)}


def evaluate_split(s: Setup, split: str) -> dict[str, float]:
    """`evaluate` of the run's model on `split` ("test", "val" or "train": in eval mode, without augmentation, on
    the labels trained on)."""
    if split == "val" and s.data.val is None:
        raise UsageError("no validation set: use --split")
    return evaluate(s.model, loader(s, split, train=False), s.device, s.amp_dtype)


def save_snapshot(s: Setup, name: str, epochs_completed: int, metrics: dict[str, Any],
                  history: list[dict[str, Any]], stopped: dict[str, Any] | None = None) -> Path | None:
    """Write the snapshot `name` into the run directory (rank 0 alone; None on the others)."""
    if not s.ctx.is_main:
        return None
    path = s.run_dir / name
    write_snapshot(path, snapshot_payload(
        settings=s.settings, data_options=s.data_options, data=s.data, seeds=s.seeds, model=s.model,
        optimizer=s.optimizer, scheduler=s.scheduler, data_generator=s.data_generator, device=s.device,
        epochs_completed=epochs_completed, metrics=metrics, history=history, stopped=stopped))
    log.info("saved %s", path)
    return path


def train(settings: TrainSettings, prepared: Setup | None = None) -> TrainResult:
    """Run a whole training as the settings say, from epoch 0 or from the snapshot of --resume-from, writing its
    snapshots as it goes. `prepared`: the `setup(settings)` of a caller that holds it open, to check and lock
    before it records anything of its own, and to use the trained model after (`hparr reproduce`)."""
    with contextlib.ExitStack() as stack:  # left in the reverse order: the tracker first, the setup last
        s = prepared if prepared is not None else stack.enter_context(setup(settings))
        settings, start = s.settings, s.start.epoch
        claim(s.run_dir, s.other_runs, settings.overwrite, seed_drawn=settings.seed is None, remove=s.ctx.is_main)
        s.other_runs = []
        if s.ctx.is_main:
            files.ensure_dir(s.run_dir)
        stack.enter_context(files.log_to(s.run_dir / settings.log if (settings.log and s.ctx.is_main) else None,
                                         what="snapshots"))
        stack.enter_context(torch.random.fork_rng(devices=[]))  # dropout's RNG, as the snapshots record it
        writer = stack.enter_context(open_writer(s.run_dir, settings.models_path,  # rank 0, unless --tb-logdir ''
                                                 settings.tb_logdir if s.ctx.is_main else None))
        torch.set_rng_state(s.start.dropout_state)
        if s.start.cuda_states is not None and s.device.type == "cuda":
            torch.cuda.set_rng_state_all(s.start.cuda_states)
        elif s.device.type == "cuda":
            torch.cuda.manual_seed_all(s.seeds["dropout"])
        model = compile_model(s.model, settings.compile) if settings.compile else s.model
        if s.ctx.distributed:
            model = nn.parallel.DistributedDataParallel(
                model, device_ids=[s.ctx.local_rank] if s.device.type == "cuda" else None)
        scaler = torch.amp.GradScaler("cuda") if s.amp_dtype == torch.float16 else None
        history = list(s.start.history)
        snapshots: list[str] = []
        if writer is not None and start == 0:
            writer.add_text("settings", "\n".join(f"    {k}: {v}" for k, v in asdict(settings).items()), 0)
        log.info("training %s on %s: %d train / %s val / %d test samples, seed %d, run dir %s",
                 settings.arch, s.data_options.dataset, len(s.data.train),
                 len(s.data.val) if s.data.val is not None else 0, len(s.data.test), s.seed, s.run_dir)
        if start == 0 and s.start.resumed_from is None:
            path = save_snapshot(s, layout.init_name(settings.arch, settings.pretrained), 0, {}, history)
            snapshots += [str(path)] if path else []
        train_loader = loader(s, "train")
        tracker = start_tracking(s, writer, len(train_loader))
        if tracker is not None:
            stack.enter_context(tracker)  # its file complete at the end
        every = settings.snapshot_every if settings.snapshot_every >= 1 else max(settings.epochs, 1)
        converged, previous, out_of_reach = True, None, None
        last, stop = settings.epochs, STOP_REASONS["epochs"]
        if history and history[-1].get("epoch") == start and target_reached(settings, history[-1]):
            last, stop = start, STOP_REASONS["target"]  # resumed from the epoch where the target was reached
        started = time.monotonic()
        for epoch in range(start, last):
            train_loss = train_one_epoch(s, model, train_loader, epoch, scaler, tracker)
            if s.scheduler is not None:
                s.scheduler.step()
            record: dict[str, Any] = {"epoch": epoch + 1, "train_loss": train_loss,
                                      "lr": s.optimizer.param_groups[0]["lr"]}
            snap = epoch < settings.snapshot_all_until or (epoch + 1) % every == 0 or epoch + 1 == settings.epochs
            watch = settings.kill_plateaus and epoch < PLATEAU_EPOCHS
            metrics: dict[str, Any] = {}
            if s.data.val is not None and (snap or watch):
                metrics["val"] = evaluate_split(s, "val")
            if settings.train_acc and snap or (watch and s.data.val is None) or settings.until_train_acc is not None:
                metrics["train"] = evaluate_split(s, "train")  # eval mode, no augmentation, the labels trained on
            if snap:
                metrics["test"] = evaluate_split(s, "test")  # reported only, never used for selection
            record.update({f"{k}_{m}": v for k, d in metrics.items() for m, v in d.items() if m != "count"})
            history.append(record)
            report_epoch(s, writer, epoch, record, (time.monotonic() - started) / (epoch + 1 - start))
            if tracker is not None:
                tracker.step((epoch + 1) * len(train_loader), epoch=epoch + 1)
            if snap:
                if tracker is not None:
                    tracker.sync()  # a snapshot on disk always has its rows
                path = save_snapshot(s, layout.epoch_name(settings.arch, epoch), epoch + 1, metrics, history)
                snapshots += [str(path)] if path else []
            if out_of_reach is None:
                out_of_reach = check_outlook(settings, history)
            if target_reached(settings, record):
                log.info("own-label train top-1 %.2f%% reached --until-train-acc %g at epoch %d: stopping",
                         record["train_top1"], settings.until_train_acc, epoch + 1)
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
        if settings.until_train_acc is not None and stop == STOP_REASONS["epochs"] and settings.epochs > 0:
            log.warning("own-label train top-1 did not reach --until-train-acc %g in %d epochs",
                        settings.until_train_acc, settings.epochs)
        stopped = {"reason": stop, "epoch": last, **({"out_of_reach": dict(out_of_reach)} if out_of_reach else {})}
        final_metrics = {"test": evaluate_split(s, "test")} if settings.epochs > 0 else {}
        if s.data.val is not None and settings.epochs > 0:
            final_metrics["val"] = evaluate_split(s, "val")
        final = layout.final_name(settings.arch, last, settings.pretrained)
        # a run resumed from its own final snapshot leaves that file as it is (its size and mtime are part of the
        # identity that finished results record), and writes it where it is missing
        if converged and settings.epochs > 0 and (start < last or (
                start == last and not layout.snapshot_file(s.run_dir, settings.arch, final).is_file())):
            path = save_snapshot(s, final, last, final_metrics, history, stopped)
            snapshots += [str(path)] if path else []
        if writer is not None and final_metrics:
            log_final(writer, final_metrics["test"], last, {**asdict(settings), **asdict(s.data_options)})
        if final_metrics:
            t = final_metrics["test"]
            log.info("test: loss %.4f top1 %.2f%% top5 %.2f%%", t["loss"], t["top1"], t["top5"])
        return TrainResult(run_dir=str(s.run_dir), seed=s.seed, converged=converged, snapshots=snapshots,
                           final=final_metrics, history=history, stopped=dict(stopped))


def evaluate_snapshot(settings: EvaluateSettings) -> dict[str, float]:
    """Loss, top-1 and top-5 (%) of the --resume-from snapshot on the split asked for; nothing is written."""
    settings.validate()
    with setup(settings.train, writes=False) as s:
        return evaluate_split(s, settings.split)


# --- what the recipe says and tracks as it goes ----------------------------------------------------------

def start_tracking(s: Setup, writer: TensorBoard | None, per_epoch: int):
    """The bias tracker of a run (rank 0 alone, unless --no-track), writing `tracking.csv` in the run
    directory, or None. A fresh run starts the file anew; a resumed one drops the rows after its snapshot (they
    are computed again) and tracks the resumed weights if their row is missing."""
    if not (s.settings.track and s.ctx.is_main):
        return None
    from ._track import BiasTracker  # start-up time: the tracker (scipy, pandas) loads only when a run tracks

    init, resumed_from = None, s.start.resumed_from
    if resumed_from is not None:
        name = layout.init_name(s.settings.arch, s.settings.pretrained)
        found = [p for p in (layout.snapshot_file(d, s.settings.arch, name) for d in (resumed_from.parent, s.run_dir))
                 if p.is_file()]
        if found:
            init = checkpoints.load_state_dict_file(found[0])
        else:
            log.warning("no %s beside %s: tracking without the distances from initialization", name, resumed_from)
    size = s.data.image_size
    tracker = BiasTracker(s.model, init_state=init, writer=writer, csv_path=s.run_dir / layout.TRACKING_NAME,
                          input_shape=(2, s.data.in_channels, size, size),
                          distances=resumed_from is None or init is not None, append=resumed_from is not None)
    tracker.start(s.start.epoch * per_epoch, epoch=s.start.epoch)
    return tracker


def target_reached(settings: TrainSettings, record: Mapping[str, Any]) -> bool:
    """Whether an epoch's record reaches --until-train-acc (top-1 on the model's own training labels)."""
    target = settings.until_train_acc
    return target is not None and record.get("train_top1") is not None and record["train_top1"] >= target


def check_outlook(settings: TrainSettings, history: list[dict[str, Any]]) -> dict[str, Any] | None:
    """With --until-train-acc, the `target_outlook` of the epochs so far where the target looks out of reach
    within --epochs at the current rate, said on the console and in the log (the caller asks until it is said
    once, and records it in the final snapshot's `stopped`); else None."""
    if settings.until_train_acc is None:
        return None
    outlook = target_outlook(history, settings.until_train_acc, settings.epochs)
    if outlook is not None:
        log.warning("own-label train top-1 %.2f%% at epoch %d of %d, %+.2f points/epoch over the last %d epochs: "
                    "--until-train-acc %g looks out of reach within --epochs %d at this rate (about %.2f%% by "
                    "epoch %d)", outlook["train_top1"], outlook["epoch"], settings.epochs, outlook["rate"],
                    outlook["window"], settings.until_train_acc, settings.epochs, outlook["projected"],
                    settings.epochs)
    return outlook


def report_epoch(s: Setup, writer: TensorBoard | None, epoch: int, record: Mapping[str, Any],
                 per_epoch: float) -> None:
    """The epoch's line (its train loss, lr, top-1 per split measured, and from `per_epoch`, the mean seconds
    per epoch of this process, the time left to --epochs), and its TensorBoard scalars."""
    settings = s.settings
    parts = [f"epoch {epoch + 1}/{settings.epochs}", f"train loss {record['train_loss']:.4f}",
             f"lr {record['lr']:.3g}"]
    for split in ("train", "val", "test"):
        if f"{split}_top1" in record:
            parts.append(f"{split} top1 {record[f'{split}_top1']:.2f}%")
    left = settings.epochs - (epoch + 1)
    if left > 0:
        parts.append(f"{per_epoch:.1f} s/epoch, {'at most' if settings.until_train_acc is not None else 'about'} "
                     f"{duration_text(left * per_epoch)} left")
    if s.ctx.is_main:
        log.info("  ".join(parts))
    if writer is not None:
        log_epoch(writer, epoch, record)
