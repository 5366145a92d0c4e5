"""Many snapshot files into result documents (`hparr.projections._analysis` makes one): `SnapshotAnalyzer`
discovers the layers once per model configuration and reads the weights straight from memory-mapped
state_dicts, so a snapshot costs the reading of its analyzed weights only; a checkpoint read without its model
gives its conv weights in the file's order (`file_layers`), an ONNX file its graph's (`onnx_layers`). A result on
disk is reused when it was computed from the same inputs (`reusable_result`).
"""
from __future__ import annotations

import logging
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping, Sequence

import scipy
import torch
import torch.nn as nn

from .. import checkpoints, null
from ..checkpoints import ModelConfig, check_metadata, check_state, onnx_file, snapshot_config
from ..defaults import INCLUDE_1X1, LEVEL
from ..errors import HparrError, UsageError, first_line
from ..inputs import UNKNOWN_FEED, Feed, fx_feeds, onnx_feeds
from ..layers import LINEAR_SKIPPED, ONE_BY_ONE, LayerInfo, Skipped, discover_layers, is_1x1
from ..models import build_model
from ..probe import negative_shares
from ..provenance import versions
from ..results import PROJECTIONS_FORMAT, RECOMPUTE, document_rows, read_json, reuse_or_recompute
from ._analysis import analyze_layers, input_columns, layer_weight, projection_document

log = logging.getLogger("hparr.projections")


# --- many snapshots ---------------------------------------------------------------------------------

@dataclass(frozen=True)
class AnalysisOptions:
    """What changes the numbers of a result: compared before a result on disk is reused."""

    normalize: bool = True
    with_linear: bool = False
    include_1x1: bool = INCLUDE_1X1
    level: float = LEVEL
    init_from: str | None = None
    init_scheme: str = null.DEFAULT_SCHEME  # the initialization assumed where the model does not record one

    def as_dict(self) -> dict[str, Any]:
        return {"normalize": self.normalize, "with_linear": self.with_linear, "include_1x1": self.include_1x1,
                "level": self.level, "init_from": self.init_from, "init_scheme": self.init_scheme}


@dataclass(frozen=True)
class SnapshotFile:
    """A snapshot file to analyze, read once (`read_snapshot`): what it records besides its tensors (`meta`: the
    condition of its run is read from it), and the file as read (`checkpoint`) where keeping it costs no memory."""

    path: Path
    format: str  # `checkpoints.checkpoint_format`
    meta: Any
    # memory-mapped torch files and safetensors, whose tensors are read when used; None where the read holds the
    # tensors in memory (an ONNX model's graph, a file of torch's legacy format): read again when analyzed
    checkpoint: checkpoints.Checkpoint | None = None


LAZY_FORMATS = ("torch-zip", "safetensors", "sharded-safetensors")  # formats read without their tensors


def read_snapshot(path: str | os.PathLike) -> SnapshotFile:
    """The snapshot file at `path`, read once (`SnapshotFile`)."""
    path = Path(path)
    fmt = checkpoints.checkpoint_format(path)
    if fmt in LAZY_FORMATS:
        ckpt = checkpoints.read_checkpoint(path)
        return SnapshotFile(path, fmt, ckpt.obj, ckpt)
    return SnapshotFile(path, fmt, checkpoints.snapshot_metadata(path))


def reusable_result(path: str | os.PathLike, options: AnalysisOptions, fields: Mapping[str, Any] | None = None,
                    checkpoint: str | os.PathLike | SnapshotFile | None = None,
                    init_from: str | os.PathLike | None = None,
                    state_dict_prefix: str | None = None) -> tuple[dict[str, Any] | None, str | None]:
    """(the result document at `path`, None) when it was computed from the same inputs, else (None, why not):
    None when there is no result there. A result that differs in anything is computed again
    (`results.reuse_or_recompute` with RECOMPUTE).

    The same inputs: the options that change its numbers (`options`, and `fields` such as the class count or
    the seed of a random initialization, as the document records them), and the same `checkpoint` file and
    `init_from` file, with the same tensors (`checkpoints.identity_change`; a `SnapshotFile` read already is
    not read again).
    """
    wanted = {**options.as_dict(), **(fields or {})}
    held = checkpoint.checkpoint if isinstance(checkpoint, SnapshotFile) else None
    if isinstance(checkpoint, SnapshotFile):
        checkpoint = checkpoint.path

    def judge(found: Path) -> tuple[dict[str, Any] | None, str | None]:
        doc = read_json(found)  # unreadable: computed again
        if not isinstance(doc, dict) or doc.get("format") != PROJECTIONS_FORMAT or "net" not in doc:
            return None, f"{found.name} is not a readable result"
        differ = [f"{k} {doc.get(k)!r} there, {v!r} here" for k, v in wanted.items() if doc.get(k) != v]
        if differ:
            raise UsageError(f"computed with other settings ({', '.join(differ)})")
        for key, source in (("checkpoint", checkpoint), ("init_checkpoint", init_from)):
            if source is not None:
                recorded = doc.get(key)
                keys = recorded.get("keys") if isinstance(recorded, dict) else None
                why = checkpoints.identity_change(
                    recorded, source, lambda src=source, k=keys: checkpoints.load_state(
                        src, prefix=state_dict_prefix, reference=k, checkpoint=held))
                if why is not None:
                    return None, ("--init-from: " if key == "init_checkpoint" else "") + why
        return doc, None

    return reuse_or_recompute(path, judge, other_options=RECOMPUTE)


