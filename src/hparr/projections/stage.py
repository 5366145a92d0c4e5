"""The stage behind `hparr projections`: settings in (`ProjectionSettings`, which validates itself), a result
out (`run_projections`), and `save`, which writes its result files."""
from __future__ import annotations

import logging
import os
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import pandas as pd
import torch
from tqdm import tqdm

from .. import checkpoints, files, layout
from ..checkpoints import ModelConfig, find_snapshots
from ..data import DataOptions, check_subsample_classes, dataset_info, describe, is_builtin
from ..defaults import INCLUDE_1X1, LEVEL, check_level
from ..errors import UsageError
from ..models import build_model, check_arch, check_model_shape, pretrained_file
from ..null import DEFAULT_SCHEME, check_scheme
from ..results import adopt_earlier, projections_table
from ._snapshots import (
    AnalysisOptions,
    SnapshotAnalyzer,
    SnapshotFile,
    collect_results,
    file_order,
    load_init_state,
    log_lines,
    read_snapshot,
    reusable_result,
)

log = logging.getLogger("hparr.projections")

CHECKPOINT_ONLY = "checkpoint"  # the results folder of checkpoint-only projections, in place of the arch
NO_DATASET = "no-dataset"


@dataclass
class ProjectionSettings:
    """Every option of `hparr projections` (the original compute_projections.py flags and the new ones).

    `load_from`: snapshot files, directories or globs, in any checkpoint format of
    `checkpoints.read_checkpoint`; none analyzes the random initialization of `arch` with `seed` (or, with
    `pretrained`, the ImageNet weights; `weights`: their file, which implies `pretrained`).
    `state_dict_prefix` selects the keys under a prefix (found automatically otherwise). `probe_data` (data
    options, `--probe-data`): one batch of the test split of that data is run through each model to measure the
    share of negative values in every layer's input.
    """

    arch: str | None  # None: checkpoint-only (every conv weight of the --load-from files, no model)
    dataset: str | None
    load_from: str | os.PathLike | Sequence[str | os.PathLike] | None = None
    init_from: str | None = None
    seed: int | None = None
    subsample_classes: int = 0
    normalize: bool = False  # the original compute_projections.py's plain sums <w,1>; True: the cosine
    with_linear: bool = False
    include_1x1: bool = INCLUDE_1X1
    level: float = LEVEL
    pretrained: bool = False
    weights: str | None = None
    state_dict_prefix: str | None = None
    device: str | torch.device = "cpu"
    overwrite: bool = False
    strict: bool = False  # refuse a snapshot holding tensors the model does not have (else named and ignored)
    progress: bool = True
    num_classes: int | None = None  # overrides of what the dataset implies (None: the dataset's)
    in_channels: int | None = None
    input_size: int | None = None
    probe_data: Any = None  # hparr.data.DataOptions, or None: no measured input shares
    data_path: str = "./data"  # where an image folder is (its class count, channels and size are read from it)
    dataset_args: str | None = None  # the arguments of a factory dataset (module.path:factory)
    init_scheme: str = DEFAULT_SCHEME  # the initialization assumed for layers whose model does not record one

    def condition(self, snapshots: Sequence[SnapshotFile] = ()) -> layout.RunCondition:
        """The condition of the run that the snapshot files `snapshots` (read by `read_snapshot`) come from: what
        they record (`checkpoints.run_condition`), else the flags (--dataset, --subsample-classes, --seed)."""
        records = [(str(snapshot.path), snapshot.meta) for snapshot in snapshots]
        return checkpoints.run_condition(records, {"dataset": self.dataset,
                                                   "subsample_classes": self.subsample_classes or None,
                                                   "seed": self.seed})

    def relpath(self, condition: layout.RunCondition | None = None) -> Path:
        """The folder of the results below a results folder: the run's condition `condition` (of the flags when
        None) as `layout.results_directory` names it, <dataset>[_<k>][/train_<N>][/noise_<pct>]/<arch>[/<seed>],
        where a checkpoint-only run's arch is "checkpoint" and a run without a dataset's is "no-dataset"."""
        return (condition or self.condition()).results_directory("", self.arch or CHECKPOINT_ONLY, NO_DATASET)

    @property
    def earlier_relpath(self) -> Path:
        """Where versions that did not name the condition in results folders put these results."""
        return layout.earlier_results_directory("", self.dataset or NO_DATASET, self.arch or CHECKPOINT_ONLY,
                                                self.seed, self.subsample_classes)

    def model_config(self) -> ModelConfig:
        """The model's class count, input channels and size: the overrides, else the dataset's."""
        if self.dataset is None:
            missing = [f for f, v in (("--num-classes", self.num_classes), ("--in-channels", self.in_channels),
                                      ("--input-size", self.input_size)) if v is None]
            if self.arch is not None and missing:
                raise UsageError(f"--arch {self.arch} without --dataset needs {', '.join(missing)}")
            return ModelConfig(self.arch, self.num_classes, self.in_channels, self.input_size)  # None: unknown
        if is_builtin(self.dataset):
            info = dataset_info(self.dataset)
        elif None in (self.num_classes, self.in_channels, self.input_size):
            info = describe(self.data_options())
        else:  # every shape given: the data is not read
            return ModelConfig(self.arch, self.num_classes, self.in_channels, self.input_size)
        return ModelConfig(self.arch, self.num_classes or self.subsample_classes or info.num_classes,
                           self.in_channels or info.in_channels, self.input_size or info.image_size)

    def data_options(self) -> DataOptions:
        """The options that name the data of an image folder or a factory (its images resized to --input-size)."""
        folder = self.dataset == "imagefolder"
        return DataOptions(dataset=self.dataset, data_path=self.data_path, dataset_args=self.dataset_args,
                           input_size=self.input_size if folder else None)

    def validate(self) -> None:
        """Every check of the options, before anything is read or written (messages name the flags)."""
        check_model_shape(self.num_classes, self.in_channels, self.input_size)
        if self.arch is None:
            if not self.load_from:
                raise UsageError("--arch is required unless --load-from names the checkpoints to analyze")
            if self.init_from or self.pretrained or self.weights:
                raise UsageError("--init-from, --pretrained and --weights need --arch (a model to match them with)")
        else:
            check_arch(self.arch)
        if self.dataset is not None:
            self.data_options().validate()
            check_subsample_classes(self.dataset, self.subsample_classes)
        elif self.dataset_args is not None:
            raise UsageError("--dataset-args needs --dataset module.path:factory")
        elif self.subsample_classes:
            raise UsageError("--subsample-classes needs --dataset")
        check_level(self.level)
        check_scheme(self.init_scheme)
        if self.load_from and (self.pretrained or self.weights):
            raise UsageError("--pretrained analyzes torchvision's weights; it cannot be combined with --load-from")
        if self.probe_data is not None:
            self.probe_data.validate()

    def options(self) -> AnalysisOptions:
        init_from = str(Path(self.init_from).resolve()) if self.init_from else None
        return AnalysisOptions(normalize=self.normalize, with_linear=self.with_linear,
                               include_1x1=self.include_1x1, level=self.level, init_from=init_from,
                               init_scheme=self.init_scheme)


