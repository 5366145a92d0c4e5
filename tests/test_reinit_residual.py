"""Re-initialization of residual networks: layers, blocks and stages, BatchNorm, loss, agreement, repeated draws."""
from __future__ import annotations

import copy
import json
import logging

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from hparr import checkpoints, files, reinit
from hparr.cli import main
from hparr.data import DataOptions
from hparr.models import build_model


def trained_like(arch: str, seed: int, classes: int = 10) -> torch.nn.Module:
    """A model whose BatchNorms are not at their initialization (as after training): random affine
    parameters and running statistics, so that every residual branch matters."""
    model = build_model(arch, classes, 1, seed=seed)
    gen = torch.Generator().manual_seed(seed + 100)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, torch.nn.modules.batchnorm._BatchNorm):
                m.weight.copy_(torch.rand(m.weight.shape, generator=gen) + 0.5)
                m.bias.copy_(torch.randn(m.bias.shape, generator=gen) * 0.1)
                m.running_mean.copy_(torch.randn(m.running_mean.shape, generator=gen) * 0.1)
                m.running_var.copy_(torch.rand(m.running_var.shape, generator=gen) + 0.5)
    return model


def batches(n: int = 16, batch: int = 16, seed: int = 0):
    gen = torch.Generator().manual_seed(seed)
    x, y = torch.randn(n, 1, 32, 32, generator=gen), torch.randint(0, 10, (n,), generator=gen)
    return [(x[i:i + batch], y[i:i + batch]) for i in range(0, n, batch)]


def snapshot(model):
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


CASES = [("resnet18", "layer", False), ("resnet18", "block", True), ("resnet18", "stage", True),
         ("timm:resnet10t", "layer", False), ("timm:resnet10t", "block", True)]


@pytest.mark.parametrize("arch,granularity,with_bn", CASES, ids=[f"{a}-{g}{'-bn' if b else ''}" for a, g, b in CASES])
def test_shared_sweep_equals_the_plain_loop(arch, granularity, with_bn):
    model = trained_like(arch, 0)
    alternatives = {"0": build_model(arch, 10, 1, seed=1).state_dict(), "rand": trained_like(arch, 2).state_dict()}
    groups = reinit.reinit_groups(model, granularity, input_shape=(2, 1, 32, 32))
    data = batches()
    before = snapshot(model)
    shared = reinit.reinit_sweep(model, alternatives, data, groups=groups, with_bn=with_bn, method="shared")
    plain = reinit.plain_reinit_sweep(model, alternatives, data, groups=groups, with_bn=with_bn)
    after = model.state_dict()
    assert all(torch.equal(after[k], v) for k, v in before.items())  # BatchNorm statistics too
    assert shared.method == "shared-prefix" and shared.layers == plain.layers == list(groups)
    np.testing.assert_array_equal(shared.correct, plain.correct)
    np.testing.assert_array_equal(shared.agree, plain.agree)
    np.testing.assert_array_equal(shared.loss, plain.loss)
    assert shared.trained_correct == plain.trained_correct and shared.trained_loss == plain.trained_loss
    # the alternatives change the predictions and the loss (the comparison is not vacuous)
    assert (shared.agree < 16).any() and len(np.unique(shared.loss)) > 2


