"""Every bad input gets a one-line error, no traceback, and exit code 2 (usage) or 1 (runtime).

The cases here are the table in docs/errors.md: each row of it is a case of CASES or a test named in ELSEWHERE,
and each case is a row (test_the_error_table_and_the_cases_are_the_same)."""
import ast
import errno
import io
import json
import os
import pickle
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import own_data
import pytest
import torch

from hparr import checkpoints as ck
from hparr import files
from hparr.cli import build_parser, main
from hparr.data import DataOptions
from hparr.models import build_model
from hparr.projections import ProjectionSettings, run_projections
from hparr.projections import save as save_projections
from hparr.training import TrainSettings, train

from conftest import command_parser, help_entries


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
    torch.save(lenet, root / "whole_1.pt")
    cifar = root / "cifar" / "cifar-10-batches-py"
    cifar.mkdir(parents=True)
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        (cifar / name).write_bytes(pickle.dumps({b"data": b"garbage"}))
    own_data.write_bad_folders(root / "own")
    (root / "a_file").write_text("not a directory")
    (root / "notes.txt").write_text("abc")
    # a run with --lr 0.01 (0 epochs: its initialization snapshot only)
    train(TrainSettings(arch="lenet", data=DataOptions(dataset="digits"), epochs=0, lr=0.01, seed=0,
                        models_path=str(root / "runs"), tb_logdir=None, progress=False))
    # the results of one snapshot, and a truncated one
    analyzed = run_projections(ProjectionSettings("lenet", "digits", load_from=[root / "lenet_init_0.pt"],
                                                  progress=False))
    out = save_projections(analyzed, root / "results")
    (out / "lenet_7.json").write_text((out / "lenet_init_0.json").read_text()[:50])
    run = root / "models" / "digits" / "lenet" / "0"
    run.mkdir(parents=True)
    torch.save(lenet.state_dict(), run / "lenet_init_0.pt")
    (run / "tracking.csv").write_text("epoch,layer\n1,features.0\n")
    (root / "notes.pt").write_text("these are my notes\n")
    (root / "evil.safetensors").write_bytes(pickle.dumps({"weight": Evil()}, protocol=2))
    from safetensors.torch import save_file

    save_file(lenet.state_dict(), str(root / "lenet_6.safetensors"))
    (root / "cut_6.safetensors").write_bytes((root / "lenet_6.safetensors").read_bytes()[:-100])
    shards = root / "lenet_7"
    shards.mkdir()
    keys = list(lenet.state_dict())
    save_file({k: lenet.state_dict()[k] for k in keys[:4]}, str(shards / "model-00001-of-00002.safetensors"))
    (shards / "model.safetensors.index.json").write_text(json.dumps({"weight_map": {
        k: f"model-0000{1 + (i >= 4)}-of-00002.safetensors" for i, k in enumerate(keys)}}))
    torch.save({"state_dict": {**{f"model.{k}": v for k, v in lenet.state_dict().items()},
                               **{f"ema.{k}": v for k, v in lenet.state_dict().items()}}}, root / "two_8.ckpt")
    onnx_files(root)
    # a snapshot of a run with every label noisy (as `hparr train --noise 1` records it), and a state_dict
    # with a tensor lenet does not have
    torch.save({"model_state_dict": lenet.state_dict(), "arch": "lenet", "dataset": "digits", "seeds": {"seed": 0},
                "settings": {"seed": 0, "data": {"dataset": "digits", "noise": 1.0, "subsample_classes": 0,
                                                 "train_size": None}}}, root / "noisy_9.pt")
    torch.save({**lenet.state_dict(), "ema.decay": torch.tensor(0.999)}, root / "extra_1.pt")
    return root


