"""Snapshots: safe loading, the original code's names and layout, and epoch labels."""
from __future__ import annotations

import glob
import hashlib
import numbers
import os
import pickle
import pickletools
import re
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping

import torch

from . import files, layout, results
from .errors import HparrError, UsageError, first_line
from .layout import SNAPSHOT_SUFFIXES

# facts about the data that a snapshot of `hparr train` stores once, at its top level, not in its "data" record
TOP_LEVEL_FACTS = ("dataset", "num_classes", "in_channels", "image_size", "normalization", "versions")


def torch_load(path: str | os.PathLike, mmap: bool = False) -> Any:
    """torch.load with weights_only=True, turning every failure into a one-line HparrError.

    `mmap` maps the file instead of reading it (zip-format files; others are read whole), so that
    only the tensors used are read from disk.
    """
    path = Path(path)
    if not path.is_file():
        raise HparrError(f"snapshot not found: {path}")
    if checkpoint_format(path) not in ("torch-zip", "torch-pickle"):  # another format says so in one line
        raise HparrError(f"{path} is a safetensors file, not a torch snapshot: read it with read_checkpoint")
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
    if isinstance(obj, dict):
        for key in STATE_DICT_KEYS:  # ours and the original's, Lightning's, and popular CIFAR repositories'
            if isinstance(obj.get(key), dict):
                obj = obj[key]
                break
        if obj and all(isinstance(v, torch.Tensor) for v in obj.values()):
            return clean_keys(obj)
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


def save_snapshot(path: str | os.PathLike, payload: dict[str, Any]) -> None:
    """Atomically write a snapshot of tensors and plain Python values (a failed write: one HparrError)."""
    files.save_torch(payload, path, what="snapshots")


def data_record(data_meta: Mapping[str, Any]) -> dict[str, Any]:
    """What a snapshot stores under "data": the data's record without the facts kept at the top level."""
    return {k: v for k, v in data_meta.items() if k not in TOP_LEVEL_FACTS}


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

def epoch_from_filename(path: str | os.PathLike) -> int:
    """The original file-name rule (`layout.epoch_from_filename`); an error for a name without a number."""
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
        return epoch_from_filename(path)
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


def check_state(reference: Mapping[str, tuple[int, ...]], state: Mapping[str, Any], source: str) -> None:
    """Raise an HparrError naming the keys/shapes of `state` that differ from the model's (a strict load)."""
    missing = [k for k in reference if k not in state]
    unexpected = [k for k in state if k not in reference]
    shapes = [f"{k}: snapshot {tuple(state[k].shape)} vs model {reference[k]}"
              for k in reference if k in state and tuple(state[k].shape) != reference[k]]
    if missing or unexpected or shapes:
        parts = [f"{label}: {', '.join(items[:4])}{' ...' if len(items) > 4 else ''}"
                 for label, items in (("shapes differ", shapes), ("missing keys", missing),
                                      ("unexpected keys", unexpected)) if items]
        raise HparrError(f"{source} does not match this architecture/class count ({'; '.join(parts)})")


# --- one run per run directory --------------------------------------------------------------------

class _Ignored:
    """A setting that has no effect in a run (momentum under Adam, the noise seed without noise, ...)."""

    def __repr__(self) -> str:
        return "ignored"


IGNORED = _Ignored()


def _sgd(c: Mapping[str, Any]) -> bool:
    return c.get("optimizer") == "sgd"


def _split(c: Mapping[str, Any]) -> bool:
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
    ("data.dataset", None), ("data.subsample_classes", None),
    ("seeds.class_sample_seed", _when(lambda c: (c.get("data.subsample_classes") or 0) > 0)),
    ("data.noise", None), ("seeds.noise_seed", _when(lambda c: (c.get("data.noise") or 0) != 0)),
    ("data.train_size", None), ("seeds.train_size_seed", _when(lambda c: c.get("data.train_size") is not None)),
    ("data.split", None), ("data.stratified", _when(_split)), ("data.shuffle", _when(_split)),
    ("seeds.split_seed", _when(lambda c: _split(c) and bool(c.get("data.shuffle")))),
    ("data.augmentation", None), ("data.unnormalize", None),
    ("seeds.seed", None), ("batch_size", None), ("optimizer", None), ("lr", None),
    ("momentum", _when(_sgd)), ("weight_decay", _when(_sgd)), ("lr_step", _schedule), ("lr_decay", _schedule),
    # a fresh start at a later epoch numbers (and schedules) its epochs differently; a resume takes its
    # epoch from the snapshot
    ("start_epoch", _when(lambda c: not c.get("resume_from"))),
)
_MISSING = object()


