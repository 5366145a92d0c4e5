"""The snapshots a re-initialization reads: the --inits-from list, the alternatives checked against the
trained model, and the data options and normalization the trained snapshot records."""
from __future__ import annotations

import dataclasses
import logging
import os
import zipfile
from pathlib import Path
from typing import Any, Mapping, Sequence

import torch

from .. import checkpoints, layout
from ..data import Data, DataOptions
from ..errors import HparrError, UsageError

log = logging.getLogger("hparr.reinit")


def read_inits_list(spec: str | os.PathLike) -> list[Path]:
    """Snapshot paths from --inits-from: a directory, a snapshot file or glob, or a text file of paths.

    In a text file: one path per line, blank lines ignored; a relative path is looked up from the
    current directory, then beside the list; a missing file is logged as a warning and skipped.
    """
    spec = str(spec)
    path = Path(spec)
    if not spec.strip():
        raise UsageError("--inits-from is empty: give a text file of snapshot paths or a directory of snapshots")
    if path.is_dir() or path.suffix in checkpoints.CHECKPOINT_SUFFIXES or (path.is_file() and zipfile.is_zipfile(path)):
        return checkpoints.find_snapshots(spec)
    if not path.is_file():
        if any(c in spec for c in "*?["):
            return checkpoints.find_snapshots(spec)
        raise UsageError(f"--inits-from {spec}: no such file or directory")
    try:
        lines = path.read_text().splitlines()
    except (OSError, UnicodeDecodeError) as exc:
        raise UsageError(f"--inits-from {spec}: cannot read it as a list of paths ({exc})") from None
    unique: dict[Path, Path] = {}  # resolved -> as listed; a file listed twice is used once
    for line in map(str.strip, lines):
        if not line:
            continue
        name = Path(line).expanduser()
        candidates = [name] if name.is_absolute() else [name, path.parent / name]
        hit = next((c for c in candidates if c.is_file() or (c / checkpoints.SHARD_INDEX).is_file()), None)
        if hit is None:
            log.warning("warning: file not found: %s; skipping it", line)
            continue
        unique.setdefault(hit.resolve(), hit)
    if not unique:
        raise UsageError(f"--inits-from {spec} lists no existing snapshot file")
    return list(unique.values())


def snapshot_training_data(options: DataOptions, meta: Mapping[str, Any], source: str) -> DataOptions:
    """The data options a snapshot of `hparr train` was trained with (its class subset, validation split,
    --train-size subset, corruption and their resolved seeds), read from where --data-path points."""
    recorded = meta.get("data") if isinstance(meta.get("data"), dict) else {}
    fields = recorded.get("options") if isinstance(recorded.get("options"), dict) else None
    if fields is None:
        raise HparrError(f"{source} does not record the data it was trained on: --eval-split train needs a "
                         "snapshot written by `hparr train`")
    known = {f.name for f in dataclasses.fields(DataOptions)}
    out = DataOptions(**{k: v for k, v in fields.items() if k in known and k not in ("data_path", "download")},
                      data_path=options.data_path, download=options.download)
    if out.dataset != options.dataset:
        raise HparrError(f"{source} was trained on {out.dataset}, not --dataset {options.dataset}")
    return out


def snapshot_data_options(options: DataOptions, meta: Mapping[str, Any], source: str) -> DataOptions:
    """The data options of the flags, completed from (and checked against) the data a snapshot of
    `hparr train` records: its class subset, whether its inputs were normalized, and the arguments of a factory
    dataset or the size an image folder's images were resized to."""
    recorded = meta.get("data") if isinstance(meta.get("data"), dict) else {}
    updates: dict[str, Any] = {}
    subset = recorded.get("class_subset")
    if isinstance(subset, dict) and subset.get("k"):
        k, seed = int(subset["k"]), subset.get("seed")
        if options.subsample_classes not in (0, k):
            raise HparrError(f"{source} was trained on {k} classes, "
                             f"not --subsample-classes {options.subsample_classes}")
        if seed is not None and options.class_sample_seed not in (None, seed):
            raise HparrError(f"{source} chose its {k} classes with seed {seed}, not --class-sample-seed "
                             f"{options.class_sample_seed}")
        updates.update(subsample_classes=k, class_sample_seed=seed)
    fields = recorded.get("options") if isinstance(recorded.get("options"), dict) else {}
    for key, flag in (("dataset_args", "--dataset-args"), ("input_size", "--input-size")):
        value = fields.get(key)  # the arguments of a factory, the size of an image folder's images
        if value is not None:
            given = getattr(options, key)
            if given is not None and given != value:
                raise UsageError(f"{source} was trained with {flag} {value}, not {flag} {given}")
            updates[key] = value
    normalized = (checkpoints.recorded_normalization(meta) or {}).get("normalized")
    if normalized is False and not options.unnormalize:
        updates["unnormalize"] = True
    elif normalized is True and options.unnormalize:
        raise HparrError(f"{source} was trained on normalized inputs; drop --unnormalize")
    return dataclasses.replace(options, **updates) if updates else options


