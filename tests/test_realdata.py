"""Fashion-MNIST, KMNIST and SVHN through their real readers, --train-size, --until-train-acc, the
re-initialization sweep on the training images, and the study's reading of its cells."""
from __future__ import annotations

import gzip
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from scipy import stats

from bench import fakedata
from hparr import checkpoints as ck
from hparr import data as hd
from hparr import reinit
from hparr.cli import main
from hparr.data import DataOptions, load_data, make_loader
from hparr.errors import HparrError, UsageError
from hparr.layout import RUN_REPORT_FILES, Corruption
from hparr.models import build_model
from hparr.report import study as study_report
from hparr.training import TrainSettings, configuration_differences, setup, train, weight_configuration


def idx_arrays(n_train: int = 60, n_test: int = 20, seed: int = 5):
    return (fakedata.random_images(n_train, 1, 28, 28, seed)[:, 0], fakedata.random_labels(n_train, 10, seed),
            fakedata.random_images(n_test, 1, 28, 28, seed + 1)[:, 0], fakedata.random_labels(n_test, 10, seed + 1))


def svhn_arrays(n_train: int = 50, n_test: int = 20, seed: int = 7):
    return (fakedata.random_images(n_train, 3, 32, 32, seed), fakedata.random_labels(n_train, 10, seed),
            fakedata.random_images(n_test, 3, 32, 32, seed + 1), fakedata.random_labels(n_test, 10, seed + 1))


def one_line_error(capsys) -> str:
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "Traceback" not in err, err
    return err


# --- the datasets ----------------------------------------------------------------------------------

@pytest.mark.parametrize("dataset,folder", [("fashionmnist", "FashionMNIST"), ("kmnist", "KMNIST")])
def test_idx_datasets_read_as_torchvision_reads_them(tmp_path, dataset, folder):
    import torchvision.datasets as tvd

    arrays = idx_arrays()
    fakedata.write_mnist(tmp_path, *arrays, dataset=dataset)
    d = load_data(DataOptions(dataset=dataset, data_path=str(tmp_path)))
    cls = {"fashionmnist": tvd.FashionMNIST, "kmnist": tvd.KMNIST}[dataset]
    for split, theirs in (("train", cls(str(tmp_path), train=True)), ("test", cls(str(tmp_path), train=False))):
        ours = getattr(d, split)
        assert torch.equal(ours.images[:, 0], theirs.data) and torch.equal(ours.labels, theirs.targets)
    info = hd.dataset_info(dataset)
    assert (d.in_channels, d.image_size, d.num_classes, d.mean, d.std) == (1, 28, 10, info.mean, info.std)
    # gzipped files, as torchvision downloads them, in the same folder
    for path in (tmp_path / folder / "raw").iterdir():
        (path.parent / f"{path.name}.gz").write_bytes(gzip.compress(path.read_bytes()))
        path.unlink()
    again = load_data(DataOptions(dataset=dataset, data_path=str(tmp_path)))
    assert torch.equal(again.train.images, d.train.images) and torch.equal(again.test.labels, d.test.labels)
    # each dataset is looked for in its own folder only
    other = "kmnist" if dataset == "fashionmnist" else "fashionmnist"
    with pytest.raises(HparrError, match="/raw/"):
        load_data(DataOptions(dataset=other, data_path=str(tmp_path)))


def test_svhn_reads_as_torchvision_reads_it(tmp_path, monkeypatch):
    import torchvision.datasets as tvd

    monkeypatch.setattr(tvd.SVHN, "_check_integrity", lambda self: True)  # our tiny files lack the md5 sums
    x_tr, y_tr, x_te, y_te = svhn_arrays()
    fakedata.write_svhn(tmp_path, x_tr, y_tr, x_te, y_te)
    d = load_data(DataOptions(dataset="svhn", data_path=str(tmp_path)))
    for split, ours, images, labels in (("train", d.train, x_tr, y_tr), ("test", d.test, x_te, y_te)):
        theirs = tvd.SVHN(str(tmp_path), split=split)
        assert np.array_equal(ours.images.numpy(), theirs.data) and ours.labels.tolist() == list(theirs.labels)
        assert np.array_equal(ours.images.numpy(), images) and ours.labels.tolist() == labels.tolist()
    info = hd.dataset_info("svhn")
    assert (d.in_channels, d.image_size, d.num_classes, d.mean, d.std) == (3, 32, 10, info.mean, info.std)


