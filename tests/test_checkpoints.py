"""Snapshot loading: the original code's formats, safety, epoch labels and layout."""
import os

import pytest
import torch

from hparr import checkpoints as ck
from hparr.errors import HparrError, UsageError
from hparr.models import build_model
from hparr.training import write_snapshot


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
    assert ck.epoch_from_filename_or_raise("vgg11_pretrained_0.pt") == -1
    assert ck.epoch_from_filename_or_raise("/a/vgg11_init_0.pt") == 0
    assert ck.epoch_from_filename_or_raise("vgg11_9.tar") == 10
    assert ck.epoch_from_filename_or_raise("vgg11_30.pt") == 30  # the final model ran 30 epochs
    with pytest.raises(HparrError):
        ck.epoch_from_filename_or_raise("weights.pt")


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
    with pytest.raises(HparrError, match="truncated or corrupt snapshot"):
        ck.torch_load(cut)
    with pytest.raises(HparrError, match="junk.pt is not a checkpoint hparr can read"):
        ck.torch_load(junk)
    with pytest.raises(HparrError, match="not found"):
        ck.torch_load(tmp_path / "missing.pt")


def test_mismatched_architecture_names_keys_and_shapes():
    lenet10 = build_model("lenet", num_classes=10).state_dict()
    with pytest.raises(HparrError, match=r"classifier\.6\.weight: snapshot \(10, 84\) vs model \(3, 84\)"):
        ck.load_weights(build_model("lenet", num_classes=3), lenet10)
    with pytest.raises(HparrError, match="missing keys"):
        ck.load_weights(build_model("alexnet"), lenet10)


def test_find_snapshots_and_newest(tmp_path):
    model = build_model("lenet")
    for e in (0, 1, 2):
        write_snapshot(tmp_path / f"lenet_{e}.tar",
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
        write_snapshot(tmp_path / f"lenet_{epoch - 1}.tar",
                         {"epochs_completed": epoch, "model_state_dict": {"w": torch.zeros(2)}})
    (tmp_path / "lenet_9.tar").write_bytes(b"torn")
    calls = []
    load = ck.torch_load
    monkeypatch.setattr(ck._load, "torch_load", lambda path, mmap=False: calls.append(mmap) or load(path, mmap=mmap))
    assert ck.newest_snapshot(tmp_path) == tmp_path / "lenet_2.tar"
    assert calls and all(calls)
def test_weight_configuration_compares_only_what_changes_the_weights():
    from dataclasses import asdict, replace

    from hparr.data import DataOptions
    from hparr.training import TrainSettings, configuration_differences, weight_configuration

    seeds = {"seed": 0, "noise_seed": 11, "split_seed": 12, "class_sample_seed": 13}
    base = TrainSettings(arch="lenet", data=DataOptions(dataset="digits"), lr=0.01, seed=0)

    def differences(changed, changed_seeds=seeds, reference=base):
        return configuration_differences(weight_configuration(asdict(reference), seeds),
                                         weight_configuration(asdict(changed), changed_seeds))

    assert differences(replace(base, lr=0.05)) == ["--lr 0.01 there, 0.05 here"]
    assert differences(replace(base, data=DataOptions(dataset="digits", augmentation=True))) == [
        "--augmentation off there, on here"]
    assert differences(replace(base, batch_size=64, lr_step=2, lr_decay=0.5)) == [
        "--batch-size 128 there, 64 here", "--lr-step 0 there, 2 here", "--lr-decay 0 there, 0.5 here"]
    assert differences(base, {**seeds, "seed": 5}) == ["--seed 0 there, 5 here"]
    # where files go, how often snapshots are written, the device and arithmetic, how long: the same run
    assert differences(replace(base, epochs=50, models_path="/elsewhere", tb_logdir=None, log="x.log", workers=0,
                               progress=False, cuda=True, amp="bf16", channels_last="off", sync_bn=True,
                               snapshot_every=1, snapshot_all_until=3, kill_plateaus=True, train_acc=True,
                               resume_from="auto", start_epoch=0, data=DataOptions(dataset="digits",
                                                                                   data_path="/data"))) == []
    # a setting without effect in either run is not compared
    assert differences(replace(base, lr_step=3)) == []  # no --lr-decay: no schedule either way
    assert differences(base, {**seeds, "noise_seed": 99, "split_seed": 98}) == []  # no noise, no split
    noisy = replace(base, data=DataOptions(dataset="digits", noise=0.2))
    assert differences(noisy, {**seeds, "noise_seed": 99}, reference=noisy) == ["--noise-seed 11 there, 99 here"]
    adam = TrainSettings(arch="lenet", data=DataOptions(dataset="digits"), lr=0.01, seed=0, optimizer="adam")
    assert adam.weight_decay == 0.0  # as the paper's Adam; SGD's default is 1e-4
    assert differences(replace(adam, momentum=0.5), reference=adam) == []  # momentum is SGD's alone
    assert differences(replace(adam, weight_decay=0.01), reference=adam) == ["--weight-decay 0.0 there, 0.01 here"]
    # a fresh start at a later epoch is another run; a resume takes its epoch from the snapshot
    assert differences(replace(base, start_epoch=1)) == ["--start-epoch 0 there, 1 here"]
    assert differences(replace(base, start_epoch=1, resume_from="auto")) == []


def test_a_file_that_is_not_a_snapshot_says_so(tmp_path):
    (tmp_path / "notes.txt").write_text("abc")
    (tmp_path / "empty.pt").write_bytes(b"")
    (tmp_path / "image.pt").write_bytes(b"\x89PNG\r\n\x1a\n" + bytes(range(256)))
    with pytest.raises(HparrError, match=r"notes.txt is not a checkpoint hparr can read .*found text starting "
                                         r"with 'abc'"):
        ck.torch_load(tmp_path / "notes.txt")
    with pytest.raises(HparrError, match="empty.pt is not a checkpoint hparr can read .*found an empty file"):
        ck.torch_load(tmp_path / "empty.pt")
    with pytest.raises(HparrError, match="image.pt is not a checkpoint hparr can read .*found 264 bytes starting "
                                         "with 89 50 4e 47"):
        ck.torch_load(tmp_path / "image.pt")
    good = build_model("lenet", seed=1).state_dict()
    torch.save(good, tmp_path / "legacy.pt", _use_new_zipfile_serialization=False)  # a pickle, not a zip
    assert torch.equal(ck.torch_load(tmp_path / "legacy.pt")["features.0.weight"], good["features.0.weight"])
