"""`hparr reproduce`: train, projections, reinit and report in one command, resumable."""
import hashlib
import json

import pandas as pd
import pytest

from hparr import report as report_module
from hparr.cli import main


@pytest.mark.slow
def test_reproduce_writes_the_whole_study_and_reruns_cheaply(tmp_path, capsys):
    out = tmp_path / "run"
    argv = ["reproduce", "--out", str(out), "--epochs", "3", "--snapshot-every", "1", "--snapshot-all-until", "0",
            "--lr", "0.02", "--seed", "1", "--no-progress"]
    assert main(argv) == 0
    printed = capsys.readouterr().out.splitlines()
    assert printed[-1].endswith("report in " + str(out / "report" / "index.html"))
    run_dir = out / "models" / "digits" / "lenet" / "1"
    assert sorted(p.name for p in run_dir.glob("lenet_*")) == [
        "lenet_0.tar", "lenet_1.tar", "lenet_2.tar", "lenet_3.pt", "lenet_init_0.pt"]
    # one snapshot per epoch is analyzed (lenet_2.tar holds the weights of the final lenet_3.pt), and the count
    # printed is the report's
    assert sorted(p.name for p in (out / "results" / "digits" / "lenet" / "1").glob("*.json")) == [
        "lenet_0.json", "lenet_1.json", "lenet_3.json", "lenet_init_0.json"]
    assert printed[-1].startswith("4 snapshots analyzed; ")
    assert "normalized, 4 snapshot(s) (epochs 0, 1, 2, 3)" in (out / "report" / "summary.md").read_text()
    proj = pd.read_csv(out / "results" / "digits" / "lenet" / "1" / "projections.csv")
    assert set(proj["epoch"]) == {0, 1, 2, 3}
    reinit = json.loads((out / "results" / "reinit" / "digits" / "lenet" / "1" / "reinit_lenet_3.json").read_text())
    assert set(reinit["init_from_epoch"]) == {"0", "1", "2", "rand"}
    report = out / "report"
    for name in ("distributions", "mass_mean_by_epoch", "reinit_heatmap", "bias_vs_criticality"):
        assert (report / f"{name}.png").stat().st_size > 10_000 and (report / f"{name}.pdf").exists()
    layers = pd.read_csv(report / "layers.csv")
    assert list(layers["name"]) == ["features.0", "features.2", "features.5", "features.7", "features.10",
                                    "features.12"]
    final = proj[(proj["epoch"] == 3) & (proj["kind"] == "conv")].drop_duplicates("name").set_index("name")
    assert (layers.set_index("name")["mass"] - final["mass"]).abs().max() < 1e-12
    assert "index.html" in {p.name for p in report.iterdir()}

    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["format"] == "hparr-manifest-1" and manifest["epochs"] == [0, 1, 2, 3]
    assert manifest["projections"] == "results/digits/lenet/1"
    assert manifest["reinit"] == "results/reinit/digits/lenet/1/reinit_lenet_3.json"
    assert manifest["settings"]["seed"] == 1 and manifest["settings"]["epochs"] == 3
    # the final model on its own training set (all 1347 digits images), beside the test set
    assert set(manifest["final"]) == {"test", "train"} and manifest["final"]["train"]["count"] == 1347
    assert manifest["final"]["test"]["top1"] == reinit["top1_test"]
    assert printed[-2] == (f"final model, epoch 3 of 3 (epochs exhausted): test top-1 "
                           f"{manifest['final']['test']['top1']:.2f}%, train top-1 "
                           f"{manifest['final']['train']['top1']:.2f}% (the labels it was trained on)")
    rep = json.loads((report / "report.json").read_text())
    assert rep["inputs"]["reinit"] == str((out / manifest["reinit"]).resolve())

    before = (run_dir / "lenet_3.pt").stat().st_mtime_ns
    reinit_file = out / manifest["reinit"]
    reinit_before = reinit_file.stat().st_mtime_ns
    assert main(argv) == 0  # resumes: training is complete, finished projections and reinit are reused
    assert (run_dir / "lenet_3.pt").stat().st_mtime_ns >= before
    assert reinit_file.stat().st_mtime_ns == reinit_before
    assert pd.read_csv(report / "layers.csv").equals(layers)

    # the same --out with another learning rate: refused before anything is written
    def digests():
        return {p: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(out.rglob("*")) if p.is_file()}

    before = digests()
    capsys.readouterr()
    other = [a if a != "0.02" else "0.05" for a in argv]
    assert main(other) == 1
    assert "already holds snapshots of another configuration (--lr 0.02 there, 0.05 here)" in capsys.readouterr().err
    assert digests() == before

    # unreadable results are named, and the epochs they leave out are marked
    results = out / "results" / "digits" / "lenet" / "1"
    text = (results / "lenet_1.json").read_text()
    (results / "lenet_1.json").write_text(text[: len(text) // 3])
    (results / "lenet_0.json").write_text('{"a":1}')
    assert main(["report", str(out)]) == 0
    err = capsys.readouterr().err
    assert "results/digits/lenet/1/lenet_1.json: truncated" in err
    assert "results/digits/lenet/1/lenet_0.json: another format" in err and "epochs 1, 2 missing" in err
    summary = (report / "summary.md").read_text()
    assert "lenet_1.json: truncated" in summary and "Epochs 1, 2 missing" in summary
    assert main(["report", str(out), "--strict"]) == 1

    # --overwrite replaces the run and computes every result again: nothing of the first run remains
    assert main([*other, "--overwrite", "--epochs", "1"]) == 0
    assert "replacing the run in" in capsys.readouterr().err
    assert sorted(p.name for p in run_dir.glob("lenet_*")) == ["lenet_0.tar", "lenet_1.pt", "lenet_init_0.pt"]
    assert sorted(p.name for p in results.glob("*.json")) == ["lenet_1.json", "lenet_init_0.json"]
    assert set(pd.read_csv(results / "projections.csv")["epoch"]) == {0, 1}
    assert report_module.load_run(out, exclude=[report]).unusable == []  # what --strict checks
