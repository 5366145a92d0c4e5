"""The re-initialization stage: its settings, from snapshot files to a results document, and saving it."""
from __future__ import annotations

import dataclasses
import logging
import os
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence

import torch

from .. import checkpoints, files, layout
from ..data import DataOptions, load_data, make_loader, source_change
from ..defaults import INCLUDE_1X1
from ..errors import HparrError, UsageError
from ..layers import is_1x1
from ..models import build_model, check_arch, check_model_shape
from ..results import REINIT_FORMAT, adopt_earlier, check_eval_split, read_json
from ..training import select_device
from ._onnx_model import ONNX_ARCH, RAND_NOTE, onnx_alternatives, onnx_trained, renamed_document, rerandomizer
from ._processes import choose_processes, parse_eval_processes
from ._shared_prefix import reinit_sweep
from ._sweep import SweepCounts, first_images
from ._units import GRANULARITIES, discover, groups_of, unit_includes_1x1
from .documents import (
    EVAL_SPLIT_TEXT,
    aggregate_rand_trials,
    rand_labels,
    rand_trial_seeds,
    reinit_document,
    unit_fields,
)
from .snapshots import (
    inits_difference,
    load_alternatives,
    read_inits_list,
    snapshot_data_options,
    snapshot_normalization,
    snapshot_training_data,
)

log = logging.getLogger("hparr.reinit")

_SNAPSHOT_STATES = ("model_state_dict", "state_dict", "model", "optimizer_state_dict", "scheduler_state_dict", "rng")


@dataclass
class ReinitSettings:
    """Every option of a re-initialization run (the original reinit_layers.py flags and the new ones).

    `inits_from`: a text file of snapshot paths, a directory or glob of snapshots (as --inits-from), or a
    list of snapshot paths.
    """

    load_from: str
    data: DataOptions
    arch: str | None = None
    inits_from: str | os.PathLike | Sequence[str | os.PathLike] | None = None
    rand: bool = False
    with_linear: bool = False
    include_1x1: bool = INCLUDE_1X1  # also 1x1 convs (at --granularity layer; blocks and stages always hold them)
    seed: int | None = None
    batch_size: int = 128
    cuda: bool = False
    workers: int = 1
    method: str = "auto"
    progress: bool = False
    state_dict_prefix: str | None = None
    granularity: str = "layer"  # "layer", "block" (residual block) or "stage", re-initialized at once
    with_bn: bool = False  # also re-initialize the BatchNorm after each layer
    rand_trials: int = 1  # independent re-randomizations (more than 1 implies rand)
    max_test_images: int = 0  # evaluate on the first N test images only (0: all)
    num_classes: int | None = None  # the model's shape, where the snapshot does not record it (None: the data's)
    in_channels: int | None = None
    input_size: int | None = None
    eval_split: str = "test"  # "test" (the paper's), or "train": the images and labels the model was trained on
    # worker processes sharing the batches (one torch thread each), or "auto": one per core for a small model
    # (`processes.choose_processes`), as `hparr reinit --eval-processes` by default
    eval_processes: int | str = "auto"

    def validate(self) -> None:
        """Raise a UsageError (one line) for a bad option; nothing is read or written."""
        if self.batch_size < 1:
            raise UsageError(f"--batch-size must be >= 1, got {self.batch_size}")
        if self.granularity not in GRANULARITIES:
            raise UsageError(f"--granularity must be one of {', '.join(GRANULARITIES)}, got {self.granularity!r}")
        if self.rand_trials < 1:
            raise UsageError(f"--rand-trials must be >= 1, got {self.rand_trials}")
        if self.max_test_images < 0:
            raise UsageError(f"--max-test-images must be >= 0 (0 = all), got {self.max_test_images}")
        check_model_shape(self.num_classes, self.in_channels, self.input_size)
        if self.method not in ("auto", "shared", "plain"):
            raise UsageError(f"--method must be auto, shared or plain, got {self.method!r}")
        parse_eval_processes(self.eval_processes)
        check_eval_split(self.eval_split)
        if self.inits_from is None and not (self.rand or self.rand_trials > 1):
            raise UsageError("nothing to evaluate: pass --inits-from (snapshots to re-initialize from) and/or --rand")
        self.data.validate()


