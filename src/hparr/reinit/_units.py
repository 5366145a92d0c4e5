"""What one alternative replaces: the layers to re-initialize, grouped into units (a layer, a residual
block, a stage), with the BatchNorm after each layer where asked, and the units' tensors from a state_dict."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Mapping, Sequence

import torch
import torch.nn as nn

from ..defaults import INCLUDE_1X1
from ..errors import HparrError, UsageError
from ..layers import batched_shape, check_model, discover_layers, dummy_forward

# --- layers and their alternative parameters -----------------------------------------------------

def reinit_layers(model: nn.Module, with_linear: bool = False, input_shape: Sequence[int] | None = None,
                  include_1x1: bool = INCLUDE_1X1) -> list[str]:
    """Names of the layers to re-initialize, in forward order: the layers `hparr projections` analyzes (every
    conv, 1x1 ones with `include_1x1`), plus Linear with `with_linear`.

    The original code reset every conv of `features`; Zhang et al. also reset the Linear layers.
    """
    return [info.name for info in discover(model, with_linear, input_shape, include_1x1)[0]]


def discover(model: nn.Module, with_linear: bool, input_shape: Sequence[int] | None,
             include_1x1: bool = INCLUDE_1X1):
    """(layers, skipped) of `discover_layers`, the rule of `hparr projections`; an error when there is none."""
    if input_shape is not None:  # the input it is evaluated on: a model that cannot take it is refused in one line
        check_model(model, batched_shape(model, input_shape), type(model).__name__, analyzed=False)
    infos, skipped = discover_layers(model, input_shape, with_linear=with_linear, include_1x1=include_1x1)
    if not infos:
        raise HparrError(f"{type(model).__name__} has no {'conv or linear' if with_linear else 'conv'} layer "
                         "to re-initialize" + ("" if with_linear else " (try --with-linear)"))
    return infos, skipped


# --- what one alternative replaces ---------------------------------------------------------------

LAYER_TENSORS = ("weight", "bias")
BATCHNORM_TENSORS = ("weight", "bias", "running_mean", "running_var")
GRANULARITIES = ("layer", "block", "stage")


@dataclass(frozen=True)
class Unit:
    """What one alternative re-initializes at once: `members` = ((module name, tensor names), ...),
    e.g. a conv's weight and bias, and with BatchNorm its weight, bias and running statistics."""

    name: str
    members: tuple[tuple[str, tuple[str, ...]], ...]

    @property
    def modules(self) -> list[str]:
        return [m for m, _ in self.members]


def _tensor_names(module: nn.Module, names: Sequence[str]) -> tuple[str, ...]:
    return tuple(n for n in names if isinstance(getattr(module, n, None), torch.Tensor))


def make_units(model: nn.Module, groups: Mapping[str, Sequence[str]],
               batchnorms: Mapping[str, str] | None = None) -> list[Unit]:
    """One Unit per group {unit name: [layer names]}: the layers' weight and bias, plus (with `batchnorms`,
    {layer: its BatchNorm}) the parameters and running statistics of each layer's BatchNorm."""
    units = []
    for name, layers in groups.items():
        members = []
        for layer in layers:
            members.append((layer, _tensor_names(model.get_submodule(layer), LAYER_TENSORS)))
            bn = (batchnorms or {}).get(layer)
            if bn is not None:
                members.append((bn, _tensor_names(model.get_submodule(bn), BATCHNORM_TENSORS)))
        units.append(Unit(str(name), tuple(members)))
    return units


def batchnorms_after(model: nn.Module, layers: Sequence[str],
                     input_shape: Sequence[int] | None = None) -> dict[str, str]:
    """{layer: the BatchNorm module applied directly to its output} (found with one dummy forward pass)."""
    names = {id(m): n for n, m in model.named_modules()}
    wanted = set(layers)
    outputs: dict[int, str] = {}  # id of a layer's output tensor -> layer
    found: dict[str, str] = {}
    keep: list[torch.Tensor] = []  # the tensors whose ids are recorded stay alive during the pass

    def layer_hook(module, args, output):
        if isinstance(output, torch.Tensor):
            outputs[id(output)] = names[id(module)]
            keep.append(output)

    def bn_hook(module, args, output):
        if args and isinstance(args[0], torch.Tensor):
            layer = outputs.get(id(args[0]))
            if layer is not None and layer not in found:
                found[layer] = names[id(module)]

    hooks = [(module, layer_hook) for name, module in model.named_modules() if name in wanted]
    hooks += [(module, bn_hook) for name, module in model.named_modules()
              if name not in wanted and isinstance(module, nn.modules.batchnorm._BatchNorm)]
    dummy_forward(model, batched_shape(model, input_shape), hooks)
    return found


