"""`hparr study`: a grid of `hparr reproduce` runs over seeds and corruptions (and architectures, datasets,
class subsets), run by a local process pool, a SLURM job array or any scheduler, then the study's report."""
from __future__ import annotations

import argparse
import math
import sys

from ..defaults import REPRODUCE_RECIPE
from ..errors import UsageError
from ..layout import PAGE_NAME
from . import _reproduce as reproduce_cli
from . import _train as train_cli
from ._args import ArgumentParser, default_of

DESCRIPTION = (
    "Runs `hparr reproduce` for every cell of a grid (--arch x --dataset x --subsample-classes x --train-size x "
    "--noise x --seeds) into OUT/cells/<arch>/<dataset>[_k][_n<N>]/<condition>/seed_<s>/, skipping finished cells, "
    "then writes the study's report to OUT/report/ (statistics across seeds and corruptions). Axes take comma lists; "
    "--seeds and --subsample-classes take ranges too (0-4). Every other flag of `hparr reproduce` applies to every "
    "cell.")

# grid axes that replace a flag of `hparr reproduce`: dest -> help
GRID = {
    "arch": "architectures, comma list [%(default)s]",
    "dataset": "datasets, comma list [%(default)s]",
    "noise": "corruptions, comma list: label-noise ratios in [0, 1], -1 = pixel shuffle [%(default)s]",
    "subsample_classes": "class-subset sizes, comma list or ranges (0 = all classes) [%(default)s]",
    "train_size": "training-set sizes (stratified, seeded subsets), comma list, e.g. 2000,8000 [all]",
}
# flags of `hparr reproduce` that are not shared cell settings
_NOT_SHARED = {*GRID, "seed", "out", "help", "no_progress", "json"}


def listed(values) -> str | None:
    """A grid axis of the library as its flag's comma list ((0.0, 0.5) -> "0,0.5"); (None,) -> None (unset)."""
    if list(values) == [None]:
        return None
    return ",".join(f"{v:g}" if isinstance(v, float) else str(v) for v in values)


def grid_defaults() -> dict[str, str | None]:
    """The default grid: one cell, the recipe of `hparr reproduce` (its arch, dataset and seed), on the full data
    without corruption (the axes' defaults of `StudySettings`); {dest: comma list}."""
    from ..study import StudySettings  # start-up time: the library is imported when the flags are added

    return {"arch": REPRODUCE_RECIPE["arch"], "dataset": REPRODUCE_RECIPE["dataset"],
            "seeds": str(REPRODUCE_RECIPE["seed"]),
            **{dest: listed(default_of(StudySettings, axis)) for dest, axis in
               (("noise", "noises"), ("subsample_classes", "subsample_classes"), ("train_size", "train_sizes"))}}