def test_groups_and_batchnorms_of_resnet18():
    model = build_model("resnet18", 10, 1)
    shape = (2, 1, 32, 32)
    blocks = reinit.reinit_groups(model, "block", input_shape=shape)
    assert list(blocks) == ["conv1"] + [f"layer{i}.{j}" for i in range(1, 5) for j in (0, 1)]
    assert blocks["layer2.0"] == ["layer2.0.conv1", "layer2.0.conv2", "layer2.0.downsample.0"]
    stages = reinit.reinit_groups(model, "stage", input_shape=shape)
    assert list(stages) == [f"stage{i}" for i in range(5)] and stages["stage0"] == ["conv1"]
    assert stages["stage1"] == ["layer1.0.conv1", "layer1.0.conv2", "layer1.1.conv1", "layer1.1.conv2"]
    # one conv at a time: the convs hparr projections analyzes (1x1 ones with include_1x1)
    assert len(reinit.reinit_groups(model, "layer", input_shape=shape)) == 17
    assert len(reinit.reinit_groups(model, "layer", input_shape=shape, include_1x1=True)) == 20
    bns = reinit.batchnorms_after(model, [m for g in blocks.values() for m in g], shape)
    assert bns["conv1"] == "bn1" and bns["layer3.0.downsample.0"] == "layer3.0.downsample.1"
    assert bns["layer4.1.conv2"] == "layer4.1.bn2" and len(bns) == 20
    timm_model = build_model("timm:resnet10t", 10, 1)
    assert reinit.batchnorms_after(timm_model, ["conv1.0", "layer1.0.conv1"], shape) == \
        {"conv1.0": "conv1.1", "layer1.0.conv1": "layer1.0.bn1"}
    units = reinit.make_units(model, {"layer1.0": blocks["layer1.0"]}, bns)
    assert units[0].members[1] == ("layer1.0.bn1", ("weight", "bias", "running_mean", "running_var"))
    with pytest.raises(Exception, match="--granularity must be one of layer, block, stage"):
        reinit.reinit_groups(model, "channel")


def test_loss_and_agreement_equal_an_independent_evaluation():
    """A fresh copy of the model per alternative with the block (and its BatchNorms) loaded, evaluated whole."""
    model = trained_like("resnet18", 0)
    alternatives = {"0": build_model("resnet18", 10, 1, seed=1).state_dict(),
                    "rand": build_model("resnet18", 10, 1, seed=2).state_dict()}
    groups = {"layer2.0": reinit.reinit_groups(model, "block", input_shape=(2, 1, 32, 32))["layer2.0"]}
    data = batches()
    result = reinit.reinit_sweep(model, alternatives, data, groups=groups, with_bn=True)
    bns = ["layer2.0.bn1", "layer2.0.bn2", "layer2.0.downsample.1"]
    model.eval()
    with torch.no_grad():
        trained = torch.cat([model(x) for x, _ in data])
    labels = torch.cat([y for _, y in data])
    assert result.trained_loss == pytest.approx(float(F.cross_entropy(trained.double(), labels)), rel=1e-12)
    for ai, state in enumerate(alternatives.values()):
        other = copy.deepcopy(model)
        sd = other.state_dict()
        for key in sd:
            if any(key.startswith(m + ".") for m in groups["layer2.0"] + bns) and "num_batches" not in key:
                sd[key] = state[key]
        other.load_state_dict(sd)
        with torch.no_grad():
            logits = torch.cat([other.eval()(x) for x, _ in data])
        assert result.agree[ai, 0] == int((logits.argmax(1) == trained.argmax(1)).sum())
        assert result.correct[ai, 0, 0] == int((logits.argmax(1) == labels).sum())
        assert result.loss[ai, 0] == pytest.approx(float(F.cross_entropy(logits.double(), labels)), rel=1e-9)
    assert result.agreement()["0"][0] == result.agree[0, 0] / 16


@pytest.fixture(scope="module")
def lenet_run(tmp_path_factory):
    root = tmp_path_factory.mktemp("trials")
    files.save_torch(trained_like("lenet", 3).state_dict(), root / "lenet_9.pt")
    return root


def run(root, **options):
    settings = reinit.ReinitSettings(load_from=str(root / "lenet_9.pt"), data=DataOptions("digits"), arch="lenet",
                                     batch_size=64, max_test_images=64, **options)
    return reinit.run_reinit(settings).document


