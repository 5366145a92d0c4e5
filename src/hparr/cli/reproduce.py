"""`hparr reproduce`: the whole study for one configuration, in one command."""
from __future__ import annotations

import argparse

from ..defaults import LEVEL, THRESHOLD
from ..errors import UsageError
from ..layout import PAGE_NAME, REPORT_DIR
from ..results import EVAL_SPLITS
from . import train as train_cli
from .args import choices_list

DESCRIPTION = ("Train with snapshots, compute the projections of every snapshot (with distances from "
               "initialization), run the layer re-initialization sweep against every checkpoint and --rand, and "
               "draw the report. Every flag of `hparr train` passes through; snapshots, TensorBoard logs, results "
               "and the report all go under --out. The defaults train lenet on the embedded digits dataset.")


def add_arguments(p: argparse.ArgumentParser) -> None:
    train_cli.add_arguments(p, seed_drawn=False)
    p.add_argument("--out", type=str, default="runs/reproduce",
                   help="folder for snapshots, results and the report [runs/reproduce]")
    p.add_argument("--with-linear", action="store_true", help="also analyze and re-initialize Linear layers")
    p.add_argument("--threshold", type=float, default=THRESHOLD,
                   help=f"relative accuracy drop above which a layer is called critical [{THRESHOLD}]")
    p.add_argument("--level", type=float, default=LEVEL, help=f"significance level of the bias tests [{LEVEL}]")
    p.add_argument("--eval-split", type=choices_list(EVAL_SPLITS), default="test", metavar="SPLITS",
                   help="where the re-initialization sweep measures accuracy: test, train (the training images with "
                        "the labels trained on) or test,train for both; the report shows the first [test]")
    # a recipe that reaches >= 95% on digits in a few minutes on 2 CPU cores
    train_cli.set_defaults(p, shown={"models_path": "ignored: OUT/models", "tb_logdir": "OUT/tensorboard",
                                     "resume_from": "auto: a rerun resumes"},
                           arch="lenet", dataset="digits", epochs=30, lr=0.01, seed=0, snapshot_every=5,
                           snapshot_all_until=10, batch_size=128)


def run(args) -> int:
    import torch  # start-up time: the command modules import torch only when they run

    from ..pipeline import ReproduceSettings, run_reproduce  # start-up time, as above
    from ..provenance import available_cores  # start-up time, as above
    from ..train_settings import final_headline  # start-up time, as above

    if args.evaluate or args.evaluate_train:  # flags of `hparr train` that this command takes but cannot use
        raise UsageError("--evaluate/--evaluate-train do not apply to reproduce; use `hparr train`")
    settings = ReproduceSettings(train_cli.settings_from_args(args), args.out, with_linear=args.with_linear,
                                 threshold=args.threshold, level=args.level, eval_splits=args.eval_split)
    settings.validate()
    train_cli.setup_logging()
    torch.set_num_threads(available_cores())
    out = run_reproduce(settings)
    print(final_headline(out.final, out.stopped, settings.train.epochs, settings.train.until_train_acc))
    print(f"{out.snapshots} snapshots analyzed; report in {args.out}/{REPORT_DIR}/{PAGE_NAME}")
    return 0
