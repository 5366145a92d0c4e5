"""Counting correct predictions: the one top-k rule of training, evaluation and the reinit sweep; and `evaluate`,
the loss and accuracies of a model over a loader."""
from __future__ import annotations

import contextlib

import torch
import torch.nn as nn
import torch.nn.functional as F

from . import distributed
from .errors import HparrError


def topk_hits(logits: torch.Tensor, labels: torch.Tensor, k: int = 5) -> tuple[torch.Tensor, torch.Tensor]:
    """((top-1, top-k) correct predictions, the top-1 classes) of a batch, on the logits' device.

    A label counts for top-k when it is among the k largest logits; k is capped at the class count. The
    counts are a 2-element int64 tensor; nothing is copied to the host, so a sweep can add counts without
    waiting for the device.
    """
    if not isinstance(logits, torch.Tensor) or logits.dim() != 2:
        raise HparrError("the model must return a (batch, classes) tensor of logits")
    top = logits.topk(min(k, logits.shape[1]), dim=1).indices
    hits = top == labels[:, None]
    return torch.stack((hits[:, 0].sum(), hits.any(dim=1).sum())), top[:, 0]


def correct_counts(logits: torch.Tensor, labels: torch.Tensor, k: int = 5) -> torch.Tensor:
    """(top-1, top-k) correct predictions of a batch (see `topk_hits`)."""
    return topk_hits(logits, labels, k)[0]


def evaluate(model: nn.Module, loader, device: torch.device, amp_dtype: torch.dtype | None = None) -> dict[str, float]:
    """Mean loss, top-1 and top-5 accuracy (%) over `loader`, summed across ranks under torchrun."""
    was_training = model.training
    model.eval()
    loss_sum, c1, c5, n = 0.0, 0, 0, 0
    with torch.inference_mode(), autocast(device, amp_dtype):
        for x, y in loader:
            x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
            out = model(x).float()
            loss_sum += float(F.cross_entropy(out, y, reduction="sum"))
            a, b = correct_counts(out, y, 5).tolist()
            c1, c5, n = c1 + a, c5 + b, n + y.numel()
    model.train(was_training)
    loss_sum, c1, c5, n = distributed.all_reduce_sum([loss_sum, c1, c5, n], device)
    if n == 0:
        raise HparrError("evaluation set is empty")
    return {"loss": loss_sum / n, "top1": 100.0 * c1 / n, "top5": 100.0 * c5 / n, "count": int(n)}


def autocast(device: torch.device, dtype: torch.dtype | None):
    """torch.autocast to `dtype` on `device`'s type, or nothing when `dtype` is None (full precision)."""
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=dtype)
