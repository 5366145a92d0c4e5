"""`python reinit_weights.py` end to end against the paper's original `reinit_layers.py`, on the same files.

The work: lenet snapshots in the original code's formats (a plain state_dict at init, a `.tar` training snapshot
with DataParallel keys, the trained model), a CIFAR-format test set of 10,000 images read from disk, the inits list
and --rand: 19 test passes' worth of work for the plain loop. With `python -m bench --original DIR` (DIR: a checkout
of the paper's code), the two scripts take turns, A B A B: each round runs the original (through
bench/original_launcher.py, which lets it run on current torch and torchvision) and then hparr's script, each in a
fresh temporary folder of its own, and the ratio is the median of the rounds' ratios, all measured in this run.
Without DIR, hparr's script is timed alone and the row says that no ratio was measured.
"""
from __future__ import annotations

import json
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

from .common import ROOT, timed
from .fakedata import random_images, random_labels, write_cifar10

ORIGINAL_SCRIPT = "reinit_layers.py"
LAUNCHER = Path(__file__).resolve().with_name("original_launcher.py")
HPARR_SCRIPT = ROOT / "reinit_weights.py"
GOAL = 5.0
TEST_PASSES = 19  # the trained model, then 6 conv layers x (2 checkpoints + rand)


def original_folder_error(folder: str | Path) -> str | None:
    """Why `folder` cannot be the original code (`--original`), or None when it holds reinit_layers.py."""
    path = Path(folder)
    if not path.is_dir():
        return f"--original {folder}: not a folder"
    if not (path / ORIGINAL_SCRIPT).is_file():
        return f"--original {folder}: the folder holds no {ORIGINAL_SCRIPT}"
    return None


def write_original_snapshots(directory: Path) -> tuple[Path, Path]:
    """lenet snapshots as the original code wrote them; returns (trained snapshot, list of inits)."""
    from hparr import files
    from hparr.models import build_model

    init = build_model("lenet", seed=1).state_dict()
    files.save_torch(init, directory / "lenet_init_0.pt")  # a plain state_dict
    mid = build_model("lenet", seed=2).state_dict()  # a .tar dict from its DataParallel: features.module. keys
    mid = {k.replace("features.", "features.module.", 1): v for k, v in mid.items()}
    files.save_torch({"epoch": 4, "top1_acc": 40.0, "top5_acc": 80.0, "model_state_dict": mid,
                      "optimizer_state_dict": {}, "scheduler_state_dict": {}}, directory / "lenet_4.tar")
    trained = directory / "lenet_20.pt"
    files.save_torch(build_model("lenet", seed=3).state_dict(), trained)
    inits = directory / "inits.txt"
    files.write_text(inits, f"{directory / 'lenet_init_0.pt'}\n{directory / 'lenet_4.tar'}\n")
    return trained, inits


def write_work(root: Path, images: int) -> list[str]:
    """The files both scripts read, under `root`; returns the arguments both take (but --results)."""

    write_cifar10(root / "data", random_images(10, 3, 32, 32, seed=1), random_labels(10, 10, seed=1),
                  random_images(images, 3, 32, 32, seed=2), random_labels(images, 10, seed=2))
    trained, inits = write_original_snapshots(root)
    return ["--arch", "lenet", "--dataset", "cifar10", "--data-path", str(root / "data"), "--load-from", str(trained),
            "--inits-from", str(inits), "--rand"]


def run_script(name: str, cmd: list[str], root: Path) -> tuple[float, dict]:
    """Run `cmd` in a fresh folder under `root` (its working folder; its results go to <folder>/results);
    return (seconds, the JSON it wrote under results/). The folder is deleted afterwards."""
    folder = Path(tempfile.mkdtemp(prefix=f"{name}-", dir=root))
    try:
        seconds, proc = timed(subprocess.run, [*cmd, "--results", str(folder / "results")], capture_output=True,
                              text=True, cwd=folder)
        if proc.returncode != 0:
            raise RuntimeError(f"{name} failed (exit {proc.returncode}): {proc.stderr.strip()[-800:]}")
        written = sorted((folder / "results").rglob("*.json"))
        if len(written) != 1:
            raise RuntimeError(f"{name} wrote {len(written)} JSON result files, not 1")
        return seconds, json.loads(written[0].read_text())
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def counts(accuracies, images: int) -> list[int]:
    """Correct predictions from top-1 accuracies in percent (the original's float32 percentages)."""
    return [int(round(float(a) * images / 100)) for a in np.atleast_1d(accuracies)]


def agreement(original: dict, ours: dict, images: int) -> dict:
    """Where the two results can agree: the trained model's top-1 (same weights, same images) must be equal; the
    layers re-initialized from the checkpoints (not from random weights, which each draws its own) are counted."""
    trained = counts(original.get("top1_test", -1), images) == counts(ours.get("top1_test", -2), images)
    theirs, mine = original.get("init_from_epoch", {}), ours.get("init_from_epoch", {})
    shared = [e for e in theirs if e != "rand" and e in mine]
    equal = total = 0
    for epoch in shared:
        a, b = counts(theirs[epoch], images), counts(mine[epoch], images)
        total += max(len(a), len(b))
        equal += sum(x == y for x, y in zip(a, b))
    return {"trained_top1_agree": trained, "original_top1": original.get("top1_test"),
            "hparr_top1": ours.get("top1_test"), "checkpoint_layers_equal": f"{equal}/{total}",
            "results_agree": trained and equal == total and total > 0}


def command_case(images: int = 10_000, rounds: int = 2, original: str | Path | None = None) -> dict:
    """hparr's `reinit_weights.py` on the work, against the original `reinit_layers.py` in turns when `original`
    (its folder) is given; else hparr's script alone."""
    if original is not None and (why := original_folder_error(original)):
        raise ValueError(why)
    root = Path(tempfile.mkdtemp(prefix="hparr-bench-reinit-"))
    try:
        args = write_work(root, images)
        ours_cmd = [sys.executable, str(HPARR_SCRIPT), *args, "--no-progress"]
        row = {"case": "reinit_lenet_command", "images": images, "test_passes_plain": TEST_PASSES, "rounds": rounds}
        if original is None:
            hparr_s = [run_script("hparr", ours_cmd, root)[0] for _ in range(rounds)]
            return {**row, "hparr_s": [round(s, 3) for s in hparr_s], "seconds": round(float(np.median(hparr_s)), 3),
                    "original": "not given (python -m bench --original DIR): no ratio measured"}
        theirs_cmd = [sys.executable, str(LAUNCHER), str(Path(original).resolve()), *args]
        original_s, hparr_s, checks = [], [], []
        for _ in range(rounds):  # A B A B: the original, then ours, in each round
            seconds, theirs = run_script("original", theirs_cmd, root)
            original_s.append(seconds)
            seconds, ours = run_script("hparr", ours_cmd, root)
            hparr_s.append(seconds)
            checks.append(agreement(theirs, ours, images))
        ratios = [o / h for o, h in zip(original_s, hparr_s)]
        median = float(np.median(ratios))
        return {**row, "original_s": [round(s, 3) for s in original_s], "hparr_s": [round(s, 3) for s in hparr_s],
                "ratios": [round(r, 3) for r in ratios], "speedup_median": round(median, 3), "goal": GOAL,
                "goal_met": median >= GOAL, **checks[-1],
                "trained_top1_agree": all(c["trained_top1_agree"] for c in checks),
                "results_agree": all(c["results_agree"] for c in checks), "original": str(original)}
    finally:
        shutil.rmtree(root, ignore_errors=True)
