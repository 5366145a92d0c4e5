"""Projection statistics against an independent computation, snapshots, and the bias test's calibration."""
import math

import numpy as np
import pytest
import torch
import torch.nn as nn
from scipy import stats

from hparr import null
from hparr import projections as P
from hparr.checkpoints import ModelConfig
from hparr.errors import HparrError
from hparr.layers import discover_layers
from hparr.models import build_model

from conftest import original_numbering, trained_like

# --- an independent computation of docs/method.md §2, with plain loops -----------------------------

def reference_layer(weight, normalize, init=None):
    w = np.asarray(weight, dtype=np.float64)
    n = w.shape[0]
    rows = w.reshape(n, -1)
    d = rows.shape[1]
    p = []
    for j in range(n):
        total, squares = 0.0, 0.0
        for value in rows[j]:
            total += float(value)
            squares += float(value) * float(value)
        p.append(total / (math.sqrt(squares) * math.sqrt(d)) if normalize else total)
    mean = sum(p) / n
    out = {"projections": p, "N": n, "d": d, "mean": mean, "mass": sum(1 for v in p if v <= 0) / n,
           "std": math.sqrt(sum((v - mean) ** 2 for v in p) / n)}
    if init is not None:
        w0 = np.asarray(init, dtype=np.float64).ravel()
        diff_sq, init_sq, diff_max, init_max = 0.0, 0.0, 0.0, 0.0
        for a, b in zip(w.ravel(), w0):
            diff_sq += (float(a) - float(b)) ** 2
            init_sq += float(b) ** 2
            diff_max = max(diff_max, abs(float(a) - float(b)))
            init_max = max(init_max, abs(float(b)))
        out.update(l2_dist=math.sqrt(diff_sq) / math.sqrt(init_sq), l_inf_dist=diff_max / init_max)
    return out


def assert_matches_reference(stats_, state, features, normalize, init_state=None):
    df = stats_.table
    assert "projections" not in df.columns  # per-filter arrays stay out of the table's rows
    assert list(zip(df["name"], df["stage"], df["block"])) == original_numbering(features)
    for row in df.itertuples():
        ref = reference_layer(state[row.name + ".weight"].numpy(), normalize,
                              None if init_state is None else init_state[row.name + ".weight"].numpy())
        assert (row.N, row.d) == (ref["N"], ref["d"])
        np.testing.assert_allclose(stats_.projections[row.name], ref["projections"], rtol=1e-10, atol=1e-13)
        assert row.mean == pytest.approx(ref["mean"], rel=1e-9, abs=1e-13)
        assert row.std == pytest.approx(ref["std"], rel=1e-9)
        assert row.mass == ref["mass"]
        if init_state is not None:
            assert row.l2_dist == pytest.approx(ref["l2_dist"], rel=1e-10)
            assert row.l_inf_dist == pytest.approx(ref["l_inf_dist"], rel=1e-10)


@pytest.mark.parametrize("normalize", [True, False])
def test_layer_stats_equal_independent_computation(normalize):
    init = build_model("lenet", seed=3)
    state = trained_like(init).state_dict()
    model = build_model("lenet", seed=9)
    model.load_state_dict(state)
    stats_ = P.layer_stats(model, normalize=normalize, init=init, input_shape=(2, 3, 32, 32))
    assert_matches_reference(stats_, state, model.features, normalize, init.state_dict())
    pooled = np.concatenate([reference_layer(state[n + ".weight"].numpy(), normalize)["projections"]
                             for n in stats_.table["name"]])
    net = stats_.net
    assert net["N"] == len(pooled) == 172
    assert net["mean"] == pytest.approx(pooled.mean(), rel=1e-9)
    assert net["mass"] == np.mean(pooled <= 0)
    assert stats_.normalize is normalize and stats_.std_ddof == 0 and not stats_.table.attrs


def test_masses_agree_between_modes_and_zero_filter_counts_negative():
    w = torch.randn(40, 3, 3, 3, generator=torch.Generator().manual_seed(0))
    w[7] = 0.0
    cos, sums = P.projections(w, True), P.projections(w, False)
    assert cos[7] == 0.0 and sums[7] == 0.0
    assert P.summarize(cos)["mass"] == P.summarize(sums)["mass"] == np.mean(sums <= 0)
    assert P.summarize([1.0, 3.0])["std"] == 1.0  # population std
    assert P.distances(w + 1, torch.ones_like(w))["l_inf_dist"] == pytest.approx(float(w.abs().max()))
    with pytest.raises(HparrError, match="no layers to analyze"):
        P.layer_stats(nn.Sequential(nn.Flatten(), nn.Linear(12, 3)), input_shape=(1, 12))
    assert len(P.layer_stats(nn.Sequential(nn.Flatten(), nn.Linear(12, 3)), with_linear=True).table) == 1


