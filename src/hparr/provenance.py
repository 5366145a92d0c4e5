"""What produced a result: library versions and seeds, as plain values for result files."""
from __future__ import annotations

import os
import platform
import secrets
import sys
import zlib

import numpy as np

from . import __version__


def versions(with_torch: bool = True) -> dict[str, str]:
    """Versions of Python and of the libraries that shape the numbers (without torch and torchvision, for
    what never imports them, such as the report)."""
    out = {"hparr": __version__, "python": platform.python_version()}
    if with_torch:  # read from the installed distributions: importing torchvision costs about a second
        out.update(torch=_installed("torch"), torchvision=_installed("torchvision"))
    return {**out, "numpy": str(np.__version__)}


def _installed(name: str) -> str:
    """The version of a package: its module's own (with the build tag, e.g. +cu130) when it is already
    imported, else the installed distribution's."""
    from importlib import metadata  # start-up time: it imports email, zipfile and csv, needed here alone

    module = sys.modules.get(name)
    if module is not None and getattr(module, "__version__", None):
        return str(module.__version__)
    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return "not installed"


def available_cores() -> int:
    """The CPU cores this process may use (its affinity mask where the platform has one)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:
        return os.cpu_count() or 1


def resolve_seed(seed: int | None) -> int:
    """`seed`, or a fresh one (to be recorded) when the user gave none."""
    return int(seed) if seed is not None else secrets.randbelow(2**31)


def derive_seeds(seed: int, *names: str) -> dict[str, int]:
    """Independent named seeds derived from one user seed (stable across runs and versions)."""
    return {name: int(np.random.SeedSequence([seed, zlib.crc32(name.encode())]).generate_state(1)[0])
            for name in names}
