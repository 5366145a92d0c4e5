"""`hparr study`: the grid, the statistics against numbers computed by hand on a small synthetic study written as
result files, the report, and the launchers end to end (a local pool killed with kill -9 then resumed, and a
SLURM job array run by submitit's local executor)."""
from __future__ import annotations

import hashlib
import json
import math
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from test_report import assert_page_is_its_markdown

from hparr import files, results, study
from hparr.cli import main
from hparr.errors import UsageError
from hparr.layout import MANIFEST_NAME, RUN_REPORT_FILES, STUDY_NAME, TRACKING_NAME, Corruption
from hparr.report import study as study_report
from hparr.trackfile import COLUMNS, csv_text

T975_1 = 12.706204736174705  # Student t, 97.5% quantile, 1 degree of freedom (from the table)
Z975 = 1.959963984540054

LAYERS = ["a", "b", "c"]
# (noise, seed) -> trained masses (epoch 2) of layers a, b, c; every layer has mass 0.5 at epoch 0
MASSES = {(0.0, 0): [0.75, 1.0, 0.5], (0.0, 1): [0.5, 0.75, 0.875],
          (0.5, 0): [0.5, 0.5, 0.75], (0.5, 1): [0.75, 0.75, 0.75]}
# (noise, seed) -> relative top-1 drop of a, b, c re-initialized to epoch 0
DROPS = {(0.0, 0): [0.2, 0.6, 0.0], (0.0, 1): [0.1, 0.0, 0.3],
         (0.5, 0): [0.1, 0.2, 0.3], (0.5, 1): [0.0, 0.0, 0.0]}
TOP1 = {(0.0, 0): (90.0, 95.0), (0.0, 1): (80.0, 85.0), (0.5, 0): (40.0, 60.0), (0.5, 1): (30.0, 70.0)}


def projection_doc(seed: int, epoch: int, masses: list[float], folder: Path) -> dict:
    doc = {"format": results.PROJECTIONS_FORMAT, "arch": "lenet", "dataset": "digits", "seed": str(seed),
           "epoch": str(epoch), "stem": f"lenet_{epoch}", "source": str(folder / f"lenet_{epoch}.pt"),
           "normalize": True, "level": 0.05, "correction": "holm", "with_linear": False, "include_1x1": False,
           "init_from": str(folder / "lenet_init_0.pt"), "num_classes": 10}
    doc["0"] = {str(i): {"name": name, "kind": "conv", "N": 4, "d": 9, "mass": m, "mean": 0.5 - m, "std": 0.1,
                         "projections": [0.1, -0.1, 0.2, -0.2], "p_value": 0.01 if abs(m - 0.5) >= 0.25 else 0.9,
                         "p_adjusted": 0.03 if abs(m - 0.5) >= 0.25 else 1.0, "biased": abs(m - 0.5) >= 0.25,
                         "l2_dist": 0.1 * epoch} for i, (name, m) in enumerate(zip(LAYERS, masses))}
    doc["net"] = {"projections": [], "mean": 0.0, "mass": float(np.mean(masses)), "N": 12}
    return doc


def write_cell(root: Path, noise: float, seed: int) -> Path:
    cell = root / study.Cell("lenet", "digits", seed, noise).relpath
    proj = cell / "results" / "digits" / "lenet" / str(seed)
    models = cell / "models" / "digits" / "lenet" / str(seed)
    files.write_json(proj / "lenet_init_0.json", projection_doc(seed, 0, [0.5] * 3, models))
    files.write_json(proj / "lenet_2.json", projection_doc(seed, 2, MASSES[noise, seed], models))
    drops = DROPS[noise, seed]
    reinit = cell / "results" / "reinit" / "digits" / "lenet" / str(seed) / "reinit_lenet_2.json"
    files.write_json(reinit, {
        "format": results.REINIT_FORMAT, "arch": "lenet", "dataset": "digits", "seed": str(seed), "epoch": "2",
        "top1_test": TOP1[noise, seed][0], "layers": LAYERS, "load_from": str(models / "lenet_2.pt"),
        "init_from_epoch": {"0": [TOP1[noise, seed][0] * (1 - d) for d in drops], "rand": [10.0] * 3},
        "relative_drop": {"0": drops, "rand": [1 - 10.0 / TOP1[noise, seed][0]] * 3}})
    files.write_json(cell / MANIFEST_NAME, {
        **results.manifest(cell, proj, reinit, [0, 2], models=str(models)),
        "final": {"test": {"top1": TOP1[noise, seed][0]}, "train": {"top1": TOP1[noise, seed][1]}},
        "settings": {"arch": "lenet", "seed": seed, "data": {"dataset": "digits", "noise": noise,
                                                             "subsample_classes": 0}}})
    for name in ("report.json", "summary.md", "index.html"):
        files.write_text(cell / "report" / name, "{}")
    if noise == 0.0:  # the clean cells tracked their training: epochs 0, 1 and 2, the masses moving linearly
        files.write_text(models / TRACKING_NAME, tracking_text(MASSES[noise, seed]))
    return cell


def tracking_text(trained: list[float]) -> str:
    rows = []
    for epoch in (0, 1, 2):
        for i, (name, m) in enumerate(zip(LAYERS, trained)):
            mass = 0.5 + (m - 0.5) * epoch / 2
            biased = abs(mass - 0.5) >= 0.25
            values = {"step": 5 * epoch, "epoch": float(epoch), "name": name, "kind": "conv", "stage": 0, "block": i,
                      "N": 4, "d": 9, "mean": 0.5 - mass, "mass": mass, "p_adjusted": 0.03 if biased else 1.0,
                      "biased": biased, "l2_dist": 0.1 * epoch, "normalize": True, "level": 0.05}
            rows.append([values.get(c) for c in COLUMNS])
    return csv_text([COLUMNS, *rows])


@pytest.fixture
def synthetic(tmp_path):
    root = tmp_path / "study"
    cells = [write_cell(root, noise, seed) for noise in (0.0, 0.5) for seed in (0, 1)]
    files.write_json(root / STUDY_NAME, {
        "format": results.STUDY_FORMAT, "grid": {"seeds": [0, 1, 2], "noise": [0.0, 0.5]},
        "cells": [str(c.relative_to(root)) for c in cells] + ["cells/lenet/digits/clean/seed_2"]})
    return root


# --- the grid ------------------------------------------------------------------------------------

def test_grid_axes_take_lists_and_ranges():
    assert study.parse_ints("--seeds", "0-2,5,1") == [0, 1, 2, 5]
    assert study.parse_floats("--noise", "0, 0.5,1,-1,-0") == [0.0, 0.5, 1.0, -1.0]
    assert study.parse_names("--arch", "lenet,vgg11,lenet") == ["lenet", "vgg11"]
    assert [Corruption(n).condition for n in (0.0, 0.5, 1.0, -1.0, 0.125)] == [
        "clean", "noise_50", "noise_100", "pixel_shuffle", "noise_12.5"]
    assert str(study.Cell("vgg11", "cifar10", 3, -1.0, 5).relpath) == "cells/vgg11/cifar10_5/pixel_shuffle/seed_3"
    with pytest.raises(UsageError, match="backwards range '3-1'"):
        study.parse_ints("--seeds", "0,3-1")
    with pytest.raises(UsageError, match="item 2 is empty"):
        study.parse_floats("--noise", "0,,x")


