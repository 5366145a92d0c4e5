"""Loading checkpoints safely: torch.load(weights_only=True), the model state_dict of every format, epoch
labels, finding a run's snapshot files, and the checks of a snapshot against the model it is loaded into."""
from __future__ import annotations

import glob
import logging
import numbers
import os
import pickle
import pickletools
import re
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Mapping

import torch

from .. import layout
from ..errors import HparrError, UsageError, first_line
from ._formats import CHECKPOINT_SUFFIXES, SHARD_INDEX, checkpoint_format, open_safetensors, open_sharded, rename
from .onnx_file import read_onnx

log = logging.getLogger("hparr.checkpoints")


def torch_load(path: str | os.PathLike, mmap: bool = False) -> Any:
    """torch.load with weights_only=True, turning every failure into a one-line HparrError.

    `mmap` maps the file instead of reading it (zip-format files; others are read whole), so that
    only the tensors used are read from disk.
    """
    path = Path(path)
    if not path.is_file():
        raise HparrError(f"snapshot not found: {path}")
    fmt = checkpoint_format(path)
    if fmt not in ("torch-zip", "torch-pickle"):  # another format says so in one line
        raise HparrError(f"{path} is a{'n' if fmt == 'onnx' else ''} {fmt} file, not a torch snapshot: read it "
                         "with read_checkpoint")
    try:
        if path.name.endswith(".safetensors"):
            # torch.load would hand a path with this name to the safetensors library: the content decides here
            with open(path, "rb") as f:
                return torch.load(f, map_location="cpu", weights_only=True)
        return torch.load(path, map_location="cpu", weights_only=True, mmap=mmap and zipfile.is_zipfile(path))
    except pickle.UnpicklingError as exc:
        if re.search(r"Unsupported (global|class)|GLOBAL|not an allowed global", str(exc)):
            whole = pickled_object_class(path)
            if whole is not None:
                raise HparrError(f"refused to load {path}: it is a whole pickled object ({whole}), as "
                                 "torch.save(model) writes, and loading it could run code; save its weights "
                                 "instead: torch.save(model.state_dict(), PATH)") from None
            raise HparrError(f"refused to load {path}: it holds pickled objects other than tensors and "
                             "plain values, and loading it could run code") from None
        raise HparrError(f"truncated or corrupt snapshot {path}: not a tensor snapshot") from None
    except Exception as exc:  # noqa: BLE001 - a torn file fails in many ways, all of them "corrupt"
        raise HparrError(f"truncated or corrupt snapshot {path}: {first_line(exc).split('. ')[0]}") from None


def pickled_object_class(path: str | os.PathLike) -> str | None:
    """The class ("module.Name") of the object a torch file pickles at its top, when that object is an
    instance of a class other than a dict (a whole model saved with torch.save(model)); else None. The
    pickle is only scanned (pickletools), never loaded."""
    try:
        if zipfile.is_zipfile(path):
            with zipfile.ZipFile(path) as archive:
                name = next((n for n in archive.namelist() if n.endswith("/data.pkl") or n == "data.pkl"), None)
                if name is None:
                    return None
                data = archive.read(name)
        else:
            with open(path, "rb") as f:
                data = f.read(1 << 16)
        strings: list[str] = []
        for op, arg, _ in pickletools.genops(data):
            if op.name in ("PROTO", "FRAME", "MARK"):
                continue
            if op.name in ("SHORT_BINUNICODE", "BINUNICODE", "UNICODE", "MEMOIZE", "BINPUT", "PUT"):
                if isinstance(arg, str):
                    strings.append(arg)
                continue
            if op.name == "GLOBAL":
                found = str(arg).replace(" ", ".")
            elif op.name == "STACK_GLOBAL" and len(strings) >= 2:
                found = f"{strings[-2]}.{strings[-1]}"
            else:
                return None  # a dict, a list, a number: not a pickled object
            return None if found in ("collections.OrderedDict", "builtins.dict") else found
    except (OSError, ValueError, zipfile.BadZipFile, pickle.PickleError, EOFError):
        return None
    return None


