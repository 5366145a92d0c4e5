"""Test oracles shared by several test files (import them with `from conftest import ...`)."""
from __future__ import annotations

import copy
import os
import tempfile
from typing import Collection

import pytest
import torch
import torch.nn as nn

from hparr.provenance import available_cores

# under `pytest -n N` (pytest-xdist, as `make test` runs), the torch threads of each of the N workers: its share
# of the cores, so that the workers do not fight over them; 0 without xdist (torch's own default)
WORKER_THREADS = 0


def pytest_configure(config):
    global WORKER_THREADS
    # torch's OpenMP threads sleep rather than spin while they wait: where the workers and the processes the tests
    # start share the cores, spinning threads cost several times the CPU time of the work itself (the workers
    # and those processes inherit this before they load torch)
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    # the null tables hparr computes once per machine (hparr.null) go to a folder of the tests' own, shared by the
    # workers and kept between runs, not to the user's cache
    os.environ.setdefault("HPARR_CACHE_DIR", os.path.join(tempfile.gettempdir(), f"hparr-test-cache-{os.getuid()}"))
    workers = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "0"))
    if workers > 1:
        WORKER_THREADS = max(1, available_cores() // workers)
        torch.set_num_threads(WORKER_THREADS)
        # the processes the tests start take the same share, unless they set their threads themselves
        os.environ["OMP_NUM_THREADS"] = str(WORKER_THREADS)


@pytest.fixture(autouse=True)
def _worker_threads():
    """Gives the worker its share of the cores back after a test whose command set torch's threads (`hparr train`
    takes every core of the machine)."""
    yield
    if WORKER_THREADS and torch.get_num_threads() != WORKER_THREADS:
        torch.set_num_threads(WORKER_THREADS)


def original_numbering(features: nn.Sequential) -> list[tuple[str, int, int]]:
    """(name, stage, block) of the analyzed convs of a `features` Sequential, as the original code walked it:
    a max-pool advances the stage, a conv other than 1x1 gets the next block of its stage."""
    out, stage, block = [], 0, 0
    for index, module in enumerate(features):
        if isinstance(module, nn.MaxPool2d):
            stage, block = stage + 1, 0
        elif isinstance(module, nn.Conv2d) and module.kernel_size != (1, 1):
            out.append((f"features.{index}", stage, block))
            block += 1
    return out


def trained_like(model: nn.Module, seed: int = 5, strength: float = 0.4, shift: float | None = None,
                 shifted: Collection[str] | None = None) -> nn.Module:
    """A copy of `model` whose weights moved away from initialization, some towards the positive orthant.

    Every weight W of more than one dimension (conv and linear layers) gets `strength * std(W) * N(0, 1)`
    noise drawn from a generator seeded with `seed`; the layers named in `shifted` (all of them when None)
    then move by `shift * std(W)` along the identity direction (default shift: 0.3 * strength).
    """
    shift = 0.3 * strength if shift is None else shift
    out = copy.deepcopy(model)
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for key, value in out.state_dict().items():
            if key.endswith("weight") and value.dim() > 1:
                scale = float(value.std())
                value.add_(strength * scale * torch.randn(value.shape, generator=gen))
                if shifted is None or key.rsplit(".", 1)[0] in shifted:
                    value.add_(shift * scale)
    return out


def command_parser(command: str):
    """The parser of `hparr COMMAND` alone, whose `arguments` list its flags (`hparr.cli._args.ArgumentParser`)."""
    import importlib

    from hparr.cli import COMMANDS
    from hparr.cli._args import ArgumentParser

    parser = ArgumentParser(prog=f"hparr {command}")
    importlib.import_module(f"hparr.cli.{COMMANDS[command][0]}").add_arguments(parser)
    return parser


def help_entries(parser) -> dict[str, str]:
    """{a flag's first option string: its entry in the printed help, on one line} (wide lines: set COLUMNS=400)."""
    entries: dict[str, str] = {}
    flag = None
    for line in parser.format_help().splitlines():
        if line.startswith("  -"):
            flag = line.split()[0].rstrip(",")
            entries[flag] = line
        elif flag is not None and line.startswith("   "):
            entries[flag] += " " + line.strip()
        else:
            flag = None
    return {flag: " ".join(text.split()) for flag, text in entries.items()}
