"""`--dataset imagefolder --data-path DIR`: the user's own images, DIR/train/<class>/* and DIR/val/<class>/* (or
DIR/test/<class>/*), in any format Pillow reads, decoded once into the in-memory uint8 arrays of the built-in sets.

The folders and files are listed as torchvision's ImageFolder lists them (class folders sorted by name, the files
of a class walked in sorted order), the images decoded with Pillow: gray or RGB, as most of the files are (the
others converted, which is said once), at their own square size or resized to --input-size. The decoded arrays,
the mean and std of the training images and the folder's identity are cached in DIR/.hparr-cache/, keyed by the
list of files with their sizes and modification times (and --input-size): a later command on the same files reads
them from there without decoding any image. Every bad input is one UsageError naming the folder or file.
"""
from __future__ import annotations

import io
import logging
import os
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from .. import files, layout
from ..errors import HparrError, UsageError, first_line
from ..files import digest, hasher
from ..provenance import available_cores
from ._catalog import IMAGEFOLDER, DatasetInfo
from ._own import OwnData, channel_stats

log = logging.getLogger("hparr.data")

TRAIN_FOLDER = "train"
EVAL_FOLDERS = ("val", "test")  # the evaluation split: val/, or test/ where there is no val/
CACHE_FORMAT = "hparr-imagefolder-1"
# Pillow modes of one channel (bilevel, 8-bit, 16/32-bit integer, float, with alpha); every other mode is color
GRAY_MODES = frozenset({"1", "L", "LA", "La", "I", "I;16", "I;16L", "I;16B", "I;16N", "F"})


def image_extensions() -> tuple[str, ...]:
    """The file extensions of the image formats Pillow opens (lower case, with the dot)."""
    from PIL import Image  # start-up time: Pillow only where an image folder is read

    return tuple(sorted(ext.lower() for ext, fmt in Image.registered_extensions().items() if fmt in Image.OPEN))


def _usage(root: Path, text: str) -> UsageError:
    return UsageError(f"{IMAGEFOLDER} {root}: {text}")


def _expected(root: Path) -> str:
    return f"expected {root}/{TRAIN_FOLDER}/<class>/<image> and {root}/val/<class>/<image> (or test/)"


def class_folders(directory: Path) -> list[str]:
    """The class folders of a split, sorted by name (torchvision's `find_classes` rule)."""
    return sorted(entry.name for entry in os.scandir(directory) if entry.is_dir())


@dataclass
class FolderList:
    """The files of an image folder: the evaluation folder used ("val" or "test"), the class names (those of
    train/), and per split ("train", "test") the files as (path relative to the folder, label, size, mtime_ns)."""

    root: Path
    eval_folder: str
    classes: list[str]
    files: dict[str, list[tuple[str, int, int, int]]]

    def cache_key(self, input_size: int | None) -> str:
        """What the cached decoding depends on: the files (names, sizes, modification times), --input-size and
        the decoding's own version; a hex digest, the cache file's name."""
        h = hasher()
        h.update(f"{CACHE_FORMAT}\0{input_size}\0{self.eval_folder}\0".encode())
        for split in ("train", "test"):
            for rel, label, size, mtime in self.files[split]:
                h.update(f"{split}\0{rel}\0{label}\0{size}\0{mtime}\n".encode())
        return h.hexdigest()

    def paths(self) -> list[tuple[str, Path]]:
        return [(split, self.root / rel) for split in ("train", "test") for rel, *_ in self.files[split]]


