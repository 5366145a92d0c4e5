"""What a training run is built from: `setup` checks the settings, joins torchrun's process group, locks the run
directory, loads the data, builds the model and its optimizer, and resumes from a snapshot when asked; the
`Setup` it yields holds them all, for the recipe (`hparr.training.train`) to use."""
from __future__ import annotations

import contextlib
import logging
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Iterator

import torch
import torch.nn as nn

from .. import layout
from ..data import Data, DataOptions, load_data, make_loader
from ..errors import HparrError, UsageError
from ..layers import check_model
from ..models import build_model
from ..provenance import derive_seeds, resolve_seed
from ._distributed import Context, all_reduce_sum, init_from_env, select_device, shutdown
from ._rundir import RunDirectoryLock, other_configurations, weight_configuration
from ._settings import TrainSettings, data_options_with_seeds
from ._snapshots import StartPoint, resolve_resume, resume

log = logging.getLogger("hparr.train")

CHANNELS_LAST_MAX_WIDTH = 128


def use_channels_last(model: nn.Module, device: torch.device, choice: str = "auto") -> bool:
    """Whether to train in channels_last. "auto": always on the GPU; on the CPU only for narrow convnets
    (at most 128 channels), where it was measured 1.6x faster for lenet and 2-5% slower for VGG/AlexNet.
    The rule depends on the model alone, so a resumed run makes the same choice."""
    if choice != "auto":
        return choice == "on"
    widths = [m.out_channels for m in model.modules() if isinstance(m, nn.Conv2d)]
    if not widths:
        return False
    return device.type == "cuda" or max(widths) <= CHANNELS_LAST_MAX_WIDTH


def compile_model(model: nn.Module, backend: str = "inductor") -> nn.Module:
    """`model` compiled with torch.compile for training steps: a wrapper that shares its parameters, so the
    plain `model` still gives snapshots without the wrapper's `_orig_mod.` prefix and evaluates eagerly.
    Static shapes: a run compiles once for its batch size and once for the epoch's last, shorter batch.
    Under torchrun, DistributedDataParallel wraps the compiled module (the order PyTorch documents)."""
    return torch.compile(model, backend=backend, dynamic=False)


def make_optimizer(params, settings: TrainSettings):
    """The original's optimizers: SGD (momentum, weight decay, optional StepLR per epoch) or Adam(lr), Adam with
    the run's weight decay as its `weight_decay` (an L2 penalty added to the gradient; none by default, as the
    original's Adam had none)."""
    if settings.optimizer == "sgd":
        opt = torch.optim.SGD(params, lr=settings.lr, momentum=settings.momentum, weight_decay=settings.weight_decay)
    else:
        opt = torch.optim.Adam(params, lr=settings.lr, weight_decay=settings.weight_decay)
    sched = None
    if settings.optimizer == "sgd" and settings.lr_step > 0 and settings.lr_decay > 0:
        sched = torch.optim.lr_scheduler.StepLR(opt, step_size=settings.lr_step, gamma=settings.lr_decay)
    return opt, sched


@dataclass
class Setup:
    """A training run, built by `setup`: its settings, this process's place in torchrun (`ctx`) and device, the
    seeds (the run's `seed` and those derived from it), the data, the model, its optimizer and scheduler, the
    generator of the data order, where training starts (`start`), and the snapshots of another configuration in
    the run directory (`other_runs`: refused or replaced by `train`, never resumed)."""

    settings: TrainSettings
    ctx: Context
    device: torch.device
    amp_dtype: torch.dtype | None
    seed: int
    seeds: dict[str, int]
    data_options: DataOptions
    run_dir: Path
    data: Data
    model: nn.Module
    channels_last: bool
    optimizer: torch.optim.Optimizer
    scheduler: Any
    data_generator: torch.Generator
    start: StartPoint
    other_runs: list[tuple[Path, list[str]]]


