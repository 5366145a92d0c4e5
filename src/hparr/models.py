"""Architectures: the paper's (lenet, AlexNet, VGG, MLP) and any torchvision classifier.

Every model is built with its own seed inside a forked RNG, so building one never touches
the global torch RNG and the same seed always gives the same initialization.
"""
from __future__ import annotations

import difflib
import importlib
import inspect
import os
import sys
from pathlib import Path

import torch
import torch.nn as nn

from . import inits
from .checkpoints import load_state, shapes_of
from .errors import HparrError, UsageError

TIMM, TORCHVISION = "timm:", "torchvision:"
VGG_ARCHS = ("vgg11", "vgg13", "vgg16", "vgg19", "vgg11bn", "vgg13bn", "vgg16bn", "vgg19bn", "vgg19_orig")
ARCHS = ("lenet", "alexnet", *VGG_ARCHS, "mlp", "mlp_bn")

LENET_CFG = (6, 6, "M", 16, 16, "M", 64, 64, "M")


class LeNet(nn.Module):
    """The paper's lenet: 3x3 convs [6, 6, M, 16, 16, M, 64, 64, M], avgpool 3x3, 3 Linears."""

    def __init__(self, num_classes: int = 10, in_channels: int = 3):
        super().__init__()
        layers: list[nn.Module] = []
        channels = in_channels
        for v in LENET_CFG:
            if v == "M":
                layers.append(nn.MaxPool2d(kernel_size=2, stride=2))
            else:
                layers += [nn.Conv2d(channels, v, kernel_size=3, padding=1), nn.ReLU(inplace=True)]
                channels = v
        self.features = nn.Sequential(*layers)
        self.avgpool = nn.AdaptiveAvgPool2d((3, 3))
        self.classifier = nn.Sequential(
            nn.Linear(64 * 3 * 3, 120), nn.ReLU(inplace=True), nn.Dropout(),
            nn.Linear(120, 84), nn.ReLU(inplace=True), nn.Dropout(),
            nn.Linear(84, num_classes),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.avgpool(self.features(x))
        return self.classifier(torch.flatten(x, 1))


class MLP(nn.Module):
    """The paper's MLP: in->4096, three blocks 4096->1024->4096, then 4096->classes."""

    def __init__(self, num_classes: int = 10, in_features: int = 3072, batchnorm: bool = False):
        super().__init__()
        widths = [in_features, 4096] + [1024, 4096] * 3
        layers: list[nn.Module] = [nn.Flatten(1)]
        for fan_in, fan_out in zip(widths[:-1], widths[1:]):
            layers += [nn.Linear(fan_in, fan_out), nn.Dropout(0.2)]
            if batchnorm:
                layers.append(nn.BatchNorm1d(fan_out))
            layers.append(nn.ReLU(inplace=True))
        self.features = nn.Sequential(*layers)
        self.classifier = nn.Linear(4096, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features(x))


def _init_lenet(model: nn.Module) -> None:
    gain = nn.init.calculate_gain("relu")
    for m in model.modules():
        if isinstance(m, (nn.Conv2d, nn.Linear)):
            nn.init.xavier_uniform_(m.weight, gain=gain)
            nn.init.zeros_(m.bias)


def _init_vgg(model: nn.Module, orig: bool) -> None:
    """torchvision's VGG scheme, or N(0, 0.01^2) everywhere for the original VGG paper."""
    for m in model.modules():
        if isinstance(m, nn.Conv2d):
            if orig:
                nn.init.normal_(m.weight, 0.0, 0.01)
            else:
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, (nn.BatchNorm2d, nn.BatchNorm1d)):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)
        elif isinstance(m, nn.Linear):
            nn.init.normal_(m.weight, 0.0, 0.01)
            nn.init.zeros_(m.bias)


def _init_mlp(model: nn.Module) -> None:
    for m in model.modules():
        if isinstance(m, nn.Linear):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            nn.init.zeros_(m.bias)
        elif isinstance(m, nn.BatchNorm1d):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)


