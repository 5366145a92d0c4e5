"""Counting correct predictions: the one top-k rule of training, evaluation and the reinit sweep (the loss and
accuracies of a model over a loader are `hparr.training.evaluate`)."""
from __future__ import annotations

import torch

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