# --- snapshots in the original formats and hparr's own --------------------------------------------

def write_original_snapshots(directory, arch="lenet", seed=0):
    init = build_model(arch, seed=seed)
    states = [init.state_dict()] + [trained_like(init, seed=s, strength=0.2 * s).state_dict() for s in (1, 2, 3)]
    torch.save(states[0], directory / f"{arch}_init_0.pt")
    tar = {"epoch": 0, "top1_acc": 31.0, "top5_acc": 80.0, "model_state_dict": states[1],
           "optimizer_state_dict": {"state": {}, "param_groups": [{"lr": 0.01, "params": [0, 1]}]},
           "scheduler_state_dict": {"last_epoch": 1}}
    torch.save(tar, directory / f"{arch}_0.tar")
    wrapped = {k.replace("features.", "features.module."): v for k, v in states[2].items()}
    torch.save({**tar, "epoch": 1, "model_state_dict": wrapped}, directory / f"{arch}_1.tar")
    torch.save(states[3], directory / f"{arch}_2.pt")
    return states


def test_original_snapshot_formats_and_epochs(tmp_path):
    states = write_original_snapshots(tmp_path)
    analyzer = P.SnapshotAnalyzer(ModelConfig("lenet", 10, 3, 32), P.AnalysisOptions(normalize=False),
                                  context={"dataset": "cifar10"}, init_state=states[0])
    names = ["lenet_init_0.pt", "lenet_0.tar", "lenet_1.tar", "lenet_2.pt"]
    docs = [analyzer.analyze_file(tmp_path / n) for n in names]
    assert [d["epoch"] for d in docs] == ["0", "1", "2", "2"]
    assert [d["stem"] for d in docs] == [n.rsplit(".", 1)[0] for n in names]
    model = build_model("lenet")
    layers, _ = discover_layers(model, (1, 3, 32, 32))
    for doc, state in zip(docs, states):
        stats_ = P.analyze_layers(layers, state, normalize=False, init=states[0])
        assert_matches_reference(stats_, state, model.features, False, states[0])
        for row in stats_.table.itertuples():
            entry = doc[str(row.stage)][str(row.block)]
            assert entry["name"] == row.name and entry["mean"] == row.mean and entry["mass"] == row.mass
            assert entry["l2_dist"] == row.l2_dist and entry["projections"] == list(stats_.projections[row.name])
    assert docs[0]["0"]["0"]["l2_dist"] == 0.0
    assert docs[1]["snapshot_top1_acc"] == 31.0 and docs[0]["dataset"] == "cifar10"


def test_hparr_metadata_preferred_and_checked(tmp_path):
    model = build_model("lenet", num_classes=5, seed=2)
    meta = {"format": "hparr-snapshot-1", "arch": "lenet", "num_classes": 5, "in_channels": 3, "input_size": 32,
            "epochs_completed": 7, "epoch": 6, "model_state_dict": model.state_dict(), "seeds": {"seed": 2}}
    torch.save(meta, tmp_path / "weights.pt")
    analyzer = P.SnapshotAnalyzer(ModelConfig("lenet", 10, 3, 32), P.AnalysisOptions(), seed=2)
    doc = analyzer.analyze_file(tmp_path / "weights.pt")
    assert doc["epoch"] == "7" and doc["num_classes"] == 5 and doc["snapshot_seeds"] == {"seed": 2}
    with pytest.raises(HparrError, match="trained with seed 2, not --seed 4"):
        P.SnapshotAnalyzer(ModelConfig("lenet", 10, 3, 32), P.AnalysisOptions(), seed=4).analyze_file(
            tmp_path / "weights.pt")
    with pytest.raises(HparrError, match="is a snapshot of lenet, not of --arch vgg11"):
        P.SnapshotAnalyzer(ModelConfig("vgg11", 10, 3, 32), P.AnalysisOptions()).analyze_file(tmp_path / "weights.pt")
    torch.save(model.state_dict(), tmp_path / "lenet_3.pt")  # no metadata: 5 classes do not fit 10
    with pytest.raises(HparrError, match=r"does not match .*classifier.6.weight: snapshot \(5, 84\) vs model \(10"):
        analyzer.analyze_file(tmp_path / "lenet_3.pt")


