"""The plain reference loop (swap the parameters in, evaluate the whole network, restore) and the tally of
counts and losses that every sweep fills."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Iterable, Mapping, Sequence

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from ..errors import HparrError
from ..metrics import topk_hits
from ..results import relative_drops
from ._units import prepare

Batches = Iterable[tuple[torch.Tensor, torch.Tensor]]


# --- results -------------------------------------------------------------------------------------

@dataclass
class SweepCounts:
    """Correct-prediction counts of a sweep: `correct[a, l] = (top-1, top-k)` for alternative a, layer l."""

    layers: list[str]
    labels: list[str]
    correct: np.ndarray
    trained_correct: tuple[int, int]
    total: int
    topk: int
    method: str
    notes: list[str] = field(default_factory=list)
    agree: np.ndarray | None = None  # [a, l]: test images whose top-1 class is the trained model's
    loss: np.ndarray | None = None  # [a, l]: mean test cross-entropy
    trained_loss: float | None = None
    groups: dict[str, list[str]] | None = None  # {unit: its modules} (a layer alone, a block, a stage)

    def accuracy(self, k: int = 1) -> dict[str, list[float]]:
        """Test accuracy in percent, {label: [one value per layer]} (k=1 or the sweep's top-k)."""
        col = 0 if k == 1 else 1
        return {label: [100.0 * int(c) / self.total for c in self.correct[i, :, col]]
                for i, label in enumerate(self.labels)}

    def trained_accuracy(self, k: int = 1) -> float:
        return 100.0 * self.trained_correct[0 if k == 1 else 1] / self.total

    def agreement(self) -> dict[str, list[float]]:
        """{label: [share of test images whose top-1 class is the trained model's, one per layer]}."""
        return {label: [int(c) / self.total for c in self.agree[i]] for i, label in enumerate(self.labels)}

    def test_loss(self) -> dict[str, list[float]]:
        """{label: [mean test cross-entropy, one per layer]}."""
        return {label: [float(v) for v in self.loss[i]] for i, label in enumerate(self.labels)}

    def relative_drop(self):
        """(acc_trained - acc_reinit) / acc_trained of top-1, a DataFrame: rows labels, columns layers."""
        import pandas as pd  # start-up time: pandas only for this table

        return pd.DataFrame.from_dict(relative_drops(self.trained_accuracy(), self.accuracy()), orient="index",
                                      columns=list(self.layers))


def _loss_sum(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """The summed cross-entropy of a batch, in float64."""
    return F.cross_entropy(logits.to(torch.float64), labels, reduction="sum")


class Tally:
    """Per alternative and unit: top-1, top-k and agreement counts and the summed loss; and the trained model's.

    Agreement (the top-1 class equals the trained model's) is counted when the batch's trained logits are
    known, at `close_batch`: the shared-prefix sweep gets them only after every alternative of the batch.
    """

    def __init__(self, alternatives: int, units: int, device: torch.device):
        self.counts = torch.zeros(alternatives, units, 3, dtype=torch.int64, device=device)
        self.loss = torch.zeros(alternatives, units, dtype=torch.float64, device=device)
        self.trained = torch.zeros(2, dtype=torch.int64, device=device)
        self.trained_loss = torch.zeros((), dtype=torch.float64, device=device)
        self._top1: list[tuple[int, int, torch.Tensor]] = []

    def add(self, ai: int, ui: int, logits: torch.Tensor, y: torch.Tensor, k: int) -> None:
        hits, top1 = topk_hits(logits, y, k)
        self.counts[ai, ui, :2] += hits
        self.loss[ai, ui] += _loss_sum(logits, y)
        self._top1.append((ai, ui, top1))

    def close_batch(self, logits: torch.Tensor, y: torch.Tensor, k: int) -> None:
        hits, top1 = topk_hits(logits, y, k)
        self.trained += hits
        self.trained_loss += _loss_sum(logits, y)
        for ai, ui, other in self._top1:
            self.counts[ai, ui, 2] += (other == top1).sum()
        self._top1.clear()


def device_of(model: nn.Module) -> torch.device:
    p = next(model.parameters(), None)
    return p.device if p is not None else torch.device("cpu")


def plain_reinit_sweep(model: nn.Module, alternatives: Mapping[str, Mapping[str, torch.Tensor]],
                       batches: Batches, layers: Sequence[str] | None = None, with_linear: bool = False,
                       topk: int = 5, groups: Mapping[str, Sequence[str]] | None = None,
                       with_bn: bool = False) -> SweepCounts:
    """The reference: for each layer and alternative, swap the parameters in, evaluate the whole network, restore.

    `alternatives` maps a label to a state_dict (only the layers' weight/bias are read). `batches`
    yields (images, labels) ready for the model; it is iterated once (every pass of a batch happens
    while it is in memory). The model's parameters are restored bit for bit, also on error. `groups`
    ({unit name: [layers]}, see `reinit_groups`) swaps several layers at once; `with_bn` also swaps the
    BatchNorm after each of them (parameters and running statistics).
    """
    units, params = prepare(model, alternatives, layers, with_linear, groups, with_bn)
    return run_sweep(model, units, params, batches, topk, plain_batch, "plain")


def plain_batch(model, units, params, x, y, k, tally):
    """One batch of the plain loop; returns the trained network's logits."""
    trained = model(x)
    for ui, unit in enumerate(units):
        own = [getattr(model.get_submodule(m), t) for m, names in unit.members for t in names]
        saved = [t.detach().clone() for t in own]
        try:
            for ai, label in enumerate(params):
                for mine, new in zip(own, params[label][unit.name]):
                    mine.detach().copy_(new)
                tally.add(ai, ui, model(x), y, k)
        finally:
            for mine, old in zip(own, saved):
                mine.detach().copy_(old)
    return trained


def run_sweep(model, units, params, batches, topk, per_batch, method, notes=()):
    device = device_of(model)
    was_training = model.training
    model.eval()
    tally = None
    total = 0
    k = topk
    try:
        with torch.inference_mode():
            for x, y in batches:
                x = x.to(device, non_blocking=True)
                y = y.to(device, non_blocking=True)
                if tally is None:
                    tally = Tally(len(params), len(units), device)
                logits = per_batch(model, units, params, x, y, k, tally)
                tally.close_batch(logits, y, k)
                k = min(k, logits.shape[1])
                total += int(y.shape[0])
    finally:
        model.train(was_training)
    return sweep_result(tally, total, units, params, k, method, notes)


def sweep_result(tally: Tally | None, total: int, units, params, k: int, method: str, notes=()) -> SweepCounts:
    """The result of a sweep from its tally over `total` images."""
    if not total:
        raise HparrError("the test set is empty")
    c = tally.trained.cpu().tolist()
    counts = tally.counts.cpu().numpy()
    return SweepCounts(layers=[u.name for u in units], labels=list(params), correct=counts[:, :, :2].copy(),
                        trained_correct=(int(c[0]), int(c[1])), total=total, topk=k, method=method,
                        notes=list(notes), agree=counts[:, :, 2].copy(),
                        loss=tally.loss.cpu().numpy() / total, trained_loss=float(tally.trained_loss) / total,
                        groups={u.name: u.modules for u in units})


def first_images(batches: Batches, n: int):
    """The batches cut after the first `n` images (the test set's own order)."""
    seen = 0
    for x, y in batches:
        if seen >= n:
            break
        take = min(n - seen, int(y.shape[0]))
        yield x[:take], y[:take]
        seen += take
