"""Per-layer hyperplane statistics (docs/method.md §2) and a test of bias against the null of §3.

`stats`: the pure statistics (`projections`, `summarize`, `distances`, `bias_tests`, `holm`); `analysis`: the
statistics of a network's layers (`analyze_layers`, `layer_stats`) and their result documents; `snapshots`:
`SnapshotAnalyzer` for many snapshot files; `stage`: `run_projections`, the stage behind `hparr projections`
(settings in, result out), and `save`, which writes its result files.
"""
from ._analysis import LayerStats, analyze_layers, input_columns, layer_stats, projection_document, weights_of
from ._snapshots import (
    FILE_ORDER,
    INPUT_KINDS,
    PROBE_IMAGES,
    AnalysisOptions,
    SnapshotAnalyzer,
    collect_results,
    file_layers,
    load_init_state,
    log_lines,
    onnx_layers,
    reusable_result,
)
from ._stats import (
    CORRECTION,
    STD_DDOF,
    bias_tests,
    bias_tests_of_layers,
    distances,
    filter_matrix,
    holm,
    ks_sf,
    ks_statistic,
    projections,
    sign_pvalues,
    summarize,
)
from .stage import (
    CHECKPOINT_ONLY,
    NO_DATASET,
    ProjectionSettings,
    ProjectionsResult,
    check_model_shape,
    run_projections,
    save,
    table_of,
)

__all__ = [
    "CHECKPOINT_ONLY", "CORRECTION", "FILE_ORDER", "INPUT_KINDS", "NO_DATASET", "PROBE_IMAGES", "STD_DDOF",
    "AnalysisOptions", "LayerStats",
    "ProjectionSettings", "ProjectionsResult", "SnapshotAnalyzer", "analyze_layers", "bias_tests",
    "bias_tests_of_layers", "check_model_shape", "collect_results", "distances", "file_layers", "filter_matrix",
    "holm", "input_columns", "ks_sf", "ks_statistic", "layer_stats", "load_init_state", "log_lines", "onnx_layers",
    "projection_document",
    "projections", "reusable_result", "run_projections", "save", "sign_pvalues", "summarize", "table_of",
    "weights_of",
]
