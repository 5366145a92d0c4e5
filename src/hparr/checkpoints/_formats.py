"""The checkpoint formats hparr reads, told apart by their content: torch's zip and pickle files, safetensors
files and folders of safetensors shards (read lazily, tensor by tensor)."""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Iterable, Mapping

import torch
from safetensors import safe_open

from ..errors import HparrError, first_line
from ..layout import SNAPSHOT_SUFFIXES

ZIP_MAGIC = b"PK\x03\x04"
SHARD_INDEX = "model.safetensors.index.json"
CHECKPOINT_SUFFIXES = (*SNAPSHOT_SUFFIXES, ".safetensors", ".ckpt", ".bin", ".onnx")
# the formats whose state_dict keeps the order it was saved in (a model's state_dict: the order of its modules);
# safetensors sorts its keys
ORDERED_FORMATS = ("torch-zip", "torch-pickle", "onnx")  # onnx: its conv nodes in the graph's topological order
_MAX_SAFETENSORS_HEADER = 100_000_000  # the safetensors library's own limit
_KNOWN = ("a PyTorch zip or pickle file, a .safetensors file, a folder of sharded .safetensors files "
          f"with {SHARD_INDEX}, or an ONNX model")
# the first bytes of an ONNX model: its ir_version field (protobuf field 1, a varint), which every writer puts
# first, followed by another field of ModelProto (producer name, graph, opset imports...) or by nothing
_ONNX_IR_VERSION_TAG = 0x08
_ONNX_MODEL_FIELD_TAGS = {0x12, 0x1A, 0x22, 0x28, 0x32, 0x3A, 0x42, 0x72, 0xA2, 0xCA}


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


def rename(state: Mapping[str, Any], names: Mapping[str, str]) -> Mapping[str, Any]:
    """`state` with keys `names` (new -> old); a lazy state stays lazy."""
    if isinstance(state, LazyState):
        return state.renamed(names)
    return {new: state[old] for new, old in names.items()}


def _safetensors_error(path: Path, exc: BaseException) -> HparrError:
    return HparrError(f"truncated or corrupt safetensors file {path}: {first_line(exc)}")


def open_safetensors(path: Path) -> LazyState:
    """A lazy state of one .safetensors file, through the safetensors library (memory-mapped, no pickle)."""
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


def open_sharded(folder: Path) -> LazyState:
    """The lazy state of a folder of .safetensors shards listed by its model.safetensors.index.json."""
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
    shards = {name: open_safetensors(folder / name) for name in sorted(set(weight_map.values()))}
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


def looks_like_onnx(head: bytes) -> bool:
    """Whether the first bytes of a file are those of a serialized ONNX ModelProto (its ir_version field first)."""
    return (len(head) >= 2 and head[0] == _ONNX_IR_VERSION_TAG and 1 <= head[1] <= 0x7F
            and (len(head) == 2 or head[2] in _ONNX_MODEL_FIELD_TAGS))


def checkpoint_format(path: str | os.PathLike) -> str:
    """The format of a checkpoint, from its content (never its extension).

    "torch-zip" (torch.save's zip format: hparr, Lightning, most .pt/.pth/.bin files), "torch-pickle"
    (torch.save's legacy pickle format, or any other pickle), "safetensors", "sharded-safetensors" (a
    folder with model.safetensors.index.json) or "onnx" (an ONNX model). Anything else raises an HparrError
    naming what was found.
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
    if looks_like_onnx(head):
        return "onnx"
    if path.suffix.lower() == ".onnx":
        raise HparrError(f"{path} is not an ONNX model hparr can read: found {_describe(head, size)}")
    raise HparrError(f"{path} is not a checkpoint hparr can read ({_KNOWN}): found {_describe(head, size)}")

