"""TensorBoard logging of a training run: a writer whose failed writes are one-line errors, per-epoch scalars and
the final metrics with the run's hyperparameters."""
from __future__ import annotations

import contextlib
import functools
import os
from pathlib import Path
from typing import Any, Iterator, Mapping

from . import files


class TensorBoard:
    """A SummaryWriter whose failed writes (a full disk, ...) are one-line HparrErrors naming its folder."""

    def __init__(self, log_dir: Path):
        from torch.utils.tensorboard import SummaryWriter  # start-up time: tensorboard loads only when a run logs

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



@contextlib.contextmanager
def open_writer(run_dir: Path, models_path: str | os.PathLike, tb_logdir: str | None) -> Iterator[TensorBoard | None]:
    """A writer into `tb_logdir`/<the run directory below `models_path`> (None without `tb_logdir`), closed at the
    end; an error on its way out is not hidden by a failing close."""
    if not tb_logdir:
        yield None
        return
    rel = run_dir.relative_to(models_path) if run_dir.is_relative_to(models_path) else Path(run_dir.name)
    writer = TensorBoard(Path(tb_logdir) / rel)
    try:
        yield writer
    except BaseException:
        with contextlib.suppress(Exception):  # the error on its way out says what went wrong
            writer.close()
        raise
    writer.close()


def log_epoch(writer: TensorBoard, epoch: int, record: Mapping[str, Any]) -> None:
    """The scalars of one epoch's record (train loss, lr, and the loss and accuracies of each evaluated split)."""
    writer.add_scalar("Loss/train", record["train_loss"], epoch)
    writer.add_scalar("Lr", record["lr"], epoch)
    for split in ("train", "val", "test"):
        if f"{split}_top1" in record:
            name = f"Loss/{split}" if split != "train" else "Loss/train_eval"
            writer.add_scalar(name, record[f"{split}_loss"], epoch)
            writer.add_scalar(f"Accuracy/{split}/top1", record[f"{split}_top1"], epoch)
            writer.add_scalar(f"Accuracy/{split}/top5", record[f"{split}_top5"], epoch)


def log_final(writer: TensorBoard, test: Mapping[str, Any], epoch: int, settings: Mapping[str, Any]) -> None:
    """The final model's test metrics, and the run's plain settings as hyperparameters."""
    writer.add_scalar("Loss/test", test["loss"], epoch)
    writer.add_scalar("Accuracy/test/top1", test["top1"], epoch)
    writer.add_scalar("Accuracy/test/top5", test["top5"], epoch)
    hparams = {k: v for k, v in settings.items() if isinstance(v, (int, float, str, bool))}
    writer.add_hparams(hparams, {"hparam/test_top1": test["top1"]}, run_name=".")
