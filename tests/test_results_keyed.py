"""Results keyed by the run's condition, checkpoints as users' own loops write them, and the layers and epochs a
re-initialization uses: through the real CLI, on digits with runs of 0 epochs (their initialization snapshot)."""
from __future__ import annotations

import json
import logging
import re
import shutil
from pathlib import Path

import pytest
import torch
import torch.nn as nn
from safetensors.torch import save_file

from hparr import layout, reinit
from hparr.cli import main
from hparr.data import DataOptions
from hparr.models import build_model

TESTS = Path(__file__).resolve().parent


def run(capsys, *argv) -> tuple[int, str, str]:
    rc = main([*map(str, argv)])
    out = capsys.readouterr()
    return rc, out.out, out.err


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """Two runs of lenet on digits, seed 0, that differ in their corruption only: clean, and every label noisy."""
    root = tmp_path_factory.mktemp("keyed")
    for noise in ("0", "1"):
        assert main(["train", "--arch", "lenet", "--dataset", "digits", "--epochs", "0", "--seed", "0", "--noise",
                     noise, "--models-path", str(root / "M"), "--tb-logdir", "", "--no-progress"]) == 0
    logging.getLogger("hparr").handlers.clear()  # the CLI's console handler, bound to this test's stderr
    return root, root / "M" / "digits" / "lenet" / "0", root / "M" / "digits" / "noise_100" / "lenet" / "0"


def test_two_conditions_never_share_a_results_file(runs, tmp_path, capsys):
    _, clean, noisy = runs
    results = tmp_path / "R"
    common = ["--arch", "lenet", "--dataset", "digits", "--seed", "0", "--results", results]
    rc, out, err = run(capsys, "projections", *common, "--normalize", "--load-from", clean)
    assert rc == 0, err
    clean_doc = results / "digits" / "lenet" / "0" / "lenet_init_0.json"
    before = clean_doc.read_bytes()
    rc, out, err = run(capsys, "projections", *common, "--normalize", "--load-from", noisy)
    assert rc == 0 and "1 computed" in out and "recomputed" not in err, err
    noisy_doc = results / "digits" / "noise_100" / "lenet" / "0" / "lenet_init_0.json"
    assert clean_doc.read_bytes() == before  # the clean run's result is untouched
    docs = {name: json.loads(p.read_text()) for name, p in (("clean", clean_doc), ("noisy", noisy_doc))}
    assert docs["clean"]["condition"]["noise"] == 0.0 and docs["noisy"]["condition"]["noise"] == 1.0
    assert docs["noisy"]["condition"]["corruption"] == "noise_100"
    assert docs["noisy"]["condition"]["from_snapshot"] == ["dataset", "subsample_classes", "train_size", "noise",
                                                            "seed"]
    assert Path(docs["clean"]["source"]).parent == clean.resolve()
    assert Path(docs["noisy"]["source"]).parent == noisy.resolve()

    # reinit: the same folders, one per condition, under the seed the snapshot records (no --seed given)
    for folder in (clean, noisy):
        rc, out, err = run(capsys, "reinit", "--arch", "lenet", "--dataset", "digits", "--results", results,
                           "--load-from", folder / "lenet_init_0.pt", "--rand", "--max-test-images", 32,
                           "--no-progress")
        assert rc == 0, err
    logging.getLogger("hparr").handlers.clear()
    first = json.loads((results / "digits" / "lenet" / "0" / "reinit_lenet_init_0.json").read_text())
    second = json.loads((results / "digits" / "noise_100" / "lenet" / "0" / "reinit_lenet_init_0.json").read_text())
    assert first["load_from"] == str((clean / "lenet_init_0.pt").resolve())
    assert second["load_from"] == str((noisy / "lenet_init_0.pt").resolve())
    assert second["condition"]["noise"] == 1.0 and first["condition"]["noise"] == 0.0


