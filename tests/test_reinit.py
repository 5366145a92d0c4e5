"""hparr.reinit: the shared-prefix sweep against the swap-evaluate-restore loop and an independent naive loop."""
from __future__ import annotations

import copy
import logging

import numpy as np
import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F
from torchvision.models.vgg import make_layers

from hparr import reinit
from hparr.errors import HparrError, UsageError
from hparr.models import build_model
from hparr.results import drop_frame


class SmallVGG(nn.Module):
    """torchvision's VGG feature stack (BatchNorm, in-place ReLU, max-pools) with a 1x1 conv and a small head."""

    def __init__(self, num_classes: int = 10):
        super().__init__()
        self.features = make_layers([8, "M", 16, 16, "M", 24, "M"], batch_norm=True)
        self.features.append(nn.Conv2d(24, 24, kernel_size=1))
        self.features.append(nn.ReLU(inplace=True))
        self.avgpool = nn.AdaptiveAvgPool2d((2, 2))
        self.classifier = nn.Sequential(nn.Linear(96, 32), nn.ReLU(True), nn.Dropout(), nn.Linear(32, num_classes))

    def forward(self, x):
        return self.classifier(torch.flatten(self.avgpool(self.features(x)), 1))


class Residual(nn.Module):
    """A branch-and-merge graph: `out += identity`, functional in-place ReLU, a layer used on two paths."""

    def __init__(self):
        super().__init__()
        self.stem = nn.Conv2d(3, 8, 3, padding=1)
        self.a = nn.Conv2d(8, 8, 3, padding=1)
        self.bn = nn.BatchNorm2d(8)
        self.b = nn.Conv2d(8, 8, 3, padding=1)
        self.skip = nn.Conv2d(8, 8, 1)
        self.head = nn.Linear(8, 5)

    def forward(self, x):
        x = F.relu(self.stem(x), inplace=True)
        out = self.b(F.relu(self.bn(self.a(x))))
        out += self.skip(x)
        out = out.relu_()
        return self.head(out.mean((2, 3)))


def fresh(cls, seed: int) -> nn.Module:
    """A new model with PyTorch's default initialization drawn from `seed` (global RNG left as it was)."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return cls()


def randomize(model: nn.Module, seed: int) -> nn.Module:
    """Random parameters and BatchNorm statistics, so that BN is not the identity."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, t in model.state_dict().items():
            if t.is_floating_point():
                if "running_var" in name:
                    t.copy_(torch.rand(t.shape, generator=gen) + 0.5)
                else:
                    t.copy_(torch.randn(t.shape, generator=gen) * 0.3)
    return model


def batches(n: int, shape, classes: int, batch_size: int, seed: int = 0, channels_last: bool = False):
    """A learnable task: each class adds its own fixed pattern to noise."""
    gen = torch.Generator().manual_seed(seed)
    templates = torch.randn((classes, *shape), generator=torch.Generator().manual_seed(1234))
    y = torch.randint(0, classes, (n,), generator=gen)
    x = torch.randn((n, *shape), generator=gen) + 0.7 * templates[y]
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    return [(x[i:i + batch_size], y[i:i + batch_size]) for i in range(0, n, batch_size)]


def train(model: nn.Module, steps: int, shape, classes: int, seed: int = 100) -> nn.Module:
    """A few SGD steps (dropout draws from a forked RNG, so the global one is left as it was)."""
    data = batches(64 * steps, shape, classes, 64, seed=seed)
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    model.train()
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        for x, y in data:
            opt.zero_grad()
            F.cross_entropy(model(x), y).backward()
            opt.step()
    return model


def naive_counts(model, alternatives, data, layers):
    """Independent reference: a fresh copy of the model per (alternative, layer), evaluated whole."""
    out = np.zeros((len(alternatives), len(layers), 2), dtype=np.int64)
    for ai, state in enumerate(alternatives.values()):
        for li, layer in enumerate(layers):
            m = copy.deepcopy(model).eval()
            sd = m.state_dict()
            for p in ("weight", "bias"):
                if f"{layer}.{p}" in sd:
                    sd[f"{layer}.{p}"] = state[f"{layer}.{p}"]
            m.load_state_dict(sd)
            with torch.no_grad():
                for x, y in data:
                    logits = m(x)
                    top = logits.topk(min(5, logits.shape[1]), 1).indices
                    out[ai, li, 0] += int((top[:, 0] == y).sum())
                    out[ai, li, 1] += int((top == y[:, None]).any(1).sum())
    return out


def snapshot(model):
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def assert_bit_identical(model, before):
    after = model.state_dict()
    assert after.keys() == before.keys()
    for k in before:
        assert torch.equal(after[k], before[k]), k


