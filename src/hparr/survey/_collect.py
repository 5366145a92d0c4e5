"""The networks of a survey and their layers: hparr runs and studies (their result files), checkpoints and ONNX
files (analyzed here by `hparr.projections`, without saving), and the published networks of a networks file.

Every layer gets the sign of its input (`input_sign`): "nonneg" where its input is non-negative, "signed" where
it takes both signs, "unknown" where neither the result nor the networks file tells. The columns that say what
feeds a layer (`input_kind`, `input_nonneg`, `input_neg_share`) are those of `hparr.inputs`; the survey reads
them and decides nothing about kinds itself. A checkpoint read without its model has no graph: there a
networks file may declare the kind of each layer's input (from the published code, cited in the file), and the
survey says so (`sign_from` "declared").
"""
from __future__ import annotations

import hashlib
import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence

import pandas as pd

from .. import results
from ..errors import HparrError, UsageError
from ..layout import CELLS_DIR, MANIFEST_NAME, STUDY_NAME
from ..null import BETA

NETWORKS_FORMAT = "hparr-survey-networks-1"
ONNX_SUFFIX = ".onnx"
FILE_SUFFIXES = (".pt", ".pth", ".tar", ".ckpt", ".safetensors", ".bin", ONNX_SUFFIX)
IMAGE = "image"  # the input kind of a layer fed by the network's input (hparr.inputs)


@dataclass
class Network:
    """One network of the survey.

    name: its label (unique in a survey); source: the file or folder read; format: "run" (an hparr run or study
    cell), "checkpoint" or "onnx"; layers: its per-layer rows of `hparr.projections` (one snapshot: a run's
    trained one), in layer order; image_nonneg: whether its input pixels are non-negative (None: unknown);
    init: what is known of its initialization (a scheme, "recorded" for an hparr run, "unknown"); declared:
    {layer: input kind} from a networks file, for layers whose result has no kind; context: arch, dataset,
    seed, normalization and the package it came from, where known; notes: anything the reader must know;
    null_assumed and init_scheme: the layers whose bias test assumed an initialization (`init_scheme`), as the
    result records them.
    """

    name: str
    source: str
    format: str
    layers: pd.DataFrame
    image_nonneg: bool | None = None
    init: str = "unknown"
    declared: dict[str, Any] = field(default_factory=dict)
    context: dict[str, Any] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    null_assumed: set[str] | None = None  # the layers whose null was assumed (None: the result does not say)
    init_scheme: str | None = None  # the initialization assumed for them


@dataclass(frozen=True)
class SurveyOptions:
    """What changes the layers analyzed in checkpoints and ONNX files (as `hparr projections` takes them)."""

    include_1x1: bool = False
    with_linear: bool = False
    level: float = 0.05
    init_scheme: str | None = None  # assumed where a file does not say how its layers were drawn (None: the default)


# --- input signs ---------------------------------------------------------------------------------------

def _present(value: Any) -> bool:
    if value is None:
        return False
    try:
        return not math.isnan(value)
    except TypeError:
        return not (isinstance(value, str) and not value)


def kind_nonneg(kind: str) -> bool | None:
    """Whether inputs of an `hparr.inputs` kind are non-negative (None: it depends on the network, or the kind is
    not one of them)."""
    from .. import inputs  # the kinds and their signs have one home

    found = inputs.BY_NAME.get(str(kind))
    return None if found is None else found.nonneg


def input_sign(row: Mapping[str, Any], image_nonneg: bool | None,
               declared: Any = None) -> tuple[str, str, str]:
    """(sign, kind, sign_from) of one layer's input.

    In this order: the measured share of negative values in its input (`input_neg_share`: non-negative when it
    is 0); whether its kind is non-negative as the result records it from the graph (`input_nonneg`); for the
    image, whether the network's pixels are non-negative (`image_nonneg`); a kind declared in the networks file
    (`declared`: a kind, or {"kind": ..., "nonneg": ...} for a kind whose sign depends on its branches).
    """
    kind = row.get("input_kind")
    kind = str(kind) if _present(kind) else None
    share = row.get("input_neg_share")
    if _present(share):
        return ("nonneg" if float(share) == 0 else "signed"), kind or "unknown", "measured"
    nonneg = row.get("input_nonneg")
    if _present(nonneg):
        return ("nonneg" if bool(nonneg) else "signed"), kind or "unknown", "graph"
    if kind in (None, "unknown") and declared is not None:
        entry = declared if isinstance(declared, Mapping) else {"kind": declared}
        kind = str(entry["kind"])
        if kind != IMAGE:
            value = entry["nonneg"] if "nonneg" in entry else kind_nonneg(kind)
            if value is None:
                return "unknown", kind, "none"
            return ("nonneg" if value else "signed"), kind, "declared"
    if kind == IMAGE and image_nonneg is not None:
        return ("nonneg" if image_nonneg else "signed"), kind, "image"
    return "unknown", kind or "unknown", "none"


