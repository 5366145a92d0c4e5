"""The SLURM launcher's own pieces, against stand-ins for SLURM's commands: the script `sbatch --test-only` judges
carries the #SBATCH lines of the script submitit submits, and the array is followed with squeue where sacct does
not answer. `make test-slurm` runs the launcher against a real SLURM."""
from __future__ import annotations

import os
from pathlib import Path
from types import SimpleNamespace

import pytest

from hparr import files, study
from hparr.errors import UsageError
from hparr.study._slurm import GONE, ended_by_squeue, sbatch_test_script

submitit = pytest.importorskip("submitit")


def commands(tmp_path: Path, monkeypatch, **scripts: str) -> Path:
    """Put shell scripts named as SLURM's commands first on PATH; returns their folder."""
    bin_dir = tmp_path / "bin"
    for name, body in scripts.items():
        files.write_text(bin_dir / name, f"#!/bin/sh\n{body}\n")
        (bin_dir / name).chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    return bin_dir


def study_settings(tmp_path: Path, **options) -> study.StudySettings:
    from hparr.training import TrainSettings

    return study.StudySettings(base=TrainSettings("lenet"), archs=["lenet"], datasets=["digits"], seeds=[0],
                               out=str(tmp_path / "s"), slurm=study.SlurmOptions(**options))


def sbatch_lines(text: str) -> list[str]:
    return [line for line in text.splitlines() if line.startswith("#SBATCH ")]


def test_the_script_sbatch_tests_has_the_sbatch_lines_submitit_submits(tmp_path, monkeypatch):
    # sbatch copies each script it is given and answers as SLURM does
    commands(tmp_path, monkeypatch, srun="exit 0",
             sbatch='for last; do :; done; cp "$last" "$SBATCH_COPY.$#"; echo "Submitted batch job 77"')
    monkeypatch.setenv("SBATCH_COPY", str(tmp_path / "script"))
    settings = study_settings(tmp_path, partition="gpu", gpus_per_task=1, cpus_per_task=2, time_min=3, mem="4G",
                              account="proj", qos="low", constraint="a100", array_parallelism=4,
                              extra=study.parse_slurm_extra(["mail-type=END", "--comment=x y"]),
                              setup=["module load cuda"])
    tested = sbatch_test_script(study.make_executor(settings, "slurm", folder=tmp_path / "t").parameters)
    assert sbatch_lines(tested) == [
        "#SBATCH --account=proj", "#SBATCH --comment='x y'", "#SBATCH --constraint=a100",
        "#SBATCH --cpus-per-task=2", "#SBATCH --gpus-per-task=1",
        "#SBATCH --job-name=hparr-study", "#SBATCH --mail-type=END", "#SBATCH --mem=4G", "#SBATCH --nodes=1",
        "#SBATCH --ntasks-per-node=1", "#SBATCH --partition=gpu", "#SBATCH --qos=low", "#SBATCH --signal=USR2@18",
        "#SBATCH --time=3"]
    assert tested.startswith("#!/bin/bash\n") and tested.endswith("\ntrue\n")

    jobs = study.make_executor(settings, "slurm").map_array(abs, [-1, -2, -3, -4, -5])
    assert [str(j.job_id) for j in jobs] == [f"77_{i}" for i in range(5)]
    submitted = sbatch_lines((tmp_path / "script.1").read_text())
    # what submitit adds: the array (limited to array_parallelism), its log files, the append mode, its wckey
    added = {line.split("=")[0] for line in set(submitted) - set(sbatch_lines(tested))}
    assert added == {"#SBATCH --array", "#SBATCH --output", "#SBATCH --error", "#SBATCH --open-mode",
                     "#SBATCH --wckey"}, added
    assert "#SBATCH --array=0-4%4" in submitted and set(sbatch_lines(tested)) <= set(submitted)


