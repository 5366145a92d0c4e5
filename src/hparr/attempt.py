"""Who is running in an output folder, and how the last run there ended: the attempt record.

`Attempt(OUT)` wraps a command that writes into OUT (`hparr reproduce`, so every cell of a study, whatever runs
it). While it runs, the file OUT/.attempt.json names its process (pid, host, command, start) and the process
holds an exclusive `flock` on it; when it ends, the file says when and how: with no error, or with the first line
of its error. A command refused by its checks (bad input) leaves the file as it was. A process that dies without
ending (kill -9, out of memory, a cancelled job, a node that fails)
leaves the record without an end, and the kernel drops its lock. `read_attempt` tells these apart without
timeouts or heartbeats: the lock is held exactly as long as the process lives, and file locks reach across hosts
on the file systems that support them (NFS does); where they cannot be tested, the process id is checked on its
own host. Torch-free.
"""
from __future__ import annotations

import json
import os
import shlex
import socket
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from . import files
from .errors import HparrError, UsageError, first_line
from .layout import ATTEMPT_NAME


@dataclass
class AttemptRecord:
    """The record of the latest attempt at a folder. held: whether a process holds its lock now (None where
    file locks cannot be tested); ended: the time it ended (None: it is running, or died without ending);
    error: the first line of the error it ended with (None: none)."""

    pid: int | None
    host: str | None
    command: str
    started: float | None
    ended: float | None
    error: str | None
    held: bool | None

    @property
    def running(self) -> bool | None:
        """Whether its process is running now (None: cannot be told here)."""
        if self.ended is not None:
            return False
        if self.held is not None:
            return self.held
        if self.pid and self.host == socket.gethostname():
            return pid_alive(self.pid)
        return None

    def who(self) -> str:
        """"pid 12 on host"."""
        return f"pid {self.pid if self.pid is not None else '?'} on {self.host or '?'}"


def pid_alive(pid: int) -> bool:
    """Whether a process of this id exists on this host."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's
        return True
    except OSError:
        return False
    return True


def read_attempt(out: str | os.PathLike) -> AttemptRecord | None:
    """The record of the latest attempt at the folder `out`, or None when none ran there (or one that failed
    before writing anything removed it)."""
    found = read_lock_record(Path(out) / ATTEMPT_NAME)
    return None if found is None else found[0]


def read_lock_record(path: str | os.PathLike) -> tuple[AttemptRecord, dict[str, Any]] | None:
    """The record of the holder of the lock file `path` (an attempt record, or another lock that names its holder
    the same way: a study's), with the whole JSON document it was read from (for the fields of other records: a
    study's cells); None when there is no such file. A document that cannot be read whole is {} (its record
    then names no one)."""
    path = Path(path)
    held = files.lock_held(path)
    doc = files.read_record(path)
    if doc is None:
        return None
    if held is False and doc.get("ended") is None:
        held = files.lock_held(path)  # a run that began between the test and the reading holds it now

    def number(key: str, kind: type) -> Any:
        value = doc.get(key)
        return kind(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else None

    return AttemptRecord(pid=number("pid", int), host=doc.get("host"), command=str(doc.get("command", "")),
                         started=number("started", float), ended=number("ended", float),
                         error=doc.get("error") if isinstance(doc.get("error"), str) else None, held=held), doc


def clock(when: float | None) -> str:
    """A time of a record, as local date and time."""
    return "?" if when is None else time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(when))


_recording: set[str] = set()  # the records this process keeps: an Attempt inside another on the same folder is idle


class Attempt:
    """`with Attempt(out) as attempt:` keeps the attempt record of the folder `out` (made if missing) while the
    block runs; see the module's text. `attempt.begin()` says that the checks are done and the work begins: a block
    that fails before it is a refusal, which leaves the record as it was before (or no record, and none of the
    folders made for it); a block that fails after it leaves its error in the record. A second process in the
    same folder is refused (UsageError) naming the first. Inside another Attempt on the same folder (a study's
    cell, which begins at once, around `hparr reproduce`), and in the ranks other than 0 of torchrun, it is idle."""

    def __init__(self, out: str | os.PathLike):
        self.out = Path(out)
        self.path = self.out / ATTEMPT_NAME
        self._key = os.path.abspath(self.path)
        self._handle = None
        self._made: list[Path] = []
        self._before: bytes | None = None
        self._record: dict[str, Any] = {}
        self._begun = False

    def __enter__(self) -> Attempt:
        if self._key in _recording or os.environ.get("RANK", "0") != "0":
            return self
        made = files.missing_folders(self.out)
        # patience: a `hparr study --status` tests the lock for an instant
        handle = files.lock_current(self.path, patience=0.5)
        if handle is None:
            who = files.holder_text(files.read_record(self.path))
            raise UsageError(f"{self.out} is in use by another run ({who}); wait for it to end, or choose "
                             "another --out")
        self._handle, self._made = handle, made
        _recording.add(self._key)
        try:
            self._before = self.path.read_bytes() or None  # an empty file: the one flock just made
            self._record = {"pid": os.getpid(), "host": socket.gethostname(),
                            "command": shlex.join(sys.orig_argv), "started": time.time()}
            self._write_in_place((json.dumps(self._record) + "\n").encode())
        except OSError as exc:
            self._release()
            raise (files.write_error(exc, self.path, "files") or exc) from None
        except BaseException:
            self._release()
            raise
        return self

    def begin(self) -> None:
        """The checks are done and the work begins: an error from here on is the run's, and stays recorded."""
        self._begun = True

    def __exit__(self, exc_type, exc, tb) -> None:
        if self._handle is None:
            return
        try:
            if exc is not None and not self._begun:  # refused: the folder is left as it was
                if self._before is not None:
                    self._write_in_place(self._before)
                else:
                    files.remove(self.path)
                    files.remove_if_empty(self._made)
            else:  # atomically: a reader sees the record of the run or the record of its end
                error = None if exc is None else "interrupted" if isinstance(exc, KeyboardInterrupt) else \
                    f"exited with code {exc.code}" \
                    if isinstance(exc, SystemExit) else first_line(exc)
                files.write_json(self.path, {**self._record, "ended": time.time(), "error": error})
        except (OSError, HparrError):
            pass  # a record that cannot be written says the run died, which is near enough; its own error stands
        finally:
            self._release()

    def _write_in_place(self, data: bytes) -> None:
        """Into the locked file itself (`files.write_in_place`); where nothing is locked, atomically."""
        if hasattr(self._handle, "fileno"):
            files.write_in_place(self._handle, data)
        else:
            files.write_bytes(self.path, data)

    def _release(self) -> None:
        self._handle.close()
        self._handle = None
        _recording.discard(self._key)
