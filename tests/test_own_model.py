"""Your own model end to end: a factory of your own (`--arch module.path:factory`), a checkpoint without its
model (`hparr projections` without --arch), and checkpoints whose names carry no epoch, through projections and
the report; and the checkpoint forms and labels that go with them."""
from __future__ import annotations

import json
import re
import warnings
from pathlib import Path

import pandas as pd
import pytest
import torch
import torch.nn as nn
from safetensors import safe_open
from safetensors.torch import save_file

from hparr import checkpoints, layers
from hparr.cli import main
from hparr.errors import HparrError
from hparr.models import build_model

TESTS = Path(__file__).resolve().parent


def mass_of(weight: torch.Tensor) -> float:
    """The share of filters whose weights sum to <= 0, by a plain loop."""
    filters = [float(f.double().sum()) for f in weight]
    return sum(v <= 0 for v in filters) / len(filters)


def shifted(state: dict, seed: int, shift: float) -> dict:
    gen = torch.Generator().manual_seed(seed)
    return {k: v + (0.5 * torch.randn(v.shape, generator=gen) + shift) * v.std() if v.dim() > 1 else v.clone()
            for k, v in state.items()}


def run(capsys, *argv) -> tuple[int, str, str]:
    rc = main([*map(str, argv)])
    out = capsys.readouterr()
    return rc, out.out, out.err