# --- the null and the test --------------------------------------------------------------------------

def test_null_cdf_is_the_cosine_of_a_random_direction():
    t = np.linspace(-0.99, 0.99, 41)
    for d in (2, 9, 27, 576):
        np.testing.assert_allclose(null.distribution(d).cdf(t),
                                   stats.beta.cdf((1 + t) / 2, (d - 1) / 2, (d - 1) / 2), rtol=1e-10, atol=1e-14)
    gen = torch.Generator().manual_seed(1)
    cos = P.projections(torch.randn(20000, 27, generator=gen), True)
    law = null.distribution(27)
    assert stats.kstest(cos, law.cdf).pvalue > 0.01
    assert P.bias_tests(cos, 27)["p_ks"] == stats.kstest(cos, law.cdf).pvalue  # the test uses this very law
    assert np.var(cos) == pytest.approx(1 / 27, rel=0.05)
    assert np.all(np.diff(law.cdf(t)) > 0) and law.cdf(0.0) == pytest.approx(0.5)
    assert law.cdf(-1.5) == 0.0 and law.cdf(1.5) == 1.0


def test_one_weight_per_filter_has_no_ks_test():
    cos = P.projections(torch.tensor([[0.5], [-2.0], [3.0], [1.0]]), True)
    assert cos.tolist() == [1.0, -1.0, 1.0, 1.0]
    tests = P.bias_tests(cos, 1)
    assert math.isnan(tests["p_ks"]) and tests["p_value"] == tests["p_sign"] == stats.binomtest(1, 4).pvalue
    layers, _ = discover_layers(nn.Conv2d(1, 4, 1), (1, 1, 8, 8), include_1x1=True)
    doc = P.projection_document(P.analyze_layers(layers, {"weight": torch.ones(4, 1, 1, 1)}))
    assert doc["0"]["0"]["p_ks"] is None and doc["0"]["0"]["d"] == 1 and doc["0"]["0"]["mass"] == 0.0


def _pomeranz_range(n: int, stat: float) -> bool:
    """Where scipy evaluates the exact KS law by Pomeranz's recursion (and hparr by the Durbin matrix)."""
    t = n * stat
    return n <= 140 and 1 < t < n - 1 and stat < 0.5 and 0.754693 < t * stat <= 4


def test_the_bias_tests_are_scipys():
    """The layer tests of one call (each law evaluated once for every layer) equal scipy's binomtest and
    kstest of each layer alone, for filter counts and dimensions through every branch of the exact KS law,
    biased layers, ties, a diverged layer and a 1-dimensional one: the sign test to within 2e-15, the KS test to
    the last bit, or to within 1e-13 in the Durbin matrix range of `ks_sf`."""
    rng = np.random.default_rng(7)
    layers = []
    for n in (1, 2, 3, 6, 16, 64, 150, 512, 2000):
        for d in (2, 9, 27, 144, 576):
            scale = math.sqrt(1 / d)
            layers.append((np.clip(rng.normal(rng.choice([0.0, 0.5 * scale, 3 * scale]), scale, n), -1, 1), d))
    layers += [(np.zeros(6), 9), (np.array([0.1, np.nan, -0.2]), 27), (np.array([1.0, -1.0, 1.0]), 1)]
    got = P.bias_tests_of_layers(layers)
    assert len(got) == len(layers)
    durbin = 0
    for (c, d), tests in zip(layers, got):
        sign = stats.binomtest(int(np.count_nonzero(c <= 0)), c.size, 0.5).pvalue
        result = stats.kstest(c, null.distribution(d).cdf) if d >= 2 else None
        ks = result.pvalue if result is not None else float("nan")
        np.testing.assert_equal(tests, P.bias_tests(c, d))  # NaN equals NaN here
        assert tests["p_sign"] == pytest.approx(sign, rel=2e-15, abs=0)
        if result is not None and _pomeranz_range(c.size, result.statistic):
            durbin += 1
            assert abs(tests["p_ks"] - ks) <= 1e-13
        else:
            assert tests["p_ks"] == ks or (math.isnan(ks) and math.isnan(tests["p_ks"])), (c.size, d)
        available = [p for p in (tests["p_sign"], tests["p_ks"]) if not math.isnan(p)]
        assert tests["p_value"] == min(1.0, len(available) * min(available))
    assert durbin >= 3
    assert any(t["p_ks"] < 1e-10 for t in got) and any(t["p_ks"] > 0.5 for t in got)


