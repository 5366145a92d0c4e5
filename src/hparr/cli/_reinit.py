"""`hparr reinit`: the paper's reinit_layers.py (layer re-initialization test of Zhang et al.)."""
from __future__ import annotations

import sys

from ..layout import REINIT_LOG
from ..results import EVAL_SPLITS, REFUSE, complete_reinit_doc, reuse_or_recompute
from ._args import ArgumentParser, choice
from ._projections import add_model_shape_arguments
from ._train import (
    add_arch_argument,
    add_data_arguments,
    add_state_dict_prefix_argument,
    data_options,
    require_arch_and_dataset,
    setup_logging,
)

DESCRIPTION = (
    "Reinit network weights and compute drop in performance. For each conv layer (1x1 ones with --include-1x1, "
    "and Linear with --with-linear), its weight and bias are replaced by those of each snapshot of --inits-from "
    "(re-initialization) and, with --rand, by a fresh seeded initialization (re-randomization), and the "
    "test accuracy, test loss and agreement with the trained model's predictions are measured (on the training "
    "images and their trained labels with --eval-split train); BatchNorm stays "
    "as trained unless --with-bn. --granularity block/stage re-initializes a residual block or a stage at once. "
    "Writes <results>/<dataset>[_<K>][/train_<N>][/noise_<pct>|/pixel_shuffle]/<arch>[/<seed>]/reinit_<snapshot "
    "name>[_<granularity>][_bn][_train].json (the folder names the condition of the run, as its snapshot records "
    "it; the original layout plus layer names, top-5, loss, agreement and provenance) and, with --plots, a heatmap "
    "of the relative accuracy drop (.png, .pdf).")


GRANULARITIES = ("layer", "block", "stage")
METHODS = ("auto", "shared", "plain")


def add_arguments(p: ArgumentParser) -> None:
    """The flags of `hparr reinit`, their defaults those of `ReinitSettings` and `DataOptions`."""
    from ..reinit import ReinitSettings  # start-up time: the library imports torch (the defaults are its)

    add_arch_argument(p)
    add_data_arguments(p, dataset_help="dataset the model was trained on, whose test or training images are "
                                       "evaluated")
    reinit = ReinitSettings
    p.add_argument("--load-from", type=str, default="",
                   help="the trained snapshot to evaluate (an ONNX model needs no --arch: its graph is run)")
    p.add_argument("--inits-from", type=str, setting=reinit,
                   help="snapshots to re-initialize from: a text file of paths (one per line; blank lines are "
                        "ignored, missing files skipped with a warning) or a directory of snapshots")
    add_state_dict_prefix_argument(p, reinit)
    p.add_argument("--rand", action="store_true", setting=reinit,
                   help="also re-randomize each layer from a fresh initialization (seed derived from --seed)")
    p.add_argument("--rand-trials", type=int, setting=reinit, metavar="K",
                   help="draw K independent re-randomizations (seeds derived from --seed) and report their mean "
                        "and standard deviation per layer; implies --rand [%(default)s]")
    p.add_argument("--with-linear", action="store_true", setting=reinit,
                   help="also re-initialize the Linear layers")
    p.add_argument("--include-1x1", action="store_true", setting=reinit,
                   help="also re-initialize 1x1 convolutions one at a time (left out by default, as hparr projections "
                        "leaves them out; a block or stage of --granularity always includes them)")
    p.add_argument("--granularity", choices=GRANULARITIES, type=choice(GRANULARITIES), setting=reinit,
                   help="re-initialize one layer at a time, one residual block (all its convs) or one stage "
                        "(all the layers at one resolution) at once, as Zhang et al. did for ResNets [%(default)s]")
    p.add_argument("--with-bn", action="store_true", setting=reinit,
                   help="also re-initialize the BatchNorm after each re-initialized layer (its parameters and "
                        "running statistics); without it BatchNorm stays as trained")
    p.add_argument("--cuda", action="store_true", setting=reinit,
                   help="evaluate on the GPU (falls back to the CPU with a warning)")
    p.add_argument("--results", type=str, default="./results", help="results folder [%(default)s]")
    p.add_argument("--log", type=str, default=REINIT_LOG,
                   help="log file name, written beside the JSON results [%(default)s]")
    p.add_argument("--seed", type=int, setting=reinit,
                   help="seed the model was trained with (results go to <arch>/<seed>/; unset: the seed the "
                        "snapshot records); the re-randomization seed is derived from it")
    p.add_argument("--workers", "-j", type=int, setting=reinit,
                   help="data loading processes (ImageNet only) [%(default)s]")
    p.add_argument("--batch-size", type=int, setting=reinit, help="evaluation batch size [%(default)s]")
    p.add_argument("--max-test-images", type=int, setting=reinit, metavar="N",
                   help="evaluate on the first N images of the test set only (0 = all) [%(default)s]")
    p.add_argument("--eval-split", type=choice(EVAL_SPLITS), setting=reinit, metavar="SPLIT",
                   help="measure the accuracies on the test set (the paper's), or on the training images with the "
                        "labels the model was trained on (corrupted where they were; no augmentation): test or "
                        "train [%(default)s]")
    p.add_argument("--overwrite", action="store_true", help="recompute a result that already exists")
    p.add_argument("--plots", nargs="?", const="", default=None, metavar="DIR",
                   help="also write the heatmap of the relative drop (PNG, PDF): beside the JSON result, or with "
                        "DIR under DIR/<dataset>/<arch>/ as the original code did")
    p.add_argument("--method", choices=METHODS, type=choice(METHODS), setting=reinit,
                   help="auto/shared: run the trained part before each layer once per batch; plain: swap, "
                        "evaluate the whole network, restore (same accuracies, slower) [%(default)s]")
    p.add_argument("--eval-processes", type=str, setting=reinit, metavar="N|auto",
                   help="worker processes sharing the evaluation batches, one torch thread each (CPU; the same "
                        "counts as one process); auto: one per core for a small model, else one process with "
                        "all threads [%(default)s]")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    add_model_shape_arguments(p, reinit)


