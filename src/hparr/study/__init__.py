"""`hparr study`: a grid of `hparr reproduce` runs (cells) over seeds, label corruptions, architectures, datasets
and class subsets, run as independent jobs by an existing engine: a local process pool
(`concurrent.futures`), a SLURM job array (`submitit`), or any other scheduler fed the printed command lines.

Each cell is exactly `reproduce(settings, STUDY/cells/<arch>/<dataset>[_k]/<condition>/seed_<s>)`, so
`hparr report CELL_DIR` works on each. A cell is finished when its manifest, the files the manifest names and
its report are there (`results.run_finished`); finished cells are skipped, so a study stopped in any way
(even `kill -9`) is completed by running the same command again, and no finished file is rewritten.
The package imports torch only inside the functions that train.

Modules: `grid` (cells, list parsing), `settings` (StudySettings, SlurmOptions and their validation), `folder`
(study.json, cell folders and command lines), `cell` (one cell), `local` and `slurm` (the launchers), `status`
and `runner` (the study itself).
"""
from ..layout import CELL_LOG, SUBMITIT_DIR
from ._cell import CellJob, CellOutcome, cell_jobs, run_cell
from ._folder import cell_dir, command_line, plan, prepare
from ._grid import Cell, parse_floats, parse_ints, parse_names
from ._local import pool_size, run_local
from ._runner import StudyResult, run_study
from ._settings import (
    HIDDEN_LAUNCHERS,
    LAUNCHERS,
    SlurmOptions,
    StudySettings,
    check_out,
    check_train_sizes,
    check_workers,
    parse_slurm_extra,
)
from ._slurm import (
    MAX_REQUEUES,
    SlurmCell,
    check_sbatch,
    make_executor,
    record_array,
    sacct_works,
    sbatch_message,
    squeue_states,
)
from ._status import STATES, CellStatus, cell_status, study_status

__all__ = [
    "CELL_LOG", "HIDDEN_LAUNCHERS", "LAUNCHERS", "MAX_REQUEUES", "STATES", "SUBMITIT_DIR", "Cell",
    "CellJob", "CellOutcome", "CellStatus", "SlurmCell", "SlurmOptions", "StudyResult", "StudySettings", "cell_dir",
    "cell_jobs", "cell_status", "check_workers", "check_out", "check_sbatch", "check_train_sizes", "command_line",
    "make_executor", "parse_floats", "parse_ints", "parse_names", "parse_slurm_extra", "plan", "pool_size", "prepare",
    "record_array", "run_cell", "run_local", "run_study", "sacct_works", "sbatch_message", "squeue_states",
    "study_status",
]
