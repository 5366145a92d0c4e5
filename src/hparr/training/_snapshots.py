"""Training snapshots: what one holds (weights, optimizer and scheduler, every RNG state, the settings and seeds,
the data record, normalization, versions and history), writing it atomically, and where a run starts: afresh, or
resumed from one."""
from __future__ import annotations

import dataclasses
import logging
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Mapping

import torch
import torch.nn as nn

from .. import checkpoints, files
from ..data import Data, DataOptions
from ..errors import HparrError, UsageError
from ..provenance import versions
from ..results import SNAPSHOT_FORMAT
from ._settings import TrainSettings

log = logging.getLogger("hparr.train")

# facts about the data that a snapshot of `hparr train` stores once, at its top level, not in its "data" record
TOP_LEVEL_FACTS = ("dataset", "num_classes", "in_channels", "image_size", "normalization", "versions")


def write_snapshot(path: str | os.PathLike, payload: dict[str, Any]) -> None:
    """Atomically write a snapshot of tensors and plain Python values (a failed write: one HparrError)."""
    files.save_torch(payload, path, what="snapshots")


def data_record(data_meta: Mapping[str, Any]) -> dict[str, Any]:
    """What a snapshot stores under "data": the data's record without the facts kept at the top level."""
    return {k: v for k, v in data_meta.items() if k not in TOP_LEVEL_FACTS}


def resolve_resume(spec: str, run_dir: Path, exclude: tuple[Path, ...] = ()) -> Path | None:
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


@dataclass
class StartPoint:
    """Where a run's training starts: the epoch, the RNG state of dropout (and of each GPU, where a snapshot recorded
    it), the history of the epochs before, and the snapshot it resumed from (None on a fresh start)."""

    epoch: int
    dropout_state: torch.Tensor
    cuda_states: list[torch.Tensor] | None = None
    history: list[dict[str, Any]] = field(default_factory=list)
    resumed_from: Path | None = None


def resume(path: Path, settings: TrainSettings, model: nn.Module, optimizer: torch.optim.Optimizer, scheduler,
           data_generator: torch.Generator, fresh: StartPoint) -> StartPoint:
    """Load the snapshot `path` into the model, the optimizer, the scheduler and the data-order generator, and
    return where training goes on from it. A bare state_dict gives the weights alone: the rest starts as `fresh`."""
    ckpt = checkpoints.read_checkpoint(path, mmap=False)
    obj = ckpt.obj
    state = checkpoints.match_prefix(ckpt.state, model, settings.state_dict_prefix, source=str(path))
    checkpoints.load_weights(model, dict(state), source=str(path))
    if not (isinstance(obj, dict) and "model_state_dict" in obj):
        log.info("resumed weights from %s (a bare state_dict: optimizer starts fresh at epoch %d)", path, fresh.epoch)
        return dataclasses.replace(fresh, resumed_from=path)
    recorded = (obj.get("settings") or {}).get("optimizer") if isinstance(obj.get("settings"), dict) else None
    if isinstance(recorded, str) and recorded != settings.optimizer:
        raise HparrError(f"{path} was trained with --optimizer {recorded}: its optimizer state cannot be "
                         f"resumed with --optimizer {settings.optimizer}")
    try:
        if obj.get("optimizer_state_dict"):
            optimizer.load_state_dict(obj["optimizer_state_dict"])
        if scheduler is not None and obj.get("scheduler_state_dict"):
            scheduler.load_state_dict(obj["scheduler_state_dict"])
    except (KeyError, ValueError, TypeError, RuntimeError) as exc:
        raise HparrError(f"cannot resume the optimizer of {path} ({type(exc).__name__}: {exc}); it was "
                         "saved by another optimizer or model") from None
    epoch = checkpoints.snapshot_epoch(obj, path)
    rng = obj.get("rng") or {}
    if "data_order" in rng:
        data_generator.set_state(rng["data_order"])
    log.info("resumed from %s: %d epochs completed", path, epoch)
    return StartPoint(epoch=epoch, dropout_state=rng.get("dropout", fresh.dropout_state), cuda_states=rng.get("cuda"),
                      history=list(obj.get("history") or []), resumed_from=path)


def snapshot_payload(*, settings: TrainSettings, data_options: DataOptions, data: Data, seeds: Mapping[str, Any],
                     model: nn.Module, optimizer: torch.optim.Optimizer, scheduler, data_generator: torch.Generator,
                     device: torch.device, epochs_completed: int, metrics: dict[str, Any],
                     history: list[dict[str, Any]], stopped: dict[str, Any] | None) -> dict[str, Any]:
    """A snapshot of a run after `epochs_completed` epochs: everything an exact resume needs (the RNG states of
    data order and dropout are read now), the epoch's `metrics`, and `stopped` where training has ended."""
    val = metrics.get("val") or metrics.get("test") or {}
    rng = {"data_order": data_generator.get_state(), "dropout": torch.get_rng_state()}
    if device.type == "cuda":
        rng["cuda"] = torch.cuda.get_rng_state_all()
    return {
        "format": SNAPSHOT_FORMAT,
        "arch": settings.arch, "dataset": data_options.dataset,
        "num_classes": data.num_classes, "in_channels": data.in_channels,
        "input_size": data.image_size, "pretrained": settings.pretrained,
        "epochs_completed": epochs_completed, "epoch": epochs_completed - 1,
        "top1_acc": val.get("top1"), "top5_acc": val.get("top5"), "metrics": metrics,
        "model_state_dict": model.state_dict(),
        "optimizer_state_dict": optimizer.state_dict(),
        "scheduler_state_dict": scheduler.state_dict() if scheduler is not None else {},
        "rng": rng, "seeds": dict(seeds), "settings": asdict(settings),
        "data": data_record(data.meta),
        "normalization": {"mean": list(data.mean), "std": list(data.std),
                          "normalized": not data_options.unnormalize},
        "versions": versions(), "history": list(history),
        **({"stopped": dict(stopped)} if stopped is not None else {}),
    }