INPUT_KINDS = "hparr-inputs-1"  # how the input kinds of a result were read (`hparr.inputs`)
PROBE_IMAGES = 256  # the test images a probe runs through the model (`--probe-data`)


class SnapshotAnalyzer:
    """Result documents for many snapshots of one architecture.

    The model of each configuration (class count, input channels, size) is built once to discover its
    layers and what feeds each (`hparr.inputs`); a snapshot is then read memory-mapped and only its analyzed
    weights are touched. Without an architecture (`default.arch` None) a checkpoint's conv weights are read
    without a model, and an ONNX file's layers come from its graph. `context` (dataset, seed, ...) is copied
    into every document; snapshots whose metadata names another architecture, `dataset` or `seed` are refused.
    `probe` (data options): one batch of `probe_images` images of that data's test split is run through each
    model to measure the share of negative values in every layer's input (the model is then loaded whole).
    """

    def __init__(self, default: ModelConfig, options: AnalysisOptions, context: Mapping[str, Any] | None = None,
                 device: str | torch.device = "cpu", init_state: Mapping[str, Any] | None = None,
                 dataset: str | None = None, seed: int | None = None, state_dict_prefix: str | None = None,
                 probe: Any = None, probe_images: int = PROBE_IMAGES, strict: bool = False):
        self.default = default
        self.strict = strict  # refuse a snapshot with tensors the model does not have (else named and ignored)
        self.prefix = state_dict_prefix
        self.dataset, self.seed = dataset, seed
        self.options = options
        self.context = dict(context or {})
        self.device = torch.device(device)
        self.init_state = init_state
        self.probe, self.probe_images = probe, int(probe_images)
        self._plans: dict[ModelConfig, tuple[list[LayerInfo], list[Skipped], dict[str, tuple[int, ...]]]] = {}
        self._feeds: dict[ModelConfig, dict[str, Feed]] = {}
        self._models: dict[ModelConfig, nn.Module] = {}
        self._probe_data: dict[Any, Any] = {}

    @property
    def inputs(self) -> dict[str, Any]:
        """What a document records of how its input columns were obtained (compared before a result is reused):
        the way kinds are read, and the probe's data options (None without a probe)."""
        probe = None
        if self.probe is not None:
            o = self.probe
            probe = {"dataset": o.dataset, "split": "test", "images": self.probe_images,
                     "subsample_classes": o.subsample_classes, "class_sample_seed": o.class_sample_seed,
                     "unnormalize": o.unnormalize}
        return {"kinds": INPUT_KINDS, "probe": probe}

    def plan(self, config: ModelConfig, model: nn.Module | None = None):
        """(layers, skipped, reference shapes) of a configuration, built on first use."""
        if config not in self._plans:
            if model is None:
                model = build_model(config.arch, config.num_classes, config.in_channels, config.input_size, seed=0)
            layers, skipped = discover_layers(model, (2, config.in_channels, config.input_size, config.input_size),
                                              with_linear=self.options.with_linear,
                                              include_1x1=self.options.include_1x1)
            reference = {k: tuple(v.shape) for k, v in model.state_dict().items()}
            self._plans[config] = (layers, skipped, reference)
            self._feeds[config] = fx_feeds(model, [layer.name for layer in layers])
            if self.probe is not None:
                self._models[config] = model
        return self._plans[config]

    def _document(self, config: ModelConfig, state: Mapping[str, Any], layers, skipped,
                  checkpoint: Path | None = None, inputs: Mapping[str, Any] | None = None,
                  **fields) -> dict[str, Any]:
        keys = [layer.weight_key for layer in layers]
        weights = {key: state[key] for key in keys}
        identity = {}
        if checkpoint is not None:
            identity = {"source": str(checkpoint.resolve()),
                        "checkpoint": checkpoints.checkpoint_identity(checkpoint, weights, keys)}
        weights = {key: w.to(self.device) for key, w in weights.items()}
        init = None
        if self.init_state is not None:
            init_state = checkpoints.match_prefix(self.init_state, keys, self.prefix, source="--init-from")
            init = {layer.weight_key: layer_weight(init_state, layer, "--init-from") for layer in layers}
            if self.options.init_from:  # the file the initial weights came from (a library caller may give none)
                identity["init_checkpoint"] = checkpoints.checkpoint_identity(self.options.init_from, init, keys)
            init = {key: w.to(self.device) for key, w in init.items()}
        stats_ = analyze_layers(layers, weights, normalize=self.options.normalize, init=init,
                                level=self.options.level, skipped=skipped, inputs=inputs,
                                init_scheme=self.options.init_scheme)
        if config.arch is None:
            stats_.layer_order = FILE_ORDER
        return projection_document(
            stats_, **self.context, **fields, num_classes=config.num_classes, in_channels=config.in_channels,
            input_size=config.input_size, with_linear=self.options.with_linear,
            include_1x1=self.options.include_1x1, init_from=self.options.init_from, **identity,
            inputs=self.inputs, versions={**versions(), "scipy": scipy.__version__})

    def analyze_file(self, path: str | os.PathLike | SnapshotFile) -> dict[str, Any]:
        """The result document of one snapshot file (plain state_dict, original .tar, `hparr train`'s, or an
        ONNX model); a `SnapshotFile` that holds the file as read is not read again."""
        held = path.checkpoint if isinstance(path, SnapshotFile) else None
        path = Path(path.path if isinstance(path, SnapshotFile) else path)
        ckpt = checkpoints.read_checkpoint(path, checkpoint=held)
        obj = ckpt.obj
        check_metadata(obj, str(path), self.dataset, self.seed)
        extra: dict[str, Any] = {}
        fields: dict[str, Any] = {}
        ignored: dict[str, list[str]] = {}
        if ckpt.ignored:
            ignored["not_tensors"] = list(ckpt.ignored)
        run = None  # (model, {layer: module name}, its static input shape or None) where it can run on data
        if self.default.arch is None and ckpt.graph is not None:  # an ONNX model: the layers of its graph
            config = self.default
            layers, skipped, feeds, state = onnx_layers(ckpt.graph, self.options)
            fields["file_order"] = file_order(ckpt.format)
            extra["onnx"] = onnx_file.describe(ckpt.graph)
            if self.probe is not None:
                run = _onnx_module(ckpt.graph, layers)
        elif self.default.arch is None:  # no model: every conv weight of the file, in the network's order if known
            config = self.default
            state = checkpoints.match_prefix(ckpt.state, None, self.prefix, source=str(path))
            order = file_order(ckpt.format)
            layers, skipped = file_layers(state, self.options, str(path), order)
            fields["file_order"] = order
            feeds = {layer.name: UNKNOWN_FEED for layer in layers}
            if self.probe is not None:
                raise HparrError(f"--probe-data: {path} is read without its model (no --arch), so no image can be "
                                 "run through it; give --arch, or an ONNX file")
        else:
            config = snapshot_config(obj, self.default, str(path))
            layers, skipped, reference = self.plan(config)
            state = checkpoints.match_prefix(ckpt.state, reference, self.prefix, source=str(path))
            extra_keys = check_state(reference, checkpoints.shapes_of(state), str(path), extra_ok=not self.strict)
            if extra_keys:
                ignored["not_in_model"] = extra_keys
                log.warning("%s: ignored %d tensor(s) that %s does not have: %s (--strict refuses them)", path,
                            len(extra_keys), config.arch, checkpoints.listed(extra_keys))
            feeds = self._feeds[config]
            if self.probe is not None:
                model = self._models[config]
                model.load_state_dict({k: v for k, v in state.items() if k not in set(extra_keys or ())})
                run = (model, {layer.name: layer.name for layer in layers}, None)
        meta = obj if isinstance(obj, dict) else {}
        extra.update({f"snapshot_{k}": meta[k] for k in ("seeds", "dataset", "top1_acc", "top5_acc") if k in meta})
        normalization = checkpoints.recorded_normalization(meta)
        if normalization is not None:
            extra["snapshot_normalization"] = normalization
        normalized = (normalization or {}).get("normalized")
        shares = None
        if run is not None:
            shares, extra["probe"] = self._measure(*run, meta=meta, source=str(path))
        inputs = input_columns(feeds, None if not isinstance(normalized, bool) else not normalized, shares)
        if ignored:
            fields["ignored_entries"] = ignored
        epoch = checkpoints.snapshot_epoch_or_none(obj, path)
        return self._document(config, state, layers, skipped, checkpoint=path, inputs=inputs, stem=path.stem,
                              epoch=None if epoch is None else str(epoch), checkpoint_format=ckpt.format, **extra,
                              **fields)

    def analyze_model(self, model: nn.Module, stem: str, epoch: int, source: str, **fields) -> dict[str, Any]:
        """The result document of an in-memory model (random initialization, pretrained weights)."""
        config = self.default
        self._plans.pop(config, None)
        layers, skipped, _ = self.plan(config, model)
        shares = None
        if self.probe is not None:
            shares, fields["probe"] = self._measure(model, {layer.name: layer.name for layer in layers}, None,
                                                    meta={}, source=source)
        return self._document(config, model.state_dict(), layers, skipped, stem=stem, source=source,
                              epoch=str(epoch), inputs=input_columns(self._feeds[config], None, shares), **fields)

    def _measure(self, model: nn.Module, modules: Mapping[str, str], shape: Sequence[int | None] | None, *,
                 meta: Mapping[str, Any], source: str) -> tuple[dict[str, float], dict[str, Any]]:
        """The share of negative values in each layer's input over one batch of the probe's test images,
        normalized as the snapshot records (else as the probe's options say), and what was run. `shape`: the
        model's static input shape where it has one (an ONNX graph's; a fixed batch size is run in chunks)."""
        from ..data import load_data, make_loader  # the data only where a probe is asked for
        from ..reinit.snapshots import snapshot_data_options, snapshot_normalization

        options = snapshot_data_options(self.probe, meta, source)
        if options not in self._probe_data:
            self._probe_data[options] = load_data(options, splits=("test",))
        data = snapshot_normalization(self._probe_data[options], meta, source)
        images, _ = next(iter(make_loader(data, "test", self.probe_images, train=False)))
        if shape is not None:
            if len(shape) != images.dim() or \
                    tuple(images.shape[1:]) != tuple(d if d else s for d, s in zip(shape[1:], images.shape[1:])):
                raise HparrError(f"--probe-data: {source} takes inputs of shape {tuple(shape)}, the {options.dataset} "
                                 f"test images are {tuple(images.shape[1:])}")
        batches = images.split(shape[0]) if shape is not None and shape[0] else [images]
        ref = next(iter(model.parameters()), None)
        device = ref.device if ref is not None else torch.device("cpu")
        try:
            shares = negative_shares(model, modules, [b.to(device) for b in batches])
        except RuntimeError as exc:
            raise HparrError(f"--probe-data: running {options.dataset} test images through {source} failed: "
                             f"{first_line(exc)}") from None
        record = {**self.inputs["probe"], "images": int(images.shape[0]), "normalized": not options.unnormalize,
                  "mean": [float(v) for v in data.mean], "std": [float(v) for v in data.std]}
        return shares, record