def test_pool_splits_the_cores():
    assert study.pool_size(None, None, todo=8, cores=2) == (2, 1)
    assert study.pool_size(None, None, todo=1, cores=4) == (1, 4)
    assert study.pool_size(1, None, todo=8, cores=2) == (1, 2)
    assert study.pool_size(None, 2, todo=8, cores=4) == (2, 2)
    with pytest.raises(UsageError, match="exceeds the 2 cores"):
        study.pool_size(2, 2, todo=8, cores=2)


def test_the_print_launcher_prints_a_reproduce_command_per_cell(tmp_path, capsys):
    out = tmp_path / "s"
    assert main(["study", "--seeds", "0-1", "--noise", "0,-1", "--epochs", "2", "--lr", "0.02", "--tb-logdir", "",
                 "--launcher", "print", "--out", str(out)]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0] == (f"hparr reproduce --arch lenet --dataset digits --seed 0 --noise 0 --subsample-classes 0 "
                        f"--epochs 2 --lr 0.02 --tb-logdir '' --out {out}/cells/lenet/digits/clean/seed_0")
    assert len(lines) == 4 and lines[3].endswith("--out " + str(out / "cells/lenet/digits/pixel_shuffle/seed_1"))
    recorded = json.loads((out / "study.json").read_text())
    assert recorded["format"] == "hparr-study-1" and recorded["flags"] == ["--epochs", "2", "--lr", "0.02",
                                                                           "--tb-logdir", ""]
    assert recorded["shared"]["epochs"] == 2 and recorded["grid"]["noise"] == [0.0, -1.0]
    # the same study again is fine; other shared flags are refused before anything is written
    assert main(["study", "--seeds", "2", "--epochs", "2", "--lr", "0.02", "--tb-logdir", "", "--launcher", "print",
                 "--out", str(out)]) == 0
    capsys.readouterr()
    assert main(["study", "--epochs", "3", "--lr", "0.02", "--tb-logdir", "", "--dry-run", "--out", str(out)]) == 2
    assert "other shared settings (epochs differ)" in capsys.readouterr().err
    assert len(json.loads((out / "study.json").read_text())["cells"]) == 5


def test_a_folder_holding_only_a_study_report_takes_a_study(tmp_path, capsys):
    # a fresh clone keeps the default study's figures in runs/study/report/ without the study itself
    out = tmp_path / "study"
    files.write_text(out / "report" / "study_mass_by_epoch.png", "png")
    args = ["study", "--seeds", "0", "--epochs", "1", "--tb-logdir", "", "--dry-run", "--out", str(out)]
    assert main(args) == 0 and "seed_0" in capsys.readouterr().out
    files.write_text(out / "report" / "notes.txt", "mine")  # anything else in it is kept from harm
    assert main(args) == 2 and "holds files that are not a study" in capsys.readouterr().err


def test_slurm_array_resources(tmp_path, monkeypatch):
    submitit = pytest.importorskip("submitit")
    from hparr.training import TrainSettings

    bin_dir = tmp_path / "bin"  # submitit's SLURM executor wants srun on PATH
    files.write_text(bin_dir / "srun", "#!/bin/sh\nexit 0\n")
    (bin_dir / "srun").chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    settings = study.StudySettings(base=TrainSettings("lenet"), archs=["lenet"], datasets=["digits"], seeds=[0],
                                   out=str(tmp_path / "s"), slurm=study.SlurmOptions(
                                       partition="gpu", gpus_per_task=1, cpus_per_task=8, time_min=30,
                                       array_parallelism=4))
    executor = study.make_executor(settings, "slurm")
    assert isinstance(executor, submitit.SlurmExecutor)
    assert executor.parameters == {
        "job_name": "hparr-study", "time": 30, "nodes": 1, "ntasks_per_node": 1, "cpus_per_task": 8,
        "array_parallelism": 4, "partition": "gpu", "gpus_per_task": 1, "signal_delay_s": 90}
    assert executor.max_num_timeout == study.MAX_REQUEUES


