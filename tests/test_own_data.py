"""Data of one's own: an image folder of PNG files written here (`--dataset imagefolder --data-path DIR`) and a
factory of torch Datasets (`--dataset own_data:shapes`, tests/own_data.py), read against torchvision's ImageFolder
and Pillow, then through every stage: train, projections, reinit (test and training split), report, study."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import own_data
import pytest
import torch
from PIL import Image

from hparr import layout
from hparr.checkpoints import torch_load
from hparr.cli import main
from hparr.data import DataOptions, check_files, dataset_kind, describe, load_data
from hparr.data import _imagefolder as imagefolder
from hparr.data._factory import materialize
from hparr.errors import HparrError, UsageError

TESTS = Path(__file__).resolve().parent


@pytest.fixture(scope="module")
def folder(tmp_path_factory) -> Path:
    """Three classes of 12x12 PNGs, 10 training and 4 validation images each, every third one gray."""
    return own_data.write_image_folder(tmp_path_factory.mktemp("own") / "shapes")


@pytest.fixture
def on_path(monkeypatch, tmp_path):
    monkeypatch.chdir(tmp_path)
    monkeypatch.syspath_prepend(str(TESTS))  # as PYTHONPATH=tests


def run(capsys, *argv) -> tuple[int, str, str]:
    rc = main([*map(str, argv)])
    out = capsys.readouterr()
    return rc, out.out, out.err


def one_error(err: str) -> str:
    errors = [line for line in err.strip().splitlines() if "error:" in line]
    assert len(errors) == 1 and "Traceback" not in err, err
    return errors[0]


# ------------------------------------------------------------------------------------------------- names


def test_what_a_dataset_name_is():
    assert [dataset_kind(n) for n in ("cifar10", "imagefolder", "own_data:shapes", "a.b.c:make.inner")] == \
        ["builtin", "imagefolder", "factory", "factory"]
    for bad in ("stl10", "own_data:", ":make", "a b:c", "1mod:f", None):
        with pytest.raises(UsageError, match="unknown dataset"):
            dataset_kind(bad)
    assert layout.dataset_folder("own_data:shapes", 2) == "own_data-shapes_2"
    assert layout.cell_path("lenet", "pkg.mod:make", 0) == Path("cells/lenet/pkg.mod-make/clean/seed_0")
    with pytest.raises(UsageError, match="--input-size resizes the images of --dataset imagefolder"):
        DataOptions(dataset="digits", input_size=16).validate()
    with pytest.raises(UsageError, match="--dataset-args are the arguments of a dataset factory"):
        DataOptions(dataset="imagefolder", dataset_args="n=1").validate()
    with pytest.raises(UsageError, match="expected key=value"):
        DataOptions(dataset="own_data:shapes", dataset_args="n").validate()


# ------------------------------------------------------------------------------------------ image folder


def test_an_image_folder_reads_as_torchvision_lists_it_and_pillow_decodes_it(folder):
    from torchvision.datasets import ImageFolder
    from torchvision.datasets.folder import default_loader

    data = load_data(DataOptions(dataset="imagefolder", data_path=str(folder)))
    train, val = ImageFolder(str(folder / "train")), ImageFolder(str(folder / "val"))
    # classes, their order, the order of the files and their labels: torchvision's
    assert data.meta["source"]["files"] == {"train": 30, "test": 12} and data.num_classes == 3
    assert data.train.labels.tolist() == train.targets and data.test.labels.tolist() == val.targets
    # most images are RGB (24 of 42): the gray ones are converted, as default_loader converts them
    assert (data.in_channels, data.image_size) == (3, 12)
    expected = np.stack([np.asarray(default_loader(p)).transpose(2, 0, 1) for p, _ in train.samples])
    assert np.array_equal(data.train.images.numpy(), expected)
    # mean and std of the training images, per channel, as numpy computes them
    x = expected.astype(np.float64) / 255
    assert data.mean == pytest.approx(tuple(x.mean(axis=(0, 2, 3))), abs=1e-12)
    assert data.std == pytest.approx(tuple(x.std(axis=(0, 2, 3))), abs=1e-12)
    assert data.meta["normalization"]["mean"] == list(data.mean)
    assert data.meta["source"]["channels"] == {"gray": 18, "rgb": 24, "used": "rgb"}
    assert data.meta["source"]["path"] == str(folder.resolve())

    # a folder of mostly gray images is read gray; test/ where there is no val/
    gray = own_data.write_image_folder(folder.parent / "gray", train_per_class=3, val_per_class=1, gray_every=1,
                                       eval_folder="test")
    Image.fromarray(own_data.class_image(0, 12, np.random.default_rng(5))).save(gray / "train" / "circle" / "x.png")
    data = load_data(DataOptions(dataset="imagefolder", data_path=str(gray)))
    assert data.in_channels == 1 and data.meta["source"]["eval_folder"] == "test"
    files = [p for p, _ in ImageFolder(str(gray / "train")).samples]
    assert np.array_equal(data.train.images.numpy()[:, 0], np.stack([np.asarray(Image.open(p).convert("L"))
                                                                     for p in files]))


def test_sizes_come_from_the_files_or_from_input_size(tmp_path):
    root = own_data.write_image_folder(tmp_path / "sizes", train_per_class=2, val_per_class=1, size=10, gray_every=0)
    odd = root / "train" / "cross" / "000.png"
    Image.open(odd).resize((14, 14)).save(odd)
    with pytest.raises(UsageError, match=r"the images have 2 sizes \(10x10 \(8 files\), 14x14 \(1 file\)\); pass "
                                         "--input-size S"):
        load_data(DataOptions(dataset="imagefolder", data_path=str(root)))
    data = load_data(DataOptions(dataset="imagefolder", data_path=str(root), input_size=8))
    assert data.train.images.shape == (6, 3, 8, 8) and data.image_size == 8
    index = [p.name for p in sorted((root / "train" / "cross").iterdir())].index("000.png") + 2
    resized = Image.open(odd).convert("RGB").resize((8, 8), Image.Resampling.BILINEAR)
    assert np.array_equal(data.train.images[index].numpy(), np.asarray(resized).transpose(2, 0, 1))
    assert describe(DataOptions(dataset="imagefolder", data_path=str(root), input_size=8)).image_size == 8


def test_decoding_is_cached_on_disk_by_the_files_and_their_content_is_the_identity(folder, tmp_path, monkeypatch):
    root = shutil.copytree(folder, tmp_path / "copy", ignore=shutil.ignore_patterns(layout.DATA_CACHE_DIR))
    decoded = []
    real = imagefolder._decode
    monkeypatch.setattr(imagefolder, "_decode", lambda *a: decoded.append(a[1]) or real(*a))
    options = DataOptions(dataset="imagefolder", data_path=str(root))
    first = load_data(options)
    assert len(decoded) == 42 and len(list((root / layout.DATA_CACHE_DIR).iterdir())) == 1
    again = load_data(options)
    assert len(decoded) == 42  # read from the cache
    assert torch.equal(again.train.images, first.train.images) and again.mean == first.mean
    # the same files elsewhere: the same content hash
    assert again.meta["source"]["hash"] == load_data(DataOptions(dataset="imagefolder",
                                                                 data_path=str(folder))).meta["source"]["hash"]
    # one file changed: every file decoded again, another identity
    Image.new("RGB", (12, 12), (9, 9, 9)).save(root / "val" / "cross" / "002.png")
    changed = load_data(options)
    assert len(decoded) == 84 and changed.meta["source"]["hash"] != first.meta["source"]["hash"]
    assert torch.equal(changed.train.images, first.train.images)
    assert not torch.equal(changed.test.images, first.test.images)


def test_the_corruptions_and_subsets_apply_to_an_image_folder(folder):
    base = load_data(DataOptions(dataset="imagefolder", data_path=str(folder)))
    subset = load_data(DataOptions(dataset="imagefolder", data_path=str(folder), subsample_classes=2,
                                   class_sample_seed=1, train_size=12, noise=0.5, noise_seed=3))
    chosen = subset.meta["class_subset"]
    assert chosen["class_names"] == [own_data.CLASSES[c] for c in chosen["classes"]] and subset.num_classes == 2
    assert len(subset.train) == 12 and subset.meta["label_noise"]["count"] > 0
    shuffled = load_data(DataOptions(dataset="imagefolder", data_path=str(folder), noise=-1, noise_seed=3))
    assert torch.equal(shuffled.train.images.sort(-1).values.flatten(2).sort(-1).values,
                       base.train.images.flatten(2).sort(-1).values)
    assert not torch.equal(shuffled.train.images, base.train.images)
    assert torch.equal(shuffled.test.images, base.test.images)


def test_check_files_finds_what_is_missing_without_decoding(folder, tmp_path, on_path, monkeypatch):
    monkeypatch.setattr(imagefolder, "_decode", lambda *a: pytest.fail("check_files decodes nothing"))
    check_files(DataOptions(dataset="imagefolder", data_path=str(folder)))
    check_files(DataOptions(dataset="own_data:shapes"))
    check_files(DataOptions(dataset="digits"))
    for options, message in ((DataOptions(dataset="imagefolder", data_path=str(tmp_path / "no")), "no such folder"),
                             (DataOptions(dataset="own_data:nothing"), "own_data has no nothing"),
                             (DataOptions(dataset="cifar10", data_path=str(tmp_path)), "cifar10 not found")):
        with pytest.raises((UsageError, HparrError), match=message):
            check_files(options)


# -------------------------------------------------------------------------------------------------- factory


def test_a_factory_gives_its_splits_classes_and_normalization(on_path):
    made = own_data.shapes(n_train=9, n_test=6)
    data = load_data(DataOptions(dataset="own_data:shapes", dataset_args="n_test=6,n_train=9"))
    assert (len(data.train), len(data.test), data.num_classes, data.in_channels, data.image_size) == (9, 6, 3, 1, 12)
    assert data.train.labels.tolist() == made["train"].labels
    assert torch.equal(data.train.images, (made["train"].images * 255).round().to(torch.uint8))
    x = data.train.images.double() / 255
    assert data.mean == pytest.approx((x.mean().item(),)) and data.std == pytest.approx((x.std(False).item(),))
    assert data.meta["source"]["args"] == {"n_test": 6, "n_train": 9} and data.meta["data_path"] is None
    given = load_data(DataOptions(dataset="own_data:shapes", dataset_args="normalization=True,gray=False"))
    assert given.mean == (0.5,) * 3 and given.std == (0.25,) * 3
    assert given.meta["source"]["normalization"] == "given by the factory"

    class Floats(torch.utils.data.Dataset):
        def __len__(self):
            return 2

        def __getitem__(self, i):
            return torch.full((1, 2, 2), 0.3 + i * 0.001), torch.tensor(i)

    images, labels, rounded = materialize("f", "train", Floats())
    nearest = np.round(np.array([0.3, 0.301], dtype=np.float32).astype(np.float64) * 255)  # the nearest 8-bit value
    assert rounded and images.dtype == np.uint8 and images.shape == (2, 1, 2, 2)
    assert (images == nearest[:, None, None, None]).all() and labels.tolist() == [0, 1]
    for item, message in (((torch.zeros(1, 2, 3), 0), "square"), ((torch.zeros(1, 2, 2) - 1, 0), "unnormalized"),
                          ((torch.zeros(1, 2, 2), 0.5), "not \\(image tensor"), ((torch.zeros(2, 2), 1), "not")):
        with pytest.raises(UsageError, match=message):
            materialize("f", "train", [item])


# ------------------------------------------------------------------------------------------------ bad input


@pytest.mark.parametrize("defect,message", [
    ("no_val", "no val/ or test/ folder"),
    ("empty_class", "the class folder train/cross holds no image file"),
    ("corrupt", "cannot read the image {folder}/train/square/001.png: image file is truncated"),
    ("extra_class", "val/ has class folder(s) that train/ does not have: zebra"),
    ("own_data:broken", 'the factory raised FileNotFoundError: "no images in /nowhere/shapes"'),
    ("own_data:not_pairs", "item 0 is (ndarray, str), not (image tensor (C, H, W), int label)"),
])
def test_each_bad_input_is_one_line_exit_2_and_nothing_written(tmp_path, on_path, capsys, defect, message):
    bad = own_data.write_bad_folders(tmp_path / "bad")
    before = sorted(tmp_path.rglob("*"))
    dataset, path = ("imagefolder", bad[defect]) if defect in bad else (defect, tmp_path)
    rc, _, err = run(capsys, "train", "--arch", "lenet", "--dataset", dataset, "--data-path", path,
                     "--models-path", tmp_path / "models", "--tb-logdir", "")
    assert rc == 2
    assert message.format(folder=path) in one_error(err)
    assert sorted(tmp_path.rglob("*")) == before  # no cache, no run directory


# ----------------------------------------------------------------------------------------- every stage


def test_an_image_folder_from_train_to_report(folder, tmp_path, on_path, capsys):
    """The example of docs/train.md: train with label noise on two classes until it fits, then the projections of
    every snapshot, the re-initialization sweep on the test and on the training split, and the report."""
    rc, out, err = run(capsys, "train", "--arch", "lenet", "--dataset", "imagefolder", "--data-path", folder,
                       "--subsample-classes", 2, "--noise", 0.2, "--train-size", 16, "--epochs", 2, "--lr", 0.05,
                       "--until-train-acc", 100, "--snapshot-every", 1, "--seed", 0, "--tb-logdir", "", "--no-track",
                       "--no-progress")
    assert rc == 0, err
    run_dir = Path("models/imagefolder_2/train_16/noise_20/lenet/0")
    final = sorted(run_dir.glob("lenet_[0-9].pt"))[-1]
    snap = torch_load(final)
    assert snap["dataset"] == "imagefolder" and snap["in_channels"] == 3 and snap["input_size"] == 12
    assert snap["data"]["source"]["hash"].startswith("xxh3-128:")
    assert snap["normalization"]["mean"] == list(describe(DataOptions(dataset="imagefolder",
                                                                      data_path=str(folder))).mean)

    rc, _, err = run(capsys, "projections", "--arch", "lenet", "--dataset", "imagefolder", "--data-path", folder,
                     "--subsample-classes", 2, "--seed", 0, "--load-from", run_dir, "--init-from",
                     run_dir / "lenet_init_0.pt", "--normalize", "--no-progress")
    assert rc == 0, err
    results = Path("results/imagefolder_2/train_16/noise_20/lenet/0")  # the run's condition, as its folder
    assert json.loads((results / f"{final.stem}.json").read_text())["dataset"] == "imagefolder"
    for split in ("test", "train"):
        rc, _, err = run(capsys, "reinit", "--arch", "lenet", "--dataset", "imagefolder", "--data-path", folder,
                         "--seed", 0, "--load-from", final, "--inits-from", run_dir, "--rand", "--eval-split", split,
                         "--no-progress")
        assert rc == 0, err
    doc = json.loads((results / f"reinit_{final.stem}_train.json").read_text())
    assert doc["train_data"]["sizes"]["train"] == 16 and doc["train_data"]["label_noise"]["ratio"] == 0.2
    assert doc["normalization"]["mean"] == snap["normalization"]["mean"]
    rc, _, err = run(capsys, "report", "results")
    assert rc == 0, err
    assert "imagefolder" in Path("results/report/summary.md").read_text()

    # the same run on other files is refused in one line, by train and by reinit
    other = shutil.copytree(folder, tmp_path / "other", ignore=shutil.ignore_patterns(layout.DATA_CACHE_DIR))
    Image.new("RGB", (12, 12)).save(other / "train" / "cross" / "000.png")
    rc, _, err = run(capsys, "train", "--arch", "lenet", "--dataset", "imagefolder", "--data-path", other,
                     "--subsample-classes", 2, "--noise", 0.2, "--train-size", 16, "--epochs", 2, "--lr", 0.05,
                     "--seed", 0, "--tb-logdir", "", "--resume-from", "auto")
    assert rc == 1 and f"(the data imagefolder {folder.resolve()} (42 files, xxh3-128:" in one_error(err)
    rc, _, err = run(capsys, "reinit", "--arch", "lenet", "--dataset", "imagefolder", "--data-path", other,
                     "--seed", 0, "--load-from", final, "--rand", "--results", "elsewhere")
    assert rc == 2 and f"{final} was trained on imagefolder {folder.resolve()}" in one_error(err)
    assert not list(Path("elsewhere").rglob("*.json"))


@pytest.mark.slow
def test_a_factory_from_train_to_report(tmp_path, on_path, capsys):
    """`reproduce` (train, projections, reinit on the test and the training split, report) on a factory's data;
    a rerun with other --dataset-args is refused, naming both."""
    common = ["--arch", "lenet", "--dataset", "own_data:shapes", "--seed", 1]
    rc, out, err = run(capsys, "reproduce", *common, "--dataset-args", "n_train=24,gray=False", "--epochs", 2,
                       "--snapshot-every", 1, "--snapshot-all-until", 0, "--lr", 0.05, "--noise", -1,
                       "--eval-split", "test,train", "--tb-logdir", "", "--out", "run", "--no-progress")
    assert rc == 0, err
    run_dir = Path("run/models/own_data-shapes/pixel_shuffle/lenet/1")
    assert torch_load(run_dir / "lenet_2.pt")["settings"]["data"]["dataset_args"] == "gray=False,n_train=24"
    manifest = json.loads(Path("run/manifest.json").read_text())
    assert set(manifest["reinit_splits"]) == {"test", "train"}
    assert Path("run/report/index.html").is_file()
    rc, _, err = run(capsys, "train", *common, "--dataset-args", "n_train=30,gray=False", "--epochs", 2,
                     "--noise", -1, "--models-path", "run/models", "--tb-logdir", "")
    assert rc == 1 and "(--dataset-args gray=False,n_train=24 there, gray=False,n_train=30 here; the data " \
        "own_data:shapes(gray=False, n_train=24) (xxh3-128:" in one_error(err)
    rc, _, err = run(capsys, "reinit", *common, "--dataset-args", "n_train=30", "--load-from", run_dir / "lenet_2.pt",
                     "--rand")
    assert rc == 2 and "was trained with --dataset-args gray=False,n_train=24, not --dataset-args n_train=30" in \
        one_error(err)


@pytest.mark.slow
def test_a_study_over_an_image_folder(folder, tmp_path, on_path, capsys):
    """2 seeds x 2 corruptions (clean, pixel shuffle) over the image folder, then the study's report."""
    argv = ["study", "--dataset", "imagefolder", "--data-path", folder, "--seeds", "0,1", "--noise", "0,-1",
            "--epochs", 1, "--snapshot-every", 1, "--snapshot-all-until", 0, "--lr", 0.05, "--tb-logdir", "",
            "--jobs", 2, "--threads", 1, "--out", "study", "--no-progress"]
    rc, out, err = run(capsys, *argv, "--launcher", "print")
    assert rc == 0 and out.count("--dataset imagefolder") == 4 and f"--data-path {folder}" in out
    rc, out, err = run(capsys, *argv)
    assert rc == 0, err
    assert "4 cells: 4 finished now" in out
    cells = sorted(p.relative_to("study/cells") for p in Path("study/cells").glob("*/*/*/*"))
    assert cells == [Path(f"lenet/imagefolder/{c}/seed_{s}") for c in ("clean", "pixel_shuffle") for s in (0, 1)]
    assert Path("study/report/index.html").is_file()