# --- reading networks --------------------------------------------------------------------------------

def _assumed(doc: Mapping[str, Any] | None) -> tuple[set[str] | None, str | None]:
    """(the layers whose null was assumed, the scheme assumed) as a projection document records them."""
    doc = doc or {}
    names = doc.get("null_assumed")
    return (None if not isinstance(names, list) else {str(n) for n in names}), doc.get("init_scheme")


def _run_context(manifest: Mapping[str, Any] | None) -> tuple[dict[str, Any], bool | None]:
    settings = (manifest or {}).get("settings") or {}
    data = settings.get("data") or {}
    context = {"arch": settings.get("arch"), "dataset": data.get("dataset"), "seed": settings.get("seed"),
               "noise": data.get("noise"), "train_size": data.get("train_size")}
    unnormalize = data.get("unnormalize")
    image_nonneg = None if unnormalize is None else bool(unnormalize)
    if image_nonneg is not None:
        context["normalized"] = not image_nonneg
    return context, image_nonneg


def run_network(run_dir: str | os.PathLike, name: str | None = None) -> Network:
    """The trained snapshot of an hparr run (a `hparr reproduce` folder, a study cell, or a folder of
    `hparr projections` results), read from its result files."""
    from ..report.discovery import load_run  # torch-free: the report's reading of a run

    run_dir = Path(run_dir)
    run = load_run(run_dir)
    table = run.projections
    if table is None or table.empty or run.trained_epoch is None:
        raise HparrError(f"{run_dir} holds no projection results of a trained snapshot (run hparr projections "
                         "on its snapshots)")
    layers = table[(table["kind"] != "net") & (pd.to_numeric(table["epoch"]) == run.trained_epoch)]
    if "stem" in layers.columns and layers["stem"].nunique() > 1:  # several files of that epoch: the first
        layers = layers[layers["stem"] == layers["stem"].iloc[0]]
    notes, reanalyzed = [], []
    if predates_inputs_or_nulls(run.trained_doc):
        reanalyzed = _reanalyzed(run.trained_doc or {}, run_dir)
        layers = reanalyzed[1]
        notes.append(f"{run_dir}: its result files record no input kinds or nulls (written before they were); "
                     "its trained snapshot was analyzed again")
    context, image_nonneg = _run_context(results.read_manifest(run_dir))
    if image_nonneg is None:  # a folder of results without a manifest: what the snapshot recorded
        doc = run.trained_doc or {}
        record = doc.get("snapshot_normalization")
        if isinstance(record, Mapping) and record.get("normalized") is not None:
            image_nonneg = not bool(record["normalized"])
    context["epoch"] = int(run.trained_epoch)
    assumed, scheme = _assumed(reanalyzed[0] if reanalyzed else run.trained_doc)
    return Network(name or str(run_dir), str(run_dir), "run", layers.reset_index(drop=True),
                   image_nonneg=image_nonneg, init="recorded", context=context, notes=notes, null_assumed=assumed,
                   init_scheme=scheme)


def predates_inputs_or_nulls(doc: Mapping[str, Any] | None) -> bool:
    """Whether a projection document was written before hparr recorded what feeds each layer (`input_kind`) and
    the null of each layer's test (the document's `init_scheme`)."""
    doc = doc or {}
    return "init_scheme" not in doc or not any("input_kind" in e for e in results.layer_entries(doc))


