"""The null of the bias test follows the initialization of each layer (docs/method.md §3.3): what a model's
construction records, the nulls of uniform and truncated-normal weights, their cache, what the results say,
and the false-positive rate at initialization on the fast cells of the bench's grid (bench/null_bench.py)."""
import json
import math

import numpy as np
import pytest
import torch
import torch.nn as nn
from scipy import stats

from hparr import inits, null, results
from hparr import projections as P
from hparr.models import build_model

LEVEL = 0.05


def recorded(init, shape=(16, 3, 3, 3)):
    """The law `inits` records for a weight of `shape` filled by `init`."""
    with inits.recording() as recorder:
        weight = nn.Parameter(torch.empty(shape))
        init(weight)
    draw = recorder.draw_of(weight)
    return None if draw is None else draw.law()


def timm_trunc_normal_tf(w):
    from timm.layers import trunc_normal_tf_

    return trunc_normal_tf_(w, std=0.02)


def timm_trunc_normal(w):
    from timm.layers import trunc_normal_

    return trunc_normal_(w, std=0.02)


def test_the_law_of_each_initializer_is_recorded_and_unknown_ones_are_not_guessed():
    uniform, gaussian = null.UNIFORM, null.GAUSSIAN
    cases = [
        (lambda w: nn.init.kaiming_uniform_(w, a=math.sqrt(5)), uniform),  # PyTorch's default
        (nn.init.xavier_uniform_, uniform),
        (lambda w: nn.init.uniform_(w, -0.3, 0.3), uniform),
        (lambda w: (nn.init.uniform_(w, -1, 1), w.data.mul_(0.1)), uniform),
        (lambda w: nn.init.kaiming_normal_(w, mode="fan_out", nonlinearity="relu"), gaussian),
        (nn.init.xavier_normal_, gaussian),
        (lambda w: w.data.normal_(0, 0.01), gaussian),  # as timm's and the original VGG's code write it
        (lambda w: nn.init.trunc_normal_(w, std=0.02), gaussian),  # cut at +/-2 = 100 sd: no draw is rejected
        (timm_trunc_normal, null.truncnorm_law(100)),  # the same law by the inverse error function
        (timm_trunc_normal_tf, null.truncnorm_law(2)),  # cut at 2 sd
        (lambda w: (nn.init.normal_(w), w.requires_grad_(False)), gaussian),  # no value written
        # not one of the laws, or not known: none is recorded (the assumption applies)
        (nn.init.orthogonal_, None),
        (lambda w: nn.init.trunc_normal_(w, std=1.0, a=-2.0, b=2.0), None),  # resampled, then copied in
        (lambda w: nn.init.uniform_(w, 0.0, 1.0), None),  # not centered
        (lambda w: (nn.init.normal_(w), w.data.add_(1.0)), None),
        (lambda w: (nn.init.normal_(w), w.data[0].uniform_()), None),  # part of it rewritten
        (lambda w: (nn.init.normal_(w), w.data.copy_(torch.ones_like(w))), None),
        (nn.init.zeros_, None),
    ]
    assert [recorded(init) for init, _ in cases] == [law for _, law in cases]
    with inits.recording() as recorder:
        conv = nn.Conv2d(3, 8, 3)
        scaled = nn.Parameter(torch.randn(8, 27) * 0.02)
    assert recorder.draw_of(conv.weight).law() == uniform and recorder.draw_of(scaled).law() == gaussian
    assert null.null_label(null.truncnorm_law(100), 4608) == null.BETA  # no filter can tell it from the Gaussian
    assert null.null_label(null.truncnorm_law(2), 4608) == "truncnorm(2)"


def test_build_model_records_the_initialization_of_every_layer():
    def laws(model):
        return {(type(m).__name__, inits.weight_law(m)) for m in model.modules() if inits.was_recorded(m)}

    assert laws(build_model("lenet", in_channels=1)) == {("Conv2d", "uniform"), ("Linear", "uniform")}  # xavier
    assert laws(build_model("resnet18")) == {("Conv2d", "gaussian"), ("Linear", "uniform")}  # torchvision's own
    mobile = build_model("mobilenet_v2")  # depthwise convs: kaiming normal
    assert laws(mobile) == {("Conv2d", "gaussian"), ("Linear", "gaussian")}
    stats_ = P.layer_stats(mobile, input_shape=(1, 3, 32, 32))
    assert stats_.null_assumed == [] and set(stats_.table["null"]) == {null.BETA}
    # a model hparr did not build records nothing: every layer takes the assumed scheme
    plain = nn.Sequential(nn.Conv2d(3, 8, 3), nn.Conv2d(8, 8, 3, groups=8))
    assumed = P.layer_stats(plain, input_shape=(1, 3, 16, 16))
    assert assumed.null_assumed == ["0", "1"] and list(assumed.table["null"]) == ["uniform", "uniform"]
    normal = P.layer_stats(plain, input_shape=(1, 3, 16, 16), init_scheme="kaiming_normal")
    assert list(normal.table["null"]) == [null.BETA, null.BETA]


