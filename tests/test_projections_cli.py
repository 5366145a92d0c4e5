"""`hparr projections` end to end: snapshot folders, JSON layout, the table, resuming, and the other modes."""
import json
import os
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
import torch

from hparr import projections as P
from hparr.cli import main
from hparr.models import build_model, pretrained_file

ROOT = Path(__file__).resolve().parents[1]
BLOCK_KEYS = {"projections", "mean", "mass", "l2_dist", "l_inf_dist", "name", "kind", "N", "d", "std",
              "n_negative", "p_sign", "p_ks", "p_value", "p_adjusted", "biased", "null", "input_kind",
              "input_nonneg", "input_neg_share"}


def drifted(state, seed, strength):
    gen = torch.Generator().manual_seed(seed)
    return {k: v + strength * v.std() * (torch.randn(v.shape, generator=gen) + 0.5) if v.dim() > 1 else v.clone()
            for k, v in state.items()}


@pytest.fixture
def snapshots(tmp_path):
    """lenet snapshots as the original code wrote them: init .pt, two .tar (one from DataParallel), final .pt."""
    d = tmp_path / "models" / "cifar10" / "lenet" / "1"
    d.mkdir(parents=True)
    init = build_model("lenet", seed=1).state_dict()
    states = [init] + [drifted(init, s, 0.3 * s) for s in (1, 2, 3)]
    torch.save(states[0], d / "lenet_init_0.pt")
    for e in (0, 1):
        state = states[e + 1]
        if e == 1:
            state = {k.replace("features.", "features.module."): v for k, v in state.items()}
        torch.save({"epoch": e, "top1_acc": 30.0 + e, "top5_acc": 80.0, "model_state_dict": state,
                    "optimizer_state_dict": {"state": {}, "param_groups": []}, "scheduler_state_dict": {}},
                   d / f"lenet_{e}.tar")
    torch.save(states[3], d / "lenet_2.pt")
    return d, states


def run(*argv, capsys=None):
    rc = main(["projections", "--no-progress", *map(str, argv)])
    out = capsys.readouterr() if capsys is not None else None
    return rc, out


