"""What a result was computed from: the identity of a checkpoint (its file, size, mtime and the hash of the
tensors used), and whether a checkpoint on disk is still the one a result records."""
from __future__ import annotations

import hashlib
import os
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping

import torch

from .. import files
from ..errors import HparrError

HASH = "hash"  # the key of the hash in a checkpoint identity: "<algorithm>:<hex digest>"


def _hasher(algorithm: str | None = None):
    """(name, a new hash object): xxh3-128 (xxhash, 25 GB/s: under 1% of the analysis of a 100 MB file), or
    sha256 where xxhash is not installed or a result recorded it."""
    if algorithm in (None, "xxh3-128"):
        try:
            import xxhash  # optional: sha256 where it is not installed

            return "xxh3-128", xxhash.xxh3_128()
        except ImportError:
            if algorithm is not None:
                raise HparrError("this result's checkpoint hash is xxh3-128: pip install xxhash") from None
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

