"""The results document of a re-initialization sweep: its fields, the aggregation of repeated
re-randomizations, and its human-readable summary."""
from __future__ import annotations

import math
from typing import Any, Mapping, Sequence

import numpy as np

from ..defaults import THRESHOLD
from ..provenance import derive_seeds, versions
from ..results import EVAL_SPLITS, RAND, REINIT_FORMAT, relative_drops
from ._sweep import SweepCounts

BATCHNORM_NOTE = ("BatchNorm parameters and running statistics are left as trained; only the weight "
                  "and bias of the re-initialized layer change")


BATCHNORM_REINIT_NOTE = ("BatchNorm parameters and running statistics of the re-initialized layers are "
                         "re-initialized with them (--with-bn)")

EVAL_SPLIT_TEXT = {"test": "test images",
                   "train": "training images with the labels the model was trained on (no augmentation)"}


def eval_split_of(document: Mapping[str, Any]) -> str:
    """The split a results document was evaluated on (documents without the field are of the test set)."""
    split = document.get("eval_split")
    return split if split in EVAL_SPLITS else "test"


def unit_fields(result: SweepCounts, granularity: str = "layer", with_bn: bool = False) -> dict[str, Any]:
    """Result-document fields beyond top-1/top-5: the test loss and the prediction agreement with the
    trained model per alternative and unit, the granularity and the groups re-initialized together."""
    out: dict[str, Any] = {"granularity": granularity, "with_bn": with_bn, "groups": dict(result.groups or {})}
    if with_bn:
        out["batchnorm"] = BATCHNORM_REINIT_NOTE
    if result.loss is not None:
        out["trained_loss"] = result.trained_loss
        out["loss_init_from_epoch"] = result.test_loss()
    if result.agree is not None:
        out["agreement_init_from_epoch"] = result.agreement()
    return out


def rand_labels(trials: int) -> list[str]:
    """Alternative labels of the re-randomizations: "rand", or "rand.0" ... "rand.<K-1>"."""
    return [RAND] if trials == 1 else [f"{RAND}.{t}" for t in range(trials)]


def rand_trial_seeds(base_seed: int, trials: int) -> list[int]:
    """Seeds of K re-randomizations derived from one seed; the first is the single draw's seed."""
    names = ["reinit_rand"] + [f"reinit_rand_{t}" for t in range(1, trials)]
    derived = derive_seeds(base_seed, *names)
    return [derived[name] for name in names]


def aggregate_rand_trials(document: Mapping[str, Any], trials: int, seeds: Sequence[int]) -> dict[str, Any]:
    """A results document whose K re-randomizations ("rand.0" ...) become one "rand" row: in every
    per-alternative field ({label: [value per layer]}) the mean over the trials, with their sample
    standard deviation in `rand_std[field]` and every trial's values in `rand_trials[field]`."""
    labels = rand_labels(trials)
    doc = dict(document)
    std: dict[str, list[float | None]] = {}
    per_trial: dict[str, list[list[Any]]] = {}
    for key, value in document.items():
        if not (isinstance(value, Mapping) and all(isinstance(value.get(label), list) for label in labels)):
            continue
        rows = [value[label] for label in labels]
        array = np.array([[np.nan if v is None else float(v) for v in row] for row in rows], dtype=float)
        mean = array.mean(axis=0)
        sd = array.std(axis=0, ddof=1)
        doc[key] = {k: v for k, v in value.items() if k not in labels}
        doc[key][RAND] = [float(m) if np.isfinite(m) else None for m in mean]
        std[key] = [float(v) if np.isfinite(v) else None for v in sd]
        per_trial[key] = [list(row) for row in rows]
    doc["rand_std"] = std
    doc["rand_trials"] = {"k": trials, "seeds": list(seeds), "values": per_trial,
                          "std": "sample standard deviation (ddof=1) over the trials"}
    files_ = doc.get("init_files")
    if isinstance(files_, Mapping):
        doc["init_files"] = {k: v for k, v in files_.items() if k not in labels}
        doc["init_files"][RAND] = [files_[label] for label in labels]
    return doc


