"""Nothing lost: training killed with SIGKILL at random moments leaves only loadable snapshots, and
`--resume-from auto` finishes with the same weights as an uninterrupted run."""
import random
import signal
import subprocess
import sys
import time

import torch

from hparr import checkpoints as ck

EPOCHS = 4


def test_kill_9_at_random_points_then_resume_matches_an_uninterrupted_run(tmp_path):
    def command(models):
        return [sys.executable, "-m", "hparr", "train", "--arch", "lenet", "--dataset", "digits", "--augmentation",
                "--epochs", str(EPOCHS), "--lr", "0.02", "--seed", "2", "--snapshot-every", "1", "--tb-logdir", "",
                "--models-path", str(models), "--resume-from", "auto", "--no-progress"]

    reference = subprocess.run(command(tmp_path / "ref"), capture_output=True, text=True, timeout=600)
    assert reference.returncode == 0, reference.stderr[-2000:]
    cmd = command(tmp_path / "killed")
    run_dir = tmp_path / "killed" / "digits" / "lenet" / "2"
    rng = random.Random(0)
    kills = 0
    for _ in range(3):
        proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                                )
        time.sleep(rng.uniform(3.0, 7.0))
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