def test_augmentation_rules(tmp_path):
    fakedata.write_mnist(tmp_path, *idx_arrays(), dataset="fashionmnist")
    fakedata.write_mnist(tmp_path, *idx_arrays(), dataset="kmnist")
    fakedata.write_svhn(tmp_path, *svhn_arrays())
    expected = {"fashionmnist": (True, True), "kmnist": (True, False), "svhn": (True, False)}
    for name, (crop, flip) in expected.items():
        d = load_data(DataOptions(dataset=name, data_path=str(tmp_path), augmentation=True))
        loader = make_loader(d, "train", 16)
        assert (loader.crop, loader.flip) == (crop, flip), name
        assert ("flip" in d.meta["augmentation"]) == flip
        assert not make_loader(d, "test", 16)._augmenting


def test_every_option_on_the_new_datasets(tmp_path):
    x_tr, y_tr, x_te, y_te = idx_arrays(400, 50)
    fakedata.write_mnist(tmp_path, x_tr, y_tr, x_te, y_te, dataset="fashionmnist")
    opts = dict(dataset="fashionmnist", data_path=str(tmp_path), subsample_classes=4, class_sample_seed=3,
                split=0.25, shuffle=True, stratified=True, split_seed=1, train_size=60, train_size_seed=2)
    clean = load_data(DataOptions(**opts))
    noisy = load_data(DataOptions(**opts, noise=1.0, noise_seed=4))
    classes = clean.classes
    kept = np.isin(y_tr, classes).sum()
    assert clean.num_classes == 4 and len(clean.train) == 60 and len(clean.val) == round(0.25 * kept) // 4 * 4
    # the subset is the same; every one of its labels is corrupted, the validation set is not
    assert torch.equal(clean.train.images, noisy.train.images)
    assert (clean.train.labels != noisy.train.labels).all() and torch.equal(clean.val.labels, noisy.val.labels)
    assert noisy.meta["label_noise"]["count"] == 60 and noisy.meta["train_subset"]["of"] == kept - len(clean.val)
    fakedata.write_svhn(tmp_path, *svhn_arrays(200, 20))
    shuffled = load_data(DataOptions(dataset="svhn", data_path=str(tmp_path), noise=-1, subsample_classes=5,
                                     train_size=40))
    plain = load_data(DataOptions(dataset="svhn", data_path=str(tmp_path), subsample_classes=5, train_size=40))
    assert torch.equal(shuffled.train.labels, plain.train.labels)
    assert torch.equal(shuffled.train.images.sort(dim=-1).values.flatten(2).sort(-1).values,
                       plain.train.images.flatten(2).sort(-1).values)
    assert not torch.equal(shuffled.train.images, plain.train.images)


def test_missing_or_truncated_files_are_named_in_one_line(tmp_path, capsys):
    models = tmp_path / "models"
    paths = fakedata.write_mnist(tmp_path, *idx_arrays(), gz=True, dataset="kmnist")
    paths[0].write_bytes(paths[0].read_bytes()[:-40])
    fakedata.write_svhn(tmp_path, *svhn_arrays())
    (tmp_path / "test_32x32.mat").write_bytes((tmp_path / "test_32x32.mat").read_bytes()[:3000])
    cases = {"kmnist": "train-images-idx3-ubyte.gz", "svhn": "test_32x32.mat", "fashionmnist": "FashionMNIST/raw"}
    for name, named in cases.items():
        assert main(["train", "--arch", "lenet", "--dataset", name, "--data-path", str(tmp_path),
                     "--models-path", str(models), "--tb-logdir", ""]) == 1
        assert named in one_line_error(capsys)
    (tmp_path / "train_32x32.mat").unlink()
    with pytest.raises(HparrError, match="missing train_32x32.mat"):
        load_data(DataOptions(dataset="svhn", data_path=str(tmp_path)))
    assert not models.exists()


# --- --train-size ----------------------------------------------------------------------------------