def reinit_document(result: SweepCounts, *, arch: str, dataset: str, seed: int | None, epoch: int | None,
                    **fields: Any) -> dict[str, Any]:
    """The original JSON (`init_from_epoch: {epoch: [top-1 per layer]}`, top1_test, top5_test, arch,
    dataset, seed, epoch) plus layer names, top-5, counts, the relative drops and provenance."""
    top1, top5 = result.accuracy(1), result.accuracy(5)
    doc: dict[str, Any] = {"init_from_epoch": top1, "arch": arch, "dataset": dataset,
                           "top1_test": result.trained_accuracy(1), "top5_test": result.trained_accuracy(5)}
    if seed is not None:
        doc["seed"] = str(seed)
    doc["epoch"] = None if epoch is None else str(epoch)
    doc.update({
        "format": REINIT_FORMAT,
        "layers": list(result.layers),
        "top5_init_from_epoch": top5,
        "relative_drop": {label: [v if math.isfinite(v) else None for v in drops]
                          for label, drops in relative_drops(result.trained_accuracy(1), top1).items()},
        "correct_top1": {label: result.correct[i, :, 0].tolist() for i, label in enumerate(result.labels)},
        "correct_top5": {label: result.correct[i, :, 1].tolist() for i, label in enumerate(result.labels)},
        "trained_correct": {"top1": result.trained_correct[0], "top5": result.trained_correct[1]},
        "num_test": result.total, "topk": result.topk,
        "batchnorm": BATCHNORM_NOTE, "method": result.method, "notes": list(result.notes),
        "versions": versions(),
    })
    doc.update(fields)
    return doc


def summary_lines(document: Mapping[str, Any]) -> list[str]:
    """Human-readable lines of a results document: trained accuracy, then one line per alternative; every
    top-1 and loss named by the split it was measured on."""
    split = eval_split_of(document)
    epoch = "" if document.get("epoch") in (None, "None") else f"epoch {document['epoch']}, "
    lines = [f"{document['arch']} on {document['dataset']} ({epoch}{document['num_test']} "
             f"{EVAL_SPLIT_TEXT[split]}): {split} top-1 {document['top1_test']:.2f}%, "
             f"top-5 {document['top5_test']:.2f}%",
             f"{document['batchnorm']}.",
             "layers: " + ", ".join(document["layers"])]
    for label, accs in document["init_from_epoch"].items():
        what = "re-randomized" if label == RAND else f"from epoch {label}"
        lines.append(f"{what}: {split} top-1 " + " ".join(f"{a:.2f}" for a in accs))
        for key, name, fmt in (("loss_init_from_epoch", f"{split} loss", ".3f"),
                               ("agreement_init_from_epoch", "agreement", ".3f")):
            values = (document.get(key) or {}).get(label)
            if values is not None:
                lines.append(f"{' ' * len(what)}  {name} " + " ".join("nan" if v is None else format(v, fmt)
                                                                     for v in values))
    if isinstance(document.get("rand_trials"), Mapping):
        lines.append(f"rand: mean of {document['rand_trials']['k']} re-randomizations; {split} top-1 sd "
                     + " ".join("nan" if v is None else f"{v:.2f}"
                                for v in document["rand_std"].get("init_from_epoch", [])))
    return lines


CRITICAL_SPLIT_TEXT = {"test": "the test images", "train": "the training images (the labels trained on)"}


def critical_headline(document: Mapping[str, Any], threshold: float = THRESHOLD) -> str:
    """One line: how many layers (units) of a results document are critical, their relative top-1 drop above
    `threshold` (docs/method.md, section 4), when re-initialized to epoch 0, or where the sweep has no epoch-0 row,
    its first alternative (the earliest epoch, else the re-randomization), and on which split."""
    split = eval_split_of(document)
    drops = document.get("relative_drop") or {}
    labels = sorted((label for label in drops if label != RAND and str(label).lstrip("-").isdigit()), key=int)
    label = labels[0] if labels else (RAND if RAND in drops else None)
    units = "layers" if document.get("granularity", "layer") == "layer" else f"{document['granularity']}s"
    if label is None:
        return f"no re-initialization measured on {CRITICAL_SPLIT_TEXT[split]}"
    what = "re-randomized" if label == RAND else f"re-initialized to epoch {label}"
    values = drops[label]
    if any(v is None for v in values):
        return (f"critical {units}: undefined on {CRITICAL_SPLIT_TEXT[split]} (the trained model's top-1 there is "
                f"{document['top1_test']:.2f}%, so a relative drop is not)")
    names = [str(n) for n, v in zip(document["layers"], values) if v > threshold]
    shown = ", ".join(names[:8]) + (f" and {len(names) - 8} more" if len(names) > 8 else "")
    return (f"{len(names)} of {len(values)} {units} critical on {CRITICAL_SPLIT_TEXT[split]} (relative top-1 drop "
            f"above {threshold:g} when {what}){': ' + shown if names else ''}")
