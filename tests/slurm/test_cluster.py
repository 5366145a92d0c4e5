"""`hparr study --launcher slurm` against a real one-node SLURM (tests/slurm/start.sh; `make test-slurm` starts it,
runs these tests and stops it). Not collected by the ordinary `make test`.

The study runs as a user would run it: `python -m hparr` in a child process, with a PATH that holds the system's
commands (sbatch, squeue) and not the project's venv, so that the cells find the study's Python by its path."""
from __future__ import annotations

import hashlib
import json
import math
import os
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
from datetime import datetime
from pathlib import Path

import pandas as pd
import pytest

from hparr import results
from hparr.layout import RUN_REPORT_FILES
from hparr.training import LOCK_NAME

pytestmark = [pytest.mark.slurm, pytest.mark.slow]

SYSTEM_PATH = os.pathsep.join(["/usr/local/sbin", "/usr/local/bin", "/usr/sbin", "/usr/bin", "/sbin", "/bin"])
TINY = ["--epochs", "1", "--snapshot-every", "1", "--snapshot-all-until", "0", "--lr", "0.02", "--tb-logdir", "",
        "--batch-size", "256"]
GRID = ["--seeds", "0-1", "--noise", "0,1"]
CELLS = [f"cells/lenet/digits/{c}/seed_{s}" for c in ("clean", "noise_100") for s in (0, 1)]
ACTIVE = {"PENDING", "RUNNING", "COMPLETING", "CONFIGURING", "REQUEUED", "REQUEUE_HOLD", "REQUEUE_FED",
          "SUSPENDED", "SIGNALING"}


@pytest.fixture(scope="module")
def cluster():
    """The running one-node SLURM (SLURM_CONF); its absence fails the tests rather than skipping them."""
    if not os.environ.get("SLURM_CONF") or shutil.which("sinfo", path=SYSTEM_PATH) is None:
        pytest.fail("no SLURM to test against: run `make test-slurm` (it starts one with tests/slurm/start.sh)")
    answer = subprocess.run(["sinfo", "-h", "-o", "%t"], capture_output=True, text=True, timeout=60)
    if answer.returncode != 0 or not answer.stdout.split():
        pytest.fail(f"sinfo does not answer: {answer.stderr.strip()} (SLURM_CONF={os.environ['SLURM_CONF']})")
    return os.environ["SLURM_CONF"]


def hparr(*argv: str, timeout: float = 1800, check: bool = True) -> subprocess.CompletedProcess:
    env = {**os.environ, "PATH": SYSTEM_PATH}
    done = subprocess.run([sys.executable, "-m", "hparr", *argv], capture_output=True, text=True, timeout=timeout,
                          env=env)
    if check:
        assert done.returncode == 0, done.stdout + done.stderr
    return done


def fingerprint(folder: Path) -> dict[str, tuple[int, str]]:
    return {str(p.relative_to(folder)): (p.stat().st_mtime_ns, hashlib.sha256(p.read_bytes()).hexdigest())
            for p in sorted(folder.rglob("*")) if p.is_file()}


def task_states(job_id: str) -> dict[str, str]:
    out = subprocess.run(["squeue", "-h", "-r", "-t", "all", "-o", "%i|%T", "-j", job_id], capture_output=True,
                         text=True, timeout=60).stdout
    return dict(line.split("|", 1) for line in out.split())


def wait_for(condition, what: str, limit: float = 1200, every: float = 1.0) -> None:
    deadline = time.monotonic() + limit
    while not condition():
        assert time.monotonic() < deadline, f"still waiting for {what} after {limit:.0f} s"
        time.sleep(every)


def training_pid(cell: Path) -> int | None:
    """The pid of the process training in `cell`, as its run directory's lock records it (None until then)."""
    for lock in cell.rglob(LOCK_NAME):
        try:
            return int(json.loads(lock.read_text())["pid"])
        except (OSError, ValueError, KeyError, TypeError):
            return None
    return None


def hold_stopped(pid: int) -> threading.Thread:
    """Stop `pid` and keep it stopped until it is gone: SLURM's cancel sends SIGCONT before its SIGTERM (which
    submitit's cells ignore) and kills the task KillWait seconds later; stopped again at once, the cell does no
    work in between."""
    def hold():
        deadline = time.monotonic() + 600
        while time.monotonic() < deadline:
            try:
                os.kill(pid, signal.SIGSTOP)
                state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
            except (ProcessLookupError, FileNotFoundError):
                return
            if state in ("Z", "X"):
                return
            time.sleep(0.001)

    os.kill(pid, signal.SIGSTOP)
    thread = threading.Thread(target=hold, daemon=True)
    thread.start()
    return thread