def _replace_first_conv(model: nn.Module, in_channels: int, **overrides) -> None:
    """Swap the first Conv2d for one with `in_channels` inputs (and optional new geometry)."""
    for name, module in model.named_modules():
        if isinstance(module, nn.Conv2d):
            parent = model.get_submodule(name.rpartition(".")[0]) if "." in name else model
            new = nn.Conv2d(
                in_channels, module.out_channels,
                kernel_size=overrides.get("kernel_size", module.kernel_size),
                stride=overrides.get("stride", module.stride),
                padding=overrides.get("padding", module.padding),
                bias=module.bias is not None,
            )
            setattr(parent, name.rpartition(".")[2], new)
            return
    raise HparrError("model has no Conv2d to adapt to the input channels")


def _tvm():
    """torchvision.models, imported on first use: importing it costs about a second, which lenet and the MLPs
    do not need."""
    import torchvision.models  # start-up time: about a second, on first use

    return torchvision.models


def torchvision_name(arch: str) -> str | None:
    """The torchvision model behind an architecture name (`vgg11bn` -> `vgg11_bn`, `vgg19_orig` -> `vgg19`, any
    torchvision name -> itself), or None for the architectures defined here (lenet, mlp, mlp_bn)."""
    if arch in ("lenet", "mlp", "mlp_bn"):
        return None
    if arch == "vgg19_orig":
        return "vgg19"
    return arch.replace("bn", "_bn") if arch in VGG_ARCHS else arch


def is_factory(arch: str) -> bool:
    """`module.path:factory`, a model of the user's own (not `timm:NAME` or `torchvision:NAME`)."""
    return ":" in arch and not arch.startswith((TIMM, TORCHVISION))


def import_factory(arch: str, flag: str = "--arch"):
    """The callable named by `module.path:factory`, imported from the current directory or PYTHONPATH (`flag`: the
    option that names it, in messages)."""
    module_name, _, attr = arch.partition(":")
    if not module_name or not attr:
        raise UsageError(f"{flag} {arch!r}: give your own model as module.path:factory")
    if os.getcwd() not in sys.path and "" not in sys.path:
        sys.path.insert(0, os.getcwd())
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise UsageError(f"{flag} {arch}: cannot import {module_name} ({exc}); it is looked for in the current "
                         "directory and on PYTHONPATH") from None
    factory = module
    for part in attr.split("."):
        factory = getattr(factory, part, None)
        if factory is None:
            raise UsageError(f"{flag} {arch}: {module_name} has no {attr}")
    if not callable(factory):
        raise UsageError(f"{flag} {arch}: {attr} is not callable")
    return factory


def _call_factory(arch: str, num_classes: int, in_channels: int) -> nn.Module:
    """The user's factory called with `num_classes` and `in_channels` where its signature accepts them."""
    factory = import_factory(arch)
    try:
        params = inspect.signature(factory).parameters
    except (TypeError, ValueError):
        params = {}
    anything = any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values())
    kwargs = {k: v for k, v in (("num_classes", num_classes), ("in_channels", in_channels))
              if anything or k in params}
    model = factory(**kwargs)
    if not isinstance(model, nn.Module):
        raise HparrError(f"--arch {arch}: the factory returned a {type(model).__name__}, not a torch.nn.Module")
    return model


