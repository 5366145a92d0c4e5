"""Layer re-initialization test of Zhang, Bengio & Singer ("Are All Layers Created Equal?").

For one layer at a time, the trained network's layer parameters (weight and bias) are replaced by
those of an earlier snapshot (re-initialization) or of a fresh initialization (re-randomization,
`rand`), and the test accuracy is measured. BatchNorm parameters and statistics stay as trained.

Only one layer changes at a time, so everything the network computes before that layer is the
trained network's own. `reinit_sweep` therefore runs the trained network once per batch, keeps the
values that the part of the network downstream of each re-initialized layer reads, and re-runs only
that part for each alternative parameter set. The graph comes from `torch.fx`. Every operation runs
on the same batch, with the same shapes, as in the whole network, so the predictions equal those of
the swap-evaluate-restore loop (`plain_reinit_sweep`) exactly. Models that cannot be traced, or whose
in-place operations would change a kept value, are evaluated by that loop.

A unit may also be several layers at once (`reinit_groups`: a residual block or a stage, as Zhang et al.
did for ResNets), with the BatchNorm after each of them (`with_bn`: its parameters and running
statistics). Besides top-1/top-k, every alternative records its test loss and the agreement of its top-1
predictions with the trained model's; these too equal the plain loop's exactly.

The package: `units` (what one alternative replaces), `sweep` (the plain reference loop and the tally),
`shared_prefix` (the torch.fx planner and the shared-prefix sweep), `processes` (the sweep split across
worker processes), `snapshots` (the snapshot files read), `documents` (the results document) and `stage`
(settings, run, save).
"""
from ._processes import choose_processes, parse_eval_processes
from ._shared_prefix import NotShareable, SharedPrefixPlan, reinit_sweep
from ._stage import (
    ReinitResult,
    ReinitSettings,
    TrainedSnapshot,
    adopt_earlier_result,
    judge_result,
    read_trained,
    reinit_options,
    result_path,
    run_reinit,
    save,
)
from ._sweep import Batches, SweepCounts, first_images, plain_reinit_sweep
from ._units import (
    BATCHNORM_TENSORS,
    GRANULARITIES,
    LAYER_TENSORS,
    Unit,
    batchnorms_after,
    groups_of,
    make_units,
    reinit_groups,
    reinit_layers,
    unit_tensors,
)
from .documents import (
    BATCHNORM_NOTE,
    BATCHNORM_REINIT_NOTE,
    EVAL_SPLIT_TEXT,
    aggregate_rand_trials,
    eval_split_of,
    rand_labels,
    rand_trial_seeds,
    reinit_document,
    summary_lines,
    unit_fields,
)
from .snapshots import read_inits_list

__all__ = ["BATCHNORM_NOTE", "BATCHNORM_REINIT_NOTE", "BATCHNORM_TENSORS", "Batches", "EVAL_SPLIT_TEXT",
           "GRANULARITIES", "LAYER_TENSORS", "NotShareable", "SweepCounts", "ReinitResult", "ReinitSettings",
           "SharedPrefixPlan", "TrainedSnapshot", "Unit", "adopt_earlier_result", "aggregate_rand_trials",
           "batchnorms_after", "choose_processes", "eval_split_of", "first_images", "groups_of", "judge_result",
           "make_units", "parse_eval_processes", "plain_reinit_sweep", "rand_labels", "rand_trial_seeds",
           "read_inits_list", "read_trained", "reinit_document", "reinit_groups", "reinit_layers", "reinit_options",
           "reinit_sweep", "result_path", "run_reinit", "save", "summary_lines", "unit_fields", "unit_tensors"]
