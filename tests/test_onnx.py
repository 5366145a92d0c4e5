"""ONNX files: projections read from the graph's initializers equal the torch model's, in the graph's order and
with its node names (fp16, external data, grouped and depthwise convs, BatchNorm folded by the exporter), what
feeds each layer, and `hparr reinit` on a graph converted to torch."""
import json
import warnings

import numpy as np
import pytest
import torch
import torch.nn as nn

onnx = pytest.importorskip("onnx", reason="the onnx extra (pip install 'hparr[onnx]') is part of `make test`")

from hparr import checkpoints  # noqa: E402
from hparr.checkpoints import onnx_file  # noqa: E402
from hparr.cli import main  # noqa: E402
from hparr.projections import AnalysisOptions, SnapshotAnalyzer, projections  # noqa: E402
from hparr.results import layer_entries  # noqa: E402


def export(model: nn.Module, path, shape, dtype=torch.float32, **kwargs):
    """The legacy (TorchScript) exporter: offline, no onnxscript; eval mode folds a BatchNorm into its conv."""
    model.eval()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(model, (torch.zeros(shape, dtype=dtype),), str(path), dynamo=False, opset_version=17,
                          input_names=["x"], dynamic_axes={"x": {0: "n"}}, **kwargs)
    return path


def relu_net():
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 16, 3, padding=1), nn.ReLU(),
                         nn.MaxPool2d(2), nn.Conv2d(16, 8, 3), nn.Flatten(), nn.Linear(8 * 2 * 2, 5))


def silu_bn_net():
    """Conv-BN-SiLU twice, the BatchNorms with statistics far from the identity (folding changes the weights)."""
    torch.manual_seed(1)
    net = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.SiLU(),
                        nn.Conv2d(8, 8, 3, padding=1), nn.BatchNorm2d(8), nn.SiLU(), nn.AdaptiveAvgPool2d(1),
                        nn.Flatten(), nn.Linear(8, 4))
    for bn in (net[1], net[4]):
        bn.weight.data.uniform_(-2, 2)
        bn.bias.data.normal_()
        bn.running_mean.normal_()
        bn.running_var.uniform_(0.2, 3)
    return net


def depthwise_net():
    torch.manual_seed(2)
    return nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU6(), nn.Conv2d(8, 8, 3, padding=1, groups=8),
                         nn.ReLU6(), nn.Conv2d(8, 16, 1), nn.Conv2d(16, 16, 3, groups=4), nn.PReLU(),
                         nn.Conv2d(16, 4, 3))


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    root = tmp_path_factory.mktemp("onnx")
    out = {}
    for name, make in (("relu", relu_net), ("silu_bn", silu_bn_net), ("depthwise", depthwise_net)):
        model = make().eval()
        out[name] = (model, export(model, root / f"{name}.onnx", (1, 3, 8, 8)))
    half = relu_net().half().eval()
    out["fp16"] = (half, export(half, root / "fp16.onnx", (1, 3, 8, 8), dtype=torch.float16))
    return root, out


def torch_convs(model: nn.Module, fold: bool = False) -> list[torch.Tensor]:
    """The conv weights of a Sequential in forward order; `fold`: each BatchNorm folded into the conv before it
    (what the exporter writes)."""
    mods = list(model)
    weights = []
    for i, m in enumerate(mods):
        if isinstance(m, nn.Conv2d):
            if fold and i + 1 < len(mods) and isinstance(mods[i + 1], nn.BatchNorm2d):
                m = torch.nn.utils.fusion.fuse_conv_bn_eval(m, mods[i + 1])
            weights.append(m.weight.detach())
    return weights


def analyze(path, **options):
    analyzer = SnapshotAnalyzer(checkpoints.ModelConfig(None, None, None, None), AnalysisOptions(**options))
    return analyzer.analyze_file(path)


@pytest.mark.parametrize("name,fold,include_1x1", [("relu", False, False), ("silu_bn", True, False),
                                                   ("depthwise", False, True), ("fp16", False, False)])
