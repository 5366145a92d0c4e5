"""`hparr train`: the paper's train.py, flag for flag, plus resume, AMP and torchrun."""
from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import re
import sys
from typing import Any

from ._args import ArgumentParser, arch_name, choice, dataset_name

DESCRIPTION = "Model training/finetuning, with snapshots in the original code's layout."


def add_data_arguments(p: ArgumentParser, dataset_help: str = "dataset to train on") -> None:
    """The dataset flags shared by train, reinit and reproduce (`dataset_help`: what --dataset is to the command),
    their defaults those of `DataOptions`. --dataset alone has none: without it the datasets are listed, as the
    original code did."""
    from ..data import DataOptions  # start-up time: the data package imports torch (the flags' defaults are its)

    p.add_argument("--dataset", type=dataset_name, default=None,
                   help=f"{dataset_help}: a built-in one (any case), imagefolder (your images in --data-path: "
                        "train/<class>/*, val/<class>/*), or module.path:factory (your torch Datasets); run "
                        "without it to list the datasets")
    p.add_argument("--data-path", type=str, setting=DataOptions,
                   help="folder holding the dataset files [%(default)s]")
    p.add_argument("--dataset-args", type=str, setting=DataOptions, metavar="K=V,...",
                   help="keyword arguments of a --dataset module.path:factory, e.g. n=400,gray=True (recorded; a "
                        "rerun passes the same) [none]")
    p.add_argument("--download", action="store_true", setting=DataOptions,
                   help="download MNIST/Fashion-MNIST/KMNIST/CIFAR/SVHN into --data-path if missing")
    p.add_argument("--subsample-classes", type=int, setting=DataOptions,
                   help="use only this many classes (0 = all) [%(default)s]")
    p.add_argument("--class-sample-seed", type=int, setting=DataOptions, help="seed for choosing the classes")
    p.add_argument("--unnormalize", action="store_true", setting=DataOptions,
                   help="no mean/std normalization: pixel values in [0, 1]")


def add_arch_argument(p: argparse.ArgumentParser) -> None:
    p.add_argument("--arch", type=arch_name, default=None,
                   help="architecture: a built-in or torchvision name (any case), torchvision:NAME, timm:NAME, or "
                        "your own model as module.path:factory (imported from the current directory or PYTHONPATH, "
                        "called with num_classes and in_channels when it takes them); run without it to list them")


def add_state_dict_prefix_argument(p: argparse.ArgumentParser, settings) -> None:
    """--state-dict-prefix of train, projections and reinit, its default the field of `settings` (a dataclass)."""
    p.add_argument("--state-dict-prefix", type=str, setting=settings, metavar="PREFIX",
                   help="read the weights under this key prefix of the checkpoints (e.g. 'model.' of a Lightning "
                        "module); found automatically against the model's keys when omitted")


AMP = ("bf16", "fp16")
CHANNELS_LAST = ("auto", "on", "off")


