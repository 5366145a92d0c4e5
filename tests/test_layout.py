"""The on-disk layout and the corruption value: one naming, old folders still found, and no on-disk name
spelled outside layout.py."""
from __future__ import annotations

import ast
import re
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
    assert layout.result_name("reinit_vgg11_30") == "reinit_vgg11_30.json"
    assert layout.data_cache_file("d", "imagefolder", "k") == Path("d/.hparr-cache/imagefolder-k.pt")


# --- layout.py is the only home of every on-disk name -----------------------------------------------

SRC = Path(__file__).resolve().parent.parent / "src" / "hparr"
# file name extensions whose literals name a file hparr reads or writes
EXTENSIONS = ("json", "csv", "parquet", "md", "html", "log", "lock", "pt", "tar", "pth", "png", "pdf", "txt", "err")
# literals that look like file names but are other formats' own names, not hparr's layout (each with its reason)
NOT_OURS = {
    "model.safetensors.index.json",  # the index of Hugging Face's sharded safetensors format
    "pytorch_model.bin",  # the weights file of a Hugging Face hub repository
    "test.sh",  # the throw-away sbatch script of `sbatch --test-only`, in a temporary folder
}


def layout_names() -> tuple[set[str], set[str]]:
    """(file names, folder names) that layout.py defines as module constants: a name with an extension is a file
    (`manifest.json`, `.train.lock`), one without a folder (`models`, `.hparr-cache`)."""
    file_names, folders = set(), set()
    for key, value in vars(layout).items():
        if key.isupper() and isinstance(value, str) and value and "/" not in value and not value.startswith("--"):
            stem, dot, ext = value.lstrip(".").rpartition(".")
            (file_names if dot and stem else folders).add(value)
    return file_names, folders


def docstrings(tree: ast.AST) -> set[int]:
    """The ids of the docstring nodes of a module (prose, where names are mentioned, not spelled as paths)."""
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)) and node.body:
            first = node.body[0]
            if isinstance(first, ast.Expr) and isinstance(first.value, ast.Constant):
                found.add(id(first.value))
    return found


def path_operands(tree: ast.AST) -> set[int]:
    """The ids of the string literals used as a path part: `path / "name"`, `"name" / path`,
    `Path("name")`, `os.path.join(..., "name")`, `.joinpath("name")`."""
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.BinOp) and isinstance(node.op, ast.Div):
            found.update(id(side) for side in (node.left, node.right))
        elif isinstance(node, ast.Call):
            func = node.func
            name = func.attr if isinstance(func, ast.Attribute) else func.id if isinstance(func, ast.Name) else ""
            if name in ("Path", "PurePath", "join", "joinpath"):
                found.update(id(arg) for arg in node.args)
    return found


def spelled_names(source: str, file_names: set[str], folders: set[str]) -> list[tuple[int, str]]:
    """(line, literal) of each string literal of `source` that spells an on-disk name outside layout.py: one of
    layout's file names (alone, or as the last part of a relative path), a path made of layout's names
    (`report/index.html`), any other file name with one of EXTENSIONS not in NOT_OURS, or one of layout's folder
    names used as a path part."""
    tree = ast.parse(source)
    skip, parts = docstrings(tree), path_operands(tree)
    looks_like_file = re.compile(r"^\.?[\w.-]*[\w-]\.(%s)$" % "|".join(EXTENSIONS))
    found = []
    for node in ast.walk(tree):
        if not (isinstance(node, ast.Constant) and isinstance(node.value, str)) or id(node) in skip:
            continue
        value = node.value
        if not value or any(c.isspace() for c in value):
            continue  # prose (help texts, messages), not a path
        pieces = [p for p in value.split("/") if p not in ("", ".")]
        if not pieces:
            continue
        if (pieces[-1] in file_names or (len(pieces) > 1 and set(pieces) <= file_names | folders)
                or (looks_like_file.match(pieces[-1]) and pieces[-1] not in NOT_OURS)
                or (value in folders and id(node) in parts)):
            found.append((node.lineno, value))
    return found


def test_no_module_but_layout_spells_an_on_disk_name():
    file_names, folders = layout_names()
    assert {"manifest.json", "projections.csv", "index.html", ".train.lock"} <= file_names
    assert {"models", "results", "reinit", "report", ".hparr-cache"} <= folders
    spelled = [f"{path.relative_to(SRC.parent)}:{line}: {value!r}"
               for path in sorted(SRC.rglob("*.py")) if path.name != "layout.py"
               for line, value in spelled_names(path.read_text(), file_names, folders)]
    assert not spelled, "on-disk names spelled outside layout.py (use its constants):\n" + "\n".join(spelled)


def test_the_check_finds_a_name_spelled_in_each_way():
    file_names, folders = layout_names()
    source = '''
"""A docstring may name report/index.html and projections.csv."""
from pathlib import Path
a = Path("out") / "projections.csv"
b = written["statistics.json"]
c = "report/index.html"
d = out / "models"
e = os.path.join(out, "reinit")
f = "weights_3.pt"
g = f"{out}/report/summary.md"
h = {"reinit": 1, "report": 2}  # keys of a document: not paths
i = "--results a folder named results/"
'''
    assert sorted(line for line, _ in spelled_names(source, file_names, folders)) == [4, 5, 6, 7, 8, 9, 10]


def test_each_name_has_one_constant():
    values = [v for k, v in vars(layout).items() if k.isupper() and isinstance(v, str)]
    assert len(values) == len(set(values))
