"""Atomic file writes: a crash leaves either the old file or the new one, never a torn one."""
from __future__ import annotations

import contextlib
import json
import logging
import math
import os
import sys
import tempfile
from pathlib import Path
from typing import Any, Callable, Iterator, Mapping

from .errors import HparrError


def ensure_dir(path: str | os.PathLike) -> Path:
    """Create a directory (and parents); a clear error if it cannot be written."""
    path = Path(path)
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise HparrError(f"cannot create output directory {path}: {exc.strerror or exc}") from None
    if not os.access(path, os.W_OK | os.X_OK):
        raise HparrError(f"output directory {path} is not writable")
    return path


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path beside `path`; on success it is fsynced and renamed over `path`."""
    path = Path(path)
    ensure_dir(path.parent)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp" + path.suffix, dir=path.parent)
    os.close(fd)
    tmp = Path(tmp)
    os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes 0600; results are meant to be shared like any file
    try:
        yield tmp
        with open(tmp, "rb+") as fh:
            os.fsync(fh.fileno())
        os.replace(tmp, path)
        _fsync_dir(path.parent)
    finally:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _fsync_dir(directory: Path) -> None:
    with contextlib.suppress(OSError):
        fd = os.open(directory, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def write_bytes(path: str | os.PathLike, data: bytes) -> None:
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)


def write_text(path: str | os.PathLike, text: str) -> None:
    write_bytes(path, text.encode("utf-8"))


def write_json(path: str | os.PathLike, obj: Any) -> None:
    """Write `obj` as indented JSON (through `jsonable`), atomically."""
    write_text(path, json.dumps(jsonable(obj), indent=2, sort_keys=False) + "\n")


def jsonable(value: Any) -> Any:
    """A JSON-ready copy of `value`: numpy and torch scalars and arrays become Python values and lists,
    NaN and infinities become None, paths become text, mappings and sequences are converted throughout;
    anything else unknown becomes its text."""
    if value is None or isinstance(value, (bool, int, str)):
        return value
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, Path):
        return str(value)
    if isinstance(value, Mapping):
        return {str(k): jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [jsonable(v) for v in value]
    if hasattr(value, "tolist"):  # numpy and torch scalars and arrays
        return jsonable(value.tolist())
    pandas = sys.modules.get("pandas")
    if pandas is not None and value is pandas.NA:
        return None
    return str(value)


@contextlib.contextmanager
def log_to(path: str | os.PathLike | None, logger: str = "hparr") -> Iterator[Callable[[str], None]]:
    """Append the messages of `logger` to the file `path` while the block runs (None: no file).

    Yields a function that appends one more line to the file alone (not to the console). A log is the one
    file written as a stream rather than atomically: each message is appended as it comes.
    """
    if path is None:
        yield lambda line: None
        return
    path = Path(path)
    ensure_dir(path.parent)
    handler = logging.FileHandler(path)
    handler.setLevel(logging.INFO)
    handler.setFormatter(logging.Formatter("%(asctime)s %(name)s %(levelname)s %(message)s"))
    root = logging.getLogger(logger)
    root.addHandler(handler)
    try:
        yield lambda line: handler.handle(logging.LogRecord(logger, logging.INFO, "", 0, line, None, None))
    finally:
        root.removeHandler(handler)
        handler.close()


def save_torch(obj: Any, path: str | os.PathLike) -> None:
    """torch.save, atomically."""
    import torch

    with atomic_path(path) as tmp:
        torch.save(obj, tmp)


class _NoLock:
    def close(self) -> None:
        pass


def flock(path: str | os.PathLike, shared: bool = False, wait: bool = True):
    """Hold an advisory lock on the file `path` (created empty if missing) until the returned object's
    `close()`, or until the process ends: exclusive, or shared with `shared`. With `wait=False`, None when
    another process holds a conflicting lock. Where flock does not exist or fails (some network file systems),
    nothing is locked."""
    try:
        import fcntl
    except ImportError:
        return _NoLock()
    ensure_dir(Path(path).parent)
    handle = open(path, "a")  # noqa: SIM115 - the lock lives as long as the open file
    try:
        fcntl.flock(handle.fileno(), (fcntl.LOCK_SH if shared else fcntl.LOCK_EX) | (0 if wait else fcntl.LOCK_NB))
    except BlockingIOError:
        handle.close()
        return None
    except OSError:
        handle.close()
        return _NoLock()
    return handle
