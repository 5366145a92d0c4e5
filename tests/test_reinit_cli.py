"""`hparr reinit` end to end: the original code's snapshot formats, `hparr train` snapshots, errors."""
from __future__ import annotations

import json
import logging
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from bench import fakedata as formats
from hparr import checkpoints, cli, files, reinit
from hparr.cli import main
from hparr.data import DataOptions, load_data, make_loader
from hparr.data import formats as data_formats
from hparr.models import build_model

ROOT = Path(__file__).resolve().parents[1]
N_TEST = 200


def original_snapshots(directory: Path, in_channels: int = 3) -> Path:
    """lenet snapshots as the original code wrote them: a plain state_dict at init, a .tar dict whose
    keys carry its DataParallel's `features.module.`, and a final state_dict. Returns the final one."""
    files.save_torch(build_model("lenet", 10, in_channels, seed=11).state_dict(), directory / "lenet_init_0.pt")
    mid = {k.replace("features.", "features.module.", 1): v
           for k, v in build_model("lenet", 10, in_channels, seed=12).state_dict().items()}
    files.save_torch({"epoch": 4, "top1_acc": 31.0, "top5_acc": 70.0, "model_state_dict": mid,
                      "optimizer_state_dict": {"state": {}, "param_groups": []}, "scheduler_state_dict": {}},
                     directory / "lenet_4.tar")
    final = directory / "lenet_20.pt"
    files.save_torch(build_model("lenet", 10, in_channels, seed=13).state_dict(), final)
    return final


@pytest.fixture(scope="module")
def cifar(tmp_path_factory):
    root = tmp_path_factory.mktemp("reinit_cifar")
    formats.write_cifar10(root / "data", formats.random_images(10, 3, 32, 32, 1), formats.random_labels(10, 10, 1),
                          formats.random_images(N_TEST, 3, 32, 32, 2), formats.random_labels(N_TEST, 10, 2))
    snaps = root / "models"
    snaps.mkdir()
    final = original_snapshots(snaps)
    inits = root / "inits.txt"
    inits.write_text(f"{snaps / 'lenet_init_0.pt'}\n\n{snaps / 'lenet_7.tar'}\n   \n{snaps / 'lenet_4.tar'}\n")
    return root, final, inits


def run_cli(capsys, *args):
    # the command's log handler writes to the sys.stderr of its creation; pytest swaps it per test
    logging.getLogger("hparr").handlers.clear()
    rc = main(["reinit", *map(str, args)])
    out = capsys.readouterr()
    return rc, out.out, out.err


def expected_counts(root: Path, final: Path, doc: dict) -> reinit.SweepCounts:
    """The plain loop on weights and test data loaded independently of the command."""
    data = load_data(DataOptions(dataset="cifar10", data_path=str(root / "data")))
    model = build_model("lenet", 10, 3, 32)
    checkpoints.load_model_weights(model, final)
    snaps = final.parent
    alternatives = {"0": checkpoints.load_state_dict_file(snaps / "lenet_init_0.pt"),
                    "5": checkpoints.load_state_dict_file(snaps / "lenet_4.tar"),
                    "rand": build_model("lenet", 10, 3, 32, seed=doc["seeds"]["rand"]).state_dict()}
    return reinit.plain_reinit_sweep(model, alternatives, make_loader(data, "test", 64))


