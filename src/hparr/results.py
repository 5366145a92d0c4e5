"""Result files, read without torch: their format names, how to recognize and complete them, and the
quantities every reader shares (the relative accuracy drop, the tidy projection table, the manifest).

`hparr projections` writes one document per snapshot, `hparr reinit` one per trained model,
`hparr reproduce` a manifest of what it produced, and `hparr report` reads them all through this
module, so the report never imports torch.
"""
from __future__ import annotations

import json
import math
import os
import re
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Iterable, Mapping, Sequence

from . import schema
from .errors import HparrError, UsageError
from .files import file_stat
from .layout import MANIFEST_NAME, STUDY_NAME

if TYPE_CHECKING:  # start-up time: pandas only where a table is built (`hparr reinit` builds none)
    import pandas as pd

SNAPSHOT_FORMAT = "hparr-snapshot-1"
PROJECTIONS_FORMAT = "hparr-projections-1"
REINIT_FORMAT = "hparr-reinit-1"
REPORT_FORMAT = "hparr-report-1"
MANIFEST_FORMAT = "hparr-manifest-1"
STUDY_FORMAT = "hparr-study-1"
RAND = "rand"  # the label of a fresh random draw among the re-initialization alternatives


# --- the relative accuracy drop ------------------------------------------------------------------

def relative_drops(trained_acc: float, accuracies: Mapping[str, Sequence[float]]) -> dict[str, list[float]]:
    """{label: [(acc_trained - acc) / acc_trained per layer]} (NaN when the trained accuracy is 0)."""
    return {label: [(trained_acc - a) / trained_acc if trained_acc else float("nan") for a in accs]
            for label, accs in accuracies.items()}


def drop_frame(doc: Mapping[str, Any]) -> pd.DataFrame:
    """The relative drop stored in a reinit document as a table (rows: labels, columns: layers; NaN for none)."""
    import pandas as pd  # start-up time: pandas only for tables (the commands read results)

    drops = {label: [float("nan") if v is None else float(v) for v in values]
             for label, values in doc["relative_drop"].items()}
    return pd.DataFrame.from_dict(drops, orient="index", columns=list(doc["layers"]))


def alternative_label(label: str) -> str:
    """How an alternative is named in figures and text: `epoch 3` or `rand`."""
    return RAND if label == RAND else f"epoch {label}"


# --- recognizing and completing documents --------------------------------------------------------

def is_projection_doc(doc: Any) -> bool:
    """A document of `hparr projections` or of the original compute_projections.py."""
    if not isinstance(doc, dict):
        return False
    if doc.get("format") == PROJECTIONS_FORMAT:
        return True
    if "format" in doc or not isinstance(doc.get("net"), dict):
        return False
    # the original layout: stage -> block -> {projections, mean, mass, ...}
    stages = [v for k, v in doc.items() if k.isdigit()]
    return bool(stages) and all(isinstance(s, dict) and all(isinstance(e, dict) and "mass" in e and "projections" in e
                                                            for e in s.values()) for s in stages)


def is_reinit_doc(doc: Any) -> bool:
    """A document of `hparr reinit` or of the original reinit_layers.py."""
    if not isinstance(doc, dict):
        return False
    if doc.get("format") == REINIT_FORMAT:
        return True
    return "format" not in doc and isinstance(doc.get("init_from_epoch"), dict) and "top1_test" in doc


def complete_projection_doc(doc: Mapping[str, Any]) -> dict:
    """A copy in which every layer has a name, N and `biased` (documents in the original layout have none)."""
    doc = json.loads(json.dumps(doc))
    for stage, blocks in doc.items():
        if stage.isdigit():
            for block, entry in blocks.items():
                entry.setdefault("name", f"stage{stage}.block{block}")
                entry.setdefault("N", len(entry.get("projections") or []))
                entry.setdefault("biased", None)
    return doc


