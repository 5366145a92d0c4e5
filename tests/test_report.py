"""`hparr report`: a report drawn from result files made by the real projection and reinit code paths."""
from __future__ import annotations

import html
import json
import math
import re
import shutil
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image
from scipy import integrate, stats

from hparr import checkpoints, files, null, projections, reinit, report
from hparr import results as results_module
from hparr.cli import main
from hparr.errors import UsageError
from hparr.layers import discover_layers
from hparr.models import build_model
from hparr.report import _html as report_html
from hparr.report import stats as report_stats
from hparr.results import drop_frame

from conftest import trained_like

FIGURES = ("distributions", "mass_mean_by_epoch", "reinit_heatmap", "bias_vs_criticality")
BIASED = ("features.0", "features.7")  # layers pushed towards the positive orthant


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """A run directory: snapshots, normalized and plain projection results, a reinit result, clutter."""
    root = tmp_path_factory.mktemp("run")
    models = root / "models" / "cifar10" / "lenet" / "0"
    init = build_model("lenet", 10, 3, 32, seed=0)
    mid = trained_like(init, seed=1, strength=0.3, shift=0.8, shifted=BIASED)
    final = trained_like(init, seed=2, strength=0.6, shift=2.0, shifted=BIASED)
    files.save_torch(init.state_dict(), models / "lenet_init_0.pt")
    files.save_torch({"epoch": 4, "top1_acc": 50.0, "top5_acc": 90.0, "model_state_dict": mid.state_dict(),
                      "optimizer_state_dict": {}, "scheduler_state_dict": {}}, models / "lenet_4.tar")
    files.save_torch(final.state_dict(), models / "lenet_10.pt")
    # the last periodic snapshot holds the same epoch as the final model (both are epoch 10)
    files.save_torch({"epoch": 9, "top1_acc": 60.0, "top5_acc": 95.0, "model_state_dict": final.state_dict(),
                      "optimizer_state_dict": {}, "scheduler_state_dict": {}}, models / "lenet_9.tar")
    snaps = sorted(models.iterdir())

    for folder, normalize in (("results", True), ("results_plain", False)):
        init_from = str((models / "lenet_init_0.pt").resolve())
        settings = projections.AnalysisOptions(normalize=normalize, init_from=init_from)
        analyzer = projections.SnapshotAnalyzer(
            checkpoints.ModelConfig("lenet", 10, 3, 32), settings,
            context={"arch": "lenet", "dataset": "cifar10", "seed": "0"},
            init_state=projections.load_init_state(models / "lenet_init_0.pt"))
        out = root / folder / "cifar10" / "lenet" / "0"
        for path in snaps:
            files.write_json(out / f"{path.stem}.json", analyzer.analyze_file(path))

    # the test set: random images labelled by the trained model itself (trained accuracy 100%)
    gen = torch.Generator().manual_seed(3)
    x = torch.randn(96, 3, 32, 32, generator=gen)
    with torch.no_grad():
        y = final.eval()(x).argmax(1)
    batches = [(x[i:i + 48], y[i:i + 48]) for i in (0, 48)]
    layers, _ = discover_layers(final, (2, 3, 32, 32), with_linear=True, include_1x1=True)
    alternatives = {"0": init.state_dict(), "5": mid.state_dict(),
                    "rand": build_model("lenet", 10, 3, 32, seed=99).state_dict()}
    result = reinit.reinit_sweep(final, alternatives, batches, layers=[i.name for i in layers])
    doc = reinit.reinit_document(result, arch="lenet", dataset="cifar10", seed=0, epoch=10,
                                 load_from=str((models / "lenet_10.pt").resolve()),
                                 layer_kinds=[i.kind for i in layers],
                                 layer_stage_block=[(i.stage, i.block) for i in layers])
    files.write_json(root / "results" / "cifar10" / "lenet" / "0" / "reinit_lenet_10.json", doc)
    files.write_json(root / "results" / "unrelated.json", {"hello": [1, 2]})
    (root / "results" / "broken.json").write_text("{not json")
    return root


def load(path: Path):
    return json.loads(path.read_text())


def trained_doc(run: Path) -> dict:
    return load(run / "results" / "cifar10" / "lenet" / "0" / "lenet_10.json")


def reinit_doc(run: Path) -> dict:
    return load(run / "results" / "cifar10" / "lenet" / "0" / "reinit_lenet_10.json")


def layer_entries(doc: dict) -> dict[str, dict]:
    return {e["name"]: e for s, blocks in doc.items() if s.isdigit() for e in blocks.values()}


@pytest.fixture(scope="module")
def built(run):
    return report.build_report(run, threshold=0.1)


def test_figures_and_files_are_written(run, built):
    out = run / "report"
    for name in FIGURES:
        png, pdf = out / f"{name}.png", out / f"{name}.pdf"
        assert built[png.name] == png and built[pdf.name] == pdf
        with Image.open(png) as image:
            image.verify()
        with Image.open(png) as image:
            assert image.format == "PNG" and image.width >= 400 and image.height >= 300
            assert np.asarray(image.convert("L")).std() > 5  # not a blank canvas
        assert pdf.read_bytes()[:5] == b"%PDF-" and pdf.stat().st_size > 2000
    for name in ("layers.csv", "report.json", "summary.md", "index.html"):
        assert (out / name).is_file() and built[name] == out / name
    assert not [p for p in out.iterdir() if p.name.startswith(".")]  # no temporary files left