def add_arguments(p: ArgumentParser, seed_drawn: bool = True) -> None:
    """The flags of `hparr train`, their defaults those of `TrainSettings` and `DataOptions` (`seed_drawn`: an
    unset --seed draws one; False where the command sets its own default seed)."""
    from ..data import DataOptions  # start-up time, as above
    from ..training import DEFAULT_WEIGHT_DECAY, OPTIMIZERS, PLATEAU_EPOCHS, TrainSettings  # start-up time, as above

    add_arch_argument(p)
    add_data_arguments(p)
    train = TrainSettings
    p.add_argument("--input-size", type=int, setting=DataOptions, metavar="S",
                   help="resize the images of --dataset imagefolder to SxS [their own size]")
    p.add_argument("--noise", type=float, setting=DataOptions,
                   help="ratio of corrupted training labels in [0, 1]; -1 = pixel shuffle instead [%(default)g]")
    p.add_argument("--noise-seed", type=int, setting=DataOptions, help="seed for label corruption / pixel shuffle")
    p.add_argument("--augmentation", action="store_true", setting=DataOptions, help="enable data augmentation")
    p.add_argument("--pretrained", action="store_true", setting=train,
                   help="start from torchvision's ImageNet weights")
    p.add_argument("--weights", type=str, setting=train,
                   help="file of pretrained weights, any checkpoint format (implies --pretrained)")
    add_state_dict_prefix_argument(p, train)
    p.add_argument("--split", type=float, setting=DataOptions,
                   help="fraction of the training set held out for validation (0 = none) [%(default)g]")
    p.add_argument("--stratified", action="store_true", setting=DataOptions,
                   help="validation split with equal samples per class")
    p.add_argument("--split-seed", type=int, setting=DataOptions, help="seed for shuffling before the split")
    p.add_argument("--shuffle", action="store_true", setting=DataOptions,
                   help="shuffle the training data before the split")
    p.add_argument("--train-size", type=int, setting=DataOptions, metavar="N",
                   help="train on a stratified, seeded subset of N training images (taken after the class subset "
                        "and the validation split; --noise corrupts that subset) [all]")
    p.add_argument("--train-size-seed", type=int, setting=DataOptions,
                   help="seed for choosing the --train-size subset (derived from --seed if unset)")
    p.add_argument("--evaluate", "--test-only", action="store_true",
                   help="evaluate the --resume-from snapshot on the test set and exit")
    p.add_argument("--evaluate-train", action="store_true",
                   help="evaluate the --resume-from snapshot on the training set and exit")
    p.add_argument("--cuda", action="store_true", setting=train,
                   help="use the GPU (falls back to the CPU with a warning)")
    p.add_argument("--amp", nargs="?", const="bf16", setting=train, choices=AMP, type=choice(AMP),
                   help="mixed precision on the GPU (bf16 by default; fp16 uses a GradScaler)")
    p.add_argument("--compile", nargs="?", const="inductor", setting=train, metavar="BACKEND",
                   help="torch.compile the model for training, with BACKEND (inductor by default); snapshots keep "
                        "plain keys and evaluation stays eager")
    p.add_argument("--sync-bn", action="store_true", setting=train, help="synchronized BatchNorm under torchrun")
    p.add_argument("--channels-last", choices=CHANNELS_LAST, type=choice(CHANNELS_LAST), setting=train,
                   help="channels_last memory format: auto = on the GPU, and on the CPU for narrow convnets "
                        "[%(default)s]")
    p.add_argument("--workers", "-j", type=int, setting=train,
                   help="data loading processes (ImageNet only) [%(default)s]")
    p.add_argument("--epochs", type=int, setting=train,
                   help="number of training epochs (the cap with --until-train-acc) [%(default)s]")
    p.add_argument("--until-train-acc", type=float, setting=train, metavar="PCT",
                   help="stop after the first epoch whose top-1 on the model's own training labels (corrupted where "
                        "they are; eval mode, no augmentation) reaches PCT %%; the final snapshot is that epoch's "
                        "[off]")
    p.add_argument("--start-epoch", type=int, setting=train,
                   help="starting epoch (for a bare-weights resume) [%(default)s]")
    p.add_argument("--batch-size", type=int, setting=train, help="minibatch size [%(default)s]")
    p.add_argument("--optimizer", type=choice(OPTIMIZERS), setting=train,
                   help=f"{' or '.join(OPTIMIZERS)} (any case) [%(default)s]")
    p.add_argument("--lr", type=float, setting=train, help="base learning rate [%(default)g]")
    p.add_argument("--lr-step", type=int, setting=train,
                   help="decay the lr every this many epochs [%(default)s = off]")
    p.add_argument("--lr-decay", type=float, setting=train, help="lr decay factor [%(default)g = off]")
    decay = ", ".join(f"{value:g} with {name}" for name, value in DEFAULT_WEIGHT_DECAY.items())
    p.add_argument("--weight-decay", type=float, setting=train,
                   help="weight decay: the weight_decay of torch.optim.SGD or torch.optim.Adam, an L2 penalty added "
                        f"to the gradient (Adam's is not AdamW's decoupled decay) [{decay}, as in the paper's code]")
    p.add_argument("--momentum", type=float, setting=train, help="SGD momentum [%(default)g]")
    p.add_argument("--models-path", type=str, setting=train, help="where snapshots are stored [%(default)s]")
    p.add_argument("--seed", type=int, setting=train,
                   help="seed of initialization, data order and dropout" + (
                       " (a random one is drawn and recorded if unset)" if seed_drawn else ""))
    p.add_argument("--tb-logdir", type=str, setting=train, help="TensorBoard folder [%(default)s]")
    p.add_argument("--snapshot-every", type=int, setting=train,
                   help="snapshot every E epochs [%(default)s = only the last]")
    p.add_argument("--snapshot-all-until", type=int, setting=train,
                   help="snapshot every epoch until this one, then every --snapshot-every [%(default)s = none]")
    p.add_argument("--resume-from", type=str, setting=train,
                   help="snapshot to resume from; 'auto' or a directory picks the run's newest complete one")
    p.add_argument("--overwrite", action="store_true", setting=train,
                   help="replace a run of another configuration (lr, optimizer, data options, seed, ...) whose "
                        "snapshots are in the run directory; without it such a run is never overwritten")
    p.add_argument("--kill-plateaus", action="store_true", setting=train,
                   help=f"stop when the top-1 accuracy of an epoch equals the one before, within the first "
                        f"{PLATEAU_EPOCHS} epochs: on the validation split (--split), else on the training set (the "
                        "labels it is trained on)")
    p.add_argument("--train-acc", action="store_true", setting=train,
                   help="also report training accuracy at snapshots")
    p.add_argument("--log", type=str, setting=train, help="log file name, in the run directory [%(default)s]")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.add_argument("--no-track", action="store_true",
                   help="do not track the per-layer bias statistics during training (tracking.csv, bias/* in "
                        "TensorBoard)")
    p.add_argument("--track-every-steps", type=int, setting=train, metavar="K",
                   help="also track the bias statistics every K optimizer steps, not only after each epoch "
                        "[%(default)s = off]")
    p.add_argument("--json", action="store_true", help="print the run summary as JSON")


