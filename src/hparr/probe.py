"""The measured side of "what feeds each layer" (`hparr.inputs` reads it from the graph): the share of negative
values in each layer's input, over forward passes of real images (docs/projections.md, "The input of every
layer")."""
from __future__ import annotations

from typing import Iterable, Mapping

import torch
import torch.nn as nn


def negative_shares(model: nn.Module, modules: Mapping[str, str],
                    batches: torch.Tensor | Iterable[torch.Tensor]) -> dict[str, float]:
    """{layer: the share of the values of its input that are < 0} over the forward passes of `batches` (one
    tensor, or several run one after the other) in eval mode without gradients; `modules`: {layer: the name of
    its module in `model`}. A module called several times counts every call; a layer never called gets NaN. The
    training modes are restored afterwards."""
    counts = {layer: [0, 0] for layer in modules}
    handles = []

    def hook_for(layer):
        def hook(module, args):
            x = args[0] if args else None
            if isinstance(x, torch.Tensor) and x.is_floating_point():
                counts[layer][0] += int((x < 0).sum())
                counts[layer][1] += x.numel()
        return hook

    modes = [(m, m.training) for m in model.modules()]
    try:
        for layer, name in modules.items():
            handles.append(model.get_submodule(name).register_forward_pre_hook(hook_for(layer)))
        model.eval()
        with torch.no_grad():
            for batch in [batches] if isinstance(batches, torch.Tensor) else batches:
                model(batch)
    finally:
        for h in handles:
            h.remove()
        for m, mode in modes:
            m.training = mode
    return {layer: (neg / total if total else float("nan")) for layer, (neg, total) in counts.items()}