@dataclass(frozen=True)
class TrainedSnapshot:
    """The trained snapshot that settings name, read once per command (`read_trained`): the file as read, its
    metadata, architecture and data options, the condition of its run, and where its result goes. Every step
    of a command (`result_path`, `adopt_earlier_result`, `reuse_or_recompute`, `run_reinit`) takes it."""

    checkpoint: checkpoints.Checkpoint
    meta: dict[str, Any]
    arch: str
    data: DataOptions
    condition: layout.RunCondition  # of the run the trained snapshot comes from
    relpath: Path  # below a results folder: <the run's condition>/<arch>[/<seed>]/reinit_<stem>[...].json
    earlier_relpath: Path  # where a version that did not name the condition in results folders put it


def read_trained(settings: ReinitSettings, checkpoint: checkpoints.Checkpoint | None = None) -> TrainedSnapshot:
    """Read the trained snapshot of `settings` (--load-from): the one read of it in a command. `checkpoint`: the
    file as read already (by the sweep of another --eval-split), which is not read again."""
    if not settings.load_from:
        raise UsageError("--load-from is required: the trained snapshot to evaluate")
    path = Path(settings.load_from)
    if not path.exists():
        raise UsageError(f"--load-from {path}: no such file or folder")
    ckpt = checkpoints.read_checkpoint(path, checkpoint=checkpoint)
    obj = ckpt.obj if isinstance(ckpt.obj, dict) else {}
    # keep the metadata only (a bare state_dict has none), not a second copy of the weights
    meta = {k: v for k, v in obj.items() if k not in _SNAPSHOT_STATES and not isinstance(v, torch.Tensor)}
    checkpoints.check_metadata(meta, str(path), settings.data.dataset, settings.seed)
    arch = settings.arch or (meta.get("arch") if isinstance(meta.get("arch"), str) else None)
    folder = arch
    if arch is None and ckpt.graph is not None:  # an ONNX model without --arch: its graph, converted to torch
        from ..projections.stage import CHECKPOINT_ONLY  # the folder of its projections, where --dataset is given

        arch, folder = ONNX_ARCH, CHECKPOINT_ONLY
    elif arch is None:
        raise UsageError(f"--arch is required: {path} does not record its architecture")
    else:
        check_arch(arch)
    data = snapshot_data_options(settings.data, meta, str(path))
    if check_eval_split(settings.eval_split) == "train":
        data = snapshot_training_data(data, meta, str(path))
    # the folder of the result: the condition of the run the trained snapshot records, else of the flags
    condition = checkpoints.run_condition([(str(path), meta)], {
        "dataset": data.dataset, "subsample_classes": data.subsample_classes or None,
        "train_size": settings.data.train_size, "noise": settings.data.noise or None, "seed": settings.seed})
    name = layout.result_name(layout.reinit_stem(path, settings.granularity, settings.with_bn, settings.eval_split))
    earlier = layout.earlier_results_directory("", data.dataset, folder, settings.seed, data.subsample_classes)
    return TrainedSnapshot(ckpt, meta, arch, data, condition, condition.results_directory("", folder) / name,
                           earlier / name)


def _init_paths(settings: ReinitSettings) -> list[Path]:
    if settings.inits_from is None:
        return []
    if isinstance(settings.inits_from, (str, os.PathLike)):
        return read_inits_list(settings.inits_from)
    return [Path(p) for p in settings.inits_from]


def reinit_options(settings: ReinitSettings, data: DataOptions, init_paths: Sequence[Path]) -> dict[str, Any]:
    """The options that change the numbers of a re-initialization result (recorded in it as `options`; a
    rerun with others does not reuse it). `data`: the data options as completed from the snapshot."""
    return {"inits_from": [str(Path(p).resolve()) for p in init_paths],
            "rand": bool(settings.rand or settings.rand_trials > 1), "rand_trials": settings.rand_trials,
            "seed": settings.seed, "with_linear": settings.with_linear, "granularity": settings.granularity,
            "include_1x1": unit_includes_1x1(settings.granularity, settings.include_1x1),
            "with_bn": settings.with_bn, "max_test_images": settings.max_test_images or None,
            "state_dict_prefix": settings.state_dict_prefix, "dataset": data.dataset,
            "subsample_classes": data.subsample_classes, "class_sample_seed": data.class_sample_seed,
            "unnormalize": data.unnormalize,
            **({"dataset_args": data.dataset_args} if data.dataset_args is not None else {}),
            **({"data_input_size": data.input_size} if data.input_size is not None else {})}


_OPTION_FLAGS = {"inits_from": "--inits-from", "rand": "--rand", "rand_trials": "--rand-trials", "seed": "--seed",
                 "with_linear": "--with-linear", "granularity": "--granularity", "include_1x1": "--include-1x1",
                 "with_bn": "--with-bn",
                 "max_test_images": "--max-test-images", "state_dict_prefix": "--state-dict-prefix",
                 "dataset": "--dataset", "subsample_classes": "--subsample-classes",
                 "class_sample_seed": "--class-sample-seed", "unnormalize": "--unnormalize",
                 "dataset_args": "--dataset-args", "data_input_size": "--input-size"}