def list_folder(root: str | os.PathLike) -> FolderList:
    """The split and class folders and the image files of an image folder, checked before anything is decoded:
    a missing folder or split folder, a split without class folders, a class folder without an image file, and
    an evaluation class that train/ does not have are each one UsageError."""
    root = Path(root).expanduser()
    if not root.is_dir():
        raise _usage(root, f"no such folder; {_expected(root)} (pass --data-path DIR)")
    if not (root / TRAIN_FOLDER).is_dir():
        raise _usage(root, f"no {TRAIN_FOLDER}/ folder; {_expected(root)}")
    eval_folder = next((f for f in EVAL_FOLDERS if (root / f).is_dir()), None)
    if eval_folder is None:
        raise _usage(root, f"no val/ or test/ folder; {_expected(root)}")
    if eval_folder == "val" and (root / "test").is_dir():
        log.info("%s %s: evaluating on val/ (test/ is not read)", IMAGEFOLDER, root)
    classes = class_folders(root / TRAIN_FOLDER)
    if not classes:
        raise _usage(root, f"{TRAIN_FOLDER}/ holds no class folder; {_expected(root)}")
    eval_classes = class_folders(root / eval_folder)
    index = {c: i for i, c in enumerate(classes)}
    unknown = [c for c in eval_classes if c not in index]
    if unknown:
        raise _usage(root, f"{eval_folder}/ has class folder(s) that {TRAIN_FOLDER}/ does not have: "
                           f"{', '.join(unknown[:5])}{' ...' if len(unknown) > 5 else ''}")
    extensions = image_extensions()
    listed: dict[str, list[tuple[str, int, int, int]]] = {}
    for split, folder in (("train", TRAIN_FOLDER), ("test", eval_folder)):
        entries = []
        for name in (classes if split == "train" else eval_classes):
            found = []
            # torchvision's make_dataset: the class folder walked (links followed) in sorted order
            for where, _, names in sorted(os.walk(root / folder / name, followlinks=True)):
                for fname in sorted(names):
                    if fname.lower().endswith(extensions):
                        path = Path(where) / fname
                        stat = path.stat()
                        found.append((str(path.relative_to(root)), index[name], stat.st_size, stat.st_mtime_ns))
            if not found:
                shown = ", ".join(e for e in (".bmp", ".gif", ".jpeg", ".jpg", ".png", ".tif", ".webp")
                                  if e in extensions)
                raise _usage(root, f"the class folder {folder}/{name} holds no image file (of a format Pillow "
                                   f"reads: {shown}, ...)")
            entries += found
        listed[split] = entries
    return FolderList(root, eval_folder, classes, listed)


# --- decoding ---------------------------------------------------------------------------------------------

def _header(root: Path, path: Path) -> tuple[str, tuple[int, int]]:
    """(mode, (width, height)) of an image file, from its header; UsageError naming it if Pillow cannot open it."""
    from PIL import Image  # start-up time, as above

    try:
        with Image.open(path) as im:
            return im.mode, im.size
    except Exception as exc:  # noqa: BLE001 - Pillow raises many types for an unreadable file
        raise _usage(root, f"cannot read the image {path}: {first_line(exc)}") from None


def _decode(root: Path, path: Path, gray: bool, size: int) -> tuple[np.ndarray, bytes]:
    """(the image as uint8 (C, size, size), the xxh3 digest of the file's bytes); UsageError naming a corrupt or
    truncated file."""
    from PIL import Image  # start-up time, as above

    try:
        raw = path.read_bytes()
        with Image.open(io.BytesIO(raw)) as im:
            im.load()
            im = im.convert("L" if gray else "RGB")
            if im.size != (size, size):
                im = im.resize((size, size), Image.Resampling.BILINEAR)
            array = np.asarray(im, dtype=np.uint8)
    except Exception as exc:  # noqa: BLE001 - as above
        raise _usage(root, f"cannot read the image {path}: {first_line(exc)}") from None
    h = hasher()
    h.update(raw)
    return (array[None] if gray else array.transpose(2, 0, 1)), h.digest()


def _workers() -> int:
    return max(1, min(8, available_cores()))