def _reanalyzed(doc: Mapping[str, Any], run_dir: Path) -> tuple[dict[str, Any], pd.DataFrame]:
    """(the result document, its layer rows) of a run's trained snapshot (the `source` its result document
    names), computed again by `hparr.projections` with the options the document records."""
    from .. import projections  # torch: only where a snapshot is analyzed

    source = doc.get("source")
    if not source or not Path(source).is_file() or not doc.get("arch"):
        raise HparrError(f"{run_dir}: its result files record no input kinds and its trained snapshot "
                         f"({source or 'not named'}) cannot be read again; run hparr projections on it")
    settings = projections.ProjectionSettings(
        arch=doc["arch"], dataset=doc.get("dataset"), load_from=[source], normalize=bool(doc.get("normalize", True)),
        with_linear=bool(doc.get("with_linear")), include_1x1=bool(doc.get("include_1x1")),
        level=float(doc.get("level") or 0.05), progress=False,
        seed=None if results.seed_of(doc) is None else int(results.seed_of(doc)),
        num_classes=doc.get("num_classes"), in_channels=doc.get("in_channels"), input_size=doc.get("input_size"))
    docs = list(projections.run_projections(settings, None).documents.values())
    table = results.projections_table(docs)
    return docs[0], table[table["kind"] != "net"].reset_index(drop=True)


def study_networks(study_dir: str | os.PathLike) -> list[Network]:
    """A network per finished cell of a study, named `<study folder>/<cell>`."""
    from ..report.study_tables import finished_cells  # torch-free, as above

    study_dir = Path(study_dir)
    return [run_network(cell, name=f"{study_dir.name}/{cell.relative_to(study_dir / CELLS_DIR)}")
            for cell in finished_cells(study_dir)]


def file_network(path: str | os.PathLike, options: SurveyOptions, entry: Mapping[str, Any] | None = None
                 ) -> Network:
    """A checkpoint or ONNX file analyzed by `hparr.projections` (normalized projections, nothing saved); `entry`,
    its item of a networks file, may give an architecture for a checkpoint (`arch` with `num_classes`,
    `in_channels`, `input_size`, `state_dict_prefix`) and what is known of its input and initialization."""
    from .. import projections  # torch: only where files are analyzed

    entry = dict(entry or {})
    path = Path(path)
    settings = projections.ProjectionSettings(
        arch=entry.get("arch"), dataset=None, load_from=[str(path)], normalize=True,
        with_linear=options.with_linear, include_1x1=options.include_1x1, level=options.level,
        state_dict_prefix=entry.get("state_dict_prefix"), progress=False, num_classes=entry.get("num_classes"),
        in_channels=entry.get("in_channels"), input_size=entry.get("input_size"))
    scheme = entry.get("init_scheme") or options.init_scheme
    if scheme is not None:
        settings.init_scheme = str(scheme)
    result = projections.run_projections(settings, None)
    docs = list(result.documents.values())
    table = results.projections_table(docs)
    layers = table[table["kind"] != "net"].reset_index(drop=True)
    context = {k: entry[k] for k in ("arch", "package", "version", "member") if entry.get(k) is not None}
    image = entry.get("image_nonneg")
    notes = [str(n) for n in entry.get("notes", [])]
    return Network(str(entry.get("name") or path.name), str(path),
                   "onnx" if path.suffix.lower() == ONNX_SUFFIX else "checkpoint", layers,
                   image_nonneg=None if image is None else bool(image), init=str(entry.get("init") or "unknown"),
                   declared=dict(entry.get("input_kinds") or {}), context=context, notes=notes,
                   null_assumed=_assumed(docs[0])[0], init_scheme=_assumed(docs[0])[1])


def path_networks(path: str | os.PathLike, options: SurveyOptions) -> list[Network]:
    """The networks of one FILE_OR_DIR argument: a study folder (each finished cell), a run folder, a folder of
    run folders (each one a network), a checkpoint or ONNX file, or a folder of such files (each one a network;
    without any, a folder of result files)."""
    path = Path(path)
    if not path.exists():
        raise UsageError(f"survey input {path}: no such file or folder")
    if path.is_file():
        return [file_network(path, options)]
    if (path / STUDY_NAME).is_file():
        found = study_networks(path)
        if not found:
            raise HparrError(f"study {path} has no finished cell to survey")
        return found
    if (path / MANIFEST_NAME).is_file():
        return [run_network(path)]
    runs = sorted(p.parent for p in path.rglob(MANIFEST_NAME))
    if runs:
        return [run_network(run, name=f"{path.name}/{run.relative_to(path)}") for run in runs]
    files = sorted(p for p in path.rglob("*") if p.is_file() and p.suffix.lower() in FILE_SUFFIXES)
    if files:
        return [file_network(p, options, {"name": str(p.relative_to(path))}) for p in files]
    return [run_network(path)]