def test_the_sign_test_is_binomtests_for_every_small_layer():
    """`sign_pvalues` equals `scipy.stats.binomtest(K, N, 0.5)` for every count K of every N up to 64 and
    of a few larger layers: to the last bit for nearly all, to within 2e-15 for the rest."""
    sizes = [*range(1, 65), 100, 140, 512]
    n = np.repeat(sizes, [m + 1 for m in sizes])
    k = np.concatenate([np.arange(m + 1) for m in sizes])
    expected = np.array([stats.binomtest(int(a), int(b), 0.5).pvalue for a, b in zip(k, n)])
    got = P.sign_pvalues(k, n)
    np.testing.assert_allclose(got, expected, rtol=2e-15, atol=0)
    assert (got == expected).mean() > 0.99 and got[2 * k == n].tolist() == [1.0] * int((2 * k == n).sum())


@pytest.mark.parametrize("durbin", ["scipy's", "absent"])
def test_the_ks_law_is_scipys_for_every_small_layer(durbin, monkeypatch):
    """`ks_sf` equals scipy's `kstwo.sf`, the law of `ks_1samp`'s exact mode, for every N up to 141 and statistics
    across its branches. With scipy's Durbin matrix (`scipy.stats._ksstats._kolmogn_DMTW`, private to scipy):
    within 1e-13 (absolute) where `ks_sf` takes it, to the last bit elsewhere. With a scipy that lacks it (the
    guarded import finds none): `kstwo.sf` everywhere, to the last bit."""
    from hparr.projections import _stats as ks_module

    calls = []
    if durbin == "absent":
        monkeypatch.setattr(ks_module, "_kolmogn_DMTW", None)
    else:
        real = ks_module._kolmogn_DMTW
        assert real is not None, "this scipy has no _kolmogn_DMTW: ks_sf falls back to the slower kstwo.sf"
        monkeypatch.setattr(ks_module, "_kolmogn_DMTW", lambda n, d, cdf: calls.append(n) or real(n, d, cdf=cdf))
    tolerance = 1e-13 if durbin == "scipy's" else 0.0
    n = np.repeat(np.arange(1, 142), 12)
    stat = np.sqrt(np.tile([0.3, 0.754, 0.755, 0.9, 1.3, 2.0, 2.7, 3.3, 3.99, 4.0, 4.01, 6.0], 141) / n)
    stat = np.minimum(stat, 0.999)
    expected = stats.kstwo.sf(stat, n)
    got = P.ks_sf(stat, n)
    in_range = np.array([_pomeranz_range(int(k), float(x)) for k, x in zip(n, stat)])
    assert in_range.sum() > 600 and (~in_range).sum() > 600
    assert len(calls) == (in_range.sum() if durbin == "scipy's" else 0)
    np.testing.assert_array_equal(got[~in_range], expected[~in_range])
    np.testing.assert_allclose(got[in_range], expected[in_range], rtol=0, atol=tolerance)
    # samples tested as ks_1samp tests them in its exact mode, against the uniform law
    rng, sampled = np.random.default_rng(3), 0
    for size in (10, 30, 64, 100, 140):
        for _ in range(4):
            x = rng.uniform(size=size) ** rng.choice([1.0, 1.1, 1.3])
            exact = stats.ks_1samp(x, stats.uniform.cdf, method="exact")
            sampled += _pomeranz_range(size, exact.statistic)
            assert abs(P.ks_sf(exact.statistic, size) - exact.pvalue) <= tolerance
    assert sampled >= 5


def test_holm_follows_its_definition():
    p = np.array([0.01, 0.04, np.nan, 0.03, 0.005, 0.5])
    adj = P.holm(p)
    order = [4, 0, 3, 1, 5]  # ascending among the 5 finite values
    expected, running = {}, 0.0
    for rank, i in enumerate(order):
        running = max(running, min(1.0, (5 - rank) * p[i]))
        expected[i] = running
    assert np.isnan(adj[2])
    assert all(adj[i] == pytest.approx(expected[i]) for i in order)
    assert adj[4] == pytest.approx(0.025) and adj[5] == pytest.approx(0.5)


