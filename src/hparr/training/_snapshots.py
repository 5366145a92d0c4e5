"""Training snapshots: what one holds (weights, optimizer and scheduler, every RNG state, the settings and seeds,
the data record, normalization, versions and history), writing it atomically, and resuming a run from one."""
from __future__ import annotations

import logging
import os
from dataclasses import asdict
from pathlib import Path
from typing import Any, Mapping

import torch

from . import checkpoints, files
from .errors import HparrError, UsageError
from .provenance import versions
from .results import SNAPSHOT_FORMAT

log = logging.getLogger("hparr.train")

# facts about the data that a snapshot of `hparr train` stores once, at its top level, not in its "data" record
TOP_LEVEL_FACTS = ("dataset", "num_classes", "in_channels", "image_size", "normalization", "versions")


def save_snapshot(path: str | os.PathLike, payload: dict[str, Any]) -> None:
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


class Snapshots:
    """The snapshot half of a `training.Run` (whose attributes it reads and sets): `save` one, `_resume` from one."""

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
            "data": data_record(self.data.meta),
            "normalization": {"mean": list(self.data.mean), "std": list(self.data.std),
                              "normalized": not self.data_options.unnormalize},
            "versions": versions(), "history": list(self.history),
            **({"stopped": dict(self.stopped)} if self.stopped is not None else {}),
        }

    def save(self, name: str, epochs_completed: int, metrics: dict[str, Any]) -> Path | None:
        if not self.ctx.is_main:
            return None
        path = self.run_dir / name
        save_snapshot(path, self._payload(epochs_completed, metrics))
        log.info("saved %s", path)
        return path
