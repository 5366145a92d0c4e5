"""Finding and choosing the result files of a run folder, for the report.

`find_runs` finds the runs a folder holds. A folder with the manifest that `hparr reproduce` writes
(`manifest.json`: the projection folder and the re-initialization result it produced) is one run, made of exactly
those files. Otherwise every manifest below it is a run, and every other JSON document below it is recognized by
its `format` field or by the original code's layout and grouped by the training run it describes (the folder of the
snapshots it was computed from, or else its architecture, dataset and seed). `load_run` reads one run: one
projection run and one re-initialization result are chosen among its documents, and every choice is stated in the
notes. A folder of several runs is refused there; `hparr report` draws one report per run instead.
"""
from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence

import pandas as pd

from ..errors import HparrError, UsageError
from ..layout import PROJECTIONS_TABLE, SNAPSHOT_SUFFIXES, epoch_from_filename
from ..results import (
    complete_projection_doc,
    complete_reinit_doc,
    epoch_of,
    projections_table,
    read_manifest,
    seed_of,
    stage_unknown,
)
from ._condition import Condition, condition_of
from ._found import (
    Found,
    ProjectionFolder,
    UnusableResult,
    classify,
    describe_unusable,
    manifest_files,
    relative,
    walk,
)


def _condition(doc: Mapping[str, Any]) -> str | None:
    """The run's condition a document records (class subset, training-set size, corruption), or None."""
    c = doc.get("condition")
    return json.dumps([c.get(k) for k in ("subsample_classes", "train_size", "noise")]) if isinstance(c, dict) else None


@dataclass
class FoundRun:
    """One run of a folder and its result documents: those its manifest names (`manifest` is then the manifest,
    `directory` its folder), or the documents below the folder that describe one training run. `unreadable`:
    the files the report cannot read, named in its report."""

    base: Path  # the folder searched
    name: str  # how the run is named: its folder relative to `base` ("." for `base` itself)
    projections: Found
    reinits: Found
    unreadable: list[UnusableResult] = field(default_factory=list)
    manifest: dict | None = None
    directory: Path | None = None
    alone: bool = False  # the only run of the folder searched (a tracking.csv anywhere below it is its own)

    @property
    def root(self) -> Path:
        """The folder the run's paths are given relative to: its manifest's folder, else the folder searched."""
        return self.directory if self.directory is not None else self.base


@dataclass
class RunsFound:
    """The runs below a folder, and the study folders below it (each has a report of its own)."""

    runs: list[FoundRun]
    studies: list[Path] = field(default_factory=list)

    def names(self) -> list[str]:
        return [r.name for r in self.runs]


def _manifest_run(base: Path, folder: Path, manifest: dict) -> FoundRun:
    unusable: list[UnusableResult] = []
    found_p, found_r = manifest_files(manifest, unusable)
    return FoundRun(base, relative(folder, base), found_p, found_r, unusable, manifest, folder)


def _run_key(doc: Mapping[str, Any], where: str) -> tuple:
    """What identifies the training run a document describes: the folder of the snapshot it was computed from
    (`where`: "source" for projections, "load_from" for re-initialization), else its experiment."""
    value = doc.get(where)
    if isinstance(value, str) and Path(value).is_absolute():
        return ("folder", str(Path(value).parent))
    return ("experiment", *_experiment(doc))


def _group_runs(base: Path, found_p: Found, found_r: Found, unreadable: list[UnusableResult]) -> list[FoundRun]:
    """The documents below a folder, grouped by the training run they describe. A re-initialization result
    joins the run of its trained snapshot's folder, else the one run of its experiment; with none, or several,
    it is a run of its own. Each run is named by the folder of its documents, relative to `base`."""
    groups: dict[tuple, tuple[Found, Found]] = {}
    for path, doc in found_p:
        groups.setdefault(_run_key(doc, "source"), ([], []))[0].append((path, doc))
    for path, doc in found_r:
        key = _run_key(doc, "load_from")
        if key not in groups:
            same = [k for k, (p, _) in groups.items() if p and _same_experiment(p[0][1], doc)]
            key = same[0] if len(same) == 1 else key
        groups.setdefault(key, ([], []))[1].append((path, doc))
    runs = []
    for proj, reinits in groups.values():
        folders = sorted({str(p.parent) for p, _ in proj} or {str(p.parent) for p, _ in reinits})
        where = Path(os.path.commonpath(folders))
        runs.append(FoundRun(base, relative(where, base), proj, reinits, list(unreadable)))
    runs.sort(key=lambda r: r.name)
    names = [r.name for r in runs]
    for i, run in enumerate(runs):  # runs whose results share a folder: numbered
        if names.count(names[i]) > 1:
            run.name = f"{names[i]}#{names[:i].count(names[i]) + 1}"
    return runs


