"""What separates a run from a clean, full-data one, as the report names it in its titles and text.

A run's condition is read from what its files record: the manifest of `hparr reproduce` (the training settings,
and why and at which epoch training stopped), else the result documents where they record the training set
(a `condition`, `data` or `settings` record, or the fields themselves), and the re-initialization result (its
class subset and the split its drops were measured on). Nothing is guessed from folder names: a setting that no
file records is said to be unknown.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Iterable, Mapping

from ..defaults import STOP_REASONS
from ..layout import Corruption

TARGET_REACHED, PLATEAU = STOP_REASONS["target"], STOP_REASONS["plateau"]


@dataclass(frozen=True)
class Condition:
    """The training set and the stop of a run, and the split its drops were measured on; None: not recorded.

    noise: the `--noise` value (0 clean, (0, 1] label noise, -1 pixel shuffle); train_size: the size of a
    `--train-size` subset, 0 for every training image; classes: a `--subsample-classes` subset, 0 for every
    class; eval_split: where the re-initialization drops were measured ("test" or "train"); stop_reason and
    stop_epoch: why and at which epoch training stopped; epochs: the `--epochs` cap; until_train_acc: the
    `--until-train-acc` target (%), None when training ran without one (`settings` says whether the training
    settings were found at all)."""

    noise: float | None = None
    train_size: int | None = None
    classes: int | None = None
    eval_split: str | None = None
    stop_reason: str | None = None
    stop_epoch: int | None = None
    epochs: int | None = None
    until_train_acc: float | None = None
    settings: bool = False  # the training settings were recorded (a manifest, or a document's settings)

    @property
    def corruption(self) -> str | None:
        """`noise 100%`, `pixel shuffle` or None (clean, or not recorded)."""
        if self.noise is None or self.noise == 0:
            return None
        return Corruption(self.noise).label

    @property
    def stop(self) -> str | None:
        """Why training stopped, where it is not the end of a plain `--epochs` run (None then)."""
        if self.stop_epoch is None:
            return None
        if self.stop_reason == TARGET_REACHED and self.until_train_acc is not None:
            return f"train top-1 {self.until_train_acc:g}% reached at epoch {self.stop_epoch}"
        if self.stop_reason == TARGET_REACHED:
            return f"train top-1 target reached at epoch {self.stop_epoch}"
        if self.stop_reason == PLATEAU:
            return f"stopped at a plateau at epoch {self.stop_epoch}"
        if self.until_train_acc is not None:
            return f"train top-1 {self.until_train_acc:g}% not reached in {self.stop_epoch} epochs"
        return None

    def parts(self) -> list[str]:
        """What separates the run from a clean, full-data one whose drops were measured on the test images, in
        the order the titles name it (empty for such a run, or where nothing is recorded)."""
        out = [self.corruption] if self.corruption else []
        if self.train_size:
            out.append(f"{self.train_size} training images")
        if self.classes:
            out.append(f"{self.classes} classes")
        if self.stop:
            out.append(self.stop)
        if self.eval_split == "train":
            out.append("drops on the training images")
        return out

    def suffix(self) -> str:
        """` (noise 100%, 2000 training images, ...)` for a title, or "" for a clean, full-data run."""
        parts = self.parts()
        return f" ({', '.join(parts)})" if parts else ""

    def lines(self) -> list[str]:
        """The condition in full, as Markdown bullets for summary.md: each setting, or that it is not recorded."""
        unknown = "not recorded by the result files"
        if self.noise is None:
            labels = f"labels and pixels: {unknown} (clean or corrupted cannot be told)"
        elif self.noise == 0:
            labels = "labels and pixels: clean"
        elif self.noise < 0:
            labels = "pixels: shuffled by one fixed permutation (pixel shuffle, --noise -1), labels clean"
        else:
            labels = f"labels: {Corruption(self.noise).percent}% replaced by random classes (label noise)"
        size = (f"{unknown}" if self.train_size is None else "every training image" if self.train_size == 0
                else f"{self.train_size} training images (a stratified subset, --train-size)")
        classes = (f"{unknown}" if self.classes is None else "every class" if self.classes == 0
                   else f"{self.classes} classes (--subsample-classes)")
        lines = [f"- Training set: {labels}; {size}; {classes}."]
        if self.stop_epoch is None:
            lines.append(f"- Training stopped: {unknown}.")
        elif self.stop:
            cap = f" (at most {self.epochs} epochs)" if self.epochs and self.stop_reason == TARGET_REACHED else ""
            lines.append(f"- Training stopped: {self.stop}{cap}.")
        else:
            lines.append(f"- Training stopped: after the {self.stop_epoch} epochs asked for.")
        split = {"test": "the test images", "train": "the training images, with the labels trained on"}
        lines.append("- Re-initialization drops measured on: "
                     + (split.get(self.eval_split, f"the {self.eval_split} split") if self.eval_split
                        else "no re-initialization result") + ".")
        return lines

    def to_dict(self) -> dict[str, Any]:
        return {"noise": self.noise, "condition": None if self.noise is None else Corruption(self.noise).label,
                "train_size": self.train_size, "classes": self.classes, "eval_split": self.eval_split,
                "stop_reason": self.stop_reason, "stop_epoch": self.stop_epoch, "epochs": self.epochs,
                "until_train_acc": self.until_train_acc, "settings_recorded": self.settings,
                "title_parts": self.parts()}


def _number(value: Any, kind=float) -> Any:
    try:
        return None if value is None or isinstance(value, bool) else kind(value)
    except (TypeError, ValueError):
        return None


def _records(doc: Mapping[str, Any]) -> Iterable[Mapping[str, Any]]:
    """The places a document may record its training set: itself, and its `condition`, `data`, `snapshot_data`,
    `training` and `settings` records (and their `data` and `options`)."""
    stack = [doc]
    while stack:
        record = stack.pop(0)
        yield record
        for key in ("condition", "data", "snapshot_data", "training", "settings", "options"):
            inner = record.get(key)
            if isinstance(inner, Mapping):
                stack.append(inner)


def _first(docs: Iterable[Mapping[str, Any]], read) -> Any:
    for doc in docs:
        for record in _records(doc):
            value = read(record)
            if value is not None:
                return value
    return None


def _noise(record: Mapping[str, Any]) -> float | None:
    if "noise" in record and not isinstance(record["noise"], Mapping):
        return _number(record["noise"])
    if isinstance(record.get("label_noise"), Mapping):  # a snapshot's data record
        return _number(record["label_noise"].get("ratio"))
    if isinstance(record.get("pixel_shuffle"), Mapping):
        return -1.0
    if "label_noise" in record and "pixel_shuffle" in record:  # both recorded as none: clean
        return 0.0
    return None


def _train_size(record: Mapping[str, Any]) -> int | None:
    if "train_size" in record:
        return _number(record["train_size"], int) or 0
    if "train_subset" in record:
        subset = record["train_subset"]
        return _number(subset.get("size"), int) if isinstance(subset, Mapping) else 0
    return None


def _classes(record: Mapping[str, Any]) -> int | None:
    if "subsample_classes" in record:
        return _number(record["subsample_classes"], int) or 0
    if isinstance(record.get("class_subset"), Mapping):
        return _number(record["class_subset"].get("k"), int)
    return None


def _stopped(record: Mapping[str, Any]) -> Mapping[str, Any] | None:
    stopped = record.get("stopped")
    return stopped if isinstance(stopped, Mapping) and stopped.get("epoch") is not None else None


def condition_of(manifest: Mapping[str, Any] | None, docs: Iterable[Mapping[str, Any] | None] = (),
                 reinit_doc: Mapping[str, Any] | None = None) -> Condition:
    """The condition of a run: from its manifest (`hparr reproduce`) first, then from the result documents
    `docs` (projections) and `reinit_doc`; each setting from the first that records it."""
    sources = [d for d in ([manifest] if manifest else []) + list(docs) + [reinit_doc] if isinstance(d, Mapping)]
    settings = (manifest or {}).get("settings") if isinstance((manifest or {}).get("settings"), Mapping) else None
    stopped = _first(sources, _stopped) or {}
    epochs = _number((settings or {}).get("epochs"), int)
    target = _number((settings or {}).get("until_train_acc"))
    if settings is None:  # a document that records the training settings
        record = _first(sources, lambda r: r if "until_train_acc" in r or "epochs" in r and "lr" in r else None)
        if record is not None:
            settings = record
            epochs, target = _number(record.get("epochs"), int), _number(record.get("until_train_acc"))
    split = (reinit_doc or {}).get("eval_split") or ("test" if reinit_doc else None)
    return Condition(noise=_first(sources, _noise), train_size=_first(sources, _train_size),
                     classes=_first(sources, _classes), eval_split=split,
                     stop_reason=stopped.get("reason"), stop_epoch=_number(stopped.get("epoch"), int),
                     epochs=epochs, until_train_acc=target, settings=settings is not None)
