"""The paper's whole study for one configuration: train, projections, reinit, report."""
from __future__ import annotations

import dataclasses
import logging
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

from . import attempt, checkpoints, files, layout, projections, reinit, report, results, training
from .data import DataOptions
from .defaults import LEVEL, REPRODUCE_RECIPE, THRESHOLD, check_level, check_threshold
from .errors import HparrError
from .results import parse_eval_splits
from .training import TrainSettings

log = logging.getLogger("hparr.pipeline")


def reinit_checkpoints(run_dir: Path, epochs: int) -> list[Path]:
    """The snapshots to re-initialize from: initialization and every periodic snapshot before the last epoch."""
    chosen: dict[int, Path] = {}
    for path in checkpoints.find_snapshots(run_dir):
        epoch = checkpoints.snapshot_epoch(checkpoints.torch_load(path, mmap=True), path)
        if 0 <= epoch < epochs:
            chosen.setdefault(epoch, path)
    return [chosen[e] for e in sorted(chosen)]


def analyzed_snapshots(run_dir: Path, arch: str, epochs: int, final: Path) -> list[Path]:
    """The snapshots whose projections are computed, one per epoch: every snapshot of the run but the periodic
    one of the final epoch, which holds the same weights as the final model (both are epoch `epochs`)."""
    same = run_dir / layout.epoch_name(arch, epochs - 1)
    return [p for p in checkpoints.find_snapshots(run_dir) if not (p == same and final.is_file())]


@dataclass
class ReproduceResult:
    """What `reproduce` produced below its folder: the run's snapshots, the projection results, the
    re-initialization result, the manifest that names them, and the report's files."""

    run_dir: Path
    final: dict[str, Any]  # {"test": ..., "train": ... [, "val": ...]}: see `reproduce`
    projections: Path
    reinit: Path
    manifest: Path
    report: dict[str, Path]
    snapshots: int  # the snapshots analyzed, one per epoch: the count the report's projection results hold
    stopped: dict[str, Any] = field(default_factory=dict)  # why and when training stopped: `TrainResult.stopped`


def reproduce_recipe(**changes: Any) -> TrainSettings:
    """The training settings of `defaults.REPRODUCE_RECIPE`, with `changes` ({option of TrainSettings or of its
    DataOptions: value}, as the recipe is keyed)."""
    options = {**REPRODUCE_RECIPE, **changes}
    data_fields = {f.name for f in dataclasses.fields(DataOptions)}
    data = DataOptions(**{k: v for k, v in options.items() if k in data_fields})
    return TrainSettings(data=data, **{k: v for k, v in options.items() if k not in data_fields})


@dataclass
class ReproduceSettings:
    """Every option of `hparr reproduce`: the training run's settings (by default the recipe,
    `reproduce_recipe()`), the folder everything goes to, and the analysis options (`with_linear`, the bias tests'
    `level`, the criticality `threshold`, the re-initialization sweep's `eval_splits`)."""

    train: TrainSettings = field(default_factory=reproduce_recipe)
    out: str = "runs/reproduce"
    with_linear: bool = False
    threshold: float = THRESHOLD
    level: float = LEVEL
    eval_splits: Sequence[str] = ("test",)

    def validate(self) -> None:
        check_threshold(self.threshold)
        check_level(self.level)
        self.eval_splits = parse_eval_splits(self.eval_splits)


def remove_results(results: Path, settings: TrainSettings, seed: int | None = None) -> list[Path]:
    """Delete the projection and re-initialization results of this configuration's experiment under
    `results` (they are computed again), so that none of a replaced run is reused or reported: the folder of
    its condition (`layout.results_directory`; `seed`: the run's seed as resolved, else `settings.seed`)."""
    removed = []
    data = settings.data
    for folder in (results, results / layout.REINIT_DIR):
        where = layout.results_directory(folder, data.dataset, settings.arch, settings.seed if seed is None else seed,
                                         data.subsample_classes, data.noise, data.train_size)
        if where.is_dir():
            for path in sorted(where.iterdir()):
                if path.is_file() and path.suffix in layout.RESULT_SUFFIXES:
                    files.remove(path)
                    removed.append(path)
    return removed


def reproduce(settings: TrainSettings, out_dir: str | Path, with_linear: bool = False,
              threshold: float = THRESHOLD, level: float = LEVEL,
              eval_splits: Sequence[str] = ("test",)) -> ReproduceResult:
    """`run_reproduce` of these options."""
    return run_reproduce(ReproduceSettings(settings, str(out_dir), with_linear=with_linear, threshold=threshold,
                                           level=level, eval_splits=eval_splits))


def run_reproduce(rs: ReproduceSettings) -> ReproduceResult:
    """Train with snapshots under `out_dir/models`, analyze every snapshot, run the reinit sweep with
    `--rand`, and draw the report into `out_dir/report`. Rerunning resumes and reuses finished results.

    A run of another configuration under `out_dir` is refused, or with `settings.overwrite` replaced, and
    then every result of the experiment is computed again. The manifest records the settings and the final
    model's metrics: test (and val), and train, measured after training on the training set as trained (its
    possibly corrupted labels, its shuffled pixels), and why and at which epoch training stopped.

    `eval_splits`: the re-initialization sweep is measured on each ("test", "train": see `reinit.ReinitSettings`);
    the manifest names the first as its "reinit" result (the report's) and all of them in "reinit_splits".

    While it runs, `out_dir/.attempt.json` names its process, and says at the end how it ended (`attempt`); a
    call refused by the checks leaves it as it was."""
    rs.validate()
    with attempt.Attempt(rs.out) as record:
        return _reproduce(rs, record)