def add_arguments(p: ArgumentParser) -> None:
    """The flags of `hparr reproduce` (the grid's axes as comma lists), and the study's, their defaults those of
    `StudySettings` and `SlurmOptions`."""
    from ..study import SlurmOptions, StudySettings  # start-up time, as above

    reproduce_cli.add_arguments(p)
    for action in p.arguments:
        if action.dest in GRID:
            action.type, action.help = str, GRID[action.dest]
        elif action.dest == "seed":
            action.help = argparse.SUPPRESS
        elif action.dest == "out":
            action.help = "the study folder [%(default)s]"
    grid = grid_defaults()
    p.add_argument("--seeds", type=str, default=grid.pop("seeds"),
                   help="seeds, comma list or ranges, e.g. 0-4 [%(default)s]")
    p.add_argument("--launcher", type=str, setting=StudySettings,
                   help="local: a pool of worker processes on this machine; slurm: one SLURM job array through "
                        "submitit; print: print the `hparr reproduce` command of every cell [%(default)s]")
    p.add_argument("--jobs", type=int, setting=StudySettings,
                   help="local worker processes [every core, at most one per cell to run]")
    p.add_argument("--threads", type=int, setting=StudySettings,
                   help="torch threads per local worker; jobs x threads <= cores [cores / jobs]")
    p.add_argument("--dry-run", action="store_true",
                   help="check every cell's settings and data files, print one line per cell and exit; nothing is "
                        "written")
    p.add_argument("study_dir", nargs="?", default=None, metavar="STUDY",
                   help="with --status: the study folder [--out]")
    p.add_argument("--status", action="store_true",
                   help="print the state of every cell of the study (finished, running, pending, failed with its "
                        "reason and log, not started) and exit")
    slurm = p.add_argument_group("SLURM (--launcher slurm)")
    slurm.add_argument("--partition", type=str, setting=SlurmOptions, help="partition of the array's tasks")
    slurm.add_argument("--gpus-per-task", type=int, setting=SlurmOptions, help="GPUs per cell [%(default)s]")
    slurm.add_argument("--cpus-per-task", type=int, setting=SlurmOptions,
                       help="CPU cores per cell (its torch threads) [%(default)s]")
    slurm.add_argument("--time", type=int, setting=(SlurmOptions, "time_min"),
                       help="time limit of a cell, in minutes [%(default)s]")
    slurm.add_argument("--array-parallelism", type=int, setting=SlurmOptions,
                       help="cells running at once, at most [%(default)s]")
    slurm.add_argument("--mem", type=str, setting=SlurmOptions,
                       help="memory of each cell, an sbatch size such as 4G or 500M [the partition's default]")
    slurm.add_argument("--account", type=str, setting=SlurmOptions, help="account charged for the array")
    slurm.add_argument("--qos", type=str, setting=SlurmOptions, help="quality of service of the array")
    slurm.add_argument("--constraint", type=str, setting=SlurmOptions, help="node features the cells need")
    slurm.add_argument("--slurm-extra", action="append", default=[], metavar="KEY=VALUE",
                       help="another sbatch option, e.g. mail-type=END (repeatable)")
    slurm.add_argument("--setup", action="append", default=[], metavar="CMD",
                       help="a shell line run in the job before the cell, e.g. 'module load cuda' (repeatable)")
    slurm.add_argument("--no-wait", action="store_true",
                       help="submit the array, record its job id in study.json and exit; follow it with --status")
    p.set_defaults(**grid, seed=None)
    for dest in (*grid, "seed"):  # comma lists, or refused (--seed): no longer a setting's value
        p.settings.pop(dest, None)
    for dest in ("out", "with_linear", "threshold", "level"):  # the study's options, as the cells' reproduce
        p.set_setting(dest, StudySettings)
    train_cli.set_defaults(p, shown={"models_path": "ignored: OUT/cells/.../models",
                                     "tb_logdir": "OUT/cells/.../tensorboard"})


def shared_flags(args) -> list[str]:
    """The flags of `hparr reproduce` given to the study that every cell shares, as a command line."""
    reference = ArgumentParser(add_help=False)
    reproduce_cli.add_arguments(reference)
    argv: list[str] = []
    for action in reference.arguments:
        if action.dest in _NOT_SHARED or not action.option_strings:
            continue
        value = getattr(args, action.dest, action.default)
        if value == action.default:
            continue
        option = next((o for o in action.option_strings if o.startswith("--")), action.option_strings[0])
        argv += [option] if action.nargs == 0 else [option, str(value)]
    return argv


def refuse_other_flags(args) -> None:
    """The flags of `hparr reproduce` that a study does not take, and a stray positional argument."""
    if args.seed is not None:
        raise UsageError("--seed does not apply to a study: use --seeds (e.g. --seeds 0-4)")
    if args.study_dir is not None:
        raise UsageError(f"unexpected argument {args.study_dir!r}: a study folder is given with --out "
                         "(or as STUDY with --status)")
    if args.evaluate or args.evaluate_train:
        raise UsageError("--evaluate/--evaluate-train do not apply to a study; use `hparr train`")


def settings_from_args(args):
    """The study's settings from its parsed flags (the lists parsed; validated by `StudySettings.validate`)."""
    from .. import study  # start-up time: the commands import the library when they run
    from ..results import parse_eval_splits  # start-up time, as above

    refuse_other_flags(args)
    archs = study.parse_names("--arch", args.arch)
    datasets = study.parse_names("--dataset", args.dataset)
    seeds = study.parse_ints("--seeds", args.seeds)
    noises = study.parse_floats("--noise", args.noise)
    subsets = study.parse_ints("--subsample-classes", args.subsample_classes)
    sizes = [None] if args.train_size is None else study.parse_ints("--train-size", args.train_size)
    splits = parse_eval_splits(args.eval_split)
    # the shared settings: the grid's values are placeholders that each cell replaces
    base = train_cli.settings_from_args(argparse.Namespace(**{
        **vars(args), "arch": archs[0], "dataset": datasets[0], "noise": 0.0, "subsample_classes": 0, "seed": 0,
        "train_size": None}))
    return study.StudySettings(
        base=base, archs=archs, datasets=datasets, seeds=seeds, noises=noises, subsample_classes=subsets,
        train_sizes=sizes, eval_splits=splits,
        out=args.out, with_linear=args.with_linear, threshold=args.threshold, level=args.level,
        launcher=args.launcher, jobs=args.jobs, threads=args.threads,
        slurm=study.SlurmOptions(partition=args.partition, gpus_per_task=args.gpus_per_task,
                                 cpus_per_task=args.cpus_per_task, time_min=args.time,
                                 array_parallelism=args.array_parallelism, mem=args.mem, account=args.account,
                                 qos=args.qos, constraint=args.constraint,
                                 extra=study.parse_slurm_extra(args.slurm_extra), setup=list(args.setup)),
        flags=shared_flags(args), progress=not args.no_progress, wait=not args.no_wait)


