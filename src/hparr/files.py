"""Atomic file writes: a crash leaves either the old file or the new one, never a torn one.

A write that fails for a reason the user can act on (a full disk, a quota, no permission, a read-only
file system, a file-size limit, an I/O error) raises an HparrError naming the file and the cause; the
temporary file is removed and the file that was there before is left as it was.
"""
from __future__ import annotations

import contextlib
import errno
import itertools
import json
import logging
import math
import os
import re
import secrets
import sys
import time
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator, Mapping

from .errors import HparrError, first_line


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


def missing_folders(path: str | os.PathLike) -> list[Path]:
    """The folders among `path` and its parents that do not exist yet, deepest first: those that writing
    `path` makes, for `remove_if_empty` to take away again."""
    path = Path(path)
    return list(itertools.takewhile(lambda p: not p.exists(), [path, *path.parents]))


def remove_if_empty(made: Iterable[Path]) -> None:
    """Remove the folders `made` (from `missing_folders`: deepest first) while they are empty; a folder that
    holds anything stays, and so do its parents."""
    for folder in made:
        try:
            folder.rmdir()
        except OSError:
            break


# the causes of a failed write that are the user's to fix, not a bug
WRITE_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT, errno.EACCES, errno.EPERM, errno.EROFS, errno.EFBIG,
                          errno.EIO})
# torch's zip writer reports a failed write as a RuntimeError ("[enforce fail at inline_container.cc:...]
# . unexpected pos 206208 vs 206096"), with the OSError, if any, only as its context
_TORCH_WRITE_FAILURE = re.compile(r"unexpected pos|enforce fail|file write failed|PytorchStreamWriter")
FULL_DISK_BYTES = 16 << 20  # below this much free space, a torch write failure is taken for a full disk


def write_error(exc: BaseException, path: str | os.PathLike, what: str = "files") -> HparrError | None:
    """The one-line error for a failed write of `path`, or None if `exc` is not a write failure.

    An OSError with a cause in WRITE_ERRNOS (itself, or as the cause or context of another exception)
    names that cause; torch's zip-writer RuntimeError without one is taken for a full disk when the
    target's file system has less than FULL_DISK_BYTES free, else reported with torch's message.
    """
    if isinstance(exc, HparrError):
        return None  # told already
    path = Path(path)
    tail = f"; the previous {what} are intact"
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        if isinstance(current, OSError) and current.errno in WRITE_ERRNOS:
            cause = os.strerror(current.errno)
            return HparrError(f"{cause[:1].lower()}{cause[1:]} while writing {path}{tail}")
        current = current.__cause__ or (None if current.__suppress_context__ else current.__context__)
    if isinstance(exc, RuntimeError) and _TORCH_WRITE_FAILURE.search(str(exc)):
        if free_bytes(path.parent) < FULL_DISK_BYTES:
            return HparrError(f"no space left on device while writing {path}{tail}")
        return HparrError(f"writing {path} failed ({first_line(exc)}){tail}")
    return None


def free_bytes(directory: str | os.PathLike) -> int:
    """Bytes this process may still write on the file system of `directory` (root may use the reserve)."""
    try:
        st = os.statvfs(directory)
    except OSError:
        return 1 << 62
    return (st.f_bfree if os.geteuid() == 0 else st.f_bavail) * st.f_frsize


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike, what: str = "files") -> Iterator[Path]:
    """Yield a temporary path beside `path`; on success it is fsynced and renamed over `path`.

    A failed write (see `write_error`) raises an HparrError naming `path` and the cause, saying that
    the previous `what` are intact; the temporary file is always removed.
    """
    path = Path(path)
    ensure_dir(path.parent)
    try:
        tmp = _new_file_beside(path)
    except OSError as exc:
        raise (write_error(exc, path, what) or exc) from None
    try:
        yield tmp
        with open(tmp, "rb+") as fh:
            os.fsync(fh.fileno())
        os.replace(tmp, path)
        _fsync_dir(path.parent)
    except Exception as exc:  # only write failures are translated; the rest is re-raised
        error = write_error(exc, path, what)
        if error is None:
            raise
        raise error from None
    finally:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()


def remove(path: str | os.PathLike) -> None:
    """Delete a file (gone already is fine); a failure is an HparrError naming the file and the cause."""
    try:
        Path(path).unlink(missing_ok=True)
    except OSError as exc:
        raise HparrError(f"cannot remove {path}: {exc.strerror or exc}") from None