def test_cluster_options_reach_sbatch_and_dry_run(tmp_path, monkeypatch, capsys):
    pytest.importorskip("submitit")
    from hparr.training import TrainSettings

    bin_dir = tmp_path / "bin"  # SLURM's commands, doing nothing: --dry-run submits nothing
    for tool in ("srun", "sbatch"):
        files.write_text(bin_dir / tool, "#!/bin/sh\nexit 0\n")
        (bin_dir / tool).chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    options = study.SlurmOptions(cpus_per_task=2, time_min=3, mem="4G", account="proj", qos="low",
                                 constraint="a100", extra=study.parse_slurm_extra(["mail-type=END", "--comment=x y"]),
                                 setup=["module load cuda"])
    settings = study.StudySettings(base=TrainSettings("lenet"), archs=["lenet"], datasets=["digits"], seeds=[0],
                                   out=str(tmp_path / "s"), slurm=options)
    parameters = study.make_executor(settings, "slurm").parameters
    assert {k: parameters[k] for k in ("mem", "account", "qos", "constraint", "setup", "additional_parameters",
                                       "signal_delay_s")} == {
        "mem": "4G", "account": "proj", "qos": "low", "constraint": "a100", "setup": ["module load cuda"],
        "additional_parameters": {"mail-type": "END", "comment": "x y"}, "signal_delay_s": 18}
    out = tmp_path / "s"
    argv = ["study", "--epochs", "1", "--tb-logdir", "", "--launcher", "slurm", "--out", str(out)]
    assert main([*argv, "--mem", "4G", "--account", "proj", "--slurm-extra", "mail-type=END", "--setup",
                 "module load cuda", "--dry-run"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[-1] == ("sbatch: --time=240 --cpus-per-task=4 --mem=4G --account=proj --mail-type=END "
                         "--array=...%64; setup: module load cuda") and not out.exists()
    for flags, message in ((["--mem", "0"], "--mem must be a memory size above 0 such as 4G or 500M, got '0'"),
                           (["--mem", "lots"], "--mem must be a memory size above 0"),
                           (["--slurm-extra", "mail-type"], "--slurm-extra 'mail-type': expected KEY=VALUE"),
                           (["--time", "0"], "--time must be >= 1, got 0")):
        assert main([*argv, *flags]) == 2
        err = capsys.readouterr().err
        assert message in err and len(err.splitlines()) == 1 and not out.exists()
    assert main([*argv[:-4], "--no-wait", "--out", str(out)]) == 2
    assert "--no-wait applies to --launcher slurm alone" in capsys.readouterr().err and not out.exists()


def test_local_workers_below_one_are_refused_before_the_study_folder_is_written(tmp_path, capsys):
    out = tmp_path / "s"
    for flags, message in ((["--jobs", "0"], "--jobs must be >= 1, got 0"),
                           (["--threads", "-2"], "--threads must be >= 1, got -2")):
        assert main(["study", "--epochs", "1", "--tb-logdir", "", "--out", str(out), *flags]) == 2
        err = capsys.readouterr().err
        assert message in err and len(err.splitlines()) == 1 and not out.exists()


def test_status_of_a_study_from_its_cell_folders(synthetic, tmp_path, capsys):
    assert main(["study", str(synthetic), "--status"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0] == "finished    cells/lenet/digits/clean/seed_0"
    assert lines[4] == "not started cells/lenet/digits/clean/seed_2"
    assert lines[5] == "5 cells: 4 finished, 1 not started"
    log = synthetic / "cells/lenet/digits/clean/seed_2/cell.log"
    cell_log(log.parent, "INFO cell lenet digits clean seed 2", "ERROR cell failed: boom", "Traceback (most recent ...")
    assert main(["study", "--status", "--out", str(synthetic)]) == 0
    assert f"failed      cells/lenet/digits/clean/seed_2: boom; log: {log}" in capsys.readouterr().out
    files.write_text(tmp_path / "other" / "a.txt", "x")
    assert main(["study", str(tmp_path / "other"), "--status"]) == 2
    err = capsys.readouterr().err
    assert err == f"hparr study: error: {tmp_path / 'other'} is not a study folder (no study.json)\n"
    assert main(["study", str(tmp_path / "other"), "--dry-run"]) == 2
    assert "a study folder is given with --out" in capsys.readouterr().err


def cell_log(folder: Path, *lines: str) -> None:
    """A cell.log as a cell writes it (date, time, logger, level, message)."""
    files.write_text(folder / "cell.log", "".join(f"2026-12-03 05:00:00,000 hparr.study {line}\n" for line in lines))


def status_lines(study_dir: Path, capsys) -> dict[str, str]:
    """{cell: its line} of `hparr study STUDY --status`, and "" -> the counts."""
    assert main(["study", str(study_dir), "--status"]) == 0
    lines = capsys.readouterr().out.splitlines()
    return {**{line[12:].split(" ")[0].rstrip(":;"): line for line in lines[:-1]}, "": lines[-1]}


def test_status_tells_running_pending_failed_and_finished_cells_apart(synthetic, capsys):
    from types import SimpleNamespace

    from hparr.attempt import Attempt, clock
    from hparr.errors import HparrError
    from hparr.layout import ATTEMPT_NAME
    from hparr.study._runner import record_run
    from hparr.study._status import STUDY_LOCK

    cells = {name: study.Cell("lenet", "digits", seed, noise) for name, seed, noise in (
        ("running", 7, 0.0), ("failed", 2, 0.5), ("died", 3, 0.5), ("queued", 3, 0.0), ("requeued", 4, 0.0),
        ("ended", 5, 0.0), ("not started", 6, 0.0))}
    name = {k: str(c.relpath) for k, c in cells.items()}
    folder = {k: synthetic / c.relpath for k, c in cells.items()}
    doc = json.loads((synthetic / STUDY_NAME).read_text())
    files.write_json(synthetic / STUDY_NAME, {**doc, "cells": [*doc["cells"], *name.values()]})
    # failed: its attempt ended with an error, which the record keeps
    cell_log(folder["failed"], "INFO cell lenet digits noise_50 seed 2")
    with pytest.raises(HparrError), Attempt(folder["failed"]) as record:
        record.begin()
        raise HparrError("fashionmnist not found: expected empty/FashionMNIST/raw/")
    # died: a process of the test's own begins an attempt and dies without ending it (as kill -9 would)
    cell_log(folder["died"], "INFO cell lenet digits noise_50 seed 3")
    died = subprocess.run([sys.executable, "-c", "import os, sys; from hparr.attempt import Attempt; "
                           "Attempt(sys.argv[1]).__enter__(); print(os.getpid()); os._exit(9)", str(folder["died"])],
                          capture_output=True, text=True, timeout=120)
    assert died.returncode == 9, died.stderr
    # requeued: an attempt that died before the running study began, which queues the cell again
    files.write_json(folder["requeued"] / ATTEMPT_NAME, {"pid": 1, "host": "elsewhere", "started": time.time() - 60})
    # ended: an attempt that ended without an error, but whose results are not all there
    cell_log(folder["ended"], "INFO cell lenet digits clean seed 5")
    with Attempt(folder["ended"]):
        pass
    with Attempt(folder["running"]):  # the test holds the record, as the process running the cell does
        lock = files.flock(synthetic / STUDY_LOCK)  # a study of the test's own runs two of the cells
        try:
            record_run(lock, SimpleNamespace(launcher="local"), [cells["queued"], cells["requeued"]])
            lines = status_lines(synthetic, capsys)
        finally:
            lock.close()
        record = json.loads((folder["running"] / ATTEMPT_NAME).read_text())
    me = f"pid {os.getpid()} on {socket.gethostname()}"
    assert lines[name["running"]] == f"running     {name['running']} ({me} since {clock(record['started'])})"
    assert lines[name["queued"]] == f"pending     {name['queued']} (queued by hparr study, {me})"
    assert lines[name["requeued"]] == f"pending     {name['requeued']} (queued by hparr study, {me})"
    assert lines[name["failed"]] == (f"failed      {name['failed']}: fashionmnist not found: expected "
                                     f"empty/FashionMNIST/raw/; log: {folder['failed'] / 'cell.log'}")
    assert lines[name["died"]].startswith(
        f"failed      {name['died']}: its process (pid {died.stdout.strip()} on {socket.gethostname()}, started ")
    assert "ended without finishing or recording an error" in lines[name["died"]]
    assert lines[name["ended"]].startswith(f"failed      {name['ended']}: it ended at ")
    assert lines[name["not started"]] == f"not started {name['not started']}"
    assert lines[""] == "12 cells: 4 finished, 1 running, 2 pending, 3 failed, 2 not started"
    # the study and the cell's run are over: nothing is queued, and the cell that ran left a record of its end
    after = status_lines(synthetic, capsys)
    assert after[name["queued"]] == f"not started {name['queued']}"
    assert after[name["requeued"]].startswith(f"failed      {name['requeued']}: its process (pid 1 on elsewhere")
    assert after[name["running"]].startswith(f"failed      {name['running']}: it ended at ")


def test_slurm_states_and_the_study_running_now_decide_what_a_rerun_may_submit(synthetic, tmp_path, monkeypatch,
                                                                                 capsys):
    from types import SimpleNamespace

    from hparr.errors import HparrError
    from hparr.study._runner import check_not_queued, record_run
    from hparr.study._status import STUDY_LOCK

    bin_dir = tmp_path / "bin"  # squeue as SLURM answers it for the array's one task
    files.write_text(bin_dir / "squeue", '#!/bin/sh\necho "77_0|$FAKE_SLURM_STATE"\n')
    (bin_dir / "squeue").chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    cell = study.Cell("lenet", "digits", 2)
    doc = json.loads((synthetic / STUDY_NAME).read_text())
    files.write_json(synthetic / STUDY_NAME, {**doc, "slurm_arrays": [
        {"job_id": "77", "tasks": {"77_0": str(cell.relpath)}}]})
    lock = files.flock(synthetic / STUDY_LOCK)  # the rerun's own study, which lists the cell to submit
    try:
        record_run(lock, SimpleNamespace(launcher="slurm"), [cell])
        monkeypatch.setenv("FAKE_SLURM_STATE", "PENDING")
        with pytest.raises(HparrError, match="1 cell\\(s\\) of .* are still pending in SLURM job 77"):
            check_not_queued(synthetic, [cell])
        assert status_lines(synthetic, capsys)[str(cell.relpath)] == f"pending     {cell.relpath} (task 77_0, pending)"
        monkeypatch.setenv("FAKE_SLURM_STATE", "CANCELLED")  # the array ended: the rerun submits the cell again
        check_not_queued(synthetic, [cell])
    finally:
        lock.close()
    assert status_lines(synthetic, capsys)[str(cell.relpath)] == f"not started {cell.relpath} (task 77_0, cancelled)"


def test_a_failed_cell_records_why_and_a_reproduce_that_fails_first_leaves_nothing(tmp_path):
    from hparr.data import DataOptions
    from hparr.errors import HparrError
    from hparr.pipeline import reproduce
    from hparr.training import TrainSettings

    settings = TrainSettings("lenet", DataOptions(dataset="fashionmnist", data_path=str(tmp_path / "empty")),
                             epochs=1, tb_logdir=None, progress=False)
    with pytest.raises(HparrError, match="fashionmnist not found"):
        reproduce(settings, tmp_path / "r")
    assert not (tmp_path / "r").exists()
    cell = study.Cell("lenet", "fashionmnist", 0)
    out = tmp_path / "s" / cell.relpath
    outcome = study.run_cell(study.CellJob(cell, settings, str(out), str(out / "cell.log")))
    assert outcome.status == "failed" and outcome.error.startswith("fashionmnist not found")
    status = study.cell_status(tmp_path / "s", str(cell.relpath))
    assert (status.state, status.detail, status.log) == ("failed", outcome.error, str(out / "cell.log"))


def test_a_second_reproduce_into_a_busy_folder_is_refused_naming_the_first(tmp_path, capsys):
    out = tmp_path / "r"
    # another process runs there: it holds the attempt record until its stdin closes
    first = subprocess.Popen([sys.executable, "-c", "import sys; from hparr.attempt import Attempt; "
                              "held = Attempt(sys.argv[1]).__enter__(); print('ready', flush=True); sys.stdin.read()",
                              str(out)], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert first.stdout.readline() == "ready\n"
        record = (out / ".attempt.json").read_bytes()
        assert main(["reproduce", "--epochs", "1", "--tb-logdir", "", "--out", str(out)]) == 2
    finally:
        first.communicate("", timeout=60)
    err = capsys.readouterr().err
    assert err.startswith(f"hparr reproduce: error: {out} is in use by another run (pid {first.pid} on "
                          f"{socket.gethostname()}: ")
    assert err.endswith("; wait for it to end, or choose another --out\n")
    assert len(err.splitlines()) == 1 and sorted(p.name for p in out.iterdir()) == [".attempt.json"]
    assert (out / ".attempt.json").read_bytes() == record  # the refused call wrote nothing


def test_a_reproduce_refused_by_its_checks_leaves_the_record_of_the_last_run_as_it_was(tmp_path, capsys):
    from hparr.attempt import Attempt, read_attempt

    out = tmp_path / "r"
    files.write_text(out / "notes.txt", "a folder with a run in it")
    with pytest.raises(UsageError), Attempt(out) as record:
        record.begin()
        raise UsageError("the run itself fails")
    before = (out / ".attempt.json").read_bytes()
    missing = ["--dataset", "fashionmnist", "--data-path", str(tmp_path / "empty")]
    assert main(["reproduce", *missing, "--epochs", "1", "--tb-logdir", "", "--out", str(out)]) == 1
    assert "fashionmnist not found" in capsys.readouterr().err
    assert (out / ".attempt.json").read_bytes() == before
    assert read_attempt(out).error == "the run itself fails"
    assert sorted(p.name for p in out.iterdir()) == [".attempt.json", "notes.txt"]


# --- the data files of a study -------------------------------------------------------------------

IDX_FILES = ("train-images-idx3-ubyte", "train-labels-idx1-ubyte", "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")


def data_folder(root: Path, sizes=(300, 40, 200, 30)) -> Path:
    """Four files named as Fashion-MNIST's, of distinct bytes (the study reads them whole but decodes none)."""
    for i, (name, size) in enumerate(zip(IDX_FILES, sizes)):
        files.write_bytes(root / name, bytes((i * 7 + j) % 251 for j in range(size)))
    return root


@pytest.mark.parametrize("how", [["--dry-run"], [], ["--launcher", "print"]], ids=["dry-run", "local", "print"])
def test_missing_data_files_are_refused_before_the_study_folder_is_made(tmp_path, capsys, how):
    out = tmp_path / "s"
    argv = ["study", "--dataset", "digits,fashionmnist", "--data-path", str(tmp_path / "empty"), "--epochs", "1",
            "--out", str(out), *how]
    assert main(argv) == 1
    err = capsys.readouterr().err
    expected = tmp_path / "empty" / "FashionMNIST" / "raw"
    assert err.startswith(f"hparr study: error: fashionmnist not found: expected {expected}/")
    assert len(err.splitlines()) == 1 and not out.exists()


def test_a_rerun_may_read_the_same_data_files_from_another_path_but_not_other_files(tmp_path, capsys):
    import shutil

    import xxhash

    first = data_folder(tmp_path / "a" / "FashionMNIST" / "raw")
    moved = tmp_path / "b"  # the same files, straight in --data-path
    shutil.copytree(first, moved)
    out = tmp_path / "s"
    argv = ["study", "--dataset", "fashionmnist", "--epochs", "1", "--tb-logdir", "", "--out", str(out)]
    assert main([*argv, "--data-path", str(tmp_path / "a"), "--launcher", "print"]) == 0
    recorded = json.loads((out / STUDY_NAME).read_text())["data_files"]
    assert recorded == {"fashionmnist": {
        name: {"size": (first / name).stat().st_size,
               "hash": "xxh3-128:" + xxhash.xxh3_128((first / name).read_bytes()).hexdigest()} for name in IDX_FILES}}
    assert main([*argv, "--data-path", str(moved), "--launcher", "print"]) == 0
    assert json.loads((out / STUDY_NAME).read_text())["shared"]["data"]["data_path"] == str(moved)
    capsys.readouterr()
    before = (out / STUDY_NAME).read_bytes()
    changed = data_folder(tmp_path / "c")
    (changed / IDX_FILES[3]).write_bytes(bytes(30))  # the same size, another content
    assert main([*argv, "--data-path", str(changed), "--dry-run"]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"hparr study: error: --out {out} holds a study of other data files: fashionmnist "
                          f"{IDX_FILES[3]}: same size, other content (xxh3-128 ")
    assert err.endswith("; pass the --data-path of its files, or use another --out\n") and len(err.splitlines()) == 1
    shorter = data_folder(tmp_path / "d", sizes=(300, 40, 199, 30))
    assert main([*argv, "--data-path", str(shorter), "--launcher", "print"]) == 2
    assert f"fashionmnist {IDX_FILES[2]}: 200 bytes there, 199 bytes here" in capsys.readouterr().err
    assert (out / STUDY_NAME).read_bytes() == before  # a refused rerun leaves the study as it was


def test_a_study_recorded_without_its_data_files_compares_those_of_its_data_path(tmp_path, capsys, caplog):
    import shutil

    out = tmp_path / "s"
    argv = ["study", "--dataset", "fashionmnist", "--epochs", "1", "--tb-logdir", "", "--launcher", "print",
            "--out", str(out)]
    first = data_folder(tmp_path / "a")
    assert main([*argv, "--data-path", str(first)]) == 0
    doc = json.loads((out / STUDY_NAME).read_text())
    del doc["data_files"]  # as earlier versions wrote it: the folder alone
    files.write_json(out / STUDY_NAME, doc)
    # other files: refused, compared with those in the recorded folder
    assert main([*argv, "--data-path", str(data_folder(tmp_path / "b", sizes=(300, 40, 200, 31)))]) == 2
    assert f"other data files: fashionmnist {IDX_FILES[3]}: 30 bytes there, 31 bytes here" in capsys.readouterr().err
    # the same files elsewhere: taken
    shutil.copytree(first, tmp_path / "c")
    assert main([*argv, "--data-path", str(tmp_path / "c")]) == 0
    assert "data_files" in json.loads((out / STUDY_NAME).read_text())
    # a study run on a folder that held no data (its cells all failed, as earlier versions let them): mended
    files.write_json(out / STUDY_NAME, {**doc, "shared": {**doc["shared"], "data": {
        **doc["shared"]["data"], "data_path": str(tmp_path / "empty")}}})
    assert main([*argv, "--data-path", str(tmp_path / "c")]) == 0
    assert f"holds no readable fashionmnist files now: those below --data-path {tmp_path / 'c'}" in caplog.text


def test_an_unreadable_data_file_is_one_line_before_anything_is_written(tmp_path, capsys, monkeypatch):
    import builtins
    import errno

    from hparr.study import _datafiles as datafiles

    folder = data_folder(tmp_path / "a")
    locked = folder / IDX_FILES[1]

    def no_permission(path, *args, **kwargs):  # as for a file of another user's without read permission
        if Path(path) == locked:
            raise PermissionError(errno.EACCES, os.strerror(errno.EACCES), str(path))
        return builtins.open(path, *args, **kwargs)

    monkeypatch.setattr(datafiles, "open", no_permission, raising=False)
    out = tmp_path / "s"
    assert main(["study", "--dataset", "fashionmnist", "--data-path", str(folder), "--epochs", "1", "--dry-run",
                 "--out", str(out)]) == 1
    assert capsys.readouterr().err == f"hparr study: error: cannot read the data file {locked}: Permission denied\n"
    assert not out.exists()


def test_study_help_names_every_grid_axis(capsys, monkeypatch):
    from hparr.cli._study import GRID

    monkeypatch.setenv("COLUMNS", "2000")  # one line per paragraph: no flag cut at its hyphen
    with pytest.raises(SystemExit):
        main(["study", "--help"])
    text = capsys.readouterr().out
    axes = text.split("every cell of a grid (")[1].split(")")[0].split(" x ")
    assert sorted(axes) == sorted(["--seeds", *(f"--{dest.replace('_', '-')}" for dest in GRID)])
    assert "[_n<N>]" in text


def test_the_study_ends_with_a_headline_of_its_cells_and_its_verdict(synthetic, monkeypatch):
    import hparr.report._study_figures as figures
    from hparr.study._runner import StudyResult
    from hparr.study.headline import headline

    monkeypatch.setattr(figures, "draw_all", lambda *args: ([], []))  # figures are tested above
    written = study_report.build_study_report(synthetic)
    cells = [study.Cell("lenet", "digits", seed, noise) for noise in (0.0, 0.5) for seed in (0, 1, 2)]
    outcomes = [study.CellOutcome(cells[0], "skipped", ""), *(study.CellOutcome(c, "finished", "") for c in cells[1:4]),
                study.CellOutcome(cells[4], "failed", "", "boom")]
    # the statistics the report returns are those it wrote: the command need not read them back
    assert written.statistics == results.read_json(written.files["statistics.json"])
    lines = headline(StudyResult(synthetic, outcomes), written.files["index.html"], written.statistics)
    assert lines[0] == (f"study: 5 cells: 3 finished now, 1 already finished, 1 failed; report: "
                        f"{synthetic / 'report' / 'index.html'}")
    # claim 1 on the clean cells, by hand (as in test_study_table_and_claims_from_result_files): the per-seed
    # changes 0.25 and 0.625 / 3, their t interval over 2 seeds includes 0
    diffs = [0.25, 0.625 / 3]
    half = T975_1 * (abs(diffs[0] - diffs[1]) / math.sqrt(2)) / math.sqrt(2)
    mean = float(np.mean(diffs))
    setting = written.statistics["settings"][0]["setting"]
    assert lines[1] == (f"verdict ({setting}, clean, 2 seeds): bias emerges with training: not supported by this data: "
                        f"the 95% interval includes 0, mean |mass - 0.5| {mean:+.3f} [{mean - half:+.3f}, "
                        f"{mean + half:+.3f}] from initialization; the biased layers are the critical ones: not "
                        f"supported by this data, pooled rho 0.75, permutation p {10 / 36:.2g}")
    assert len(lines) == 2
    assert headline(StudyResult(synthetic, outcomes[-1:]), None, None) == [
        f"study: 1 cells: 0 finished now, 0 already finished, 1 failed; no report: no cell of {synthetic} is finished"]


def test_a_cell_whose_folder_cannot_be_made_fails_with_the_reason(tmp_path):
    from hparr.training import TrainSettings

    files.write_text(tmp_path / "a_file", "not a directory")
    out = tmp_path / "a_file" / "cell"
    job = study.CellJob(cell=study.Cell("lenet", "digits", 0), settings=TrainSettings("lenet"), out=str(out),
                        log=str(out / "cell.log"))
    outcome = study.run_cell(job)
    assert outcome.status == "failed" and outcome.error.startswith(f"cannot create output directory {out}")


# --- statistics against numbers computed by hand --------------------------------------------------

def test_t_interval_and_spearman_across_cells_by_hand():
    t = study_report.t_interval([1.0, 2.0, 4.0])
    sd = math.sqrt(((1 - 7 / 3) ** 2 + (2 - 7 / 3) ** 2 + (4 - 7 / 3) ** 2) / 2)
    half = 4.302652729749464 * sd / math.sqrt(3)  # t(0.975, 2)
    assert t["mean"] == pytest.approx(7 / 3) and t["low"] == pytest.approx(7 / 3 - half)
    assert t["high"] == pytest.approx(7 / 3 + half)
    assert study_report.t_interval([0.2, 0.9], bounds=(0, 1))["high"] == 1.0
    assert math.isnan(study_report.t_interval([3.0])["low"])

    # ranks x: 1, 2, 3, 4, 5; y: 2, 1, 4, 3, 5 -> rho = 1 - 6 * 4 / (5 * 24) = 0.8
    r = study_report.spearman_across([1, 2, 3, 4, 5], [20, 10, 40, 30, 50])
    assert r["rho"] == pytest.approx(0.8)
    se = math.sqrt(1.06 / 2)
    assert r["low"] == pytest.approx(math.tanh(math.atanh(0.8) - Z975 * se))
    assert r["high"] == pytest.approx(math.tanh(math.atanh(0.8) + Z975 * se))


def test_pooled_spearman_bootstrap_over_seeds_and_exact_permutation_p():
    # seed 0: the drops rank exactly as the bias (rho 1); seed 1: one swap (rho 1 - 6 * 2 / 24 = 0.5)
    k = study_report.pooled_spearman({0: ([0.25, 0.5, 0.0], [0.2, 0.6, 0.0]), 1: ([0.0, 0.25, 0.375], [0.1, 0.0, 0.3])})
    assert k["per_seed"] == {0: pytest.approx(1.0), 1: pytest.approx(0.5)}
    assert k["rho"] == pytest.approx(0.75)
    # resampling 2 seeds: the mean is 1 (1/4), 0.75 (1/2) or 0.5 (1/4): the 2.5% and 97.5% points are 0.5 and 1
    assert (k["low"], k["high"]) == (pytest.approx(0.5), pytest.approx(1.0))
    # shuffling 3 layers gives rho 1, 0.5, 0.5, -0.5, -0.5, -1: of the 36 pairs, 5 reach a mean >= 0.75, 36 <= 0.75
    assert k["exact"] and k["p_value"] == pytest.approx(2 * 5 / 36)
    assert k["n_seeds"] == 2 and k["n_layers"] == 3


def test_pooled_spearman_leaves_out_constant_seeds_and_missing_layers():
    k = study_report.pooled_spearman({0: ([0.0, 0.0, 0.25, 0.4], [0.1, 0.2, 0.3, np.nan]),
                                      1: ([0.25] * 4, [0.0, 0.0, 0.0, 0.0])})
    # layer 4 has no drop in seed 0: 3 layers; seed 1 has a constant drop: no rho; seed 0 with a tie in the bias:
    # centred ranks (-0.5, -0.5, 1) and (-1, 0, 1) give 1.5 / sqrt(1.5 * 2) = sqrt(3) / 2
    assert k["n_layers"] == 3 and k["n_seeds"] == 1 and math.isnan(k["per_seed"][1])
    assert k["rho"] == pytest.approx(math.sqrt(3) / 2) and math.isnan(k["low"])
    # shuffles of 3 drops: rho sqrt(3)/2 twice, 0 twice, -sqrt(3)/2 twice: p = 2 * 2/6
    assert k["p_value"] == pytest.approx(2 / 3)


def test_study_table_and_claims_from_result_files(synthetic):
    data = study_report.load_study(synthetic)
    table = data.table
    assert list(table.columns) == study_report.COLUMNS
    assert len(table) == 4 * 2 * 3  # cells x snapshot epochs x layers
    assert data.missing == ["cells/lenet/digits/clean/seed_2"]
    row = table[(table["cell"] == "cells/lenet/digits/clean/seed_0") & (table["epoch"] == 2) &
                (table["layer"] == "b")].iloc[0]
    assert (row["mass"], row["bias"], row["drop_reinit_0"], row["test_top1"], row["train_top1"]) == (
        1.0, 0.5, 0.6, 90.0, 95.0)
    assert row["drop_rand"] == pytest.approx(1 - 10 / 90) and row["mass_init"] == 0.5 and bool(row["biased"])
    assert row["condition"] == "clean" and row["trained"] and row["N"] == 4

    numbers = study_report.claims(data)
    (setting,) = numbers["settings"]
    clean, noisy = setting["conditions"]
    assert clean["criticality"]["rho"] == pytest.approx(0.75)
    assert clean["criticality"]["p_value"] == pytest.approx(10 / 36)
    # claim 1: mean |mass - 0.5| over layers, trained minus init (0): seed 0 0.25, seed 1 0.625/3
    e = clean["emergence"]
    diffs = [0.25, 0.625 / 3]
    half = T975_1 * (abs(diffs[0] - diffs[1]) / math.sqrt(2)) / math.sqrt(2)
    assert e["mean"] == pytest.approx(np.mean(diffs))
    assert (e["low"], e["high"]) == (pytest.approx(np.mean(diffs) - half), pytest.approx(np.mean(diffs) + half))
    assert clean["share_biased"]["mean"] == pytest.approx((2 / 3 + 2 / 3) / 2)
    # claim 2: label noise minus clean, paired by seed
    v = noisy["vs_clean"]["bias"]
    diffs = [0.25 / 3 - 0.25, 0.25 - 0.625 / 3]
    half = T975_1 * (abs(diffs[0] - diffs[1]) / math.sqrt(2)) / math.sqrt(2)
    assert v["mean"] == pytest.approx(np.mean(diffs)) and v["low"] == pytest.approx(np.mean(diffs) - half)
    assert v["seeds"] == [0, 1]
    assert noisy["criticality"]["rho"] == pytest.approx(math.sqrt(3) / 2)  # seed 1's drops are constant
    # bias against learning across the 4 cells: bias (0.25, 0.625/3, 0.25/3, 0.25) ranks (3.5, 2, 1, 3.5);
    # test top-1 (90, 80, 40, 30) ranks (4, 3, 2, 1): rho = 0.5 / sqrt(4.5 * 5)
    learn = setting["learning"]["bias_vs_test_top1"]
    assert learn["rho"] == pytest.approx(0.5 / math.sqrt(22.5)) and learn["n"] == 4
    se = math.sqrt(1.06 / 1)
    assert learn["low"] == pytest.approx(math.tanh(math.atanh(learn["rho"]) - Z975 * se))


def test_tracked_curves_over_seeds(synthetic):
    data = study_report.load_study(synthetic)
    clean = ["cells/lenet/digits/clean/seed_0", "cells/lenet/digits/clean/seed_1"]
    assert list(data.curves.columns) == study_report.CURVE_COLUMNS and len(data.curves) == 2 * 3 * 3
    assert sorted(data.curves["cell"].unique()) == clean and set(data.curves["condition"]) == {"clean"}
    tracked = data.tracked
    assert list(tracked.columns) == study_report.TRACKED_COLUMNS and len(tracked) == 3 * 3  # layers x epochs
    assert (tracked["n_seeds"] == 2).all() and set(tracked["noise"]) == {0.0}
    at = tracked.set_index(["layer", "epoch"])
    # layer a: trained masses 0.75 and 0.5, so at epoch 1 the tracked masses are 0.625 and 0.5
    assert at.loc[("a", 1.0), "mass"] == pytest.approx(0.5625)
    means = [0.5 - 0.75, 0.0]  # the mean projections of layer a at epoch 2
    half = T975_1 * (abs(means[0] - means[1]) / math.sqrt(2)) / math.sqrt(2)
    assert at.loc[("a", 2.0), "mean"] == pytest.approx(-0.125)
    assert (at.loc[("a", 2.0), "mean_low"], at.loc[("a", 2.0), "mean_high"]) == (
        pytest.approx(-0.125 - half), pytest.approx(-0.125 + half))
    assert (at.loc[("a", 2.0), "mass_low"], at.loc[("a", 2.0), "mass_high"]) == (0.0, 1.0)  # cut to [0, 1]
    # biased at epoch 2: layer a in seed 0 only, layer b in both (masses 1.0 and 0.75), at epoch 0 none
    assert at.loc[("a", 2.0), "share_biased"] == 0.5 and at.loc[("b", 2.0), "share_biased"] == 1.0
    assert (at.xs(0.0, level="epoch")["share_biased"] == 0).all()

    written = study_report.build_study_report(synthetic).files
    saved = pd.read_csv(written["tracked_by_epoch.csv"])
    assert saved.shape == tracked.shape and np.allclose(saved["mass"], tracked["mass"])
    assert "tracked_by_epoch.csv: the tracked training of 2 cells" in written["summary.md"].read_text()


@pytest.mark.slow
def test_the_study_report_is_drawn_without_torch(synthetic):
    code = ("import sys; from hparr.report.study import build_study_report; "
            f"w = build_study_report({str(synthetic)!r}); assert 'torch' not in sys.modules; print(sorted(w.files))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr
    report = synthetic / "report"
    for name in ("study_mass_by_condition", "study_mass_by_epoch", "study_bias_vs_criticality",
                 "study_bias_vs_learning"):
        assert (report / f"{name}.png").stat().st_size > 10_000 and (report / f"{name}.pdf").is_file()
    table = pd.read_csv(report / "study.csv")
    assert len(table) == 24 and pd.read_parquet(report / "study.parquet").shape == table.shape
    summary = (report / "summary.md").read_text()
    assert "pooled Spearman rho = 0.75 [0.50, 1.00] over 2 seeds x 3 layers, permutation p = 0.278 (exact)" in summary
    assert "**not supported by this data**" in summary
    assert "Not finished (1): cells/lenet/digits/clean/seed_2" in summary
    stats = json.loads((report / "statistics.json").read_text())
    assert stats["settings"][0]["conditions"][0]["criticality"]["rho"] == pytest.approx(0.75)
    assert "<strong>not supported by this data</strong>" in (report / "index.html").read_text()
    assert_page_is_its_markdown(report, f"hparr study: {synthetic.name}")  # with its figures


def test_hparr_report_recognizes_a_study(synthetic, tmp_path, capsys, monkeypatch):
    import hparr.report._study_figures as figures

    monkeypatch.setattr(figures, "draw_all", lambda *args: ([], []))  # figures are tested above
    assert main(["report", str(synthetic), "--out", str(tmp_path / "r")]) == 0
    printed = capsys.readouterr().out
    assert "statistics.json" in printed
    assert "1 cell(s) of the study are not finished and missing from the report: cells/lenet/digits/clean/seed_2" \
        in printed
    assert (tmp_path / "r" / "study.csv").is_file()


def test_one_html_renderer_draws_the_study_page(synthetic, monkeypatch):
    import hparr.report._study_figures as figures

    monkeypatch.setattr(figures, "draw_all", lambda *args: ([], []))  # the page with figures: the slow test above
    written = study_report.build_study_report(synthetic)
    assert_page_is_its_markdown(written.files["index.html"].parent, f"hparr study: {synthetic.name}")


# --- end to end ----------------------------------------------------------------------------------

TINY = ["--epochs", "1", "--snapshot-every", "1", "--snapshot-all-until", "0", "--lr", "0.02", "--tb-logdir", "",
        "--batch-size", "256"]


def fingerprint(folder: Path) -> dict[str, tuple[int, str]]:
    return {str(p.relative_to(folder)): (p.stat().st_mtime_ns, hashlib.sha256(p.read_bytes()).hexdigest())
            for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.mark.slow
def test_kill_9_mid_study_then_a_rerun_completes_it_and_keeps_finished_cells(tmp_path, capsys):
    out = tmp_path / "s"
    argv = [sys.executable, "-m", "hparr", "study", "--seeds", "0-1", "--noise", "0,1", *TINY, "--out", str(out)]
    first = out / "cells/lenet/digits/clean/seed_0"
    second = out / "cells/lenet/digits/clean/seed_1"
    proc = subprocess.Popen([*argv, "--jobs", "1", "--threads", "1"], stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, start_new_session=True)
    try:
        deadline = time.monotonic() + 900
        # kill once the first cell is finished and the second has begun training
        while not (results.run_finished(first, RUN_REPORT_FILES)
                   and (second / "models/digits/lenet/1/lenet_init_0.pt").exists()):
            assert proc.poll() is None, proc.stderr.read().decode()
            assert time.monotonic() < deadline
            time.sleep(0.2)
        # --status while it runs: the cell in training is running, the two the pool has not begun are pending
        lines = status_lines(out, capsys)
        assert lines["cells/lenet/digits/clean/seed_0"] == "finished    cells/lenet/digits/clean/seed_0"
        assert lines["cells/lenet/digits/clean/seed_1"].startswith("running     cells/lenet/digits/clean/seed_1 (pid ")
        for seed in (0, 1):
            assert lines[f"cells/lenet/digits/noise_100/seed_{seed}"] == (
                f"pending     cells/lenet/digits/noise_100/seed_{seed} (queued by hparr study, pid {proc.pid} on "
                f"{socket.gethostname()})")
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert not results.run_finished(second, RUN_REPORT_FILES)
    # the study's worker exits within a second of the study: the cell it ran has failed, the others never began
    deadline = time.monotonic() + 60
    while (lines := status_lines(out, capsys))["cells/lenet/digits/clean/seed_1"].startswith("running"):
        assert time.monotonic() < deadline
        time.sleep(0.2)
    assert "ended without finishing or recording an error" in lines["cells/lenet/digits/clean/seed_1"]
    assert lines[""] == "4 cells: 1 finished, 1 failed, 2 not started"
    before = fingerprint(first)
    rerun = subprocess.run([*argv, "--jobs", "2"], capture_output=True, text=True, timeout=900)
    assert rerun.returncode == 0, rerun.stderr
    assert "study: 4 cells: 3 finished now, 1 already finished, 0 failed" in rerun.stdout
    assert fingerprint(first) == before  # the finished cell was skipped, not rewritten
    for cell in ("clean/seed_1", "noise_100/seed_0", "noise_100/seed_1"):
        assert results.run_finished(out / "cells/lenet/digits" / cell, RUN_REPORT_FILES)
    # the interrupted cell resumed from its snapshots rather than starting again
    assert "resumed from" in (second / "cell.log").read_text()
    manifest = results.read_manifest(out / "cells/lenet/digits/noise_100/seed_0")
    assert manifest["settings"]["data"]["noise"] == 1.0 and 0 <= manifest["final"]["train"]["top1"] <= 100
    table = pd.read_csv(out / "report" / "study.csv")
    assert table["cell"].nunique() == 4 and set(table["condition"]) == {"clean", "noise 100%"}


@pytest.mark.slow
def test_a_submitit_job_array_runs_the_cells_and_a_failed_cell_is_reported(tmp_path, capsys):
    pytest.importorskip("submitit")
    out = tmp_path / "s"
    argv = ["study", "--seeds", "0-1", *TINY, "--no-progress", "--out", str(out)]
    assert main([*argv, "--launcher", "print"]) == 0  # writes study.json, runs nothing
    blocked = out / "cells/lenet/digits/clean/seed_1"
    files.ensure_dir(blocked)
    (blocked / "models").write_text("a file where the snapshots should go")
    capsys.readouterr()
    assert main([*argv, "--launcher", "submitit-local"]) == 1
    captured = capsys.readouterr()
    assert "study: 2 cells: 1 finished now, 0 already finished, 1 failed" in captured.out
    log = blocked / "cell.log"
    assert (f"failed: lenet digits clean seed 1: cannot create output directory {blocked / 'models'}"
            in captured.out) and f"log: {log}" in captured.out
    assert "Traceback" in log.read_text() and "Traceback" not in captured.err
    assert results.run_finished(out / "cells/lenet/digits/clean/seed_0", RUN_REPORT_FILES)
    assert any((out / "submitit").rglob("*_submitted.pkl"))  # went through submitit's job array
    summary = (out / "report" / "summary.md").read_text()
    assert "Study: 1 finished cells" in summary and "cells/lenet/digits/clean/seed_1" in summary


def test_one_seed_is_undetermined_and_a_clean_cell_at_chance_is_flagged(synthetic):
    import shutil

    # keep seed 0 only
    for condition in ("clean", "noise_50"):
        shutil.rmtree(synthetic / "cells" / "lenet" / "digits" / condition / "seed_1")
    clean = synthetic / "cells" / "lenet" / "digits" / "clean" / "seed_0"
    manifest = json.loads((clean / MANIFEST_NAME).read_text())
    manifest["final"]["test"].update(top1=11.5, count=200)  # 23 of 200 right, 10 classes: chance is 20
    files.write_json(clean / MANIFEST_NAME, manifest)
    data = study_report.load_study(synthetic)
    assert data.at_chance == ["cells/lenet/digits/clean/seed_0"]
    numbers = study_report.claims(data)
    text = study_report.summary_markdown(data, numbers, [], "|mass - 0.5|")
    assert "**Warning: 1 clean cell(s) stayed at chance**" in text and "clean/seed_0" in text
    claim3 = text.split("**Claim 3")[1].split("###")[0]
    assert "not supported" not in claim3 and claim3.count("**undetermined**: too few seeds") == 2

    # the binomial test by a plain sum: P(X >= 23) for X ~ Binomial(200, 1/10)
    tail = sum(math.comb(200, k) * 0.1 ** k * 0.9 ** (200 - k) for k in range(23, 201))
    assert study_report.not_above_chance(11.5, 200, 10) == (tail >= 0.05)
    assert not study_report.not_above_chance(20.0, 200, 10)  # 40 of 200: far above chance


def test_a_cell_whose_checkpoints_changed_is_not_finished(synthetic):
    cell = synthetic / "cells" / "lenet" / "digits" / "clean" / "seed_0"
    assert results.run_finished(cell, RUN_REPORT_FILES)
    snapshot = cell / "models" / "lenet_2.pt"
    snapshot.parent.mkdir(parents=True, exist_ok=True)
    snapshot.write_bytes(b"weights")
    st = snapshot.stat()
    reinit = read_manifest_reinit(cell)
    doc = json.loads(reinit.read_text())
    doc["inputs"] = {"trained": {"path": str(snapshot), "size": st.st_size, "mtime_ns": st.st_mtime_ns},
                     "inits": {}}
    files.write_json(reinit, doc)
    assert results.run_finished(cell, RUN_REPORT_FILES)
    os.utime(snapshot, ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))  # retrained since
    assert not results.run_finished(cell, RUN_REPORT_FILES)


def read_manifest_reinit(cell: Path) -> Path:
    return Path(results.read_manifest(cell)["reinit"])


def test_figure_b_follows_each_seed_and_averages_only_while_every_seed_trains(synthetic):
    from hparr.report._study_figures import seed_lines, seed_mean
    from hparr.report._study_text import grid_values

    data = study_report.load_study(synthetic)
    clean = seed_lines(data.table, data.curves, 0.0, "b")  # tracked: every tracked epoch of each seed
    assert sorted(clean) == [0, 1] and list(clean[0][0]) == [0.0, 1.0, 2.0]
    assert list(clean[0][1]) == [0.5, 0.75, 1.0] and list(clean[1][1]) == [0.5, 0.625, 0.75]
    noisy = seed_lines(data.table, data.curves, 0.5, "b")  # not tracked: the snapshots, epochs 0 and 2
    assert list(noisy[1][0]) == [0.0, 2.0] and list(noisy[1][1]) == [0.5, 0.75]
    # seeds that stopped at different epochs: the mean ends where the first one stopped
    lines = {0: (np.array([0.0, 1, 2, 3]), np.array([0.5, 0.6, 0.7, 0.8])),
             1: (np.array([0.0, 1]), np.array([0.5, 0.9])), 2: (np.array([0.0, 1, 2]), np.array([0.4, 0.6, 0.9]))}
    x, y = seed_mean(lines)
    assert list(x) == [0.0, 1.0] and y == pytest.approx([np.mean([0.5, 0.5, 0.4]), np.mean([0.6, 0.9, 0.6])])
    # the grid in words: every training image and every class, not "None" and "0"
    assert grid_values("train_size", [None]) == ["all"] and grid_values("subsample_classes", [0, 4]) == ["all", "4"]
    assert grid_values("noise", [1.0, -1.0, 0.0]) == ["noise 100%", "pixel shuffle", "clean"]
    files.write_json(synthetic / STUDY_NAME, {**json.loads((synthetic / STUDY_NAME).read_text()),
                                              "grid": {"seeds": [0, 1], "train_size": [None]}})
    text = study_report.summary_markdown(study_report.load_study(synthetic), study_report.claims(data), [], "bias")
    assert "Grid: seeds: 0, 1; train_size: all." in text and "None" not in text