def test_the_condition_comes_from_the_snapshot_and_a_contradicting_flag_names_both_values(runs, tmp_path, capsys):
    _, clean, noisy = runs
    # a run's snapshot beside another run's under another name: one call would mix their results
    mixed = tmp_path / "mixed"
    mixed.mkdir()
    shutil.copy(clean / "lenet_init_0.pt", mixed / "lenet_init_0.pt")
    shutil.copy(noisy / "lenet_init_0.pt", mixed / "other_init_0.pt")
    rc, out, err = run(capsys, "projections", "--arch", "lenet", "--dataset", "digits", "--load-from", mixed,
                       "--results", tmp_path / "R")
    assert rc == 2 and err.count("\n") == 1
    assert "different conditions (--noise 0 in" in err and f"1 in {mixed / 'other_init_0.pt'}" in err
    # a flag against what the snapshot records
    rc, out, err = run(capsys, "projections", "--arch", "lenet", "--dataset", "digits", "--subsample-classes", 5,
                       "--load-from", noisy, "--results", tmp_path / "R")
    assert rc == 1 and "comes from a run with --subsample-classes 0, not --subsample-classes 5" in err
    rc, out, err = run(capsys, "projections", "--arch", "lenet", "--dataset", "digits", "--seed", 3,
                       "--load-from", noisy, "--results", tmp_path / "R")
    assert rc == 1 and "was trained with seed 0, not --seed 3" in err
    assert not (tmp_path / "R").exists()  # refused before anything is written
    # a file that records no condition: the flags name its folder
    torch.save(build_model("lenet", 10, 1).state_dict(), tmp_path / "plain_2.pt")
    rc, out, err = run(capsys, "projections", "--arch", "lenet", "--dataset", "digits", "--seed", 4,
                       "--subsample-classes", 0, "--load-from", tmp_path / "plain_2.pt", "--results", tmp_path / "R")
    assert rc == 0, err
    doc = json.loads((tmp_path / "R" / "digits" / "lenet" / "4" / "plain_2.json").read_text())
    assert doc["condition"]["from_snapshot"] == [] and doc["condition"]["seed"] == 4


def test_results_of_the_earlier_layout_are_still_read(runs, tmp_path, capsys):
    """Results that an earlier version wrote into the folder without the condition are kept (not computed
    again) where they are of the same file, and copied into the condition's folder."""
    _, _, noisy = runs
    results = tmp_path / "R"
    common = ["--arch", "lenet", "--dataset", "digits", "--seed", "0", "--results", results]
    assert run(capsys, "projections", *common, "--load-from", noisy)[0] == 0
    assert run(capsys, "reinit", *common, "--load-from", noisy / "lenet_init_0.pt", "--rand", "--max-test-images",
               32, "--no-progress")[0] == 0
    logging.getLogger("hparr").handlers.clear()
    new = results / "digits" / "noise_100" / "lenet" / "0"
    old = results / "digits" / "lenet" / "0"
    old.mkdir(parents=True)
    for path in new.glob("*.json"):  # as an earlier version wrote them: no condition, in the folder without it
        doc = json.loads(path.read_text())
        doc.pop("condition")
        if "options" in doc:  # a re-initialization result: nor the --include-1x1 option
            doc["options"].pop("include_1x1")
        (old / path.name).write_text(json.dumps(doc))
    shutil.rmtree(new)
    expected = {p.name: json.loads(p.read_text()) for p in old.glob("*.json")}

    rc, out, err = run(capsys, "projections", *common, "--load-from", noisy)
    assert rc == 0 and "0 computed, 1 kept" in out and "an earlier version's folder" in err, (out, err)
    rc, out, err = run(capsys, "reinit", *common, "--load-from", noisy / "lenet_init_0.pt", "--rand",
                       "--max-test-images", 32, "--no-progress")
    assert rc == 0 and "kept" in out and f"kept {old / 'reinit_lenet_init_0.json'}" in err, (out, err)
    logging.getLogger("hparr").handlers.clear()
    for name, doc in expected.items():
        copied = json.loads((new / name).read_text())
        assert copied.pop("condition")["noise"] == 1.0
        assert copied == doc