def find_runs(run_dir: str | os.PathLike, exclude: Iterable[str | os.PathLike] = ()) -> RunsFound:
    """The runs of a folder: the one its manifest names; else one per manifest below it, and the other result
    documents below it grouped by training run (`_group_runs`). Study folders below are listed apart, and folders
    in `exclude` are skipped. A UsageError when the folder does not exist, an HparrError when it holds no result
    file."""
    base = Path(run_dir)
    if not base.is_dir():
        raise UsageError(f"run directory {base} does not exist" if not base.exists() else f"{base} is not a directory")
    manifest = read_manifest(base)
    studies: list[Path] = []
    if manifest is not None:
        run = _manifest_run(base, base, manifest)
        found, unreadable = ([run] if run.projections or run.reinits else []), run.unreadable
    else:
        paths, manifests, studies = walk(base, [Path(p) for p in exclude])
        unreadable = []
        found_p, found_r = classify(paths, unreadable)
        found = [r for r in (_manifest_run(base, m, read_manifest(m)) for m in manifests) if r.projections or r.reinits]
        found += _group_runs(base, found_p, found_r, unreadable)
    if not found and not studies:
        raise HparrError(f"no result files under {base}: expected the JSON files of `hparr projections` "
                         "and/or `hparr reinit`" + "".join(f"; {describe_unusable(u, base)}" for u in unreadable))
    if len(found) == 1:
        found[0].alone = True
    return RunsFound(found, studies)


def several_runs_text(base: Path, found: RunsFound) -> str:
    """The one line that names the runs of a folder that holds several."""
    names = found.names()
    return (f"{base} holds {len(names)} runs: {', '.join(names[:8])}{', ...' if len(names) > 8 else ''}; "
            "`hparr report` on the folder writes one report per run, `hparr report --compare` puts them side by side")


def _experiment(doc: Mapping[str, Any]) -> tuple:
    return doc.get("arch"), doc.get("dataset"), seed_of(doc), _condition(doc)


def _same_experiment(a: Mapping[str, Any], b: Mapping[str, Any]) -> bool:
    """Same arch, dataset, seed and condition, where both documents record them (a projection run without
    --seed records "None", while its re-initialization result records the seed the model was trained with)."""
    return all(x is None or y is None or x == y for x, y in zip(_experiment(a), _experiment(b)))


_SETTINGS = ("normalize", "with_linear", "include_1x1", "level", "init_from", "num_classes")