@pytest.fixture(scope="module")
def vgg_snapshots():
    """A small VGG at initialization, after 3 and after 25 training steps, and a fresh initialization."""
    model = fresh(SmallVGG, 1)
    init = snapshot(model)
    train(model, 3, (3, 16, 16), 10)
    early = snapshot(model)
    train(model, 22, (3, 16, 16), 10, seed=101)
    return model, {"0": init, "3": early, "rand": fresh(SmallVGG, 4).state_dict()}


@pytest.mark.parametrize("channels_last", [False, True])
def test_small_vgg_sweep_equals_plain_loop_and_naive_loop(vgg_snapshots, channels_last):
    trained, alts = vgg_snapshots
    model = copy.deepcopy(trained).train()
    data = batches(300, (3, 16, 16), 10, 64, channels_last=channels_last)
    before = snapshot(model)
    params_before = [p.data_ptr() for p in model.parameters()]

    every = reinit.reinit_layers(model, with_linear=True, include_1x1=True)
    shared = reinit.reinit_sweep(model, alts, data, layers=every, method="shared")
    assert_bit_identical(model, before)
    assert model.training, "the model's train/eval mode is restored"
    plain = reinit.plain_reinit_sweep(model, alts, data, layers=every)
    assert_bit_identical(model, before)
    assert [p.data_ptr() for p in model.parameters()] == params_before

    layers = [n for n, m in model.named_modules() if isinstance(m, (nn.Conv2d, nn.Linear))]
    assert shared.layers == plain.layers == layers  # the 1x1 conv is included with include_1x1
    one_by_one = [n for n, m in model.named_modules() if isinstance(m, nn.Conv2d) and m.kernel_size == (1, 1)]
    assert one_by_one and reinit.reinit_layers(model, with_linear=True) == [n for n in layers if n not in one_by_one]
    assert shared.method == "shared-prefix" and plain.method == "plain"
    assert shared.labels == ["0", "3", "rand"]
    np.testing.assert_array_equal(shared.correct, plain.correct)
    assert shared.trained_correct == plain.trained_correct
    np.testing.assert_array_equal(shared.correct, naive_counts(model.eval(), alts, data, layers))
    assert shared.total == 300
    # the network has learnt, and the alternatives change its predictions (the test is not vacuous)
    assert shared.trained_correct[0] > 100  # chance is 30
    assert len({int(c) for c in shared.correct[:, :, 0].ravel()}) > 6


def test_prefix_runs_once_per_batch():
    """Each layer's own module runs only in the trained pass; later layers also run for earlier layers' suffixes."""
    model = randomize(SmallVGG(), 5)
    layers = reinit.reinit_layers(model)
    alts = {"a": randomize(SmallVGG(), 6).state_dict(), "b": randomize(SmallVGG(), 7).state_dict()}
    data = batches(40, (3, 16, 16), 10, 20)
    calls = {name: 0 for name in layers}
    hooks = [model.get_submodule(n).register_forward_hook(lambda m, a, o, n=n: calls.__setitem__(n, calls[n] + 1))
             for n in layers]
    reinit.reinit_sweep(model, alts, data, layers=layers, method="shared")
    shared_calls = dict(calls)
    calls.update({n: 0 for n in layers})
    reinit.plain_reinit_sweep(model, alts, data, layers=layers)
    for h in hooks:
        h.remove()
    nb, k = len(data), len(alts)
    # the trained pass, plus one call per alternative for every earlier layer's suffix (verifying the
    # graph on the first batch runs it, and the model itself, once more)
    assert shared_calls == {n: nb * (1 + k * i) + 2 for i, n in enumerate(layers)}
    assert calls == {n: nb * (1 + k * len(layers)) for n in layers}


def test_residual_graph_with_inplace_ops():
    model = randomize(Residual(), 8)
    alts = {"1": randomize(Residual(), 9).state_dict(), "2": randomize(Residual(), 10).state_dict()}
    data = batches(96, (3, 8, 8), 5, 32)
    before = snapshot(model)
    every = reinit.reinit_layers(model, with_linear=True, include_1x1=True)
    shared = reinit.reinit_sweep(model, alts, data, layers=every, method="shared")
    plain = reinit.plain_reinit_sweep(model, alts, data, layers=every)
    assert_bit_identical(model, before)
    assert shared.method == "shared-prefix"
    assert shared.layers == ["stem", "a", "b", "skip", "head"]
    np.testing.assert_array_equal(shared.correct, plain.correct)
    np.testing.assert_array_equal(shared.correct, naive_counts(model.eval(), alts, data, shared.layers))