def run(args) -> int:
    require_arch_and_dataset(args, need_arch=not args.load_from)
    from .. import files, reinit  # start-up time: the library (torch) when the command runs
    from ..reinit.documents import critical_headline

    setup_logging()
    settings = reinit.ReinitSettings(
        load_from=args.load_from, data=data_options(args, resize=False), arch=args.arch, inits_from=args.inits_from,
        rand=args.rand, with_linear=args.with_linear, include_1x1=args.include_1x1,
        seed=args.seed, batch_size=args.batch_size, cuda=args.cuda,
        workers=args.workers, method=args.method, progress=not args.no_progress and sys.stderr.isatty(),
        state_dict_prefix=args.state_dict_prefix, granularity=args.granularity, with_bn=args.with_bn,
        rand_trials=args.rand_trials, max_test_images=args.max_test_images, num_classes=args.num_classes,
        in_channels=args.in_channels, input_size=args.input_size, eval_split=args.eval_split,
        eval_processes=args.eval_processes)
    settings.validate()
    trained = reinit.read_trained(settings)  # the one read of the trained snapshot
    target = reinit.result_path(trained, args.results)
    earlier = None if args.overwrite else reinit.adopt_earlier_result(settings, trained, args.results)
    if earlier is not None:
        print(f"hparr reinit: kept {earlier} (an earlier version's folder), copied to {target}", file=sys.stderr)
    # a finished result is kept (a rerun of a crashed batch skips it); one of other options is refused (a
    # UsageError, the file left as it is) unless --overwrite
    kept, why = reuse_or_recompute(target, lambda path: reinit.judge_result(settings, trained, path),
                                   overwrite=args.overwrite, other_options=REFUSE)
    if kept is not None:
        print(f"kept {target} (already computed from the same checkpoints and options; --overwrite to "
              "recompute)")
        print(critical_headline(complete_reinit_doc(kept)))
        return 0
    if why is not None:
        print(f"hparr reinit: recomputing {target}: {why}", file=sys.stderr)
    with files.log_to(target.parent / args.log, nothing_on_refusal=True) as note:  # a refused run writes no log
        out = reinit.run_reinit(settings, trained)
        written = reinit.save(out, args.results)
        if args.plots is not None:  # the report draws the heatmap; matplotlib and scipy only when asked for
            from ..report.figures import save_reinit_plots

            written += save_reinit_plots(out.document, written[0], args.plots)
        lines = reinit.summary_lines(out.document)
        headline = critical_headline(out.document)
        for line in (*lines, headline):
            note(line)
    print("\n".join(lines))
    print("wrote " + ", ".join(map(str, written)))
    print(headline)
    return 0