@dataclass
class RunResults:
    """What a run directory holds, as chosen for the report.

    projections: tidy table (one row per snapshot x layer plus "net" rows) of the chosen projection run;
    reinit_doc: the chosen re-initialization document (with its relative drops); trained_epoch: the epoch of
    the model the layer table describes; notes: choices and gaps, in words.
    """

    run_dir: Path
    projection_folder: ProjectionFolder | None
    projections: pd.DataFrame
    reinit_doc: dict | None
    reinit_path: Path | None
    trained_epoch: int | None
    notes: list[str] = field(default_factory=list)
    other_runs: list[str] = field(default_factory=list)
    unusable: list[UnusableResult] = field(default_factory=list)
    missing_epochs: list[int] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)  # usable result files left out, and why
    condition: Condition = field(default_factory=Condition)  # what separates the run from a clean, full-data one
    manifest: dict | None = None  # the manifest of `hparr reproduce` that named the inputs, if any
    name: str = "."  # the run's folder relative to the folder searched
    alone: bool = True  # the only run of its folder (a tracking.csv anywhere below it is its own)

    def projection_doc(self, epoch: int | None) -> dict | None:
        if self.projection_folder is None or epoch is None:
            return None
        return next((d for d in self.projection_folder.docs if epoch_of(d) == epoch), None)

    @property
    def trained_doc(self) -> dict | None:
        return self.projection_doc(self.trained_epoch)

    @property
    def init_doc(self) -> dict | None:
        return self.projection_doc(0)

    @property
    def normalize(self) -> bool | None:
        return self.projection_folder.normalize if self.projection_folder else None

    @property
    def trained_label(self) -> str:
        """How the trained model is named: `epoch 30`, or `best.pt` (position 3 by file name) for a checkpoint
        that records no epoch."""
        doc = self.trained_doc or {}
        if doc.get("epoch_from"):
            return f"{doc.get('stem')}, position {self.trained_epoch} by file name"
        return f"epoch {self.trained_epoch}" if self.trained_epoch is not None else "epoch not recorded"

    @property
    def experiment(self) -> str:
        """`<arch> on <dataset>[, seed <s>]`."""
        doc = self.trained_doc or self.reinit_doc or {}
        seed = seed_of(doc)
        what = doc.get("arch") or (f"checkpoint {doc['stem']}" if doc.get("stem") else "checkpoint")
        return what + (f" on {doc['dataset']}" if doc.get("dataset") else "") + \
            (f", seed {seed}" if seed is not None else "")

    @property
    def title(self) -> str:
        """`<arch> on <dataset>[, seed <s>][ (<condition>)]`, for headings: the condition names what separates
        the run from a clean, full-data one (label noise, pixel shuffle, training-set size, class subset, why
        training stopped, drops measured on the training images); a clean, full-data run has none."""
        return self.experiment + self.condition.suffix()


def _number_unknown_epochs(members: Sequence[tuple[Path, dict]], base: Path, notes: list[str]) -> dict[Path, int]:
    """Positions standing in for the epochs of the documents that record none (checkpoints whose names and
    metadata tell no epoch): in file-name order, after the largest recorded epoch (from 1 when none is
    recorded, so that none of them is taken for the initialization). Says so in `notes`."""
    unknown = sorted((path for path, doc in members if epoch_of(doc) is None), key=lambda p: p.name)
    if not unknown:
        return {}
    start = max((e for e in (epoch_of(d) for _, d in members) if e is not None), default=0) + 1
    numbered = {path: start + i for i, path in enumerate(unknown)}
    recorded = len(members) - len(unknown)
    notes.append(f"{len(unknown)} checkpoint(s) in {relative(unknown[0].parent, base)} record no epoch: ordered by "
                 + ("file name" if not recorded else f"file name after the {recorded} that record one")
                 + f", numbered {start}" + (f"..{start + len(unknown) - 1}" if len(unknown) > 1 else "")
                 + " in place of an epoch (" + ", ".join(f"{p.stem} = {n}" for p, n in list(numbered.items())[:6])
                 + (" ..." if len(unknown) > 6 else "") + ")")
    return numbered


def _projection_folders(found: Sequence[tuple[Path, dict]], base: Path, notes: list[str],
                        preferred: set[str] = frozenset()) -> list[ProjectionFolder]:
    """The projection documents grouped by folder and settings, one ProjectionFolder per group; of two documents
    of one epoch, the one whose snapshot is in `preferred` (the re-initialized models) is kept, else the last by
    file name."""
    groups: dict[tuple, list[tuple[Path, dict]]] = {}
    for path, doc in found:
        key = (str(path.parent.resolve()), *_experiment(doc), *(json.dumps(doc.get(k)) for k in _SETTINGS))
        groups.setdefault(key, []).append((path, doc))
    folders = []
    for key, members in groups.items():
        by_epoch: dict[int, tuple[Path, dict]] = {}
        numbered = _number_unknown_epochs(members, base, notes)
        for path, doc in sorted(members, key=lambda m: (str(m[1].get("source")) in preferred, m[0].name)):
            epoch = epoch_of(doc) if epoch_of(doc) is not None else numbered[path]
            if epoch in by_epoch:
                notes.append(f"{relative(by_epoch[epoch][0], base)} and {relative(path, base)} are both epoch "
                             f"{epoch}; using {path.name}")
            doc = complete_projection_doc(doc)
            if path in numbered:
                doc.update(epoch=str(epoch), epoch_from="file name order")
            by_epoch[epoch] = (path, doc)
        if by_epoch:
            chosen = [by_epoch[e] for e in sorted(by_epoch)]
            first = chosen[0][1]
            folders.append(ProjectionFolder(Path(key[0]), {k: first.get(k) for k in _SETTINGS},
                                            [d for _, d in chosen], [p for p, _ in chosen]))
    return folders