def _new_file_beside(path: Path) -> Path:
    """A new empty file with a random name beside `path`, made with the permissions of any new file (the
    umask applies; results are meant to be shared like any file), safely from several threads at once."""
    for _ in range(100):
        tmp = path.with_name(f".{path.name}.{secrets.token_hex(6)}.tmp{path.suffix}")
        try:
            os.close(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666))
            return tmp
        except FileExistsError:
            continue
    raise FileExistsError(errno.EEXIST, "no free temporary name", str(path))


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


HASH_ALGORITHM = "xxh3-128"  # the content hash of data files and datasets, recorded as "<algorithm>:<hex digest>"


def hasher():
    """A new content hasher (xxh3-128: a 100 MB image folder hashes in a few milliseconds)."""
    import xxhash  # a dependency; imported where data is hashed (start-up time of the other commands)

    return xxhash.xxh3_128()


def digest(h) -> str:
    """`<algorithm>:<hex digest>` of a hasher from `hasher()`."""
    return f"{HASH_ALGORITHM}:{h.hexdigest()}"


@contextlib.contextmanager
def log_to(path: str | os.PathLike | None, logger: str = "hparr", what: str = "files",
           nothing_on_refusal: bool = False) -> Iterator[Callable[[str], None]]:
    """Append the messages of `logger` to the file `path` while the block runs (None: no file).

    Yields a function that appends one more line, as it is, to the file alone (not to the console). A log is
    the one file written as a stream rather than atomically: each message is appended as it comes. A write
    that fails (a full disk, ...) stops the work with the one-line error of `write_error`. With
    `nothing_on_refusal`, a block that ends in an HparrError (its inputs refused) leaves nothing behind: a log
    file this call started is removed, with the folders made for it.
    """
    if path is None:
        yield lambda line: None
        return
    path = Path(path)
    made = missing_folders(path.parent)
    started = not path.exists()
    ensure_dir(path.parent)
    try:
        handler = _LogFileHandler(path, what)
    except OSError as exc:
        raise (write_error(exc, path, what) or exc) from None
    handler.setLevel(logging.INFO)
    handler.setFormatter(logging.Formatter("%(asctime)s %(name)s %(levelname)s %(message)s"))
    root = logging.getLogger(logger)
    root.addHandler(handler)
    try:
        yield lambda line: _append(handler, line)
    except HparrError:
        if nothing_on_refusal and started:
            root.removeHandler(handler)
            with contextlib.suppress(OSError):
                handler.close()
                path.unlink(missing_ok=True)
                remove_if_empty(made)  # a folder where something else was written: kept
        raise
    finally:
        root.removeHandler(handler)
        with contextlib.suppress(OSError):
            handler.close()


class _LogFileHandler(logging.FileHandler):
    """A log file whose failed writes raise the one-line error of `write_error` instead of printing a traceback."""

    def __init__(self, path: Path, what: str):
        super().__init__(path)
        self.what = what

    def handleError(self, record: logging.LogRecord) -> None:
        error = write_error(sys.exc_info()[1], self.baseFilename, self.what)
        if error is None:
            super().handleError(record)
            return
        raise error


def _append(handler: _LogFileHandler, line: str) -> None:
    handler.acquire()
    try:
        handler.stream.write(line + "\n")
        handler.flush()
    except OSError as exc:
        raise (write_error(exc, handler.baseFilename, handler.what) or exc) from None
    finally:
        handler.release()


def save_torch(obj: Any, path: str | os.PathLike, what: str = "files") -> None:
    """torch.save, atomically. The file is written through a Python file object, so that a failed write
    keeps its OSError (and errno) as the context of torch's error."""
    import torch  # torch-free module: the report writes through it without torch

    with atomic_path(path, what) as tmp, open(tmp, "wb") as fh:
        torch.save(obj, fh)


class _NoLock:
    def close(self) -> None:
        pass


def flock(path: str | os.PathLike, shared: bool = False, wait: bool = True, patience: float = 0.0):
    """Hold an advisory lock on the file `path` (created empty if missing) until the returned object's
    `close()`, or until the process ends: exclusive, or shared with `shared`. With `wait=False`, None when
    another process holds a conflicting lock, after trying again for `patience` seconds (so that the instant
    `lock_held` of another process takes to test the lock is not taken for a holder). Where flock does not exist
    or fails (some network file systems), nothing is locked."""
    try:
        import fcntl  # optional: POSIX only
    except ImportError:
        return _NoLock()
    ensure_dir(Path(path).parent)
    deadline = time.monotonic() + patience
    while True:
        handle = open(path, "a")  # noqa: SIM115 - the lock lives as long as the open file
        try:
            fcntl.flock(handle.fileno(),
                        (fcntl.LOCK_SH if shared else fcntl.LOCK_EX) | (0 if wait else fcntl.LOCK_NB))
        except BlockingIOError:
            handle.close()
            if time.monotonic() >= deadline:
                return None
            time.sleep(0.02)
            continue
        except OSError:
            handle.close()
            return _NoLock()
        return handle