def test_projections_of_an_exported_file_equal_the_torch_model(files, name, fold, include_1x1):
    _, found = files
    model, path = found[name]
    doc = analyze(path, include_1x1=include_1x1)
    entries = layer_entries(doc)
    weights = torch_convs(model, fold)
    assert len(entries) == len(weights)
    for entry, w in zip(entries, weights):
        ours = np.asarray(entry["projections"])
        theirs = projections(w, normalize=True)
        assert ours.shape == theirs.shape == (w.shape[0],)
        np.testing.assert_allclose(ours, theirs, rtol=0, atol=1e-6)
        assert entry["d"] == w[0].numel()  # a depthwise filter has d = k * k
    assert doc["checkpoint_format"] == "onnx" and doc["layer_order"] == "file"
    graph = onnx.load(str(path))
    assert [e["name"] for e in entries] == [n.name for n in graph.graph.node if n.op_type == "Conv"
                                            and (include_1x1 or n.name != "/4/Conv")]
    if name == "fp16":
        assert {t.data_type for t in graph.graph.initializer} == {onnx.TensorProto.FLOAT16}
    if name == "silu_bn":  # the BatchNorms are folded: no BatchNormalization node is left
        assert not any(n.op_type == "BatchNormalization" for n in graph.graph.node)


def test_input_kinds_are_read_from_the_onnx_graph(files):
    _, found = files
    kinds = {name: [(e["input_kind"], e["input_nonneg"]) for e in layer_entries(analyze(found[name][1],
                                                                                      include_1x1=True))]
             for name in ("relu", "silu_bn", "depthwise")}
    # the image (its normalization unknown), then through a max-pool the ReLU's output
    assert kinds["relu"] == [("image", None), ("relu", True), ("relu", True)]
    assert kinds["silu_bn"] == [("image", None), ("silu", False)]  # SiLU exported as x * Sigmoid(x)
    # ReLU6 is exported as Clip(0, 6); a conv right after a conv sees its output, with both signs
    assert kinds["depthwise"] == [("image", None), ("relu6", True), ("relu6", True), ("conv", False),
                                  ("prelu", False)]


def test_the_graph_order_and_not_the_file_order_and_external_data(files, tmp_path):
    """Nodes written in reverse order are read in topological order; weights in an external-data file are read
    from it, only those of the analyzed layers."""
    _, found = files
    model, path = found["relu"]
    proto = onnx.load(str(path))
    nodes = list(proto.graph.node)[::-1]
    del proto.graph.node[:]
    proto.graph.node.extend(nodes)
    out = tmp_path / "reversed.onnx"
    onnx.save_model(proto, str(out), save_as_external_data=True, all_tensors_to_one_file=True,
                    location="reversed.data", size_threshold=0)
    assert (tmp_path / "reversed.data").stat().st_size > 0
    assert not onnx.load(str(out), load_external_data=False).graph.initializer[0].raw_data  # truly external
    doc = analyze(out)
    direct = analyze(path)
    assert [e["name"] for e in layer_entries(doc)] == [e["name"] for e in layer_entries(direct)]
    for a, b in zip(layer_entries(doc), layer_entries(direct)):
        assert a["projections"] == b["projections"]
    read = onnx_file.read_onnx(out)
    layers, _ = onnx_file.graph_layers(read)
    state = onnx_file.layer_weights(read, layers)
    for key in state:
        state[key]
    assert state.read == {layer.weight for layer in layers}  # the Linear layer's weight is never read
    assert len(read.initializers) > len(state.read)


def test_grouped_convs_and_linear_layers_from_the_graph(files):
    _, found = files
    read = onnx_file.read_onnx(found["depthwise"][1])
    layers, skipped = onnx_file.graph_layers(read, include_1x1=False)
    assert [(layer.shape, layer.groups) for layer in layers] == [
        ((8, 3, 3, 3), 1), ((8, 1, 3, 3), 8), ((16, 4, 3, 3), 4), ((4, 16, 3, 3), 1)]
    assert [s.reason for s in skipped] == ["1x1 convolution (use --include-1x1)"]
    model, path = found["relu"]
    doc = analyze(path, with_linear=True)
    last = layer_entries(doc)[-1]
    assert last["kind"] == "linear"
    np.testing.assert_allclose(last["projections"], projections(model[-1].weight, normalize=True), atol=1e-6)