def test_table_values_equal_the_json_values(run, built):
    doc, rdoc = trained_doc(run), reinit_doc(run)
    entries = layer_entries(doc)
    init_entries = layer_entries(load(run / "results" / "cifar10" / "lenet" / "0" / "lenet_init_0.json"))
    csv = pd.read_csv(run / "report" / "layers.csv")
    rep = load(run / "report" / "report.json")
    assert list(csv["name"]) == rdoc["layers"]  # conv layers then the Linear ones, in forward order
    top1 = rdoc["top1_test"]
    for row, rec in zip(csv.to_dict(orient="records"), rep["layers"]):
        name = row["name"]
        i = rdoc["layers"].index(name)
        acc0, acc_rand = rdoc["init_from_epoch"]["0"][i], rdoc["init_from_epoch"]["rand"][i]
        drop0 = (top1 - acc0) / top1
        for source in (row, rec):
            assert source["top1_trained"] == top1
            assert source["top1_reinit_0"] == acc0 and source["top1_rand"] == acc_rand
            assert source["drop_reinit_0"] == pytest.approx(drop0, rel=1e-12)
            assert source["drop_rand"] == pytest.approx((top1 - acc_rand) / top1, rel=1e-12)
            assert source["verdict"] == ("robust" if drop0 <= 0.1 else "critical")
        if name in entries:
            e = entries[name]
            for key in ("mass", "mean", "p_value", "p_adjusted", "l2_dist", "l_inf_dist", "N", "d"):
                assert row[key] == e[key] and rec[key] == e[key], key
            assert bool(row["biased"]) == e["biased"] == rec["biased"]
            for key in ("null", "input_kind"):  # the null of the layer's test and what feeds it, as recorded
                assert row[key] == e[key] == rec[key], key
            assert rec["bias"] == abs(e["mass"] - 0.5)
            assert rec["mass_init"] == init_entries[name]["mass"]
            assert pd.isna(row["missing"])
        else:  # Linear layers are re-initialized but not analyzed by the projections
            assert name.startswith("classifier") and row["missing"] == "projections" and pd.isna(row["mass"])
    assert any(entries[n]["biased"] for n in BIASED)


def test_spearman_equals_scipy_on_the_json_numbers(run, built):
    doc, rdoc = trained_doc(run), reinit_doc(run)
    entries = layer_entries(doc)
    names = [n for n in rdoc["layers"] if n in entries]
    bias = [abs(entries[n]["mass"] - 0.5) for n in names]
    drop = [(rdoc["top1_test"] - rdoc["init_from_epoch"]["0"][rdoc["layers"].index(n)]) / rdoc["top1_test"]
            for n in names]
    expected = stats.spearmanr(bias, drop)
    got = load(run / "report" / "report.json")["bias_vs_criticality"]
    assert got["n_layers"] == len(names) == 6 and got["layers"] == names
    assert got["spearman_rho"] == pytest.approx(expected.statistic, abs=1e-12)
    assert got["p_value"] == pytest.approx(expected.pvalue, rel=1e-9)
    summary = (run / "report" / "summary.md").read_text()
    assert f"Spearman rho = {expected.statistic:.3f}" in summary
    assert "KS null, from the law of each layer's initial weights" in summary  # which null the tests used

    # another bias measure: the z-score of the mass
    results = report.load_run(run, exclude=[run / "report"])
    frame = drop_frame(results.reinit_doc)
    for label, drops in rdoc["relative_drop"].items():
        for i, (layer, value) in enumerate(zip(rdoc["layers"], drops)):
            assert frame.loc[label, layer] == pytest.approx(value, rel=1e-12)
            assert results.reinit_doc["top5_init_from_epoch"][label][i] == rdoc["top5_init_from_epoch"][label][i]
    table = report.joined_table(results, measure="mass_z")
    got = report.bias_vs_criticality(table)
    expected = stats.spearmanr([abs(entries[n]["mass"] - 0.5) * 2 * math.sqrt(entries[n]["N"]) for n in names], drop)
    assert got["spearman_rho"] == pytest.approx(expected.statistic, abs=1e-12)


def test_summary_and_index_show_the_table_and_the_choices(run, built):
    out = run / "report"
    summary, page = (out / "summary.md").read_text(), (out / "index.html").read_text()
    entries = layer_entries(trained_doc(run))
    rep = load(out / "report.json")
    n_biased = sum(bool(e["biased"]) for e in entries.values())
    assert f"**{n_biased} of 6** layers biased at level 0.05" in summary
    assert f"<strong>{n_biased} of 6</strong>" in page
    for name in FIGURES:
        assert f"]({name}.png)" in summary and f'<img src="{name}.png"' in page
    for name, e in entries.items():
        assert f"| {name} |" in summary and f"<td>{name}</td>" in page
        assert f"{e['mass']:.3f}" in summary
    # the normalized run was preferred and the plain one named as not used
    assert rep["inputs"]["projection_settings"]["normalize"] is True
    assert "results_plain" in summary and "not used" in summary and "normalized" in summary
    missing_line = summary.split("Layers with no projection results")[1].splitlines()[0]
    assert missing_line.endswith(": classifier.0, classifier.3, classifier.6.")
    assert "BatchNorm" in summary
    # of the two epoch-10 results, the one of the re-initialized snapshot is used
    used = [Path(p).name for p in rep["inputs"]["projections"]]
    assert used == ["lenet_init_0.json", "lenet_4.json", "lenet_10.json"]
    assert "are both epoch 10; using lenet_10.json" in summary
    assert {"hparr", "numpy", "scipy", "pandas", "matplotlib"} <= set(rep["versions"]["report"])
    assert {"torch", "torchvision"} <= set(rep["versions"]["projections"])
    assert rep["seeds"]["reinit"]["seed"] == "0" and rep["seeds"]["projections"]["seed"] == "0"


