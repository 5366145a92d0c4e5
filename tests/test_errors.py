"""Every bad input gets a one-line error, no traceback, and exit code 2 (usage) or 1 (runtime).

The cases here are the table in README.md ("When something is wrong")."""
import os
import pickle
import sys

import pytest
import torch

from hparr.cli import main
from hparr.models import build_model


@pytest.fixture(scope="module")
def snapshots(tmp_path_factory):
    root = tmp_path_factory.mktemp("snaps")
    lenet = build_model("lenet", num_classes=10, in_channels=1)
    torch.save(lenet.state_dict(), root / "lenet_init_0.pt")
    good = (root / "lenet_init_0.pt").read_bytes()
    (root / "lenet_3.pt").write_bytes(good[: len(good) // 3])  # truncated
    torch.save(build_model("alexnet", num_classes=10, in_channels=1).state_dict(), root / "alexnet_1.pt")
    torch.save(build_model("lenet", num_classes=3, in_channels=1).state_dict(), root / "lenet3_1.pt")

    class Evil:
        def __reduce__(self):
            return (os.system, (f"touch {root / 'pwned'}",))

    torch.save({"model_state_dict": lenet.state_dict(), "extra": Evil()}, root / "lenet_5.pt")
    (root / "empty.txt").write_text("\n\n")
    cifar = root / "cifar" / "cifar-10-batches-py"
    cifar.mkdir(parents=True)
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        (cifar / name).write_bytes(pickle.dumps({b"data": b"garbage"}))
    (root / "a_file").write_text("not a directory")
    return root


LENET = ["--arch", "lenet", "--dataset", "digits"]

# (name, argv (with {root} for the fixture folder), exit code, a phrase of the message)
CASES = [
    ("unknown architecture", ["train", "--arch", "vgg99", "--dataset", "digits"], 2, "unknown architecture"),
    ("unknown dataset", ["train", "--arch", "lenet", "--dataset", "svhn"], 2, "unknown dataset"),
    ("unknown optimizer", ["train", *LENET, "--optimizer", "rmsprop"], 2, "unknown optimizer"),
    ("missing dataset files", ["train", "--arch", "lenet", "--dataset", "cifar10", "--data-path", "{root}/none"],
     1, "cifar-10-batches-py"),
    ("malformed dataset files", ["train", "--arch", "lenet", "--dataset", "cifar10", "--data-path", "{root}/cifar"],
     1, "data_batch_1"),
    ("truncated snapshot", ["projections", *LENET, "--load-from", "{root}/lenet_3.pt"], 1, "corrupt"),
    ("snapshot with pickled code", ["projections", *LENET, "--load-from", "{root}/lenet_5.pt"], 1, "refused"),
    ("snapshot of another architecture", ["projections", *LENET, "--load-from", "{root}/alexnet_1.pt"], 1,
     "features.0.weight"),
    ("snapshot of another class count", ["reinit", *LENET, "--load-from", "{root}/lenet3_1.pt", "--rand"], 1,
     "classifier.6.weight"),
    ("missing --inits-from", ["reinit", *LENET, "--load-from", "{root}/lenet_init_0.pt", "--inits-from",
                              "{root}/nope.txt"], 2, "no such file"),
    ("empty --inits-from", ["reinit", *LENET, "--load-from", "{root}/lenet_init_0.pt", "--inits-from",
                            "{root}/empty.txt"], 2, "no existing snapshot"),
    ("label noise out of range", ["train", *LENET, "--noise", "1.5"], 2, "noise"),
    ("validation split out of range", ["train", *LENET, "--split", "1.0"], 2, "split"),
    ("more classes than the dataset has", ["train", *LENET, "--subsample-classes", "11"], 2, "11"),
    ("non-positive batch size", ["train", *LENET, "--batch-size", "0"], 2, "batch-size"),
    ("unwritable output directory", ["train", *LENET, "--epochs", "1", "--models-path", "{root}/a_file/models",
                                     "--tb-logdir", ""], 1, "cannot create output directory"),
    ("empty study grid", ["study", "--seeds", "", "--dry-run", "--out", "{root}/study"], 2, "empty grid"),
    ("malformed grid list", ["study", "--noise", "0,,x", "--dry-run", "--out", "{root}/study"], 2,
     "malformed list '0,,x'"),
    ("backwards range", ["study", "--seeds", "4-0", "--dry-run", "--out", "{root}/study"], 2, "backwards range"),
    ("unknown launcher", ["study", "--launcher", "pbs", "--out", "{root}/study"], 2, "unknown launcher 'pbs'"),
    ("study --out holding something else", ["study", "--out", "{root}/cifar"], 2, "not a study"),
]


@pytest.mark.parametrize("name,argv,code,phrase", CASES, ids=[c[0] for c in CASES])
def test_bad_input_is_one_line_with_the_right_exit_code(snapshots, capsys, name, argv, code, phrase):
    argv = [a.replace("{root}", str(snapshots)) for a in argv]
    assert main(argv) == code
    err = capsys.readouterr().err.strip().splitlines()
    errors = [line for line in err if "error:" in line]
    assert len(errors) == 1, err
    assert phrase in errors[0], errors[0]
    assert not any("Traceback" in line for line in err)
    assert not (snapshots / "pwned").exists()


def test_out_of_gpu_memory_suggests_a_smaller_batch(monkeypatch, capsys):
    import hparr.training

    def exhausted(self):
        raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")

    monkeypatch.setattr(hparr.training.Run, "fit", exhausted)
    assert main(["train", *LENET, "--epochs", "1", "--tb-logdir", "", "--models-path", "/tmp/hparr-oom"]) == 1
    err = capsys.readouterr().err
    assert "out of memory" in err and "--batch-size" in err and "Traceback" not in err


def test_study_with_slurm_needs_submitit_and_sbatch(snapshots, capsys, monkeypatch):
    out = snapshots / "slurm_study"
    monkeypatch.setitem(sys.modules, "submitit", None)  # as if it were not installed
    assert main(["study", "--launcher", "slurm", "--out", str(out)]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "needs submitit, which is not installed" in err[0]
    monkeypatch.delitem(sys.modules, "submitit")
    pytest.importorskip("submitit")
    monkeypatch.setenv("PATH", str(snapshots / "no-bin"))
    assert main(["study", "--launcher", "slurm", "--out", str(out)]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "sbatch is not on PATH" in err[0]
    assert not out.exists()  # nothing written