def _shown_option(key: str, value: Any) -> str:
    if isinstance(value, bool):
        return "on" if value else "off"
    return "unset" if value is None else str(value)


def judge_result(settings: ReinitSettings, trained: TrainedSnapshot,
                 path: str | os.PathLike) -> tuple[dict[str, Any] | None, str | None]:
    """Whether the result at `path` can be reused for `settings` (the judge of `results.reuse_or_recompute`):
    (its document, None) when it was computed from the same options and the same checkpoints
    (`checkpoints.identity_change`), else (None, why it must be computed again: its checkpoints changed, or it
    cannot be read). A result computed with other options raises a UsageError: replacing it takes --overwrite."""
    path = Path(path)
    doc = read_json(path)
    if not isinstance(doc, dict) or doc.get("format") != REINIT_FORMAT:
        return None, f"{path.name} is not a readable result"
    current = reinit_options(settings, trained.data, _init_paths(settings))
    recorded = doc.get("options")
    if not isinstance(recorded, dict):
        differ = ["it records no options (an earlier hparr)"]
    else:
        if "include_1x1" not in recorded:  # an earlier hparr re-initialized 1x1 convs too: the same where it had none
            recorded = {**recorded, "include_1x1": _reinitialized_1x1(doc, trained) or current["include_1x1"]}
        differ = [inits_difference(recorded.get(k), v) if k == "inits_from" else
                  f"{_OPTION_FLAGS[k]} {_shown_option(k, recorded.get(k))} there, {_shown_option(k, v)} here"
                  for k, v in current.items() if recorded.get(k) != v]
    if differ:
        raise UsageError(f"{path} was computed with other options ({'; '.join(differ)}); pass --overwrite to "
                         "replace it, or choose another --results folder")
    rows = doc.get("init_from_epoch") if isinstance(doc.get("init_from_epoch"), dict) else {}
    if doc.get("epoch") is not None and str(doc["epoch"]) in rows:
        return None, f"it re-initializes from epoch {doc['epoch']}, the trained snapshot's own (an earlier hparr)"
    inputs = doc.get("inputs") if isinstance(doc.get("inputs"), dict) else {}
    prefix = settings.state_dict_prefix
    checks = [("the trained snapshot", inputs.get("trained"), trained.checkpoint.path)]
    inits = inputs.get("inits") if isinstance(inputs.get("inits"), dict) else {}
    checks += [(f"--inits-from epoch {label}", ident, Path(ident.get("path", "")))
               for label, ident in inits.items() if isinstance(ident, dict)]
    for what, ident, source in checks:  # the trained snapshot's tensors as read already, not read again
        keys = ident.get("keys") if isinstance(ident, dict) else None
        why = checkpoints.identity_change(ident, source, lambda src=source, k=keys: checkpoints.load_state(
            src, prefix=prefix, reference=k, checkpoint=trained.checkpoint))
        if why is not None:
            return None, f"{what}: {why}"
    return doc, None


def _reinitialized_1x1(doc: Mapping[str, Any], trained: TrainedSnapshot) -> bool:
    """Whether a result re-initialized a 1x1 conv of the trained model (its layers, by their weights' shapes)."""
    shapes = checkpoints.shapes_of(trained.checkpoint.state)
    for name in doc.get("layers") or []:
        key = f"{name}.weight"
        found = [shapes[k] for k in ([key] if key in shapes else [k for k in shapes if k.endswith("." + key)])]
        if found and len(found[0].shape) >= 3 and is_1x1(tuple(found[0].shape)[2:]):
            return True
    return False


def result_path(trained: TrainedSnapshot, root: str | os.PathLike) -> Path:
    """The file below the results folder `root` where the result of the trained snapshot `trained` goes (and is
    found by a rerun): `<root>/<the run's condition>/<arch>[/<seed>]/reinit_<snapshot>[...].json`
    (`layout.results_directory`). Nothing is read."""
    return Path(root) / trained.relpath