def test_rand_trials_are_reproducible_with_their_mean_and_std(lenet_run):
    doc = run(lenet_run, rand_trials=3, seed=5)
    assert doc == {**run(lenet_run, rand_trials=3, seed=5), "versions": doc["versions"]}
    trials = doc["rand_trials"]
    assert trials["k"] == 3 and len(set(trials["seeds"])) == 3 and doc["seeds"]["rand_trials"] == trials["seeds"]
    single = run(lenet_run, rand=True, seed=5)
    assert trials["seeds"][0] == single["seeds"]["rand"]  # the first draw is the single draw
    assert trials["values"]["init_from_epoch"][0] == single["init_from_epoch"]["rand"]
    values = np.array(trials["values"]["init_from_epoch"])
    np.testing.assert_allclose(doc["init_from_epoch"]["rand"], values.mean(0))
    np.testing.assert_allclose(doc["rand_std"]["init_from_epoch"], values.std(0, ddof=1))
    np.testing.assert_allclose(doc["agreement_init_from_epoch"]["rand"],
                               np.mean(trials["values"]["agreement_init_from_epoch"], 0))
    assert list(doc["init_from_epoch"]) == ["rand"] and list(doc["correct_top1"]) == ["rand"]
    assert run(lenet_run, rand_trials=3, seed=6)["rand_trials"]["seeds"] != trials["seeds"]
    with pytest.raises(Exception, match="--rand-trials must be >= 1"):
        run(lenet_run, rand_trials=0)


def write_snapshots(directory, arch: str, classes: int = 2):
    directory.mkdir(parents=True)
    files.save_torch(build_model(arch, classes, 1, seed=1).state_dict(), directory / f"{arch}_init_0.pt")
    trained = directory / f"{arch}_3.pt"
    files.save_torch(trained_like(arch, 4, classes).state_dict(), trained)
    return trained


@pytest.mark.slow
@pytest.mark.parametrize("arch", ["resnet18", "timm:resnet10t"])
def test_residual_network_through_projections_reinit_and_report(arch, tmp_path, capsys):
    trained = write_snapshots(tmp_path / "models", arch)
    results = tmp_path / "results"
    common = ["--arch", arch, "--dataset", "digits", "--subsample-classes", "2", "--results", str(results),
              "--seed", "0"]
    assert main(["projections", *common, "--normalize", "--no-progress",
                 "--load-from", str(tmp_path / "models")]) == 0, capsys.readouterr().err
    base = ["reinit", *common, "--load-from", str(trained), "--no-progress", "--batch-size", "32",
            "--max-test-images", "32"]
    logging.getLogger("hparr").handlers.clear()
    assert main([*base, "--inits-from", str(tmp_path / "models"), "--rand"]) == 0, capsys.readouterr().err
    assert main([*base, "--inits-from", str(tmp_path / "models"), "--granularity", "block", "--with-bn"]) == 0
    assert main([*base, "--granularity", "stage", "--rand-trials", "2"]) == 0
    out = results / "digits_2" / arch.replace(":", "-") / "0"  # no ':' in a folder name
    docs = {p.stem: json.loads(p.read_text()) for p in out.glob("reinit_*.json")}
    layer, block, stage = (docs[f"reinit_{trained.stem}{s}"] for s in ("", "_block_bn", "_stage"))
    assert layer["granularity"] == "layer" and layer["method"] == "shared-prefix"
    assert block["granularity"] == "block" and block["with_bn"] and "re-initialized" in block["batchnorm"]
    assert "layer1.0" in block["layers"] and block["groups"]["layer1.0"][0] == "layer1.0.conv1"
    assert stage["layers"] == [f"stage{i}" for i in range(5)] and stage["rand_trials"]["k"] == 2
    assert layer["num_test"] == 32 and layer["max_test_images"] == 32
    assert all(0 <= a <= 1 for doc in docs.values() for row in doc["agreement_init_from_epoch"].values() for a in row)
    assert all(v > 0 for row in layer["loss_init_from_epoch"].values() for v in row) and layer["trained_loss"] > 0
    # the per-layer result is the one the report uses: layer names match the projections'
    stats = json.loads((out / f"{trained.stem}.json").read_text())
    names = [e["name"] for s in stats if s.isdigit() for e in stats[s].values()]
    assert layer["layers"] == names
    assert main(["report", str(results)]) == 0
    summary = (results / "report" / "summary.md").read_text()
    assert "Re-initialization: top-1 drop, test loss and agreement" in summary and "agreement rand" in summary
    table = (results / "report" / "reinit.csv").read_text().splitlines()
    assert table[0].startswith("label,layer,index,top1,relative_drop,loss,agreement")
    assert len(table) == 1 + 2 * len(names)
    assert "re-initialization result not used" in summary  # the block and stage results are listed, not mixed in
    assert checkpoints.find_snapshots(tmp_path / "models")