def test_regenerated_from_json_alone_with_the_command(run, built, tmp_path, capsys):
    first = (run / "report" / "layers.csv").read_bytes()
    copy = tmp_path / "run"
    shutil.copytree(run, copy, ignore=shutil.ignore_patterns("*.pt", "*.tar", "report"))  # no snapshots, no report
    assert main(["report", str(copy)]) == 0
    out = capsys.readouterr().out
    assert f"wrote {copy / 'report' / 'index.html'}" in out
    assert (copy / "report" / "layers.csv").read_bytes() == first
    # a report inside the run is not read as input; --out elsewhere and --threshold are honoured
    assert main(["report", str(copy), "--out", str(copy / "second"), "--threshold", "0.99"]) == 0
    capsys.readouterr()
    second = pd.read_csv(copy / "second" / "layers.csv")
    expected = np.where(second["drop_reinit_0"] <= 0.99, "robust", "critical")
    assert list(second["verdict"]) == list(expected) and "robust" in expected
    assert load(copy / "second" / "report.json")["threshold"] == 0.99


def test_projections_only_and_reinit_only(run, tmp_path):
    only_p = tmp_path / "p"
    shutil.copytree(run / "results", only_p, ignore=shutil.ignore_patterns("reinit_*"))
    written = report.build_report(only_p)
    assert {"distributions.png", "mass_mean_by_epoch.pdf"} <= set(written)
    assert "reinit_heatmap.png" not in written and "bias_vs_criticality.png" not in written
    assert "no re-initialization result" in (only_p / "report" / "summary.md").read_text()
    table = pd.read_csv(only_p / "report" / "layers.csv")
    assert table["drop_reinit_0"].isna().all() and len(table) == 6

    only_r = tmp_path / "r"
    only_r.mkdir()
    shutil.copy(run / "results" / "cifar10" / "lenet" / "0" / "reinit_lenet_10.json", only_r)
    written = report.build_report(only_r)
    assert "reinit_heatmap.png" in written and "distributions.png" not in written
    table = pd.read_csv(only_r / "report" / "layers.csv")
    assert list(table["name"]) == reinit_doc(run)["layers"] and table["mass"].isna().all()
    # a stale figure from an earlier report is removed when the results no longer allow it
    files.write_bytes(only_r / "report" / "distributions.png", b"old")
    report.build_report(only_r)
    assert not (only_r / "report" / "distributions.png").exists()


def test_errors_are_one_line(tmp_path, capsys):
    def fails(*args):
        rc = main(["report", *map(str, args)])
        err = capsys.readouterr().err
        assert len(err.strip().splitlines()) == 1 and "Traceback" not in err
        return rc, err

    rc, err = fails(tmp_path / "nope")
    assert rc == 2 and "does not exist" in err  # a usage error
    (tmp_path / "empty").mkdir()
    files.write_json(tmp_path / "empty" / "other.json", {"format": "something-else"})
    rc, err = fails(tmp_path / "empty")
    assert rc == 1 and "no result files" in err
    rc, err = fails(tmp_path / "empty", "--threshold", "-0.5")
    assert rc == 2 and "threshold" in err
    rc, err = fails(tmp_path / "empty", "--threshold", "nan")
    assert rc == 2


def test_null_density_and_bands():
    for d in (3, 27, 144):
        law = null.distribution(d)
        total, _ = integrate.quad(lambda t: float(law.pdf(t)), -1, 1)
        assert total == pytest.approx(1.0, abs=1e-7)
        part, _ = integrate.quad(lambda t: float(law.pdf(t)), -1, 0.1)
        assert part == pytest.approx(float(law.cdf(0.1)), abs=1e-7)
        # the density is that of (1 + t)/2 ~ Beta((d-1)/2, (d-1)/2), written out
        t = np.linspace(-0.9, 0.9, 7)
        np.testing.assert_allclose(law.pdf(t), stats.beta.pdf((1 + t) / 2, (d - 1) / 2, (d - 1) / 2) / 2, rtol=1e-12)
        var, _ = integrate.quad(lambda t: t * t * float(law.pdf(t)), -1, 1)
        assert var == pytest.approx(1 / d, rel=1e-6)  # docs/method.md §3: variance 1/d
    lo, hi = null.mass_band(64)
    assert (lo, hi) == pytest.approx((0.5 - 1.96 / 16, 0.5 + 1.96 / 16), abs=1e-4)
    lo, hi = null.mean_band(16, d=144)
    assert hi == -lo == pytest.approx(1.96 * math.sqrt(1 / 144) / 4, rel=1e-4)
    # the binomial mass of random layers falls in the band about 95% of the time
    rng = np.random.default_rng(0)
    masses = rng.binomial(64, 0.5, size=20000) / 64
    inside = np.mean((masses >= null.mass_band(64)[0]) & (masses <= null.mass_band(64)[1]))
    assert 0.9 < inside < 0.99