def weight_configuration(settings: Mapping[str, Any], seeds: Mapping[str, Any]) -> dict[str, Any]:
    """The WEIGHT_SETTINGS of a run from its settings (TrainSettings as a dict, as snapshots record them) and
    its resolved seeds; a setting without effect in this run is IGNORED, one not recorded is left out."""
    flat: dict[str, Any] = {k: v for k, v in settings.items() if k != "data"}
    flat.update({f"data.{k}": v for k, v in (settings.get("data") or {}).items()})
    flat.update({f"seeds.{k}": v for k, v in (seeds or {}).items()})
    config = {}
    for key, rule in WEIGHT_SETTINGS:
        value = flat.get(key, _MISSING)
        if value is not _MISSING:
            config[key] = value if rule is None else rule(flat, value)
    return config


def flag_name(key: str) -> str:
    """The command-line flag of a WEIGHT_SETTINGS key ("data.noise" -> "--noise", "seeds.seed" -> "--seed")."""
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
        ours = isinstance(obj, dict) and obj.get("format") == results.SNAPSHOT_FORMAT
        if not (ours and isinstance(obj.get("settings"), dict)):
            continue
        seeds = obj.get("seeds") if isinstance(obj.get("seeds"), dict) else {}
        differences = configuration_differences(weight_configuration(obj["settings"], seeds), config)
        if differences:
            found.append((path, differences))
    return found


# --- what a result was computed from -----------------------------------------------------------------

HASH = "hash"  # the key of the hash in a checkpoint identity: "<algorithm>:<hex digest>"


def _hasher(algorithm: str | None = None):
    """(name, a new hash object): xxh3-128 (xxhash, 25 GB/s: under 1% of the analysis of a 100 MB file), or
    sha256 where xxhash is not installed or a result recorded it."""
    if algorithm in (None, "xxh3-128"):
        try:
            import xxhash

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


# --- one loader for every checkpoint format ---------------------------------------------------------

ZIP_MAGIC = b"PK\x03\x04"
SHARD_INDEX = "model.safetensors.index.json"
CHECKPOINT_SUFFIXES = (*SNAPSHOT_SUFFIXES, ".safetensors", ".ckpt", ".bin")
_MAX_SAFETENSORS_HEADER = 100_000_000  # the safetensors library's own limit
_KNOWN = ("a PyTorch zip or pickle file, a .safetensors file, or a folder of sharded .safetensors files "
          f"with {SHARD_INDEX}")


class LazyState(Mapping):
    """A state_dict whose tensors are read from disk only when they are looked up.

    `shape(key)` and `shapes()` come from the file's header and read no tensor; `read` records the keys
    whose tensors were read (each lookup reads that tensor's bytes only, from a memory-mapped file).
    """

    def __init__(self, keys: Iterable[str], get, shape, source: str):
        self._keys = list(keys)
        self._index = set(self._keys)
        self._get, self._shape = get, shape
        self.source = source
        self.read: set[str] = set()

    def __getitem__(self, key: str) -> torch.Tensor:
        if key not in self._index:
            raise KeyError(key)
        self.read.add(key)
        return self._get(key)

    def __iter__(self):
        return iter(self._keys)

    def __len__(self) -> int:
        return len(self._keys)

    def __contains__(self, key: object) -> bool:
        return key in self._index

    def shape(self, key: str) -> tuple[int, ...]:
        return tuple(self._shape(key))

    def shapes(self) -> dict[str, torch.Tensor]:
        """{key: an empty tensor on the meta device with the stored shape} (nothing is read)."""
        return {k: torch.empty(self.shape(k), device="meta") for k in self._keys}

    def renamed(self, names: Mapping[str, str]) -> LazyState:
        """A view with keys `names` (new -> old key); reads are recorded here and in this state."""
        def get(key):
            self.read.add(names[key])
            return self._get(names[key])

        view = LazyState(names, get, lambda key: self._shape(names[key]), self.source)
        return view