def complete_reinit_doc(doc: Mapping[str, Any]) -> dict:
    """A copy with layer names and the relative drop (the original code's documents have neither)."""
    doc = json.loads(json.dumps(doc))
    if "layers" not in doc:
        n = len(next(iter(doc["init_from_epoch"].values()), []))
        doc["layers"] = [f"layer{i}" for i in range(n)]
    if "relative_drop" not in doc:
        doc["relative_drop"] = {label: [v if math.isfinite(v) else None for v in drops] for label, drops in
                                relative_drops(float(doc["top1_test"]), doc["init_from_epoch"]).items()}
    return doc


def epoch_of(doc: Mapping[str, Any]) -> int | None:
    """The epoch a document describes, as an int (None when it records none)."""
    try:
        return int(doc.get("epoch"))
    except (TypeError, ValueError):
        return None


def seed_of(doc: Mapping[str, Any]) -> str | None:
    """The seed a document records, as text (None for none: the original code writes "None")."""
    value = doc.get("seed")
    return None if value in (None, "None", "") else str(value)


def layer_entries(doc: Mapping[str, Any] | None) -> list[dict[str, Any]]:
    """The layer entries of a projection document in stage/block order (without the "net" entry). In a
    residual network an entry is keyed by its position in the stage and records its block itself."""
    if doc is None:
        return []
    return [{**doc[s][b], "stage": int(s), "block": int(doc[s][b].get("block", b))}
            for s in sorted((k for k in doc if k.isdigit()), key=int) for b in sorted(doc[s], key=int)]


def read_result_file(path: str | os.PathLike) -> tuple[Any, str | None]:
    """(the JSON value of a file, None), or (None, why it cannot be read: empty, truncated, not JSON, unreadable)."""
    try:
        data = Path(path).read_bytes()
    except OSError as exc:
        return None, f"unreadable ({exc.strerror or exc})"
    if not data.strip():
        return None, "empty"
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        return None, "not JSON (not UTF-8 text)"
    try:
        return json.loads(text), None
    except json.JSONDecodeError as exc:
        # the text ends inside a value: after it, inside a number or a literal that it starts (`0.`, `tr`), or
        # inside a string that it opens (the error is then placed at the string's start): a cut file, not a
        # malformed one
        last_token = len(re.sub(r"[-+.0-9a-zA-Z]+$", "", text.rstrip()))
        if exc.pos >= last_token or exc.msg.startswith("Unterminated string"):
            return None, f"truncated (the JSON ends after {len(data)} bytes, inside a value)"
        return None, f"not JSON ({exc.msg} at line {exc.lineno}, column {exc.colno})"


def read_json(path: str | os.PathLike) -> Any:
    """The JSON value of a file, or None if it cannot be read or parsed."""
    return read_result_file(path)[0]


# --- the tidy projection table -------------------------------------------------------------------

ROW_CONTEXT = ("stem", "source", "arch", "dataset", "seed", "epoch", "normalize", "level")


def stage_unknown(doc: Mapping[str, Any] | None) -> bool:
    """A projection document of a checkpoint read without its model (`hparr projections` without --arch): its
    layers are in the file's order, and their stage and block are unknown."""
    return bool(doc) and doc.get("layer_order") == "file"


def document_rows(doc: Mapping[str, Any]) -> list[dict[str, Any]]:
    """Tidy rows (one per layer, plus a `kind == "net"` row) of a projection document, without the projections;
    stage and block are empty where they are unknown (`stage_unknown`), and a tested layer's `null` is `beta` where
    the document predates it."""
    from .null import BETA  # start-up time: numpy only where rows are made

    unknown = stage_unknown(doc)
    context = {k: doc.get(k) for k in ROW_CONTEXT}
    try:
        context["epoch"] = int(context["epoch"])
    except (TypeError, ValueError):
        pass
    rows = []
    for stage in sorted((k for k in doc if k.isdigit()), key=int):
        for block in sorted(doc[stage], key=int):
            entry = doc[stage][block]
            rows.append({**context, "stage": None if unknown else int(stage), "block": None if unknown else int(block),
                         # results tested before the null was recorded used the Beta null
                         **({"null": BETA} if "p_ks" in entry else {}),
                         **{k: v for k, v in entry.items() if k != "projections"}})
    net = doc["net"]
    rows.append({**context, "name": "net", "kind": "net", "stage": None, "block": None,
                 **{k: v for k, v in net.items() if k not in ("projections",)}})
    return rows


