"""Layer discovery: forward order, stage/block numbering, skipped layers and the fallback."""
import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from hparr.layers import discover_layers, guess_input_shape
from hparr.models import build_model

from conftest import original_numbering


def labels(layers):
    return [(layer.name, layer.stage, layer.block) for layer in layers]


def test_lenet_stages_and_blocks():
    layers, skipped = discover_layers(build_model("lenet"), (2, 3, 32, 32))
    assert [layer.stage for layer in layers] == [0, 0, 1, 1, 2, 2]
    assert [layer.block for layer in layers] == [0, 1, 0, 1, 0, 1]
    assert [layer.index for layer in layers] == list(range(6))
    assert all(layer.kind == "conv" and layer.traced for layer in layers)
    assert layers[0].weight_key == "features.0.weight" and layers[0].shape == (6, 3, 3, 3)
    assert [(s.name, s.kind) for s in skipped] == [("classifier.0", "linear"), ("classifier.3", "linear"),
                                                    ("classifier.6", "linear")]
    assert all("--with-linear" in s.reason for s in skipped)


@pytest.mark.parametrize("arch", ["lenet", "vgg11", "alexnet"])
def test_matches_original_numbering_of_features(arch):
    model = build_model(arch)
    layers, _ = discover_layers(model, (1, 3, 32, 32))
    assert labels(layers) == original_numbering(model.features)


def test_mnist_lenet_one_channel():
    model = build_model("lenet", in_channels=1, input_size=28)
    layers, _ = discover_layers(model, (2, 1, 28, 28))
    assert labels(layers) == original_numbering(model.features)
    assert layers[0].shape == (6, 1, 3, 3)


def test_with_linear_labels_classifier_after_last_pool():
    layers, skipped = discover_layers(build_model("lenet"), (1, 3, 32, 32), with_linear=True)
    assert skipped == []
    assert labels(layers)[6:] == [("classifier.0", 3, 0), ("classifier.3", 3, 1), ("classifier.6", 3, 2)]
    assert [layer.kind for layer in layers[6:]] == ["linear"] * 3
    mlp, _ = discover_layers(build_model("mlp"), (1, 3, 32, 32), with_linear=True)
    assert [layer.stage for layer in mlp] == [0] * 8 and [layer.block for layer in mlp] == list(range(8))


class Strided(nn.Module):
    """No max-pool: downsampling by strided convs, an average pool and a functional pool."""

    def __init__(self):
        super().__init__()
        self.a = nn.Conv2d(3, 8, 3, padding=1)
        self.b = nn.Conv2d(8, 8, 3, stride=2, padding=1)   # 32 -> 16: later layers in stage 1
        self.c = nn.Conv2d(8, 8, 3, padding=1)
        self.proj = nn.Conv2d(8, 8, 1)                       # 1x1: skipped by default
        self.pool = nn.AvgPool2d(2)                          # 16 -> 8: stage 2
        self.d = nn.Conv2d(8, 16, 3, padding=1)
        self.e = nn.Conv2d(16, 16, 3, padding=1)
        self.f = nn.Conv2d(16, 16, 3, padding=1)
        self.head = nn.Linear(16, 10)

    def forward(self, x):
        x = self.c(F.relu(self.b(F.relu(self.a(x)))))
        x = self.d(self.pool(self.proj(x)))
        x = self.e(x)
        x = F.avg_pool2d(x, 2)                               # functional 8 -> 4: stage 3
        x = self.f(x)
        return self.head(x.mean((2, 3)))


def test_downsampling_stages_without_maxpool():
    layers, skipped = discover_layers(Strided(), (2, 3, 32, 32))
    assert labels(layers) == [("a", 0, 0), ("b", 0, 1), ("c", 1, 0), ("d", 2, 0), ("e", 2, 1), ("f", 3, 0)]
    assert {s.name: s.reason for s in skipped} == {"proj": "1x1 convolution (use --include-1x1)",
                                                  "head": "linear layer (use --with-linear)"}
    with_1x1, skipped = discover_layers(Strided(), (2, 3, 32, 32), include_1x1=True, with_linear=True)
    assert labels(with_1x1) == [("a", 0, 0), ("b", 0, 1), ("c", 1, 0), ("proj", 1, 1), ("d", 2, 0), ("e", 2, 1),
                                ("f", 3, 0), ("head", 3, 1)]  # a flat input has no spatial size
    assert skipped == []


def resnet_names(model: nn.Module) -> list[tuple[str, int, int]]:
    """torchvision's and timm's naming: `layerN.M.*` is stage N, block M; the stem is stage 0."""
    out, stem = [], 0
    for name, module in model.named_modules():
        if isinstance(module, nn.Conv2d):
            if name.startswith("layer"):
                out.append((name, int(name[5]), int(name.split(".")[1])))
            else:
                out.append((name, 0, stem))
                stem += 1
    return out


