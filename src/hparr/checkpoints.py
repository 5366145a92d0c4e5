"""Snapshots: safe loading, the original code's names and layout, and epoch labels."""
from __future__ import annotations

import glob
import numbers
import os
import pickle
import re
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Mapping

import torch

from . import files
from .errors import HparrError, UsageError

SNAPSHOT_SUFFIXES = (".pt", ".tar", ".pth")
_WEIGHTS_SUFFIXES = (".pt", ".safetensors", "")  # named after the epochs completed, not a 0-based index
FORMAT = "hparr-snapshot-1"


def torch_load(path: str | os.PathLike, mmap: bool = False) -> Any:
    """torch.load with weights_only=True, turning every failure into a one-line HparrError.

    `mmap` maps the file instead of reading it (zip-format files; others are read whole), so that
    only the tensors used are read from disk.
    """
    path = Path(path)
    if not path.is_file():
        raise HparrError(f"snapshot not found: {path}")
    try:
        if path.name.endswith(".safetensors"):
            # torch.load would hand a path with this name to the safetensors library: the content decides here
            with open(path, "rb") as f:
                return torch.load(f, map_location="cpu", weights_only=True)
        return torch.load(path, map_location="cpu", weights_only=True, mmap=mmap and zipfile.is_zipfile(path))
    except pickle.UnpicklingError as exc:
        if re.search(r"Unsupported (global|class)|GLOBAL|not an allowed global", str(exc)):
            raise HparrError(f"refused to load {path}: it holds pickled objects other than tensors and "
                             "plain values, and loading it could run code") from None
        raise HparrError(f"truncated or corrupt snapshot {path}: not a tensor snapshot") from None
    except Exception as exc:  # noqa: BLE001 - a torn file fails in many ways, all of them "corrupt"
        msg = str(exc).strip().splitlines()[0].split(". ")[0][:200] if str(exc).strip() else type(exc).__name__
        raise HparrError(f"truncated or corrupt snapshot {path}: {msg}") from None


def state_dict_of(obj: Any, path: str | os.PathLike = "<snapshot>") -> dict[str, torch.Tensor]:
    """The model state_dict inside a loaded snapshot (ours, the original's .tar, or a bare state_dict)."""
    if isinstance(obj, dict):
        for key in ("model_state_dict", "state_dict", "model"):
            if isinstance(obj.get(key), dict):
                obj = obj[key]
                break
        if obj and all(isinstance(v, torch.Tensor) for v in obj.values()):
            return clean_keys(obj)
    raise HparrError(f"{path} holds no model state_dict")