def projections_table(docs: Iterable[Mapping[str, Any]]) -> pd.DataFrame:
    """The tidy table of many projection documents (one row per snapshot x layer, plus "net" rows),
    sorted by epoch then layer order."""
    import pandas as pd  # start-up time, as above

    rows = [r for doc in docs for r in document_rows(doc)]
    df = pd.DataFrame(rows)
    if df.empty:
        return df
    df = schema.typed(df[schema.ordered(df.columns, first=ROW_CONTEXT)])
    df["_net"] = df["kind"] == "net"
    df["_epoch"] = pd.to_numeric(df["epoch"], errors="coerce")
    df = df.sort_values(["_epoch", "stem", "_net", "stage", "block"], kind="stable", na_position="last")
    return df.drop(columns=["_net", "_epoch"]).reset_index(drop=True)


# --- a result already on disk: reused, or computed again -----------------------------------------------

REFUSE, RECOMPUTE = "refuse", "recompute"  # what becomes of a result computed with other options


def reuse_or_recompute(path: str | os.PathLike, judge: Callable[[Path], tuple[Any, str | None]], *,
                       overwrite: bool = False, other_options: str = REFUSE) -> tuple[Any, str | None]:
    """What to do about the result file at `path` that a computation would write: (its document, None) to reuse
    it, (None, why) to compute it again, and (None, None) to compute it where there is none (or `overwrite`).

    `judge(path)` reads the file: (its document, None) when it was computed from the same inputs, else (None,
    why not); for a result computed with other options it raises a UsageError. With `other_options` REFUSE that
    error is the answer (`hparr reinit` refuses to replace it unless --overwrite); with RECOMPUTE the result is
    computed again, and the error's text says why (`hparr projections`, and `hparr reproduce` for its own
    results)."""
    if other_options not in (REFUSE, RECOMPUTE):
        raise ValueError(f"other_options must be {REFUSE!r} or {RECOMPUTE!r}, got {other_options!r}")
    path = Path(path)
    if overwrite or not path.is_file():
        return None, None
    if other_options == REFUSE:
        return judge(path)
    try:
        return judge(path)
    except HparrError as exc:
        return None, str(exc)



def adopt_earlier(target: str | os.PathLike, earlier: str | os.PathLike,
                  judge: Callable[[Path], tuple[Any, str | None]],
                  condition: Mapping[str, Any]) -> dict[str, Any] | None:
    """The result an earlier version of hparr wrote at `earlier` (a results folder that did not name the run's
    condition, `layout.earlier_results_directory`) where none is at `target` yet: its document with the run's
    `condition` recorded, when `judge(earlier)` (as for `reuse_or_recompute`) finds it computed from the same
    inputs; None otherwise, and where one computed with other options (a UsageError) is left where it is.
    Nothing is written: the caller keeps the document."""
    target, earlier = Path(target), Path(earlier)
    if target.exists() or earlier == target or not earlier.is_file():
        return None
    try:
        doc, _ = judge(earlier)
    except UsageError:
        return None
    return None if doc is None else {**doc, "condition": dict(condition)}

# --- the manifest of `hparr reproduce` -----------------------------------------------------------

EVAL_SPLITS = ("test", "train")  # where a re-initialization sweep measures accuracy (`hparr reinit --eval-split`)


def check_eval_split(split: Any) -> str:
    if split not in EVAL_SPLITS:
        raise UsageError(f"--eval-split must be one of {', '.join(EVAL_SPLITS)}, got {split!r}")
    return split


def parse_eval_splits(splits: str | Sequence[str]) -> tuple[str, ...]:
    """The splits of `--eval-split test,train` (a comma list or a sequence), each once, in order."""
    items = [p.strip() for p in splits.split(",")] if isinstance(splits, str) else [str(p) for p in splits]
    if not items or not all(items):
        raise UsageError(f"--eval-split: malformed list {splits!r}; use test, train or test,train")
    return tuple(dict.fromkeys(check_eval_split(p) for p in items))


