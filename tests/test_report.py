"""`hparr report`: a report drawn from result files made by the real projection and reinit code paths."""
from __future__ import annotations

import html
import json
import math
import shutil
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
from hparr.layers import discover_layers
from hparr.models import build_model
from hparr.report import html as report_html
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

    code = "import sys, hparr.report, hparr.cli.report; assert 'torch' not in sys.modules, 'torch imported'"
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
    assert loaded.projection_run.directory == folder.resolve() and not loaded.other_runs  # results_plain unread
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
            "| a | b |\n|---|---|\n| 1 | x&y |\n\n![fig](f.png)")
    page = report_html.markdown_html(text, "t & u")
    assert page.startswith("<!DOCTYPE html>") and "<title>t &amp; u</title>" in page
    assert "<h1>Title &lt;1&gt;</h1>" in page and "<strong>bold</strong>" in page
    assert '<a href="a.csv">link</a>' in page and "<ul>\n<li>one</li>\n<li>two</li>\n</ul>" in page
    assert "<table><tr><th>a</th><th>b</th></tr><tr><td>1</td><td>x&amp;y</td></tr></table>" in page
    assert '<a href="f.png"><img src="f.png" alt="fig"></a>' in page
    # the run report's page and the study report's share the page and its style
    assert report_html.STYLE in page


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
