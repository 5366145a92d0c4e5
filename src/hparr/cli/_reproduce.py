"""`hparr reproduce`: the whole study for one configuration, in one command."""
from __future__ import annotations

from ..defaults import REPRODUCE_RECIPE
from ..errors import UsageError
from ..layout import PAGE_NAME, REPORT_DIR
from . import _train as train_cli
from ._args import ArgumentParser, choices_list, default_of


def _flags(options) -> str:
    """Options of the library as the flags that set them: {"lr": 0.01} -> "--lr 0.01"."""
    return " ".join(f"--{name.replace('_', '-')} {value}" for name, value in options.items())


DESCRIPTION = ("Train with snapshots, compute the projections of every snapshot (with distances from "
               "initialization), run the layer re-initialization sweep against every checkpoint and --rand, and "
               "draw the report. Every flag of `hparr train` passes through; snapshots, TensorBoard logs, results "
               "and the report all go under --out. Where no flag says otherwise it trains the recipe "
               f"{_flags(REPRODUCE_RECIPE)} (hparr.defaults.REPRODUCE_RECIPE; every other option as `hparr train`).")


def add_arguments(p: ArgumentParser) -> None:
    """The flags of `hparr train`, their defaults the recipe's, and the analysis flags, their defaults those of
    `pipeline.ReproduceSettings`."""
    from ..pipeline import ReproduceSettings  # start-up time: the library imports torch (the defaults are its)
    from ..results import EVAL_SPLITS  # start-up time, as above

    train_cli.add_arguments(p, seed_drawn=False)
    p.add_argument("--out", type=str, setting=ReproduceSettings,
                   help="folder for snapshots, results and the report [%(default)s]")
    p.add_argument("--with-linear", action="store_true", setting=ReproduceSettings,
                   help="also analyze and re-initialize Linear layers")
    p.add_argument("--threshold", type=float, setting=ReproduceSettings,
                   help="relative accuracy drop above which a layer is called critical [%(default)g]")
    p.add_argument("--level", type=float, setting=ReproduceSettings,
                   help="significance level of the bias tests [%(default)g]")
    splits = ",".join(default_of(ReproduceSettings, "eval_splits"))  # the comma list of the field's splits
    p.add_argument("--eval-split", type=choices_list(EVAL_SPLITS), default=splits, metavar="SPLITS",
                   help="where the re-initialization sweep measures accuracy: test, train (the training images with "
                        "the labels trained on) or test,train for both; the report shows the first [%(default)s]")
    train_cli.set_defaults(p, shown={"models_path": "ignored: OUT/models", "tb_logdir": "OUT/tensorboard",
                                     "resume_from": "auto: a rerun resumes"}, presets=REPRODUCE_RECIPE)


def run(args) -> int:
    import torch  # start-up time: the command modules import torch only when they run

    from ..pipeline import ReproduceSettings, run_reproduce  # start-up time, as above
    from ..provenance import available_cores  # start-up time, as above
    from ..training import final_headline  # start-up time, as above

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