def clean_keys(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Drop DataParallel/DDP/compile wrappers from keys (`features.module.0.weight` -> `features.0.weight`)."""
    out = {}
    for key, value in state.items():
        parts = [p for p in key.split(".") if p not in ("module", "_orig_mod")]
        out[".".join(parts)] = value
    return out


def load_state_dict_file(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """Safely read the model weights of any supported checkpoint file, all of them (see `load_state`)."""
    return dict(load_state(path, mmap=False))


def load_weights(model: torch.nn.Module, state: dict[str, torch.Tensor], source: str = "snapshot") -> None:
    """Load `state` into `model`, or raise an error naming the keys and shapes that differ."""
    own = model.state_dict()
    missing = sorted(set(own) - set(state))
    unexpected = sorted(set(state) - set(own))
    shapes = [f"{k}: snapshot {tuple(state[k].shape)} vs model {tuple(own[k].shape)}"
              for k in own if k in state and own[k].shape != state[k].shape]
    if missing or unexpected or shapes:
        parts = []
        if shapes:
            parts.append("shapes differ: " + "; ".join(shapes[:4]) + (" ..." if len(shapes) > 4 else ""))
        if missing:
            parts.append("missing keys: " + ", ".join(missing[:4]) + (" ..." if len(missing) > 4 else ""))
        if unexpected:
            parts.append("unexpected keys: " + ", ".join(unexpected[:4]) + (" ..." if len(unexpected) > 4 else ""))
        raise HparrError(f"{source} does not match this architecture/class count ({'; '.join(parts)})")
    model.load_state_dict(state)


def load_model_weights(model: torch.nn.Module, path: str | os.PathLike, prefix: str | None = None) -> dict[str, Any]:
    """Load a checkpoint (any format of `read_checkpoint`) into `model`; return the whole loaded object
    (for its metadata; {} for safetensors)."""
    ckpt = read_checkpoint(path, mmap=False)
    load_weights(model, dict(match_prefix(ckpt.state, model, prefix, source=str(path))), source=str(path))
    return ckpt.obj if isinstance(ckpt.obj, dict) else {}


def save_snapshot(path: str | os.PathLike, payload: dict[str, Any]) -> None:
    """Atomically write a snapshot of tensors and plain Python values."""
    files.save_torch(payload, path)


# --- names, layout and epoch labels --------------------------------------------------------------

def run_directory(models_path: str | os.PathLike, dataset: str, arch: str, seed: int | None,
                  subsample_classes: int = 0, noise: float = 0.0) -> Path:
    """`<models>/<dataset>[_<k>]/[noise_<pct>|pixel_shuffle/]<arch>/<seed>/`, as the original code laid it out."""
    path = Path(models_path) / (f"{dataset}_{subsample_classes}" if subsample_classes else dataset)
    if noise < 0:
        path /= "pixel_shuffle"
    elif noise > 0:
        path /= f"noise_{round(noise * 100):g}"
    path /= arch
    if seed is not None:
        path /= str(seed)
    return path


def results_directory(results: str | os.PathLike, dataset: str, arch: str, seed: int | None = None,
                      subsample_classes: int = 0) -> Path:
    """`<results>/<dataset>[_<k>]/<arch>[/<seed>]`, where the per-snapshot JSON files go."""
    path = Path(results) / (f"{dataset}_{subsample_classes}" if subsample_classes else dataset) / arch
    return path / str(seed) if seed is not None else path


def init_name(arch: str, pretrained: bool = False) -> str:
    return f"{arch}_{'pretrained' if pretrained else 'init'}_0.pt"


def epoch_name(arch: str, epoch_index: int) -> str:
    """Periodic snapshot after the epoch with 0-based index `epoch_index`."""
    return f"{arch}_{epoch_index}.tar"


def final_name(arch: str, epochs: int, pretrained: bool = False) -> str:
    return f"{arch}_{'pretrained_' if pretrained else ''}{epochs}.pt"


def epoch_from_filename(path: str | os.PathLike) -> int:
    """The original file-name rule: 'pretrained' -> -1, 'init' -> 0, `<arch>_<e>.tar` -> e+1.

    A final `<arch>_<N>.pt` is labelled N, the epochs it ran (the original labelled it N+1); so are
    `<arch>_<N>.safetensors` files and sharded `<arch>_<N>/` folders, which hold weights only.
    """
    stem, suffix = os.path.splitext(os.path.basename(str(path)))
    parts = stem.split("_")
    if "pretrained" in parts:
        return -1
    if "init" in parts:
        return 0
    if not re.fullmatch(r"\d+", parts[-1]):
        raise HparrError(f"cannot tell the epoch of {path}: its name does not end in _<number>")
    number = int(parts[-1])
    return number if suffix in _WEIGHTS_SUFFIXES else number + 1


def snapshot_epoch(obj: Any, path: str | os.PathLike) -> int:
    """Completed epochs of a snapshot: from its own metadata, else from the file-name rule."""
    if isinstance(obj, dict):
        if "epochs_completed" in obj:
            return int(obj["epochs_completed"])
        if "epoch" in obj and "model_state_dict" in obj:  # the original .tar: 0-based finished epoch
            return int(obj["epoch"]) + 1
    return epoch_from_filename(path)


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


def newest_snapshot(directory: str | os.PathLike) -> Path:
    """The complete snapshot of a run directory with the most completed epochs."""
    best: tuple[int, Path] | None = None
    for path in find_snapshots(directory):
        try:
            epoch = snapshot_epoch(torch_load(path), path)
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
    text = str(exc).strip().splitlines()[0][:200] if str(exc).strip() else type(exc).__name__
    return HparrError(f"truncated or corrupt safetensors file {path}: {text}")


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
        reason = f"no {exc}" if isinstance(exc, KeyError) else str(exc).splitlines()[0][:200]
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