def set_defaults(p: ArgumentParser, shown: dict[str, str] | None = None, presets: Any = None, **defaults) -> None:
    """Another default for some of a command's flags: those of the preset mapping `presets` (recorded as their
    source, `ArgumentParser.settings`) and `defaults`. Each such flag's help ends in its default ("[30]"), or in
    the text of `shown` ({dest: text}) for a flag whose value this command sets itself."""
    for dest in presets or {}:
        p.set_setting(dest, presets)
    p.set_defaults(**defaults)
    texts = {dest: "%(default)s" for dest in [*(presets or {}), *defaults]}
    texts.update(shown or {})
    for action in p.arguments:
        if action.dest in texts and action.help not in (None, argparse.SUPPRESS):  # "[0 = off]" becomes "[5]"
            action.help = re.sub(r"\s*\[[^\[\]]*\]$", "", action.help) + f" [{texts[action.dest]}]"


def data_options(args, resize: bool = True):
    """The data options of a parsed command line: every field of `DataOptions` that the command has a flag for,
    the others their field's default (`resize`: whether its --input-size resizes the data, as in train, or is the
    model's shape, as in reinit)."""
    from ..data import DataOptions, canonical_dataset_args  # start-up time: the commands import torch when they run

    given = {f.name: getattr(args, f.name) for f in dataclasses.fields(DataOptions) if hasattr(args, f.name)}
    given["dataset_args"] = canonical_dataset_args(given.get("dataset_args"))
    if not resize:
        given.pop("input_size", None)
    return DataOptions(**given)