@dataclass
class ProjectionsResult:
    """The documents of a projections run, by file name (`<snapshot stem>.json`), and which of them this run
    computed (the others were kept from an earlier run with the same options)."""

    relpath: Path
    options: AnalysisOptions
    documents: dict[str, dict[str, Any]]
    computed: list[str]
    replaced: dict[str, str] = field(default_factory=dict)  # name -> why its earlier result was not reused
    # name -> the file an earlier version wrote it to (`ProjectionSettings.earlier_relpath`): kept, and copied
    adopted: dict[str, Path] = field(default_factory=dict)

    @property
    def n_biased(self) -> int:
        return sum(int(d["net"]["n_biased"]) for d in self.documents.values())


def run_projections(settings: ProjectionSettings, root: str | os.PathLike | None = None) -> ProjectionsResult:
    """Analyze the snapshots of `settings`; results already in the results folder `root` made with the same
    options are kept (unless `settings.overwrite`) instead of computed again."""
    s = settings
    s.validate()
    options = s.options()
    config = s.model_config()
    shape = (config.num_classes, config.in_channels, config.input_size)
    pretrained = s.pretrained or s.weights is not None
    if s.load_from:
        paths = find_snapshots(s.load_from)
        stems = [p.stem for p in paths]
        twice = sorted({t for t in stems if stems.count(t) > 1})
        if twice:
            raise UsageError(f"several snapshots are named {', '.join(twice)}: their results would overwrite "
                             "each other; analyze them into different --results folders")
        snapshots = [read_snapshot(p) for p in paths]  # each file is read once: its condition, then its tensors
        jobs: list[tuple[str, SnapshotFile | None]] = [(p.path.stem, p) for p in snapshots]
        condition = s.condition(snapshots)
    else:
        jobs = [(f"{'pretrained' if pretrained else 'init'}_{s.arch}", None)]
        condition = s.condition()
    relpath = s.relpath(condition)
    analyzer = SnapshotAnalyzer(
        config, options,
        context={"arch": s.arch, "dataset": s.dataset, "seed": None if condition.seed is None else str(condition.seed),
                 "condition": condition.as_dict()},
        device=s.device, init_state=load_init_state(options.init_from) if options.init_from else None,
        dataset=s.dataset, seed=s.seed, state_dict_prefix=s.state_dict_prefix, strict=s.strict,
        probe=s.probe_data)

    out_dir = Path(root) / relpath if root is not None else None
    earlier_dir = Path(root) / s.earlier_relpath if root is not None else None
    docs: dict[str, dict[str, Any]] = {}
    computed: list[str] = []
    replaced: dict[str, str] = {}
    adopted: dict[str, Path] = {}
    # what changes the numbers besides the options: the model's configuration, and for a model without a
    # file the seed of its initialization or the pretrained weights (a file's tensors are compared by hash)
    fields: dict[str, Any] = {"arch": s.arch, "num_classes": config.num_classes, "in_channels": config.in_channels,
                              "input_size": config.input_size}
    for stem, path in tqdm(jobs, desc="projections", unit="snapshot", file=sys.stderr,
                           disable=not s.progress or not sys.stderr.isatty()):
        name = layout.result_name(stem)
        doc = why = None
        if not s.overwrite and out_dir is not None:
            wanted = dict(fields)
            if path is None and pretrained:
                wanted["source"] = str(Path(s.weights).resolve()) if s.weights else str(pretrained_file(s.arch))
            elif path is None:
                wanted["init_seed"] = 0 if s.seed is None else s.seed
            if path is not None:  # a snapshot may record its own configuration; its tensors are compared
                wanted = {"arch": s.arch}
                if s.arch is None:  # the layers' order of checkpoint-only projections
                    wanted["file_order"] = file_order(path.format)
            wanted["inputs"] = analyzer.inputs  # how the input kinds were read, and the probe
            doc, why = reusable_result(out_dir / name, options, wanted, checkpoint=path,
                                       init_from=options.init_from, state_dict_prefix=s.state_dict_prefix)
            if why is not None:
                replaced[name] = why
                log.info("recomputing %s: %s", out_dir / name, why)
            elif doc is None and path is not None:
                # written by an earlier version into the folder without the condition: kept where it is the
                # result of this very file (the same tensors), and copied into the condition's folder
                doc = adopt_earlier(out_dir / name, earlier_dir / name,
                                    lambda found, p=path, w=wanted: reusable_result(
                                        found, options, w, checkpoint=p, init_from=options.init_from,
                                        state_dict_prefix=s.state_dict_prefix),
                                    condition.as_dict())
                if doc is not None:
                    adopted[name] = earlier_dir / name
        if doc is None:
            if path is not None:
                doc = analyzer.analyze_file(path)
            elif pretrained:
                model = build_model(s.arch, *shape, pretrained=True, weights=s.weights,
                                    state_dict_prefix=s.state_dict_prefix)
                doc = analyzer.analyze_model(model, stem, -1, str(Path(s.weights).resolve()) if s.weights
                                             else str(pretrained_file(s.arch)))
            else:
                init_seed = 0 if s.seed is None else s.seed
                doc = analyzer.analyze_model(build_model(s.arch, *shape, seed=init_seed), stem, 0,
                                             f"random initialization (seed {init_seed})", init_seed=init_seed)
            computed.append(name)
            for line in log_lines(doc):
                log.debug(line)
        docs[name] = doc
    return ProjectionsResult(relpath, options, docs, computed, replaced, adopted)