def test_a_state_dict_with_entries_beside_its_tensors_is_read_and_they_are_named(tmp_path, capsys, caplog):
    model = build_model("lenet", 10, 1, seed=2)
    torch.save(model.state_dict(), tmp_path / "plain_1.pt")
    torch.save({**model.state_dict(), "step": 123, "config": "lr=0.1"}, tmp_path / "own_1.pt")
    torch.save({**model.state_dict(), "ema.decay": torch.tensor(0.999)}, tmp_path / "extra_1.pt")
    common = ["projections", "--arch", "lenet", "--dataset", "digits", "--no-progress"]
    with caplog.at_level(logging.WARNING, logger="hparr"):
        for name in ("plain_1", "own_1", "extra_1"):
            rc, out, err = run(capsys, *common, "--load-from", tmp_path / f"{name}.pt", "--results", tmp_path / name)
            assert rc == 0, err
    named = [r.getMessage() for r in caplog.records]
    assert sum("own_1.pt: ignored 2 entries of its state_dict that are not tensors: step, config" in m
               for m in named) == 1
    assert any("extra_1.pt: ignored 1 tensor(s) that lenet does not have: ema.decay (--strict refuses them)" in m
               for m in named)
    docs = {name: json.loads((tmp_path / name / "digits" / "lenet" / f"{name}.json").read_text())
            for name in ("plain_1", "own_1", "extra_1")}
    assert docs["own_1"]["ignored_entries"] == {"not_tensors": ["step", "config"]}
    assert docs["extra_1"]["ignored_entries"] == {"not_in_model": ["ema.decay"]}
    assert "ignored_entries" not in docs["plain_1"]
    for name in ("own_1", "extra_1"):  # the same statistics as the bare state_dict's
        assert docs[name]["0"] == docs["plain_1"]["0"] and docs[name]["net"] == docs["plain_1"]["net"]
    rc, out, err = run(capsys, *common, "--strict", "--load-from", tmp_path / "extra_1.pt", "--results",
                       tmp_path / "strict")
    assert rc == 1 and err.count("\n") == 1 and "unexpected keys: ema.decay" in err
    assert not (tmp_path / "strict").exists()


class Registered(nn.Module):
    """Twelve convs in a Sequential (keys `body.0` .. `body.11`) registered after a conv named `zeta`: the
    network's order is neither the alphabetical one nor a natural sort of the names."""

    def __init__(self):
        super().__init__()
        self.zeta = nn.Conv2d(1, 2, 3)
        self.body = nn.Sequential(*[nn.Conv2d(2, 2, 3) for _ in range(12)])


def test_checkpoint_only_layers_follow_the_network_order_or_a_natural_sort(tmp_path, capsys):
    state = Registered().state_dict()
    torch.save(state, tmp_path / "net_1.pt")
    save_file({k: v.contiguous() for k, v in state.items()}, tmp_path / "net_2.safetensors")
    rc, out, err = run(capsys, "projections", "--load-from", tmp_path / "net_1.pt", "--results", tmp_path / "a")
    assert rc == 0 and "in the network's order, as the file stores them" in out, err
    rc, out, err = run(capsys, "projections", "--load-from", tmp_path / "net_2.safetensors", "--results",
                       tmp_path / "b")
    assert rc == 0 and "in the order of their names (natural sort" in out, err
    inserted = json.loads((tmp_path / "a" / "no-dataset" / "checkpoint" / "net_1.json").read_text())
    by_name = json.loads((tmp_path / "b" / "no-dataset" / "checkpoint" / "net_2.json").read_text())
    convs = [k[:-len(".weight")] for k in state if k.endswith(".weight")]
    assert [e["name"] for e in inserted["0"].values()] == convs and inserted["file_order"] == "insertion"
    numbered = [f"body.{i}" for i in range(12)]
    assert [e["name"] for e in by_name["0"].values()] == numbered + ["zeta"] and by_name["file_order"] == "natural"
    assert sorted(numbered) != numbered  # an alphabetical order would put body.10 before body.2


