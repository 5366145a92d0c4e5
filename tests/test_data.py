"""hparr.data through its real loaders, from files written in the official formats."""
from __future__ import annotations

import logging
import pickle
import shutil
import subprocess
import sys

import numpy as np
import pytest
import torch

from bench import fakedata
from hparr import data as hd
from hparr.cli import main
from hparr.data import DataOptions, ImageSet, ResidentLoader, TensorLoader, formats, load_data, make_loader
from hparr.data import _load as loading
from hparr.errors import HparrError, UsageError

N_TRAIN, N_TEST = 5000, 1000


def _key(images: torch.Tensor) -> list[bytes]:
    return [bytes(img.numpy().tobytes()) for img in images]


@pytest.fixture(scope="module")
def cifar10(tmp_path_factory):
    root = tmp_path_factory.mktemp("cifar10")
    arrays = (fakedata.random_images(N_TRAIN, 3, 32, 32, 1), fakedata.random_labels(N_TRAIN, 10, 1),
              fakedata.random_images(N_TEST, 3, 32, 32, 2), fakedata.random_labels(N_TEST, 10, 2))
    fakedata.write_cifar10(root, *arrays)
    return root, arrays


@pytest.fixture(scope="module")
def imagenet(tmp_path_factory):
    root = tmp_path_factory.mktemp("imagenet")
    fakedata.write_imagenet(root, ["n001", "n002", "n003"], train_per_class=30, val_per_class=2)
    return root


def _cifar(root, **kw):
    return load_data(DataOptions(dataset="cifar10", data_path=str(root), **kw))


# ---------------------------------------------------------------------------------------------- datasets


def test_dataset_info():
    assert hd.DATASETS == ("digits", "mnist", "fashionmnist", "kmnist", "cifar10", "cifar100", "svhn", "imagenet")
    info = hd.dataset_info("imagenet")
    assert (info.num_classes, info.in_channels, info.image_size) == (1000, 3, 224)
    assert hd.dataset_info("mnist").mean == (0.1307,) and hd.dataset_info("mnist").std == (0.3015,)
    with pytest.raises(UsageError, match="cifar100"):
        hd.dataset_info("emnist")


def test_digits_split_and_normalization_constants():
    from sklearn.datasets import load_digits

    d = load_data(DataOptions(dataset="digits"))
    assert (len(d.train), len(d.test)) == (1347, 450)
    assert d.train.images.shape == (1347, 1, 32, 32) and d.train.images.dtype == torch.uint8
    assert d.train.labels.dtype == torch.int64 and d.train.images.is_contiguous()
    assert int(d.train.images.max()) == 255 and int(d.train.images.min()) == 0
    target = load_digits().target
    both = np.bincount(np.concatenate([d.train.labels.numpy(), d.test.labels.numpy()]), minlength=10)
    assert both.tolist() == np.bincount(target, minlength=10).tolist()
    # stratified: every class keeps its share of the test set
    share = np.bincount(d.test.labels.numpy(), minlength=10) / np.bincount(target, minlength=10)
    assert np.all(np.abs(share - 450 / 1797) < 0.01)
    # the hard-coded constants are the training images' per-channel mean/std in [0, 1]
    x = d.train.images.double() / 255
    assert d.mean == pytest.approx((x.mean().item(),), abs=1e-4)
    assert d.std == pytest.approx((x.std(unbiased=False).item(),), abs=1e-4)
    assert d.meta["normalization"]["mean"] == list(d.mean)
    assert load_data(DataOptions(dataset="digits")).train.images.equal(d.train.images)


def test_cifar10_from_official_files(cifar10):
    root, (x_tr, y_tr, x_te, y_te) = cifar10
    d = _cifar(root)
    assert torch.equal(d.train.images, torch.from_numpy(x_tr)) and torch.equal(d.train.labels, torch.from_numpy(y_tr))
    assert torch.equal(d.test.images, torch.from_numpy(x_te)) and torch.equal(d.test.labels, torch.from_numpy(y_te))
    assert d.train.labels.dtype == torch.int64 and d.val is None and d.classes is None
    assert (d.num_classes, d.in_channels, d.image_size) == (10, 3, 32)
    assert d.mean == (0.4914, 0.4822, 0.4465) and d.std == (0.2023, 0.1994, 0.2010)
    assert d.meta["sizes"] == {"train": N_TRAIN, "val": 0, "test": N_TEST}
    assert {"hparr", "torch", "torchvision", "numpy"} <= set(d.meta["versions"])
    u = _cifar(root, unnormalize=True)
    assert u.mean == (0.0, 0.0, 0.0) and u.std == (1.0, 1.0, 1.0)


@pytest.mark.parametrize("protocol", [None, 2, 4])  # None: Python 2 pickles, as the official files
def test_cifar100_fine_labels(tmp_path, protocol):
    x_tr, y_tr = fakedata.random_images(300, 3, 32, 32, 3), fakedata.random_labels(300, 100, 3)
    x_te, y_te = fakedata.random_images(120, 3, 32, 32, 4), fakedata.random_labels(120, 100, 4)
    fakedata.write_cifar100(tmp_path, x_tr, y_tr, x_te, y_te, protocol=protocol)
    d = load_data(DataOptions(dataset="cifar100", data_path=str(tmp_path)))
    assert d.num_classes == 100 and d.mean == (0.5071, 0.4865, 0.4409)
    assert torch.equal(d.train.images, torch.from_numpy(x_tr)) and d.train.labels.tolist() == y_tr.tolist()
    assert d.test.labels.tolist() == y_te.tolist()


