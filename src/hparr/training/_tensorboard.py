"""TensorBoard logging of a training run: an event file whose failed writes are one-line errors, per-epoch scalars
and the final metrics with the run's hyperparameters."""
from __future__ import annotations

import contextlib
import os
from pathlib import Path
from typing import Any, Iterator, Mapping

from .. import files


class TensorBoard:
    """One event file of TensorBoard in `log_dir`, written through torch's public `FileWriter` and the summaries of
    `torch.utils.tensorboard.summary`, with the calls of a `SummaryWriter` that a run makes (`add_scalar`,
    `add_text`, `add_hparams`) and `add_summary`, which takes a summary of many values as one event (the bias
    tracker's step). Its failed writes (a full disk, ...) are one-line HparrErrors naming its folder."""

    def __init__(self, log_dir: Path):
        # start-up time: tensorboard loads only when a run logs
        from torch.utils.tensorboard import FileWriter, summary

        self.log_dir = log_dir
        self._summary = summary
        self._file = self._call(FileWriter, str(log_dir))

    def _call(self, method, *args, **kwargs):
        try:
            return method(*args, **kwargs)
        except OSError as exc:  # raised by the writer's thread, or again by each later call
            raise (files.write_error(exc, self.log_dir, "snapshots") or exc) from None

    def add_summary(self, summary, global_step: int | None = None) -> None:
        """A summary (of one value or many) as one event at `global_step`."""
        self._call(self._file.add_summary, summary, global_step)

    def add_scalar(self, tag: str, value: float, global_step: int | None = None) -> None:
        self.add_summary(self._summary.scalar(tag, value), global_step)

    def add_text(self, tag: str, text: str, global_step: int | None = None) -> None:
        self.add_summary(self._summary.text(tag, text), global_step)

    def add_hparams(self, hparams: Mapping[str, Any], metrics: Mapping[str, float]) -> None:
        """The hyperparameters and the metrics of this run, as `SummaryWriter.add_hparams(..., run_name=".")`
        records them: the experiment, the session's start and end, and each metric as a scalar."""
        for summary in self._summary.hparams(dict(hparams), dict(metrics)):
            self.add_summary(summary)
        for tag, value in metrics.items():
            self.add_scalar(tag, value)

    def flush(self) -> None:
        self._call(self._file.flush)

    def close(self) -> None:
        self._call(self._file.close)


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
    writer.add_hparams(hparams, {"hparam/test_top1": test["top1"]})