def decode_folder(listing: FolderList, input_size: int | None = None) -> OwnData:
    """Decode every image of `listing` into uint8 arrays: gray or RGB as most files are, at their own size (which
    must be one square size) or resized to `input_size` (bilinear); the mean and std of the training images; and
    the folder's identity: the content hash of its files (each one's path below the folder and bytes)."""
    root = listing.root
    paths = listing.paths()
    with ThreadPoolExecutor(_workers()) as pool:
        headers = list(pool.map(lambda sp: _header(root, sp[1]), paths))
    kinds = Counter("gray" if mode in GRAY_MODES else "rgb" for mode, _ in headers)
    gray = kinds["gray"] > kinds["rgb"]
    notes = []
    if kinds["gray"] and kinds["rgb"]:
        minority, majority = ("rgb", "gray") if gray else ("gray", "rgb")
        said = {"gray": "gray", "rgb": "color"}
        notes.append(f"{IMAGEFOLDER} {root}: {kinds[minority]} of the {len(paths)} images are {said[minority]}: "
                     f"converted to {'gray' if gray else 'RGB'}, as most are {said[majority]}")
    if input_size is None:
        sizes = Counter(size for _, size in headers)
        if len(sizes) > 1:
            shown = ", ".join(f"{w}x{h} ({n} file{'s' if n > 1 else ''})" for (w, h), n in sizes.most_common(3))
            raise _usage(root, f"the images have {len(sizes)} sizes ({shown}{', ...' if len(sizes) > 3 else ''}); "
                               "pass --input-size S to resize them all to SxS")
        (w, h), = sizes
        if w != h:
            raise _usage(root, f"the images are {w}x{h} (width x height), not square; pass --input-size S to resize "
                               "them to SxS")
        size = w
    else:
        size = int(input_size)
    channels = 1 if gray else 3
    log.info("%s %s: decoding %d images (%s %d, %s %d) once", IMAGEFOLDER, root, len(paths), TRAIN_FOLDER,
             len(listing.files["train"]), listing.eval_folder, len(listing.files["test"]))
    out = np.empty((len(paths), channels, size, size), dtype=np.uint8)
    content = hasher()
    with ThreadPoolExecutor(_workers()) as pool:
        for i, (array, file_digest) in enumerate(pool.map(lambda sp: _decode(root, sp[1], gray, size), paths)):
            out[i] = array
            content.update(f"{paths[i][1].relative_to(root).as_posix()}\0".encode())
            content.update(file_digest)
    n_train = len(listing.files["train"])
    x_train, x_test = out[:n_train], out[n_train:]
    y_train = np.array([label for _, label, *_ in listing.files["train"]], dtype=np.int64)
    y_test = np.array([label for _, label, *_ in listing.files["test"]], dtype=np.int64)
    mean, std = channel_stats(x_train)
    info = DatasetInfo(IMAGEFOLDER, len(listing.classes), channels, size, mean, std)
    source = {"kind": IMAGEFOLDER, "path": str(root.resolve()), "eval_folder": listing.eval_folder,
              "files": {"train": n_train, "test": len(y_test)}, "hash": digest(content),
              "channels": {"gray": kinds["gray"], "rgb": kinds["rgb"], "used": "gray" if gray else "rgb"},
              "normalization": "computed on the training images"}
    return OwnData(x_train, y_train, x_test, y_test, list(listing.classes), info, source, notes)


# --- the cache ----------------------------------------------------------------------------------------------

def cache_path(root: Path, key: str) -> Path:
    return layout.data_cache_file(root, IMAGEFOLDER, key)


def _read_cache(path: Path, key: str) -> OwnData | None:
    """The decoding cached at `path`, or None when there is none (or it is unreadable or of another key)."""
    import torch  # torch-free module until here

    if not path.is_file():
        return None
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
        if not isinstance(obj, dict) or obj.get("format") != CACHE_FORMAT or obj.get("key") != key:
            raise ValueError("another format or key")
        info = DatasetInfo(IMAGEFOLDER, int(obj["num_classes"]), int(obj["in_channels"]), int(obj["image_size"]),
                           tuple(float(v) for v in obj["mean"]), tuple(float(v) for v in obj["std"]))
        return OwnData(obj["x_train"].numpy(), obj["y_train"].numpy(), obj["x_test"].numpy(), obj["y_test"].numpy(),
                       [str(c) for c in obj["classes"]], info, dict(obj["source"]), [str(n) for n in obj["notes"]])
    except Exception as exc:  # noqa: BLE001 - an unusable cache is decoded again, whatever is wrong with it
        log.info("%s: unusable cache (%s): decoding again", path, first_line(exc))
        return None


def _write_cache(path: Path, key: str, own: OwnData) -> None:
    """Cache a decoding, atomically; a folder that cannot be written is said once and the images stay uncached."""
    import torch  # torch-free module until here

    obj: dict[str, Any] = {
        "format": CACHE_FORMAT, "key": key, "x_train": torch.from_numpy(own.x_train),
        "y_train": torch.from_numpy(own.y_train), "x_test": torch.from_numpy(own.x_test),
        "y_test": torch.from_numpy(own.y_test), "classes": list(own.classes), "num_classes": own.info.num_classes,
        "in_channels": own.info.in_channels, "image_size": own.info.image_size, "mean": list(own.info.mean),
        "std": list(own.info.std), "source": files.jsonable(own.source), "notes": list(own.notes)}
    try:
        files.ensure_dir(path.parent)
        files.save_torch(obj, path, what="cached decodings")
    except HparrError as exc:
        log.warning("warning: cannot cache the decoded images (%s); they are decoded again next time",
                    first_line(exc, None))


def read_image_folder(root: str | os.PathLike, input_size: int | None = None) -> OwnData:
    """The image folder at `root`, decoded (or read from its cache, written on the first decoding)."""
    listing = list_folder(root)
    key = listing.cache_key(input_size)
    path = cache_path(listing.root, key)
    own = _read_cache(path, key)
    if own is None:
        own = decode_folder(listing, input_size)
        _write_cache(path, key, own)
    else:
        log.info("%s %s: %d images read from the cache %s", IMAGEFOLDER, listing.root,
                 len(own.y_train) + len(own.y_test), path)
    return own