def test_stratified_subset_keeps_the_class_shares_and_is_seeded():
    labels = np.random.default_rng(0).permutation(np.repeat(np.arange(4), [50, 30, 15, 5]))
    for size in (1, 7, 10, 33, 100):
        idx = hd.stratified_subset(labels, size, 4, seed=1)
        assert len(idx) == size and len(np.unique(idx)) == size and np.all(np.diff(idx) > 0)
        counts = np.bincount(labels[idx], minlength=4)
        assert np.all(np.abs(counts - size * np.array([50, 30, 15, 5]) / 100) < 1)
        assert np.array_equal(idx, hd.stratified_subset(labels, size, 4, seed=1))
    assert not np.array_equal(hd.stratified_subset(labels, 33, 4, 1), hd.stratified_subset(labels, 33, 4, 2))
    assert np.array_equal(hd.stratified_subset(labels, 100, 4, 5), np.arange(100))
    with pytest.raises(UsageError):
        hd.stratified_subset(labels, 101, 4, 0)


def settings(tmp_path, **kw):
    data = kw.pop("data", DataOptions(dataset="digits"))
    base = dict(arch="lenet", data=data, epochs=2, lr=0.05, seed=0, models_path=str(tmp_path / "models"),
                tb_logdir=None, progress=False, batch_size=64, track=False)
    base.update(kw)
    return TrainSettings(**base)


def test_train_size_is_part_of_the_run_and_recorded(tmp_path):
    out = train(settings(tmp_path, epochs=1, data=DataOptions(dataset="digits", train_size=120, noise=1.0)))
    run_dir = Path(out.run_dir)
    assert run_dir == tmp_path / "models" / "digits" / "train_120" / "noise_100" / "lenet" / "0"
    snap = ck.torch_load(run_dir / "lenet_1.pt")
    assert snap["settings"]["data"]["train_size"] == 120 and snap["data"]["train_subset"]["size"] == 120
    assert sum(snap["data"]["train_subset"]["per_class"]) == 120
    assert snap["data"]["label_noise"]["count"] == 120  # the noise corrupts the subset
    assert snap["seeds"]["train_size_seed"] == snap["data"]["train_subset"]["seed"]
    other = weight_configuration({**snap["settings"], "data": {**snap["settings"]["data"], "train_size": 60}},
                                 snap["seeds"])
    assert configuration_differences(weight_configuration(snap["settings"], snap["seeds"]), other) == [
        "--train-size 120 there, 60 here"]


@pytest.mark.parametrize("flags", [["--train-size", "0"], ["--train-size", "-3"], ["--train-size", "5000"],
                                   ["--train-size", "300", "--subsample-classes", "2"],
                                   ["--until-train-acc", "0"], ["--until-train-acc", "100.5"],
                                   ["--until-train-acc", "-1"]])
def test_bad_train_size_and_target_are_one_line_usage_errors(tmp_path, capsys, flags):
    for command, where in (("train", ["--models-path", str(tmp_path / "m")]),
                           ("reproduce", ["--out", str(tmp_path / "r")]), ("study", ["--out", str(tmp_path / "s")])):
        argv = [command, "--arch", "lenet", "--dataset", "digits", "--tb-logdir", "", *where, *flags]
        assert main(argv) == 2, (command, flags)
        message = one_line_error(capsys)
        assert ("--train-size" in message) or ("--until-train-acc" in message), message
    assert not any(tmp_path.iterdir())


def test_bad_eval_split_is_a_one_line_usage_error(tmp_path, capsys):
    snap = tmp_path / "x.pt"
    torch.save(build_model("lenet", 10, 1, 32, seed=0).state_dict(), snap)
    for argv in (["reinit", "--arch", "lenet", "--dataset", "digits", "--load-from", str(snap), "--rand",
                  "--results", str(tmp_path / "res"), "--eval-split", "other"],
                 ["reproduce", "--out", str(tmp_path / "r"), "--eval-split", "test,other"],
                 ["study", "--out", str(tmp_path / "s"), "--eval-split", "train,"]):
        assert main(argv) == 2
        assert "--eval-split" in one_line_error(capsys)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["x.pt"]


# --- --until-train-acc -----------------------------------------------------------------------------

