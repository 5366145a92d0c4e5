"""The on-disk layout and the corruption value: one naming, old folders still found."""
from __future__ import annotations

from pathlib import Path

import pytest

from hparr import layout
from hparr.errors import UsageError
from hparr.layout import Corruption


def test_run_directory_layout():
    assert layout.run_directory("m", "cifar10", "vgg11", 3) == Path("m/cifar10/vgg11/3")
    assert layout.run_directory("m", "cifar100", "vgg11", 3, subsample_classes=10, noise=0.2) == \
        Path("m/cifar100_10/noise_20/vgg11/3")
    assert layout.run_directory("m", "mnist", "lenet", None, noise=-1) == Path("m/mnist/pixel_shuffle/lenet")
    assert layout.run_directory("m", "fashionmnist", "torchvision:resnet18", 0, train_size=2000) == \
        Path("m/fashionmnist/train_2000/torchvision-resnet18/0")


def test_a_fractional_noise_has_one_name_in_runs_and_study_cells(tmp_path):
    run = layout.run_directory(tmp_path, "digits", "lenet", 0, noise=0.125)
    cell = layout.cell_path("lenet", "digits", 0, noise=0.125)
    assert run.parent.parent.name == "noise_12.5" and cell.parent.name == "noise_12.5"
    assert run.parent.parent.name == Corruption(0.125).condition


def test_a_run_under_the_older_rounded_name_is_still_found(tmp_path):
    old = tmp_path / "digits" / "noise_12" / "lenet" / "0"
    old.mkdir(parents=True)
    assert layout.run_directory(tmp_path, "digits", "lenet", 0, noise=0.125) == old
    (tmp_path / "digits" / "noise_12.5").mkdir()  # once the new name exists it wins
    assert layout.run_directory(tmp_path, "digits", "lenet", 0, noise=0.125).parent.parent.name == "noise_12.5"


@pytest.mark.parametrize("value, kind, condition, label", [
    (0, "clean", "clean", "clean"), ("0.5", "labels", "noise_50", "noise 50%"),
    (1.0, "labels", "noise_100", "noise 100%"), (-1, "pixels", "pixel_shuffle", "pixel shuffle")])
def test_corruption_parses_once_and_names_itself(value, kind, condition, label):
    c = Corruption.parse(value)
    assert (c.clean, c.label_noise > 0, c.pixel_shuffle) == (kind == "clean", kind == "labels", kind == "pixels")
    assert (c.condition, c.label) == (condition, label)


@pytest.mark.parametrize("value", [2, -0.5, float("nan"), "x", None])
def test_a_bad_noise_is_one_usage_error(value):
    with pytest.raises(UsageError, match="noise must be"):
        Corruption.parse(value)


def test_conditions_sort_clean_then_label_noise_then_pixel_shuffle():
    noises = [-1.0, 1.0, 0.0, 0.5]
    assert sorted(noises, key=lambda n: Corruption(n).order) == [0.0, 0.5, 1.0, -1.0]


def test_result_names():
    assert layout.reinit_stem("runs/vgg11_30.pt") == "reinit_vgg11_30"
    assert layout.reinit_stem("vgg11_30.pt", "block", True, "train") == "reinit_vgg11_30_block_bn_train"
    assert layout.epoch_from_filename("vgg11_9.tar") == 10 and layout.epoch_from_filename("w.pt") is None
    assert str(layout.cell_path("a:b", "cifar10", 3, -1.0, 5, 2000)) == "cells/a-b/cifar10_5_n2000/pixel_shuffle/seed_3"