@pytest.mark.parametrize("size", [32, 224])
def test_resnet18_stages_by_resolution_and_blocks_by_structure(size):
    model = build_model("resnet18")
    layers, skipped = discover_layers(model, (1, 3, size, size))
    expected = [row for row in resnet_names(model) if "downsample" not in row[0]]
    assert labels(layers) == expected
    assert labels(layers)[:4] == [("conv1", 0, 0), ("layer1.0.conv1", 1, 0), ("layer1.0.conv2", 1, 0),
                                  ("layer1.1.conv1", 1, 1)]
    assert [s.name for s in skipped if s.kind == "conv"] == [f"layer{i}.0.downsample.0" for i in (2, 3, 4)]
    assert all(s.reason.startswith("1x1 convolution") for s in skipped if s.kind == "conv")
    assert [layer.unit for layer in layers[:4]] == ["conv1", "layer1.0", "layer1.0", "layer1.1"]
    with_1x1, _ = discover_layers(model, (1, 3, size, size), include_1x1=True)
    assert labels(with_1x1) == resnet_names(model)  # the 1x1 downsample belongs to its block


def test_timm_resnet_reads_like_torchvision():
    model = build_model("timm:resnet10t", num_classes=10, in_channels=1)
    layers, _ = discover_layers(model, (1, 1, 32, 32), include_1x1=True)
    assert labels(layers) == resnet_names(model)
    assert labels(layers)[:4] == [("conv1.0", 0, 0), ("conv1.3", 0, 1), ("conv1.6", 0, 2), ("layer1.0.conv1", 1, 0)]


def test_bottleneck_resnet_is_mostly_1x1():
    model = build_model("resnet50")
    layers, skipped = discover_layers(model, (1, 3, 64, 64))
    everything, _ = discover_layers(model, (1, 3, 64, 64), include_1x1=True)
    assert len(layers) == 17 and len(everything) == 53
    assert sum("1x1" in s.reason for s in skipped) == 36
    assert labels(everything) == resnet_names(model)


class GatedResidual(nn.Module):
    """A residual block behind data-dependent control flow: torch.fx cannot trace it."""

    def __init__(self):
        super().__init__()
        self.a = nn.Conv2d(3, 4, 3, padding=1)
        self.b = nn.Conv2d(4, 4, 3, padding=1)
        self.pool = nn.MaxPool2d(2)
        self.c = nn.Conv2d(4, 4, 3, padding=1)

    def forward(self, x):
        x = self.a(x)
        if x.sum() > -1e9:
            x = x + self.b(x)
        return self.c(self.pool(x))


def test_untraceable_residual_network_keeps_the_maxpool_rule():
    layers, _ = discover_layers(GatedResidual(), (1, 3, 16, 16))
    assert labels(layers) == [("a", 0, 0), ("b", 0, 1), ("c", 1, 0)]


class Reused(nn.Module):
    """PyTorch's tutorial net: one pooling module called twice, one conv applied twice, an unused head."""

    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 6, 5)
        self.pool = nn.MaxPool2d(2, 2)
        self.conv2 = nn.Conv2d(6, 6, 3, padding=1)
        self.spare = nn.Conv2d(6, 6, 3)
        self.fc = nn.Linear(6 * 7 * 7, 10)

    def forward(self, x):
        x = self.pool(F.relu(self.conv1(x)))
        x = self.pool(F.relu(self.conv2(F.relu(self.conv2(x)))))
        return self.fc(torch.flatten(x, 1))


def test_reused_modules_counted_once_and_every_pool_call_advances():
    layers, skipped = discover_layers(Reused(), (1, 3, 32, 32))
    assert labels(layers) == [("conv1", 0, 0), ("conv2", 1, 0)]
    assert {s.name: s.reason for s in skipped}["spare"] == "not called in the forward pass"


class Broken(nn.Module):
    def __init__(self):
        super().__init__()
        self.second = nn.Conv2d(4, 4, 3)
        self.pool = nn.MaxPool2d(2)
        self.first = nn.Conv2d(3, 4, 3)

    def forward(self, x):
        raise RuntimeError("this model needs two inputs")


def test_failed_forward_falls_back_to_module_order_with_a_warning():
    with pytest.warns(RuntimeWarning, match="forward pass .* failed .*two inputs"):
        layers, _ = discover_layers(Broken(), (1, 3, 32, 32))
    assert labels(layers) == [("second", 0, 0), ("first", 1, 0)]
    assert not any(layer.traced for layer in layers)


def test_modes_restored_and_input_shape_guess():
    model = build_model("vgg11bn")
    model.train()
    model.classifier.eval()
    layers, _ = discover_layers(model)  # default shape from the first conv
    assert len(layers) == 8
    assert model.training and model.features.training and not model.classifier.training
    assert guess_input_shape(model) == (1, 3, 32, 32)
    assert guess_input_shape(build_model("mlp")) == (1, 3072)