def onnx_files(root: Path) -> None:
    """ONNX files: torn, empty, without nodes, without a conv, and with an operator onnx2torch cannot convert."""
    import onnx  # the onnx extra, part of `make test`
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(0)

    def model(nodes, weights, opset=17):
        x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [None, 1, 32, 32])
        graph = helper.make_graph(nodes, "g", [x], [helper.make_tensor_value_info("y", TensorProto.FLOAT, [None, 10])],
                                  [numpy_helper.from_array(rng.normal(size=s).astype(np.float32), n)
                                   for n, s in weights.items()])
        return helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])

    conv = model([helper.make_node("Conv", ["x", "k"], ["c"], name="conv", pads=[1, 1, 1, 1]),
                  helper.make_node("Gelu", ["c"], ["g"], name="gelu"),
                  helper.make_node("GlobalAveragePool", ["g"], ["p"]), helper.make_node("Flatten", ["p"], ["f"]),
                  helper.make_node("Gemm", ["f", "w"], ["y"], name="fc", transB=1)],
                 {"k": (4, 1, 3, 3), "w": (10, 4)}, opset=20)
    onnx.save_model(conv, str(root / "gelu_1.onnx"))
    data = (root / "gelu_1.onnx").read_bytes()
    (root / "torn_1.onnx").write_bytes(data[:len(data) * 2 // 3])
    (root / "empty_1.onnx").write_bytes(b"")
    onnx.save_model(helper.make_model(helper.make_graph([], "g", [], [])), str(root / "nodes_1.onnx"))
    onnx.save_model(model([helper.make_node("Flatten", ["x"], ["f"]), helper.make_node("Gemm", ["f", "w"], ["y"])],
                          {"w": (1024, 10)}), str(root / "dense_1.onnx"))


LENET = ["--arch", "lenet", "--dataset", "digits"]
OWN = ["--arch", "lenet", "--dataset", "imagefolder", "--tb-logdir", "", "--data-path"]

# (name, argv (with {root} for the fixture folder), exit code, a phrase of the message)
CASES = [
    ("unknown architecture", ["train", "--arch", "vgg99", "--dataset", "digits"], 2, "unknown architecture"),
    ("unknown timm model", ["train", "--arch", "timm:resnet10", "--dataset", "digits"], 2, "did you mean resnet10t"),
    ("pretrained weights not in the cache", ["projections", "--arch", "alexnet", "--dataset", "digits",
                                             "--pretrained", "--results", "{root}/res"], 1, "--weights FILE"),
    ("unknown dataset", ["train", "--arch", "lenet", "--dataset", "stl10"], 2, "unknown dataset"),
    ("unknown optimizer", ["train", *LENET, "--optimizer", "rmsprop"], 2, "unknown optimizer"),
    ("missing --arch", ["reinit"], 2, "hparr reinit: error: --arch is missing"),
    ("missing --dataset", ["train", "--arch", "lenet"], 2, "hparr train: error: --dataset is missing"),
    ("malformed number", ["train", *LENET, "--lr", "abc"], 2, "hparr train: error: --lr: 'abc' is not a number"),
    ("malformed whole number", ["projections", *LENET, "--seed", "1.5"], 2, "--seed: '1.5' is not a whole number"),
    ("value not among the choices", ["reinit", *LENET, "--granularity", "unit"], 2,
     "--granularity: invalid choice: 'unit'"),
    ("unknown flag", ["train", *LENET, "--weight_decay", "0.1"], 2,
     "hparr train: error: unrecognized arguments: --weight_decay 0.1"),
    ("a model that cannot take hparr's input", ["train", "--arch", "own_model:dict_input", "--dataset", "digits",
                                                "--models-path", "{root}/written", "--tb-logdir", ""], 2,
     "its forward fails on the input hparr passes, a float tensor of shape (B, C, H, W) (here (2, 1, 32, 32))"),
    ("a model with no layer to analyze", ["train", "--arch", "own_model:no_conv", "--dataset", "digits",
                                          "--models-path", "{root}/written", "--tb-logdir", ""], 2,
     "has no layer to analyze (no conv layer is called in its forward); pass --no-track"),
    ("missing dataset files", ["train", "--arch", "lenet", "--dataset", "cifar10", "--data-path", "{root}/none"],
     1, "cifar-10-batches-py"),
    ("malformed dataset files", ["train", "--arch", "lenet", "--dataset", "cifar10", "--data-path", "{root}/cifar"],
     1, "data_batch_1"),
    ("image folder without val/ or test/", ["train", *OWN, "{root}/own/no_val"], 2, "no val/ or test/ folder"),
    ("empty class folder", ["train", *OWN, "{root}/own/empty_class"], 2, "train/cross holds no image file"),
    ("corrupt or truncated image", ["train", *OWN, "{root}/own/corrupt"], 2,
     "/own/corrupt/train/square/001.png: image file is truncated"),
    ("class in val/ but not in train/", ["train", *OWN, "{root}/own/extra_class"], 2, "does not have: zebra"),
    ("dataset factory that raises", ["train", "--arch", "lenet", "--dataset", "own_data:broken"], 2,
     'the factory raised FileNotFoundError: "no images in /nowhere/shapes"'),
    ("dataset factory returning other than (tensor, int)", ["train", "--arch", "lenet", "--dataset",
                                                             "own_data:not_pairs"], 2,
     "item 0 is (ndarray, str), not (image tensor (C, H, W), int label)"),
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
    ("checkpoint in no known format", ["projections", *LENET, "--load-from", "{root}/notes.pt"], 1,
     "found text starting with 'these are my notes'"),
    ("pickle named .safetensors", ["projections", *LENET, "--load-from", "{root}/evil.safetensors"], 1, "refused"),
    ("truncated .safetensors", ["projections", *LENET, "--load-from", "{root}/cut_6.safetensors"], 1,
     "truncated or corrupt safetensors file"),
    ("sharded folder missing a shard", ["projections", *LENET, "--load-from", "{root}/lenet_7"], 1,
     "model-00002-of-00002.safetensors"),
    ("--state-dict-prefix matching no key", ["projections", *LENET, "--load-from", "{root}/lenet_6.safetensors",
                                             "--state-dict-prefix", "net."], 1, "no key starts with"),
    ("several prefixes hold the model", ["reinit", *LENET, "--load-from", "{root}/two_8.ckpt", "--rand"], 2,
     "--state-dict-prefix"),
    ("non-positive --rand-trials", ["reinit", *LENET, "--load-from", "{root}/lenet_init_0.pt", "--rand-trials", "0"],
     2, "--rand-trials must be >= 1"),
    ("negative --max-test-images", ["reinit", *LENET, "--load-from", "{root}/lenet_init_0.pt", "--rand",
                                    "--max-test-images", "-1"], 2, "--max-test-images"),
    ("label noise out of range", ["train", *LENET, "--noise", "1.5"], 2, "noise"),
    ("validation split out of range", ["train", *LENET, "--split", "1.0"], 2, "split"),
    ("more classes than the dataset has", ["train", *LENET, "--subsample-classes", "11"], 2, "11"),
    ("non-positive batch size", ["train", *LENET, "--batch-size", "0"], 2, "batch-size"),
    ("unknown --compile backend", ["train", *LENET, "--compile", "fastest"], 2, "unknown --compile backend"),
    ("negative --track-every-steps", ["train", *LENET, "--track-every-steps", "-1"], 2, "track-every-steps"),
    ("malformed tracking.csv on resume", ["train", *LENET, "--epochs", "0", "--seed", "0", "--models-path",
                                          "{root}/models", "--tb-logdir", "", "--resume-from", "auto"], 1,
     "malformed tracking file"),
    ("unwritable output directory", ["train", *LENET, "--epochs", "1", "--models-path", "{root}/a_file/models",
                                     "--tb-logdir", ""], 1, "cannot create output directory"),
    ("a file that is not a snapshot", ["train", *LENET, "--epochs", "1", "--resume-from", "{root}/notes.txt",
                                       "--models-path", "{root}/m", "--tb-logdir", ""], 1,
     "notes.txt is not a checkpoint hparr can read"),
    ("run directory holding another configuration", ["train", *LENET, "--epochs", "0", "--lr", "0.05", "--seed",
                                                     "0", "--models-path", "{root}/runs", "--tb-logdir", ""], 1,
     "already holds snapshots of another configuration (--lr 0.01 there, 0.05 here)"),
    ("resume with another optimizer", ["train", *LENET, "--epochs", "1", "--optimizer", "adam", "--resume-from",
                                       "{root}/runs/digits/lenet/0/lenet_init_0.pt", "--models-path", "{root}/m2",
                                       "--tb-logdir", ""], 1, "was trained with --optimizer sgd"),
    ("unusable result file, --strict", ["report", "{root}/results", "--strict"], 1,
     "lenet_7.json: truncated"),
    ("reproduce with label noise out of range", ["reproduce", "--noise", "2", "--out", "{root}/repro"], 2,
     "noise must be in [0, 1]"),
    ("report of a folder that does not exist", ["report", "{root}/nowhere"], 2, "does not exist"),
    ("runs side by side with fewer than two runs", ["report", "{root}/results", "--compare"], 2,
     "nothing to compare: "),
    ("reinit of a snapshot that does not exist", ["reinit", *LENET, "--load-from", "{root}/nowhere.pt", "--rand"],
     2, "no such file"),
    ("a whole pickled model", ["projections", *LENET, "--load-from", "{root}/whole_1.pt"], 1,
     "save its weights instead: torch.save(model.state_dict(), PATH)"),
    ("non-positive --num-classes", ["projections", "--dataset", "digits", "--num-classes", "0"], 2,
     "--num-classes must be >= 1"),
    ("unknown --init-scheme", ["projections", *LENET, "--init-scheme", "bogus"], 2,
     "unknown initialization scheme 'bogus'"),
    ("empty study grid", ["study", "--seeds", "", "--dry-run", "--out", "{root}/study"], 2, "empty grid"),
    ("malformed grid list", ["study", "--noise", "0,,x", "--dry-run", "--out", "{root}/study"], 2,
     "malformed list '0,,x'"),
    ("backwards range", ["study", "--seeds", "4-0", "--dry-run", "--out", "{root}/study"], 2, "backwards range"),
    ("unknown launcher", ["study", "--launcher", "pbs", "--out", "{root}/study"], 2, "unknown launcher 'pbs'"),
    ("--out holding something other than a study", ["study", "--out", "{root}/cifar"], 2, "not a study"),
    ("--mem 0", ["study", "--launcher", "slurm", "--mem", "0", "--out", "{root}/study"], 2,
     "--mem must be a memory size above 0 such as 4G or 500M, got '0'"),
    ("snapshots of two conditions in one call", ["projections", *LENET, "--load-from",
                                                 "{root}/runs/digits/lenet/0/lenet_init_0.pt", "{root}/noisy_9.pt",
                                                 "--results", "{root}/res"], 2,
     "come from runs of different conditions (--noise 0 in"),
    ("a flag against the snapshot's condition", ["projections", *LENET, "--subsample-classes", "5", "--load-from",
                                                 "{root}/runs/digits/lenet/0/lenet_init_0.pt", "--results",
                                                 "{root}/res"], 1,
     "comes from a run with --subsample-classes 0, not --subsample-classes 5"),
    ("--inits-from a run of another condition", ["reinit", *LENET, "--load-from",
                                                 "{root}/runs/digits/lenet/0/lenet_init_0.pt", "--inits-from",
                                                 "{root}/noisy_9.pt", "--results", "{root}/res"], 1,
     "noisy_9.pt comes from a run with --noise 1, the trained snapshot"),
    ("a tensor the model lacks, --strict", ["projections", *LENET, "--strict", "--load-from", "{root}/extra_1.pt",
                                            "--results", "{root}/res"], 1, "(unexpected keys: ema.decay)"),
    ("--status on a folder that is not a study", ["study", "{root}", "--status"], 2,
     "is not a study folder (no study.json)"),
    ("nothing to survey", ["survey", "--out", "{root}/sv"], 2, "nothing to survey"),
    ("survey input that does not exist", ["survey", "{root}/nowhere.onnx", "--out", "{root}/sv"], 2,
     "nowhere.onnx: no such file or folder"),
    ("--networks file that does not exist", ["survey", "--networks", "{root}/none.json", "--out", "{root}/sv"], 2,
     "none.json: no such file"),
    ("--networks file of another kind", ["survey", "--networks", "{root}/notes.txt", "--out", "{root}/sv"], 2,
     "is not a networks file"),
    ("one network given twice", ["survey", "{root}/lenet_init_0.pt", "{root}/lenet_init_0.pt", "--out", "{root}/sv"],
     2, "give each input once"),
    ("truncated ONNX file", ["projections", "--load-from", "{root}/torn_1.onnx"], 1, "truncated or corrupt ONNX file"),
    ("empty ONNX file", ["projections", "--load-from", "{root}/empty_1.onnx"], 1,
     "is not an ONNX model hparr can read: found an empty file"),
    ("ONNX model without nodes", ["projections", "--load-from", "{root}/nodes_1.onnx"], 1,
     "an ONNX model with an empty graph (no nodes)"),
    ("ONNX model without a convolution", ["projections", "--load-from", "{root}/dense_1.onnx"], 1,
     "without a convolution whose weight is a constant"),
    ("ONNX operator onnx2torch cannot convert", ["reinit", "--dataset", "digits", "--load-from",
                                                 "{root}/gelu_1.onnx", "--rand"], 1,
     "no converter for the operator Gelu (opset 20) of node gelu"),
    ("--probe-data without --dataset", ["projections", "--load-from", "{root}/gelu_1.onnx", "--probe-data"], 2,
     "--probe-data needs --dataset"),
    ("--probe-data of a checkpoint read without its model", ["projections", "--load-from", "{root}/lenet_init_0.pt",
                                                             "--dataset", "digits", "--probe-data"], 1,
     "is read without its model (no --arch)"),
    ("study on missing dataset files", ["study", "--dataset", "fashionmnist", "--data-path", "{root}/empty",
                                        "--dry-run", "--out", "{root}/study"], 1, "fashionmnist not found: expected"),
]

# the rows of the table that a test of their own checks (a failing GPU, a full disk, a file-size limit, a missing
# package or SLURM, a study rerun): row -> "file::test"
ELSEWHERE = {
    "out of GPU memory": "tests/test_errors.py::test_out_of_gpu_memory_suggests_a_smaller_batch",
    "full disk while writing":
        "tests/test_errors.py::test_a_full_disk_is_one_line_and_resume_continues_from_the_last_complete_snapshot",
    "file-size limit while writing":
        "tests/test_errors.py::test_the_real_torch_writer_failing_gives_one_line_naming_the_file_and_the_cause",
    "reinit rerun with other options":
        "tests/test_reinit_cli.py::test_a_result_is_reused_only_from_the_same_checkpoints_and_options",
    "submitit missing": "tests/test_errors.py::test_study_with_slurm_needs_submitit_and_sbatch",
    "no SLURM": "tests/test_errors.py::test_study_with_slurm_needs_submitit_and_sbatch",
    "what sbatch refuses (--partition nope)":
        "tests/slurm/test_cluster.py::test_what_sbatch_refuses_is_one_line_quoting_sbatch",
    "run directory in use by another training run":
        "tests/test_training.py::test_a_second_run_into_a_busy_run_directory_is_refused_naming_the_first",
    "--networks weight files not fetched": "tests/test_survey.py::test_survey_refuses_what_it_cannot_read",
    "survey of a study without a finished cell": "tests/test_survey.py::test_survey_refuses_what_it_cannot_read",
    "survey of a run folder without projections": "tests/test_survey.py::test_survey_refuses_what_it_cannot_read",
    "--out a study with other shared flags":
        "tests/test_study.py::test_the_print_launcher_prints_a_reproduce_command_per_cell",
    "onnx extra missing": "tests/test_errors.py::test_an_onnx_file_without_the_onnx_extra_names_the_extra",
    "unreadable data file": "tests/test_study.py::test_an_unreadable_data_file_is_one_line_before_anything_is_written",
    "--out a study of other data files":
        "tests/test_study.py::test_a_rerun_may_read_the_same_data_files_from_another_path_but_not_other_files",
    "--out in use by another run":
        "tests/test_study.py::test_a_second_reproduce_into_a_busy_folder_is_refused_naming_the_first",
    "image folder of several image sizes": "tests/test_own_data.py::test_sizes_come_from_the_files_or_from_input_size",
    "run directory of another image folder": "tests/test_own_data.py::test_an_image_folder_from_train_to_report",
    "reinit on other data than the model was trained on":
        "tests/test_own_data.py::test_an_image_folder_from_train_to_report",
    "rerun with other --dataset-args": "tests/test_own_data.py::test_a_factory_from_train_to_report",
}

ROOT = Path(__file__).resolve().parents[1]
ERROR_TABLE = ROOT / "docs" / "errors.md"


def error_table() -> dict[str, tuple[int, str]]:
    """{case: (exit code, message)} of the table in docs/errors.md; a case is its first cell without backticks, a
    message the first `...` span of its third cell."""
    rows = re.findall(r"^\| (.+?) \| (\d) \| (.*) \|$", ERROR_TABLE.read_text(), flags=re.MULTILINE)
    assert rows, f"no table of errors in {ERROR_TABLE}"
    table = {}
    for case, code, cell in rows:
        message = re.match(r"`([^`]+)`", cell)
        assert message, f"{ERROR_TABLE}: the message of {case!r} is not a `...` span: {cell}"
        name = case.replace("`", "")
        assert name not in table, f"{ERROR_TABLE}: two rows for {name!r}"
        table[name] = (int(code), message.group(1))
    return table


def test_the_error_table_and_the_cases_are_the_same():
    table = error_table()
    cases = {name: (code, phrase) for name, _, code, phrase in CASES}
    assert len(cases) == len(CASES), "two cases of one name"
    untested = sorted(set(table) - set(cases) - set(ELSEWHERE))
    assert not untested, f"rows of {ERROR_TABLE.name} without a test case: {untested}"
    not_rows = sorted((set(cases) | set(ELSEWHERE)) - set(table))
    assert not not_rows, f"cases that are no row of {ERROR_TABLE.name}: {not_rows}"
    assert not set(cases) & set(ELSEWHERE)
    for name, (code, phrase) in cases.items():
        assert table[name][0] == code, (name, "exit code", table[name][0], code)
        assert phrase in table[name][1], (name, phrase, table[name][1])
    for name, where in ELSEWHERE.items():
        path, test = where.split("::")
        tree = ast.parse((ROOT / path).read_text())
        assert test in {node.name for node in ast.walk(tree) if isinstance(node, ast.FunctionDef)}, (name, where)


@pytest.mark.parametrize("name,argv,code,phrase", CASES, ids=[c[0] for c in CASES])
def test_bad_input_is_one_line_with_the_right_exit_code(snapshots, capsys, monkeypatch, name, argv, code, phrase):
    monkeypatch.setenv("TORCH_HOME", str(snapshots / "torch_home"))  # an empty cache of pretrained weights
    argv = [a.replace("{root}", str(snapshots)) for a in argv]
    assert main(argv) == code
    err = capsys.readouterr().err.strip().splitlines()
    errors = [line for line in err if "error:" in line]
    assert len(errors) == 1, err
    assert phrase in errors[0], errors[0]
    assert not any("Traceback" in line for line in err)
    assert not (snapshots / "pwned").exists()
    assert not (snapshots / "repro").exists()  # refused before --out is made
    assert not (snapshots / "written").exists()  # refused before the run directory is made


def test_out_of_gpu_memory_suggests_a_smaller_batch(tmp_path, monkeypatch, capsys):
    import hparr.training

    def exhausted(settings, prepared=None):
        raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")

    monkeypatch.setattr(hparr.training, "train", exhausted)
    assert main(["train", *LENET, "--epochs", "1", "--tb-logdir", "", "--models-path", str(tmp_path)]) == 1
    err = capsys.readouterr().err
    assert "out of memory" in err and "--batch-size" in err and "Traceback" not in err


def one_error_line(err: str) -> str:
    lines = err.strip().splitlines()
    errors = [line for line in lines if "error:" in line]
    assert len(errors) == 1 and not any("Traceback" in line for line in lines), lines
    return errors[0]


def test_a_full_disk_is_one_line_and_resume_continues_from_the_last_complete_snapshot(tmp_path, monkeypatch,
                                                                                       capsys):
    real_save = torch.save

    def disk_fills_up(obj, f, *args, **kwargs):
        """torch.save whose write of lenet_1.tar hits a full disk, as torch reports it: its zip writer's
        RuntimeError, with the OSError as its context, after part of the file was written."""
        if ".lenet_1.tar." not in str(getattr(f, "name", f)):
            return real_save(obj, f, *args, **kwargs)
        buffer = io.BytesIO()
        real_save(obj, buffer)
        f.write(buffer.getvalue()[:4096])
        try:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        except OSError:
            raise RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos 206208 vs 206096")

    monkeypatch.setattr(torch, "save", disk_fills_up)
    argv = ["train", *LENET, "--epochs", "2", "--snapshot-every", "1", "--lr", "0.02", "--seed", "3",
            "--models-path", str(tmp_path), "--tb-logdir", "", "--no-progress"]
    assert main(argv) == 1
    run_dir = tmp_path / "digits" / "lenet" / "3"
    assert one_error_line(capsys.readouterr().err) == (
        f"hparr train: error: no space left on device while writing {run_dir / 'lenet_1.tar'}; "
        "the previous snapshots are intact")
    assert sorted(p.name for p in run_dir.iterdir()) == ["lenet_0.tar", "lenet_init_0.pt", "tracking.csv",
                                                         "train.log"]  # no temporary file
    monkeypatch.undo()
    assert main([*argv, "--resume-from", "auto"]) == 0
    assert f"resumed from {run_dir / 'lenet_0.tar'}: 1 epochs completed" in capsys.readouterr().err
    assert [h["epoch"] for h in ck.torch_load(run_dir / "lenet_2.pt")["history"]] == [1, 2]


@pytest.mark.slow
def test_the_real_torch_writer_failing_gives_one_line_naming_the_file_and_the_cause(tmp_path):
    """A file-size limit makes the real zip writer fail (EFBIG) on the first epoch snapshot (about 1 MB),
    after the initialization snapshot (about 0.5 MB) was written."""
    import resource

    def limit():
        resource.setrlimit(resource.RLIMIT_FSIZE, (800_000, 800_000))

    proc = subprocess.run([sys.executable, "-m", "hparr", "train", *LENET, "--epochs", "1", "--seed", "0",
                           "--models-path", str(tmp_path), "--tb-logdir", "", "--no-progress"],
                          preexec_fn=limit, capture_output=True, text=True, timeout=600, check=False)
    run_dir = tmp_path / "digits" / "lenet" / "0"
    assert proc.returncode == 1
    assert one_error_line(proc.stderr) == (f"hparr train: error: file too large while writing "
                                           f"{run_dir / 'lenet_0.tar'}; the previous snapshots are intact")
    assert sorted(p.name for p in run_dir.iterdir()) == ["lenet_init_0.pt", "tracking.csv", "train.log"]
    ck.load_state_dict_file(run_dir / "lenet_init_0.pt")


@pytest.fixture
def small_disk(tmp_path):
    """A 1.3 MB file system, where this test may mount one (root, with mount)."""
    disk = tmp_path / "disk"
    disk.mkdir()
    if os.geteuid() != 0 or not shutil.which("mount"):
        pytest.skip("mounting a tmpfs needs root")
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1300k", "tmpfs", str(disk)],
                      capture_output=True, check=False).returncode != 0:
        pytest.skip("cannot mount a tmpfs here")
    try:
        yield disk
    finally:
        subprocess.run(["umount", str(disk)], capture_output=True, check=False)


def test_a_really_full_disk(small_disk, capsys):
    def train_on_disk(tb_logdir, log="train.log"):
        return main(["train", *LENET, "--epochs", "1", "--seed", "0", "--models-path", str(small_disk),
                     "--tb-logdir", tb_logdir, "--log", log, "--no-progress"])

    assert train_on_disk("") == 1
    run_dir = small_disk / "digits" / "lenet" / "0"
    assert one_error_line(capsys.readouterr().err) == (
        f"hparr train: error: no space left on device while writing {run_dir / 'lenet_0.tar'}; "
        "the previous snapshots are intact")
    assert sorted(p.name for p in run_dir.iterdir()) == ["lenet_init_0.pt", "tracking.csv", "train.log"]

    # no byte left: the log file, or TensorBoard's (written by a thread of its own), is the first to fail
    fd = os.open(small_disk / "filler", os.O_WRONLY | os.O_CREAT)
    try:
        while os.write(fd, bytes(4096)):
            pass
    except OSError as exc:
        assert exc.errno == errno.ENOSPC
    finally:
        os.close(fd)
    assert train_on_disk("", log="new.log") == 1
    assert one_error_line(capsys.readouterr().err).startswith(
        f"hparr train: error: no space left on device while writing {run_dir / 'new.log'}")
    assert train_on_disk(str(small_disk / "tb")) == 1
    assert one_error_line(capsys.readouterr().err).startswith(
        f"hparr train: error: no space left on device while writing {small_disk / 'tb' / 'digits' / 'lenet' / '0'}")
    assert ck.torch_load(run_dir / "lenet_init_0.pt")["epochs_completed"] == 0


def test_a_torch_write_failure_without_its_errno_is_told_by_the_disk(tmp_path, monkeypatch):
    torn = RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos 206208 vs 206096")
    target = tmp_path / "lenet_3.tar"
    monkeypatch.setattr(files, "free_bytes", lambda directory: 0)
    assert str(files.write_error(torn, target, "snapshots")) == (
        f"no space left on device while writing {target}; the previous snapshots are intact")
    monkeypatch.setattr(files, "free_bytes", lambda directory: 1 << 40)
    assert str(files.write_error(torn, target)) == (
        f"writing {target} failed ([enforce fail at inline_container.cc:672] . unexpected pos 206208 vs "
        "206096); the previous files are intact")
    assert files.write_error(ValueError("a bug, not a write failure"), target) is None
    # through atomic_path: the temporary file is removed, the file already there is kept
    files.write_text(target, "before")
    with pytest.raises(files.HparrError, match="file too large while writing"), files.atomic_path(target) as tmp:
        tmp.write_text("partial")
        raise OSError(errno.EFBIG, os.strerror(errno.EFBIG))
    assert target.read_text() == "before" and [p.name for p in tmp_path.iterdir()] == ["lenet_3.tar"]


def test_written_files_are_made_with_the_umask_from_any_thread(tmp_path):
    """Every writer's file gets the permissions of any new file (0666 less the umask), and the umask of the
    process is left alone, also when the file is written by another thread."""
    from concurrent.futures import ThreadPoolExecutor

    previous = os.umask(0o027)
    try:
        files.write_text(tmp_path / "a.txt", "a")
        with ThreadPoolExecutor(2) as pool:
            list(pool.map(lambda i: files.write_text(tmp_path / f"t{i}.txt", str(i)), range(20)))
        assert os.umask(0o027) == 0o027
    finally:
        os.umask(previous)
    modes = {p.name: p.stat().st_mode & 0o777 for p in tmp_path.iterdir()}
    assert len(modes) == 21 and set(modes.values()) == {0o640}
    assert (tmp_path / "t7.txt").read_text() == "7"
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


def _shown_defaults(command: str) -> dict[str, str]:
    """{flag: the text in brackets that ends its help} of a command's --help, as printed."""
    return {flag: m.group(1) for flag, text in help_entries(command_parser(command)).items()
            if (m := re.search(r"\[([^\[\]]*)\]$", text))}


def test_each_command_help_shows_the_defaults_it_uses(monkeypatch):
    monkeypatch.setenv("COLUMNS", "400")
    for command in ("train", "reproduce", "study", "projections", "reinit", "report"):
        parser = command_parser(command)
        parsed = vars(build_parser(command).parse_args([command] + (["RUN"] if command == "report" else [])))
        defaults = {a.option_strings[0]: parsed.get(a.dest) for a in parser.arguments if a.option_strings}
        for flag, shown in _shown_defaults(command).items():
            value = defaults[flag]
            if isinstance(value, (int, float, str)) and not isinstance(value, bool) and shown not in ("off",) \
                    and not shown.startswith(("0 =", "ignored", "OUT", "auto", "every", "cores", "the dataset")):
                same = shown == str(value)
                if isinstance(value, (int, float)):
                    try:
                        same = float(shown) == float(value)
                    except ValueError:
                        same = False
                assert same, (command, flag, shown, value)
    reproduce, train_ = _shown_defaults("reproduce"), _shown_defaults("train")
    assert (reproduce["--epochs"], reproduce["--lr"], reproduce["--seed"]) == ("30", "0.01", "0")
    assert (train_["--epochs"], train_["--lr"]) == ("20", "0.001")
    assert reproduce["--models-path"] == "ignored: OUT/models" and reproduce["--snapshot-every"] == "5"
    study = _shown_defaults("study")
    assert study["--epochs"] == "30" and study["--out"] == "runs/study" and study["--arch"] == "lenet"
    assert build_parser("reproduce").parse_args(["reproduce"]).epochs == 30


def test_an_onnx_file_without_the_onnx_extra_names_the_extra(snapshots, capsys, monkeypatch):
    """Without the onnx package hparr still imports and works, and an ONNX file gets one line naming the extra."""
    monkeypatch.setitem(sys.modules, "onnx", None)  # `import onnx` raises ImportError
    assert main(["projections", "--load-from", str(snapshots / "gelu_1.onnx"), "--results",
                 str(snapshots / "res_onnx")]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [f"hparr projections: error: {snapshots / 'gelu_1.onnx'} is an ONNX model: reading it needs the "
                   "onnx extra (pip install 'hparr[onnx]')"]
    assert not (snapshots / "res_onnx").exists()