def test_reinit_from_a_run_directory_skips_every_file_of_the_trained_epoch(tmp_path, capsys, caplog):
    """The original layout: `lenet_<e>.tar` after epoch e+1 and the final `lenet_<N>.pt` hold the same weights;
    neither is a row of the sweep."""
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    torch.save(build_model("lenet", 10, 1, seed=0).state_dict(), run_dir / "lenet_init_0.pt")
    torch.save({"epoch": 0, "model_state_dict": build_model("lenet", 10, 1, seed=1).state_dict()},
               run_dir / "lenet_0.tar")
    final = build_model("lenet", 10, 1, seed=2).state_dict()
    torch.save({"epoch": 1, "model_state_dict": final}, run_dir / "lenet_1.tar")
    torch.save(final, run_dir / "lenet_2.pt")
    with caplog.at_level(logging.INFO, logger="hparr"):
        rc, out, err = run(capsys, "reinit", "--arch", "lenet", "--dataset", "digits", "--load-from",
                           run_dir / "lenet_2.pt", "--inits-from", run_dir, "--results", tmp_path / "R",
                           "--max-test-images", 32, "--no-progress")
    logging.getLogger("hparr").handlers.clear()
    assert rc == 0, err
    doc = json.loads((tmp_path / "R" / "digits" / "lenet" / "reinit_lenet_2.json").read_text())
    assert list(doc["init_from_epoch"]) == ["0", "1"] and doc["epoch"] == "2"
    messages = [r.getMessage() for r in caplog.records]
    assert any(m.endswith("lenet_1.tar: a snapshot of epoch 2, the trained snapshot's own") for m in messages)
    # a result of an earlier version, with the row of the trained epoch, is computed again
    settings = reinit.ReinitSettings(load_from=str(run_dir / "lenet_2.pt"), data=DataOptions(dataset="digits"),
                                     arch="lenet", inits_from=str(run_dir), max_test_images=32)
    path = tmp_path / "R" / "digits" / "lenet" / "reinit_lenet_2.json"
    trained = reinit.read_trained(settings)
    assert reinit.result_path(trained, tmp_path / "R") == path
    assert reinit.judge_result(settings, trained, path) == (doc, None)
    earlier = tmp_path / "earlier.json"
    earlier.write_text(json.dumps({**doc, "init_from_epoch": {**doc["init_from_epoch"], "2": [50.0] * 6}}))
    assert reinit.judge_result(settings, trained, earlier) == \
        (None, "it re-initializes from epoch 2, the trained snapshot's own (an earlier hparr)")

    # a rerun from the same files in another folder is refused, naming a file of each (their names are the same)
    shutil.copytree(run_dir, tmp_path / "copy")
    rc, out, err = run(capsys, "reinit", "--arch", "lenet", "--dataset", "digits", "--load-from",
                       run_dir / "lenet_2.pt", "--inits-from", tmp_path / "copy", "--results", tmp_path / "R",
                       "--max-test-images", 32, "--no-progress")
    logging.getLogger("hparr").handlers.clear()
    assert rc == 2 and err.count("\n") == 1, err
    assert f"(--inits-from {(run_dir / 'lenet_0.tar').resolve()} and 3 more there, " \
           f"{(tmp_path / 'copy' / 'lenet_0.tar').resolve()} and 3 more here (4 file(s) there, 4 here))" in err, err


def test_reinit_and_projections_analyze_the_same_layers_by_default(tmp_path, capsys, monkeypatch):
    monkeypatch.syspath_prepend(str(TESTS))  # as PYTHONPATH=tests
    arch = "own_model:with_1x1"
    torch.save(build_model(arch, 10, 1, seed=1).state_dict(), tmp_path / "w_3.pt")
    for extra in ([], ["--include-1x1"]):
        results = tmp_path / ("all" if extra else "default")
        common = ["--arch", arch, "--dataset", "digits", "--load-from", tmp_path / "w_3.pt", "--results", results,
                  *extra]
        assert run(capsys, "projections", *common, "--no-progress")[0] == 0
        rc, out, err = run(capsys, "reinit", *common, "--rand", "--max-test-images", 32, "--no-progress")
        logging.getLogger("hparr").handlers.clear()
        assert rc == 0, err
        folder = results / "digits" / layout.folder_name(arch)
        stats = json.loads((folder / "w_3.json").read_text())
        swept = json.loads((folder / "reinit_w_3.json").read_text())
        names = [e["name"] for key, stage in stats.items() if key.isdigit() for e in stage.values()]
        assert swept["layers"] == names
        assert ("2" in names) == bool(extra)  # the 1x1 conv, module `2`, only with --include-1x1
        if not extra:
            assert names == ["0", "5"]
            assert {s["name"]: s["reason"] for s in swept["skipped"]}["2"] == "1x1 convolution (use --include-1x1)"