class Branchy(nn.Module):
    """Data-dependent control flow: torch.fx cannot trace it."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3)
        self.fc = nn.Linear(4, 3)

    def forward(self, x):
        x = self.conv(x)
        if x.sum() > 0:
            x = x * 2
        return self.fc(x.mean((2, 3)))


class Doubler(nn.Module):
    """An in-place operation the graph rewriting does not know: it changes its input."""

    def forward(self, x):
        x.mul_(2)
        return x


class Mutating(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 4, 3, padding=1)
        self.doubler = Doubler()
        self.conv2 = nn.Conv2d(4, 4, 3, padding=1)
        self.fc = nn.Linear(4, 3)

    def forward(self, x):
        h = self.conv1(x)
        return self.fc((self.conv2(self.doubler(h)) + h).mean((2, 3)))


@pytest.mark.parametrize("cls", [Branchy, Mutating])
def test_untraceable_or_mutating_models_fall_back_to_the_plain_loop(cls, caplog):
    model = randomize(cls(), 11)
    alts = {"x": randomize(cls(), 12).state_dict()}
    data = batches(30, (3, 6, 6), 3, 10)
    with caplog.at_level(logging.WARNING, logger="hparr.reinit"):
        auto = reinit.reinit_sweep(model, alts, data, with_linear=True)
    assert auto.method == "plain" and auto.notes and "plain loop" in caplog.text
    plain = reinit.plain_reinit_sweep(model, alts, data, with_linear=True)
    np.testing.assert_array_equal(auto.correct, plain.correct)
    np.testing.assert_array_equal(auto.correct, naive_counts(model.eval(), alts, data, auto.layers))
    with pytest.raises(HparrError, match="cannot share the trained prefix"):
        reinit.reinit_sweep(model, alts, data, with_linear=True, method="shared")


def test_lenet_from_build_model_and_relative_drop():
    model = build_model("lenet", num_classes=10, in_channels=1, seed=0)
    alts = {"0": build_model("lenet", 10, 1, seed=1).state_dict(),
            "rand": build_model("lenet", 10, 1, seed=2).state_dict()}
    data = batches(64, (1, 32, 32), 10, 32)
    result = reinit.reinit_sweep(model, alts, data)
    assert result.layers == ["features.0", "features.2", "features.5", "features.7", "features.10", "features.12"]
    drop = result.relative_drop()
    assert list(drop.index) == ["0", "rand"] and list(drop.columns) == result.layers
    base = result.trained_correct[0]
    expected = (base - result.correct[:, :, 0]) / base
    np.testing.assert_allclose(drop.to_numpy(), expected)
    acc = result.accuracy()
    assert acc["0"][0] == pytest.approx(100.0 * result.correct[0, 0, 0] / 64)
    doc = reinit.reinit_document(result, arch="lenet", dataset="digits", seed=0, epoch=3)
    stored = np.array([doc["relative_drop"][label] for label in ("0", "rand")], dtype=float)
    np.testing.assert_allclose(stored, expected)  # the document stores the same drop, computed once
    np.testing.assert_array_equal(drop_frame(doc).to_numpy(), drop.to_numpy())


def test_bad_alternatives_are_named():
    model = build_model("lenet", seed=0)
    data = batches(8, (3, 32, 32), 10, 8)
    state = build_model("lenet", seed=1).state_dict()
    del state["features.5.bias"]
    with pytest.raises(HparrError, match=r"'e5'.*features\.5\.bias"):
        reinit.reinit_sweep(model, {"e5": state}, data)
    wrong = build_model("lenet", num_classes=10, in_channels=1, seed=1).state_dict()
    with pytest.raises(HparrError, match=r"features\.0\.weight has shape \(6, 1, 3, 3\)"):
        reinit.reinit_sweep(model, {"1": wrong}, data)
    with pytest.raises(HparrError, match="has no conv layer to re-initialize .try --with-linear"):
        reinit.reinit_sweep(build_model("mlp", seed=0), {"1": {}}, data)
    with pytest.raises(HparrError, match="empty"):
        reinit.reinit_sweep(model, {"1": build_model("lenet", seed=1).state_dict()}, [])


def test_read_inits_list(tmp_path, caplog):
    a, b = tmp_path / "lenet_init_0.pt", tmp_path / "lenet_3.tar"
    torch.save({"w": torch.zeros(1)}, a)
    torch.save({"w": torch.zeros(1)}, b)
    (tmp_path / "sub").mkdir()
    lst = tmp_path / "sub" / "inits.txt"
    lst.write_text(f"{a}\n\n   \n{tmp_path / 'gone.tar'}\n../lenet_3.tar\n{a}\n")
    with caplog.at_level(logging.WARNING, logger="hparr.reinit"):
        assert reinit.read_inits_list(lst) == [a, tmp_path / "sub" / "../lenet_3.tar"]
    assert "gone.tar" in caplog.text and "skipping" in caplog.text
    assert set(reinit.read_inits_list(tmp_path)) == {a, b}
    assert reinit.read_inits_list(a) == [a]
    empty = tmp_path / "empty.txt"
    empty.write_text("\n\n")
    with pytest.raises(UsageError, match="lists no existing snapshot"):
        reinit.read_inits_list(empty)
    with pytest.raises(UsageError, match="no such file or directory"):
        reinit.read_inits_list(tmp_path / "missing.txt")
    with pytest.raises(UsageError, match="empty"):
        reinit.read_inits_list("")
