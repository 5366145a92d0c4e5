"""The bias as it forms: per-layer statistics of a model's weights while it trains.

`BiasTracker` finds the analyzed layers of a model once (`hparr.layers.discover_layers`) and, at each
`step`, computes their statistics from the weights of that moment with `hparr.projections.analyze_layers`
(so the values are those of `hparr projections` on a snapshot of the same weights): mass, mean, std,
the distances from initialization, the bias test's p-values and the biased flag. It writes them to a
TensorBoard writer (scalars `bias/mass/<layer>`, `bias/mean/<layer>`, `bias/l2_dist/<layer>`,
`bias/biased_layers`, and a histogram `bias/projections/<layer>` of each layer's projections) and to a
tidy CSV file (see `hparr.trackfile`), rewritten whole and atomically at each flush by a thread of its own.

In a plain PyTorch loop::

    tracker = BiasTracker(model, writer=SummaryWriter("tb"), csv_path="tracking.csv")  # before training
    for epoch in range(epochs):
        ...  # the epoch's steps; `step` counts them
        tracker.step(step, epoch=epoch + 1)
    tracker.close()  # the file complete (or use the tracker as a context manager)
"""
from __future__ import annotations

import contextlib
import math
import os
from concurrent import futures
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np
import pandas as pd
import torch
import torch.nn as nn

from .. import files
from ..defaults import LEVEL
from ..layers import discover_layers
from ..projections import LayerStats, analyze_layers, weights_of
from ..trackfile import COLUMNS, csv_text, read_tracking

TAGS = ("mass", "mean", "l2_dist")
HISTOGRAM_BINS = 30  # at most; a layer of fewer filters has one bin per filter


@contextlib.contextmanager
def _one_thread():
    """One intra-op thread for the duration: the statistics are many small reductions, and on a CPU shared
    with other work each one handed to the thread pool waits for its threads to wake up (milliseconds)."""
    threads = torch.get_num_threads()
    if threads == 1:
        yield
        return
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


def _bins(projections: np.ndarray) -> int:
    return min(HISTOGRAM_BINS, projections.size)


def _file_text(rows: pd.DataFrame) -> str:
    """The text of a tracking file holding `rows`: our header, then the rows in our columns."""
    return csv_text([COLUMNS]) + csv_text(rows.reindex(columns=list(COLUMNS)).itertuples(index=False))