def unit_includes_1x1(granularity: str, include_1x1: bool = INCLUDE_1X1) -> bool:
    """Whether the units of `granularity` hold 1x1 convs: a layer only with `include_1x1` (the rule of
    `hparr projections`), a residual block or a stage always (all its convs, the 1x1 downsample included)."""
    return include_1x1 or granularity != "layer"


def reinit_groups(model: nn.Module, granularity: str = "layer", with_linear: bool = False,
                  input_shape: Sequence[int] | None = None, include_1x1: bool = INCLUDE_1X1) -> dict[str, list[str]]:
    """{unit name: [layer names]} of the layers re-initialized together, in forward order.

    layer: every conv (1x1 ones with `include_1x1`) and Linear alone; block: the layers of one residual block
    (`layer2.1`, its 1x1 downsample included; in a network without residual blocks, and for a layer outside
    them, the layer alone); stage: the layers of one stage (`stage2`), by `hparr.layers` stage labels.
    """
    if granularity not in GRANULARITIES:
        raise UsageError(f"--granularity must be one of {', '.join(GRANULARITIES)}, got {granularity!r}")
    return groups_of(discover(model, with_linear, input_shape, unit_includes_1x1(granularity, include_1x1))[0],
                     granularity)


def unit_tensors(model: nn.Module, state: Mapping[str, torch.Tensor], units: Sequence[Unit],
                 source: str = "snapshot") -> dict[str, tuple[torch.Tensor, ...]]:
    """{unit name: its tensors from `state`, in member order}, laid out like the model's own tensors."""
    out = {}
    for unit in units:
        tensors = []
        for module_name, names in unit.members:
            module = model.get_submodule(module_name)
            for tname in names:
                own = getattr(module, tname)
                key = f"{module_name}.{tname}"
                if key not in state:
                    raise HparrError(f"{source} has no {'parameter' if tname in LAYER_TENSORS else 'buffer'} {key}")
                value = state[key]
                if tuple(value.shape) != tuple(own.shape):
                    raise HparrError(f"{source}: {key} has shape {tuple(value.shape)}, the model {tuple(own.shape)}")
                # Same dtype, device and strides as the model's own tensor, so the layer computes the same
                # way as after a copy into the model.
                tensors.append(torch.empty_like(own, requires_grad=False).copy_(value.detach()))
        out[unit.name] = tuple(tensors)
    return out


def groups_of(infos, granularity: str) -> dict[str, list[str]]:
    """{unit name: [layer names]} from discovered layers (see `reinit_groups`)."""
    groups: dict[str, list[str]] = {}
    for info in infos:
        key = info.name if granularity == "layer" else (info.unit or info.name) if granularity == "block" \
            else f"stage{info.stage}"
        groups.setdefault(key, []).append(info.name)
    return groups


def prepare(model: nn.Module, alternatives: Mapping[str, Any], layers, with_linear, groups=None,
             with_bn: bool = False, input_shape=None):
    """(units, {label: {unit: tensors}}). An alternative is a state_dict or a callable returning one."""
    if groups is None:
        layers = list(layers) if layers is not None else reinit_layers(model, with_linear, input_shape)
        groups = {layer: [layer] for layer in layers}
    batchnorms = batchnorms_after(model, [m for g in groups.values() for m in g], input_shape) if with_bn else None
    units = make_units(model, groups, batchnorms)
    params = {}
    for label, state in alternatives.items():
        state = state() if callable(state) else state
        params[str(label)] = unit_tensors(model, state, units, source=f"alternative {label!r}")
        del state
    if not params:
        raise HparrError("no alternative parameter sets to evaluate")
    return units, params
