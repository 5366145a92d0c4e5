"""The bias as it forms: per-layer statistics of a model's weights while it trains.

`BiasTracker` finds the analyzed layers of a model once (`hparr.layers.discover_layers`) and, at each
`step`, computes their statistics from the in-memory weights with `hparr.projections.analyze_layers`
(so the values are those of `hparr projections` on a snapshot of the same weights): mass, mean, std,
the distances from initialization, the bias test's p-values and the biased flag. It writes them to a
TensorBoard `SummaryWriter` (scalars `bias/mass/<layer>`, `bias/mean/<layer>`, `bias/l2_dist/<layer>`,
`bias/biased_layers`, and a histogram `bias/projections/<layer>` of each layer's projections) and to a
tidy CSV file (see `hparr.trackfile`), rewritten whole and atomically at each flush.

In a plain PyTorch loop::

    tracker = BiasTracker(model, writer=SummaryWriter("tb"), csv_path="tracking.csv")  # before training
    for epoch in range(epochs):
        ...  # the epoch's steps; `step` counts them
        tracker.step(step, epoch=epoch + 1)
"""
from __future__ import annotations

import contextlib
import math
import os
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np
import pandas as pd
import torch
import torch.nn as nn

from . import files
from .layers import discover_layers
from .projections import DEFAULT_LEVEL, LayerStats, analyze_layers, weights_of
from .trackfile import COLUMNS, read_tracking

TAGS = ("mass", "mean", "l2_dist")
HISTOGRAM_BINS = 30


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


def _csv(rows: pd.DataFrame, header: bool) -> str:
    return rows.to_csv(index=False, header=header, lineterminator="\n")


def _header() -> str:
    return ",".join(COLUMNS) + "\n"


class BiasTracker:
    """Per-layer bias statistics of `model` at chosen steps, to TensorBoard and a CSV file.

    init_state: the weights the distances are measured from (a model or a state_dict); None takes a
    copy of the model's analyzed weights now. writer: a `SummaryWriter` (or anything with `add_scalar`
    and `add_histogram`), or None. csv_path: the tracking file; rows already in it are kept and new rows
    appended (with `append=False` it is started anew at the first write). The other options are those of
    `hparr projections` (`input_shape` is the dummy input used once to find the layers, batch included);
    `distances=False` leaves out the distances from initialization.
    """

    def __init__(self, model: nn.Module, init_state: nn.Module | Mapping[str, Any] | None = None, writer=None,
                 csv_path: str | os.PathLike | None = None, *, normalize: bool = True, with_linear: bool = False,
                 include_1x1: bool = False, input_shape: Sequence[int] | None = None,
                 level: float = DEFAULT_LEVEL, histograms: bool = True, distances: bool = True,
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
        self._pending: list[pd.DataFrame] = []
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
    def scalars(table: pd.DataFrame) -> dict[str, float]:
        """The TensorBoard scalars of one `compute().table`, tag -> value."""
        out: dict[str, float] = {}
        columns = {c: table[c].tolist() for c in ("name", *TAGS) if c in table.columns}
        for tag in TAGS:
            for name, value in zip(columns["name"], columns.get(tag, ())):
                if value is not None and not math.isnan(value):
                    out[f"bias/{tag}/{name}"] = float(value)
        out["bias/biased_layers"] = float(table["biased"].sum())
        return out

    def step(self, global_step: int, epoch: float | None = None, flush: bool = True) -> pd.DataFrame:
        """Compute the statistics now, log them at `global_step` and queue their rows (written at once
        when `flush`, else at the next `flush()`); returns the per-layer table of `compute()`."""
        stats = self.compute()
        table = stats.table
        if self.writer is not None:
            for tag, value in self.scalars(table).items():
                self.writer.add_scalar(tag, value, global_step)
            if self.histograms:
                for name, p in stats.projections.items():
                    if np.isfinite(p).all():  # a diverged layer has no histogram (the training loss says why)
                        self.writer.add_histogram(f"bias/projections/{name}", np.asarray(p), global_step,
                                                  bins=HISTOGRAM_BINS)
        rows = table.assign(
            step=int(global_step), epoch=float("nan") if epoch is None else float(epoch),
            normalize=self.normalize, level=self.level)
        rows = rows.reindex(columns=list(COLUMNS))
        self._pending.append(rows)
        if flush:
            self.flush()
        return table

    # -- the file -----------------------------------------------------------------------------------
    def _open(self, append: bool) -> None:
        """Take the rows of an existing file; its text is kept as it is when its columns are ours."""
        self._frames: list[pd.DataFrame] = []
        self._text = _header()
        if not append or self.csv_path is None or not self.csv_path.is_file():
            return
        existing = read_tracking(self.csv_path)
        self._frames = [existing] if len(existing) else []
        text = self.csv_path.read_text()
        if text.splitlines()[:1] == [_header().rstrip("\n")] and text.count("\n") == len(existing) + 1:
            self._text = text
        else:
            self._text = _csv(existing.reindex(columns=list(COLUMNS)), header=True)

    @property
    def rows(self) -> pd.DataFrame:
        """Every row: those already in the file and those of this tracker's steps."""
        parts = [df for df in (*self._frames, *self._pending) if len(df)]
        if not parts:
            return pd.DataFrame(columns=list(COLUMNS))
        return pd.concat(parts, ignore_index=True) if len(parts) > 1 else parts[0].reset_index(drop=True)

    def has_step(self, global_step: int) -> bool:
        """Whether a row of `global_step` is in the file or queued."""
        return any(bool((pd.to_numeric(df["step"]) == global_step).any()) for df in (*self._frames, *self._pending))

    def discard_after(self, global_step: int) -> None:
        """Drop the rows of steps after `global_step` (a run resumed from an earlier point computes them
        again), rewriting the file if it held any."""
        rows = self.rows
        keep = rows[pd.to_numeric(rows["step"]) <= global_step].reset_index(drop=True)
        if len(keep) != len(rows):
            self._replace(keep)

    def flush(self) -> None:
        """Rewrite the file, whole and atomically, with the queued rows appended (nothing if none is queued)."""
        if not self._pending:
            return
        new = pd.concat(self._pending, ignore_index=True) if len(self._pending) > 1 else self._pending[0]
        self._frames.append(new)
        self._pending = []
        self._text += _csv(new, header=False)
        self._write()

    def _replace(self, rows: pd.DataFrame) -> None:
        self._frames, self._pending = [rows] if len(rows) else [], []
        self._text = _csv(rows.reindex(columns=list(COLUMNS)), header=True)
        self._write()

    def _write(self) -> None:
        if self.csv_path is not None:
            files.write_text(self.csv_path, self._text)

    def close(self) -> None:
        self.flush()

    def __enter__(self) -> BiasTracker:
        return self

    def __exit__(self, *exc) -> None:
        self.close()