def onnx_layers(graph: Any, options: AnalysisOptions):
    """(layers, skipped, feeds, weights) of an ONNX model (`checkpoints.onnx_file.OnnxModel`) read without
    converting it: its Conv nodes (and with `with_linear` its Gemm/MatMul nodes) whose weight is a constant, in
    the graph's topological order, named by their nodes; what feeds each (`hparr.inputs.onnx_feeds`); and the
    analyzed weights, read lazily from the initializers. Stage and block are unknown (stage 0, numbered in
    order), as for a checkpoint read without its model."""
    found, skipped = onnx_file.graph_layers(graph, options.with_linear, options.include_1x1)
    onnx_file.check_no_conv(graph, found, options.with_linear)
    layers = [LayerInfo(g.node.name, None, g.kind, 0, i, i, g.weight, g.shape, traced=False, unit=g.node.name)
              for i, g in enumerate(found)]
    return layers, skipped, onnx_feeds(graph, found), onnx_file.layer_weights(graph, found)


def _onnx_module(graph: Any, layers: Sequence[LayerInfo]):
    """An ONNX model converted to a torch module, {layer: its module}, and the graph's static input shape."""
    converted = onnx_file.to_torch(graph)
    return (converted.module, {layer.name: converted.modules[layer.name] for layer in layers},
            onnx_file.graph_input_shape(graph))