def save(result: ProjectionsResult, root: str | os.PathLike, parquet: bool = False,
         log_name: str | None = layout.PROJECTIONS_LOG) -> Path:
    """Write the documents this run computed (and those it kept from an earlier version's folder) to
    `root`/`result.relpath`/<stem>.json (the run's condition, `layout.results_directory`), the tidy table of
    every document in that folder made with the same options (`layout.PROJECTIONS_TABLE`, and `.parquet` with
    `parquet`), and append their summary lines to the log file there. Returns the folder."""
    out_dir = Path(root) / result.relpath
    for name in result.adopted:
        files.write_json(out_dir / name, result.documents[name])
    with files.log_to(out_dir / log_name if log_name else None) as note:
        for name in result.computed:
            files.write_json(out_dir / name, result.documents[name])
            for line in log_lines(result.documents[name]):
                note(line)
    table = table_of(result, root)
    with files.atomic_path(out_dir / layout.PROJECTIONS_TABLE) as tmp:
        table.to_csv(tmp, index=False)
    if parquet:
        with files.atomic_path(out_dir / layout.PROJECTIONS_PARQUET) as tmp:
            table.to_parquet(tmp, index=False)
    return out_dir


def table_of(result: ProjectionsResult, root: str | os.PathLike) -> pd.DataFrame:
    """The tidy table of a run's documents and of the others in its results folder made with the same options."""
    out_dir = Path(root) / result.relpath
    return projections_table(collect_results(out_dir, result.options,
                                             {out_dir / n: d for n, d in result.documents.items()}))