STATE_DICT_KEYS = ("model_state_dict", "state_dict", "model", "net")


def state_dict_of(obj: Any, path: str | os.PathLike = "<snapshot>") -> dict[str, torch.Tensor]:
    """The model state_dict inside a loaded snapshot (ours, the original's .tar, or a bare state_dict)."""
    return split_state_dict(obj, path)[0]


def split_state_dict(obj: Any, path: str | os.PathLike = "<snapshot>") -> tuple[dict[str, torch.Tensor], list[str]]:
    """(the model state_dict inside a loaded snapshot, the names of the entries beside its tensors that are not
    tensors and are left out): a state_dict as a user's own loop may save it, `{**model.state_dict(), "step":
    123}`, is read; a dict whose tensors hold no `*weight` beside other entries is no state_dict."""
    if isinstance(obj, dict):
        for key in STATE_DICT_KEYS:  # ours and the original's, Lightning's, and popular CIFAR repositories'
            if isinstance(obj.get(key), dict):
                obj = obj[key]
                break
        tensors = {k: v for k, v in obj.items() if isinstance(v, torch.Tensor)}
        others = [str(k) for k, v in obj.items() if not isinstance(v, torch.Tensor)]
        if tensors and (not others or any(str(k).endswith("weight") for k in tensors)):
            return clean_keys(tensors), others
    raise HparrError(f"{path} holds no model state_dict")


