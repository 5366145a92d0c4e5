"""Re-initializing the layers of an ONNX model: the graph converted to a torch module (`checkpoints.onnx_file`,
with onnx2torch), checked against the data it is evaluated on, the --inits-from ONNX files converted the same
way, and the re-randomization of its layers."""
from __future__ import annotations

import copy
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import torch
import torch.nn as nn

from .. import checkpoints
from ..checkpoints import onnx_file
from ..errors import HparrError, first_line
from ..layers import layer_kind

ONNX_ARCH = "onnx"  # the `arch` a re-initialization document of an ONNX model records
# what the re-randomization of an ONNX model's layer is (the file does not say how the network was initialized)
RAND_NOTE = ("re-randomization of an ONNX model: each converted conv, Linear and BatchNorm layer drawn anew with "
             "torch's default initialization of that layer (reset_parameters), seeded")


@dataclass
class OnnxTrained:
    """A trained ONNX model as a torch module: the module, {ONNX node name: module name} and what the document
    records of the file (`onnx_file.describe`)."""

    module: nn.Module
    converted: Any  # onnx_file.TorchGraph
    describe: dict[str, Any]


def onnx_trained(graph: Any, in_channels: int, image_size: int, num_classes: int) -> OnnxTrained:
    """The ONNX model `graph` (`onnx_file.OnnxModel`) converted to a torch module, after checking that it takes
    images of (in_channels, image_size, image_size), that it runs on a batch of 2 of them, and that it gives
    `num_classes` outputs: each a one-line HparrError."""
    path = graph.path
    shape = onnx_file.graph_input_shape(graph)
    want = (in_channels, image_size, image_size)
    if shape is not None and (len(shape) != 4 or any(d is not None and d != w for d, w in zip(shape[1:], want))):
        raise HparrError(f"{path} takes inputs of shape {tuple(shape)}; the test images are {want}")
    converted = onnx_file.to_torch(graph)
    module = converted.module
    try:
        with torch.no_grad():
            out = module(torch.zeros(2, *want))
    except Exception as exc:  # noqa: BLE001 - a converted graph fails in as many ways as its operators
        raise HparrError(f"{path} does not run on a batch of 2 images of shape {want} once converted to torch "
                         f"({first_line(exc)}); export it with a dynamic batch dimension") from None
    if not isinstance(out, torch.Tensor) or out.dim() != 2 or out.shape[1] != num_classes:
        got = tuple(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__
        raise HparrError(f"{path} gives outputs of shape {got} on a batch of 2; the test set has {num_classes} "
                         "classes (a classifier's logits of shape (batch, classes) are needed)")
    return OnnxTrained(module, converted, onnx_file.describe(graph))


def onnx_alternatives(paths: Sequence[Path], trained: Path, reference: Mapping[str, tuple]
                      ) -> tuple[dict[str, Mapping[str, torch.Tensor]], dict[str, str], dict[str, dict]]:
    """({epoch label: state_dict}, {label: file}, {label: checkpoint identity}) of the ONNX files to
    re-initialize from, each converted to torch and checked against the trained model's module keys and
    shapes (`reference`); the label is the epoch of the file name (`<name>_<epoch>.onnx`). The identity records
    the file's own tensors (its initializers), as the trained file's does."""
    states: dict[str, Mapping[str, torch.Tensor]] = {}
    sources: dict[str, str] = {}
    identities: dict[str, dict] = {}
    for path in paths:
        if path.resolve() == trained.resolve():
            continue
        ckpt = checkpoints.read_checkpoint(path)
        if ckpt.graph is None:
            raise HparrError(f"--inits-from {path} is not an ONNX model, and {trained} is: re-initialize an ONNX "
                             "model from ONNX files of the same graph")
        state = onnx_file.to_torch(ckpt.graph).module.state_dict()
        checkpoints.check_state(reference, state, str(path))
        label = str(checkpoints.epoch_from_filename_or_raise(path))
        if label in sources:
            raise HparrError(f"{sources[label]} and {path} are both snapshots of epoch {label}")
        states[label], sources[label] = state, str(path.resolve())
        identities[label] = checkpoints.checkpoint_identity(path, ckpt.state, list(ckpt.state))
    order = sorted(states, key=int)
    return ({k: states[k] for k in order}, {k: sources[k] for k in order}, {k: identities[k] for k in order})


def rerandomizer(module: nn.Module) -> Callable[[int], dict[str, torch.Tensor]]:
    """seed -> the state_dict of a copy of `module` (as it is now) whose conv, Linear and BatchNorm layers are
    drawn anew by their `reset_parameters` (torch's default initialization; a BatchNorm's running statistics
    reset too) from that seed; the global RNG is left untouched."""
    template = copy.deepcopy(module)

    def draw(seed: int) -> dict[str, torch.Tensor]:
        fresh = copy.deepcopy(template)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            for sub in fresh.modules():
                if (layer_kind(sub) is not None or isinstance(sub, nn.modules.batchnorm._NormBase)) \
                        and hasattr(sub, "reset_parameters"):
                    sub.reset_parameters()
        return fresh.state_dict()

    return draw


def renamed_document(document: dict[str, Any], converted: Any) -> dict[str, Any]:
    """A re-initialization document whose layer names are the ONNX graph's node names (those of the projections
    of the same file) instead of the converted module's."""
    doc = dict(document)
    doc["layers"] = converted.renamed(doc["layers"])
    if isinstance(doc.get("groups"), dict):
        doc["groups"] = {converted.renamed([k])[0]: converted.renamed(v) for k, v in doc["groups"].items()}
    if isinstance(doc.get("skipped"), list):
        doc["skipped"] = [{**s, "name": converted.renamed([s["name"]])[0]} if isinstance(s, dict) else s
                          for s in doc["skipped"]]
    return doc