@contextlib.contextmanager
def setup(settings: TrainSettings, writes: bool = True) -> Iterator[Setup]:
    """The `Setup` of a training run, released at the end (its run directory, and torchrun's process group).

    A run that trains (`writes`, the default) holds an exclusive lock on its run directory from the start (rank 0
    alone, which alone writes there): a second run into it is refused at once, naming the first. A run set up
    only to evaluate a snapshot (`writes=False`) takes no lock and writes nothing."""
    settings.validate()
    ctx = init_from_env(settings.cuda and torch.cuda.is_available())
    lock: RunDirectoryLock | None = None
    try:
        if not ctx.is_main:  # rank 0 alone reports
            logging.getLogger("hparr").setLevel(logging.WARNING)
        device = select_device(settings.cuda, ctx.local_rank)
        if device.type == "cuda":
            torch.backends.cudnn.benchmark = True
        amp_dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(settings.amp) \
            if settings.amp and device.type == "cuda" else None
        if settings.amp and device.type != "cuda":
            log.warning("--amp needs a GPU: training in float32")
        seed = resolve_seed(settings.seed)
        if ctx.distributed:  # one seed for all ranks, chosen by rank 0
            seed = int(all_reduce_sum([seed if ctx.is_main else 0], device)[0])
        seeds = {"seed": seed, "model_init": seed, **derive_seeds(seed, "data_order", "dropout")}
        data_options = data_options_with_seeds(settings.data, seed)
        run_dir = layout.run_directory(settings.models_path, data_options.dataset, settings.arch, settings.seed,
                                       data_options.subsample_classes, data_options.noise, data_options.train_size)
        if writes:
            lock = lock_run_dir(run_dir, ctx, device)
        data = load_data(data_options)
        seeds.update(noise_seed=data_options.noise_seed, split_seed=data_options.split_seed,
                     class_sample_seed=data_options.class_sample_seed, train_size_seed=data_options.train_size_seed)
        model = build_model(settings.arch, data.num_classes, data.in_channels, data.image_size, seed=seed,
                            pretrained=settings.pretrained, weights=settings.weights,
                            state_dict_prefix=settings.state_dict_prefix)
        # before anything is written: a model that cannot take the input hparr passes, or (when the bias
        # statistics are tracked) one with no layer to analyze, is refused in one line
        size = data.image_size
        check_model(model, (2, data.in_channels, size, size), f"--arch {settings.arch}", analyzed=settings.track,
                    no_layer_hint="pass --no-track to train it without tracking the bias statistics")
        if settings.sync_bn and ctx.distributed:
            model = nn.SyncBatchNorm.convert_sync_batchnorm(model)
        channels_last = use_channels_last(model, device, settings.channels_last)
        model.to(device, memory_format=torch.channels_last if channels_last else torch.preserve_format)
        optimizer, scheduler = make_optimizer(model.parameters(), settings)
        data_generator = torch.Generator().manual_seed(seeds["data_order"])
        start = StartPoint(epoch=settings.start_epoch,
                           dropout_state=torch.Generator().manual_seed(seeds["dropout"]).get_state())
        other_runs = other_configurations(run_dir, weight_configuration(asdict(settings), seeds, data.meta))
        path = resolve_resume(settings.resume_from, run_dir, tuple(p for p, _ in other_runs)) \
            if settings.resume_from else None
        if path is not None:
            start = resume(path, settings, model, optimizer, scheduler, data_generator, start)
        yield Setup(settings=settings, ctx=ctx, device=device, amp_dtype=amp_dtype, seed=seed, seeds=seeds,
                    data_options=data_options, run_dir=run_dir, data=data, model=model, channels_last=channels_last,
                    optimizer=optimizer, scheduler=scheduler, data_generator=data_generator, start=start,
                    other_runs=other_runs)
    finally:
        if lock is not None:
            lock.release()
        shutdown(ctx)


def lock_run_dir(run_dir: Path, ctx: Context, device: torch.device) -> RunDirectoryLock | None:
    """Rank 0 locks the run directory (and holds the lock returned); every rank learns whether it could, so that
    none waits for the others in a collective call after rank 0 was refused."""
    lock, refused = None, None
    if ctx.is_main:
        try:
            lock = RunDirectoryLock.acquire(run_dir)
        except HparrError as exc:
            refused = exc
    if ctx.distributed and all_reduce_sum([float(refused is not None)], device)[0]:
        refused = refused or UsageError(f"{run_dir} is in use by another training run (rank 0 names it)")
    if refused is not None:
        if lock is not None:
            lock.release()
        raise refused
    return lock


def loader(s: Setup, split: str, train: bool | None = None):
    """The loader of `split` ("train", "val" or "test") for this process; a training loader (`train`, by default
    for "train" alone) shuffles with the run's data-order generator and augments."""
    return make_loader(s.data, split, s.settings.batch_size, train=train,
                       generator=s.data_generator if (split == "train" if train is None else train) else None,
                       device=s.device, workers=s.settings.workers, rank=s.ctx.rank,
                       world_size=s.ctx.world_size, channels_last=s.channels_last)
