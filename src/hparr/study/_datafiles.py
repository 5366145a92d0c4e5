"""The data files of a study: each dataset's files as its loader finds them below --data-path, checked to exist
and be readable before anything is written, and identified by size and content hash, so that a rerun may read
them from another --data-path and is refused when they are other files.

A dataset read from a folder tree (ImageNet) is identified by its listing: the relative path and size of each
file below it, hashed (its images are not read: hashing a hundred gigabytes would outlast the check)."""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Mapping

from ..errors import HparrError
from ..files import digest, hasher

_CHUNK = 1 << 20


def file_identity(path: Path) -> dict[str, Any]:
    """{"size", "hash"} of a file, reading all of it (so an unreadable file is found here, in one line)."""
    h, size = hasher(), 0
    try:
        with open(path, "rb") as fh:
            while chunk := fh.read(_CHUNK):
                h.update(chunk)
                size += len(chunk)
    except OSError as exc:
        raise unreadable(path, exc) from None
    return {"size": size, "hash": digest(h)}


def folder_identity(path: Path) -> dict[str, Any]:
    """{"files", "size", "hash"} of a folder tree: its file count, total size and the hash of its listing
    (each file's path below it and size, in sorted order)."""
    entries = []
    try:
        for folder, _, names in os.walk(path, onerror=_raise):
            for name in names:
                full = Path(folder) / name
                entries.append((full.relative_to(path).as_posix(), full.stat().st_size))
    except OSError as exc:
        raise unreadable(Path(exc.filename or path), exc) from None
    h = hasher()
    for name, size in sorted(entries):
        h.update(f"{name}\0{size}\n".encode())
    return {"files": len(entries), "size": sum(size for _, size in entries), "hash": digest(h)}


def _raise(exc: OSError) -> None:
    raise exc


def unreadable(path: Path, exc: OSError) -> HparrError:
    return HparrError(f"cannot read the data file {path}: {exc.strerror or exc}")


def data_identity(options: Any) -> dict[str, dict[str, Any]]:
    """{file name: identity} of the files a dataset's loader reads (`options`: its `DataOptions`); missing files
    are fetched first with `options.download`, and otherwise refused with the loader's own error."""
    from ..data.formats import dataset_files, read_arrays  # torch-free module: the data readers import torch

    root = Path(options.data_path).expanduser()
    try:
        found = dataset_files(options.dataset, root)
    except HparrError:
        if not options.download or options.dataset == "imagenet":
            raise
        read_arrays(options.dataset, root, download=True)
        found = dataset_files(options.dataset, root)
    return {p.name: folder_identity(p) if p.is_dir() else file_identity(p) for p in found}


def _shown(identity: Mapping[str, Any]) -> str:
    text = f"{identity.get('size')} bytes"
    return f"{identity['files']} files, {text}" if "files" in identity else text


def _digest(identity: Mapping[str, Any]) -> str:
    """"xxh3-128 7f08272f35b4...": the start of a recorded hash."""
    name, _, digest = str(identity.get("hash")).partition(":")
    return f"{name} {digest[:12]}..."


def data_differences(before: Mapping[str, Mapping], now: Mapping[str, Mapping]) -> list[str]:
    """How the data files of the datasets recorded in both differ: "dataset name: A there, B here"."""
    out = []
    for dataset in sorted(set(before) & set(now)):
        there, here = before[dataset] or {}, now[dataset] or {}
        for name in sorted(set(there) | set(here)):
            a, b = there.get(name), here.get(name)
            if a == b:
                continue
            if a is None:
                out.append(f"{dataset} {name}: not there, {_shown(b)} here")
            elif b is None:
                out.append(f"{dataset} {name}: {_shown(a)} there, not here")
            elif _shown(a) != _shown(b):
                out.append(f"{dataset} {name}: {_shown(a)} there, {_shown(b)} here")
            else:
                out.append(f"{dataset} {name}: same size, other content ({_digest(a)} there, {_digest(b)} here)")
    return out