def shapes_of(state: Mapping[str, Any]) -> Mapping[str, Any]:
    """Something with `[key].shape` for every key of `state`, without reading a lazy state's tensors."""
    return state.shapes() if isinstance(state, LazyState) else state


def _rename(state: Mapping[str, Any], names: Mapping[str, str]) -> Mapping[str, Any]:
    """`state` with keys `names` (new -> old); a lazy state stays lazy."""
    if isinstance(state, LazyState):
        return state.renamed(names)
    return {new: state[old] for new, old in names.items()}


def _safetensors_error(path: Path, exc: BaseException) -> HparrError:
    return HparrError(f"truncated or corrupt safetensors file {path}: {first_line(exc)}")


def _open_safetensors(path: Path) -> LazyState:
    """A lazy state of one .safetensors file, through the safetensors library (memory-mapped, no pickle)."""
    from safetensors import safe_open

    try:
        handle = safe_open(str(path), framework="pt", device="cpu")
        keys = list(handle.keys())
    except Exception as exc:  # noqa: BLE001 - the library reports every malformed header its own way
        raise _safetensors_error(path, exc) from None

    def get(key):
        try:
            return handle.get_tensor(key)
        except Exception as exc:  # noqa: BLE001
            raise _safetensors_error(path, exc) from None

    return LazyState(keys, get, lambda key: handle.get_slice(key).get_shape(), str(path))


def _open_sharded(folder: Path) -> LazyState:
    """The lazy state of a folder of .safetensors shards listed by its model.safetensors.index.json."""
    import json

    index_path = folder / SHARD_INDEX
    try:
        index = json.loads(index_path.read_text())
        weight_map = index["weight_map"]
        if not isinstance(weight_map, dict) or not all(isinstance(v, str) for v in weight_map.values()):
            raise ValueError("'weight_map' must map tensor names to shard file names")
    except (OSError, ValueError, KeyError, TypeError) as exc:
        reason = f"no {exc}" if isinstance(exc, KeyError) else first_line(exc)
        raise HparrError(f"malformed shard index {index_path}: {reason}") from None
    missing = sorted({f for f in weight_map.values() if not (folder / f).is_file()})
    if missing:
        raise HparrError(f"sharded checkpoint {folder}: {len(missing)} shard(s) listed in {SHARD_INDEX} are "
                         f"missing: {', '.join(missing[:3])}{' ...' if len(missing) > 3 else ''}")
    shards = {name: _open_safetensors(folder / name) for name in sorted(set(weight_map.values()))}
    for name, shard in shards.items():
        absent = [k for k, f in weight_map.items() if f == name and k not in shard]
        if absent:
            raise HparrError(f"sharded checkpoint {folder}: {name} lacks {', '.join(absent[:3])}"
                             f"{' ...' if len(absent) > 3 else ''}, which {SHARD_INDEX} puts there")
    return LazyState(weight_map, lambda key: shards[weight_map[key]][key],
                     lambda key: shards[weight_map[key]].shape(key), str(folder))


def _describe(head: bytes, size: int) -> str:
    """What a file that is no checkpoint looks like, from its first bytes."""
    if size == 0:
        return "an empty file"
    for magic, what in ((b"\x1f\x8b", "gzip-compressed data"), (b"\x89HDF", "an HDF5 file"),
                        (b"\x93NUMPY", "a NumPy .npy array"), (b"ONNX", "an ONNX model"),
                        (b"GGUF", "a GGUF model file")):
        if head.startswith(magic):
            return what
    try:
        text = head[:40].decode("utf-8")
        if text.isprintable() or all(c.isprintable() or c in "\r\n\t" for c in text):
            return f"text starting with {text.strip()[:30]!r}"
    except UnicodeDecodeError:
        pass
    return f"{size} bytes starting with {head[:8].hex(' ')}"


