"""What feeds each layer: the kind read from the torch.fx graph (through shape-only ops and pooling, into
concatenations and sums, activations written as formulas), and the measured share of negative inputs."""
import pandas as pd
import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from hparr.cli import main
from hparr.inputs import BY_NAME, KINDS, fx_feeds, negative_shares, nonneg_of
from hparr.models import build_model
from hparr.projections import layer_stats


class Zoo(nn.Module):
    """One conv after each kind of input; `expected` is what feeds each, written by hand."""

    expected = {"c0": "image", "c1": "relu", "c2": "relu", "c3": "batchnorm", "c4": "silu", "c5": "gelu",
                "c6": "hardswish", "c7": "prelu", "c8": "mixed", "c9": "sum", "c10": "relu6", "c11": "sigmoid",
                "c12": "unknown", "c13": "relu", "c14": "conv"}

    def __init__(self):
        super().__init__()
        for i in range(15):
            setattr(self, f"c{i}", nn.Conv2d(16 if i in (2, 8) else 8, 8, 3, padding=1))
        self.c0 = nn.Conv2d(3, 8, 3, padding=1)
        self.bn = nn.BatchNorm2d(8)
        self.prelu = nn.PReLU()
        self.drop = nn.Dropout(0.1)

    def forward(self, x):
        a = F.relu(self.c0(x))
        b = self.c1(F.max_pool2d(a, 1))                    # a max-pool keeps "relu"
        c = self.c2(torch.cat([a, F.relu(b)], 1))          # relu and relu: relu
        d = self.c3(self.bn(F.relu(c)))                    # a BatchNorm after the ReLU: the conv sees its output
        e = self.c4(d * torch.sigmoid(d))                  # SiLU written as its formula
        f = self.c5(F.gelu(e).flatten(1).view(e.shape))    # through shape-only ops
        g = self.c6(F.hardswish(f) * 2.0)                  # a positive scaling keeps the kind
        h = self.c7(self.drop(self.prelu(g)))              # dropout keeps it
        i = self.c8(torch.cat([F.relu6(h), self.bn(h)], 1))  # relu6 and batchnorm: mixed
        j = self.c9(i + h)                                 # a sum of two conv outputs
        k = self.c10(torch.clamp(j, min=0.0))
        m = self.c11(torch.sigmoid(k))
        n = self.c12(m - 0.5)                              # a shift: unknown
        o = self.c13(F.pad(F.relu(n), (1, 1, 1, 1))[..., 1:-1, 1:-1])
        return self.c14(o * torch.sigmoid(self.c12(F.adaptive_avg_pool2d(F.silu(o), 1))))  # x * SE gate: x's


def test_fx_kinds_of_every_kind_of_input():
    feeds = fx_feeds(Zoo().eval(), list(Zoo.expected))
    assert {name: f.kind for name, f in feeds.items()} == Zoo.expected
    assert feeds["c8"].parts == {"relu6", "batchnorm"} and feeds["c8"].nonneg() is False
    assert feeds["c2"].nonneg() is True and feeds["c9"].nonneg() is False and feeds["c12"].nonneg() is None
    assert feeds["c0"].nonneg() is None and feeds["c0"].nonneg(True) is True and feeds["c0"].nonneg(False) is False


def test_the_table_of_kinds():
    names = [k.name for k in KINDS]
    assert len(names) == len(set(names)) and {"image", "relu", "batchnorm", "unknown"} <= set(names)
    nonneg = {k.name for k in KINDS if k.nonneg}
    assert nonneg == {"relu", "relu6", "sigmoid"}
    assert nonneg_of(["relu", "relu6"]) is True and nonneg_of(["relu", "conv"]) is False
    assert nonneg_of(["relu", "unknown"]) is None and BY_NAME["unknown"].nonneg is None
    onnx_ops = [op for k in KINDS for op in k.onnx]
    assert len(onnx_ops) == len(set(onnx_ops))  # one kind per ONNX op type


def test_an_untraceable_model_has_unknown_inputs():
    from own_model import Untraceable

    feeds = fx_feeds(Untraceable().eval(), ["stem", "body.0"])
    assert {f.kind for f in feeds.values()} == {"unknown"}


def test_negative_shares_equal_a_direct_count():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.Conv2d(4, 4, 3), nn.ReLU(), nn.Conv2d(4, 2, 3))
    model[1].running_mean.fill_(0.3)
    x = torch.randn(5, 3, 9, 9)
    shares = negative_shares(model, {"a": "0", "b": "2", "c": "4"}, [x[:2], x[2:]])
    model.eval()  # the oracle runs as the hooks do: in eval mode
    with torch.no_grad():
        seen = [x, model[1](model[0](x)), model[3](model[2](model[1](model[0](x))))]
    model.train()
    for layer, value in zip("abc", seen):
        assert shares[layer] == pytest.approx(float((value < 0).double().mean()), abs=1e-12)
    assert shares["c"] == 0.0 and model.training  # the training mode is restored


def test_the_columns_of_projections_csv_and_of_layer_stats(tmp_path, capsys):
    stats = layer_stats(build_model("lenet", 10, 1, 32))
    assert stats.table["input_kind"].tolist() == ["image"] + ["relu"] * (len(stats.table) - 1)
    assert main(["projections", "--arch", "lenet", "--dataset", "digits", "--results", str(tmp_path),
                 "--probe-data"]) == 0
    table = pd.read_csv(tmp_path / "digits" / "lenet" / "projections.csv")
    layers = table[table["kind"] != "net"]
    assert layers["input_kind"].tolist() == stats.table["input_kind"].tolist()
    assert layers["input_nonneg"].iloc[1:].astype(bool).all() and pd.isna(layers["input_nonneg"].iloc[0])
    assert (layers["input_neg_share"].iloc[1:] == 0).all() and layers["input_neg_share"].iloc[0] > 0.3


def test_the_docs_table_of_kinds_is_the_code_s():
    from pathlib import Path

    text = (Path(__file__).resolve().parents[1] / "docs" / "projections.md").read_text()
    rows = dict(line.split(" | ")[:2] for line in text.splitlines() if line.startswith("| `"))
    assert {k.strip("| `") for k in rows} == set(BY_NAME)
    words = {True: "yes", False: "no"}
    for kind in KINDS:
        cell = rows[f"| `{kind.name}`"]
        assert cell == words[kind.nonneg] if kind.nonneg is not None else cell not in ("yes", "no"), (kind.name, cell)