def _reproduce(rs: ReproduceSettings, record: attempt.Attempt) -> ReproduceResult:
    settings, with_linear, threshold, level, eval_splits = rs.train, rs.with_linear, rs.threshold, rs.level, \
        rs.eval_splits
    out = Path(rs.out)
    settings = dataclasses.replace(settings, models_path=str(out / layout.MODELS_DIR),
                                   tb_logdir=str(out / layout.TENSORBOARD_DIR) if settings.tb_logdir else None,
                                   resume_from=settings.resume_from or "auto")
    # checks the settings and the data, and locks the run directory, before anything is written
    with training.setup(settings) as session:
        # the checks are done (another configuration in the run directory is refused here, as train would): what
        # fails from here on is the run's, and stays in its record
        training.claim(session.run_dir, session.other_runs, settings.overwrite, seed_drawn=settings.seed is None,
                       remove=False)
        record.begin()
        log.info("[1/4] training %s on %s", settings.arch, settings.data.dataset)
        files.ensure_dir(out)
        if settings.overwrite:
            removed = remove_results(out / layout.RESULTS_DIR, settings, session.seed)
            if removed:
                log.warning("--overwrite: removed %d result file(s) of %s under %s; they are computed again",
                            len(removed), settings.arch, out / layout.RESULTS_DIR)
        trained = training.train(settings, session)
        if not trained.converged:
            raise HparrError("training stalled (--kill-plateaus): no final model to analyze")
        # the final model on the training set with the labels it was trained on (corrupted under --noise,
        # pixel-shuffled images under --noise -1): how well it fit, or memorized, its own data
        final_metrics = {**trained.final, "train": training.evaluate_split(session, "train")}
        num_classes = session.data.num_classes
    run_dir = Path(trained.run_dir)
    init = layout.snapshot_file(run_dir, settings.arch, layout.init_name(settings.arch, settings.pretrained))
    final = layout.snapshot_file(run_dir, settings.arch,
                                 layout.final_name(settings.arch, trained.epochs_trained, settings.pretrained))
    root = out / layout.RESULTS_DIR

    log.info("[2/4] projections of every snapshot")
    analyzed = projections.run_projections(projections.ProjectionSettings(
        arch=settings.arch, dataset=settings.data.dataset,
        load_from=analyzed_snapshots(run_dir, settings.arch, trained.epochs_trained, final), init_from=str(init),
        seed=settings.seed, subsample_classes=settings.data.subsample_classes, normalize=True,
        with_linear=with_linear, level=level, progress=settings.progress, data_path=settings.data.data_path,
        dataset_args=settings.data.dataset_args, input_size=settings.data.input_size,
        probe_data=settings.data), root)  # the run's own data: the negative share of every layer's input
    proj_dir = projections.save(analyzed, root)

    log.info("[3/4] layer re-initialization (every checkpoint and --rand)")
    reinit_files: dict[str, Path] = {}
    final_read = None  # the final model's file as read: once, for every split
    inits = reinit_checkpoints(run_dir, trained.epochs_trained)
    for split in eval_splits:
        swept = reinit.ReinitSettings(
            load_from=str(final), data=settings.data, arch=settings.arch,
            inits_from=inits, rand=True, with_linear=with_linear,
            seed=trained.seed if settings.seed is None else settings.seed,
            batch_size=max(settings.batch_size, 256), cuda=settings.cuda, workers=settings.workers,
            progress=settings.progress and sys.stderr.isatty(), eval_split=split,
            eval_processes=1)  # one process: a study already runs one cell per core
        final_model = reinit.read_trained(swept, final_read)
        final_read = final_model.checkpoint
        path = reinit.result_path(final_model, root / layout.REINIT_DIR)
        reinit.adopt_earlier_result(swept, final_model, root / layout.REINIT_DIR)  # an earlier version's, kept
        # a result of other options is this run's own: computed again
        kept, why = results.reuse_or_recompute(path, lambda p: reinit.judge_result(swept, final_model, p),
                                               other_options=results.RECOMPUTE)
        if kept is not None:
            log.info("kept %s (already computed from the same checkpoints and options)", path)
        else:
            if why is not None:
                log.warning("recomputing %s: %s", path, why)
            swept_result = reinit.run_reinit(swept, final_model)
            path = reinit.save(swept_result, root / layout.REINIT_DIR)[0]
            report.save_reinit_plots(swept_result.document, path)  # its heatmap beside it
        reinit_files[split] = path
    reinit_json = reinit_files[eval_splits[0]]

    manifest = out / layout.MANIFEST_NAME
    epochs = sorted({int(doc["epoch"]) for doc in analyzed.documents.values()})
    files.write_json(manifest, results.manifest(out, proj_dir, reinit_json, epochs, models=str(run_dir),
                                                final=final_metrics, stopped=trained.stopped,
                                                num_classes=num_classes,
                                                reinit_splits=reinit_files,
                                                settings={**dataclasses.asdict(settings), "seed": trained.seed}))

    log.info("[4/4] report")
    written = report.build_report(out, threshold=threshold)
    return ReproduceResult(run_dir=run_dir, final=final_metrics, projections=proj_dir, reinit=reinit_json,
                           manifest=manifest, report=written, snapshots=len(epochs),
                           stopped=dict(trained.stopped))