def _construct(arch: str, num_classes: int, in_channels: int, input_size: int) -> nn.Module:
    if is_factory(arch):
        return _call_factory(arch, num_classes, in_channels)
    tvm = None if arch in ("lenet", "mlp", "mlp_bn") else _tvm()
    if arch == "lenet":
        model = LeNet(num_classes, in_channels)
        _init_lenet(model)
    elif arch in ("mlp", "mlp_bn"):
        model = MLP(num_classes, in_channels * input_size * input_size, batchnorm=arch == "mlp_bn")
        _init_mlp(model)
    elif arch == "alexnet":
        with torch.device("meta"):  # every parameter is initialized below: skip torchvision's own pass
            model = tvm.alexnet(weights=None, num_classes=num_classes)
            if input_size < 64:
                # torchvision's 11x11 stride-4 stem reduces a 32 px image to nothing before the last pool.
                _replace_first_conv(model, in_channels, kernel_size=5, stride=1, padding=2)
            elif in_channels != 3:
                _replace_first_conv(model, in_channels)
        model.to_empty(device="cpu")
        for m in model.modules():
            if isinstance(m, (nn.Conv2d, nn.Linear)):
                m.reset_parameters()
    elif arch in VGG_ARCHS:
        with torch.device("meta"):
            model = tvm.get_model(torchvision_name(arch), weights=None, num_classes=num_classes)
            if in_channels != 3:
                _replace_first_conv(model, in_channels)
        model.to_empty(device="cpu")
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.reset_running_stats()
            elif isinstance(m, nn.MaxPool2d) and input_size % 32:
                m.ceil_mode = True  # five halvings of 28 px would reach 0; rounding up keeps 1x1 at the end
        _init_vgg(model, orig=arch == "vgg19_orig")
    elif arch.startswith(TIMM):
        model = _timm().create_model(arch[len(TIMM):], pretrained=False, num_classes=num_classes,
                                     in_chans=in_channels)
    else:
        model = tvm.get_model(arch.removeprefix(TORCHVISION), weights=None, num_classes=num_classes)
        if in_channels != 3:
            _replace_first_conv(model, in_channels)
            first = next(m for m in model.modules() if isinstance(m, nn.Conv2d))
            nn.init.kaiming_normal_(first.weight, mode="fan_out", nonlinearity="relu")
    return model


def supported_archs() -> list[str]:
    """The paper's architectures, then every torchvision classification model, then the timm spelling."""
    extra = sorted(set(_tvm().list_models(module=_tvm()))
                   - {torchvision_name(a) for a in ARCHS})
    return list(ARCHS) + extra + ["torchvision:NAME (any torchvision classifier, as torchvision builds it)",
                                  "timm:NAME (any timm model, e.g. timm:resnet10t; needs hparr[timm])",
                                  "module.path:factory (your own model: a function or class of a module in the "
                                  "current directory or on PYTHONPATH, called with num_classes and in_channels "
                                  "when it takes them)"]


def _timm():
    try:
        import timm  # optional extra (hparr[timm])
    except ImportError:
        raise UsageError("timm:NAME needs timm: pip install 'hparr[timm]'") from None
    return timm


def _did_you_mean(name: str, names: list[str]) -> str:
    close = difflib.get_close_matches(name, names, n=3, cutoff=0.6)
    return f"; did you mean {', '.join(close)}?" if close else ""


def check_model_shape(num_classes: int | None, in_channels: int | None, input_size: int | None) -> None:
    """A model's shape where it is given instead of the dataset's (--num-classes, --in-channels, --input-size
    of `hparr projections` and `hparr reinit`): at least 1 each; None is not given."""
    for flag, value in (("--num-classes", num_classes), ("--in-channels", in_channels),
                        ("--input-size", input_size)):
        if value is not None and value < 1:
            raise UsageError(f"{flag} must be >= 1, got {value}")


def check_arch(arch: str) -> str:
    """Return `arch` if it is known, else raise a UsageError that lists the names.

    Known: the paper's architectures, any torchvision classifier by its name or as `torchvision:NAME`,
    and any timm model as `timm:NAME` (optionally with its pretrained tag, `timm:resnet10t.c3_in1k`).
    """
    if is_factory(arch):
        import_factory(arch)
        return arch
    if arch.startswith(TIMM):
        timm = _timm()
        name = arch[len(TIMM):]
        if not name or not timm.is_model(name):
            raise UsageError(f"unknown timm model {name!r}" + _did_you_mean(name, timm.list_models())
                             + " (timm.list_models() lists them)")
        return arch
    if arch in ARCHS:
        return arch
    tv_models = _tvm().list_models(module=_tvm())
    if arch.startswith(TORCHVISION):
        name = arch[len(TORCHVISION):]
        if name not in tv_models:
            raise UsageError(f"unknown torchvision model {name!r}" + _did_you_mean(name, tv_models)
                             + " (torchvision.models.list_models() lists them)")
        return arch
    if arch in tv_models:
        return arch
    raise UsageError(f"unknown architecture {arch!r}; supported: {', '.join(ARCHS)}, "
                     "any torchvision classification model (e.g. resnet18 or torchvision:resnet18), "
                     "timm:NAME for any timm model, or module.path:factory for your own")


