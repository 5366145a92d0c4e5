"""What the report finds in a folder: the result documents (projections, re-initialization), the files it cannot
use and why, the projection documents of one folder and settings (`ProjectionFolder`), and the curves a training
run tracked (`tracked_curves`). No torch; `discovery` groups and chooses among them."""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence

import pandas as pd

from ..errors import HparrError
from ..layout import MANIFEST_NAME, STUDY_NAME, TRACKING_NAME
from ..results import (
    MANIFEST_FORMAT,
    REPORT_FORMAT,
    epoch_of,
    is_projection_doc,
    is_reinit_doc,
    layer_entries,
    read_manifest,
    read_result_file,
    read_study,
)
from ..trackfile import read_tracking

Found = list[tuple[Path, dict]]


@dataclass(frozen=True)
class UnusableResult:
    """A JSON file of the run that the report cannot use, why, and the snapshot epoch it stands for where
    that is known."""

    path: Path
    reason: str
    epoch: int | None = None


def classify(paths: Iterable[Path], unusable: list[UnusableResult]) -> tuple[Found, Found]:
    """(projection documents, reinit documents) among the JSON files `paths`; the others are added to
    `unusable` with the reason (an earlier report's and a manifest's own files excepted)."""
    found_p, found_r = [], []
    for path in paths:
        doc, reason = read_result_file(path)
        if reason is not None:
            unusable.append(UnusableResult(path, reason))
        elif is_projection_doc(doc):
            found_p.append((path, doc))
        elif is_reinit_doc(doc):
            found_r.append((path, doc))
        elif not (isinstance(doc, dict) and doc.get("format") in (REPORT_FORMAT, MANIFEST_FORMAT)):
            unusable.append(UnusableResult(path, "another format: neither a projection nor a re-initialization "
                                                 "result"))
    return found_p, found_r


def walk(run_dir: Path, exclude: Sequence[Path]) -> tuple[list[Path], list[Path], list[Path]]:
    """(JSON files, folders holding a manifest, study folders) below `run_dir`, skipping hidden and excluded
    folders; the files of a folder with a manifest or a study below `run_dir` are not listed (they are its own)."""
    excluded = {p.resolve() for p in exclude}
    paths, manifests, studies = [], [], []
    for root, dirs, names in os.walk(run_dir):
        here = Path(root)
        if here != run_dir and STUDY_NAME in names and read_study(here) is not None:
            studies.append(here)
            dirs[:] = []
            continue
        if here != run_dir and MANIFEST_NAME in names and read_manifest(here) is not None:
            manifests.append(here)
            dirs[:] = []
            continue
        dirs[:] = sorted(d for d in dirs if not d.startswith(".") and (here / d).resolve() not in excluded)
        paths += [here / name for name in sorted(names) if name.endswith(".json") and not name.startswith(".")]
    return paths, manifests, studies


def manifest_files(manifest: Mapping[str, Any], unusable: list[UnusableResult]) -> tuple[Found, Found]:
    """The documents a manifest names: its projection folder's and its re-initialization result."""
    folder = manifest.get("projections")
    paths = sorted(p for p in Path(folder).glob("*.json") if not p.name.startswith(".")) if folder else []
    found_p, _ = classify(paths, unusable)
    _, found_r = classify([Path(manifest["reinit"])] if manifest.get("reinit") else [], unusable)
    return found_p, found_r


def relative(path: Path, base: Path) -> str:
    try:
        return str(Path(path).resolve().relative_to(base.resolve())) or "."
    except ValueError:
        return str(path)


@dataclass
class ProjectionFolder:
    """The projection documents of one results folder made with the same settings, one per epoch (a folder of
    results: one training run's snapshots analyzed alike)."""

    directory: Path
    settings: dict[str, Any]
    docs: list[dict]
    paths: list[Path]

    @property
    def normalize(self) -> bool | None:
        return self.settings.get("normalize")

    def describe(self, base: Path) -> str:
        where = relative(self.directory, base)
        kind = {True: "normalized", False: "unnormalized (plain sums)"}.get(self.normalize, "normalization unknown")
        epochs = ", ".join(str(epoch_of(d)) for d in self.docs)
        return f"{where}: {kind}, {len(self.docs)} snapshot(s) (epochs {epochs})"


def describe_unusable(item: UnusableResult, base: Path) -> str:
    return (f"{relative(item.path, base)}: {item.reason}"
            + (f" (snapshot of epoch {item.epoch})" if item.epoch is not None else ""))


def missing_text(epochs: Sequence[int]) -> str:
    """The caption's mark of the epochs without a usable result ("" when none)."""
    if not epochs:
        return ""
    return (f"epoch{'s' if len(epochs) > 1 else ''} {', '.join(map(str, epochs))} missing: "
            f"{'their projection results' if len(epochs) > 1 else 'its projection result'} cannot be used")


def tracked_curves(results) -> pd.DataFrame | None:
    """The rows of the training run's `tracking.csv` (`hparr train` tracks every epoch, see hparr.trackfile)
    for the chosen projection run, or None when there is none.

    The file is looked for beside the analyzed snapshots, then below the run directory; it is used when its
    projections are normalized like the projection run's and it tracks layers of the trained model. The file
    used (or why one was not) is stated in `results.notes`.
    """
    if results.projection_folder is None:
        return None
    beside = [Path(str(d["source"])).parent / TRACKING_NAME for d in results.projection_folder.docs if d.get("source")]
    candidates = list(dict.fromkeys(p for p in beside if p.is_file()))
    if not candidates and results.alone:
        for root, dirs, names in os.walk(results.run_dir):
            dirs[:] = sorted(d for d in dirs if not d.startswith("."))
            candidates += [Path(root) / TRACKING_NAME] if TRACKING_NAME in names else []
    names = {e["name"] for e in layer_entries(results.trained_doc)}
    for path in candidates:
        try:
            rows = read_tracking(path)
        except HparrError as exc:
            results.notes.append(f"{exc}; not used")
            continue
        rows = rows[rows["epoch"].notna() & rows["name"].isin(names)]
        if "normalize" in rows and results.normalize is not None and (rows["normalize"] != results.normalize).any():
            results.notes.append(f"{relative(path, results.run_dir)} tracks "
                                 f"{'normalized' if not results.normalize else 'unnormalized'} projections; not used")
            continue
        if len(rows):
            results.notes.append(f"mass and mean across epochs: the lines follow {relative(path, results.run_dir)} "
                                 f"({rows['step'].nunique()} tracked points, up to epoch {rows['epoch'].max():g})")
            return rows.sort_values(["step"], kind="stable")
    return None