def test_a_matmul_weight_stored_input_first_is_read_transposed(tmp_path):
    """TensorFlow exports a dense layer as MatMul(x, W) with W of shape (in, out): its filters are W's columns."""
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(0)
    w = rng.normal(size=(4, 3)).astype(np.float32)
    k = rng.normal(size=(4, 2, 3, 3)).astype(np.float32)
    graph = helper.make_graph(
        [helper.make_node("Conv", ["x", "k"], ["c"], name="conv"), helper.make_node("Relu", ["c"], ["r"]),
         helper.make_node("Flatten", ["r"], ["f"]), helper.make_node("MatMul", ["f", "w"], ["y"], name="dense")],
        "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [None, 2, 3, 3])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [None, 3])],
        [numpy_helper.from_array(w, "w"), numpy_helper.from_array(k, "k")])
    path = tmp_path / "tf.onnx"
    onnx.save_model(helper.make_model(graph), str(path))
    entries = layer_entries(analyze(path, with_linear=True))
    assert [(e["name"], e["kind"], e["input_kind"]) for e in entries] == [("conv", "conv", "image"),
                                                                          ("dense", "linear", "relu")]
    np.testing.assert_allclose(entries[1]["projections"], projections(torch.from_numpy(w.T.copy())), atol=1e-6)


def test_projections_and_reinit_of_an_onnx_file_on_digits(tmp_path, capsys):
    """`hparr projections` and `hparr reinit` of an exported model: the reinit result names the layers as the
    projections do, the trained accuracy is the torch model's, and --probe-data measures the negative shares."""
    from own_model import small_cnn

    from hparr.data import DataOptions, load_data, make_loader

    torch.manual_seed(0)
    model = small_cnn(num_classes=10, in_channels=1).eval()
    path = export(model, tmp_path / "small_2.onnx", (1, 1, 32, 32))
    results = tmp_path / "results"
    assert main(["projections", "--load-from", str(path), "--dataset", "digits", "--probe-data", "--results",
                 str(results), "--no-progress"]) == 0
    doc = json.loads((results / "digits" / "checkpoint" / "small_2.json").read_text())
    entries = layer_entries(doc)
    assert [e["input_kind"] for e in entries] == ["image", "relu", "relu"]
    # the oracle: the share of negative values in each conv's input, from the torch model's own forward pass
    data = load_data(DataOptions("digits"), splits=("test",))
    x, _ = next(iter(make_loader(data, "test", 256, train=False)))
    with torch.no_grad():
        inputs = [x, torch.relu(model[0](x)), model[4](torch.relu(model[2](torch.relu(model[0](x)))))]
    for entry, seen in zip(entries, inputs):
        assert entry["input_neg_share"] == pytest.approx(float((seen < 0).float().mean()), abs=1e-12)
    assert entries[1]["input_neg_share"] == 0.0 and entries[0]["input_neg_share"] > 0  # normalized pixels
    assert doc["probe"]["images"] == 256 and doc["probe"]["normalized"] is True
    assert doc["epoch"] == "2"  # `<name>_<N>.onnx` holds the weights after N epochs, as a `.pt` does
    # with --arch the initializers are read by name as the model's state_dict (a torch export keeps the names), and
    # the input kinds come from the model's torch.fx graph: both readers agree
    assert main(["projections", "--arch", "own_model:small_cnn", "--dataset", "digits", "--load-from", str(path),
                 "--results", str(results), "--no-progress"]) == 0
    by_arch = layer_entries(json.loads((results / "digits" / "own_model-small_cnn" / "small_2.json").read_text()))
    assert [e["projections"] for e in by_arch] == [e["projections"] for e in entries]
    assert [e["input_kind"] for e in by_arch] == [e["input_kind"] for e in entries]

    assert main(["reinit", "--load-from", str(path), "--dataset", "digits", "--rand", "--results", str(results),
                 "--max-test-images", "200", "--no-progress", "--eval-processes", "1"]) == 0
    reinit = json.loads((results / "digits" / "checkpoint" / "reinit_small_2.json").read_text())
    assert reinit["layers"] == [e["name"] for e in entries]
    assert reinit["arch"] == "onnx" and reinit["onnx"]["opset"] == 17 and reinit["epoch"] == "2"
    xs, ys = next(iter(make_loader(data, "test", 200, train=False)))
    with torch.no_grad():
        expected = float((model(xs).argmax(1) == ys).float().mean() * 100)
    assert reinit["top1_test"] == pytest.approx(expected)
    assert "rand" in reinit["init_from_epoch"]
