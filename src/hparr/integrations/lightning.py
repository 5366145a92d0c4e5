"""`BiasCallback`: the per-layer bias statistics of `hparr.training.BiasTracker` in a PyTorch Lightning `Trainer`.

    from hparr.integrations.lightning import BiasCallback
    trainer = lightning.Trainer(callbacks=[BiasCallback(csv_path="tracking.csv")], logger=TensorBoardLogger("tb"))

The callback tracks the weights when training starts, after every epoch, and with `every_n_steps` every
that many optimizer steps, on the global-zero process only. The statistics go to every TensorBoard
logger of the trainer (the `bias/*` scalars and histograms of `hparr train`), as plain metrics to its other
loggers, and to `csv_path` (started anew by a fresh fit). The initial weights are kept in the callback's
state, so a run resumed from a Lightning checkpoint measures its distances from the same initialization, and
the rows of the CSV after the checkpoint's step are dropped and computed again.

Lightning is imported on first use of `BiasCallback` (the optional extra `hparr[lightning]`); `lightning`
is preferred, `pytorch_lightning` is used when it is the one installed.
"""
from __future__ import annotations

import contextlib
import os
from typing import Any, Sequence

from ..defaults import LEVEL
from ..errors import HparrError


def _lightning():
    try:
        import lightning.pytorch as pl  # optional extra (hparr[lightning])
    except ImportError:
        try:
            import pytorch_lightning as pl  # optional extra, its older name
        except ImportError:
            raise HparrError("BiasCallback needs PyTorch Lightning: pip install 'hparr[lightning]'") from None
    return pl


class _Tracking:
    """The callback's logic; `BiasCallback` adds Lightning's `Callback` base class to it."""

    def __init__(self, csv_path: str | os.PathLike | None = None, every_n_steps: int = 0, module: str | None = None,
                 normalize: bool = True, with_linear: bool = False, include_1x1: bool = False,
                 input_shape: Sequence[int] | None = None, level: float = LEVEL, histograms: bool = True):
        if every_n_steps < 0:
            raise HparrError(f"every_n_steps must be >= 0, got {every_n_steps}")
        self.csv_path, self.every_n_steps, self.module = csv_path, every_n_steps, module
        self.options = {"normalize": normalize, "with_linear": with_linear, "include_1x1": include_1x1,
                        "input_shape": input_shape, "level": level, "histograms": histograms}
        self.tracker = None
        self._init_state: dict[str, Any] | None = None
        self._others: list = []
        self._last_step: int | None = None

    # -- Lightning's hooks --------------------------------------------------------------------------
    def on_train_start(self, trainer, pl_module) -> None:
        # not on_fit_start: a resumed trainer restores its step counter between the two
        if not trainer.is_global_zero:
            return
        from ..training import BiasTracker  # start-up time: the tracker (torch, scipy) once training starts

        net = pl_module
        for part in (self.module.split(".") if self.module else []):
            net = getattr(net, part)
        writers, self._others = [], []
        for logger in trainer.loggers:
            experiment = getattr(logger, "experiment", None) if _is_tensorboard(logger) else None
            if experiment is not None and hasattr(experiment, "add_histogram"):
                writers.append(experiment)
            else:
                self._others.append(logger)
        resumed = self._init_state is not None  # restored from a checkpoint, or a second fit of this callback
        writer = writers[0] if len(writers) == 1 else _Fanout(writers) if writers else None
        self.tracker = BiasTracker(net, init_state=self._init_state, writer=writer,
                                   csv_path=self.csv_path, append=resumed, **self.options)
        if not resumed:
            self._init_state = {k: v.detach().cpu() for k, v in (self.tracker.init or {}).items()}
        stats = self.tracker.start(trainer.global_step, epoch=trainer.current_epoch)
        if stats is not None:
            self._logged(trainer.global_step, stats)

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx: int) -> None:
        step = trainer.global_step
        if self.tracker is None or not self.every_n_steps or step % self.every_n_steps or step == self._last_step:
            return
        per_epoch = trainer.num_training_batches
        fraction = (batch_idx + 1) / per_epoch if per_epoch and per_epoch != float("inf") else 0.0
        self._step(trainer, step, trainer.current_epoch + fraction, flush=False)

    def on_train_epoch_end(self, trainer, pl_module) -> None:
        if self.tracker is None:
            return
        if trainer.global_step != self._last_step:
            self._step(trainer, trainer.global_step, trainer.current_epoch + 1, flush=False)
        self.tracker.flush()

    def on_fit_end(self, trainer, pl_module) -> None:
        if self.tracker is not None:
            self.tracker.close()

    def on_exception(self, trainer, pl_module, exception: BaseException) -> None:
        if self.tracker is not None:
            with contextlib.suppress(Exception):  # the training's own error says what went wrong
                self.tracker.close()

    def state_dict(self) -> dict[str, Any]:
        return {"init_state": self._init_state} if self._init_state is not None else {}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self._init_state = state_dict.get("init_state")

    # -- helpers ------------------------------------------------------------------------------------
    def _step(self, trainer, step: int, epoch: float, flush: bool = True) -> None:
        self._logged(step, self.tracker.step(step, epoch=epoch, flush=flush))

    def _logged(self, step: int, stats) -> None:
        """The tracker's step is done: remember it, and send its scalars to the loggers without TensorBoard."""
        self._last_step = step
        if self._others:
            scalars = self.tracker.scalars(stats)
            for logger in self._others:
                logger.log_metrics(scalars, step=step)


def _is_tensorboard(logger) -> bool:
    return type(logger).__name__ == "TensorBoardLogger"


class _Fanout:
    """One writer's calls, sent to several SummaryWriters."""

    def __init__(self, writers: list):
        self.writers = writers

    def add_scalar(self, *args, **kwargs) -> None:
        for w in self.writers:
            w.add_scalar(*args, **kwargs)

    def add_histogram(self, *args, **kwargs) -> None:
        for w in self.writers:
            w.add_histogram(*args, **kwargs)


_CLASS = None


def __getattr__(name: str):
    global _CLASS
    if name != "BiasCallback":
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    if _CLASS is None:
        pl = _lightning()

        class BiasCallback(_Tracking, pl.Callback):
            """Per-layer bias statistics (`hparr.training.BiasTracker`) while a Lightning `Trainer` fits.

            csv_path: the tracking file (none by default); every_n_steps: also track every that many optimizer
            steps (0: only when training starts and after each epoch); module: the (dotted) attribute of the
            LightningModule that holds the network (default: the LightningModule itself); the other options
            are those of `BiasTracker`.
            """

            __qualname__ = "BiasCallback"

        _CLASS = BiasCallback
    return _CLASS