def test_the_null_depends_on_the_law_of_the_weights_not_on_their_scale():
    def cosines(init):
        w = torch.empty(512, 3, 3, 3)
        init(w, generator=torch.Generator().manual_seed(3))
        return P.projections(w)

    uniform = [cosines(lambda w, generator: nn.init.kaiming_uniform_(w, a=math.sqrt(5), generator=generator)),
               cosines(lambda w, generator: nn.init.xavier_uniform_(w, gain=3.0, generator=generator)),
               cosines(lambda w, generator: nn.init.uniform_(w, -7.0, 7.0, generator=generator))]
    normal = [cosines(lambda w, generator: nn.init.kaiming_normal_(w, mode="fan_out", generator=generator)),
              cosines(lambda w, generator: nn.init.xavier_normal_(w, generator=generator)),
              cosines(lambda w, generator: nn.init.normal_(w, 0.0, 0.01, generator=generator))]
    for group in (uniform, normal):
        for other in group[1:]:
            np.testing.assert_allclose(other, group[0], rtol=0, atol=1e-6)


def _fpr(tests):
    return float(np.mean([t["p_value"] <= LEVEL for t in tests]))


def test_an_untrained_layer_is_called_biased_at_most_at_the_level_for_every_initialization():
    """Fast cells of bench/null_bench.py (d in {4, 9, 25, 27}, N from 16 to 16384), the weights drawn by the
    initializers themselves: every cell stays within the level plus two Monte-Carlo standard errors. With the
    Beta null alone, PyTorch's default initialization of 4 weights per filter is called biased in almost every
    layer of 16384 filters."""
    from timm.layers import trunc_normal_tf_

    def timm_tf(w, generator):  # timm's initializer draws from the global RNG: a forked one, seeded
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(int(torch.randint(1 << 30, (1,), generator=generator)))
            return trunc_normal_tf_(w, std=0.02)

    draws = 200
    limit = LEVEL + 2 * math.sqrt(LEVEL * (1 - LEVEL) / draws)
    schemes = {  # one initializer per law; the others of each law give the same cosines (test above)
        "pytorch": lambda w, g: nn.init.kaiming_uniform_(w, a=math.sqrt(5), generator=g),
        "kaiming_normal": lambda w, g: nn.init.kaiming_normal_(w, mode="fan_out", generator=g),
        "trunc_normal_tf": timm_tf,
    }
    grid = {4: (16, 256, 4096), 9: (64, 1024, 4096), 25: (16, 1024), 27: (256, 4096)}
    for scheme, init in schemes.items():
        law = null.law_of_scheme(scheme)
        for d, counts in grid.items():
            w = torch.empty(draws * max(counts), d)
            init(w, torch.Generator().manual_seed(d))
            cos = P.projections(w).reshape(draws, -1)
            label = null.null_label(law, d)
            assert label == (null.BETA if scheme == "kaiming_normal" else law)
            for n in counts:
                rate = _fpr(P.bias_tests_of_layers([(c[:n], d) for c in cos], [label] * draws))
                assert rate <= limit, (scheme, d, n, rate)
    # the largest layers of the smallest filters: where the Beta null calls PyTorch's default biased
    w = nn.init.kaiming_uniform_(torch.empty(50 * 16384, 4), a=math.sqrt(5), generator=torch.Generator().manual_seed(1))
    layers = [(c, 4) for c in P.projections(w).reshape(50, -1)]
    assert _fpr(P.bias_tests_of_layers(layers, [null.UNIFORM] * 50)) <= LEVEL + 2 * math.sqrt(LEVEL * 0.95 / 50)
    assert _fpr(P.bias_tests_of_layers(layers)) > 0.9