def test_original_formats_cifar(cifar, capsys, monkeypatch):
    root, final, inits = cifar
    results = root / "results"
    read = []  # the CIFAR batch files decoded: the test set's only (the training split is not evaluated)
    reader = data_formats._read_cifar_batch
    monkeypatch.setattr(data_formats, "_read_cifar_batch", lambda path, *a: read.append(path.name) or reader(path, *a))
    rc, out, err = run_cli(capsys, "--arch", "lenet", "--dataset", "cifar10", "--data-path", root / "data",
                           "--load-from", final, "--inits-from", inits, "--rand", "--seed", 3, "--plots",
                           "--results", results, "--batch-size", 64, "--no-progress")
    assert rc == 0, err
    assert "lenet_7.tar" in err and "skipping" in err  # the missing file is a warning
    out_dir = results / "cifar10" / "lenet" / "3"
    doc = json.loads((out_dir / "reinit_lenet_20.json").read_text())

    # the original layout
    assert list(doc["init_from_epoch"]) == ["0", "5", "rand"]
    assert doc["arch"] == "lenet" and doc["dataset"] == "cifar10" and doc["seed"] == "3" and doc["epoch"] == "20"
    assert all(len(v) == 6 for v in doc["init_from_epoch"].values())
    # the additions
    assert doc["layers"] == ["features.0", "features.2", "features.5", "features.7", "features.10", "features.12"]
    assert list(doc["top5_init_from_epoch"]) == ["0", "5", "rand"]
    assert "BatchNorm" in doc["batchnorm"] and "left as trained" in doc["batchnorm"]
    assert doc["normalization"]["mean"] == [0.4914, 0.4822, 0.4465]
    assert doc["normalization"]["std"] == [0.2023, 0.1994, 0.2010]
    assert set(doc["versions"]) >= {"torch", "torchvision", "hparr", "numpy"}
    assert isinstance(doc["seeds"]["rand"], int) and doc["seeds"]["seed"] == 3
    assert doc["init_files"]["5"].endswith("lenet_4.tar")
    assert doc["num_test"] == N_TEST and doc["method"] == "shared-prefix"

    assert read == ["test_batch"]
    # the same accuracies as the plain loop on the same weights and test data (both splits read there)
    ref = expected_counts(root, final, doc)
    assert doc["top1_test"] == ref.trained_accuracy(1) and doc["top5_test"] == ref.trained_accuracy(5)
    assert doc["init_from_epoch"] == ref.accuracy(1)
    assert doc["top5_init_from_epoch"] == ref.accuracy(5)
    assert doc["correct_top1"] == {k: ref.correct[i, :, 0].tolist() for i, k in enumerate(ref.labels)}
    drop = doc["relative_drop"]["rand"][2]
    assert drop == pytest.approx((doc["top1_test"] - doc["init_from_epoch"]["rand"][2]) / doc["top1_test"])

    assert (out_dir / "reinit_lenet_20.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert (out_dir / "reinit_lenet_20.pdf").read_bytes()[:5] == b"%PDF-"
    log_text = (out_dir / "reinit_weights.log").read_text()
    assert "re-randomized" in log_text and "lenet_7.tar" in log_text
    assert not [p for p in out_dir.iterdir() if p.name.startswith(".")]  # no temporary files left

    # a rerun keeps the finished result unless --overwrite; one with other options is refused
    before = (out_dir / "reinit_lenet_20.json").stat().st_mtime_ns
    rc, out, _ = run_cli(capsys, "--arch", "lenet", "--dataset", "cifar10", "--data-path", root / "data",
                         "--load-from", final, "--inits-from", inits, "--rand", "--seed", 3, "--results", results)
    assert rc == 0 and "kept" in out
    assert (out_dir / "reinit_lenet_20.json").stat().st_mtime_ns == before
    rc, out, err = run_cli(capsys, "--arch", "lenet", "--dataset", "cifar10", "--data-path", root / "data",
                           "--load-from", final, "--inits-from", inits, "--seed", 3, "--results", results)
    assert rc == 2 and err.count("error:") == 1 and "--rand on there, off here" in err.splitlines()[-1]
    assert "--overwrite" in err.splitlines()[-1]
    assert (out_dir / "reinit_lenet_20.json").stat().st_mtime_ns == before
    rc, out, _ = run_cli(capsys, "--arch", "lenet", "--dataset", "cifar10", "--data-path", root / "data",
                         "--load-from", final, "--inits-from", inits, "--rand", "--seed", 3, "--results", results,
                         "--overwrite", "--no-progress")
    assert rc == 0 and "kept" not in out
    assert json.loads((out_dir / "reinit_lenet_20.json").read_text())["init_from_epoch"] == doc["init_from_epoch"]

    # --method plain writes the same numbers; the directory form of --inits-from finds the same snapshots
    rc, _, err = run_cli(capsys, "--arch", "lenet", "--dataset", "cifar10", "--data-path", root / "data",
                         "--load-from", final, "--inits-from", final.parent, "--rand", "--seed", 3,
                         "--results", root / "plain", "--method", "plain", "--no-progress")
    assert rc == 0, err
    plain = json.loads((root / "plain" / "cifar10" / "lenet" / "3" / "reinit_lenet_20.json").read_text())
    assert plain["method"] == "plain"
    assert plain["init_from_epoch"] == doc["init_from_epoch"]
    assert plain["top5_init_from_epoch"] == doc["top5_init_from_epoch"]


def test_errors_are_one_line(cifar, capsys, tmp_path):
    root, final, inits = cifar
    base = ["--arch", "lenet", "--dataset", "cifar10", "--data-path", root / "data", "--results", tmp_path]
    empty = tmp_path / "empty.txt"
    empty.write_text("\n \n")
    cases = [
        ([*base, "--load-from", final, "--inits-from", tmp_path / "nope.txt"], 2, "no such file or directory"),
        ([*base, "--load-from", final, "--inits-from", empty], 2, "lists no existing snapshot"),
        ([*base, "--load-from", final, "--inits-from", ""], 2, "--inits-from is empty"),
        ([*base, "--load-from", final], 2, "nothing to evaluate"),
        ([*base, "--load-from", tmp_path / "gone.pt", "--rand"], 2, "no such file or folder"),  # as projections
        (["--arch", "vgg11", "--dataset", "cifar10", "--data-path", root / "data", "--load-from", final,
          "--rand", "--results", tmp_path], 1, "does not match this architecture"),
        ([*base, "--load-from", final, "--rand", "--batch-size", 0], 2, "--batch-size must be >= 1"),
    ]
    for args, code, message in cases:
        rc, _, err = run_cli(capsys, *args)
        assert rc == code, (args, err)
        lines = err.strip().splitlines()
        assert message in lines[-1] and lines[-1].startswith("hparr reinit: error:"), err
        assert "Traceback" not in err


@pytest.mark.slow
def test_train_snapshots_through_the_paper_script(tmp_path, capsys):
    """Snapshots of `hparr train` on digits: epochs from their metadata, their seed checked, the root script."""
    assert main(["train", "--arch", "lenet", "--dataset", "digits", "--epochs", "1", "--seed", "5", "--snapshot-every",
                 "1", "--models-path", str(tmp_path / "models"), "--tb-logdir", "", "--no-progress"]) == 0
    run_dir = tmp_path / "models" / "digits" / "lenet" / "5"
    final = run_dir / "lenet_1.pt"
    args = ["--arch", "lenet", "--dataset", "digits", "--load-from", str(final), "--inits-from", str(run_dir),
            "--rand", "--results", str(tmp_path / "results"), "--with-linear"]
    proc = subprocess.run([sys.executable, str(ROOT / "reinit_weights.py"), *args, "--seed", "5"],
                          capture_output=True, text=True, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    doc = json.loads((tmp_path / "results" / "digits" / "lenet" / "5" / "reinit_lenet_1.json").read_text())
    # lenet_init_0.pt -> epoch 0; lenet_0.tar -> epoch 1, the trained snapshot's own epoch (the same weights: a
    # row that changes nothing), is skipped with the trained snapshot itself
    assert list(doc["init_from_epoch"]) == ["0", "rand"]
    assert doc["epoch"] == "1" and doc["with_linear"] is True
    assert len(doc["layers"]) == 9 and doc["layers"][-1] == "classifier.6"
    assert doc["seeds"]["model"]["seed"] == 5
    assert doc["normalization"]["mean"] == [0.3052]  # recorded in the snapshot

    rc, _, err = run_cli(capsys, *args, "--seed", 6)
    assert rc == 1 and "trained with seed 5, not --seed 6" in err


@pytest.mark.slow
def test_plots_folder_and_a_rerun_of_a_class_subset_snapshot(tmp_path, capsys, monkeypatch):
    """`--plots DIR` as the paper's README passes it (both script names and `hparr reinit`), and a rerun that
    keeps the finished result of a snapshot whose class subset comes from the snapshot itself."""
    import runpy

    assert main(["train", "--arch", "lenet", "--dataset", "digits", "--epochs", "1", "--seed", "5",
                 "--subsample-classes", "3", "--models-path", str(tmp_path / "models"), "--tb-logdir", "",
                 "--no-progress"]) == 0
    run_dir = tmp_path / "models" / "digits_3" / "lenet" / "5"
    args = ["--arch", "lenet", "--dataset", "digits", "--load-from", str(run_dir / "lenet_1.pt"), "--inits-from",
            str(run_dir), "--rand", "--seed", "5", "--results", str(tmp_path / "results")]
    result = tmp_path / "results" / "digits_3" / "lenet" / "5" / "reinit_lenet_1.json"
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "path", list(sys.path))  # the script puts its src/ first

    def exit_here(code):  # a script ends its process at once (hparr.cli.run): here, it ends the script only
        raise SystemExit(code)

    monkeypatch.setattr(cli, "end_process", exit_here)
    for script, figs in (("reinit_layers.py", "figs"), ("reinit_weights.py", "figs2")):
        # each script file run as `python SCRIPT` runs it, in this process (reinit_weights.py runs in a process of
        # its own in the test above)
        monkeypatch.setattr(sys, "argv", [str(ROOT / script), *map(str, args), "--plots", figs, "--overwrite"])
        with pytest.raises(SystemExit) as exited:
            runpy.run_path(str(ROOT / script), run_name="__main__")
        assert exited.value.code == 0, capsys.readouterr().err
        for suffix, magic in ((".png", b"\x89PNG"), (".pdf", b"%PDF")):
            assert (tmp_path / figs / "digits" / "lenet" / f"reinit_lenet_1{suffix}").read_bytes()[:4] == magic
        assert not list(result.parent.glob("*.png"))  # with a folder, nothing is drawn beside the result
    doc = json.loads(result.read_text())
    assert doc["subsample_classes"] == 3 and len(doc["class_subset"]["classes"]) == 3

    before = result.stat().st_mtime_ns
    rc, out, _ = run_cli(capsys, *args, "--plots")  # no --subsample-classes: the snapshot records 3
    assert rc == 0 and f"kept {result}" in out and result.stat().st_mtime_ns == before
    rc, out, err = run_cli(capsys, *args, "--plots", "--overwrite", "--no-progress")
    assert rc == 0, err
    assert result.with_suffix(".png").read_bytes()[:4] == b"\x89PNG"  # bare --plots: beside the result
    assert json.loads(result.read_text())["init_from_epoch"] == doc["init_from_epoch"]


def test_a_result_is_reused_only_from_the_same_checkpoints_and_options(cifar, capsys, tmp_path):
    root, final, _ = cifar
    snaps = tmp_path / "models"
    snaps.mkdir()
    trained, init0 = snaps / "lenet_20.pt", snaps / "lenet_init_0.pt"
    shutil.copy(final, trained)
    shutil.copy(final.parent / "lenet_init_0.pt", init0)
    results = tmp_path / "results"
    base = ["--arch", "lenet", "--dataset", "cifar10", "--data-path", root / "data", "--inits-from", init0,
            "--seed", 3, "--max-test-images", 40, "--no-progress"]
    target = results / "cifar10" / "lenet" / "3" / "reinit_lenet_20.json"
    rc, _, err = run_cli(capsys, *base, "--load-from", trained, "--results", results)
    assert rc == 0, err
    first = target.read_bytes()

    # other options: one line, exit 2, the result byte-identical
    for extra, shown in ((["--rand-trials", 2], "--rand-trials 1 there, 2 here"),
                         (["--inits-from", final.parent / "lenet_4.tar"], "--inits-from lenet_init_0.pt there, "
                                                                          "lenet_4.tar here"),
                         (["--max-test-images", 30], "--max-test-images 40 there, 30 here")):
        rc, _, err = run_cli(capsys, *base, "--load-from", trained, "--results", results, *extra)
        assert rc == 2 and err.count("\n") == 1 and shown in err and "--overwrite" in err, err
        assert target.read_bytes() == first
    # --with-bn is a result of its own, never the one without
    rc, out, err = run_cli(capsys, *base, "--load-from", trained, "--results", results, "--with-bn")
    assert rc == 0 and "kept" not in out and target.read_bytes() == first
    assert json.loads(target.with_name("reinit_lenet_20_bn.json").read_text())["with_bn"] is True

    # touched but the same tensors: kept
    os.utime(trained, ns=(1, 1))
    rc, out, _ = run_cli(capsys, *base, "--load-from", trained, "--results", results)
    assert rc == 0 and "kept" in out and target.read_bytes() == first

    def fresh(load_from: Path) -> dict:
        other = tmp_path / "fresh"
        shutil.rmtree(other, ignore_errors=True)
        assert run_cli(capsys, *base, "--load-from", load_from, "--results", other)[0] == 0
        return json.loads((other / "cifar10" / "lenet" / "3" / "reinit_lenet_20.json").read_text())

    # a retrained checkpoint (same name, new weights): computed again, saying why
    files.save_torch(build_model("lenet", 10, 3, seed=14).state_dict(), trained)
    rc, out, err = run_cli(capsys, *base, "--load-from", trained, "--results", results)
    assert rc == 0 and "kept" not in out and "lenet_20.pt has changed since" in err
    doc = json.loads(target.read_text())
    assert doc["correct_top1"] == fresh(trained)["correct_top1"] and target.read_bytes() != first

    # another file of the same name elsewhere: computed again
    elsewhere = tmp_path / "elsewhere" / "lenet_20.pt"
    elsewhere.parent.mkdir()
    files.save_torch(build_model("lenet", 10, 3, seed=15).state_dict(), elsewhere)
    rc, out, err = run_cli(capsys, *base, "--load-from", elsewhere, "--results", results)
    assert rc == 0 and "computed from another file" in err
    assert json.loads(target.read_text())["correct_top1"] == fresh(elsewhere)["correct_top1"]


def test_rows_name_their_split_no_none_is_printed_and_the_last_line_counts_the_critical_layers(tmp_path, capsys):
    from hparr.training import TrainSettings, train

    run = train(TrainSettings(arch="lenet", data=DataOptions(dataset="digits", train_size=200), epochs=1, seed=0,
                              track=False, snapshot_every=0,
                              models_path=str(tmp_path / "models"), tb_logdir=None, progress=False))
    inits = tmp_path / "inits"
    inits.mkdir()
    files.save_torch(build_model("lenet", 10, 1, seed=1).state_dict(), inits / "lenet_init_0.pt")
    # the trained snapshot after 1 epoch; --inits-from an initialization of another seed (a snapshot of the
    # trained one's own epoch would be skipped)
    args = ["--arch", "lenet", "--dataset", "digits", "--load-from", Path(run.run_dir) / "lenet_1.pt",
            "--inits-from", inits, "--rand", "--eval-split", "TRAIN", "--results", tmp_path / "results",
            "--eval-processes", "1", "--no-progress"]
    rc, out, err = run_cli(capsys, *args)
    assert rc == 0, err
    wrote = next(line for line in out.splitlines() if line.startswith("wrote "))
    doc = json.loads(Path(wrote.removeprefix("wrote ").split(", ")[0]).read_text())
    assert doc["eval_split"] == "train"
    lines = [line for line in out.splitlines() if line != wrote]
    assert not any("test" in line for line in lines)
    assert lines[0].startswith(f"lenet on digits (epoch 1, 200 training images with the labels the model was "
                               f"trained on (no augmentation)): train top-1 {doc['top1_test']:.2f}%")
    rows = {line.split(":")[0].strip(): line for line in lines if ": train " in line}
    assert rows["from epoch 0"].startswith("from epoch 0: train top-1 ")
    assert rows["re-randomized"].startswith("re-randomized: train top-1 ")
    assert sum(line.strip().startswith("train loss ") for line in lines) == 2
    # critical: a relative drop of top-1 above 0.1 when re-initialized to epoch 0 (docs/method.md, section 4)
    trained_top1 = doc["top1_test"]
    critical = [name for name, top1 in zip(doc["layers"], doc["init_from_epoch"]["0"])
                if (trained_top1 - top1) / trained_top1 > 0.1]
    headline = (f"{len(critical)} of 6 layers critical on the training images (the labels trained on) (relative "
                f"top-1 drop above 0.1 when re-initialized to epoch 0)" + (": " + ", ".join(critical) if critical
                                                                            else ""))
    assert lines[-1] == headline
    rc, out, err = run_cli(capsys, *args)  # kept: the same last line
    assert rc == 0 and out.splitlines()[0].startswith("kept ") and out.splitlines()[-1] == headline

    # a plain state_dict records no epoch: its header says none (not "epoch None")
    trained = tmp_path / "trained.pt"
    files.save_torch(build_model("lenet", 10, 1, seed=2).state_dict(), trained)
    rc, out, err = run_cli(capsys, "--arch", "lenet", "--dataset", "digits", "--load-from", trained, "--rand",
                           "--max-test-images", 64, "--results", tmp_path / "results", "--eval-processes", "1",
                           "--no-progress")
    assert rc == 0, err
    assert "None" not in out and out.startswith("lenet on digits (64 test images): test top-1 ")
    assert out.splitlines()[-1].endswith("on the test images (relative top-1 drop above 0.1 when re-randomized)") \
        or ": " in out.splitlines()[-1]


def test_the_critical_count_uses_the_epoch_0_row_else_the_first_alternative_and_names_the_split():
    from hparr.reinit.documents import critical_headline

    doc = {"layers": ["a", "b", "c"], "top1_test": 50.0, "eval_split": "test",
           "relative_drop": {"5": [0.0, 0.0, 0.0], "0": [0.05, 0.5, 0.1], "rand": [0.9, 0.9, 0.9]}}
    assert critical_headline(doc) == ("1 of 3 layers critical on the test images (relative top-1 drop above 0.1 "
                                      "when re-initialized to epoch 0): b")
    assert critical_headline(doc, threshold=0.01) == ("3 of 3 layers critical on the test images (relative top-1 "
                                                      "drop above 0.01 when re-initialized to epoch 0): a, b, c")
    del doc["relative_drop"]["0"]
    assert critical_headline(doc).startswith("0 of 3 layers critical on the test images (relative top-1 drop "
                                             "above 0.1 when re-initialized to epoch 5)")
    doc["relative_drop"] = {"rand": [0.9, 0.0, 0.2]}
    assert critical_headline({**doc, "granularity": "block"}) == (
        "2 of 3 blocks critical on the test images (relative top-1 drop above 0.1 when re-randomized): a, c")
    assert critical_headline({**doc, "top1_test": 0.0, "relative_drop": {"0": [None, None, None]}}) == (
        "critical layers: undefined on the test images (the trained model's top-1 there is 0.00%, so a relative "
        "drop is not)")


def test_a_refused_reinit_writes_no_log_and_no_folder(tmp_path, capsys):
    """A snapshot that the model cannot take is refused in one line, and the results folder is not even made
    (the log file is started before the snapshot is read, and removed with its folders on a refusal)."""
    snapshot = tmp_path / "alexnet_1.pt"
    files.save_torch(build_model("alexnet", 10, 1).state_dict(), snapshot)
    results = tmp_path / "results"
    rc, out, err = run_cli(capsys, "--arch", "lenet", "--dataset", "digits", "--load-from", snapshot, "--rand",
                           "--results", results, "--no-progress")
    errors = [line for line in err.splitlines() if line.startswith("hparr reinit: error:")]
    assert rc == 1 and len(errors) == 1 and "does not match this architecture" in errors[0] and "Traceback" not in err
    assert not results.exists()
    # a log that was there before stays, with what it held
    log = results / "digits" / "lenet" / "reinit_weights.log"
    log.parent.mkdir(parents=True)
    log.write_text("an earlier run\n")
    rc, out, err = run_cli(capsys, "--arch", "lenet", "--dataset", "digits", "--load-from", snapshot, "--rand",
                           "--results", results, "--no-progress")
    assert rc == 1 and log.read_text().startswith("an earlier run\n")