def test_snapshot_names_of_a_custom_arch_carry_no_colon(tmp_path, capsys, monkeypatch, caplog):
    monkeypatch.syspath_prepend(str(TESTS))
    arch = "own_model:small_cnn"
    common = ["train", "--arch", arch, "--dataset", "digits", "--seed", "0", "--models-path", tmp_path,
              "--tb-logdir", "", "--no-progress"]
    assert run(capsys, *common, "--epochs", "0")[0] == 0
    run_dir = tmp_path / "digits" / "own_model-small_cnn" / "0"
    assert [p.name for p in run_dir.glob("*.pt")] == ["own_model-small_cnn_init_0.pt"]
    # a run of an earlier version, whose snapshot kept the ':', is found and resumed
    (run_dir / "own_model-small_cnn_init_0.pt").rename(run_dir / "own_model:small_cnn_init_0.pt")
    assert layout.snapshot_file(run_dir, arch, layout.init_name(arch)).name == "own_model:small_cnn_init_0.pt"
    with caplog.at_level(logging.INFO, logger="hparr"):
        assert run(capsys, *common, "--epochs", "1", "--resume-from", "auto")[0] == 0
    logging.getLogger("hparr").handlers.clear()
    assert sorted(p.name for p in run_dir.iterdir() if p.suffix in (".pt", ".tar")) == [
        "own_model-small_cnn_0.tar", "own_model-small_cnn_1.pt", "own_model:small_cnn_init_0.pt"]
    messages = [r.getMessage() for r in caplog.records]
    assert any(re.search(r"resumed from .*own_model:small_cnn_init_0\.pt", m) for m in messages)
    assert not any("tracking without the distances from initialization" in m for m in messages)


def test_each_command_reads_each_checkpoint_once(tmp_path, capsys, monkeypatch):
    """Paths are computed from what was read, never by reading again: `hparr reinit` reads its trained snapshot
    once (its result's path, an earlier version's result, the reuse check and the sweep share it), and `hparr
    projections` each snapshot once (the run's condition, then its tensors)."""
    for seed, name in ((0, "lenet_init_0.pt"), (1, "lenet_1.pt")):
        torch.save(build_model("lenet", 10, 1, seed=seed).state_dict(), tmp_path / name)
    reads: list[str] = []
    load = torch.load
    monkeypatch.setattr(torch, "load", lambda f, *a, **k: reads.append(Path(f).name) or load(f, *a, **k))
    reinit_argv = ["reinit", "--arch", "lenet", "--dataset", "digits", "--load-from", tmp_path / "lenet_1.pt",
                   "--inits-from", tmp_path, "--results", tmp_path / "R", "--max-test-images", 32, "--no-progress"]
    for kept in (False, True):  # computed, then kept
        reads.clear()
        rc, out, err = run(capsys, *reinit_argv)
        logging.getLogger("hparr").handlers.clear()
        assert rc == 0 and ("kept" in out) == kept, err
        assert reads.count("lenet_1.pt") == 1, reads
    reads.clear()
    rc, out, err = run(capsys, "projections", "--arch", "lenet", "--dataset", "digits", "--load-from", tmp_path,
                       "--results", tmp_path / "P", "--no-progress")
    logging.getLogger("hparr").handlers.clear()
    assert rc == 0 and "2 computed" in out, (out, err)
    assert sorted(reads) == ["lenet_1.pt", "lenet_init_0.pt"], reads