def test_the_ks_test_uses_the_nulls_cdf():
    rng = np.random.default_rng(2)
    cos = null.draw_cosines(null.UNIFORM, 9, 3000, rng)
    for name in (null.BETA, null.UNIFORM, "truncnorm(2)"):
        expected = stats.kstest(cos, lambda t, name=name: null.cdf(t, 9, name)).pvalue
        assert P.bias_tests(cos, 9, name)["p_ks"] == expected
    small = cos[:60]  # where ks_sf takes the Durbin matrix: within 1e-13 of kstest
    expected = stats.kstest(small, lambda t: null.cdf(t, 9, null.UNIFORM)).pvalue
    assert abs(P.bias_tests(small, 9, null.UNIFORM)["p_ks"] - expected) <= 1e-13
    several = P.bias_tests_of_layers([(cos, 9), (cos[:500], 27), (cos, 9)], [null.UNIFORM, null.BETA, null.BETA])
    assert several[0] == P.bias_tests(cos, 9, null.UNIFORM) and several[2] == P.bias_tests(cos, 9)
    assert several[1] == P.bias_tests(cos[:500], 27)


def test_the_density_the_report_draws_is_the_tested_nulls():
    """The histograms' black curve is the density of the null the layer's test used: scipy's Beta pdf for the
    Gaussian null; for the uniform null, the slope of its CDF, which is a density (it integrates to the CDF's
    rise) and is the histogram of uniform filters, not the Beta curve (d = 9: more mass near 0)."""
    t = np.linspace(-1, 1, 2001)
    np.testing.assert_array_equal(null.density(t, 9), stats.beta.pdf(t, 4, 4, loc=-1, scale=2))
    uniform, beta = null.density(t, 9, null.UNIFORM), null.density(t, 9)
    assert np.all(uniform >= 0) and np.trapezoid(uniform, t) == pytest.approx(1.0, abs=2e-3)
    draws = null.draw_cosines(null.UNIFORM, 9, 1 << 22, np.random.default_rng(5))
    inner = np.abs(t) <= 0.2  # the histogram of uniform filters near 0, against the two curves
    counts, edges = np.histogram(draws, bins=10, range=(-0.2, 0.2), density=False)
    empirical = counts / (draws.size * np.diff(edges))
    centre = (edges[:-1] + edges[1:]) / 2
    ours, theirs = np.interp(centre, t[inner], uniform[inner]), np.interp(centre, t[inner], beta[inner])
    assert np.abs(ours - empirical).max() < 0.02 < np.abs(theirs - empirical).max()


def test_a_null_table_is_simulated_once_cached_on_disk_and_matches_an_independent_simulation(tmp_path, monkeypatch):
    monkeypatch.setenv("HPARR_CACHE_DIR", str(tmp_path))
    null.deviation.cache_clear()
    table = null.deviation(null.UNIFORM, 4)
    path = tmp_path / "null" / f"uniform_d4_v{null.TABLE_VERSION}.json"
    doc = json.loads(path.read_text())
    assert (doc["law"], doc["d"], doc["draws"], doc["seed"]) == ("uniform", 4, null.TABLE_DRAWS, null.TABLE_SEED)
    assert [p.name for p in path.parent.iterdir()] == [path.name]  # written atomically: no temporary left

    def no_simulation(*args, **kwargs):
        raise AssertionError("simulated again")

    monkeypatch.setattr(null, "simulate_table", no_simulation)
    null.deviation.cache_clear()
    assert null.deviation(null.UNIFORM, 4) == table  # read back from the file
    monkeypatch.undo()
    monkeypatch.setenv("HPARR_CACHE_DIR", str(tmp_path))
    path.write_text(path.read_text()[:100])  # a damaged file is simulated again, the same numbers
    null.deviation.cache_clear()
    assert null.deviation(null.UNIFORM, 4) == table and json.loads(path.read_text())["d"] == 4
    null.deviation.cache_clear()

    # against a simulation of its own (another seed): within its noise, where the Beta law is off by 0.014
    t = np.linspace(-0.999, 0.999, 801)
    draws = null.draw_cosines(null.UNIFORM, 4, 1 << 20, np.random.default_rng(11))
    empirical = np.searchsorted(np.sort(draws), t, side="right") / draws.size
    ours, beta = null.cdf(t, 4, null.UNIFORM), null.cdf(t, 4)
    assert np.abs(ours - empirical).max() < 1.5e-3 < 0.01 < np.abs(beta - empirical).max()
    np.testing.assert_allclose(ours + ours[::-1], 1.0, atol=1e-12)  # symmetric, as the law is
    assert np.all(np.diff(ours) >= 0) and null.cdf(0.0, 4, null.UNIFORM) == null.cdf(0.0, 4) == pytest.approx(0.5)