def test_until_train_acc_stops_at_the_first_epoch_that_reaches_it_and_resumes_exactly(tmp_path):
    common = dict(epochs=6, snapshot_every=1, data=DataOptions(dataset="digits", train_size=300, augmentation=True))
    ref = train(settings(tmp_path / "ref", train_acc=True, **common))
    accs = [h["train_top1"] for h in ref.history]
    target = accs[2]
    expected = next(e for e, a in enumerate(accs, 1) if a >= target)
    assert expected <= 3 and max(accs) > target  # stopping there is a real stop

    run = train(settings(tmp_path / "a", until_train_acc=target, **common))
    run_dir = Path(run.run_dir)
    assert run.stopped == {"reason": "target reached", "epoch": expected} and run.epochs_trained == expected
    assert [h["epoch"] for h in run.history] == list(range(1, expected + 1))
    final = run_dir / f"lenet_{expected}.pt"
    assert sorted(p.name for p in run_dir.glob("lenet_*")) == sorted(
        ["lenet_init_0.pt", final.name, *(f"lenet_{e}.tar" for e in range(expected))])
    assert ck.torch_load(final)["stopped"] == {"reason": "target reached", "epoch": expected}
    same = ck.load_state_dict_file(Path(ref.run_dir) / f"lenet_{expected - 1}.tar")
    got = ck.load_state_dict_file(final)
    assert all(torch.equal(same[k], got[k]) for k in same)

    # resumed from an earlier snapshot: the same stop, the same weights
    resumed = train(settings(tmp_path / "b", until_train_acc=target, resume_from=str(run_dir / "lenet_0.tar"),
                             **common))
    assert resumed.stopped == run.stopped
    again = ck.load_state_dict_file(Path(resumed.run_dir) / final.name)
    assert all(torch.equal(again[k], got[k]) for k in got)
    # resumed from the final snapshot: nothing is left to train
    done = train(settings(tmp_path / "a", until_train_acc=target, resume_from="auto", **common))
    assert done.stopped == run.stopped and len(done.history) == expected
    assert all(torch.equal(ck.load_state_dict_file(final)[k], got[k]) for k in got)


def test_until_train_acc_not_reached_says_the_epochs_ran_out(tmp_path):
    out = train(settings(tmp_path, epochs=2, until_train_acc=100.0,
                         data=DataOptions(dataset="digits", train_size=200, noise=1.0)))
    assert out.stopped == {"reason": "epochs exhausted", "epoch": 2}
    assert ck.torch_load(Path(out.run_dir) / "lenet_2.pt")["stopped"] == out.stopped


# --- re-initialization on the training images -----------------------------------------------------

def test_reinit_on_the_train_split_equals_a_plain_loop_over_the_trained_labels(tmp_path):
    s = settings(tmp_path, epochs=2, data=DataOptions(dataset="digits", train_size=150, noise=1.0, augmentation=True))
    out = train(s)
    run_dir = Path(out.run_dir)
    init = run_dir / "lenet_init_0.pt"
    swept = reinit.ReinitSettings(load_from=str(run_dir / "lenet_2.pt"), data=DataOptions(dataset="digits"),
                                  inits_from=[init], seed=0, eval_split="train", batch_size=64)
    result = reinit.run_reinit(swept)
    doc = result.document
    assert doc["eval_split"] == "train" and result.relpath.name == "reinit_lenet_2_train.json"
    assert doc["train_data"]["train_subset"]["size"] == 150

    # the oracle: the images and labels the run trained on, normalized by hand, each layer swapped by hand
    with setup(s, writes=False) as prepared:
        trained_on = prepared.data
    x = (trained_on.train.images.float() / 255 - trained_on.mean[0]) / trained_on.std[0]
    y = trained_on.train.labels
    model = build_model("lenet", 10, 1, 32, seed=0)
    model.load_state_dict(ck.load_state_dict_file(run_dir / "lenet_2.pt"))
    model.eval()
    init_state = ck.load_state_dict_file(init)

    def correct(m) -> int:
        with torch.no_grad():
            return int((m(x).argmax(1) == y).sum())

    assert doc["num_test"] == 150 and doc["trained_correct"]["top1"] == correct(model)
    expected = []
    for layer in doc["layers"]:
        swapped = build_model("lenet", 10, 1, 32, seed=0)
        swapped.load_state_dict({**model.state_dict(), **{k: v for k, v in init_state.items()
                                                          if k.rsplit(".", 1)[0] == layer}})
        swapped.eval()
        expected.append(correct(swapped))
    assert doc["correct_top1"]["0"] == expected
    on_test = reinit.run_reinit(reinit.ReinitSettings(**{**swept.__dict__, "eval_split": "test"})).document
    assert on_test["eval_split"] == "test" and on_test["num_test"] == len(trained_on.test)