def test_a_study_array_cancelled_midway_then_rerun_equals_the_local_study(cluster, tmp_path):
    out, local = tmp_path / "slurm", tmp_path / "local"
    argv = ["study", *GRID, *TINY, "--launcher", "slurm", "--cpus-per-task", "1", "--array-parallelism", "1",
            "--mem", "600M", "--slurm-extra", "comment=hparr-test", "--setup", "echo setup line ran",
            "--out", str(out)]
    dry = hparr(*argv, "--dry-run").stdout
    assert ("sbatch: --time=240 --cpus-per-task=1 --mem=600M --comment=hparr-test --array=...%1; "
            "setup: echo setup line ran") in dry and not out.exists()

    submitted = hparr(*argv, "--no-wait")
    job_id = json.loads((out / "study.json").read_text())["slurm_arrays"][0]["job_id"]
    assert f"submitted 4 cell(s) as SLURM job array {job_id}" in submitted.stdout
    record = json.loads((out / "study.json").read_text())
    assert record["slurm"]["mem"] == "600M" and record["slurm"]["extra"] == {"comment": "hparr-test"}
    assert record["slurm"]["setup"] == ["echo setup line ran"]
    assert sorted(record["slurm_arrays"][0]["tasks"].values()) == sorted(CELLS)

    # one cell at a time: cancel the array once the first cell is finished and the second has a snapshot; the
    # second is held stopped meanwhile, so that it cannot finish in the seconds a cancel takes, however fast the machine
    first, second = out / CELLS[0], out / CELLS[1]
    wait_for(lambda: results.run_finished(first, RUN_REPORT_FILES) and any(second.rglob("lenet_init_0.pt"))
             and training_pid(second),
             "the second cell", every=0.05)
    held = hold_stopped(training_pid(second))
    assert not results.run_finished(second, RUN_REPORT_FILES)
    subprocess.run(["scancel", job_id], check=True, timeout=60)
    wait_for(lambda: not ACTIVE & set(task_states(job_id).values()), "the cancelled array to end")
    held.join(timeout=60)
    assert not results.run_finished(second, RUN_REPORT_FILES)

    status = hparr("study", str(out), "--status").stdout.splitlines()
    assert status[0] == f"finished    {CELLS[0]} (task {job_id}_0)"
    # cancelled while it trained: its process died without ending its attempt record
    assert status[1].startswith(f"failed      {CELLS[1]} (task {job_id}_1, cancelled): its process (pid ")
    assert "ended without finishing or recording an error" in status[1]
    assert status[1].endswith(f"; log: {second / 'cell.log'}")
    assert status[2].startswith(f"not started {CELLS[2]} (task {job_id}_2")
    assert status[-1] == "4 cells: 1 finished, 1 failed, 2 not started"
    partial = hparr("report", str(out)).stdout
    assert "3 cell(s) of the study are not finished and missing from the report" in partial

    before = fingerprint(first)
    rerun = hparr(*argv)
    assert "study: 4 cells: 3 finished now, 1 already finished, 0 failed" in rerun.stdout
    assert fingerprint(first) == before  # the finished cell was skipped, not rewritten
    assert re.search(r"resumed from \S+lenet_(init_0|1)\.pt", (second / "cell.log").read_text())
    # accounting is disabled here: said once, then squeue; submitit's warnings stay off the console
    console = rerun.stdout + rerun.stderr
    assert console.count("sacct does not answer here") == 1 and "Bypassing" not in console
    assert "Traceback" not in console and "warn" not in console.lower()
    for cell in CELLS[1:]:  # each cell ran with the study's Python, its log in its folder, its duration reported
        assert results.run_finished(out / cell, RUN_REPORT_FILES)
        assert "cell finished in" in (out / cell / "cell.log").read_text()
        ran = float(re.search(r"cell finished in ([\d.]+) s", (out / cell / "cell.log").read_text()).group(1))
        describe = f"lenet digits {cell.split('/')[3]} seed {cell[-1]}"
        line = next(x for x in rerun.stderr.splitlines() if describe in x and "finished" in x)
        assert abs(float(re.search(r"\((\d+) s\)", line).group(1)) - ran) <= 1, line
    arrays = json.loads((out / "study.json").read_text())["slurm_arrays"]
    assert len(arrays) == 2 and arrays[1]["job_id"] != job_id
    job = arrays[1]["job_id"]
    script = (out / "submitit" / job / f"{job}_submission.sh").read_text()
    assert sys.executable in script and "echo setup line ran" in script and "--mem=600M" in script
    assert "setup line ran" in (out / "submitit" / f"{job}_0" / f"{job}_0_0_log.out").read_text()

    hparr("study", *GRID, *TINY, "--jobs", "2", "--threads", "1", "--out", str(local))
    on_slurm, here = pd.read_csv(out / "report" / "study.csv"), pd.read_csv(local / "report" / "study.csv")
    assert len(on_slurm) and set(on_slurm["cell"]) == set(CELLS)
    pd.testing.assert_frame_equal(on_slurm, here, check_exact=True)
    assert hparr("study", str(out), "--status").stdout.splitlines()[-1] == "4 cells: 4 finished"