def show_status(study_dir: str) -> int:
    """`hparr study STUDY --status`: one line per cell, then the counts."""
    from .. import study  # start-up time: the commands import the library when they run

    statuses = study.study_status(study_dir)
    for s in statuses:
        shown = [f"task {s.task}"] if s.task else []
        if s.state == "running" or (s.state == "pending" and not (s.task and s.slurm)):
            shown.append(s.detail)
        elif s.state != "finished" and s.slurm:
            shown.append(s.slurm)
        line = f"{s.state:11s} {s.cell}" + (f" ({', '.join(shown)})" if shown else "")
        if s.state == "failed":
            line += f": {s.detail}" + (f"; log: {s.log}" if s.log else "; no log")
        print(line)
    counts = {state: sum(s.state == state for s in statuses) for state in study.STATES}
    print(f"{len(statuses)} cells: " + ", ".join(f"{n} {state}" for state, n in counts.items() if n))
    return 0


def run(args) -> int:
    from .. import study  # start-up time: the commands import the library when they run
    from ..report.study import build_study_report  # start-up time, as above
    from ..study.headline import headline  # start-up time, as above

    if args.status:
        return show_status(args.study_dir if args.study_dir is not None else args.out)
    settings = settings_from_args(args)
    train_cli.setup_logging()
    if args.dry_run:
        for cell, folder, finished in study.plan(settings, settings.validate()):
            print(f"{cell.describe():40s} {'finished' if finished else 'to run':8s} {folder}")
        if settings.launcher == "slurm":
            print(f"sbatch: {settings.slurm.describe()}")
        return 0
    if settings.launcher == "print":
        cells = settings.validate()
        study.prepare(settings, cells)
        for cell, _, finished in study.plan(settings, cells):
            print(("# finished: " if finished else "") + study.command_line(settings, cell))
        return 0

    from tqdm.auto import tqdm  # start-up time: only a study that runs cells shows a bar

    show = settings.progress and sys.stderr.isatty()
    bar = tqdm(total=len(settings.cells()), desc="study", unit="cell", disable=not show, file=sys.stderr,
               dynamic_ncols=True)

    def on_outcome(outcome, done: int, total: int) -> None:
        if outcome.status == "skipped":
            bar.n = bar.initial = done
            bar.refresh()
            return
        bar.update(1)
        took = f" ({outcome.seconds:.0f} s)" if not math.isnan(outcome.seconds) else ""
        line = f"[{done}/{total}] {outcome.status} {outcome.cell.describe()}{took}"
        if outcome.status == "failed":
            line += f": {outcome.error} (log: {outcome.log})"
        if show:
            bar.write(line, file=sys.stderr)
        elif settings.progress or outcome.status == "failed":
            print(line, file=sys.stderr, flush=True)

    try:
        result = study.run_study(settings, on_outcome)
    finally:
        bar.close()
    if result.submitted is not None:
        job_id, count = result.submitted
        print(f"study: submitted {count} cell(s) as SLURM job array {job_id} ({result.count('skipped')} already "
              f"finished); follow it with: hparr study {result.out} --status")
        return 0
    for outcome in result.failed:
        print(f"failed: {outcome.cell.describe()}: {outcome.error}; log: {outcome.log}")
    report = statistics = None
    if result.count("finished") + result.count("skipped"):
        written = build_study_report(result.out)
        report, statistics = written.files[PAGE_NAME], written.statistics
    for line in headline(result, report, statistics):
        print(line)
    return 1 if result.failed else 0
