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
from .errors import HparrError, UsageError, first_line

SNAPSHOT_SUFFIXES = (".pt", ".tar", ".pth")
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
    try:
        return torch.load(path, map_location="cpu", weights_only=True, mmap=mmap and zipfile.is_zipfile(path))
    except pickle.UnpicklingError as exc:
        if re.search(r"Unsupported (global|class)|GLOBAL|not an allowed global", str(exc)):
            raise HparrError(f"refused to load {path}: it holds pickled objects other than tensors and "
                             "plain values, and loading it could run code") from None
        raise HparrError(f"truncated or corrupt snapshot {path}: not a tensor snapshot") from None
    except Exception as exc:  # noqa: BLE001 - a torn file fails in many ways, all of them "corrupt"
        raise HparrError(f"truncated or corrupt snapshot {path}: {first_line(exc).split('. ')[0]}") from None


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
    """Safely read the model weights of any supported snapshot file."""
    return state_dict_of(torch_load(path), path)


def load_weights(model: torch.nn.Module, state: dict[str, torch.Tensor], source: str = "snapshot") -> None:
    """Load `state` into `model`, or raise the error of `check_state` naming the keys and shapes that differ."""
    check_state({k: tuple(v.shape) for k, v in model.state_dict().items()}, state, source)
    model.load_state_dict(state)


def load_model_weights(model: torch.nn.Module, path: str | os.PathLike) -> dict[str, Any]:
    """Load a snapshot file into `model`; return the whole snapshot (for its metadata)."""
    obj = torch_load(path)
    load_weights(model, state_dict_of(obj, path), source=str(path))
    return obj if isinstance(obj, dict) else {}


def save_snapshot(path: str | os.PathLike, payload: dict[str, Any]) -> None:
    """Atomically write a snapshot of tensors and plain Python values."""
    files.save_torch(payload, path)


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

    A final `<arch>_<N>.pt` is labelled N, the epochs it ran (the original labelled it N+1).
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
    return number if suffix == ".pt" else number + 1


def snapshot_epoch(obj: Any, path: str | os.PathLike) -> int:
    """Completed epochs of a snapshot: from its own metadata, else from the file-name rule."""
    if isinstance(obj, dict):
        if "epochs_completed" in obj:
            return int(obj["epochs_completed"])
        if "epoch" in obj and "model_state_dict" in obj:  # the original .tar: 0-based finished epoch
            return int(obj["epoch"]) + 1
    return epoch_from_filename(path)


def find_snapshots(specs: str | os.PathLike | Iterable[str | os.PathLike]) -> list[Path]:
    """Expand files, directories and globs into snapshot files, in a stable order."""
    if isinstance(specs, (str, os.PathLike)):
        specs = [specs]
    found: list[Path] = []
    for spec in specs:
        spec = str(spec)
        path = Path(spec)
        if path.is_dir():
            found += sorted(p for p in path.iterdir() if p.is_file() and p.suffix in SNAPSHOT_SUFFIXES
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
    if isinstance(arch, str) and arch != default.arch:
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