FILE_ORDER = "file"  # the layer order of checkpoint-only projections: stage and block unknown
# how checkpoint-only projections order the layers (the document's `file_order`): the order the file keeps, a
# state_dict's own (the order the network registered its modules in), or where the format keeps none
# (safetensors sorts its keys) a natural sort of the names (`features.2` before `features.10`)
INSERTION_ORDER, NATURAL_ORDER = "insertion", "natural"


def file_order(checkpoint_format: str) -> str:
    """The layer order of checkpoint-only projections of a file of this format (see INSERTION_ORDER)."""
    return INSERTION_ORDER if checkpoint_format in checkpoints.ORDERED_FORMATS else NATURAL_ORDER


def natural_key(name: str) -> tuple:
    """Sort key of a natural sort: the runs of digits compare as numbers (`features.2` before `features.10`)."""
    return tuple((0, int(part), "") if part.isdigit() else (1, 0, part) for part in re.split(r"(\d+)", name) if part)


def file_layers(state: Mapping[str, Any], options: AnalysisOptions, source: str,
                order: str = INSERTION_ORDER) -> tuple[list[LayerInfo], list[Skipped]]:
    """The layers of a checkpoint read without its model: every convolution weight (a `*weight` tensor of
    3 to 5 dimensions; 1x1 ones with `include_1x1`) and with `with_linear` every 2-d `*weight`, in the file's
    order (`order` INSERTION_ORDER) or in the natural order of their names (NATURAL_ORDER). Stage and block are
    unknown: every layer is put in stage 0, numbered in that order, and the document's `layer_order` says
    "file"."""
    shapes = checkpoints.shapes_of(state)
    layers: list[LayerInfo] = []
    skipped: list[Skipped] = []
    keys = list(state) if order == INSERTION_ORDER else sorted(state, key=natural_key)
    for key in keys:
        if not key.endswith("weight"):
            continue
        shape = tuple(shapes[key].shape)
        name = key[:-len(".weight")] if key.endswith(".weight") else key
        if 3 <= len(shape) <= 5:
            if is_1x1(shape[2:]) and not options.include_1x1:
                skipped.append(Skipped(name, "conv", ONE_BY_ONE))
                continue
            kind = "conv"
        elif len(shape) == 2:
            if not options.with_linear:
                skipped.append(Skipped(name, "linear", LINEAR_SKIPPED))
                continue
            kind = "linear"
        else:
            continue
        layers.append(LayerInfo(name, None, kind, 0, len(layers), len(layers), key, shape, traced=False, unit=name))
    if not layers:
        raise HparrError(f"{source} holds no convolution weight (a *weight tensor of 3 to 5 dimensions)"
                         + ("" if options.with_linear else "; try --with-linear"))
    return layers, skipped


