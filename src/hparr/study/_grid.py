"""The grid of a study: its cells, and the comma lists and ranges of its axes (`--seeds 0-4`)."""
from __future__ import annotations

import math
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable

from .. import layout
from ..errors import UsageError
from ..layout import Corruption


@dataclass(frozen=True)
class Cell:
    """One point of the grid."""

    arch: str
    dataset: str
    seed: int
    noise: float = 0.0
    subsample_classes: int = 0
    train_size: int | None = None  # a --train-size subset of the training images (None: all)

    @property
    def condition(self) -> str:
        return Corruption(self.noise).condition

    @property
    def data_name(self) -> str:
        return layout.cell_data_name(self.dataset, self.subsample_classes, self.train_size)

    @property
    def relpath(self) -> Path:
        """`cells/<arch>/<dataset>[_k][_n<N>]/<condition>/seed_<s>`, below the study folder (n<N>: --train-size)."""
        return layout.cell_path(self.arch, self.dataset, self.seed, self.noise, self.subsample_classes, self.train_size)

    def describe(self) -> str:
        return f"{self.arch} {self.data_name} {self.condition} seed {self.seed}"


def _items(flag: str, text: str) -> list[str]:
    if not text.strip():
        raise UsageError(f"empty grid: {flag} lists no value")
    items = [item.strip() for item in text.split(",")]
    for position, item in enumerate(items, 1):
        if not item:
            raise UsageError(f"{flag}: malformed list {text!r}: item {position} is empty")
    return items


def unique(values: Iterable) -> list:
    out = []
    for v in values:
        if v not in out:
            out.append(v)
    return out


def parse_names(flag: str, text: str) -> list[str]:
    """`a,b,c` -> ["a", "b", "c"] (repeats dropped)."""
    return unique(_items(flag, text))


def parse_ints(flag: str, text: str) -> list[int]:
    """Comma list of integers >= 0 and ranges: `0-4,7` -> [0, 1, 2, 3, 4, 7] (ranges include both ends)."""
    out: list[int] = []
    for item in _items(flag, text):
        single, span = re.fullmatch(r"\d+", item), re.fullmatch(r"(\d+)\s*-\s*(\d+)", item)
        if single:
            out.append(int(item))
        elif span:
            lo, hi = int(span.group(1)), int(span.group(2))
            if hi < lo:
                raise UsageError(f"{flag}: backwards range {item!r} in {text!r} (write {hi}-{lo})")
            out.extend(range(lo, hi + 1))
        else:
            raise UsageError(f"{flag}: malformed list {text!r}: {item!r} is not an integer >= 0 or a range a-b")
    return unique(out)


def parse_floats(flag: str, text: str) -> list[float]:
    """Comma list of numbers: `0,0.5,1,-1` -> [0.0, 0.5, 1.0, -1.0]."""
    out = []
    for item in _items(flag, text):
        try:
            value = float(item)
        except ValueError:
            raise UsageError(f"{flag}: malformed list {text!r}: {item!r} is not a number") from None
        if not math.isfinite(value):
            raise UsageError(f"{flag}: malformed list {text!r}: {item!r} is not a finite number")
        out.append(value + 0.0)  # -0.0 -> 0.0
    return unique(out)