def test_original_layouts_are_recognized(run, tmp_path):
    """The original code's JSON: no format field, no layer names; the report still reads them."""
    keep = ("projections", "mean", "mass", "l2_dist", "l_inf_dist")
    src = run / "results" / "cifar10" / "lenet" / "0"
    for stem in ("lenet_init_0", "lenet_10"):
        doc = load(src / f"{stem}.json")
        old = {s: {b: {k: e[k] for k in keep} for b, e in blocks.items()} for s, blocks in doc.items() if s.isdigit()}
        old.update(net={k: doc["net"][k] for k in ("projections", "mean", "mass")},
                   **{k: doc[k] for k in ("arch", "dataset", "epoch")}, seed="None")  # run without --seed
        files.write_json(tmp_path / f"{stem}.json", old)
    rdoc = reinit_doc(run)
    files.write_json(tmp_path / "reinit.json", {k: rdoc[k] for k in ("init_from_epoch", "top1_test", "top5_test",
                                                                      "arch", "dataset", "seed", "epoch")})
    results = report.load_run(tmp_path)
    assert results.trained_epoch == 10 and results.init_doc is not None and results.reinit_doc is not None
    table = report.joined_table(results)
    entries = layer_entries(trained_doc(run))
    by_position = [e for _, e in sorted(((int(s), int(b)), e) for s, blocks in trained_doc(run).items()
                                        if s.isdigit() for b, e in blocks.items())]
    conv = table[table["name"].str.startswith("stage")]
    assert list(conv["mass"]) == [e["mass"] for e in by_position] and list(conv["N"]) == [e["N"] for e in by_position]
    assert len(entries) == len(conv)
    # without layer names the two sides cannot be matched: every layer is reported missing on one side
    assert set(table["missing"]) == {"reinit", "projections"} and table["drop_reinit_0"].notna().sum() == 9
    assert report.bias_vs_criticality(table)["n_layers"] == 0


def test_the_report_imports_no_torch():
    import subprocess
    import sys

    code = "import sys, hparr.report, hparr.cli._report; assert 'torch' not in sys.modules, 'torch imported'"
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr


def test_a_manifest_names_the_inputs(run, built, tmp_path):
    """With the manifest of `hparr reproduce`, the report reads the files it names and nothing else."""
    copy = tmp_path / "run"
    shutil.copytree(run, copy, ignore=shutil.ignore_patterns("report"))
    folder = copy / "results" / "cifar10" / "lenet" / "0"
    files.write_json(copy / "manifest.json", results_module.manifest(
        copy, folder, folder / "reinit_lenet_10.json", [0, 4, 10]))
    manifest = json.loads((copy / "manifest.json").read_text())
    assert manifest["projections"] == "results/cifar10/lenet/0" and manifest["epochs"] == [0, 4, 10]
    loaded = report.load_run(copy)
    assert loaded.projection_folder.directory == folder.resolve() and not loaded.other_runs  # results_plain unread
    assert loaded.reinit_path == folder / "reinit_lenet_10.json"
    # a stray result elsewhere in the folder is not read when a manifest names the inputs
    shutil.copy(folder / "reinit_lenet_10.json", copy / "results" / "reinit_stray.json")
    assert not any("stray" in n for n in report.load_run(copy).notes)
    written = report.build_report(copy)
    assert (copy / "report" / "layers.csv").read_bytes() == (run / "report" / "layers.csv").read_bytes()
    assert "results_plain" not in (copy / "report" / "summary.md").read_text() and written