def build_model(arch: str, num_classes: int = 10, in_channels: int = 3, input_size: int = 32,
                seed: int = 0, pretrained: bool = False, weights: str | os.PathLike | None = None,
                state_dict_prefix: str | None = None) -> nn.Module:
    """Build `arch` initialized from `seed` (the global RNG is left untouched), with the law that drew each
    layer's weights recorded on its module (`hparr.inits.weight_law`).

    `pretrained` loads torchvision's ImageNet weights from `weights` or the local hub cache;
    layers whose shape differs (class count, input channels) keep their fresh initialization.
    """
    check_arch(arch)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        with inits.recording() as recorder:  # the law of each layer's initial weights, for the bias test's null
            model = _construct(arch, num_classes, in_channels, input_size)
    inits.record_laws(model, recorder)
    if pretrained or weights is not None:
        load_pretrained(model, arch, weights, prefix=state_dict_prefix)
    return model


def _timm_pretrained_file(name: str) -> Path:
    """The cached file of a timm model's default pretrained weights: in the Hugging Face hub cache (or,
    for weights hosted elsewhere, the torch hub cache). When it is absent, the path it would have, with
    `*` for the revision folder."""
    timm = _timm()
    cfg = timm.models.get_pretrained_cfg(name)
    if cfg is None or not (cfg.hf_hub_id or cfg.url or cfg.file):
        raise UsageError(f"--pretrained: timm has no pretrained weights for {name!r}")
    if cfg.file:
        return Path(cfg.file)
    if cfg.hf_hub_id:
        from huggingface_hub import constants, try_to_load_from_cache  # timm's dependency (hparr[timm])

        repo = cfg.hf_hub_id.split("@")[0]
        filenames = [cfg.hf_hub_filename] if cfg.hf_hub_filename else ["model.safetensors", "pytorch_model.bin"]
        for filename in filenames:
            found = try_to_load_from_cache(repo, filename)
            if isinstance(found, str):
                return Path(found)
        return Path(constants.HF_HUB_CACHE) / f"models--{repo.replace('/', '--')}" / "snapshots" / "*" / filenames[0]
    return Path(torch.hub.get_dir()) / "checkpoints" / os.path.basename(cfg.url)


def pretrained_file(arch: str) -> Path:
    """Where the ImageNet weights for `arch` are expected in the local cache: torch hub's for torchvision
    models, Hugging Face hub's for timm models (the path may hold `*` for an unknown revision folder)."""
    if arch.startswith(TIMM):
        return _timm_pretrained_file(arch[len(TIMM):])
    arch = arch.removeprefix(TORCHVISION)
    name = None if is_factory(arch) else torchvision_name(arch)
    if name is None or arch == "vgg19_orig":
        raise UsageError(f"--pretrained: no ImageNet weights exist for {arch!r}")
    url = _tvm().get_model_weights(name).DEFAULT.url
    return Path(torch.hub.get_dir()) / "checkpoints" / os.path.basename(url)


def load_pretrained(model: nn.Module, arch: str, weights: str | os.PathLike | None = None,
                    prefix: str | None = None) -> list[str]:
    """Copy ImageNet weights (any checkpoint format of `checkpoints.load_state`) into `model`; return the
    keys left at their initialization."""
    path = Path(weights) if weights is not None else pretrained_file(arch)
    if not path.exists():
        if weights is not None:
            raise HparrError(f"--weights {path}: no such file or folder")
        cache = "the Hugging Face hub cache, set by HF_HOME" if "models--" in str(path) else \
            "the torch hub cache, set by TORCH_HOME"
        raise HparrError(f"pretrained weights for {arch} not found (offline): looked for {path} ({cache}); "
                         f"copy the file {path.name} there or pass --weights FILE")
    state = load_state(path, prefix=prefix, reference=model)
    own = model.state_dict()
    shapes = shapes_of(state)
    usable = {k: state[k] for k in state if k in own and own[k].shape == shapes[k].shape}
    model.load_state_dict(usable, strict=False)
    return sorted(set(own) - set(usable))