def adopt_earlier_result(settings: ReinitSettings, trained: TrainedSnapshot, root: str | os.PathLike) -> Path | None:
    """Where the result of `settings` is missing below `root` but a version of hparr that did not name the run's
    condition in results folders wrote it (`layout.earlier_results_directory`), from the same trained snapshot,
    checkpoints and options: copy it to `result_path` (recording the condition) and return the file it came
    from. None otherwise (nothing is written)."""
    target, earlier = Path(root) / trained.relpath, Path(root) / trained.earlier_relpath
    doc = adopt_earlier(target, earlier, lambda path: judge_result(settings, trained, path),
                        trained.condition.as_dict())
    if doc is None:  # none, another run's result, or one computed with other options (left where it is)
        return None
    files.write_json(target, doc)
    return earlier


@dataclass
class ReinitResult:
    """What `run_reinit` produced: the results document, the sweep, and where below a results folder
    the document goes (`relpath`, see `result_path`)."""

    document: dict[str, Any]
    result: SweepCounts
    relpath: Path

    @property
    def stem(self) -> str:
        return self.relpath.stem


def run_reinit(settings: ReinitSettings, trained: TrainedSnapshot | None = None) -> ReinitResult:
    """Load the trained snapshot (`trained`, where the caller read it already), the alternatives and the test
    set; sweep; return the results document."""
    settings.validate()
    if settings.rand_trials > 1 and not settings.rand:
        settings = dataclasses.replace(settings, rand=True)
    init_paths = _init_paths(settings)

    trained = trained if trained is not None else read_trained(settings)
    load_from, meta, arch, seed = trained.checkpoint.path, trained.meta, trained.arch, settings.seed
    state = trained.checkpoint.state
    epoch = checkpoints.snapshot_epoch_or_none(trained.checkpoint.obj, load_from)
    own_seeds = meta.get("seeds") if isinstance(meta.get("seeds"), dict) else {}
    data_options = trained.data
    data = load_data(data_options, splits=(settings.eval_split,))  # the training files only when evaluated on
    recorded = meta.get("data") if isinstance(meta.get("data"), dict) else {}
    why = source_change(recorded.get("source"), data.meta.get("source"))
    if why is not None:  # an image folder or a factory's data: the files the model was trained on, or refused
        raise UsageError(f"{load_from} {why}; pass the --data-path (or --dataset-args) it was trained on")
    data = snapshot_normalization(data, meta, str(load_from))
    info = data.info
    default = checkpoints.ModelConfig(arch, settings.num_classes or data.num_classes,
                                      settings.in_channels or data.in_channels, settings.input_size or data.image_size)
    config = checkpoints.snapshot_config(meta, default, str(load_from))
    if config.num_classes != data.num_classes or config.in_channels != data.in_channels:
        raise HparrError(f"{load_from} is a model of {config.num_classes} classes and {config.in_channels} input "
                         f"channels; the test set has {data.num_classes} and {data.in_channels}")
    device = select_device(settings.cuda)
    onnx = None
    if trained.checkpoint.graph is not None and settings.arch is None:  # an ONNX model, converted to torch
        onnx = onnx_trained(trained.checkpoint.graph, config.in_channels, config.input_size, config.num_classes)
        model = onnx.module
    else:
        model = build_model(arch, config.num_classes, config.in_channels, config.input_size, seed=0)
        state = checkpoints.match_prefix(state, model, settings.state_dict_prefix, source=str(load_from))
        checkpoints.load_weights(model, dict(state), source=str(load_from))
    inputs: dict[str, Any] = {"trained": checkpoints.checkpoint_identity(load_from, state, list(state))}
    del state
    model.to(device)
    reference = {k: tuple(v.shape) for k, v in model.state_dict().items()}

    size = config.input_size
    infos, skipped = discover(model, settings.with_linear, (2, config.in_channels, size, size),
                              unit_includes_1x1(settings.granularity, settings.include_1x1))

    if onnx is not None:
        alternatives, sources, inputs["inits"] = onnx_alternatives(init_paths, load_from, reference)
        draw = rerandomizer(model)
    else:
        alternatives, sources = load_alternatives(init_paths, load_from, config, reference, data_options.dataset,
                                                  seed, settings.state_dict_prefix, trained_epoch=epoch,
                                                  trained_meta=meta)
        inputs["inits"] = {label: checkpoints.checkpoint_identity(sources[label], state, list(reference))
                           for label, state in alternatives.items()}
    # the re-randomization seed derives from --seed, else from the snapshot's own seed, else from 0
    base_seed = seed if seed is not None else own_seeds.get("seed") if isinstance(own_seeds.get("seed"), int) else 0
    rand_seed = None
    trial_seeds = rand_trial_seeds(int(base_seed), settings.rand_trials) if settings.rand else []
    if settings.rand:
        rand_seed = trial_seeds[0]
        for label, trial_seed in zip(rand_labels(settings.rand_trials), trial_seeds):
            # built when the sweep reads it, so that K trials never hold K models at once
            if onnx is not None:
                alternatives[label] = (lambda s=trial_seed: draw(s))
                sources[label] = f"reset_parameters of each layer of {load_from.name}, seed={trial_seed}"
                continue
            alternatives[label] = (lambda s=trial_seed: build_model(arch, config.num_classes, config.in_channels,
                                                                    size, seed=s).state_dict())
            sources[label] = f"build_model({arch!r}, seed={trial_seed})"
    if not alternatives:
        raise UsageError(f"--inits-from {settings.inits_from} holds no snapshot other than the trained one")

    loader = make_loader(data, settings.eval_split, settings.batch_size, train=False, device=device,
                         workers=settings.workers,
                         channels_last=device.type == "cpu" and any(i.kind == "conv" for i in infos))
    batches: Iterable = first_images(loader, settings.max_test_images) if settings.max_test_images else loader
    count = len(loader) if hasattr(loader, "__len__") else None
    if count is not None and settings.max_test_images:
        count = min(count, -(-settings.max_test_images // settings.batch_size))
    sharing = choose_processes(parse_eval_processes(settings.eval_processes), model, device, count)
    if settings.progress:
        from tqdm import tqdm  # start-up time: only with a progress bar

        batches = tqdm(batches, desc="reinit", unit="batch", file=sys.stderr)
    groups = groups_of(infos, settings.granularity)
    log.info("re-initializing %d %s(s) of %s from %s", len(groups), settings.granularity, arch,
             ", ".join(alternatives))
    log.info("evaluating with %d process(es) of %d thread(s) (%s)", sharing["processes"], sharing["threads"],
             sharing["why"])
    result = reinit_sweep(model, alternatives, batches, method=settings.method, groups=groups,
                          with_bn=settings.with_bn, processes=sharing["processes"])
    del alternatives

    by_name = {i.name: i for i in infos}
    firsts = [by_name[members[0]] for members in groups.values()]
    seeds = {"seed": seed, "rand": rand_seed, "rand_derived_from": int(base_seed) if settings.rand else None,
             "class_sample_seed": data_options.class_sample_seed, "model": own_seeds or None}
    if settings.rand_trials > 1:
        seeds["rand_trials"] = trial_seeds
    document = reinit_document(
        result, arch=arch, dataset=data_options.dataset, seed=seed, epoch=epoch,
        load_from=str(load_from.resolve()), init_files=sources, layer_kinds=[i.kind for i in firsts],
        layer_stage_block=[(i.stage, i.block) for i in firsts],
        **unit_fields(result, settings.granularity, settings.with_bn),
        skipped=[{"name": s.name, "kind": s.kind, "reason": s.reason} for s in skipped],
        with_linear=settings.with_linear, include_1x1=unit_includes_1x1(settings.granularity, settings.include_1x1),
        seeds=seeds, subsample_classes=data_options.subsample_classes, condition=trained.condition.as_dict(),
        class_subset=(data.meta or {}).get("class_subset"),
        normalization={"mean": list(data.mean), "std": list(data.std), "normalized": not data_options.unnormalize,
                       "dataset_default": {"mean": list(info.mean), "std": list(info.std)}},
        batch_size=settings.batch_size, device=str(device), max_test_images=settings.max_test_images or None,
        options=reinit_options(settings, data_options, init_paths), inputs=inputs,
        eval_split=settings.eval_split, evaluated_on=EVAL_SPLIT_TEXT[settings.eval_split],
        eval_processes={"requested": settings.eval_processes, **sharing},
        **({"train_data": {k: (data.meta or {}).get(k) for k in ("split", "train_subset", "label_noise",
                                                                 "pixel_shuffle", "sizes")}}
           if settings.eval_split == "train" else {}))
    if settings.rand_trials > 1:
        document = aggregate_rand_trials(document, settings.rand_trials, trial_seeds)
    if onnx is not None:
        document = renamed_document(document, onnx.converted)
        document["onnx"] = onnx.describe
        if settings.rand:
            document["notes"] = [*document.get("notes", []), RAND_NOTE]
    return ReinitResult(document=document, result=result, relpath=trained.relpath)


def save(result: ReinitResult, root: str | os.PathLike) -> list[Path]:
    """Write the results document to `root`/`result.relpath`. Returns the files written (that one). Its heatmap
    is the report's: `report.save_reinit_plots` (`hparr reinit --plots`)."""
    json_path = Path(root) / result.relpath
    files.write_json(json_path, result.document)
    return [json_path]