# --- the study's reading of its cells --------------------------------------------------------------

def test_cell_regimes():
    regime = study_report.cell_regime
    assert regime(80.0, 85.0, 10) == "learned" and regime(20.5, 30.0, 10) == "learned"
    assert regime(11.0, 99.5, 10) == "memorized" and regime(20.0, 95.0, 10) == "memorized"
    assert regime(12.0, 94.9, 10) == "neither" and regime(9.0, 30.0, 10) == "neither"
    assert regime(60.0, 100.0, 2) == "memorized" and regime(60.5, 100.0, 2) == "learned"
    assert "95" in study_report.REGIME_RULE and "10 points" in study_report.REGIME_RULE


def synthetic_data(memorize: bool) -> study_report.StudyData:
    """3 seeds x {clean, noise 100%} x 4 layers: clean cells learn; the noise cells memorize or do not."""
    rng = np.random.default_rng(0)
    rows = []
    for noise in (0.0, 1.0):
        for seed in range(3):
            test, fit = (85.0, 90.0) if noise == 0 else (10.5, 99.0 if memorize else 40.0)
            for epoch in (0, 5):
                for i in range(4):
                    mass = 0.5 + (0.05 * i + 0.1 * noise) * epoch / 5 + 0.01 * rng.random()
                    rows.append({
                        "arch": "lenet", "dataset": "fashionmnist", "subsample": 0, "train_size": 2000,
                        "noise": noise, "condition": Corruption(noise).label, "seed": seed,
                        "cell": f"c/{noise}/{seed}", "epoch": epoch, "trained": epoch == 5, "layer": f"l{i}",
                        "kind": "conv", "stage": i, "block": 0, "N": 6, "d": 25, "mass": mass, "mean": 0.0,
                        "std": 1.0, "p_value": 0.5, "p_adjusted": 0.5, "biased": mass > 0.6, "l2_dist": 0.0,
                        "mass_init": 0.5, "bias": abs(mass - 0.5), "drop_reinit_0": 0.01 * rng.random(),
                        "drop_rand": 0.0, "drop_reinit_0_train": 0.2 * i + 0.05 * rng.random(),
                        "drop_rand_train": 0.0, "test_top1": test, "train_top1": fit, "num_classes": 10,
                        "regime": study_report.cell_regime(test, fit, 10)})
    table = pd.DataFrame(rows, columns=study_report.COLUMNS)
    return study_report.StudyData(Path("."), {"grid": {}}, table, study_report.cell_table(table))


def test_claims_compare_memorized_cells_with_clean_ones_and_measure_criticality_per_split():
    data = synthetic_data(memorize=True)
    numbers = study_report.claims(data)
    clean, noisy = numbers["settings"][0]["conditions"]
    assert clean["regimes"] == {"learned": [0, 1, 2], "memorized": [], "neither": []}
    assert noisy["regimes"] == {"learned": [], "memorized": [0, 1, 2], "neither": []}
    cells = data.cells.set_index(["noise", "seed"])
    diffs = [cells.loc[(1.0, s), "bias"] - cells.loc[(0.0, s), "bias"] for s in range(3)]
    change = noisy["memorized_vs_clean"]["bias"]
    half = stats.t.ppf(0.975, 2) * np.std(diffs, ddof=1) / np.sqrt(3)
    assert change["mean"] == pytest.approx(np.mean(diffs)) and change["low"] == pytest.approx(np.mean(diffs) - half)
    trained = data.table[data.table["trained"]]
    for entry, noise in ((clean, 0.0), (noisy, 1.0)):
        part = trained[trained["noise"] == noise]
        rhos = [stats.spearmanr(g["bias"], g["drop_reinit_0_train"]).statistic for _, g in part.groupby("seed")]
        assert entry["criticality_train"]["rho"] == pytest.approx(np.mean(rhos))
    assert noisy["criticality_train"]["cells"] == "memorized" and clean["criticality_train"]["cells"] == "clean"
    text = "\n".join(study_report.answer_lines(numbers, "|mass - 0.5|"))
    assert "3 of 3 cells memorized" in text and "own training labels, memorized cells" in text