class BiasTracker:
    """Per-layer bias statistics of `model` at chosen steps, to TensorBoard and a CSV file.

    init_state: the weights the distances are measured from (a model or a state_dict); None takes a
    copy of the model's analyzed weights now. writer: a `SummaryWriter` (or anything with `add_scalar`
    and `add_histogram`), a `torch.utils.tensorboard.FileWriter` (anything with `add_summary`: a step's values
    as one event), or None. csv_path: the tracking file; rows already in it are kept and new rows
    appended (with `append=False` it is started anew at the first write). The other options are those of
    `hparr projections` (`input_shape` is the dummy input used once to find the layers, batch included);
    `distances=False` leaves out the distances from initialization.
    """

    def __init__(self, model: nn.Module, init_state: nn.Module | Mapping[str, Any] | None = None, writer=None,
                 csv_path: str | os.PathLike | None = None, *, normalize: bool = True, with_linear: bool = False,
                 include_1x1: bool = False, input_shape: Sequence[int] | None = None,
                 level: float = LEVEL, histograms: bool = True, distances: bool = True,
                 append: bool = True):
        self.model = model
        self.layers, self.skipped = discover_layers(model, input_shape, with_linear=with_linear,
                                                    include_1x1=include_1x1)
        self.writer = writer
        self.csv_path = Path(csv_path) if csv_path is not None else None
        self.normalize, self.level, self.histograms = normalize, level, histograms
        self.init: dict[str, torch.Tensor] | None = None
        if distances:
            source = self._weights() if init_state is None else weights_of(init_state)
            self.init = {layer.weight_key: source[layer.weight_key].detach().to(layer.module.weight.device, copy=True)
                         for layer in self.layers if layer.weight_key in source}
        self._open(append)

    # -- computing ----------------------------------------------------------------------------------
    def _weights(self) -> dict[str, torch.Tensor]:
        return {layer.weight_key: layer.module.weight.detach() for layer in self.layers}

    def compute(self) -> LayerStats:
        """`hparr.projections.analyze_layers` of the model's current weights."""
        with torch.no_grad(), _one_thread():
            return analyze_layers(self.layers, self._weights(), normalize=self.normalize, init=self.init,
                                  level=self.level, skipped=self.skipped)

    @staticmethod
    def scalars(stats: LayerStats) -> dict[str, float]:
        """The TensorBoard scalars of one `compute()`, tag -> value."""
        columns = stats.columns
        out: dict[str, float] = {}
        for tag in TAGS:
            for name, value in zip(columns["name"], columns.get(tag, ())):
                if value is not None and not math.isnan(value):
                    out[f"bias/{tag}/{name}"] = float(value)
        out["bias/biased_layers"] = float(sum(columns["biased"]))
        return out

    def step(self, global_step: int, epoch: float | None = None, flush: bool = True) -> LayerStats:
        """Compute the statistics now, log them at `global_step` and queue their rows (handed to the file
        at once when `flush`, else at the next `flush()`); returns the statistics of `compute()` (`.table`:
        one row per layer)."""
        stats = self.compute()
        if self.writer is not None:
            self._log(global_step, self.scalars(stats), stats.projections if self.histograms else {})
        fixed = {"step": int(global_step), "epoch": float("nan") if epoch is None else float(epoch),
                 "normalize": self.normalize, "level": self.level}
        columns = stats.columns
        n = len(columns["name"])
        self._pending += zip(*[[fixed[c]] * n if c in fixed else columns.get(c, [None] * n) for c in COLUMNS])
        if flush:
            self.flush()
        return stats

    def _log(self, global_step: int, scalars: Mapping[str, float], histograms: Mapping[str, np.ndarray]) -> None:
        """The step's scalars and histograms (a diverged layer has none: the training loss says why). A writer
        with `add_summary(summary, global_step)` (torch's `FileWriter`, the writer of `hparr train`) gets them as
        one event, whose record costs one write of the event file; any other (a torch `SummaryWriter`, whose
        public calls take one value each) value by value, with the same tags, steps and values."""
        histograms = {f"bias/projections/{name}": np.asarray(p) for name, p in histograms.items()
                      if np.isfinite(p).all()}
        add_summary = getattr(self.writer, "add_summary", None)
        if add_summary is not None:
            # start-up time: tensorboard is imported only by a tracker that logs to a writer
            from tensorboard.compat.proto.summary_pb2 import Summary
            from torch.utils.tensorboard import summary

            values = [v for tag, x in scalars.items() for v in summary.scalar(tag, x).value]
            values += [v for tag, p in histograms.items() for v in summary.histogram(tag, p, _bins(p)).value]
            add_summary(Summary(value=values), global_step)
            return
        for tag, value in scalars.items():
            self.writer.add_scalar(tag, value, global_step)
        for tag, p in histograms.items():
            self.writer.add_histogram(tag, p, global_step, bins=_bins(p))

    # -- the file -----------------------------------------------------------------------------------
    def _open(self, append: bool) -> None:
        """Take the rows of an existing file; its text is kept as it is when its columns are ours."""
        self._existing = pd.DataFrame(columns=list(COLUMNS))
        self._written: list[tuple] = []  # this tracker's rows in the file
        self._pending: list[tuple] = []  # this tracker's rows not yet in it
        self._pool: ThreadPoolExecutor | None = None  # the thread that writes the file
        self._writes: list[futures.Future] = []  # its writes not yet seen done
        self._text = csv_text([COLUMNS])
        if not append or self.csv_path is None or not self.csv_path.is_file():
            return
        self._existing = read_tracking(self.csv_path)
        text = self.csv_path.read_text()
        if text.splitlines()[:1] == [self._text.rstrip("\n")] and text.count("\n") == len(self._existing) + 1:
            self._text = text
        else:
            self._text = _file_text(self._existing)

    @property
    def rows(self) -> pd.DataFrame:
        """Every row: those already in the file and those of this tracker's steps."""
        new = pd.DataFrame(self._written + self._pending, columns=list(COLUMNS))
        if not len(self._existing):
            return new
        return pd.concat([self._existing, new], ignore_index=True) if len(new) else self._existing

    def has_step(self, global_step: int) -> bool:
        """Whether a row of `global_step` is in the file or queued."""
        return (bool((pd.to_numeric(self._existing["step"]) == global_step).any())
                or any(row[0] == global_step for row in self._written + self._pending))

    def discard_after(self, global_step: int) -> None:
        """Drop the rows of steps after `global_step` (a run resumed from an earlier point computes them
        again), rewriting the file if it held any."""
        rows = self.rows
        keep = rows[pd.to_numeric(rows["step"]) <= global_step].reset_index(drop=True)
        if len(keep) != len(rows):
            self._existing, self._written, self._pending = keep, [], []
            self._text = _file_text(keep)
            self._write()

    def start(self, global_step: int, epoch: float | None = None) -> LayerStats | None:
        """Begin, or resume, at `global_step`: drop the rows of later steps and track the weights of now
        unless the file has their row already. Returns the statistics computed, or None."""
        self.discard_after(global_step)
        return None if self.has_step(global_step) else self.step(global_step, epoch=epoch)

    def flush(self) -> None:
        """Rewrite the file, whole and atomically, with the queued rows appended (nothing if none is queued).
        The writing is done by a thread of its own, so that training goes on meanwhile; `sync` waits for it."""
        if not self._pending:
            return
        self._text += csv_text(self._pending)
        self._written += self._pending
        self._pending = []
        self._write()

    def _write(self) -> None:
        if self.csv_path is None:
            return
        self._check()
        if self._pool is None:
            self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="hparr-tracking")
        self._writes.append(self._pool.submit(files.write_text, self.csv_path, self._text))  # in order

    def _check(self, wait: bool = False) -> None:
        """Raise the error of a write that failed (after waiting for those under way, with `wait`)."""
        if wait:
            futures.wait(self._writes)
        done = [w for w in self._writes if w.done()]
        self._writes = [w for w in self._writes if not w.done()]
        for w in done:
            w.result()

    def sync(self) -> None:
        """Wait until the flushed rows are in the file; a write that failed raises its error."""
        self._check(wait=True)

    def close(self) -> None:
        """Flush, wait for the file, and stop the writing thread."""
        self.flush()
        try:
            self.sync()
        finally:
            if self._pool is not None:
                self._pool.shutdown()
                self._pool = None

    def __enter__(self) -> BiasTracker:
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is None:
            self.close()
            return
        with contextlib.suppress(Exception):  # the error on its way out says what went wrong
            self.close()
