"""The run directory of a training run: one run per run directory (the settings that change the weights,
compared with those its snapshots record) and one writer at a time (an exclusive lock that names its holder)."""
from __future__ import annotations

import contextlib
import logging
import os
import shlex
import socket
import sys
import weakref
from pathlib import Path
from typing import Any, Callable, Mapping

from .. import files, layout
from ..checkpoints import torch_load
from ..data import source_key
from ..errors import HparrError, UsageError
from ..layout import SNAPSHOT_SUFFIXES
from ..results import SNAPSHOT_FORMAT

log = logging.getLogger("hparr.train")

# --- one run per run directory --------------------------------------------------------------------

class _Ignored:
    """A setting that has no effect in a run (momentum under Adam, the noise seed without noise, ...)."""

    def __repr__(self) -> str:
        return "ignored"


IGNORED = _Ignored()


def _sgd(c: Mapping[str, Any]) -> bool:
    return c.get("optimizer") == "sgd"


def _has_validation_split(c: Mapping[str, Any]) -> bool:
    return (c.get("data.split") or 0) > 0


def _when(condition: Callable[[Mapping[str, Any]], bool]) -> Callable[[Mapping[str, Any], Any], Any]:
    """The setting's value where `condition` holds for the run, else IGNORED (it has no effect)."""
    return lambda c, value: value if condition(c) else IGNORED


def _schedule(c: Mapping[str, Any], value: Any) -> Any:
    """StepLR runs only under SGD with both --lr-step and --lr-decay > 0; otherwise the schedule is off (0)."""
    if not _sgd(c):
        return IGNORED
    on = (c.get("lr_step") or 0) > 0 and (c.get("lr_decay") or 0) > 0
    return value if on else 0


# The settings that change the weights a training run produces, as its snapshots record them: the key in the
# snapshot's "settings" ("data." for a data option) or "seeds" ("seeds.": the seeds as resolved, since an
# unset --seed is drawn and unset data seeds are derived from it), and how its value counts in a run (None:
# as it is; a rule may make it IGNORED where it has no effect, which is then not compared). Everything else
# leaves the weights of every epoch as they are: where files go (--models-path, --tb-logdir, --log,
# --data-path), the snapshot schedule, --epochs (the lr schedule counts epochs from the start, so a longer run
# passes through the same weights), --kill-plateaus, --train-acc, the device and the arithmetic (--cuda, --amp,
# --channels-last, --sync-bn), --workers and the progress bar.
WEIGHT_SETTINGS: tuple[tuple[str, Callable[[Mapping[str, Any], Any], Any] | None], ...] = (
    ("arch", None), ("pretrained", None), ("weights", None),
    ("data.dataset", None), ("data.dataset_args", None), ("data.input_size", None), ("data.source", None),
    ("data.subsample_classes", None),
    ("seeds.class_sample_seed", _when(lambda c: (c.get("data.subsample_classes") or 0) > 0)),
    ("data.noise", None), ("seeds.noise_seed", _when(lambda c: (c.get("data.noise") or 0) != 0)),
    ("data.train_size", None), ("seeds.train_size_seed", _when(lambda c: c.get("data.train_size") is not None)),
    ("data.split", None), ("data.stratified", _when(_has_validation_split)),
    ("data.shuffle", _when(_has_validation_split)),
    ("seeds.split_seed", _when(lambda c: _has_validation_split(c) and bool(c.get("data.shuffle")))),
    ("data.augmentation", None), ("data.unnormalize", None),
    ("seeds.seed", None), ("batch_size", None), ("optimizer", None), ("lr", None),
    ("momentum", _when(_sgd)), ("weight_decay", None), ("lr_step", _schedule), ("lr_decay", _schedule),
    # a fresh start at a later epoch numbers (and schedules) its epochs differently; a resume takes its
    # epoch from the snapshot
    ("start_epoch", _when(lambda c: not c.get("resume_from"))),
)
_MISSING = object()