def test_what_sbatch_test_only_refuses_is_one_line_and_what_it_takes_passes(tmp_path, monkeypatch):
    commands(tmp_path, monkeypatch, srun="exit 0", sbatch='''for last; do :; done
echo "$1" > "$SBATCH_ARGS"
if grep -q -- "--partition=nope" "$last"; then
  echo "sbatch: error: invalid partition specified: nope" >&2
  echo "sbatch: error: Batch job submission failed: Invalid partition name specified" >&2
  exit 1
fi
echo "sbatch: Job 78 to start at 2024-01-01T00:00:00 using 1 processors on nodes n1 in partition debug" >&2''')
    monkeypatch.setenv("SBATCH_ARGS", str(tmp_path / "args"))
    study.check_sbatch(study_settings(tmp_path, partition="debug"))
    assert (tmp_path / "args").read_text() == "--test-only\n"
    with pytest.raises(UsageError) as refused:
        study.check_sbatch(study_settings(tmp_path, partition="nope"))
    assert str(refused.value) == ("sbatch refuses the cells' job: sbatch: error: invalid partition specified: nope; "
                                  "sbatch: error: Batch job submission failed: Invalid partition name specified")


def task(tmp_path: Path, job_id: str) -> SimpleNamespace:
    """A stand-in for submitit's job of one array task: its id and the result file it writes when it ends."""
    return SimpleNamespace(job_id=job_id, paths=SimpleNamespace(result_pickle=tmp_path / f"{job_id}_result.pkl"))


def test_squeue_follows_the_array_where_sacct_does_not_answer(tmp_path, monkeypatch):
    # squeue answers what the file `states` holds, and counts its calls
    commands(tmp_path, monkeypatch, squeue=f'echo >> {tmp_path / "calls"}; cat {tmp_path / "states"}')
    states, calls = tmp_path / "states", tmp_path / "calls"
    done, running, cancelled, pending = (task(tmp_path, f"77_{i}") for i in range(4))
    states.write_text("77_0|COMPLETING\n77_1|RUNNING\n77_2|CANCELLED\n77_3|PENDING\n")
    done.paths.result_pickle.write_bytes(b"result")
    follow = ended_by_squeue([done, running, cancelled, pending], every=0, grace=0)
    assert next(follow) == (done, None)  # its result is there: squeue is not asked
    assert not calls.exists()
    assert next(follow) == (cancelled, "CANCELLED")  # ended without a result
    states.write_text("77_3|PENDING\n")  # the running task is gone from squeue; the pending one writes its result
    pending.paths.result_pickle.write_bytes(b"result")
    assert next(follow) == (pending, None)
    assert next(follow) == (running, GONE)
    assert next(follow, "end") == "end"
    assert len(calls.read_text().splitlines()) == 2


def test_a_task_ended_without_its_result_is_given_grace_and_a_requeued_one_is_followed_again(tmp_path, monkeypatch):
    states = tmp_path / "states"
    commands(tmp_path, monkeypatch, squeue=f"cat {states}")
    late, requeued = task(tmp_path, "77_0"), task(tmp_path, "77_1")
    # squeue's answer at each poll, 10 s apart: the first task has ended and shows its result 20 s later; the second
    # is requeued after its time limit, then fails
    answers = {0: "77_0|COMPLETED\n77_1|TIMEOUT\n", 10: "77_0|COMPLETED\n77_1|PENDING\n", 20: "77_1|FAILED\n"}
    now = [0]

    def sleep(seconds):
        now[0] += seconds
        states.write_text(answers.get(now[0], answers[20]))
        if now[0] == 20:
            late.paths.result_pickle.write_bytes(b"result")

    states.write_text(answers[0])
    monkeypatch.setattr("hparr.study._slurm.time", SimpleNamespace(monotonic=lambda: now[0], sleep=sleep))
    follow = ended_by_squeue([late, requeued], every=10, grace=25)
    assert next(follow) == (late, None) and now[0] == 20  # not failed at first sight: its result came late
    # failed 25 s after it was last seen ended, counted from when it failed, not from its time limit (0 s)
    assert next(follow) == (requeued, "FAILED") and now[0] == 50
    assert next(follow, "end") == "end"