def test_the_edgeworth_term_of_large_filters_is_the_simulated_law():
    """From d = TABLE_BELOW on, the null is the Beta law plus the first Edgeworth term in the kurtosis: closer to
    a simulation of uniform filters than the Beta law, by several times its noise."""
    d = null.TABLE_BELOW
    assert isinstance(null.deviation(null.UNIFORM, d), null.Edgeworth)
    assert isinstance(null.deviation(null.UNIFORM, d - 1), null.Table)
    simulated = np.asarray(null.simulate_table(null.UNIFORM, d, draws=1 << 20, seed=5).values)
    p = np.linspace(0.0, 1.0, simulated.size)
    t = null.distribution(d).ppf(p)
    edgeworth = null.cdf(t, d, null.UNIFORM) - p
    assert np.abs(simulated - edgeworth).mean() < 0.25 * np.abs(simulated).mean()


def test_results_record_their_null_and_older_results_read_as_the_beta_null(tmp_path):
    lenet = build_model("lenet", in_channels=1, input_size=28)
    torch.save(lenet.state_dict(), tmp_path / "lenet_init_0.pt")
    common = dict(dataset="mnist", load_from=[tmp_path / "lenet_init_0.pt"], progress=False)
    known = P.run_projections(P.ProjectionSettings(arch="lenet", **common), tmp_path / "res")
    doc = known.documents["lenet_init_0.json"]
    entries = results.layer_entries(doc)
    assert {e["null"] for e in entries} == {"uniform"} and doc["null_assumed"] == []  # xavier uniform, recorded
    assert doc["init_scheme"] == null.DEFAULT_SCHEME and set(doc["nulls"]) == {"uniform"}

    # a checkpoint without its model: every layer's null is assumed, and the assumption is recorded
    alone = P.run_projections(P.ProjectionSettings(arch=None, **common), tmp_path / "res")
    doc = alone.documents["lenet_init_0.json"]
    assert doc["null_assumed"] == [e["name"] for e in results.layer_entries(doc)] and doc["init_scheme"] == "pytorch"
    assert {e["null"] for e in results.layer_entries(doc)} == {"uniform"}
    normal = P.run_projections(P.ProjectionSettings(arch=None, init_scheme="kaiming_normal", **common),
                               tmp_path / "res2").documents["lenet_init_0.json"]
    assert {e["null"] for e in results.layer_entries(normal)} == {null.BETA}
    assert normal["init_scheme"] == "kaiming_normal" and "Gaussian" in normal["nulls"][null.BETA]
    assert [e["p_ks"] for e in results.layer_entries(normal)] != [e["p_ks"] for e in results.layer_entries(doc)]

    # a result written before the null was recorded: read, its layers under the Beta null; not reused
    P.save(known, tmp_path / "res")
    folder = tmp_path / "res" / known.relpath
    old = json.loads((folder / "lenet_init_0.json").read_text())
    for key in ("init_scheme", "null_assumed", "nulls"):
        del old[key]
    for stage in (k for k in old if k.isdigit()):
        for entry in old[stage].values():
            del entry["null"]
    table = results.projections_table([old])
    assert list(table["null"][:6]) == [null.BETA] * 6 and table["null"].isna().tolist() == [False] * 6 + [True]
    assert list(table.columns).index("null") == list(table.columns).index("biased") + 1
    (folder / "lenet_init_0.json").write_text(json.dumps(old))
    again = P.run_projections(P.ProjectionSettings(arch="lenet", **common), tmp_path / "res")
    assert again.computed == ["lenet_init_0.json"] and "init_scheme None there" in again.replaced["lenet_init_0.json"]
    assert P.table_of(again, tmp_path / "res")["null"].dropna().unique().tolist() == ["uniform"]

    # what the report says of them
    assert null.note(known.documents["lenet_init_0.json"]) == [
        "KS null, from the law of each layer's initial weights (docs/method.md §3.3): uniform (6 layers).", ""]
    said = null.note(doc)[0]
    assert "The initialization of 6 layer(s) is not recorded (features.0, " in said
    assert "--init-scheme pytorch (uniform weights)" in said
    assert "predate" in null.note(old)[0] and null.note(None) == [] and null.note({"net": {}}) == []


def test_an_unknown_init_scheme_is_a_usage_error():
    from hparr.errors import UsageError

    with pytest.raises(UsageError, match="--init-scheme: unknown initialization scheme 'he'"):
        P.ProjectionSettings(arch="lenet", dataset="mnist", init_scheme="he").validate()
    for scheme in (*null.SCHEMES, "gaussian", "uniform", "truncnorm(2.5)"):
        P.ProjectionSettings(arch="lenet", dataset="mnist", init_scheme=scheme).validate()
    with pytest.raises(UsageError, match="truncnorm"):
        P.ProjectionSettings(arch="lenet", dataset="mnist", init_scheme="truncnorm(0)").validate()