def clean_keys(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Drop DataParallel/DDP/compile wrappers from keys (`features.module.0.weight` -> `features.0.weight`)."""
    return dict(_strip_wrappers(state))


def load_state_dict_file(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """Safely read the model weights of any supported checkpoint file, all of them (see `load_state`)."""
    return dict(load_state(path, mmap=False))


def load_weights(model: torch.nn.Module, state: dict[str, torch.Tensor], source: str = "snapshot") -> None:
    """Load `state` into `model`, or raise the error of `check_state` naming the keys and shapes that differ."""
    check_state({k: tuple(v.shape) for k, v in model.state_dict().items()}, state, source)
    model.load_state_dict(state)


def load_model_weights(model: torch.nn.Module, path: str | os.PathLike, prefix: str | None = None) -> dict[str, Any]:
    """Load a checkpoint (any format of `read_checkpoint`) into `model`; return the whole loaded object
    (for its metadata; {} for safetensors)."""
    ckpt = read_checkpoint(path, mmap=False)
    load_weights(model, dict(match_prefix(ckpt.state, model, prefix, source=str(path))), source=str(path))
    return ckpt.obj if isinstance(ckpt.obj, dict) else {}


def recorded_normalization(meta: Mapping[str, Any]) -> dict[str, Any] | None:
    """The normalization a snapshot records ({"mean", "std", "normalized"}), or None.

    Snapshots of earlier hparr versions also kept a copy under "data"; the top-level one is read first.
    """
    norm = meta.get("normalization")
    data = meta.get("data") if isinstance(meta.get("data"), dict) else {}
    older = data.get("normalization") if isinstance(data.get("normalization"), dict) else {}
    if not isinstance(norm, dict):
        return dict(older) or None
    return {**older, **norm}


# --- epoch labels ------------------------------------------------------------------------------

def epoch_from_filename_or_raise(path: str | os.PathLike) -> int:
    """`layout.epoch_from_filename` (the original file-name rule, its one home), raising an HparrError for a name
    without a number instead of returning None."""
    epoch = layout.epoch_from_filename(path)
    if epoch is None:
        raise HparrError(f"cannot tell the epoch of {path}: its name does not end in _<number>")
    return epoch


def snapshot_epoch(obj: Any, path: str | os.PathLike) -> int:
    """Completed epochs of a snapshot: from its own metadata, else from the file-name rule."""
    if isinstance(obj, dict):
        if "epochs_completed" in obj:
            return int(obj["epochs_completed"])
        if "epoch" in obj and "model_state_dict" in obj:  # the original .tar: 0-based finished epoch
            return int(obj["epoch"]) + 1
    try:
        return epoch_from_filename_or_raise(path)
    except HparrError:
        # a name without a number: the epoch the checkpoint records itself (Lightning's, or the `epoch` of a
        # {"net": ..., "epoch": ...} dict of popular CIFAR repositories), as it records it
        recorded = obj.get("epoch") if isinstance(obj, dict) else None
        if isinstance(recorded, numbers.Integral) and not isinstance(recorded, bool):
            return int(recorded)
        raise


def snapshot_epoch_or_none(obj: Any, path: str | os.PathLike) -> int | None:
    """`snapshot_epoch`, or None for a file whose metadata and name tell no epoch (`model.safetensors`)."""
    try:
        return snapshot_epoch(obj, path)
    except HparrError:
        return None


def find_snapshots(specs: str | os.PathLike | Iterable[str | os.PathLike]) -> list[Path]:
    """Expand files, directories and globs into checkpoint files, in a stable order.

    A directory holding model.safetensors.index.json is one (sharded) checkpoint; another directory
    gives its files named like checkpoints (.pt, .tar, .pth, .safetensors, .ckpt, .bin).
    """
    if isinstance(specs, (str, os.PathLike)):
        specs = [specs]
    found: list[Path] = []
    for spec in specs:
        spec = str(spec)
        path = Path(spec)
        if path.is_dir() and (path / SHARD_INDEX).is_file():
            found.append(path)
        elif path.is_dir():
            found += sorted(p for p in path.iterdir() if p.is_file() and p.suffix in CHECKPOINT_SUFFIXES
                            and not p.name.startswith("."))
        elif path.is_file():
            found.append(path)
        elif glob.has_magic(spec):
            found += sorted(Path(p) for p in glob.glob(spec) if Path(p).is_file())
        else:
            raise UsageError(f"no such snapshot file or directory: {spec}")
    if not found:
        raise UsageError(f"no snapshot files found in {', '.join(map(str, specs))}")
    seen: set[Path] = set()
    return [p for p in found if not (p in seen or seen.add(p))]


def newest_snapshot(directory: str | os.PathLike, exclude: Iterable[str | os.PathLike] = ()) -> Path:
    """The complete snapshot of a run directory with the most completed epochs (files in `exclude` aside)."""
    best: tuple[int, Path] | None = None
    skip = {Path(p) for p in exclude}
    for path in find_snapshots(directory):
        if path in skip:
            continue
        try:
            epoch = snapshot_epoch(torch_load(path, mmap=True), path)
        except HparrError:
            continue  # a torn or foreign file is never the one to resume from
        if best is None or epoch >= best[0]:
            best = (epoch, path)
    if best is None:
        raise HparrError(f"no loadable snapshot in {directory}")
    return best[1]


@dataclass(frozen=True)
class ModelConfig:
    """What a model is built from, besides its seed."""

    arch: str
    num_classes: int
    in_channels: int
    input_size: int


def snapshot_config(obj: Any, default: ModelConfig, source: str) -> ModelConfig:
    """The model configuration of a snapshot: its own metadata where present, else `default`.

    Metadata that contradicts the requested architecture raises an HparrError.
    """
    meta = obj if isinstance(obj, dict) else {}
    arch = meta.get("arch")
    if isinstance(arch, str) and arch.removeprefix("torchvision:") != default.arch.removeprefix("torchvision:"):
        raise HparrError(f"{source} is a snapshot of {arch}, not of --arch {default.arch}")

    def pick(key: str, value: int) -> int:
        v = meta.get(key)
        return int(v) if isinstance(v, numbers.Integral) and not isinstance(v, bool) else value

    return ModelConfig(default.arch, pick("num_classes", default.num_classes),
                       pick("in_channels", default.in_channels), pick("input_size", default.input_size))


def check_metadata(obj: Any, source: str, dataset: str | None = None, seed: int | None = None) -> None:
    """Raise an HparrError if a snapshot's own metadata names another dataset or seed than requested."""
    meta = obj if isinstance(obj, dict) else {}
    if dataset is not None and isinstance(meta.get("dataset"), str) and meta["dataset"].lower() != dataset.lower():
        raise HparrError(f"{source} was trained on {meta['dataset']}, not on --dataset {dataset}")
    seeds = meta.get("seeds")
    own = seeds.get("seed") if isinstance(seeds, dict) else None
    if seed is not None and isinstance(own, int) and own != seed:
        raise HparrError(f"{source} was trained with seed {own}, not --seed {seed}")


def check_state(reference: Mapping[str, tuple[int, ...]], state: Mapping[str, Any], source: str,
                extra_ok: bool = False) -> list[str]:
    """Raise an HparrError naming the keys/shapes of `state` that differ from the model's (a strict load);
    with `extra_ok`, tensors the model does not have are tolerated: returns their keys."""
    missing = [k for k in reference if k not in state]
    unexpected = [k for k in state if k not in reference]
    extra, unexpected = (unexpected, []) if extra_ok else ([], unexpected)
    shapes = [f"{k}: snapshot {tuple(state[k].shape)} vs model {reference[k]}"
              for k in reference if k in state and tuple(state[k].shape) != reference[k]]
    if missing or unexpected or shapes:
        parts = [f"{label}: {', '.join(items[:4])}{' ...' if len(items) > 4 else ''}"
                 for label, items in (("shapes differ", shapes), ("missing keys", missing),
                                      ("unexpected keys", unexpected)) if items]
        raise HparrError(f"{source} does not match this architecture/class count ({'; '.join(parts)})")
    return extra


@dataclass
class Checkpoint:
    """A checkpoint file read by `read_checkpoint`.

    obj: the whole loaded object for the torch formats (a snapshot's metadata lives there), {} for
    safetensors and ONNX; state: its model state_dict, with DataParallel/DDP (`module.`) and torch.compile
    (`_orig_mod.`) wrappers removed from the keys (lazy for safetensors and ONNX: tensors are read on lookup;
    an ONNX model's are its graph's initializers and constants, by name); graph: an ONNX model's graph
    (`onnx_file.OnnxModel`), else None.
    """

    path: Path
    format: str
    obj: Any
    state: Mapping[str, torch.Tensor]
    graph: Any = None
    ignored: tuple[str, ...] = ()  # entries of the state_dict that are not tensors (a step counter), left out


_NAMED: set[tuple[str, int]] = set()  # the files whose left-out entries were named already in this process


def read_checkpoint(path: str | os.PathLike, mmap: bool = True, checkpoint: Checkpoint | None = None) -> Checkpoint:
    """Read any supported checkpoint: hparr's and the original code's snapshots, a bare state_dict,
    a Lightning .ckpt, a .safetensors file or a folder of shards, an ONNX model; only
    `torch.load(weights_only=True)`, the safetensors library and the onnx package ever read them. Entries of a
    state_dict that are not tensors are left out and named once in the log (`Checkpoint.ignored`).
    `checkpoint`: a file read already, returned as it is when it is the one at `path` (not read again)."""
    path = Path(path)
    if checkpoint is not None and checkpoint.path == path:
        return checkpoint
    fmt = checkpoint_format(path)
    if fmt == "onnx":
        graph = read_onnx(path)
        return Checkpoint(path, fmt, {}, graph.state(), graph)
    if fmt == "safetensors":
        return Checkpoint(path, fmt, {}, _strip_wrappers(open_safetensors(path)))
    if fmt == "sharded-safetensors":
        return Checkpoint(path, fmt, {}, _strip_wrappers(open_sharded(path)))
    obj = torch_load(path, mmap=mmap)
    state, ignored = split_state_dict(obj, path)
    key = (str(path.resolve()), path.stat().st_mtime_ns)
    if ignored and key not in _NAMED:
        _NAMED.add(key)
        log.warning("%s: ignored %d entr%s of its state_dict that %s: %s", path, len(ignored),
                    "y" if len(ignored) == 1 else "ies", "is not a tensor" if len(ignored) == 1 else "are not tensors",
                    listed(ignored))
    return Checkpoint(path, fmt, obj, state, ignored=tuple(ignored))


def listed(names: list[str], most: int = 6) -> str:
    """`names` joined by commas for a message, the first `most` of them and then how many there are in all."""
    return ", ".join(names[:most]) + (f" ... ({len(names)} in all)" if len(names) > most else "")


def _strip_wrappers(state: Mapping[str, Any]) -> Mapping[str, Any]:
    """`state` with the DataParallel/DDP (`module.`) and torch.compile (`_orig_mod.`) parts dropped from its
    keys; a lazy state stays lazy."""
    names = {".".join(p for p in key.split(".") if p not in ("module", "_orig_mod")): key for key in state}
    if all(new == old for new, old in names.items()):
        return state
    return rename(state, names)


def _reference_keys(reference: Any) -> list[str]:
    if isinstance(reference, torch.nn.Module):
        return list(reference.state_dict())
    return list(reference)


def match_prefix(state: Mapping[str, Any], reference: Any = None, prefix: str | None = None,
                 source: str = "checkpoint") -> Mapping[str, Any]:
    """`state` with a key prefix removed (`model.` of a Lightning module, `net.`, ...).

    With `prefix`, only the keys under it are kept, without it. Without, when some keys of `reference`
    (a model, a state_dict or key names) are missing, the prefix under which most of them are found is
    used; several prefixes holding the whole model are ambiguous (a UsageError: give the prefix).
    """
    if prefix:
        names = {k[len(prefix):]: k for k in state if k.startswith(prefix)}
        if not names:
            sample = ", ".join(list(state)[:3])
            raise HparrError(f"{source}: no key starts with --state-dict-prefix {prefix!r} (its keys look like "
                             f"{sample}{' ...' if len(state) > 3 else ''})")
        return rename(state, names)
    if reference is None:
        return state
    wanted = _reference_keys(reference)
    present = sum(k in state for k in wanted)
    if not wanted or present == len(wanted):
        return state
    probes = [k for k in wanted if k.endswith("weight")][:3] or wanted[:3]
    candidates = {key[:-len(probe)] for probe in probes for key in state
                  if key.endswith("." + probe) and key != probe}
    scores = {c: sum(c + k in state for k in wanted) for c in candidates}
    best = max(scores.values(), default=0)
    if best <= present:
        return state
    winners = sorted(c for c, s in scores.items() if s == best)
    if len(winners) > 1 and best == len(wanted):
        raise UsageError(f"{source}: the model's keys are found under several prefixes ({', '.join(winners)}); "
                         "choose one with --state-dict-prefix")
    chosen = winners[0]
    return rename(state, {k[len(chosen):]: k for k in state if k.startswith(chosen)})


def load_state(path: str | os.PathLike, prefix: str | None = None, reference: Any = None,
               mmap: bool = True, checkpoint: Checkpoint | None = None) -> Mapping[str, torch.Tensor]:
    """The model state_dict of any supported checkpoint file or folder (see `read_checkpoint`).

    `prefix` (`--state-dict-prefix`) or `reference` (the model, its state_dict or its keys, against
    which a prefix such as Lightning's `model.` is found) select and strip a key prefix. A .safetensors
    state is lazy: a tensor is read when it is looked up. `checkpoint`: a file read already, used when it is the
    one at `path` (not read again).
    """
    ckpt = read_checkpoint(path, mmap=mmap, checkpoint=checkpoint)
    return match_prefix(ckpt.state, reference, prefix, source=str(path))