def lock_current(path: str | os.PathLike, patience: float = 0.0, changing: str | None = None):
    """An exclusive lock on the file `path` (made if missing, with its folders) that is still the file at `path`
    once locked, as `flock(path, wait=False, patience=patience)` returns it: None when another process holds it.
    A lock file that its holder removes as it releases it can be locked just after its removal, or be removed
    between the making of its folder and its opening: then the new file is locked instead. After 100 such
    changes, an HparrError (`changing`, or "cannot lock PATH: it keeps changing")."""
    for _ in range(100):
        try:
            handle = flock(path, wait=False, patience=patience)
        except FileNotFoundError:  # its folder went with a holder that released it meanwhile: make it again
            continue
        if handle is None or not hasattr(handle, "fileno"):  # held; or a file system without flock: no lock
            return handle
        with contextlib.suppress(FileNotFoundError):
            if os.stat(path).st_ino == os.fstat(handle.fileno()).st_ino:
                return handle
        handle.close()  # locked a file that its holder removed as it released it
    raise HparrError(changing or f"cannot lock {path}: it keeps changing")


def write_in_place(handle, data: bytes) -> None:
    """Replace the content of the file that `handle` (from `flock`) locks with `data`, in place: an atomic rename
    would leave the lock on the old file, so a reader retries a torn read (`read_record`). An OSError (a full
    disk, ...) is the caller's."""
    os.ftruncate(handle.fileno(), 0)
    os.write(handle.fileno(), data)


def write_holder(handle, record: Mapping[str, Any]) -> None:
    """Write the record of a lock's holder (pid, host, ...) into the file that `handle` locks, as one line of
    JSON (`write_in_place`); `read_record` reads it back and `holder_text` names the holder from it."""
    write_in_place(handle, (json.dumps(record) + "\n").encode())


def read_record(path: str | os.PathLike, tries: int = 5) -> dict[str, Any] | None:
    """The JSON record in the lock file `path` (`write_holder`): None when there is no such file; {} when it
    cannot be read whole after `tries` tries 20 ms apart (its holder is writing it, or it is not JSON)."""
    for _ in range(tries):
        try:
            doc = json.loads(Path(path).read_text())
            return doc if isinstance(doc, dict) else {}
        except FileNotFoundError:
            return None
        except (OSError, ValueError):
            time.sleep(0.02)  # its holder is writing it
    return {}


def holder_text(doc: Mapping[str, Any] | None) -> str:
    """The holder of a lock, from its record (`read_record`), for the message that refuses a second process:
    "pid 12 on host: hparr train ..." (the command cut at 300 characters), or "a process that did not say
    which" where there is no record to read."""
    if not doc:
        return "a process that did not say which"
    command = str(doc.get("command", "?"))
    return (f"pid {doc.get('pid', '?')} on {doc.get('host', '?')}: "
            f"{command if len(command) <= 300 else command[:300] + ' ...'}")


def lock_held(path: str | os.PathLike) -> bool | None:
    """Whether a process (this one included) holds an exclusive `flock` lock on the file `path`, tested by
    taking a shared lock and dropping it at once; creates nothing. False when the file does not exist; None
    where locks cannot be tested (no flock, or a file system without it)."""
    try:
        import fcntl  # optional: POSIX only
    except ImportError:
        return None
    try:
        handle = open(path, "rb")  # noqa: SIM115 - closed below
    except FileNotFoundError:
        return False
    except OSError:
        return None
    with handle:
        try:
            fcntl.flock(handle.fileno(), fcntl.LOCK_SH | fcntl.LOCK_NB)
        except BlockingIOError:
            return True
        except OSError:
            return None
        return False


def file_stat(path: str | os.PathLike) -> tuple[int, int]:
    """(size, mtime in ns) of a file, or of a folder of shards (their total size, the newest mtime): the part of
    a checkpoint's identity that is read without opening it."""
    path = Path(path)
    if path.is_dir():
        stats = [p.stat() for p in sorted(path.iterdir()) if p.is_file()]
        return sum(s.st_size for s in stats), max((s.st_mtime_ns for s in stats), default=0)
    st = path.stat()
    return st.st_size, st.st_mtime_ns