def epoch_seconds(models: Path) -> float:
    """Seconds per epoch of the cell's training (lenet, digits, batches of 32) on one core of this machine, read
    off the timestamps of the epoch lines of a short run's train.log."""
    subprocess.run(["taskset", "-c", "0", sys.executable, "-m", "hparr", "train", "--arch", "lenet", "--dataset",
                    "digits", "--epochs", "5", "--lr", "0.02", "--batch-size", "32", "--no-track", "--tb-logdir", "",
                    "--no-progress", "--models-path", str(models)], check=True, capture_output=True, timeout=600)
    log = next(models.rglob("train.log")).read_text().splitlines()
    stamps = [datetime.strptime(line[:23], "%Y-%m-%d %H:%M:%S,%f") for line in log if re.search(r" epoch \d+/5 ", line)]
    assert len(stamps) == 5, log
    return (stamps[-1] - stamps[0]).total_seconds() / 4


def test_a_cell_past_its_time_limit_is_requeued_and_resumes_from_its_last_snapshot(cluster, tmp_path):
    # a cell of 80 s of training on one free core under a one-minute limit (SLURM signals it 24 to 54 s into an
    # attempt): its time goes to training (as many epochs of small batches as 80 s take on this machine) rather than
    # to the analysis of its snapshots (about a dozen), so that the limit interrupts the training however fast the
    # machine is, and each attempt gets past a snapshot (one every few seconds)
    per_epoch = epoch_seconds(tmp_path / "calibration")
    epochs = min(max(20, math.ceil(80 / per_epoch)), 1000)
    every = max(1, min(epochs // 12, math.floor(8 / per_epoch)))
    out = tmp_path / "s"
    done = hparr("study", "--seeds", "0", "--epochs", str(epochs), "--no-track", "--snapshot-every", str(every),
                 "--snapshot-all-until", "0", "--lr", "0.02", "--tb-logdir", "", "--batch-size", "32",
                 "--launcher", "slurm", "--cpus-per-task", "1", "--time", "1", "--out", str(out))
    assert "study: 1 cells: 1 finished now, 0 already finished, 0 failed" in done.stdout
    log = (out / "cells/lenet/digits/clean/seed_0/cell.log").read_text()
    stops = [float(s) for s in re.findall(r"stopped by SLURM \(time limit or preemption\) after (\d+) s", log)]
    resumed = [int(n) for n in re.findall(r"resumed from \S+lenet_(\d+)\.\w+: \d+ epochs completed", log)]
    assert stops and len(resumed) == len(stops) and all(n >= 1 for n in resumed)  # never from scratch again
    assert resumed == sorted(resumed) and log.count("starting from scratch") <= 1
    # the duration reported is the time the cell ran: its attempts, not the time it waited to be requeued
    last = float(re.search(r"cell finished in ([\d.]+) s", log).group(1))
    reported = float(re.search(r"\[1/1\] finished lenet digits clean seed 0 \((\d+) s\)", done.stderr).group(1))
    assert abs(reported - (sum(stops) + last)) <= len(stops) + 1


def test_what_sbatch_refuses_is_one_line_quoting_sbatch(cluster, tmp_path):
    out = tmp_path / "s"
    for flags, message in ((["--partition", "nope"], "invalid partition specified: nope"),
                           (["--constraint", "no-such-feature"], "Invalid feature specification")):
        done = hparr("study", *TINY, "--launcher", "slurm", "--cpus-per-task", "1", *flags, "--out", str(out),
                     check=False)
        assert done.returncode == 2 and done.stdout == "", done.stderr
        assert done.stderr.startswith("hparr study: error: sbatch refuses the cells' job: ") and message in done.stderr
        assert len(done.stderr.splitlines()) == 1 and not out.exists()