def test_directory_of_snapshots(tmp_path, snapshots, capsys):
    folder, states = snapshots
    results = tmp_path / "results"
    rc, out = run("--arch", "lenet", "--dataset", "cifar10", "--seed", 1, "--normalize", "--load-from", folder,
                  "--init-from", folder / "lenet_init_0.pt", "--results", results, capsys=capsys)
    assert rc == 0, out.err
    assert "4 snapshot(s): 4 computed, 0 kept" in out.out
    out_dir = results / "cifar10" / "lenet" / "1"
    stems = ["lenet_0", "lenet_1", "lenet_2", "lenet_init_0"]
    assert sorted(p.stem for p in out_dir.glob("*.json")) == stems
    docs = {s: json.loads((out_dir / f"{s}.json").read_text()) for s in stems}
    assert {s: d["epoch"] for s, d in docs.items()} == {"lenet_init_0": "0", "lenet_0": "1", "lenet_1": "2",
                                                        "lenet_2": "2"}
    for s, doc in docs.items():
        assert (doc["arch"], doc["dataset"], doc["seed"]) == ("lenet", "cifar10", "1")
        assert sorted(k for k in doc if k.isdigit()) == ["0", "1", "2"]
        assert all(set(doc[st]) == {"0", "1"} for st in ("0", "1", "2"))
        assert all(set(doc[st][b]) == BLOCK_KEYS for st in ("0", "1", "2") for b in ("0", "1"))
        assert {"projections", "mean", "mass", "N", "biased", "p_value"} <= set(doc["net"])
        assert doc["normalize"] is True and doc["level"] == 0.05 and doc["correction"] == "holm"
        assert {"torch", "torchvision", "numpy", "hparr"} <= set(doc["versions"])
        assert doc["source"] == str((folder / f"{s}{'.tar' if s in ('lenet_0', 'lenet_1') else '.pt'}").resolve())
        assert [x["name"] for x in doc["skipped"]] == ["classifier.0", "classifier.3", "classifier.6"]
    # the values are the library's on the same weights (the library is checked against the formulas elsewhere)
    for s, state in zip(["lenet_init_0", "lenet_0", "lenet_1", "lenet_2"], states):
        model = build_model("lenet", seed=5)
        model.load_state_dict(state)
        stats_ = P.layer_stats(model, normalize=True, init=states[0])
        for row in stats_.table.itertuples():
            entry = docs[s][str(row.stage)][str(row.block)]
            assert entry["name"] == row.name and entry["projections"] == list(stats_.projections[row.name])
            assert (entry["mean"], entry["mass"], entry["l2_dist"], entry["biased"]) == (
                row.mean, row.mass, row.l2_dist, row.biased)
    assert docs["lenet_init_0"]["0"]["0"]["l2_dist"] == 0.0 and docs["lenet_2"]["0"]["0"]["l2_dist"] > 0

    table = pd.read_csv(out_dir / "projections.csv")
    assert len(table) == 4 * 7
    assert list(table.columns[:8]) == ["stem", "source", "arch", "dataset", "seed", "epoch", "normalize", "level"]
    assert list(table["epoch"].drop_duplicates()) == [0, 1, 2]
    net = table[table["kind"] == "net"].set_index("stem")
    assert net.loc["lenet_2", "mass"] == docs["lenet_2"]["net"]["mass"]
    layer = table[(table["stem"] == "lenet_1") & (table["name"] == "features.5")].iloc[0]
    assert (layer["stage"], layer["block"], layer["mean"]) == (1, 0, docs["lenet_1"]["1"]["0"]["mean"])
    log = (out_dir / "positive_orthant.log").read_text().splitlines()
    assert len(log) == 4 * 7 and log[0].startswith("lenet_0 (epoch 1) stage 0 block 0 features.0: mean")
    assert " p (Holm-adjusted) " in log[0] and " p (Holm" not in log[6]  # log[6]: the net row

    # rerun: every result is kept; --overwrite recomputes
    mtimes = {p.name: p.stat().st_mtime_ns for p in out_dir.glob("*.json")}
    rc, out = run("--arch", "lenet", "--dataset", "cifar10", "--seed", 1, "--normalize", "--load-from", folder,
                  "--init-from", folder / "lenet_init_0.pt", "--results", results, "--parquet", capsys=capsys)
    assert rc == 0 and "0 computed, 4 kept" in out.out
    assert {p.name: p.stat().st_mtime_ns for p in out_dir.glob("*.json")} == mtimes
    assert pd.read_parquet(out_dir / "projections.parquet").shape == table.shape
    (out_dir / "lenet_2.json").unlink()
    rc, out = run("--arch", "lenet", "--dataset", "cifar10", "--seed", 1, "--normalize", "--load-from", folder,
                  "--init-from", folder / "lenet_init_0.pt", "--results", results, capsys=capsys)
    assert rc == 0 and "1 computed, 3 kept" in out.out
    assert json.loads((out_dir / "lenet_2.json").read_text()) == docs["lenet_2"]
    rc, out = run("--arch", "lenet", "--dataset", "cifar10", "--seed", 1, "--normalize", "--load-from", folder,
                  "--init-from", folder / "lenet_init_0.pt", "--results", results, "--overwrite", capsys=capsys)
    assert rc == 0 and "4 computed, 0 kept" in out.out

    # other settings never reuse (or mix into the table) results made differently: they are replaced, saying why
    rc, out = run("--arch", "lenet", "--dataset", "cifar10", "--seed", 1, "--load-from", folder,
                  "--results", results, capsys=capsys)
    assert rc == 0 and "4 computed (4 replaced" in out.out
    # (the CLI's own lines: the library's log may also reach stderr where an earlier command set logging up)
    said = [line for line in out.err.splitlines() if line.startswith("hparr projections: recomputed")]
    assert len(said) == 4 and all("computed with other settings (normalize True there, False here" in line
                                  for line in said)
    assert json.loads((out_dir / "lenet_2.json").read_text())["normalize"] is False
    assert set(pd.read_csv(out_dir / "projections.csv")["normalize"]) == {False}