def test_a_biased_layer_is_detected():
    model = build_model("lenet", seed=0)
    with torch.no_grad():
        w = model.features[10].weight  # 64 filters
        w.mul_(torch.where(w.sum((1, 2, 3), keepdim=True) > 0, -1.0, 1.0))  # every filter points away from 1
        v = model.features[12].weight
        v.add_(0.3 * v.std())  # a shift of the whole layer towards the positive orthant
    stats_ = P.layer_stats(model, input_shape=(1, 3, 32, 32))
    df = stats_.table
    biased = dict(zip(df["name"], df["biased"]))
    assert biased == {"features.0": False, "features.2": False, "features.5": False, "features.7": False,
                      "features.10": True, "features.12": True}
    row = df.set_index("name").loc["features.10"]
    assert row["mass"] == 1.0 and row["p_sign"] == pytest.approx(2 * 0.5 ** 64)
    assert stats_.net["biased"] and stats_.net["n_biased"] == 2


def _redrawn_vgg11(layers, seed):
    """The conv weights of vgg11 at initialization (torchvision's Kaiming-normal, fan_out), drawn for `seed`."""
    gen = torch.Generator().manual_seed(seed)
    return {layer.weight_key: nn.init.kaiming_normal_(torch.empty(layer.shape), mode="fan_out",
                                                      nonlinearity="relu", generator=gen) for layer in layers}


@pytest.mark.slow
def test_false_positive_rate_at_initialization():
    level = 0.05
    tables = []
    lenet_layers, _ = discover_layers(build_model("lenet"), (1, 3, 32, 32))
    for seed in range(300):  # the real initialization: Xavier-uniform
        tables.append(("lenet", P.analyze_layers(lenet_layers, build_model("lenet", seed=seed).state_dict())))
    vgg_layers, _ = discover_layers(build_model("vgg11"), (1, 3, 32, 32))
    for seed in range(40):
        tables.append(("vgg11", P.analyze_layers(vgg_layers, _redrawn_vgg11(vgg_layers, seed))))
    # Kaiming-uniform, Kaiming-normal with 1x1 convs skipped, N(0, 0.01^2)
    for arch, seeds in (("alexnet", 4), ("resnet18", 4), ("vgg19_orig", 2)):
        layers, _ = discover_layers(build_model(arch), (1, 3, 32, 32))
        for seed in range(seeds):
            tables.append((arch, P.analyze_layers(layers, build_model(arch, seed=seed).state_dict())))

    networks = {arch: [t.net["biased"] for a, t in tables if a == arch] for arch, _ in tables}
    for arch, flags in networks.items():
        n = len(flags)
        limit = level + 3 * math.sqrt(level * (1 - level) / n)
        assert np.mean(flags) <= limit, (arch, np.mean(flags))
    # the per-layer tests hold their level: p_ks is exact (uniform p-values), p_sign is conservative
    p_ks = np.concatenate([t.table["p_ks"].to_numpy() for _, t in tables])
    p_sign = np.concatenate([t.table["p_sign"].to_numpy() for _, t in tables])
    n = len(p_ks)
    sd = math.sqrt(level * (1 - level) / n)
    assert abs(np.mean(p_ks <= level) - level) < 4 * sd
    assert stats.kstest(p_ks, "uniform").pvalue > 0.001
    assert np.mean(p_sign <= level) < level + 4 * sd


def test_grouped_and_depthwise_convs_use_the_channels_of_one_group():
    from hparr.projections import layer_stats

    model = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 16, 3, groups=4, padding=1),
                          nn.Conv2d(16, 16, 5, groups=16, padding=2))
    stats_ = layer_stats(model, input_shape=(1, 3, 16, 16))
    df = stats_.table
    assert df["d"].tolist() == [27, 18, 25]  # (C / groups) x k x k
    w = model[2].weight.detach().double().reshape(16, -1)
    cos = w.sum(1) / (w.norm(dim=1) * 18 ** 0.5)
    np.testing.assert_allclose(stats_.projections[df["name"][1]], cos.numpy(), rtol=1e-12)
