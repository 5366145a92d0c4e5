"""Shared bench utilities: timing, printing, and the machine description."""
from __future__ import annotations

import json
import os
import platform
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

# `python -m bench --quick` (a few minutes: checks every case, with rough ratios), the default (at most 10 minutes
# on 2 cores: the same rows and ratios on smaller work), `--full` (the sizes of the figures quoted in the docs)
MODES = ("quick", "default", "full")


def pick(mode: str, quick, default, full):
    """The size of a case in `mode`."""
    if mode not in MODES:
        raise ValueError(f"unknown bench mode {mode!r}; choose from {MODES}")
    return {"quick": quick, "default": default, "full": full}[mode]


def timed(fn, *args, **kwargs):
    """(seconds, result) of one call."""
    start = time.perf_counter()
    result = fn(*args, **kwargs)
    return time.perf_counter() - start, result


def machine() -> dict:
    import torch

    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {"cpu": cpu, "cores": len(os.sched_getaffinity(0)), "torch_threads": torch.get_num_threads(),
            "torch": str(torch.__version__), "python": platform.python_version()}


def emit(row: dict) -> None:
    """One human line and one JSON line per result."""
    human = "  ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in row.items())
    print(human, flush=True)
    print("JSON " + json.dumps(row), flush=True)


CIFAR_MEAN, CIFAR_STD = (0.4914, 0.4822, 0.4465), (0.2023, 0.1994, 0.2010)


def torchvision_cifar10(root: str | Path):
    """The baseline's data: torchvision's `CIFAR10` on the bench's CIFAR-format files, with the usual
    augmentation (RandomCrop(32, padding=4), flip, ToTensor, Normalize)."""
    import torchvision
    import torchvision.transforms as T

    class LocalCIFAR10(torchvision.datasets.CIFAR10):
        # the bench's files are in the official format but are not the official files: skip the md5 checks
        def _check_integrity(self) -> bool:
            return True

        def _load_meta(self) -> None:
            self.classes = [str(i) for i in range(10)]
            self.class_to_idx = {c: i for i, c in enumerate(self.classes)}

    transform = T.Compose([T.RandomCrop(32, padding=4), T.RandomHorizontalFlip(), T.ToTensor(),
                           T.Normalize(CIFAR_MEAN, CIFAR_STD)])
    return LocalCIFAR10(str(root), train=True, transform=transform, download=False)