def test_files_globs_unnormalized_and_class_count(tmp_path, snapshots, capsys):
    folder, states = snapshots
    results = tmp_path / "r"
    rc, out = run("--arch", "lenet", "--dataset", "cifar10", "--load-from", folder / "lenet_0.tar",
                  folder / "lenet_2.pt", "--load-from", str(folder / "lenet_init*"), "--results", results,
                  capsys=capsys)
    assert rc == 0, out.err
    out_dir = results / "cifar10" / "lenet"
    assert sorted(p.stem for p in out_dir.glob("*.json")) == ["lenet_0", "lenet_2", "lenet_init_0"]
    doc = json.loads((out_dir / "lenet_2.json").read_text())
    assert doc["normalize"] is False and doc["seed"] is None and "l2_dist" not in doc["0"]["0"]
    w = states[3]["features.0.weight"].double()
    assert doc["0"]["0"]["projections"] == pytest.approx(w.sum((1, 2, 3)).tolist(), rel=1e-12)

    # a 5-class run: the class count comes from --subsample-classes, or from hparr's own metadata
    five = build_model("lenet", num_classes=5, seed=3)
    torch.save(five.state_dict(), tmp_path / "lenet_init_0.pt")
    torch.save({"arch": "lenet", "num_classes": 5, "in_channels": 3, "input_size": 32, "epochs_completed": 4,
                "epoch": 3, "model_state_dict": five.state_dict()}, tmp_path / "lenet_4.pt")
    rc, out = run("--arch", "lenet", "--dataset", "cifar10", "--subsample-classes", 5, "--load-from",
                  tmp_path / "lenet_init_0.pt", "--results", results, capsys=capsys)
    assert rc == 0, out.err
    assert (results / "cifar10_5" / "lenet" / "lenet_init_0.json").is_file()
    rc, out = run("--arch", "lenet", "--dataset", "cifar10", "--load-from", tmp_path / "lenet_4.pt",
                  "--results", results, capsys=capsys)
    assert rc == 0, out.err
    doc = json.loads((out_dir / "lenet_4.json").read_text())
    assert doc["epoch"] == "4" and doc["num_classes"] == 5
    rc, out = run("--arch", "lenet", "--dataset", "cifar10", "--load-from", tmp_path / "lenet_init_0.pt",
                  "--results", tmp_path / "r2", capsys=capsys)
    assert rc == 1 and out.err.count("\n") == 1 and "does not match this architecture/class count" in out.err


def test_random_init_pretrained_and_listings(tmp_path, capsys, monkeypatch):
    rc, out = run("--arch", "lenet", "--dataset", "mnist", "--seed", 7, "--normalize", "--with-linear",
                  "--results", tmp_path, capsys=capsys)
    assert rc == 0, out.err
    doc = json.loads((tmp_path / "mnist" / "lenet" / "7" / "init_lenet.json").read_text())
    assert (doc["epoch"], doc["seed"], doc["init_seed"], doc["in_channels"], doc["input_size"]) == ("0", "7", 7, 1, 28)
    df = P.layer_stats(build_model("lenet", in_channels=1, input_size=28, seed=7), with_linear=True)
    assert doc["3"]["2"]["name"] == "classifier.6" and doc["3"]["2"]["kind"] == "linear"
    assert doc["net"]["mean"] == df.net["mean"] and doc["net"]["N"] == 172 + 120 + 84 + 10

    # --cuda computes on the GPU, or says it falls back to the CPU; the numbers agree
    rc, out = run("--arch", "lenet", "--dataset", "mnist", "--seed", 7, "--normalize", "--with-linear", "--cuda",
                  "--results", tmp_path / "cuda", capsys=capsys)
    assert rc == 0, out.err
    assert ("no GPU available" in out.err) is (not torch.cuda.is_available())
    on_device = json.loads((tmp_path / "cuda" / "mnist" / "lenet" / "7" / "init_lenet.json").read_text())
    assert on_device["3"]["2"]["projections"] == pytest.approx(doc["3"]["2"]["projections"], rel=1e-9, abs=1e-12)
    assert on_device["net"]["mass"] == doc["net"]["mass"]

    # --pretrained: torchvision's weights from the hub cache, or a one-line error naming the missing file
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "hub"))
    weights = pretrained_file("resnet18")
    weights.parent.mkdir(parents=True)
    imagenet = build_model("resnet18", num_classes=1000, seed=11)
    torch.save(imagenet.state_dict(), weights)
    rc, out = run("--arch", "resnet18", "--dataset", "cifar10", "--pretrained", "--results", tmp_path, capsys=capsys)
    assert rc == 0, out.err
    doc = json.loads((tmp_path / "cifar10" / "resnet18" / "pretrained_resnet18.json").read_text())
    assert doc["epoch"] == "-1" and doc["source"] == str(weights)
    expected = P.projections(imagenet.state_dict()["layer1.0.conv1.weight"], normalize=False)
    assert doc["1"]["0"]["name"] == "layer1.0.conv1" and doc["1"]["0"]["projections"] == expected.tolist()
    rc, out = run("--arch", "vgg11", "--dataset", "cifar10", "--pretrained", "--results", tmp_path, capsys=capsys)
    assert rc == 1
    assert out.err.count("\n") == 1 and "pretrained weights for vgg11 not found" in out.err
    assert "Traceback" not in out.err

    rc, out = run(capsys=capsys)
    assert rc == 0 and "lenet" in out.out and "vgg11" in out.out
    rc, out = run("--arch", "lenet", capsys=capsys)
    assert rc == 0 and "cifar10" in out.out and "mnist" in out.out
    rc, out = run("--arch", "lenet", "--dataset", "cifar10", "--load-from", tmp_path / "nothing-here",
                  capsys=capsys)
    assert rc == 2 and "no such snapshot" in out.err