def load_run(run_dir: str | os.PathLike, exclude: Iterable[str | os.PathLike] = (),
             run: FoundRun | None = None) -> RunResults:
    """Find, choose and tabulate the result files of one run: `run` (one of `find_runs(run_dir)`), or the one
    run of `run_dir` (those files its manifest names, else the result files below it; folders in `exclude` are
    skipped). A folder that holds several runs is a UsageError that names them.

    Projection documents are grouped by folder and settings; a normalized folder is preferred, then one of the
    experiment (arch, dataset, seed) of a re-initialization result, then the one with most snapshots.
    The re-initialization result of that experiment whose trained snapshot is one of the run's
    snapshots is preferred, then the latest epoch. Every choice is stated in `notes`.
    """
    if run is None:
        found = find_runs(run_dir, exclude)
        if len(found.runs) != 1:
            raise (UsageError(several_runs_text(Path(run_dir), found)) if found.runs else
                   HparrError(f"no result files under {run_dir}: it holds the study "
                              f"{', '.join(map(str, found.studies))}; report that folder"))
        run = found.runs[0]
    base = run.root
    unreadable, found_p, found_r = list(run.unreadable), run.projections, run.reinits
    notes: list[str] = []
    reinits = [(p, complete_reinit_doc(d)) for p, d in found_r]
    skipped: list[str] = []
    folders = _projection_folders(found_p, base, notes, {str(d["load_from"]) for _, d in reinits if d.get("load_from")})

    def rank(r: ProjectionFolder):
        sources = {str(d.get("source")) for d in r.docs}
        return (r.normalize is True, any(str(d.get("load_from")) in sources for _, d in reinits),
                any(_same_experiment(r.docs[0], d) for _, d in reinits), len(r.docs), str(r.directory))

    folders.sort(key=rank, reverse=True)
    chosen = folders[0] if folders else None
    unusable, missing_epochs = unusable_results(unreadable, folders, chosen)
    other_runs = [r.describe(base) for r in folders[1:] if r.directory != chosen.directory]
    if chosen is not None:
        if any(stage_unknown(d) for d in chosen.docs):
            notes.append("checkpoint only (projections without --arch): every conv weight of the file, in the "
                         "file's order; stage and block unknown")
        if chosen.normalize is not True:
            notes.append(("no normalized projection run found" if chosen.normalize is False else
                          "the projection results do not record whether they are normalized")
                         + ": the figures treat them as plain sums <w, 1>, whose null spread is estimated "
                         "from epoch 0")

    reinit_doc = reinit_path = None
    if reinits:
        sources = {str(d.get("source")) for d in chosen.docs} if chosen else set()
        candidates = [(p, d) for p, d in reinits if chosen is None or str(d.get("load_from")) in sources
                      or _same_experiment(d, chosen.docs[0])]
        if candidates:
            candidates.sort(key=lambda m: (m[1].get("granularity", "layer") == "layer",  # per-layer results first
                                           m[1].get("load_from") is not None and str(m[1]["load_from"]) in sources,
                                           -1 if epoch_of(m[1]) is None else epoch_of(m[1]), str(m[0])))
            reinit_path, reinit_doc = candidates[-1]
            for p, _ in reinits:
                if p != reinit_path:
                    notes.append(f"re-initialization result not used: {relative(p, base)}")
                    skipped.append(f"{relative(p, base)}: another re-initialization result "
                                   f"({relative(reinit_path, base)}) is used")
        else:
            notes.append("no re-initialization result of " + "/".join(map(str, _experiment(chosen.docs[0])[:3]))
                         + f"; ignored {len(reinits)} of other experiments")
            skipped += [f"{relative(p, base)}: a re-initialization result of another experiment" for p, _ in reinits]
    else:
        notes.append("no re-initialization result found: no heatmap, no accuracy drops")
    skipped += [f"{relative(p, base)}: a projection result of another run ({r.describe(base)})"
                for r in folders[1:] if r.directory != chosen.directory for p in r.paths]

    trained_epoch = None
    if chosen is not None:
        epochs = [epoch_of(d) for d in chosen.docs]
        if reinit_doc is not None:
            load_from = reinit_doc.get("load_from")
            by_source = [e for e, d in zip(epochs, chosen.docs) if load_from and d.get("source") == load_from]
            if by_source:
                trained_epoch = by_source[0]
            elif epoch_of(reinit_doc) in epochs:
                trained_epoch = epoch_of(reinit_doc)
            else:
                trained_epoch = max(epochs)
                notes.append(f"no projections of the re-initialized model (epoch {reinit_doc.get('epoch')}); "
                             f"the layer table uses epoch {trained_epoch}")
        else:
            trained_epoch = max(epochs)
        if 0 not in epochs:
            notes.append("no projections at initialization (epoch 0): the distributions show the trained model only")
    elif reinit_doc is not None:
        trained_epoch = epoch_of(reinit_doc)
        notes.append("no projection results found: no bias statistics")

    table = projections_table(chosen.docs) if chosen else pd.DataFrame()
    condition = condition_of(run.manifest, chosen.docs[-1:] if chosen else [], reinit_doc)
    return RunResults(base, chosen, table, reinit_doc, reinit_path, trained_epoch, notes, other_runs, unusable,
                      missing_epochs, skipped, condition, run.manifest, run.name, run.alone)