def test_claims_say_plainly_when_no_cell_memorized():
    numbers = study_report.claims(synthetic_data(memorize=False))
    noisy = numbers["settings"][0]["conditions"][1]
    assert noisy["regimes"]["neither"] == [0, 1, 2] and "memorized_vs_clean" not in noisy
    assert "criticality_train" not in noisy
    text = "\n".join(study_report.answer_lines(numbers, "|mass - 0.5|"))
    assert "0 of 3 cells memorized" in text and "**no cell memorized**" in text


# --- reproduce and study ---------------------------------------------------------------------------

@pytest.mark.slow
def test_reproduce_records_the_stop_and_both_splits(tmp_path):
    from hparr import results
    from hparr.pipeline import reproduce

    s = settings(tmp_path, epochs=3, snapshot_every=1, until_train_acc=1.0,
                 data=DataOptions(dataset="digits", train_size=150, noise=1.0))
    out = reproduce(s, tmp_path / "run", eval_splits="test,train")
    manifest = results.read_manifest(tmp_path / "run")
    assert manifest["stopped"] == {"reason": "target reached", "epoch": 1} and manifest["num_classes"] == 10
    assert sorted(manifest["reinit_splits"]) == ["test", "train"] and manifest["reinit"] == out.reinit
    train_doc = results.read_json(manifest["reinit_splits"]["train"])
    assert train_doc["eval_split"] == "train" and train_doc["num_test"] == 150
    assert train_doc["trained_correct"]["top1"] == round(manifest["final"]["train"]["top1"] * 150 / 100)
    assert manifest["epochs"] == [0, 1] and results.run_finished(tmp_path / "run", RUN_REPORT_FILES)
    # the study reads both splits' drops of the cell
    rows, _ = study_report.cell_rows(tmp_path / "run", tmp_path, "mass")
    drops = results.drop_frame(train_doc)
    assert [r["drop_reinit_0_train"] for r in rows if r["trained"]] == pytest.approx(list(drops.loc["0"]))
    assert {r["regime"] for r in rows} == {"neither"} and {r["train_size"] for r in rows} == {150}
    manifest["reinit_splits"]["train"].unlink()
    assert not results.run_finished(tmp_path / "run", RUN_REPORT_FILES)


def test_a_study_takes_train_sizes_as_an_axis_and_eval_splits(tmp_path, capsys):
    import json

    out = tmp_path / "s"
    assert main(["study", "--dataset", "digits", "--train-size", "200,400", "--noise", "0,1", "--epochs", "2",
                 "--eval-split", "test,train", "--until-train-acc", "99", "--tb-logdir", "", "--launcher", "print",
                 "--out", str(out)]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == 4
    assert lines[0].startswith("hparr reproduce --arch lenet --dataset digits --seed 0 --noise 0 --subsample-classes 0 "
                               "--train-size 200 ")
    assert "--eval-split test,train" in lines[0] and "--until-train-acc 99" in lines[0]
    assert lines[0].endswith(f"{out}/cells/lenet/digits_n200/clean/seed_0")
    assert lines[3].endswith(f"{out}/cells/lenet/digits_n400/noise_100/seed_0")
    recorded = json.loads((out / "study.json").read_text())
    assert recorded["grid"]["train_size"] == [200, 400] and recorded["shared"]["eval_splits"] == ["test", "train"]
    assert recorded["shared"]["until_train_acc"] == 99


def test_the_train_split_figure_is_drawn_where_the_cells_measured_it(tmp_path, monkeypatch):
    from hparr.report import _study_figures as study_figures
    from hparr.report._study_figures import draw_all

    # the study's other figures are drawn and checked in test_study.py: here only (c) and (c') are drawn
    for other in ("plot_mass_by_condition", "plot_mass_by_epoch", "plot_bias_vs_learning"):
        monkeypatch.setattr(study_figures, other, lambda *args, **kwargs: [])

    for memorize, drawn in ((True, True), (False, True)):  # the clean cells measured it in both
        data = synthetic_data(memorize)
        names, written = draw_all(data, study_report.claims(data), tmp_path, 0.1, "|mass - 0.5|")
        assert ("study_bias_vs_criticality_train" in names) == drawn
        assert (tmp_path / "study_bias_vs_criticality_train.png").stat().st_size > 10_000
    data = synthetic_data(True)
    data.table["drop_reinit_0_train"] = np.nan
    names, _ = draw_all(data, study_report.claims(data), tmp_path / "none", 0.1, "|mass - 0.5|")
    assert "study_bias_vs_criticality_train" not in names