def read_networks_file(path: str | os.PathLike) -> list[dict[str, Any]]:
    """The entries of a networks file (docs/survey.md "The networks file"), checked."""
    doc = results.read_json(path)
    why = None
    if not isinstance(doc, dict) or doc.get("format") != NETWORKS_FORMAT or not isinstance(doc.get("networks"), list):
        why = f"a JSON object with \"format\": \"{NETWORKS_FORMAT}\" and a list \"networks\""
    else:
        bad = [i for i, e in enumerate(doc["networks"], 1)
               if not isinstance(e, dict) or not isinstance(e.get("file"), str) or not e.get("name")]
        if bad:
            why = f"entry {bad[0]} has no \"name\" or no \"file\""
    if why is not None:
        raise UsageError(f"--networks {path} is not a networks file ({why})")
    return doc["networks"]


def file_identity(path: str | os.PathLike) -> dict[str, Any]:
    """Path, size and SHA-256 of a file read by the survey (a run folder: its path)."""
    path = Path(path)
    if not path.is_file():
        return {"path": str(path)}
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return {"path": str(path), "size": path.stat().st_size, "sha256": digest.hexdigest()}


# --- the survey's table ----------------------------------------------------------------------------

# one row per network x layer (the CSV's columns, in order)
COLUMNS = ["network", "format", "layer", "depth", "n_layers", "kind", "N", "d", "mass", "deviation", "mean",
           "p_value", "p_adjusted", "biased", "null", "null_assumed", "init_scheme", "input_kind", "input_sign",
           "sign_from", "input_neg_share", "image_nonneg", "init", "arch", "dataset", "seed", "noise", "train_size",
           "normalized", "source"]


def layer_rows(net: Network) -> list[dict[str, Any]]:
    """The survey's rows of one network (COLUMNS)."""
    rows = []
    n = len(net.layers)
    for depth, row in enumerate(net.layers.to_dict(orient="records")):
        sign, kind, how = input_sign(row, net.image_nonneg, net.declared.get(str(row["name"])))
        mass = float(row["mass"])
        null = row.get("null")
        rows.append({"network": net.name, "format": net.format, "layer": row["name"], "depth": depth, "n_layers": n,
                     "kind": row.get("kind"), "N": int(row["N"]), "d": int(row["d"]), "mass": mass,
                     "deviation": abs(mass - 0.5), "mean": float(row["mean"]), "p_value": row.get("p_value"),
                     "p_adjusted": row.get("p_adjusted"), "biased": bool(row.get("biased")),
                     "null": null if _present(null) else BETA,  # results that record none
                     "null_assumed": None if net.null_assumed is None else str(row["name"]) in net.null_assumed,
                     "init_scheme": net.init_scheme,
                     "input_kind": kind, "input_sign": sign, "sign_from": how,
                     "input_neg_share": row.get("input_neg_share"), "image_nonneg": net.image_nonneg,
                     "init": net.init, **{k: net.context.get(k) for k in ("arch", "dataset", "seed", "noise",
                                                                          "train_size", "normalized")},
                     "source": net.source})
    return rows


def survey_table(networks: Sequence[Network]) -> pd.DataFrame:
    """One row per network x layer (COLUMNS), in the order of `networks`."""
    names = [n.name for n in networks]
    twice = sorted({n for n in names if names.count(n) > 1})
    if twice:
        raise UsageError(f"several networks are named {', '.join(twice)}; give each input once")
    rows = [r for net in networks for r in layer_rows(net)]
    return pd.DataFrame(rows, columns=COLUMNS)


def unique_names(networks: Iterable[Network]) -> list[Network]:
    """`networks` with repeated names made unique by their source."""
    networks = list(networks)
    names = [n.name for n in networks]
    for net in networks:
        if names.count(net.name) > 1:
            net.name = f"{net.name} ({net.source})"
    return networks