def require_arch_and_dataset(args, need_arch: bool = True) -> None:
    """As the original code did, no --arch lists the architectures and no --dataset the datasets (on stdout);
    then the command is refused (a UsageError: exit 2). `need_arch` False: --arch may be left out (the
    checkpoint records its architecture, or an ONNX file is its own graph)."""
    from ..errors import UsageError  # start-up time, as above

    if args.arch is None and need_arch:
        from ..models import supported_archs  # start-up time, as above

        print("Available architectures:\n  " + "\n  ".join(supported_archs()))
        raise UsageError("--arch is missing: choose one of the architectures listed above")
    if args.dataset is None:
        from ..data import DATASETS, IMAGEFOLDER  # start-up time, as above

        print("Available datasets:\n  " + "\n  ".join(DATASETS) + f"\n  {IMAGEFOLDER} (your images: --data-path "
              "DIR with DIR/train/<class>/* and DIR/val/<class>/*)\n  module.path:factory (your torch Datasets, "
              "with --dataset-args k=v,...)")
        raise UsageError("--dataset is missing: choose one of the datasets listed above")


class _StderrHandler(logging.StreamHandler):
    """Writes to whatever sys.stderr is at the time (it may be replaced after set-up)."""

    def emit(self, record: logging.LogRecord) -> None:
        self.stream = sys.stderr
        super().emit(record)


def setup_logging() -> None:
    """Progress messages of the library on stderr, once per process."""
    logger = logging.getLogger("hparr")
    if not any(isinstance(h, _StderrHandler) for h in logger.handlers):
        handler = _StderrHandler()
        handler.setFormatter(logging.Formatter("%(message)s"))
        logger.addHandler(handler)
    logger.setLevel(logging.INFO)


def settings_from_args(args):
    from ..training import TrainSettings  # start-up time, as above

    return TrainSettings(
        arch=args.arch, data=data_options(args), epochs=args.epochs, start_epoch=args.start_epoch,
        batch_size=args.batch_size, optimizer=args.optimizer, lr=args.lr, lr_step=args.lr_step,
        lr_decay=args.lr_decay, weight_decay=args.weight_decay, momentum=args.momentum, seed=args.seed,
        models_path=args.models_path, tb_logdir=args.tb_logdir or None, snapshot_every=args.snapshot_every,
        snapshot_all_until=args.snapshot_all_until, resume_from=args.resume_from, overwrite=args.overwrite,
        kill_plateaus=args.kill_plateaus, train_acc=args.train_acc,
        pretrained=args.pretrained or args.weights is not None, weights=args.weights,
        state_dict_prefix=getattr(args, "state_dict_prefix", None), cuda=args.cuda,
        amp=args.amp, compile=args.compile, channels_last=args.channels_last, sync_bn=args.sync_bn,
        workers=args.workers, progress=not args.no_progress, log=args.log,
        track=not args.no_track, track_every_steps=args.track_every_steps, until_train_acc=args.until_train_acc)


def run(args) -> int:
    require_arch_and_dataset(args)
    import torch  # start-up time, as above (and the listings above need no torch)

    from ..provenance import available_cores  # start-up time, as above
    from ..training import EvaluateSettings, evaluate_snapshot, final_headline, setup, train  # start-up time, as above

    setup_logging()
    torch.set_num_threads(available_cores())
    settings = settings_from_args(args)
    if args.evaluate or args.evaluate_train:
        split = "test" if args.evaluate else "train"
        m = evaluate_snapshot(EvaluateSettings(settings, split))
        print(f"{split}: loss {m['loss']:.4f}  top1 {m['top1']:.2f}%  top5 {m['top5']:.2f}%  ({m['count']} images)")
        if args.json:
            print(json.dumps({"split": split, **m}))
        return 0
    with setup(settings) as session:
        summary = train(settings, session)
    if not session.ctx.is_main:  # rank 0 alone reports
        return 0
    if args.json:
        print(json.dumps(summary.as_dict(history=False)))
    elif summary.final:
        last = summary.history[-1] if summary.history else {}
        final = dict(summary.final)
        if last.get("epoch") == summary.epochs_trained and last.get("train_top1") is not None:
            final["train"] = {"top1": last["train_top1"]}  # measured at the final epoch (--train-acc, ...)
        print(final_headline(final, summary.stopped, settings.epochs, settings.until_train_acc))
        print(f"snapshots in {summary.run_dir}")
    else:
        print(f"no epoch trained (--epochs {settings.epochs}); snapshots in {summary.run_dir}")
    return 0