def test_a_factory_of_your_own_through_projections_and_report(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.syspath_prepend(str(TESTS))  # as PYTHONPATH=tests
    import own_model

    snaps = tmp_path / "snaps"
    snaps.mkdir()
    init = build_model("own_model:small_cnn", 7, 2, 16, seed=4)
    # the factory got the class count and channels
    assert init[0].in_channels == 2 and init[-1].out_features == 7
    fresh = own_model.small_cnn(7, 2)
    assert all(a.shape == b.shape for a, b in zip(init.state_dict().values(), fresh.state_dict().values()))
    states = {"own_init_0.pt": init.state_dict(), "own_3.pt": shifted(init.state_dict(), 1, 0.6)}
    for name, state in states.items():
        torch.save(state, snaps / name)
    rc, out, err = run(capsys, "projections", "--arch", "own_model:small_cnn", "--num-classes", 7, "--in-channels",
                       2, "--input-size", 16, "--load-from", snaps, "--init-from", snaps / "own_init_0.pt",
                       "--normalize", "--results", tmp_path / "results", "--no-progress")
    assert rc == 0, err
    folder = tmp_path / "results" / "no-dataset" / "own_model-small_cnn"  # no ':' in a folder name
    doc = json.loads((folder / "own_3.json").read_text())
    assert doc["arch"] == "own_model:small_cnn" and doc["num_classes"] == 7 and doc["epoch"] == "3"
    # the max-pool after the second conv starts stage 1
    assert [(e["name"], s, b) for s in ("0", "1") for b, e in doc[s].items()] == [("0", "0", "0"), ("2", "0", "1"),
                                                                                 ("5", "1", "0")]
    for key in ("0", "2", "5"):
        entry = next(e for s in ("0", "1") for e in doc[s].values() if e["name"] == key)
        assert entry["mass"] == mass_of(states["own_3.pt"][f"{key}.weight"])

    rc, out, err = run(capsys, "report", tmp_path / "results")
    assert rc == 0, err
    table = pd.read_csv(tmp_path / "results" / "report" / "layers.csv")
    assert list(table["name"].astype(str)) == ["0", "2", "5"]
    assert list(table["mass"]) == [mass_of(states["own_3.pt"][f"{k}.weight"]) for k in ("0", "2", "5")]
    assert list(table["mass_init"]) == [mass_of(states["own_init_0.pt"][f"{k}.weight"]) for k in ("0", "2", "5")]
    summary = (tmp_path / "results" / "report" / "summary.md").read_text()
    assert "own_model:small_cnn" in summary and "None" not in summary.splitlines()[0]
    assert (tmp_path / "results" / "report" / "distributions.png").is_file()

    # the same factory through reinit (the embedded digits: 10 classes, 1 channel), into the same report
    digits = tmp_path / "digits"
    digits.mkdir()
    start = build_model("own_model:small_cnn", 10, 1, 32, seed=5).state_dict()
    torch.save(start, digits / "own_init_0.pt")
    torch.save(shifted(start, 2, 0.3), digits / "own_3.pt")
    rc, out, err = run(capsys, "reinit", "--arch", "own_model:small_cnn", "--dataset", "digits", "--load-from",
                       digits / "own_3.pt", "--inits-from", digits, "--rand", "--max-test-images", 64,
                       "--results", tmp_path / "results", "--no-progress")
    assert rc == 0, err
    result = tmp_path / "results" / "digits" / "own_model-small_cnn" / "reinit_own_3.json"
    doc = json.loads(result.read_text())
    assert doc["layers"] == ["0", "2", "5"] and doc["num_test"] == 64 and set(doc["init_from_epoch"]) == {"0", "rand"}

    # errors in one line: a module that is not there, a name it lacks (exit 2)
    for arch, text in (("no_such_module:f", "cannot import no_such_module"), ("own_model:nope", "has no nope")):
        rc, out, err = run(capsys, "projections", "--arch", arch, "--dataset", "cifar10", "--results", tmp_path)
        assert rc == 2 and err.count("\n") == 1 and text in err


def test_a_safetensors_file_without_its_model(tmp_path, capsys):
    model = build_model("lenet", seed=2)
    state = {**shifted(model.state_dict(), 3, 0.4), "extra.pointwise.weight": torch.randn(4, 6, 1, 1)}
    save_file({k: v.contiguous() for k, v in state.items()}, tmp_path / "model.safetensors")
    results = tmp_path / "results"
    rc, out, err = run(capsys, "projections", "--load-from", tmp_path / "model.safetensors", "--results", results,
                       "--no-progress")
    assert rc == 0, err
    assert "stage and block unknown" in out
    folder = results / "no-dataset" / "checkpoint"
    doc = json.loads((folder / "model.json").read_text())
    with safe_open(tmp_path / "model.safetensors", "pt") as f:
        order = list(f.keys())  # the safetensors library keeps no order: it writes the keys sorted by name
    assert order.index("features.10.weight") < order.index("features.2.weight")
    # a natural sort of the names: `features.2` before `features.10`
    order = sorted(order, key=lambda k: [int(t) if t.isdigit() else t for t in re.split(r"(\d+)", k)])
    convs = [k for k in order if k.endswith("weight") and state[k].dim() == 4 and state[k].shape[2:] != (1, 1)]
    assert convs[:3] == ["features.0.weight", "features.2.weight", "features.5.weight"]
    assert [e["name"] + ".weight" for e in doc["0"].values()] == convs  # 1x1 left out
    assert doc["layer_order"] == "file" and doc["file_order"] == "natural"
    assert "in the order of their names (natural sort" in out
    assert doc["arch"] is None and doc["epoch"] is None
    assert doc["num_classes"] is None and doc["dataset"] is None
    assert [e["mass"] for e in doc["0"].values()] == [mass_of(state[k]) for k in convs]
    assert {s["name"]: s["kind"] for s in doc["skipped"]} == {"classifier.0": "linear", "classifier.3": "linear",
                                                               "classifier.6": "linear", "extra.pointwise": "conv"}
    csv = pd.read_csv(folder / "projections.csv")
    assert csv["stage"].isna().all() and csv["block"].isna().all()

    # a single checkpoint gets its own report: distributions, the per-layer table and the bias test
    rc, out, err = run(capsys, "report", results)
    assert rc == 0, err
    report = results / "report"
    table = pd.read_csv(report / "layers.csv")
    assert [n + ".weight" for n in table["name"]] == convs and table["stage"].isna().all()
    assert list(table["p_adjusted"]) == pytest.approx([e["p_adjusted"] for e in doc["0"].values()], rel=1e-12)
    summary = (report / "summary.md").read_text()
    assert summary.splitlines()[0].endswith("checkpoint model") and "stage and block unknown" in summary
    assert f"{sum(e['biased'] for e in doc['0'].values())} of {len(convs)}** layers biased" in summary
    assert (report / "distributions.png").is_file()


def test_checkpoints_without_epochs_in_their_names(tmp_path, capsys):
    folder = tmp_path / "mine"
    folder.mkdir()
    base = build_model("lenet", seed=1).state_dict()
    states = {"alpha.pt": shifted(base, 1, 0.1), "gamma.pt": shifted(base, 2, 0.3), "beta.pt": shifted(base, 3, 0.2)}
    for name, state in states.items():
        torch.save(state, folder / name)
    # a popular CIFAR repository's dict, DataParallel keys, its own epoch
    torch.save({"net": {f"module.{k}": v for k, v in shifted(base, 4, 0.0).items()}, "acc": 50.0, "epoch": 2},
               folder / "ckpt.pth")
    results = tmp_path / "results"
    rc, out, err = run(capsys, "projections", "--arch", "lenet", "--dataset", "cifar10", "--load-from", folder,
                       "--results", results, "--no-progress")
    assert rc == 0, err
    out_dir = results / "cifar10" / "lenet"
    assert json.loads((out_dir / "ckpt.json").read_text())["epoch"] == "2"
    assert json.loads((out_dir / "alpha.json").read_text())["epoch"] is None

    rc, out, err = run(capsys, "report", results)
    assert rc == 0, err
    report = json.loads((results / "report" / "report.json").read_text())
    # ckpt.pth records epoch 2; the others follow by name: alpha 3, beta 4, gamma 5, the last one the trained model
    assert report["trained_epoch"] == 5
    assert [Path(p).name for p in report["inputs"]["projections"]] == ["ckpt.json", "alpha.json", "beta.json",
                                                                       "gamma.json"]
    assert any("3 checkpoint(s) in" in n and "ordered by file name after the 1 that record one" in n
               for n in report["notes"])
    table = pd.read_csv(results / "report" / "layers.csv")
    assert list(table["mass"]) == [mass_of(states["gamma.pt"][f"{n}.weight"]) for n in table["name"]]

    # --strict: every result file left out is an error
    (tmp_path / "results" / "other").mkdir()
    other = json.loads((out_dir / "alpha.json").read_text())
    (tmp_path / "results" / "other" / "alpha.json").write_text(json.dumps({**other, "normalize": True}))
    assert run(capsys, "report", results)[0] == 0
    rc, out, err = run(capsys, "report", results, "--strict")
    assert rc == 1 and err.count("\n") == 1 and "(--strict)" in err


def test_a_report_with_nothing_to_show_is_an_error(tmp_path, capsys):
    (tmp_path / "results").mkdir()
    (tmp_path / "results" / "notes.json").write_text('{"hello": 1}')
    rc, out, err = run(capsys, "report", tmp_path / "results")
    assert rc == 1 and err.count("\n") == 1 and "no result files" in err and "notes.json" in err
    assert not (tmp_path / "results" / "report").exists()


def test_whole_pickled_model_and_checkpoint_dicts(tmp_path):
    model = build_model("lenet", seed=0)
    torch.save(model, tmp_path / "whole.pt")
    with pytest.raises(HparrError, match=r"whole pickled object \(hparr\.models\.LeNet\).*model\.state_dict\(\)"):
        checkpoints.read_checkpoint(tmp_path / "whole.pt")
    torch.save({"model": model.state_dict(), "epoch": 1}, tmp_path / "model_dict.pt")
    torch.save({"state_dict": {f"model.{k}": v for k, v in model.state_dict().items()}}, tmp_path / "light.ckpt")
    want = model.state_dict()
    for name in ("model_dict.pt", "light.ckpt"):
        state = checkpoints.load_state(tmp_path / name, reference=want)
        assert set(state) == set(want) and all(torch.equal(state[k], want[k]) for k in want)


def test_input_shape_with_or_without_the_batch_and_an_untraceable_residual_model(monkeypatch):
    monkeypatch.syspath_prepend(str(TESTS))
    import own_model

    model = own_model.small_cnn(5, 3)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no warning either way
        batched, _ = layers.discover_layers(model, (2, 3, 16, 16))
        single, _ = layers.discover_layers(model, (3, 16, 16))
    assert [(i.name, i.stage, i.block) for i in single] == [(i.name, i.stage, i.block) for i in batched] == \
        [("0", 0, 0), ("2", 0, 1), ("5", 1, 0)]

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        found, _ = layers.discover_layers(own_model.Untraceable(), (1, 3, 8, 8))
    texts = [str(w.message) for w in caught]
    assert len(texts) == 1 and "torch.fx cannot trace Untraceable" in texts[0] and "max-pool/downsampling rule" \
        in texts[0]
    assert [i.name for i in found] == ["stem", "body.0", "body.2"]


def test_a_model_in_the_current_directory(tmp_path, monkeypatch):
    (tmp_path / "mynet.py").write_text("import torch.nn as nn\n\n"
                                       "def make(**kwargs):\n"
                                       "    return nn.Sequential(nn.Conv2d(kwargs['in_channels'], 4, 3), nn.Flatten(),"
                                       " nn.LazyLinear(kwargs['num_classes']))\n")
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr("sys.path", [p for p in __import__("sys").path if p not in ("", str(tmp_path))])
    model = build_model("mynet:make", 6, 1, 8)
    assert isinstance(model, nn.Module) and model[0].in_channels == 1 and model[2].out_features == 6


def test_a_model_hparr_cannot_run_or_analyze_is_refused_in_one_line_before_anything_is_written(tmp_path, capsys,
                                                                                                 monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.syspath_prepend(str(TESTS))
    common = ["--dataset", "digits", "--epochs", "1", "--models-path", tmp_path / "models", "--tb-logdir",
              tmp_path / "tb", "--no-progress"]
    # a forward that takes a dict: the line says what hparr passes
    rc, out, err = run(capsys, "train", "--arch", "own_model:dict_input", *common)
    errors = [line for line in err.splitlines() if "error" in line]
    assert rc == 2 and errors == [
        "hparr train: error: --arch own_model:dict_input: its forward fails on the input hparr passes, a float tensor "
        "of shape (B, C, H, W) (here (2, 1, 32, 32)): IndexError: too many indices for tensor of dimension 4"]
    # no conv layer to track, the built-in mlp included: refused, naming the way to train it anyway
    for arch in ("own_model:no_conv", "mlp"):
        rc, out, err = run(capsys, "train", "--arch", arch, *common)
        assert rc == 2 and f"--arch {arch} has no layer to analyze (no conv layer is called in its forward); pass " \
                           "--no-track" in err and "Traceback" not in err
    assert sorted(p.name for p in tmp_path.iterdir()) == []  # no run directory, snapshot, train.log, tracking.csv
    # reinit evaluates the same forward: one line too
    torch.save(build_model("own_model:dict_input", 10, 1).state_dict(), tmp_path / "dict_1.pt")
    rc, out, err = run(capsys, "reinit", "--arch", "own_model:dict_input", "--dataset", "digits", "--load-from",
                       tmp_path / "dict_1.pt", "--rand", "--results", tmp_path / "results", "--no-progress")
    assert rc == 2 and "DictInput: its forward fails on the input hparr passes, a float tensor of shape (B, C, H, W)" \
        in err and "Traceback" not in err
