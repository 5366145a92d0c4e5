"""Every architecture builds, initializes as the paper says, and runs at each dataset's input shape."""
import pytest
import torch
import torch.nn as nn

from hparr.errors import HparrError, UsageError
from hparr.models import ARCHS, build_model, check_arch, load_pretrained, pretrained_file

# (in_channels, input_size) of digits, MNIST, CIFAR, ImageNet
SHAPES = {"digits": (1, 32), "mnist": (1, 28), "cifar": (3, 32), "imagenet": (3, 224)}


# every architecture at every shape, except the paper's MLP at 224 px (a CIFAR model: its first layer alone would
# be 600M weights); the large models at 224 px are slow
CASES = [pytest.param(arch, name, marks=[pytest.mark.slow] if name == "imagenet" else [], id=f"{arch}-{name}")
         for arch in ARCHS for name in SHAPES if not (arch.startswith("mlp") and name == "imagenet")]


@pytest.mark.parametrize("arch, name", CASES)
def test_every_arch_runs_at_every_dataset_shape(arch, name):
    channels, size = SHAPES[name]
    model = build_model(arch, num_classes=7, in_channels=channels, input_size=size).eval()
    with torch.no_grad():
        out = model(torch.randn(2, channels, size, size))
    assert out.shape == (2, 7), (arch, name)
    first = next(m for m in model.modules() if isinstance(m, (nn.Conv2d, nn.Linear)))
    expected_in = channels if isinstance(first, nn.Conv2d) else channels * size * size
    assert (first.in_channels if isinstance(first, nn.Conv2d) else first.in_features) == expected_in


def test_torchvision_keys_match_original_snapshots():
    keys = set(build_model("vgg11").state_dict())
    assert {"features.0.weight", "features.0.bias", "classifier.6.weight", "classifier.6.bias"} <= keys
    assert {"features.0.weight", "classifier.6.bias"} <= set(build_model("alexnet").state_dict())
    lenet = build_model("lenet", in_channels=1)
    convs = [m for m in lenet.features if isinstance(m, nn.Conv2d)]
    assert [c.out_channels for c in convs] == [6, 6, 16, 16, 64, 64]
    assert all(c.kernel_size == (3, 3) and c.padding == (1, 1) for c in convs)
    assert lenet.classifier[0].in_features == 576 and convs[0].in_channels == 1


def test_seed_determines_init_and_leaves_global_rng_alone():
    before = torch.get_rng_state()
    a, b, c = (build_model("lenet", seed=s).state_dict() for s in (3, 3, 4))
    assert torch.equal(torch.get_rng_state(), before)
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert not torch.equal(a["features.0.weight"], c["features.0.weight"])


def test_init_schemes_are_symmetric_with_the_documented_scale():
    lenet = build_model("lenet", seed=0)
    for m in lenet.modules():
        if isinstance(m, (nn.Conv2d, nn.Linear)):
            fan_in, fan_out = nn.init._calculate_fan_in_and_fan_out(m.weight)
            bound = 2 ** 0.5 * (6 / (fan_in + fan_out)) ** 0.5  # Xavier uniform with ReLU gain
            assert m.weight.abs().max() <= bound and torch.all(m.bias == 0)
    orig = build_model("vgg19_orig", seed=0)
    w = orig.features[0].weight.detach()
    assert abs(float(w.std()) - 0.01) < 0.002 and torch.all(orig.features[0].bias == 0)
    vgg = build_model("vgg11", seed=0)
    w = vgg.features[3].weight.detach()  # 128 filters of 64x3x3, Kaiming normal fan_out
    assert abs(float(w.std()) - (2 / (128 * 9)) ** 0.5) < 0.003
    assert abs(float(w.mean())) < 0.001


def test_other_torchvision_models_are_accepted():
    model = build_model("resnet18", num_classes=5, in_channels=1, input_size=32).eval()
    with torch.no_grad():
        assert model(torch.randn(1, 1, 32, 32)).shape == (1, 5)


def test_unknown_arch_lists_supported_names():
    with pytest.raises(UsageError, match="lenet.*vgg19_orig"):
        check_arch("vgg99")


def test_missing_pretrained_weights_name_the_expected_file(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    expected = pretrained_file("vgg11")
    assert str(expected).startswith(str(tmp_path)) and expected.name.startswith("vgg11")
    with pytest.raises(HparrError, match=rf"not found \(offline\): looked for .*{expected.name}.*--weights FILE"):
        build_model("vgg11", pretrained=True)
    with pytest.raises(UsageError):
        pretrained_file("lenet")


def test_pretrained_weights_load_from_file_except_mismatched_head(tmp_path):
    source = build_model("alexnet", num_classes=1000, input_size=224, seed=1)
    path = tmp_path / "alexnet.pth"
    torch.save(source.state_dict(), path)
    model = build_model("alexnet", num_classes=10, input_size=224, seed=2)
    left = load_pretrained(model, "alexnet", path)
    assert left == ["classifier.6.bias", "classifier.6.weight"]
    assert torch.equal(model.features[0].weight, source.features[0].weight)


def test_timm_and_explicit_torchvision_names():
    a, b = build_model("timm:resnet10t", 7, 1, seed=5), build_model("timm:resnet10t", 7, 1, seed=5)
    assert all(torch.equal(x, y) for x, y in zip(a.state_dict().values(), b.state_dict().values()))
    assert not torch.equal(a.conv1[0].weight, build_model("timm:resnet10t", 7, 1, seed=6).conv1[0].weight)
    with torch.no_grad():
        assert a.eval()(torch.randn(2, 1, 32, 32)).shape == (2, 7)
    tv, plain = build_model("torchvision:resnet18", 5, seed=2), build_model("resnet18", 5, seed=2)
    assert all(torch.equal(x, y) for x, y in zip(tv.state_dict().values(), plain.state_dict().values()))
    with pytest.raises(UsageError, match="unknown timm model 'resnet10'; did you mean resnet10t"):
        check_arch("timm:resnet10")
    with pytest.raises(UsageError, match="unknown torchvision model"):
        check_arch("torchvision:lenet")


def test_pretrained_weights_come_from_the_torch_hub_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    source = build_model("resnet18", 1000, seed=3)
    path = pretrained_file("resnet18")
    path.parent.mkdir(parents=True)
    torch.save(source.state_dict(), path)
    model = build_model("torchvision:resnet18", 1000, seed=4, pretrained=True)
    assert all(torch.equal(x, y) for x, y in zip(model.state_dict().values(), source.state_dict().values()))


def test_timm_pretrained_weights_come_from_the_hugging_face_cache(tmp_path, monkeypatch):
    from huggingface_hub import constants
    from safetensors.torch import save_file

    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path))
    expected = pretrained_file("timm:resnet10t")
    assert expected.name == "model.safetensors" and "models--timm--resnet10t" in str(expected)
    with pytest.raises(HparrError, match=r"not found \(offline\): looked for .*model.safetensors.*--weights FILE"):
        build_model("timm:resnet10t", pretrained=True)
    repo = tmp_path / "models--timm--resnet10t.c3_in1k"
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text("0123abcd")
    (repo / "snapshots" / "0123abcd").mkdir(parents=True)
    source = build_model("timm:resnet10t", 1000, seed=3)
    save_file(source.state_dict(), str(repo / "snapshots" / "0123abcd" / "model.safetensors"))
    model = build_model("timm:resnet10t", 10, 1, seed=4, pretrained=True)
    assert torch.equal(model.layer1[0].conv1.weight, source.layer1[0].conv1.weight)
    assert not torch.equal(model.fc.weight[:1], source.fc.weight[:1])  # another class count: left at init
