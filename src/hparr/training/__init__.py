"""Training: `train(TrainSettings(...))` runs the recipe of `_recipe.py` top to bottom (`setup`, then per epoch
`train_one_epoch`, `evaluate`, `save_snapshot`), with snapshots in the original layout, exact resume, TensorBoard,
torchrun (DDP) and the bias tracker; `evaluate_snapshot` measures a snapshot.

One subsystem per module: `_settings` (what a run is asked, what it returns), `_setup` (the run's state),
`_recipe` (the loop), `_snapshots` (what a snapshot holds; resuming from one), `_rundir` (one configuration and
one writer per run directory), `_tensorboard`, `_distributed` (torchrun) and `_track` (`BiasTracker`, also for
plain PyTorch loops and Lightning). What other modules use is exported here.
"""
from ._distributed import Context, all_reduce_sum, init_from_env, select_device, shutdown
from ._recipe import (
    PLATEAU_EPOCHS,
    autocast,
    evaluate,
    evaluate_snapshot,
    evaluate_split,
    report_epoch,
    save_snapshot,
    start_tracking,
    train,
    train_one_epoch,
)
from ._rundir import (
    LOCK_NAME,
    WEIGHT_SETTINGS,
    RunDirectoryLock,
    claim,
    configuration_differences,
    other_configurations,
    weight_configuration,
)
from ._settings import (
    DEFAULT_WEIGHT_DECAY,
    OPTIMIZERS,
    OUTLOOK_EPOCHS,
    STOP_REASONS,
    EvaluateSettings,
    TrainResult,
    TrainSettings,
    data_options_with_seeds,
    duration_text,
    final_headline,
    target_outlook,
)
from ._setup import Setup, compile_model, loader, make_optimizer, setup, use_channels_last
from ._snapshots import TOP_LEVEL_FACTS, StartPoint, data_record, resolve_resume, write_snapshot
from ._tensorboard import TensorBoard, open_writer

__all__ = [
    "BiasTracker", "Context", "DEFAULT_WEIGHT_DECAY", "EvaluateSettings", "LOCK_NAME", "OPTIMIZERS", "OUTLOOK_EPOCHS",
    "PLATEAU_EPOCHS", "RunDirectoryLock", "STOP_REASONS", "Setup", "StartPoint", "TOP_LEVEL_FACTS", "TensorBoard",
    "TrainResult", "TrainSettings", "WEIGHT_SETTINGS", "all_reduce_sum", "autocast", "claim", "compile_model",
    "configuration_differences", "data_options_with_seeds", "data_record", "duration_text", "evaluate",
    "evaluate_snapshot", "evaluate_split", "final_headline", "init_from_env", "loader", "make_optimizer",
    "open_writer", "other_configurations", "report_epoch", "resolve_resume", "save_snapshot", "select_device",
    "setup", "shutdown", "start_tracking", "target_outlook", "train", "train_one_epoch", "use_channels_last",
    "weight_configuration", "write_snapshot",
]


def __getattr__(name: str):
    """`BiasTracker`, imported when first asked for (start-up time: the tracker loads scipy and pandas, which a
    run that does not track never needs)."""
    if name == "BiasTracker":
        from ._track import BiasTracker  # start-up time: scipy and pandas, only when asked for

        return BiasTracker
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