@pytest.mark.parametrize("gz,flat", [(False, False), (True, False), (False, True), (True, True)])
def test_mnist_idx_layouts(tmp_path, gz, flat):
    x_tr, y_tr = fakedata.random_images(60, 1, 28, 28, 5)[:, 0], fakedata.random_labels(60, 10, 5)
    x_te, y_te = fakedata.random_images(20, 1, 28, 28, 6)[:, 0], fakedata.random_labels(20, 10, 6)
    fakedata.write_mnist(tmp_path, x_tr, y_tr, x_te, y_te, gz=gz, flat=flat)
    d = load_data(DataOptions(dataset="mnist", data_path=str(tmp_path)))
    assert d.train.images.shape == (60, 1, 28, 28) and d.test.images.shape == (20, 1, 28, 28)
    assert torch.equal(d.train.images[:, 0], torch.from_numpy(x_tr)) and d.train.labels.tolist() == y_tr.tolist()
    assert torch.equal(d.test.images[:, 0], torch.from_numpy(x_te)) and d.test.labels.tolist() == y_te.tolist()
    assert (d.in_channels, d.image_size, d.mean, d.std) == (1, 28, (0.1307,), (0.3015,))


def test_imagenet_folder(imagenet):
    d = load_data(DataOptions(dataset="imagenet", data_path=str(imagenet), unnormalize=True))
    assert (d.num_classes, len(d.train), len(d.test), d.image_size) == (3, 90, 6, 224)
    assert d.train.targets == [0] * 30 + [1] * 30 + [2] * 30 and d.test.targets == [0, 0, 1, 1, 2, 2]
    x, y = d.test[3]
    assert x.shape == (3, 224, 224) and x.dtype == torch.float32 and y == 1
    assert 0.0 <= float(x.min()) and float(x.max()) <= 1.0
    n = load_data(DataOptions(dataset="imagenet", data_path=str(imagenet)))
    xn, _ = n.test[3]
    mean, std = torch.tensor(n.mean).view(3, 1, 1), torch.tensor(n.std).view(3, 1, 1)
    assert torch.allclose(xn, (x - mean) / std, atol=1e-5)


# ---------------------------------------------------------------------------------------------- errors


def test_missing_datasets_name_expected_files(tmp_path):
    cases = {"cifar10": ["cifar-10-batches-py", "data_batch_1..5", "test_batch", "--download"],
             "cifar100": ["cifar-100-python", "train and test"],
             "mnist": ["MNIST/raw", "train-images-idx3-ubyte", "t10k-labels-idx1-ubyte"],
             "imagenet": ["train/<wnid>/*.JPEG", "val/<wnid>/*.JPEG"]}
    for name, parts in cases.items():
        with pytest.raises(HparrError) as err:
            load_data(DataOptions(dataset=name, data_path=str(tmp_path)))
        assert all(p in str(err.value) for p in parts), str(err.value)
        assert type(err.value) is HparrError and "\n" not in str(err.value)


def test_unusable_imagenet_folders(imagenet, tmp_path):
    (tmp_path / "train").mkdir()
    (tmp_path / "val").mkdir()
    with pytest.raises(HparrError, match="imagenet folder .*train is unusable"):
        load_data(DataOptions(dataset="imagenet", data_path=str(tmp_path)))
    root = tmp_path / "copy"
    shutil.copytree(imagenet, root)
    shutil.copytree(root / "val" / "n003", root / "val" / "n999")
    with pytest.raises(HparrError, match="class folders missing from .*train: n999"):
        load_data(DataOptions(dataset="imagenet", data_path=str(root)))
    shutil.rmtree(root / "val" / "n999")
    shutil.rmtree(root / "val" / "n002")  # a val tree lacking a class keeps the train labels
    d = load_data(DataOptions(dataset="imagenet", data_path=str(root)))
    assert d.test.targets == [0, 0, 2, 2] and d.num_classes == 3
    bad = sorted((root / "val" / "n001").iterdir())[0]
    bad.write_bytes(b"not a jpeg")
    with pytest.raises(HparrError, match=f"cannot read image {bad}"):
        d.test[0]


def _small_cifar(root):
    fakedata.write_cifar10(root, fakedata.random_images(50, 3, 32, 32), fakedata.random_labels(50, 10),
                          fakedata.random_images(10, 3, 32, 32, 1), fakedata.random_labels(10, 10, 1))
    return root / "cifar-10-batches-py"


