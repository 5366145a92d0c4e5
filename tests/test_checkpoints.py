"""Snapshot loading: the original code's formats, safety, epoch labels and layout."""
import os

import pytest
import torch

from hparr import checkpoints as ck
from hparr.errors import HparrError, UsageError
from hparr.models import build_model


def original_tar(model, epoch):
    return {"epoch": epoch, "top1_acc": 50.0, "top5_acc": 90.0, "model_state_dict": model.state_dict(),
            "optimizer_state_dict": torch.optim.SGD(model.parameters(), lr=0.1).state_dict(),
            "scheduler_state_dict": None}


def test_original_formats_load(tmp_path):
    model = build_model("lenet", seed=1)
    torch.save(model.state_dict(), tmp_path / "lenet_init_0.pt")
    torch.save(original_tar(model, 4), tmp_path / "lenet_4.tar")
    wrapped = {k.replace("features.", "features.module."): v for k, v in model.state_dict().items()}
    torch.save(wrapped, tmp_path / "lenet_20.pt")
    for name in ("lenet_init_0.pt", "lenet_4.tar", "lenet_20.pt"):
        fresh = build_model("lenet", seed=2)
        obj = ck.load_model_weights(fresh, tmp_path / name)
        assert all(torch.equal(fresh.state_dict()[k], v) for k, v in model.state_dict().items())
        assert isinstance(obj, dict)
    epochs = {p.name: ck.snapshot_epoch(ck.torch_load(p), p) for p in ck.find_snapshots(tmp_path)}
    assert epochs == {"lenet_init_0.pt": 0, "lenet_4.tar": 5, "lenet_20.pt": 20}


def test_epoch_from_filename_rule():
    assert ck.epoch_from_filename("vgg11_pretrained_0.pt") == -1
    assert ck.epoch_from_filename("/a/vgg11_init_0.pt") == 0
    assert ck.epoch_from_filename("vgg11_9.tar") == 10
    assert ck.epoch_from_filename("vgg11_30.pt") == 30  # the final model ran 30 epochs
    with pytest.raises(HparrError):
        ck.epoch_from_filename("weights.pt")


def test_metadata_beats_file_name():
    assert ck.snapshot_epoch({"epochs_completed": 7, "model_state_dict": {}}, "x_init_0.pt") == 7


def test_arbitrary_pickles_are_refused_without_running_code(tmp_path):
    marker = tmp_path / "marker"

    class Evil:
        def __reduce__(self):
            return (os.system, (f"touch {marker}",))

    path = tmp_path / "evil.pt"
    torch.save({"model_state_dict": {"w": torch.zeros(1)}, "x": Evil()}, path)
    with pytest.raises(HparrError, match="refused"):
        ck.torch_load(path)
    assert not marker.exists()


def test_truncated_and_garbage_files_are_clear_errors(tmp_path):
    good = tmp_path / "good.pt"
    torch.save(build_model("lenet").state_dict(), good)
    cut = tmp_path / "cut.pt"
    cut.write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    junk = tmp_path / "junk.pt"
    junk.write_bytes(b"not a snapshot at all")
    for path in (cut, junk):
        with pytest.raises(HparrError, match="corrupt"):
            ck.torch_load(path)
    with pytest.raises(HparrError, match="not found"):
        ck.torch_load(tmp_path / "missing.pt")


def test_mismatched_architecture_names_keys_and_shapes():
    lenet10 = build_model("lenet", num_classes=10).state_dict()
    with pytest.raises(HparrError, match=r"classifier\.6\.weight: snapshot \(10, 84\) vs model \(3, 84\)"):
        ck.load_weights(build_model("lenet", num_classes=3), lenet10)
    with pytest.raises(HparrError, match="missing keys"):
        ck.load_weights(build_model("alexnet"), lenet10)


def test_run_directory_layout(tmp_path):
    assert ck.run_directory("m", "cifar10", "vgg11", 3) == ck.Path("m/cifar10/vgg11/3")
    assert ck.run_directory("m", "cifar100", "vgg11", 3, subsample_classes=10, noise=0.2) == \
        ck.Path("m/cifar100_10/noise_20/vgg11/3")
    assert ck.run_directory("m", "mnist", "lenet", None, noise=-1) == ck.Path("m/mnist/pixel_shuffle/lenet")


def test_find_snapshots_and_newest(tmp_path):
    model = build_model("lenet")
    for e in (0, 1, 2):
        ck.save_snapshot(tmp_path / f"lenet_{e}.tar",
                         {"epochs_completed": e + 1, "model_state_dict": model.state_dict()})
    (tmp_path / "lenet_9.tar").write_bytes(b"torn")
    assert len(ck.find_snapshots(str(tmp_path / "*.tar"))) == 4
    assert ck.newest_snapshot(tmp_path).name == "lenet_2.tar"
    with pytest.raises(UsageError):
        ck.find_snapshots(tmp_path / "nope")


def test_recorded_normalization_reads_every_layout():
    top = {"mean": [0.5], "std": [0.25], "normalized": True}
    assert ck.recorded_normalization({"normalization": top, "data": {}}) == top
    # earlier hparr snapshots: constants at the top level, the flag only in the data record
    older = {"normalization": {"mean": [0.0], "std": [1.0]},
             "data": {"normalization": {"mean": [0.0], "std": [1.0], "normalized": False}}}
    assert ck.recorded_normalization(older) == {"mean": [0.0], "std": [1.0], "normalized": False}
    assert ck.recorded_normalization({"data": {"normalization": {"normalized": True}}}) == {"normalized": True}
    assert ck.recorded_normalization({}) is None  # the original code's snapshots record none


def test_newest_snapshot_reads_snapshots_memory_mapped(tmp_path, monkeypatch):
    for epoch in (1, 3, 2):
        ck.save_snapshot(tmp_path / f"lenet_{epoch - 1}.tar",
                         {"epochs_completed": epoch, "model_state_dict": {"w": torch.zeros(2)}})
    (tmp_path / "lenet_9.tar").write_bytes(b"torn")
    calls = []
    load = ck.torch_load
    monkeypatch.setattr(ck, "torch_load", lambda path, mmap=False: calls.append(mmap) or load(path, mmap=mmap))
    assert ck.newest_snapshot(tmp_path) == tmp_path / "lenet_2.tar"
    assert calls and all(calls)
