"""Benchmark of `hparr projections` over many vgg11 snapshots, against the naive way.

`run()` writes vgg11 (10 classes) snapshots in the original code's formats (`vgg11_init_0.pt`, then
`vgg11_<e>.tar` dicts, then a final `vgg11_<E>.pt`) whose conv weights drift from one to the next,
times the command over all of them, and times the naive way (build the model, load the snapshot with
load_state_dict, compute) on a few, so both give snapshots per second.

To keep disk use moderate, the classifier's two big weight matrices (25088x4096 and 4096x4096, ~490 MB)
are saved as broadcast views of a single value: every file is still a complete state_dict of the right
shapes (~37 MB). A second case writes `full_size` snapshots with every tensor stored in full (~530 MB
each), as training writes them. The files are read back from a warm page cache. Everything is deleted
at the end.
"""
from __future__ import annotations

import contextlib
import shutil
import tempfile
import time
from pathlib import Path

import torch

from hparr import checkpoints, files
from hparr.cli import main as hparr_main
from hparr.models import build_model
from hparr.projections import layer_stats

ARCH = "vgg11"


def write_snapshots(directory: Path, n: int, full_size: bool = False, seed: int = 0) -> list[Path]:
    """`n` snapshots of vgg11 in the original formats; the conv weights drift towards the positive orthant."""
    state = build_model(ARCH, num_classes=10, seed=seed).state_dict()
    conv = [k for k, v in state.items() if k.startswith("features.") and v.dim() == 4]
    if not full_size:
        for k, v in state.items():
            if k.startswith("classifier.") and v.numel() > 1_000_000:
                state[k] = torch.zeros(1, dtype=v.dtype).expand(v.shape)
    gen = torch.Generator().manual_seed(seed + 1)
    drift = {k: state[k].std() * (torch.randn(state[k].shape, generator=gen) + 1.0) for k in conv}
    epochs = max(n - 2, 0)
    paths = []
    for i in range(n):
        t = i / max(n - 1, 1)
        snap = dict(state)
        snap.update({k: state[k] + 0.5 * t * drift[k] for k in conv})
        if i == 0:
            path, payload = directory / checkpoints.init_name(ARCH), snap
        elif i == n - 1:
            path, payload = directory / checkpoints.final_name(ARCH, epochs), snap
        else:
            e = i - 1
            path = directory / checkpoints.epoch_name(ARCH, e)
            payload = {"epoch": e, "top1_acc": 10.0 + e, "top5_acc": 50.0 + e, "model_state_dict": snap,
                       "optimizer_state_dict": {"state": {}, "param_groups": [
                           {"lr": 0.01, "momentum": 0.9, "weight_decay": 1e-4, "params": list(range(len(snap)))}]},
                       "scheduler_state_dict": {}}
        files.save_torch(payload, path)
        paths.append(path)
    return paths


def _command(snapshots: Path, results: Path) -> float:
    start = time.perf_counter()
    with contextlib.redirect_stdout(None):
        rc = hparr_main(["projections", "--arch", ARCH, "--dataset", "cifar10", "--normalize", "--no-progress",
                         "--load-from", str(snapshots), "--results", str(results)])
    if rc != 0:
        raise RuntimeError(f"hparr projections failed with exit code {rc}")
    return time.perf_counter() - start


def _naive(paths: list[Path]) -> float:
    start = time.perf_counter()
    for path in paths:
        model = build_model(ARCH, num_classes=10)
        checkpoints.load_model_weights(model, path)
        layer_stats(model, normalize=True)
    return time.perf_counter() - start


def _case(name: str, count: int, seconds: float, **extra) -> dict:
    return {"case": name, "snapshots": count, "seconds": round(seconds, 3),
            "snapshots_per_s": round(count / seconds, 2), **extra}


def run(n: int = 100, workdir: str | None = None, full_size: int = 3, baseline: int = 5) -> list[dict]:
    """Time the command on `n` compact and `full_size` full-size snapshots, and the naive way on a few."""
    root = Path(tempfile.mkdtemp(prefix="hparr-bench-projections-", dir=workdir))
    out = []
    try:
        for label, count, full in (("", n, False), ("_fullsize", full_size, True)):
            if count <= 0:
                continue
            snaps = files.ensure_dir(root / f"snapshots{label}")
            paths = write_snapshots(snaps, count, full_size=full)
            mb = round(sum(p.stat().st_size for p in paths) / count / 2**20, 1)
            fast = _command(snaps, root / f"results{label}")
            few = paths[:min(baseline, count)]
            slow = _naive(few)
            ratio = round((count / fast) / (len(few) / slow), 1)
            out.append(_case(f"projections_{ARCH}{label}", count, fast, file_mb=mb, speedup_vs_naive=ratio))
            out.append(_case(f"projections_{ARCH}{label}_naive", len(few), slow, file_mb=mb))
            shutil.rmtree(snaps)
    finally:
        shutil.rmtree(root, ignore_errors=True)
    return out


if __name__ == "__main__":
    for row in run():
        print(row)