def checkpoint_format(path: str | os.PathLike) -> str:
    """The format of a checkpoint, from its content (never its extension).

    "torch-zip" (torch.save's zip format: hparr, Lightning, most .pt/.pth/.bin files), "torch-pickle"
    (torch.save's legacy pickle format, or any other pickle), "safetensors", or "sharded-safetensors" (a
    folder with model.safetensors.index.json). Anything else raises an HparrError naming what was found.
    """
    path = Path(path)
    if path.is_dir():
        if (path / SHARD_INDEX).is_file():
            return "sharded-safetensors"
        raise HparrError(f"{path} is not a checkpoint hparr can read ({_KNOWN}): found a folder without "
                         f"{SHARD_INDEX}")
    if not path.is_file():
        raise HparrError(f"snapshot not found: {path}")
    try:
        size = path.stat().st_size
        with open(path, "rb") as f:
            head = f.read(64)
    except OSError as exc:
        raise HparrError(f"cannot read {path}: {exc.strerror or exc}") from None
    if head.startswith(ZIP_MAGIC):
        return "torch-zip"
    if len(head) >= 2 and head[0] == 0x80 and 2 <= head[1] <= 5:  # pickle protocol 2-5: torch's legacy format
        return "torch-pickle"
    if len(head) > 8 and head[8:9] == b"{" and 2 <= int.from_bytes(head[:8], "little") <= _MAX_SAFETENSORS_HEADER:
        return "safetensors"
    raise HparrError(f"{path} is not a checkpoint hparr can read ({_KNOWN}): found {_describe(head, size)}")


@dataclass
class Checkpoint:
    """A checkpoint file read by `read_checkpoint`.

    obj: the whole loaded object for the torch formats (a snapshot's metadata lives there), {} for
    safetensors; state: its model state_dict, with DataParallel/DDP (`module.`) and torch.compile
    (`_orig_mod.`) wrappers removed from the keys (lazy for safetensors: tensors are read on lookup).
    """

    path: Path
    format: str
    obj: Any
    state: Mapping[str, torch.Tensor]


def read_checkpoint(path: str | os.PathLike, mmap: bool = True) -> Checkpoint:
    """Read any supported checkpoint: hparr's and the original code's snapshots, a bare state_dict,
    a Lightning .ckpt, a .safetensors file or a folder of shards; only `torch.load(weights_only=True)`
    and the safetensors library ever read them."""
    path = Path(path)
    fmt = checkpoint_format(path)
    if fmt == "safetensors":
        return Checkpoint(path, fmt, {}, _strip_wrappers(_open_safetensors(path)))
    if fmt == "sharded-safetensors":
        return Checkpoint(path, fmt, {}, _strip_wrappers(_open_sharded(path)))
    obj = torch_load(path, mmap=mmap)
    return Checkpoint(path, fmt, obj, state_dict_of(obj, path))


def _strip_wrappers(state: Mapping[str, Any]) -> Mapping[str, Any]:
    """`state` with the DataParallel/DDP (`module.`) and torch.compile (`_orig_mod.`) parts dropped from its
    keys; a lazy state stays lazy."""
    names = {".".join(p for p in key.split(".") if p not in ("module", "_orig_mod")): key for key in state}
    if all(new == old for new, old in names.items()):
        return state
    return _rename(state, names)


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
        return _rename(state, names)
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
    return _rename(state, {k[len(chosen):]: k for k in state if k.startswith(chosen)})


def load_state(path: str | os.PathLike, prefix: str | None = None, reference: Any = None,
               mmap: bool = True) -> Mapping[str, torch.Tensor]:
    """The model state_dict of any supported checkpoint file or folder (see `read_checkpoint`).

    `prefix` (`--state-dict-prefix`) or `reference` (the model, its state_dict or its keys, against
    which a prefix such as Lightning's `model.` is found) select and strip a key prefix. A .safetensors
    state is lazy: a tensor is read when it is looked up.
    """
    ckpt = read_checkpoint(path, mmap=mmap)
    return match_prefix(ckpt.state, reference, prefix, source=str(path))
