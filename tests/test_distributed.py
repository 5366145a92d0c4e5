"""torchrun: a 2-process gloo run trains lenet on digits, writes one set of plain snapshots, and resumes
(compiled: DistributedDataParallel around the torch.compile'd model)."""
import os
import subprocess
import sys

import pytest

from hparr import checkpoints as ck
from hparr.data import DataOptions
from hparr.models import build_model
from hparr.trackfile import read_tracking
from hparr.training import TrainSettings, train


def torchrun(*args, cwd):
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
           "-m", "hparr", "train", "--arch", "lenet", "--dataset", "digits", "--no-progress", *args]
    proc = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc


@pytest.mark.slow
def test_two_process_gloo_run_matches_a_single_process_run(tmp_path):
    common = ["--optimizer", "adam", "--lr", "0.003", "--seed", "4", "--models-path", str(tmp_path / "ddp"),
              "--tb-logdir", "", "--batch-size", "64"]  # 2 ranks x 64 = the single process's batch of 128
    torchrun("--epochs", "3", *common, cwd=tmp_path)
    # the resumed half runs compiled; aot_eager keeps the test fast (inductor is tested in test_training.py)
    proc = torchrun("--epochs", "6", "--resume-from", "auto", "--compile", "aot_eager", *common, cwd=tmp_path)
    assert proc.stdout.count("final model, epoch 6 of 6") == 1  # rank 0 alone reports
    run_dir = tmp_path / "ddp" / "digits" / "lenet" / "4"
    names = sorted(p.name for p in run_dir.iterdir() if p.suffix in (".pt", ".tar"))
    assert names == ["lenet_2.tar", "lenet_3.pt", "lenet_5.tar", "lenet_6.pt", "lenet_init_0.pt"]
    final = ck.torch_load(run_dir / "lenet_6.pt")
    assert not any("module" in k or "_orig_mod" in k for k in final["model_state_dict"])
    assert final["settings"]["compile"] == "aot_eager"
    plain = build_model("lenet", num_classes=10, in_channels=1)
    ck.load_weights(plain, ck.state_dict_of(final))  # loads into a plain single-device model
    assert [h["epoch"] for h in final["history"]] == [1, 2, 3, 4, 5, 6]
    rows = read_tracking(run_dir / "tracking.csv")  # rank 0's, continued by the resumed run
    assert sorted(rows.loc[rows["epoch"] % 1 == 0, "epoch"].unique()) == [0, 1, 2, 3, 4, 5, 6]
    assert not rows.duplicated(["step", "name"]).any() and rows.groupby("step").size().eq(6).all()

    single = train(TrainSettings(arch="lenet", data=DataOptions(dataset="digits"), epochs=6, optimizer="adam",
                                 lr=0.003, seed=4,
                                 models_path=str(tmp_path / "single"), tb_logdir=None, progress=False))
    ddp_top1 = final["metrics"]["test"]["top1"]
    assert final["metrics"]["test"]["count"] == 450  # evaluation gathered every test image once
    assert abs(ddp_top1 - single.final["test"]["top1"]) < 15, (ddp_top1, single.final["test"]["top1"])
    assert ddp_top1 > 60  # far above the 10% of chance after 6 short epochs


def test_select_device_takes_this_ranks_gpu_or_warns_and_falls_back():
    import torch

    from hparr.training import select_device

    warnings = []
    assert select_device(False, warn=warnings.append) == torch.device("cpu") and warnings == []
    device = select_device(True, local_rank=0, warn=warnings.append)
    if torch.cuda.is_available():
        assert device == torch.device("cuda", 0) and warnings == []
    else:
        assert device == torch.device("cpu") and warnings == ["--cuda given but no GPU available: running on the CPU"]