def test_unusable_result_files_are_named_and_their_epochs_marked(run, tmp_path, capsys):
    copy = tmp_path / "run"
    shutil.copytree(run, copy, ignore=shutil.ignore_patterns("report"))
    folder = copy / "results" / "cifar10" / "lenet" / "0"
    text = (folder / "lenet_4.json").read_text()
    (folder / "lenet_4.json").write_text(text[: len(text) // 2])  # truncated: the snapshot lenet_4.tar, epoch 5
    files.write_json(folder / "lenet_init_0.json", {"a": 1})  # another format: epoch 0
    other = load(folder / "lenet_9.json")
    files.write_json(folder / "lenet_9.json", {**other, "normalize": False})  # epoch 10, which lenet_10 has

    assert main(["report", str(copy)]) == 0
    err = capsys.readouterr().err
    expected = {"results/cifar10/lenet/0/lenet_4.json": "truncated",
                "results/cifar10/lenet/0/lenet_init_0.json": "another format",
                "results/cifar10/lenet/0/lenet_9.json": "another run's settings (normalize False vs True)",
                "results/unrelated.json": "another format", "results/broken.json": "not JSON"}
    summary = (copy / "report" / "summary.md").read_text()
    page = (copy / "report" / "index.html").read_text()
    unused = summary.split("## Result files not used")[1].split("##")[0]
    for path, reason in expected.items():
        assert f"result file not used: {path}: {reason}" in err
        assert f"- {path}: {reason}" in unused
        assert html.escape(f"{path}: {reason}") in page
    assert "(snapshot of epoch 5)" in unused and "lenet_init_0.json: another format" in unused
    assert "figures: epochs 0, 5 missing" in err
    rep = load(copy / "report" / "report.json")
    assert rep["missing_epochs"] == [0, 5] and len(rep["unusable_results"]) == len(expected)
    assert [Path(p).name for p in rep["inputs"]["projections"]] == ["lenet_10.json"]
    captions = [line for line in summary.splitlines() if "Epochs 0, 5 missing" in line]
    assert len(captions) == 2  # the two figures drawn from the projection results
    assert page.count("Epochs 0, 5 missing") == 2

    assert main(["report", str(copy), "--strict"]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    # the 5 unusable files and the 3 of the other projection run (results_plain/) that the report leaves out
    assert len(err) == 1 and err[0].startswith("hparr report: error: 8 result file(s) not used (--strict)")
    assert err[0].count("results_plain/cifar10/lenet/0/") == 3
    assert "epochs 0, 5 missing" in err[0]


def test_one_spearman_and_one_verdict():
    rng = np.random.default_rng(0)
    x, y = rng.normal(size=12), rng.normal(size=12)
    x[3], y[7] = np.nan, np.inf  # pairs with a missing value are left out
    keep = np.isfinite(x) & np.isfinite(y)
    expected = stats.spearmanr(x[keep], y[keep])
    got = report_stats.spearman(x, y)
    assert got["n"] == 10 and got["note"] is None
    assert got["rho"] == pytest.approx(expected.statistic, abs=1e-12)
    assert got["p_value"] == pytest.approx(expected.pvalue)
    few = report_stats.spearman([1.0, 2.0], [3.0, 4.0], names=("bias", "drop"), unit="layer")
    assert math.isnan(few["rho"]) and few["note"] == "2 layer(s) have both a bias and a drop; at least 3 are needed"
    flat = report_stats.spearman([1.0, 2.0, 3.0], [5.0, 5.0, 5.0], names=("bias", "drop"), unit="layer")
    assert flat["note"] == "the drop is the same for every layer: no ranking"

    verdict = report_stats.verdict
    assert verdict(0.1, 0.5, up="up") == "**supported**: up"
    assert verdict(-0.5, -0.1, down="down") == "**contradicted**: down"
    assert verdict(-0.1, 0.5) == "**not supported by this data**: the 95% interval includes 0"
    assert verdict(float("nan"), float("nan")) == "**undetermined**: too few seeds for an interval"
    # with a p-value, the interval alone is not enough
    assert verdict(0.1, 0.5, 0.01) == "**supported**" and verdict(0.1, 0.5, 0.2) == "**not supported by this data**"
    assert verdict(-0.5, -0.1, 0.2) == "**not supported by this data**"
    assert verdict(0.1, 0.5, up="higher", words=report_stats.CHANGE_WORDS) == "**changes it**: higher"


def test_one_html_renderer_for_markdown():
    text = ("# Title <1>\n\nA **bold** word and a [link](a.csv).\n\n- one\n- two\n\n"
            "| a | b | c |\n|---|---|---|\n| 1 | x&y | 0.5 ± 0.1 |\n| a \\| b | -1.1e-10 | 97.78% |\n\n"
            "![fig](f.png)\n\n"
            "two lines\nof one paragraph\n\n```json\n{\"a\": \"<b>\"}\n\n  **not bold**\n```\nafter")
    page = report_html.markdown_html(text, "t & u")
    assert page.startswith("<!DOCTYPE html>") and "<title>t &amp; u</title>" in page
    assert "<h1>Title &lt;1&gt;</h1>" in page and "<strong>bold</strong>" in page
    assert '<a href="a.csv">link</a>' in page and "<ul>\n<li>one</li>\n<li>two</li>\n</ul>" in page
    # numbers (with a unit or a spread) right-aligned, text left; an escaped bar is a bar inside its cell
    assert ("<table><tr><th>a</th><th>b</th><th>c</th></tr><tr><td class=\"num\">1</td><td>x&amp;y</td>"
            "<td class=\"num\">0.5 ± 0.1</td></tr><tr><td>a | b</td><td class=\"num\">-1.1e-10</td>"
            "<td class=\"num\">97.78%</td></tr></table>") in page
    assert '<a href="f.png"><img src="f.png" alt="fig"></a>' in page
    assert "<p>two lines of one paragraph</p>" in page
    # a fenced block is shown as it is: escaped, its blank line and Markdown kept
    assert "<pre>{&quot;a&quot;: &quot;&lt;b&gt;&quot;}\n\n  **not bold**</pre>\n<p>after</p>" in page
    # every report page shares the page and its style
    assert report_html.STYLE in page


def markdown_text(cell: str) -> str:
    """What a line of the report's Markdown reads as: links and bold marks dropped, images (not text) dropped,
    escaped bars as bars."""
    cell = re.sub(r"!\[[^\]]*\]\([^)]*\)", "", cell)
    cell = re.sub(r"\[([^\]]+)\]\([^)]*\)", r"\1", cell)
    return cell.replace("**", "").replace("\\|", "|").strip()


class PageParts(HTMLParser):
    """The headings, table cells, list items (their text) and images (their source) of an HTML page."""

    def __init__(self, page: str):
        super().__init__()
        self.parts: dict[str, list[str]] = {"heading": [], "cell": [], "item": [], "image": []}
        self.open: tuple[str, list[str]] | None = None
        self.feed(page)

    def handle_starttag(self, tag, attrs):
        kind = ("heading" if re.fullmatch(r"h[1-6]", tag) else "cell" if tag in ("th", "td") else
                "item" if tag == "li" else None)
        if kind is not None:
            self.open = (kind, [])
        if tag == "img":
            self.parts["image"].append(dict(attrs)["src"])

    def handle_data(self, data):
        if self.open is not None:
            self.open[1].append(data)

    def handle_endtag(self, tag):
        if self.open is not None and tag in ("h1", "h2", "h3", "h4", "h5", "h6", "th", "td", "li"):
            self.parts[self.open[0]].append("".join(self.open[1]).strip())
            self.open = None


def assert_page_is_its_markdown(folder: Path, title: str) -> None:
    """A report's index.html is its summary.md rendered by the one renderer, and the page shows every heading,
    table cell, bullet and figure of the Markdown, word for word (so the two cannot say different things)."""
    summary, page = (folder / "summary.md").read_text(), (folder / "index.html").read_text()
    assert page == report_html.markdown_html(summary, title)
    lines, fenced = [], False
    for line in summary.splitlines():
        fenced ^= line.startswith("```")
        if not (fenced or line.startswith("```")):
            lines.append(line)
    expected = {"heading": [markdown_text(re.sub(r"^#+ ", "", x)) for x in lines if re.match(r"#+ ", x)],
                "cell": [markdown_text(c) for x in lines if x.startswith("|") and not x.startswith("|---")
                         for c in re.split(r"(?<!\\)\|", x)[1:-1]],
                "item": [markdown_text(x[2:]) for x in lines if x.startswith("- ")],
                "image": re.findall(r"!\[[^\]]*\]\(([^)]+)\)", summary)}
    got = PageParts(page).parts
    for kind, items in expected.items():
        assert got[kind] == items, kind
    assert expected["heading"] and expected["item"]


def test_one_html_renderer_draws_the_run_page(run, built):
    out = run / "report"
    assert_page_is_its_markdown(out, f"hparr report: {load(out / 'report.json')['title']}")
    page = (out / "index.html").read_text()
    assert '<a href="layers.csv">layers.csv</a>' in page and '<a href="reinit.csv">reinit.csv</a>' in page
    assert "<h2>Re-initialization: top-1 drop, test loss and agreement</h2>" in page


def test_every_cut_of_a_result_file_reads_as_truncated(tmp_path):
    """A result file cut anywhere (inside a number, a key or a string) is named truncated, not malformed."""
    from hparr.results import read_result_file

    doc = json.dumps({"name": "lenet_" * 12, "layers": [{"mass": 0.25, "N": 6}], "epoch": 3})
    path = tmp_path / "cut.json"
    for k in range(1, len(doc) - 1):
        path.write_text(doc[:k])
        assert read_result_file(path)[1].startswith("truncated"), (k, doc[:k])
    path.write_text(doc.replace(":", ";", 1))
    assert read_result_file(path)[1].startswith("not JSON")


# --- what the report says the run is; several runs; runs side by side ----------------------------------------

def run_with_manifest(run: Path, folder: Path, noise: float = 0.0, train_size: int | None = None,
                      subsample: int = 0, stopped: tuple[str, int] = ("epochs exhausted", 10),
                      until: float | None = None, eval_split: str | None = None, source: Path | None = None) -> Path:
    """A copy of the fixture's run with the manifest `hparr reproduce` writes, recording these settings; with
    `source`, its results name another folder of snapshots (another training run)."""
    shutil.copytree(run, folder, ignore=shutil.ignore_patterns("report", "results_plain", "*.pt", "*.tar"))
    results = folder / "results" / "cifar10" / "lenet" / "0"
    for path in results.glob("*.json"):
        doc = load(path)
        if source is not None:
            for key in ("source", "load_from"):
                if key in doc:
                    doc[key] = str(source / Path(doc[key]).name)
        if eval_split is not None and "load_from" in doc:
            doc["eval_split"] = eval_split
        files.write_json(path, doc)
    files.write_json(folder / "manifest.json", {
        **results_module.manifest(folder, results, results / "reinit_lenet_10.json", [0, 5, 10]),
        "stopped": {"reason": stopped[0], "epoch": stopped[1]},
        "final": {"test": {"top1": 61.5}, "train": {"top1": 99.25}},
        "settings": {"arch": "lenet", "seed": 0, "epochs": 200 if until else 10, "until_train_acc": until,
                     "data": {"dataset": "cifar10", "noise": noise, "subsample_classes": subsample,
                              "train_size": train_size}}})
    return folder


def figure_titles(monkeypatch) -> dict[str, str]:
    """The titles every figure of a report is drawn with (its suptitle, else its axes' titles), by file name; the
    figures are drawn but not rendered to files (the tests above check the files)."""
    from hparr.report import figures

    titles: dict[str, str] = {}

    def record(fig, out_dir, name):
        titles[name] = fig.get_suptitle() or " | ".join(ax.get_title() for ax in fig.axes)
        return []

    monkeypatch.setattr(figures, "save_figure", record)

    def record_heatmap(document, png=None, pdf=None, title=None):
        titles["reinit_heatmap"] = title

    monkeypatch.setattr(report, "save_heatmap", record_heatmap)
    return titles


def test_a_noisy_run_is_named_by_its_condition_in_every_title(run, tmp_path, monkeypatch):
    folder = run_with_manifest(run, tmp_path / "noisy", noise=1.0, train_size=2000, subsample=4,
                               stopped=("target reached", 57), until=99.0, eval_split="train")
    titles = figure_titles(monkeypatch)
    report.build_report(folder)
    expected = ("lenet on cifar10, seed 0 (noise 100%, 2000 training images, 4 classes, train top-1 99% reached at "
                "epoch 57, drops on the training images)")
    out = folder / "report"
    summary, page = (out / "summary.md").read_text(), (out / "index.html").read_text()
    assert summary.splitlines()[0] == f"# Hyperplane arrangement bias and layer criticality: {expected}"
    assert f"<title>hparr report: {expected}" in page
    # the page is the Markdown rendered: its heading too, and the split the drops were measured on
    assert_page_is_its_markdown(out, f"hparr report: {expected}")
    assert f"<h1>Hyperplane arrangement bias and layer criticality: {html.escape(expected)}</h1>" in page
    assert "<h2>Re-initialization: top-1 drop, train loss and agreement</h2>" in page and "test loss" not in page
    assert set(titles) == set(FIGURES) and all(expected in t for t in titles.values()), titles
    assert load(out / "report.json")["title"] == expected
    run_section = summary.split("## The run")[1].split("##")[0]
    assert "- Training set: labels: 100% replaced by random classes (label noise); 2000 training images" in run_section
    assert "4 classes (--subsample-classes)" in run_section
    assert "- Training stopped: train top-1 99% reached at epoch 57 (at most 200 epochs)." in run_section
    assert "- Re-initialization drops measured on: the training images, with the labels trained on." in run_section
    assert "top-1 on its own training set 99.25%" in run_section
    # the section of the drops names the split they were measured on
    assert "## Re-initialization: top-1 drop, train loss and agreement" in summary and "train loss" in page

    # pixel shuffle, and a target that was not reached
    shuffled = run_with_manifest(run, tmp_path / "shuffled", noise=-1.0, stopped=("epochs exhausted", 200), until=99)
    results = report.load_run(shuffled)
    assert results.title == "lenet on cifar10, seed 0 (pixel shuffle, train top-1 99% not reached in 200 epochs)"


def test_a_clean_full_data_run_keeps_a_short_title(run, tmp_path, monkeypatch):
    folder = run_with_manifest(run, tmp_path / "clean")
    titles = figure_titles(monkeypatch)
    report.build_report(folder)
    summary = (folder / "report" / "summary.md").read_text()
    assert summary.splitlines()[0] == "# Hyperplane arrangement bias and layer criticality: lenet on cifar10, seed 0"
    assert all(t.split("\n")[0] == "lenet on cifar10, seed 0" for t in titles.values()), titles
    assert "- Training set: labels and pixels: clean; every training image; every class." in summary
    assert "- Training stopped: after the 10 epochs asked for." in summary
    # without a manifest, nothing records the training set: the report says so rather than call the run clean
    results = report.load_run(run, exclude=[run / "report"])
    assert results.title == "lenet on cifar10, seed 0"
    text = "\n".join(results.condition.lines())
    assert "labels and pixels: not recorded by the result files (clean or corrupted cannot be told)" in text


def no_figures(monkeypatch) -> None:
    """The run report without its figures (drawn and checked by the tests above): the text alone."""
    for name in ("plot_distributions", "plot_epochs", "plot_bias_vs_criticality"):
        monkeypatch.setattr(report, name, lambda *args, **kwargs: [])
    monkeypatch.setattr(report, "save_heatmap", lambda *args, **kwargs: None)


def test_a_folder_of_several_runs_gets_one_report_per_run(run, tmp_path, capsys, monkeypatch):
    no_figures(monkeypatch)
    both = tmp_path / "both"
    run_with_manifest(run, both / "clean")
    run_with_manifest(run, both / "noisy", noise=1.0)
    with pytest.raises(UsageError, match="holds 2 runs: clean, noisy"):
        report.load_run(both)
    assert main(["report", str(both)]) == 0
    printed = capsys.readouterr().out
    assert f"{both} holds 2 runs: one report each" in printed
    for name, title in (("clean", "lenet on cifar10, seed 0"), ("noisy", "lenet on cifar10, seed 0 (noise 100%)")):
        assert f"{name}: wrote {both / 'report' / name}/" in printed
        first = (both / "report" / name / "summary.md").read_text().splitlines()[0]
        assert first.endswith(f": {title}")

    # results made by hand: the documents of two training runs (two folders of snapshots) in one results folder
    by_hand = tmp_path / "by_hand"
    shutil.copytree(run / "results" / "cifar10", by_hand / "a" / "cifar10")
    for path in (by_hand / "a" / "cifar10" / "lenet" / "0").glob("*.json"):
        doc = load(path)
        for key in ("source", "load_from"):
            if key in doc:
                doc[key] = str(tmp_path / "other_models" / Path(doc[key]).name)
        files.write_json(by_hand / "b" / path.name, doc)
    found = report.find_runs(by_hand)
    assert found.names() == ["a/cifar10/lenet/0", "b"]
    assert all(len(r.projections) == 4 and len(r.reinits) == 1 for r in found.runs)
    written = report.build_reports(by_hand)
    assert set(written) == {"a/cifar10/lenet/0", "b"}
    assert (by_hand / "report" / "a" / "cifar10" / "lenet" / "0" / "layers.csv").read_bytes() == \
        (by_hand / "report" / "b" / "layers.csv").read_bytes()


def test_two_runs_side_by_side(run, tmp_path, capsys, monkeypatch):
    clean = run_with_manifest(run, tmp_path / "clean")
    noisy = run_with_manifest(run, tmp_path / "noisy", noise=1.0, stopped=("target reached", 8), until=99.0)
    layers = load(noisy / "results" / "cifar10" / "lenet" / "0" / "lenet_10.json")
    for name in ("lenet_10.json", "reinit_lenet_10.json"):  # the noisy run: other masses and drops
        path = noisy / "results" / "cifar10" / "lenet" / "0" / name
        doc = load(path)
        if name == "lenet_10.json":
            doc["0"]["0"]["mass"] = 0.125
        else:
            doc["relative_drop"]["0"][0] = 0.875
        files.write_json(path, doc)
    assert main(["report", str(clean), str(noisy)]) == 0
    out = tmp_path / "comparison"
    assert f"compared 2 runs; wrote {out}/" in capsys.readouterr().out
    summary = (out / "summary.md").read_text()
    assert summary.splitlines()[0] == ("# Runs side by side: lenet on cifar10, seed 0: clean, 10 epochs vs "
                                       "noise 100%, train top-1 99% reached at epoch 8")
    first = layer_entries(layers)["features.0"]["name"]
    table = summary.split(f"### {first}\n")[1].split("###")[0]
    rows = [line for line in table.splitlines() if line.startswith("| clean") or line.startswith("| noise")]
    assert len(rows) == 2
    assert "| 0.125 |" in rows[1] and "| 0.875 |" in rows[1]
    clean_mass = layer_entries(layers)["features.0"]["mass"]
    assert f"| {clean_mass:.3f} |" in rows[0]
    csv = pd.read_csv(out / "layers.csv")
    assert list(csv["run"].unique()) == ["clean, 10 epochs", "noise 100%, train top-1 99% reached at epoch 8"]
    own = pd.read_csv(clean / "report" / "layers.csv") if (clean / "report").exists() else None
    assert own is None  # the comparison does not write the runs' own reports
    for name in ("compare_mass_by_epoch", "compare_distributions", "compare_drops", "compare_bias_vs_criticality"):
        assert (out / f"{name}.png").stat().st_size > 10_000 and f"]({name}.png)" in summary
    assert "<h1>Runs side by side" in (out / "index.html").read_text()

    # one folder of several runs, with --compare (the figures drawn above, not again)
    from hparr.report import compare

    for name in ("plot_mass_by_epoch", "plot_distributions", "plot_drops", "plot_bias_vs_criticality"):
        monkeypatch.setattr(compare, name, lambda *args: [])
    both = tmp_path / "both"
    shutil.move(clean, both / "clean")
    shutil.move(noisy, both / "noisy")
    assert main(["report", str(both), "--compare", "--out", str(tmp_path / "c2")]) == 0
    again = pd.read_csv(tmp_path / "c2" / "layers.csv")
    assert list(again["folder"].unique()) == [str(both / "clean"), str(both / "noisy")]
    assert again.drop(columns="folder").equals(csv.drop(columns="folder"))
    capsys.readouterr()
    assert main(["report", str(both / "clean"), "--compare"]) == 2
    assert "nothing to compare" in capsys.readouterr().err


def test_no_none_reaches_the_reader(run, tmp_path, monkeypatch):
    """Results that record little (no level, no epoch, no architecture): the report says so in words."""
    titles = figure_titles(monkeypatch)
    old = tmp_path / "old"
    keep = ("projections", "mean", "mass", "l2_dist", "l_inf_dist")
    src = run / "results" / "cifar10" / "lenet" / "0"
    for stem in ("lenet_init_0", "lenet_10"):
        doc = load(src / f"{stem}.json")
        original = {s: {b: {k: e[k] for k in keep} for b, e in blocks.items()} for s, blocks in doc.items()
                    if s.isdigit()}
        original.update(net={k: doc["net"][k] for k in ("projections", "mean", "mass")},
                        **{k: doc[k] for k in ("arch", "dataset", "epoch")}, seed="None")
        files.write_json(old / f"{stem}.json", original)
    bare = tmp_path / "bare"
    rdoc = reinit_doc(run)
    files.write_json(bare / "reinit.json", {k: rdoc[k] for k in ("init_from_epoch", "top1_test", "layers")})
    for folder in (old, bare):
        report.build_report(folder)
        for name in ("summary.md", "index.html"):
            text = (folder / "report" / name).read_text().split("## Provenance")[0].split("<h2>Provenance")[0]
            assert "None" not in text, (folder, name)
    assert titles and not any("None" in t for t in titles.values()), titles
    assert "the results record no bias test" in (old / "report" / "summary.md").read_text()