# --- result files that cannot be used ---------------------------------------------------------------

def _snapshot_epochs(run: ProjectionFolder) -> dict[str, int]:
    """Snapshot stem -> epoch, from the run folder's projections.csv and the snapshots beside the run's
    sources (by the file-name rule: nothing is loaded)."""
    epochs: dict[str, int] = {}
    folders = {Path(str(d.get("source"))).parent for d in run.docs if d.get("source")}
    for folder in sorted(f for f in folders if f.is_dir()):
        for path in folder.iterdir():
            epoch = epoch_from_filename(path)
            if path.suffix in SNAPSHOT_SUFFIXES and not path.name.startswith(".") and epoch is not None:
                epochs.setdefault(path.stem, epoch)
    csv = run.directory / PROJECTIONS_TABLE
    if csv.is_file():
        try:
            listed = pd.read_csv(csv, usecols=["stem", "epoch"]).dropna().drop_duplicates("stem")
            epochs.update({str(k): int(v) for k, v in zip(listed["stem"], listed["epoch"])})
        except (OSError, ValueError):
            pass
    return epochs


def unusable_results(unreadable: Sequence[UnusableResult], runs: Sequence[ProjectionFolder],
                     chosen: ProjectionFolder | None) -> tuple[list[UnusableResult], list[int]]:
    """Every result file that the report cannot use, with the reason, and the epochs missing from the chosen
    projection run because of them.

    `unreadable`: the files that are not JSON, truncated, or of another format. The documents of other
    runs in the chosen run's folder (another experiment, or other settings) are added. An epoch is
    missing when an unusable file of the chosen run's folder stands for a snapshot (found beside the
    run's snapshots or listed in its projections.csv) of which the run has no usable result.
    """
    out = list(unreadable)
    if chosen is None:
        return out, []
    for run in runs:
        if run is chosen or run.directory != chosen.directory:
            continue
        differ = [f"{k} {run.settings.get(k)!r} vs {chosen.settings.get(k)!r}" for k in _SETTINGS
                  if run.settings.get(k) != chosen.settings.get(k)]
        differ += [f"{k} {a!r} vs {b!r}" for k, a, b in zip(("arch", "dataset", "seed"), _experiment(run.docs[0]),
                                                              _experiment(chosen.docs[0])) if a != b]
        out += [UnusableResult(path, f"another run's settings ({', '.join(differ)})", epoch_of(doc))
                for path, doc in zip(run.paths, run.docs)]
    stems: dict[str, int] | None = None
    for i, item in enumerate(out):
        if item.epoch is None and item.path.parent.resolve() == chosen.directory.resolve():
            stems = _snapshot_epochs(chosen) if stems is None else stems
            out[i] = UnusableResult(item.path, item.reason, stems.get(item.path.stem))
    have = {epoch_of(d) for d in chosen.docs}
    missing = sorted({u.epoch for u in out if u.epoch is not None and u.path.parent.resolve()
                      == chosen.directory.resolve()} - have)
    return out, missing