def test_incomplete_and_malformed_cifar(tmp_path):
    folder = _small_cifar(tmp_path)
    (folder / "data_batch_3").unlink()
    with pytest.raises(HparrError, match="missing data_batch_3"):
        _cifar(tmp_path)
    folder = _small_cifar(tmp_path)
    raw = (folder / "test_batch").read_bytes()
    (folder / "test_batch").write_bytes(raw[: len(raw) // 2])
    with pytest.raises(HparrError, match="test_batch"):
        _cifar(tmp_path)
    folder = _small_cifar(tmp_path)
    (folder / "data_batch_2").write_bytes(pickle.dumps({b"data": np.zeros((4, 100), np.uint8), b"labels": [0] * 4}))
    with pytest.raises(HparrError, match="data_batch_2.*uint8 \\(N, 3072\\)"):
        _cifar(tmp_path)


class _Evil:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (exec, (f"open({str(self.marker)!r}, 'w').close()",))


def test_tampered_pickle_is_refused(tmp_path):
    folder = _small_cifar(tmp_path)
    marker = tmp_path / "executed"
    (folder / "data_batch_4").write_bytes(pickle.dumps({b"data": _Evil(marker), b"labels": []}, protocol=2))
    with pytest.raises(HparrError, match="refused to load .*data_batch_4.*forbidden global .*\\.exec"):
        _cifar(tmp_path)
    assert not marker.exists()


def test_malformed_idx(tmp_path):
    x, y = fakedata.random_images(10, 1, 28, 28)[:, 0], fakedata.random_labels(10, 10)
    paths = fakedata.write_mnist(tmp_path, x, y, x, y)
    raw = paths[0].read_bytes()
    paths[0].write_bytes(b"\x00\x00\x09\x03" + raw[4:])
    with pytest.raises(HparrError, match="train-images-idx3-ubyte: bad magic"):
        load_data(DataOptions(dataset="mnist", data_path=str(tmp_path)))
    paths[0].write_bytes(raw[:-7])
    with pytest.raises(HparrError, match="malformed IDX file .*train-images-idx3-ubyte"):
        load_data(DataOptions(dataset="mnist", data_path=str(tmp_path)))
    paths[0].write_bytes(raw)
    fakedata.write_idx(paths[3], np.full(10, 12, np.uint8))
    with pytest.raises(HparrError, match="t10k-labels-idx1-ubyte: labels outside"):
        load_data(DataOptions(dataset="mnist", data_path=str(tmp_path)))


def test_invalid_options(cifar10, imagenet):
    bad = [dict(noise=1.5), dict(noise=-0.5), dict(noise=-2), dict(split=1.0), dict(split=-0.1),
           dict(subsample_classes=11), dict(subsample_classes=-1), dict(noise=float("nan")),
           dict(noise_seed=-3), dict(dataset="emnist"), dict(train_size=0), dict(train_size=-1),
           dict(train_size_seed=-2)]
    for kw in bad:
        with pytest.raises(UsageError):
            DataOptions(**{"dataset": "cifar10", **kw}).validate()
    with pytest.raises(UsageError, match="noise"):
        _cifar(cifar10[0], noise=1.5)
    with pytest.raises(UsageError, match=r"^--subsample-classes must be 0 \(all\) or 2\.\.3, got 4$"):  # its folders
        load_data(DataOptions(dataset="imagenet", data_path=str(imagenet), subsample_classes=4))
    DataOptions(dataset="cifar10", noise=-1, split=0.5, subsample_classes=10).validate()


def test_a_class_subset_is_all_classes_or_two_to_the_class_count():
    # one rule: the class count is the catalog's for a built-in dataset (ImageNet's 1000 until its class folders
    # are read), else unknown until the data is read (an image folder, a factory's data), then the count read
    for dataset, n in (("digits", 10), ("cifar100", 100), ("imagenet", 1000),
                       ("imagefolder", "the class count")):
        assert [hd.check_subsample_classes(dataset, k) for k in (0, 2, 10)] == [0, 2, 10]
        for k in (1, -1, 2.0, True, "3"):
            with pytest.raises(UsageError) as refused:
                DataOptions(dataset=dataset, subsample_classes=k).validate()
            shown = k if isinstance(k, int) and not isinstance(k, bool) else repr(k)
            assert str(refused.value) == f"--subsample-classes must be 0 (all) or 2..{n}, got {shown}"
    with pytest.raises(UsageError, match=r"2\.\.10, got 11"):
        hd.check_subsample_classes("cifar10", 11)
    with pytest.raises(UsageError, match=r"2\.\.1000, got 1001"):  # ImageNet-1k: at most 1000 before it is read
        hd.check_subsample_classes("imagenet", 1001)
    with pytest.raises(UsageError, match=r"2\.\.1000, got 1001"):
        hd.check_subsample_classes("imagenet", 1001, num_classes=1000)  # as read
    assert hd.check_subsample_classes("imagefolder", 3, num_classes=3) == 3


def test_train_refuses_a_single_class_subset_and_writes_nothing(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    argv = ["train", "--arch", "lenet", "--dataset", "digits", "--subsample-classes", "1", "--epochs", "1",
            "--models-path", str(tmp_path / "models"), "--tb-logdir", str(tmp_path / "tb")]
    assert main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == ["hparr train: error: --subsample-classes must be 0 (all) or 2..10, got 1"]
    assert list(tmp_path.iterdir()) == []


def test_reading_an_in_memory_dataset_does_not_import_torchvision():
    code = ("import sys; from hparr.data import DataOptions, load_data, make_loader; "
            "d = load_data(DataOptions(augmentation=True)); next(iter(make_loader(d, 'train', 8))); "
            "print(sorted(m for m in sys.modules if m.split('.')[0] == 'torchvision'))")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "[]"


# ---------------------------------------------------------------------------------------------- options


def test_label_noise(cifar10, caplog):
    root, _ = cifar10
    clean = _cifar(root)
    np_state, torch_state = np.random.get_state()[1].copy(), torch.get_rng_state()
    with caplog.at_level(logging.INFO, logger="hparr.data"):
        d = _cifar(root, noise=0.4, noise_seed=3)
    assert np.array_equal(np.random.get_state()[1], np_state) and torch.equal(torch.get_rng_state(), torch_state)
    changed = d.train.labels != clean.train.labels
    meta = d.meta["label_noise"]
    assert meta["count"] == int(changed.sum()) and meta["seed"] == 3
    assert abs(meta["realised_ratio"] - 0.4) < 0.03 and meta["realised_ratio"] == pytest.approx(meta["count"] / N_TRAIN)
    assert any(f"{meta['count']} of {N_TRAIN}" in r.getMessage() for r in caplog.records)
    # the new class is uniform over the 9 other classes
    shift = ((d.train.labels - clean.train.labels) % 10)[changed]
    counts = np.bincount(shift.numpy(), minlength=10)
    assert counts[0] == 0 and np.all(np.abs(counts[1:] - meta["count"] / 9) < 80)
    assert torch.equal(d.train.images, clean.train.images)
    assert torch.equal(d.test.labels, clean.test.labels) and torch.equal(d.test.images, clean.test.images)
    assert torch.equal(_cifar(root, noise=0.4, noise_seed=3).train.labels, d.train.labels)
    assert not torch.equal(_cifar(root, noise=0.4, noise_seed=4).train.labels, d.train.labels)
    assert bool((_cifar(root, noise=1.0).train.labels != clean.train.labels).all())


def test_split_in_order_takes_the_last_samples(cifar10):
    root, (x_tr, y_tr, _, _) = cifar10
    d = _cifar(root, split=0.1)
    assert (len(d.train), len(d.val)) == (4500, 500)
    assert torch.equal(d.val.images, torch.from_numpy(x_tr[-500:])) and d.val.labels.tolist() == y_tr[-500:].tolist()
    assert torch.equal(d.train.images, torch.from_numpy(x_tr[:-500]))
    assert d.meta["split"]["size"] == 500 and d.meta["sizes"] == {"train": 4500, "val": 500, "test": N_TEST}


def test_split_shuffled_is_seeded_and_disjoint(cifar10):
    root, (x_tr, y_tr, _, _) = cifar10
    index = {k: i for i, k in enumerate(_key(torch.from_numpy(x_tr)))}
    d = _cifar(root, split=0.25, shuffle=True, split_seed=1)
    train_ids, val_ids = [index[k] for k in _key(d.train.images)], [index[k] for k in _key(d.val.images)]
    assert len(val_ids) == 1250 and sorted(train_ids + val_ids) == list(range(N_TRAIN))
    assert d.val.labels.tolist() == y_tr[val_ids].tolist()
    assert val_ids != list(range(N_TRAIN - 1250, N_TRAIN))
    assert torch.equal(_cifar(root, split=0.25, shuffle=True, split_seed=1).val.images, d.val.images)
    assert not torch.equal(_cifar(root, split=0.25, shuffle=True, split_seed=2).val.images, d.val.images)


def test_split_stratified_is_balanced(cifar10):
    root, (x_tr, y_tr, _, _) = cifar10
    index = {k: i for i, k in enumerate(_key(torch.from_numpy(x_tr)))}
    for shuffle in (False, True):
        d = _cifar(root, split=0.1, stratified=True, shuffle=shuffle, split_seed=5)
        assert np.bincount(d.val.labels.numpy(), minlength=10).tolist() == [50] * 10
        assert d.meta["split"]["per_class"] == [50] * 10 and len(d.train) == N_TRAIN - 500
        val_ids = sorted(index[k] for k in _key(d.val.images))
        if not shuffle:  # the last 50 samples of every class
            expected = sorted(i for c in range(10) for i in np.flatnonzero(y_tr == c)[-50:])
            assert val_ids == expected


def test_split_then_noise_leaves_validation_clean(cifar10):
    root, (x_tr, y_tr, _, y_te) = cifar10
    d = _cifar(root, split=0.2, shuffle=True, split_seed=0, noise=0.5, noise_seed=1)
    index = {k: i for i, k in enumerate(_key(torch.from_numpy(x_tr)))}
    val_ids = [index[k] for k in _key(d.val.images)]
    train_ids = [index[k] for k in _key(d.train.images)]
    assert d.val.labels.tolist() == y_tr[val_ids].tolist() and d.test.labels.tolist() == y_te.tolist()
    changed = int((d.train.labels.numpy() != y_tr[train_ids]).sum())
    assert changed == d.meta["label_noise"]["count"] and abs(changed / 4000 - 0.5) < 0.04


def test_subsample_classes(cifar10):
    root, (x_tr, y_tr, x_te, y_te) = cifar10
    np_state = np.random.get_state()[1].copy()
    d = _cifar(root, subsample_classes=3, class_sample_seed=7)
    assert np.array_equal(np.random.get_state()[1], np_state)
    assert len(d.classes) == 3 and d.classes == sorted(d.classes) and d.num_classes == 3
    assert d.meta["class_subset"] == {"k": 3, "seed": 7, "classes": d.classes}
    for split, x, y in ((d.train, x_tr, y_tr), (d.test, x_te, y_te)):
        assert set(split.labels.tolist()) == {0, 1, 2}
        for new, old in enumerate(d.classes):
            assert torch.equal(split.images[split.labels == new], torch.from_numpy(x[y == old]))
    assert _cifar(root, subsample_classes=3, class_sample_seed=7).classes == d.classes
    assert any(_cifar(root, subsample_classes=3, class_sample_seed=s).classes != d.classes for s in (8, 9))
    full = _cifar(root, subsample_classes=10)
    assert full.classes == list(range(10)) and full.train.labels.tolist() == y_tr.tolist()
    s = _cifar(root, subsample_classes=4, class_sample_seed=1, split=0.1, stratified=True)
    assert np.bincount(s.val.labels.numpy()).tolist() == [int(round(0.1 * len(s.train) / 0.9)) // 4] * 4


def _position_coded_images(n: int) -> np.ndarray:
    """Channel 0 + 256 * channel 1 = pixel position; channel 2 = noise."""
    pos = np.arange(1024).reshape(32, 32)
    images = np.empty((n, 3, 32, 32), np.uint8)
    images[:, 0], images[:, 1] = pos % 256, pos // 256
    images[:, 2] = fakedata.random_images(n, 1, 32, 32, 9)[:, 0]
    return images


def test_pixel_shuffle(tmp_path):
    x_tr, x_te = _position_coded_images(60), _position_coded_images(10)
    fakedata.write_cifar10(tmp_path, x_tr, fakedata.random_labels(60, 10), x_te, fakedata.random_labels(10, 10, 1))
    d = _cifar(tmp_path, noise=-1, noise_seed=5, split=0.2)
    assert d.meta["pixel_shuffle"] == {"seed": 5} and d.meta["label_noise"] is None
    img = d.train.images.numpy().astype(np.int64)
    perms = (img[:, 0] + 256 * img[:, 1]).reshape(len(img), -1)
    assert all(np.array_equal(np.sort(p), np.arange(1024)) for p in perms)
    # the same permutation moved the third channel
    assert np.array_equal(img[:, 2].reshape(len(img), -1), np.take_along_axis(
        x_tr[:48, 2].reshape(48, -1).astype(np.int64), perms, axis=1))
    assert len({p.tobytes() for p in perms}) == len(perms)
    assert torch.equal(d.val.images, torch.from_numpy(x_tr[48:])) and torch.equal(d.test.images, torch.from_numpy(x_te))
    assert torch.equal(_cifar(tmp_path, noise=-1, noise_seed=5, split=0.2).train.images, d.train.images)
    assert not torch.equal(_cifar(tmp_path, noise=-1, noise_seed=6, split=0.2).train.images, d.train.images)
    # fixed across epochs: every epoch shows the same shuffled images
    loader = make_loader(d, "train", 16, generator=torch.Generator().manual_seed(0))
    epochs = []
    for _ in range(2):
        xs = torch.cat([x for x, _ in loader])
        raw = (xs * torch.tensor(d.std).view(1, 3, 1, 1) + torch.tensor(d.mean).view(1, 3, 1, 1)) * 255
        epochs.append(sorted(_key(raw.round().to(torch.uint8))))
    assert epochs[0] == epochs[1] == sorted(_key(d.train.images))


def test_pixel_shuffle_mnist_uses_28x28(tmp_path):
    x, y = fakedata.random_images(40, 1, 28, 28, 2)[:, 0], fakedata.random_labels(40, 10)
    fakedata.write_mnist(tmp_path, x, y, x[:10], y[:10])
    d = load_data(DataOptions(dataset="mnist", data_path=str(tmp_path), noise=-1))
    assert d.train.images.shape == (40, 1, 28, 28)
    shuffled = d.train.images.reshape(40, -1).numpy()
    assert np.array_equal(np.sort(shuffled, axis=1), np.sort(x.reshape(40, -1), axis=1))
    assert not np.any(np.all(shuffled == x.reshape(40, -1), axis=1))


# ---------------------------------------------------------------------------------------------- imagenet options


def test_imagenet_noise_and_subsample(imagenet):
    opts = dict(dataset="imagenet", data_path=str(imagenet))
    clean = load_data(DataOptions(**opts))
    d = load_data(DataOptions(**opts, noise=0.5, noise_seed=2))
    old, new = np.array(clean.train.targets), np.array(d.train.targets)
    assert [p for p, _ in d.train.samples] == [p for p, _ in clean.train.samples]
    assert int((old != new).sum()) == d.meta["label_noise"]["count"] > 20
    assert d.test.targets == clean.test.targets
    assert new.tolist() == [y for _, y in d.train.samples]
    s = load_data(DataOptions(**opts, subsample_classes=2, class_sample_seed=4))
    assert s.num_classes == 2 and len(s.classes) == 2 and s.classes == sorted(s.classes)
    names = [["n001", "n002", "n003"][c] for c in s.classes]
    assert s.meta["class_subset"]["class_names"] == names and s.train.classes == names
    for part in (s.train, s.test):
        for path, label in part.samples:
            assert f"/{names[label]}/" in path
    assert len(s.train) == 60 and len(s.test) == 4


def test_imagenet_pixel_shuffle(imagenet, tmp_path):
    root = tmp_path / "in"
    shutil.copytree(imagenet, root)
    first = sorted((root / "train" / "n001").iterdir())[0]
    shutil.copy(first, first.with_name("n001_copy.JPEG"))  # two identical training images
    clean = load_data(DataOptions(dataset="imagenet", data_path=str(root)))
    d = load_data(DataOptions(dataset="imagenet", data_path=str(root), noise=-1, noise_seed=3))
    paths = [p for p, _ in d.train.samples]
    i, j = paths.index(str(first)), paths.index(str(first.with_name("n001_copy.JPEG")))
    (a, _), (b, _), (ref, _) = d.train[i], d.train[j], clean.train[i]
    assert a.shape == (3, 224, 224) and not torch.equal(a, ref) and not torch.equal(a, b)
    assert torch.equal(d.train[i][0], a)  # fixed across fetches
    # a permutation of the pixel positions, the same for every channel: same multiset of RGB triples
    triples = lambda x: sorted(map(tuple, x.reshape(3, -1).T.tolist()))  # noqa: E731
    assert triples(a) == triples(ref) == triples(b)
    assert torch.equal(d.test[0][0], clean.test[0][0])


def test_imagenet_loader_is_seeded(imagenet):
    d = load_data(DataOptions(dataset="imagenet", data_path=str(imagenet), augmentation=True, split=0.2,
                              stratified=True))
    assert len(d.val) == 18 and d.meta["split"]["per_class"] == [6, 6, 6]
    state = torch.get_rng_state()

    def epoch(workers, seed=0):
        loader = make_loader(d, "train", 8, generator=torch.Generator().manual_seed(seed), workers=workers)
        return [b for b in loader]

    a = epoch(0)
    assert torch.equal(torch.get_rng_state(), state)
    assert len(a) == 9 and a[0][0].shape == (8, 3, 224, 224) and sorted(torch.cat([y for _, y in a]).tolist()) \
        == sorted(d.train.targets)
    b = epoch(2)
    assert all(torch.equal(x1, x2) and torch.equal(y1, y2) for (x1, y1), (x2, y2) in zip(a, b))
    c = epoch(0, seed=1)
    assert not torch.equal(a[0][0], c[0][0])
    ev = list(make_loader(d, "val", 8, workers=0, rank=1, world_size=2))
    assert sum(len(y) for _, y in ev) == 9


# ---------------------------------------------------------------------------------------------- TensorLoader


def _set(n=103, c=3, size=32, seed=0):
    return ImageSet(torch.from_numpy(fakedata.random_images(n, c, size, size, seed)), torch.arange(n))


def test_tensor_loader_covers_every_sample_each_epoch():
    s = _set()
    loader = TensorLoader(s, 10, train=True, augment=None, mean=(0.5,) * 3, std=(0.25,) * 3,
                          generator=torch.Generator().manual_seed(0))
    assert len(loader) == 11
    orders = [torch.cat([y for _, y in loader]) for _ in range(2)]
    for order in orders:
        assert sorted(order.tolist()) == list(range(103))
    assert not torch.equal(orders[0], orders[1])
    dropped = TensorLoader(s, 10, train=True, augment=None, mean=(0,), std=(1,), drop_last=True)
    assert len(dropped) == 10 and [len(y) for _, y in dropped] == [10] * 10


def test_tensor_loader_normalization_and_order():
    s = _set(20)
    mean, std = (0.4914, 0.4822, 0.4465), (0.2023, 0.1994, 0.2010)
    x, y = next(iter(TensorLoader(s, 20, train=False, augment="crop+flip", mean=mean, std=std)))
    expected = (s.images.double() / 255 - torch.tensor(mean, dtype=torch.float64).view(1, 3, 1, 1)) \
        / torch.tensor(std, dtype=torch.float64).view(1, 3, 1, 1)
    assert x.dtype == torch.float32 and y.dtype == torch.int64 and y.tolist() == list(range(20))
    assert torch.allclose(x.double(), expected, atol=1e-5)  # eval: no augmentation, in order
    x, _ = next(iter(TensorLoader(s, 4, train=False, augment=None, mean=mean, std=std, channels_last=True)))
    assert x.is_contiguous(memory_format=torch.channels_last)


def test_tensor_loader_is_deterministic_by_generator():
    s = _set()

    def run(seed):
        loader = TensorLoader(s, 16, train=True, augment="crop+flip", mean=(0.5,) * 3, std=(0.2,) * 3,
                              generator=torch.Generator().manual_seed(seed))
        return [b for _ in range(2) for b in loader]

    a, b, c = run(1), run(1), run(2)
    assert all(torch.equal(x1, x2) and torch.equal(y1, y2) for (x1, y1), (x2, y2) in zip(a, b))
    assert not torch.equal(a[0][1], c[0][1])
    state = torch.get_rng_state()
    run(3)
    assert torch.equal(torch.get_rng_state(), state)


@pytest.mark.parametrize("augment,channels,size", [("crop+flip", 3, 32), ("crop", 1, 28)])
def test_tensor_loader_augmentation_is_a_padded_crop(augment, channels, size):
    s = _set(30, channels, size, seed=4)
    padded = torch.nn.functional.pad(s.images, (4, 4, 4, 4))
    loader = TensorLoader(s, 8, train=True, augment=augment, mean=(0.0,) * channels, std=(1.0,) * channels,
                          generator=torch.Generator().manual_seed(0))
    seen_offsets, seen_flips = set(), set()
    for _ in range(3):
        for x, y in loader:
            assert x.shape == (len(y), channels, size, size)
            raw = (x * 255).round().to(torch.uint8)
            for img, label in zip(raw, y.tolist()):
                matches = [(dy, dx, f) for dy in range(9) for dx in range(9) for f in (False, True)
                           if torch.equal(img, (lambda v: v.flip(2) if f else v)(
                               padded[label, :, dy:dy + size, dx:dx + size]))]
                assert len(matches) == 1, matches
                seen_offsets.add(matches[0][:2])
                seen_flips.add(matches[0][2])
    assert len(seen_offsets) > 20
    assert seen_flips == ({False, True} if "flip" in augment else {False})


def test_tensor_loader_ddp_slicing():
    s = _set(103)
    ev = [TensorLoader(s, 10, train=False, augment=None, mean=(0,), std=(1,), rank=r, world_size=3)
          for r in range(3)]
    parts = [torch.cat([y for _, y in loader]).tolist() for loader in ev]
    assert sorted(sum(parts, [])) == list(range(103)) and [len(p) for p in parts] == [35, 34, 34]
    tr = [TensorLoader(s, 10, train=True, augment="crop+flip", mean=(0,), std=(1,), rank=r, world_size=4,
                       generator=torch.Generator().manual_seed(7)) for r in range(4)]
    parts = [torch.cat([y for _, y in loader]).tolist() for loader in tr]
    assert {len(loader) for loader in tr} == {3} and [len(p) for p in parts] == [26] * 4
    flat = sum(parts, [])
    assert sorted(set(flat)) == list(range(103)) and len(flat) == 104
    with pytest.raises(UsageError):
        TensorLoader(s, 10, train=False, augment=None, mean=(0,), std=(1,), rank=3, world_size=3)
    with pytest.raises(UsageError):
        TensorLoader(s, 10, train=False, augment="rotate", mean=(0,), std=(1,))


def test_make_loader(cifar10):
    root, _ = cifar10
    d = _cifar(root, augmentation=True, split=0.1)
    train, test = make_loader(d, "train", 128), make_loader(d, "test", 256)
    assert (train.crop, train.flip, train.train) == (True, True, True)
    assert (test.crop, test.flip, test.train) == (False, False, False) and len(test) == 4
    x, y = next(iter(train))
    assert x.shape == (128, 3, 32, 32) and y.dtype == torch.int64
    in_order = make_loader(d, "train", 100, train=False)
    assert torch.equal(next(iter(in_order))[1], d.train.labels[:100])
    digits = load_data(DataOptions(dataset="digits", augmentation=True))
    dl = make_loader(digits, "train", 64)
    assert (dl.crop, dl.flip) == (True, False)
    with pytest.raises(UsageError, match="no validation split"):
        make_loader(digits, "val", 64)
    with pytest.raises(UsageError):
        make_loader(digits, "holdout", 64)


# ---------------------------------------------------------------------------------------------- ResidentLoader


def _same_epochs(a, b, epochs=2):
    """Both loaders' batches over `epochs` epochs are equal: values, labels and memory layout."""
    assert len(a) == len(b)
    count = 0
    for (xa, ya), (xb, yb) in zip([bt for _ in range(epochs) for bt in a], [bt for _ in range(epochs) for bt in b],
                                  strict=True):
        assert torch.equal(xa, xb) and torch.equal(ya, yb)
        assert xa.dtype == xb.dtype == torch.float32 and xa.device == xb.device
        for layout in (torch.contiguous_format, torch.channels_last):
            assert xa.is_contiguous(memory_format=layout) == xb.is_contiguous(memory_format=layout)
        count += 1
    assert count == epochs * len(a)


@pytest.mark.parametrize("augment,channels,size", [("crop+flip", 3, 32), ("crop", 1, 28), ("flip", 3, 32)])
def test_resident_loader_gives_the_tensor_loaders_batches(augment, channels, size):
    # the device-resident path, run here on the CPU, against the CPU path: same seed, same batches
    s = _set(103, channels, size, seed=5)
    mean, std = (0.4914, 0.4822, 0.4465)[:channels], (0.2023, 0.1994, 0.2010)[:channels]
    cases = [dict(train=True), dict(train=True, channels_last=True, drop_last=True, rank=1, world_size=3),
             dict(train=False, channels_last=True), dict(train=False, rank=2, world_size=3)]
    for kw in cases:
        gens = [torch.Generator().manual_seed(11) for _ in range(2)]
        cpu, dev = (cls(s, 16, augment=augment, mean=mean, std=std, generator=g, **kw)
                    for cls, g in zip((TensorLoader, ResidentLoader), gens))
        _same_epochs(cpu, dev)
        assert torch.equal(gens[0].get_state(), gens[1].get_state())  # the same draws: resumes agree


def test_make_loader_picks_the_resident_path_and_places_each_split_once(cifar10):
    root, _ = cifar10
    d = _cifar(root, augmentation=True, split=0.1)
    assert type(make_loader(d, "train", 64)) is TensorLoader  # the CPU keeps the CPU path by default
    for split in ("train", "val", "test"):
        cpu = make_loader(d, split, 128, generator=torch.Generator().manual_seed(2), channels_last=True)
        dev = make_loader(d, split, 128, generator=torch.Generator().manual_seed(2), channels_last=True,
                          resident=True)
        assert type(dev) is ResidentLoader and (dev.crop, dev.flip) == (cpu.crop, cpu.flip)
        _same_epochs(cpu, dev, epochs=1)
    again = make_loader(d, "test", 32, resident=True)
    assert again._pixels is make_loader(d, "test", 500, resident=True)._pixels  # one copy per split


def test_keep_decoded_decodes_a_dataset_once_per_process(cifar10, monkeypatch):
    root, _ = cifar10
    calls = []
    real = formats._load_cifar
    monkeypatch.setattr(formats, "_load_cifar", lambda *a: calls.append(a) or real(*a))
    monkeypatch.setattr(loading, "_decoded", None)
    clean = load_data(DataOptions(dataset="cifar10", data_path=str(root)))
    hd.keep_decoded(True)
    try:
        first = load_data(DataOptions(dataset="cifar10", data_path=str(root), noise=0.5, noise_seed=1))
        first.train.images.zero_()  # each call gets its own copy: the kept arrays stay as decoded
        again = load_data(DataOptions(dataset="cifar10", data_path=str(root)))
        shuffled = load_data(DataOptions(dataset="cifar10", data_path=str(root), noise=-1.0, noise_seed=1))
    finally:
        hd.keep_decoded(False)
    assert len(calls) == 2  # one without keeping, one for the three calls that kept it
    assert torch.equal(again.train.images, clean.train.images) and torch.equal(again.test.labels, clean.test.labels)
    assert not torch.equal(first.train.labels, clean.train.labels)  # the options still apply per call
    assert not torch.equal(shuffled.train.images, clean.train.images)
    load_data(DataOptions(dataset="cifar10", data_path=str(root)))
    assert len(calls) == 3  # keeping is off again


def test_a_test_only_load_reads_no_training_file_and_gives_the_same_test_set(cifar10, tmp_path, monkeypatch):
    root, _ = cifar10
    read = []  # the CIFAR batch files decoded
    reader = formats._read_cifar_batch
    monkeypatch.setattr(formats, "_read_cifar_batch", lambda path, *a: read.append(path.name) or reader(path, *a))
    options = DataOptions(dataset="cifar10", data_path=str(root), subsample_classes=4, class_sample_seed=3,
                          split=0.1, train_size=500, noise=0.5, noise_seed=1)
    full = load_data(options)
    assert read == [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]
    read.clear()
    test_only = load_data(options, splits=("test",))
    assert read == ["test_batch"]
    assert test_only.train is None and test_only.val is None and test_only.options == options
    assert torch.equal(test_only.test.images, full.test.images) and torch.equal(test_only.test.labels,
                                                                               full.test.labels)
    assert (test_only.classes, test_only.num_classes) == (full.classes, full.num_classes) and full.classes
    meta = test_only.meta
    assert meta["splits_read"] == ["test"] and "splits_read" not in full.meta
    assert meta["class_subset"] == full.meta["class_subset"]
    assert (meta["split"], meta["train_subset"], meta["label_noise"]) == (None, None, None)
    assert meta["sizes"] == {"train": 0, "val": 0, "test": len(full.test)}
    with pytest.raises(HparrError, match="train split was not read"):
        make_loader(test_only, "train", 32)
    with pytest.raises(UsageError, match="reads the splits"):
        load_data(options, splits=("validation",))

    # MNIST: only the t10k files are opened
    x, y = fakedata.random_images(30, 1, 28, 28, 5)[:, 0], fakedata.random_labels(30, 10, 5)
    fakedata.write_mnist(tmp_path, x, y, x[:10], y[:10], gz=False, flat=True)
    opened = []
    read_idx = formats.read_idx
    monkeypatch.setattr(formats, "read_idx", lambda path: opened.append(path.name) or read_idx(path))
    d = load_data(DataOptions(dataset="mnist", data_path=str(tmp_path)), splits=("test",))
    assert opened == ["t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"]
    assert torch.equal(d.test.images[:, 0], torch.from_numpy(x[:10]))


def test_kept_arrays_of_a_test_only_load_are_read_again_for_a_training_load(cifar10, monkeypatch):
    root, _ = cifar10
    calls = []
    real = formats._load_cifar
    monkeypatch.setattr(formats, "_load_cifar", lambda *a: calls.append(a[-1]) or real(*a))
    monkeypatch.setattr(loading, "_decoded", None)
    options = DataOptions(dataset="cifar10", data_path=str(root))
    clean = load_data(options)
    hd.keep_decoded(True)
    try:
        load_data(options, splits=("test",))
        load_data(options, splits=("test",))
        full = load_data(options)
        again = load_data(options, splits=("test",))
    finally:
        hd.keep_decoded(False)
    assert calls == [True, False, True]  # the test-only read is kept, the training files read when asked for
    assert torch.equal(full.train.images, clean.train.images) and again.train is None
    assert torch.equal(again.test.images, clean.test.images)
