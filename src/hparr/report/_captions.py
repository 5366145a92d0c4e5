"""The words that go with the report's figures and numbers, written once: the caption table (figure file ->
title and caption) of the run report and of the study report, used by summary.md, index.html and the figures'
own titles, and the study's methods text."""
from __future__ import annotations

from typing import NamedTuple

from ..defaults import LEVEL
from .stats import N_BOOTSTRAP, N_PERMUTATIONS, STATS_SEED
from .study_tables import REGIME_RULE


class Caption(NamedTuple):
    title: str  # the heading above the figure (and, for the study's figures, the start of the figure's title)
    text: str   # how to read it


CAPTIONS = {
    # the run report (`hparr report RUN_DIR`)
    "distributions": Caption(
        "Distribution of the projections per layer",
        "One panel per layer: histogram of the filters' projections at initialization (grey) and trained (blue), "
        "with the null density of a random filter (black). A biased layer has its trained histogram shifted to one "
        "side of 0 or spread far beyond the null curve."),
    "mass_mean_by_epoch": Caption(
        "Mass and mean across epochs",
        "Per layer, top: the share of filters with projection <= 0 (mass) at each snapshot (points) and, where the "
        "training run tracked it (tracking.csv), at every tracked epoch (line); bottom: the mean projection. The "
        "grey band is where 95% of random (untrained) layers with that many filters fall: for the mass, 0.5 +/- "
        "1.96 / (2 sqrt(N)); for the mean, +/- 1.96 / sqrt(N d), or from the spread at epoch 0 for plain sums. A "
        "point outside it is where a random layer lands in about 5% of draws, at that snapshot alone and uncorrected "
        "for the many layers and snapshots: whether a layer is biased is its Holm-corrected test (the layer "
        "table's p (Holm))."),
    "reinit_heatmap": Caption(
        "Re-initialization heatmap",
        "Rows: the snapshot a layer was re-initialized from (epoch 0 = initialization; rand = a fresh random draw); "
        "columns: layers; value: relative top-1 drop. Near 0 = robust layer, near 1 = critical layer."),
    "bias_vs_criticality": Caption(
        "Bias against criticality",
        "One point per layer: its bias (x) against its accuracy drop when re-initialized to epoch 0 (y); red = "
        "biased by the test. The paper's claim predicts a positive rank correlation: the biased layers are the "
        "critical ones. Above the dashed line a layer is critical."),
    # runs side by side (`hparr report RUN_A RUN_B`)
    "compare_mass_by_epoch": Caption(
        "Mass across epochs, run against run",
        "One panel per layer: each run's mass (share of filters with projection <= 0) at its snapshots (points) "
        "and, where its training was tracked (tracking.csv), at every tracked epoch (line); one colour per run. A "
        "run's line ends where its training stopped. The grey band holds 95% of random layers of that size."),
    "compare_distributions": Caption(
        "Trained projections, run against run",
        "One panel per layer: the histogram of each run's trained projections (one colour per run, outlines), "
        "with the null density of a random filter (black) where the runs' projections are normalized."),
    "compare_drops": Caption(
        "Drop under re-initialization to epoch 0, run against run",
        "Per layer, one bar per run: the relative top-1 drop when the layer is re-initialized to its initial "
        "values, measured on the split each run names; above the dashed line a layer is critical."),
    "compare_bias_vs_criticality": Caption(
        "Bias against criticality, run against run",
        "One point per layer and run: its trained bias against its drop under re-initialization to epoch 0, one "
        "colour per run, with each run's Spearman rho over its layers."),
    # the study report (`hparr report STUDY`)
    "study_mass_by_condition": Caption(
        "(a) Trained mass per layer against the condition",
        "One panel per layer: the trained mass of each seed (grey dots), their mean with its 95% t interval "
        "(blue), the mean mass at initialization (black x) and the null's 95% band (grey)."),
    "study_mass_by_epoch": Caption(
        "(b) Mass across epochs",
        "One panel per layer, one colour per condition. Thin lines: each seed's mass at every epoch its training "
        "tracked (tracking.csv), or at its snapshots where it was not tracked, ending with a dot where that seed "
        "stopped (--until-train-acc stops the seeds of a condition at different epochs). Thick line: the mean over "
        "the condition's seeds, drawn only up to the epoch where its first seed stopped, so that every point of it "
        "is a mean over the same seeds. The grey band is where 95% of random layers of that size fall."),
    "study_bias_vs_criticality": Caption(
        "(c) Bias against criticality",
        "One point per layer x seed: its trained bias against its drop under re-initialization to epoch 0, one "
        "colour per seed with its Spearman rho; the title gives the rho pooled over seeds, its bootstrap interval "
        "over seeds and the permutation p-value."),
    "study_bias_vs_criticality_train": Caption(
        "(c') Bias against criticality on the training images",
        "As (c), with the drop measured on each cell's training images and the labels it was trained on "
        "(--eval-split train), for the clean cells and the memorized ones: where a network at chance on the test "
        "set keeps what it memorized."),
    "study_bias_vs_learning": Caption(
        "(d) Bias against learning",
        "One point per cell: the share of biased layers (top) and the mean bias (bottom) against test top-1 "
        "(left) and train top-1 on the cell's own labels (right), with Spearman's rho across cells."),
}

METHODS = [
    "- Means over seeds: Student-t 95% interval, mean +/- t(0.975, n-1) sd / sqrt(n), cut to the range the "
    "quantity can take (a share to [0, 1], an accuracy to [0, 100], |mass - 0.5| to [0, 0.5]); no interval for "
    "one seed.",
    "- Changes (trained minus init; a corruption minus clean): the same interval on the per-seed differences "
    "(paired by seed: a seed fixes the initialization).",
    "- Bias against criticality: per seed, Spearman's rho over the layers of the trained bias and the relative "
    "top-1 drop under re-initialization to epoch 0; pooled: the mean of the per-seed rhos; 95% interval: "
    f"percentile bootstrap resampling seeds ({N_BOOTSTRAP} resamples, scipy.stats.bootstrap); p-value: two-sided "
    f"permutation test shuffling the layers within each seed ({N_PERMUTATIONS} shuffles, exact enumeration when "
    f"there are fewer, scipy.stats.permutation_test). Supported when the interval lies above 0 and p < {LEVEL:g}.",
    "- Bias against learning: Spearman's rho across cells (scipy's p-value), 95% interval by the Fisher z "
    "transform with standard error sqrt(1.06 / (n - 3)).",
    f"- Random draws: numpy Generators seeded with {STATS_SEED}, so the report is the same on every run.",
    f"- What each cell did, from its own final accuracies: {REGIME_RULE}. Claim 2 compares the memorized cells of a "
    "corruption with the clean cells of the same seeds; claim 3 is measured on the test images for every "
    "condition, and on the training images with the labels trained on (--eval-split train) for the clean cells "
    "and the memorized ones.",
]