@pytest.mark.slow
def test_paper_script_name(tmp_path):
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run([sys.executable, str(ROOT / "compute_projections.py"), "--arch", "lenet", "--dataset",
                           "cifar10", "--seed", "2", "--results", str(tmp_path)], capture_output=True, text=True,
                          env=env, cwd=tmp_path, timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert (tmp_path / "cifar10" / "lenet" / "2" / "init_lenet.json").is_file()
    assert proc.stderr == ""  # no progress bar when stderr is not a terminal


def test_a_result_is_replaced_when_its_checkpoint_changes(tmp_path, snapshots, capsys):
    folder, states = snapshots
    results = tmp_path / "results"
    args = ["--arch", "lenet", "--dataset", "cifar10", "--load-from", folder / "lenet_2.pt", "--init-from",
            folder / "lenet_init_0.pt", "--results", results]
    target = results / "cifar10" / "lenet" / "lenet_2.json"
    rc, out = run(*args, capsys=capsys)
    assert rc == 0 and "1 computed" in out.out
    first = target.read_bytes()

    # touched, same tensors: kept
    os.utime(folder / "lenet_2.pt", ns=(1, 1))
    rc, out = run(*args, capsys=capsys)
    assert rc == 0 and "0 computed, 1 kept" in out.out and target.read_bytes() == first

    def fresh(path) -> dict:
        rc, _ = run("--arch", "lenet", "--dataset", "cifar10", "--load-from", path, "--init-from",
                    folder / "lenet_init_0.pt", "--results", tmp_path / "fresh", "--overwrite")
        assert rc == 0
        return json.loads((tmp_path / "fresh" / "cifar10" / "lenet" / "lenet_2.json").read_text())

    # retrained under the same name: recomputed, saying why
    torch.save(drifted(states[0], 9, 2.0), folder / "lenet_2.pt")
    rc, out = run(*args, capsys=capsys)
    assert rc == 0 and "1 computed (1 replaced" in out.out and "lenet_2.pt has changed since" in out.err
    doc = json.loads(target.read_text())
    assert doc["net"] == fresh(folder / "lenet_2.pt")["net"]
    # the init snapshot retrained: the distances are recomputed
    torch.save(drifted(states[0], 8, 0.5), folder / "lenet_init_0.pt")
    rc, out = run(*args, capsys=capsys)
    assert rc == 0 and "--init-from: lenet_init_0.pt has changed since" in out.err
    assert json.loads(target.read_text())["0"]["0"]["l2_dist"] == fresh(folder / "lenet_2.pt")["0"]["0"]["l2_dist"]

    # another file under the same name
    other = tmp_path / "other" / "lenet_2.pt"
    other.parent.mkdir()
    torch.save(drifted(states[0], 7, 1.0), other)
    rc, out = run(*args[:5], other, *args[6:], capsys=capsys)
    assert rc == 0 and "computed from another file" in out.err
    assert json.loads(target.read_text())["net"] == fresh(other)["net"]