def weight_configuration(settings: Mapping[str, Any], seeds: Mapping[str, Any],
                         data: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """The WEIGHT_SETTINGS of a run from its settings (TrainSettings as a dict, as snapshots record them), its
    resolved seeds and the record of its data (`Data.meta`, a snapshot's "data"), whose `source` identifies an
    image folder's or a factory's data by content; a setting without effect in this run is IGNORED, one not
    recorded is left out."""
    flat: dict[str, Any] = {k: v for k, v in settings.items() if k != "data"}
    flat.update({f"data.{k}": v for k, v in (settings.get("data") or {}).items()})
    flat.update({f"seeds.{k}": v for k, v in (seeds or {}).items()})
    source = source_key((data or {}).get("source"))
    if source is not None:
        flat["data.source"] = source
    config = {}
    for key, rule in WEIGHT_SETTINGS:
        value = flat.get(key, _MISSING)
        if value is not _MISSING:
            config[key] = value if rule is None else rule(flat, value)
    return config


def flag_name(key: str) -> str:
    """The command-line flag of a WEIGHT_SETTINGS key ("data.noise" -> "--noise", "seeds.seed" -> "--seed"), or
    what else it is ("data.source": the data itself, its files' content)."""
    if key == "data.source":
        return "the data"
    return "--" + key.rsplit(".", 1)[-1].replace("_", "-")


def _shown(value: Any) -> str:
    if isinstance(value, bool):
        return "on" if value else "off"
    return "unset" if value is None else str(value)


def configuration_differences(recorded: Mapping[str, Any], current: Mapping[str, Any]) -> list[str]:
    """The settings that differ between two weight configurations, as "--flag A there, B here"; a setting
    that one of them does not record or that has no effect in one of them is not compared."""
    out = []
    for key, _ in WEIGHT_SETTINGS:
        a, b = recorded.get(key, IGNORED), current.get(key, IGNORED)
        if a is IGNORED or b is IGNORED or a == b:
            continue
        out.append(f"{flag_name(key)} {_shown(a)} there, {_shown(b)} here")
    return out


def other_configurations(run_dir: str | os.PathLike, config: Mapping[str, Any]) -> list[tuple[Path, list[str]]]:
    """The snapshots in `run_dir` that record a weight configuration other than `config`, each with the
    differences. Files that record none (the original code's, bare weights, unreadable ones) are not
    compared. Only the snapshots' metadata is read (memory-mapped)."""
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        return []
    found = []
    for path in sorted(p for p in run_dir.iterdir()
                       if p.suffix in SNAPSHOT_SUFFIXES and not p.name.startswith(".") and p.is_file()):
        try:
            obj = torch_load(path, mmap=True)
        except HparrError:
            continue
        ours = isinstance(obj, dict) and obj.get("format") == SNAPSHOT_FORMAT
        if not (ours and isinstance(obj.get("settings"), dict)):
            continue
        seeds = obj.get("seeds") if isinstance(obj.get("seeds"), dict) else {}
        data = obj.get("data") if isinstance(obj.get("data"), dict) else None
        differences = configuration_differences(weight_configuration(applied_settings(obj), seeds, data), config)
        if differences:
            found.append((path, differences))
    return found


def applied_settings(snapshot: Mapping[str, Any]) -> dict[str, Any]:
    """The settings a snapshot of hparr records, with the weight decay that its optimizer applied where the
    optimizer's state records it: Adam once ignored --weight-decay, so a snapshot of that time records the
    default 1e-4 while its optimizer applied none."""
    settings = dict(snapshot["settings"])
    state = snapshot.get("optimizer_state_dict")
    groups = state.get("param_groups") if isinstance(state, Mapping) else None
    if isinstance(groups, list) and groups and isinstance(groups[0], Mapping) and "weight_decay" in groups[0]:
        settings["weight_decay"] = groups[0]["weight_decay"]
    return settings


def claim(run_dir: Path, others: list[tuple[Path, list[str]]], overwrite: bool, seed_drawn: bool,
          remove: bool = True) -> None:
    """Refuse (before anything is written) to train into `run_dir` when it holds snapshots of another
    configuration (`others`, from `other_configurations`); with `overwrite`, remove them (where `remove`: the
    process that writes) and the replaced run's tracked statistics, and say so."""
    if not others:
        return
    differences = "; ".join(others[0][1])
    if not overwrite:
        hint = "; --seed was not given, so a new seed was drawn" if seed_drawn and "--seed " in differences else ""
        raise HparrError(f"{run_dir} already holds snapshots of another configuration ({differences}"
                         f"{hint}); pass --overwrite to replace that run, rerun with its flags and "
                         "--resume-from auto to continue it, or choose another --models-path")
    if remove:
        names = [p.name for p, _ in others]
        log.warning("--overwrite: replacing the run in %s (%s): removing its %d snapshot(s) %s", run_dir,
                    differences, len(names), ", ".join(names[:6]) + (" ..." if len(names) > 6 else ""))
        for path, _ in others:
            files.remove(path)
        files.remove(run_dir / layout.TRACKING_NAME)  # the replaced run's tracked statistics go with it


# --- one writer per run directory -----------------------------------------------------------------

LOCK_NAME = layout.TRAIN_LOCK_NAME  # in the run directory while a run writes there: who holds it, as JSON


class RunDirectoryLock:
    """An exclusive lock on a run directory (flock on its LOCK_NAME file), held until `release()` or until the
    process ends: a process killed with -9 leaves the file, but not the lock. The file records the holder's
    pid, host and command line, which a refused run names. `release()` removes the file, and the folders that
    `acquire` made if they are still empty, so that a run that wrote nothing leaves nothing."""

    def __init__(self, path: Path, handle, made: list[Path]):
        self.path = path
        self._release = weakref.finalize(self, _unlock, path, handle, made)

    @classmethod
    def acquire(cls, run_dir: str | os.PathLike) -> RunDirectoryLock:
        """Lock `run_dir` (made if missing), or raise a UsageError naming the process that holds it."""
        run_dir = Path(run_dir)
        made = files.missing_folders(run_dir)
        path = run_dir / LOCK_NAME
        handle = files.lock_current(path,
                                    changing=f"cannot lock {run_dir}: its lock file {path.name} keeps changing")
        if handle is None:
            raise UsageError(f"{run_dir} is in use by another training run ({holder(path)}); wait for it to "
                             "end, or choose another --models-path")
        if not hasattr(handle, "fileno"):  # a file system without flock: nothing is locked
            return cls(path, handle, [])
        try:  # who holds it, for the message of a refused run (unbuffered); a full disk leaves it unsaid
            files.write_holder(handle, {"pid": os.getpid(), "host": socket.gethostname(),
                                        "command": shlex.join(sys.orig_argv)})
        except OSError:
            with contextlib.suppress(OSError):
                os.ftruncate(handle.fileno(), 0)
        return cls(path, handle, made)

    def release(self) -> None:
        self._release()


def _unlock(path: Path, handle, made: list[Path]) -> None:
    if hasattr(handle, "fileno"):
        try:
            if os.stat(path).st_ino == os.fstat(handle.fileno()).st_ino:
                path.unlink()
        except OSError:
            pass
    handle.close()
    files.remove_if_empty(made)


def holder(path: Path) -> str:
    """Who holds the lock file `path`, as its holder recorded it ("pid 12 on host: hparr train ..."); its record
    is waited for up to a second (the holder writes it just after it locks)."""
    return files.holder_text(files.read_record(path, tries=50))
