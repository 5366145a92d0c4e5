"""What a result was computed from: the identity of a checkpoint (its file, size, mtime and the hash of the
tensors used), and whether a checkpoint on disk is still the one a result records."""
from __future__ import annotations

import hashlib
import os
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping, Sequence

import torch

from .. import files
from ..errors import HparrError, UsageError
from ..layout import CONDITION_FLAGS, RunCondition, shown_setting
from ._formats import checkpoint_format
from ._load import torch_load

HASH = "hash"  # the key of the hash in a checkpoint identity: "<algorithm>:<hex digest>"


def _hasher(algorithm: str | None = None):
    """(name, a new hash object): the project's content hash, `files.hasher` (xxh3-128, 25 GB/s: under 1% of the
    analysis of a 100 MB file), or sha256 where a result recorded it."""
    if algorithm in (None, files.HASH_ALGORITHM):
        return files.HASH_ALGORITHM, files.hasher()
    return "sha256", hashlib.sha256()


def tensors_digest(state: Mapping[str, Any], keys: Iterable[str], algorithm: str | None = None) -> str:
    """A content hash of the tensors `keys` of `state`: each one's key, dtype, shape and bytes as stored,
    in the order given, as "<algorithm>:<hex digest>" (see `_hasher`)."""
    name, h = _hasher(algorithm)
    for key in keys:
        t = torch.as_tensor(state[key]).detach()
        t = t.to("cpu").contiguous()
        h.update(f"{key}\0{t.dtype}\0{tuple(t.shape)}\0".encode())
        if t.numel():
            h.update(t.reshape(-1).view(torch.uint8).numpy())
    return f"{name}:{h.hexdigest()}"


def checkpoint_identity(path: str | os.PathLike, state: Mapping[str, Any], keys: Iterable[str]) -> dict[str, Any]:
    """What a result records of a checkpoint it read: the file (resolved), its size and mtime, and the hash
    of the tensors used (`tensors_digest` of `keys`, which are recorded with it)."""
    path = Path(path)
    keys = list(keys)
    size, mtime = files.file_stat(path)
    return {"path": str(path.resolve()), "size": size, "mtime_ns": mtime, "keys": keys,
            HASH: tensors_digest(state, keys)}


def identity_change(recorded: Any, path: str | os.PathLike, read_state: Callable[[], Mapping[str, Any]]) -> str | None:
    """Why the checkpoint at `path` is not the one `recorded` (a `checkpoint_identity`) describes, or None when
    it is: another file, or other tensors. Same size and mtime count as the same file; otherwise its tensors
    are hashed again (`read_state()` gives its state), so a file touched but not changed is still the same."""
    path = Path(path)
    if not isinstance(recorded, Mapping) or not all(k in recorded for k in ("path", "size", "mtime_ns", HASH)):
        return "it records no identity of its checkpoint"
    if recorded["path"] != str(path.resolve()):
        return f"it was computed from another file ({recorded['path']})"
    try:
        size, mtime = files.file_stat(path)
    except OSError:
        return f"{path} cannot be read"
    if (size, mtime) == (recorded["size"], recorded["mtime_ns"]):
        return None
    try:
        digest = tensors_digest(read_state(), recorded.get("keys") or [], str(recorded[HASH]).partition(":")[0])
    except (HparrError, KeyError):
        digest = None
    if digest == recorded[HASH]:
        return None
    return f"{path.name} has changed since: other tensors (a retrained or replaced file)"


# --- the condition of the run a snapshot comes from --------------------------------------------------

def recorded_condition(meta: Any) -> dict[str, Any]:
    """The settings of `layout.RunCondition` that a snapshot records (as `hparr train` writes them: its
    `settings` and their `data`, else the data options under `data`; the seed as resolved, under `seeds`), each
    where recorded; {} for a file that records none (the original code's, a bare state_dict, safetensors)."""
    meta = meta if isinstance(meta, Mapping) else {}
    settings = meta.get("settings") if isinstance(meta.get("settings"), Mapping) else {}
    data = settings.get("data") if isinstance(settings.get("data"), Mapping) else None
    if data is None:
        record = meta.get("data") if isinstance(meta.get("data"), Mapping) else {}
        data = record.get("options") if isinstance(record.get("options"), Mapping) else {}
    found = {k: data[k] for k in ("dataset", "subsample_classes", "train_size", "noise") if k in data}
    if "subsample_classes" in found:
        found["subsample_classes"] = int(found["subsample_classes"] or 0)
    if "noise" in found:
        found["noise"] = float(found["noise"] or 0.0)
    seeds = meta.get("seeds") if isinstance(meta.get("seeds"), Mapping) else {}
    seed = seeds.get("seed", settings.get("seed"))
    if isinstance(seed, int) and not isinstance(seed, bool):
        found["seed"] = seed
    return found


def _same(key: str, a: Any, b: Any) -> bool:
    if key == "dataset" and isinstance(a, str) and isinstance(b, str):
        return a.lower() == b.lower()
    return a == b


def _contradiction(key: str, source: str, recorded: Any, given: Any) -> str:
    if key == "dataset":
        return f"{source} was trained on {recorded}, not on --dataset {given}"
    if key == "seed":
        return f"{source} was trained with seed {recorded}, not --seed {given}"
    flag = CONDITION_FLAGS[key]
    return (f"{source} comes from a run with {flag} {shown_setting(key, recorded)}, "
            f"not {flag} {shown_setting(key, given)}")


def run_condition(records: Sequence[tuple[str, Any]], flags: Mapping[str, Any]) -> RunCondition:
    """The condition of the run that the snapshots `records` ((file, its metadata), ...) come from.

    Each setting is the one the snapshots record (`recorded_condition`); where none records it, the flag's
    (`flags`: {setting: value}, None where not given), else the default. Two snapshots that record different
    values are refused (a UsageError naming the setting, both values and both files), and so is a flag that
    contradicts a recorded value (an HparrError naming both)."""
    values: dict[str, Any] = {}
    where: dict[str, str] = {}
    for source, meta in records:
        for key, value in recorded_condition(meta).items():
            if key not in values:
                values[key], where[key] = value, source
            elif not _same(key, values[key], value):
                flag = CONDITION_FLAGS[key]
                raise UsageError(f"the snapshots come from runs of different conditions ({flag} "
                                 f"{shown_setting(key, values[key])} in {where[key]}, {shown_setting(key, value)} in "
                                 f"{source}); their results would share a folder: analyze each run on its own")
    for key, given in flags.items():
        if given is not None and key in values and not _same(key, values[key], given):
            raise HparrError(_contradiction(key, where[key], values[key], given))
    chosen = {**{k: v for k, v in flags.items() if v is not None}, **values}
    return RunCondition(dataset=chosen.get("dataset"), subsample_classes=int(chosen.get("subsample_classes") or 0),
                        train_size=chosen.get("train_size"), noise=float(chosen.get("noise") or 0.0),
                        seed=chosen.get("seed"), recorded=tuple(k for k in CONDITION_FLAGS if k in values))


def snapshot_metadata(path: str | os.PathLike) -> Any:
    """What a checkpoint file records besides its tensors, read without them: the loaded object of a torch file
    (memory-mapped: its tensors are not read), {} for the other formats."""
    if checkpoint_format(path) not in ("torch-zip", "torch-pickle"):
        return {}
    return torch_load(path, mmap=True)