def manifest(folder: str | os.PathLike, projections_dir: str | os.PathLike, reinit_file: str | os.PathLike,
             epochs: Sequence[int], **fields: Any) -> dict[str, Any]:
    """What `hparr reproduce` produced under `folder`, with paths relative to it, for the report."""
    base = Path(folder).resolve()

    def rel(p) -> str:
        p = Path(p).resolve()
        return str(p.relative_to(base)) if p.is_relative_to(base) else str(p)

    if isinstance(fields.get("reinit_splits"), Mapping):
        fields["reinit_splits"] = {k: rel(v) for k, v in fields["reinit_splits"].items()}
    return {"format": MANIFEST_FORMAT, "projections": rel(projections_dir), "reinit": rel(reinit_file),
            "epochs": [int(e) for e in epochs], **fields}


def read_manifest(run_dir: str | os.PathLike) -> dict[str, Any] | None:
    """The manifest of a run folder with its paths made absolute, or None when there is none."""
    path = Path(run_dir) / MANIFEST_NAME
    doc = read_json(path)
    if not isinstance(doc, dict) or doc.get("format") != MANIFEST_FORMAT:
        return None
    for key in ("projections", "reinit"):
        if doc.get(key):
            p = Path(doc[key])
            doc[key] = p if p.is_absolute() else Path(run_dir) / p
    if isinstance(doc.get("reinit_splits"), dict):
        doc["reinit_splits"] = {k: p if p.is_absolute() else Path(run_dir) / p
                                for k, p in ((k, Path(v)) for k, v in doc["reinit_splits"].items())}
    return doc


def run_finished(run_dir: str | os.PathLike, also: Iterable[str | os.PathLike]) -> bool:
    """Whether the results of `hparr reproduce` are complete in `run_dir`: its manifest (with the final metrics)
    and every file the manifest names are there, and so are the files `also` (paths relative to `run_dir`; the
    study passes the report's, `layout.RUN_REPORT_FILES`; no default, so that no caller leaves the report out by
    omission)."""
    run_dir = Path(run_dir)
    doc = read_manifest(run_dir)
    if doc is None or not isinstance(doc.get("final"), dict) or not doc.get("projections") or not doc.get("reinit"):
        return False
    folder = Path(doc["projections"])
    splits = doc.get("reinit_splits") if isinstance(doc.get("reinit_splits"), dict) else {}
    return (Path(doc["reinit"]).is_file() and all(Path(p).is_file() for p in splits.values())
            and folder.is_dir() and any(folder.glob("*.json"))
            and all((run_dir / name).is_file() for name in also)
            and all(checkpoints_unchanged(read_json(p)) for p in {doc["reinit"], *splits.values()}))


def checkpoints_unchanged(doc: Any) -> bool:
    """Whether the checkpoints a re-initialization result records (`inputs`: the trained snapshot and those
    re-initialized from) are still there with the size and mtime they had; a result that records none counts
    as unchanged. Only the files' metadata is read (their tensors are compared by `hparr reinit` itself)."""
    inputs = doc.get("inputs") if isinstance(doc, dict) else None
    if not isinstance(inputs, dict):
        return True
    identities = [inputs.get("trained"), *(inputs.get("inits") or {}).values()]
    for ident in identities:
        if not isinstance(ident, dict) or "path" not in ident:
            continue
        try:
            size, mtime = file_stat(ident["path"])
        except OSError:
            return False
        if (size, mtime) != (ident.get("size"), ident.get("mtime_ns")):
            return False
    return True


# --- the folder of `hparr study` -----------------------------------------------------------------

def read_study(folder: str | os.PathLike) -> dict[str, Any] | None:
    """The `study.json` of a study folder, or None when `folder` is not one."""
    doc = read_json(Path(folder) / STUDY_NAME)
    return doc if isinstance(doc, dict) and doc.get("format") == STUDY_FORMAT else None