def collect_results(directory: str | os.PathLike, options: AnalysisOptions,
                    known: Mapping[Path, Mapping[str, Any]] | None = None) -> list[Mapping[str, Any]]:
    """`known` documents plus every other result document in `directory` made with `options`."""
    known = dict(known or {})
    docs = list(known.values())
    seen = {Path(p).resolve() for p in known}
    for path in sorted(Path(directory).glob("*.json")):
        if path.name.startswith(".") or path.resolve() in seen:
            continue
        doc = read_json(path)
        if isinstance(doc, dict) and doc.get("format") == PROJECTIONS_FORMAT and \
                all(doc.get(k) == v for k, v in options.as_dict().items()):
            docs.append(doc)
    return docs


def log_lines(doc: Mapping[str, Any]) -> list[str]:
    """Human-readable lines of one result document, for the log file."""
    head = f"{doc.get('stem')} (epoch {doc.get('epoch')})"
    lines = []
    for row in document_rows(doc):
        where = "net" if row["kind"] == "net" else row["name"] if row["stage"] is None else \
            f"stage {row['stage']} block {row['block']} {row['name']}"
        # a layer's p-value is Holm-adjusted over the network's layers; the net row's is the Bonferroni minimum
        label, p = ("p", row.get("p_value")) if row["kind"] == "net" or "p_adjusted" not in row else \
            ("p (Holm-adjusted)", row["p_adjusted"])
        lines.append(f"{head} {where}: mean {row['mean']:.6g} mass {row['mass']:.4f} N {row['N']} "
                     f"{label} {p if p is None else format(p, '.3g')}{' BIASED' if row['biased'] else ''}")
    return lines


def load_init_state(path: str | os.PathLike) -> Mapping[str, torch.Tensor]:
    """The weights of an initialization snapshot (`--init-from`, any checkpoint format), memory-mapped."""
    return checkpoints.read_checkpoint(path).state
