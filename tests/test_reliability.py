"""Nothing lost: training killed with SIGKILL at random moments leaves only loadable snapshots, and
`--resume-from auto` finishes with the same weights and the same tracking.csv as an uninterrupted run."""
import random
import signal
import subprocess
import sys
import time

import pytest
import torch

from hparr import checkpoints as ck

EPOCHS = 6


def wait_for_new_snapshot(run_dir, known: set, proc, timeout: float = 300.0) -> bool:
    """Wait until a snapshot not in `known` is on disk; False if the process ended first."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if {p.name for p in run_dir.glob("lenet_*")} - known:
            return True
        if proc.poll() is not None:
            return False
        time.sleep(0.01)
    raise AssertionError(f"no new snapshot in {run_dir} within {timeout} s")


@pytest.mark.slow
def test_kill_9_at_random_points_then_resume_matches_an_uninterrupted_run(tmp_path):
    def command(models):
        return [sys.executable, "-m", "hparr", "train", "--arch", "lenet", "--dataset", "digits", "--augmentation",
                "--epochs", str(EPOCHS), "--lr", "0.02", "--seed", "2", "--snapshot-every", "1", "--tb-logdir", "",
                "--models-path", str(models), "--resume-from", "auto", "--no-progress"]

    reference = subprocess.run(command(tmp_path / "ref"), capture_output=True, text=True, timeout=600)
    assert reference.returncode == 0, reference.stderr[-2000:]
    ref_dir = tmp_path / "ref" / "digits" / "lenet" / "2"
    # an epoch's wall time on this machine, so that kills land inside epochs however fast the machine is
    epoch_s = (ref_dir / "lenet_2.tar").stat().st_mtime - (ref_dir / "lenet_1.tar").stat().st_mtime
    cmd = command(tmp_path / "killed")
    run_dir = tmp_path / "killed" / "digits" / "lenet" / "2"
    rng = random.Random(0)
    kills = 0
    for _ in range(3):
        known = {p.name for p in run_dir.glob("lenet_*")}
        proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        # each round makes progress (a new snapshot), then dies at a random moment of the next epoch,
        # writing a snapshot included
        if wait_for_new_snapshot(run_dir, known, proc):
            time.sleep(rng.uniform(0.0, 0.9 * max(epoch_s, 0.05)))
        if proc.poll() is None:
            proc.send_signal(signal.SIGKILL)
            kills += 1
        proc.wait()
        for path in run_dir.glob("lenet_*"):  # every snapshot on disk loads: none is torn
            ck.state_dict_of(ck.torch_load(path), path)
    assert kills >= 2
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    ours = ck.load_state_dict_file(run_dir / f"lenet_{EPOCHS}.pt")
    theirs = ck.load_state_dict_file(tmp_path / "ref" / "digits" / "lenet" / "2" / f"lenet_{EPOCHS}.pt")
    assert all(torch.equal(ours[k], theirs[k]) for k in theirs)
    # the bias tracked after every epoch was continued across the kills: no row repeated, none missing
    assert (run_dir / "tracking.csv").read_text() == (ref_dir / "tracking.csv").read_text()