def snapshot_normalization(data: Data, meta: Mapping[str, Any], source: str) -> Data:
    """Use the normalization constants the snapshot was trained with, when it records them."""
    norm = checkpoints.recorded_normalization(meta)
    if not isinstance(norm, dict) or "mean" not in norm or "std" not in norm:
        return data
    mean, std = tuple(float(v) for v in norm["mean"]), tuple(float(v) for v in norm["std"])
    if len(mean) != data.in_channels or len(std) != data.in_channels:
        raise HparrError(f"{source} records normalization constants for {len(mean)} channels, "
                         f"the data has {data.in_channels}")
    if (mean, std) != (tuple(data.mean), tuple(data.std)):
        log.warning("using the normalization constants recorded in %s: mean %s std %s", source, mean, std)
    return dataclasses.replace(data, mean=mean, std=std)


def load_alternatives(paths: Sequence[Path], trained: Path, config, reference: Mapping[str, tuple],
                       dataset: str, seed: int | None, prefix: str | None = None, trained_epoch: int | None = None,
                       trained_meta: Mapping[str, Any] | None = None,
                       ) -> tuple[dict[str, Mapping[str, torch.Tensor]], dict[str, str]]:
    """{epoch label: state_dict} and {epoch label: file} of the snapshots to re-initialize from, by epoch.

    Each is checked against the trained model (architecture, shapes, dataset and seed it records, and the
    condition of its run where both it and `trained_meta` record one); the trained snapshot itself is skipped,
    and so is every other snapshot of its epoch `trained_epoch` (the final epoch's .tar beside the final .pt:
    re-initializing from it changes nothing); two snapshots of the same epoch are an error.
    """
    states: dict[str, Mapping[str, torch.Tensor]] = {}
    sources: dict[str, str] = {}
    own = checkpoints.recorded_condition(trained_meta or {})
    for path in paths:
        if path.resolve() == trained.resolve():
            log.info("skipping %s: it is the trained snapshot itself", path)
            continue
        ckpt = checkpoints.read_checkpoint(path)
        obj = ckpt.obj
        epoch = checkpoints.snapshot_epoch(obj, path)
        if trained_epoch is not None and epoch == trained_epoch:
            log.info("skipping %s: a snapshot of epoch %d, the trained snapshot's own", path, epoch)
            continue
        checkpoints.snapshot_config(obj, config, str(path))
        checkpoints.check_metadata(obj, str(path), dataset, seed)
        theirs = checkpoints.recorded_condition(obj)
        for key in ("subsample_classes", "train_size", "noise"):
            if key in own and key in theirs and own[key] != theirs[key]:
                flag = layout.CONDITION_FLAGS[key]
                raise HparrError(f"{path} comes from a run with {flag} {layout.shown_setting(key, theirs[key])}, "
                                 f"the trained snapshot {trained} from {flag} {layout.shown_setting(key, own[key])}")
        state = checkpoints.match_prefix(ckpt.state, reference, prefix, source=str(path))
        checkpoints.check_state(reference, checkpoints.shapes_of(state), str(path))
        label = str(epoch)
        if label in sources:
            raise UsageError(f"{sources[label]} and {path} are both snapshots of epoch {label}")
        states[label], sources[label] = state, str(path.resolve())
    order = sorted(states, key=int)
    return {label: states[label] for label in order}, {label: sources[label] for label in order}


def inits_difference(there: Any, here: list[str]) -> str:
    """How two --inits-from lists differ: the first file of each that the other lacks, or the counts."""
    there = list(there) if isinstance(there, list) else []
    only_there = [p for p in there if p not in here]
    only_here = [p for p in here if p not in there]
    if not only_there and not only_here:
        return "--inits-from: the same files in another order"
    names = [Path(p).name for p in only_there + only_here]
    short = len(set(names)) == len(names)  # file names tell them apart, else their paths do

    def shown(paths: list[str]) -> str:
        return (Path(paths[0]).name if short else paths[0]) + (f" and {len(paths) - 1} more" if len(paths) > 1 else "")

    if only_there and only_here:
        return (f"--inits-from {shown(only_there)} there, {shown(only_here)} here "
                f"({len(there)} file(s) there, {len(here)} here)")
    if only_there:
        return f"--inits-from {shown(only_there)} there, not here ({len(there)} file(s) there, {len(here)} here)"
    return f"--inits-from {shown(only_here)} here, not there ({len(there)} file(s) there, {len(here)} here)"
