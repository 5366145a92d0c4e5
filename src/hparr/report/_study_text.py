"""The study's report as text: the three claims in numbers, the table per condition and summary.md (whose
captions and methods are those of `report._captions`)."""
from __future__ import annotations

from typing import Any, Mapping, Sequence

import numpy as np
import pandas as pd

from ..defaults import LEVEL
from ..layout import Corruption
from ._captions import CAPTIONS, METHODS
from ._render import markdown_table
from .stats import CHANGE_WORDS, verdict
from .study_tables import REGIME_RULE, REGIMES, StudyData


def _f(value: float, fmt: str = ".3f") -> str:
    return "n/a" if value is None or not np.isfinite(value) else format(value, fmt)


def _ci(t: Mapping[str, float], fmt: str = ".3f") -> str:
    """`mean [low, high]` (or `mean (one seed)`)."""
    if not np.isfinite(t["low"]):
        return f"{_f(t['mean'], fmt)} (n = {t['n']}: no interval)"
    return f"{_f(t['mean'], fmt)} [{_f(t['low'], fmt)}, {_f(t['high'], fmt)}]"



def _rho_text(r: Mapping[str, Any]) -> str:
    ci = f" [{_f(r['low'], '.2f')}, {_f(r['high'], '.2f')}]" if np.isfinite(r["low"]) else ""
    return f"rho = {_f(r['rho'], '.2f')}{ci}, p = {_f(r['p_value'], '.2g')}, n = {r['n']} cells"


def answer_lines(numbers: Mapping[str, Any], measure_text: str) -> list[str]:
    """The three claims in numbers, as Markdown."""
    lines = []
    for s in numbers["settings"]:
        lines += [f"### {s['setting']} ({s['cells']} cells)", ""]
        lines += ["**Claim 1: bias emerges with training and goes with learning.**", ""]
        for c in s["conditions"]:
            e = c["emergence"]
            lines.append(
                f"- {c['condition']} ({len(c['seeds'])} seeds): share of biased layers "
                f"{_ci(c['share_biased_init'], '.2f')} at init -> {_ci(c['share_biased'], '.2f')} trained; "
                f"mean {measure_text} {_ci(c['bias_init'])} -> {_ci(c['bias'])}; change {_ci(e)}: "
                + verdict(e["low"], e["high"], up="the bias grows with training",
                          down="the bias shrinks with training")
                + ".")
        learn = s["learning"]
        lines.append(f"- Across the cells, mean {measure_text} against test top-1: "
                     f"{_rho_text(learn['bias_vs_test_top1'])}; "
                     f"against train top-1 on the cell's own labels: {_rho_text(learn['bias_vs_train_top1'])}. "
                     f"Share of biased layers against test top-1: {_rho_text(learn['share_biased_vs_test_top1'])}; "
                     f"against train top-1: {_rho_text(learn['share_biased_vs_train_top1'])}.")
        r = learn["bias_vs_test_top1"]
        lines += ["- Bias and learning (test top-1): " + verdict(r["low"], r["high"], up="more bias where the model "
                  "learned more", down="less bias where the model learned more") + ".", ""]
        lines += ["**Claim 2: memorization (corrupted labels, shuffled pixels) changes the bias.**", ""]
        corrupted = [c for c in s["conditions"] if "vs_clean" in c]
        clean_top1 = next(((c["test_top1"], c["train_top1"]) for c in s["conditions"] if c["noise"] == 0), None)
        if not corrupted:
            lines.append("- No corrupted condition with a clean one to compare: not tested.")
        for c in corrupted:
            regimes = c["regimes"]
            counts = (f"{len(regimes['memorized'])} of {len(c['seeds'])} cells memorized their training labels, "
                      f"{len(regimes['learned'])} learned, {len(regimes['neither'])} neither")
            if "memorized_vs_clean" in c:
                m = c["memorized_vs_clean"]
                lines.append(f"- {c['condition']}: {counts}. Memorized cells minus the clean cells of the same seeds "
                             f"({len(m['bias'].get('seeds', []))} seeds): mean {measure_text} {_ci(m['bias'])}, "
                             f"share of biased layers {_ci(m['share_biased'], '.2f')}: {_change_word(m['bias'])}.")
            else:
                lines.append(f"- {c['condition']}: {counts}: **no cell memorized**, so this condition does not test "
                             "claim 2 (the comparison below is of training on corrupted data, not of memorization).")
            v = c["vs_clean"]
            lines.append(
                f"- All {c['condition']} cells minus clean, paired by seed ({len(v['bias'].get('seeds', []))} seeds): "
                f"mean {measure_text} {_ci(v['bias'])}, share of biased layers {_ci(v['share_biased'], '.2f')}: "
                f"{_change_word(v['bias'])}. The {c['condition']} cells reach test top-1 {_ci(c['test_top1'], '.1f')}% "
                f"and train top-1 {_ci(c['train_top1'], '.1f')}% on their own labels (clean: "
                f"{_ci(clean_top1[0], '.1f')}% and {_ci(clean_top1[1], '.1f')}%).")
        lines += ["", "**Claim 3: the biased layers are the critical ones.**", ""]
        for c in s["conditions"]:
            lines.append(_criticality_line(c["condition"], "test images, all cells", c["criticality"]))
            if "criticality_train" in c:
                k = c["criticality_train"]
                lines.append(_criticality_line(c["condition"], f"own training labels, {k['cells']} cells", k))
        if not any("criticality_train" in c for c in s["conditions"]):
            lines.append("- The cells measured the drop on the test images only (--eval-split test): a network at "
                         "chance on the test set drops by about nothing there whichever layer is re-initialized.")
        lines.append("")
    return lines


def _change_word(change: Mapping[str, Any]) -> str:
    """The verdict on a change from the clean condition (either direction counts)."""
    return verdict(change["low"], change["high"], up="higher than clean", down="lower than clean",
                   too_few="too few paired seeds for an interval", words=CHANGE_WORDS)


def _criticality_line(condition: str, where: str, k: Mapping[str, Any]) -> str:
    per_seed = ", ".join(f"seed {seed}: {_f(r, '.2f')}" for seed, r in k["per_seed"].items())
    if not np.isfinite(k["rho"]):
        return f"- {condition} ({where}): undefined ({k['note']})."
    ci = f"[{_f(k['low'], '.2f')}, {_f(k['high'], '.2f')}]" if np.isfinite(k["low"]) else "(no interval)"
    word = verdict(k["low"], k["high"], k["p_value"])
    return (f"- {condition} ({where}): pooled Spearman rho = {_f(k['rho'], '.2f')} {ci} over {k['n_seeds']} seeds x "
            f"{k['n_layers']} layers, permutation p = {_f(k['p_value'], '.3g')}{' (exact)' if k['exact'] else ''}; "
            f"per seed: {per_seed}: {word}.")


def condition_table(numbers: Mapping[str, Any]) -> pd.DataFrame:
    rows = []
    for s in numbers["settings"]:
        for c in s["conditions"]:
            k = c["criticality"]
            rows.append({"setting": s["setting"], "condition": c["condition"], "seeds": len(c["seeds"]),
                         "learned / memorized / neither": " / ".join(str(len(c["regimes"][r])) for r in REGIMES),
                         "test top-1 %": _ci(c["test_top1"], ".1f"), "train top-1 % (own labels)":
                         _ci(c["train_top1"], ".1f"), "share biased (trained)": _ci(c["share_biased"], ".2f"),
                         "share biased (init)": _ci(c["share_biased_init"], ".2f"), "mean bias": _ci(c["bias"]),
                         "pooled rho (bias, drop)": _f(k["rho"], ".2f"),
                         "p (perm.)": _f(k["p_value"], ".2g"),
                         "pooled rho, train split": _f(c.get("criticality_train", {}).get("rho", float("nan")),
                                                       ".2f")})
    return pd.DataFrame(rows)


def grid_values(axis: str, values: Any) -> list[str]:
    """A grid axis's values in words: a corruption by its label, "all" for every training image (a train size of
    None or 0) or every class (a class subset of 0), "none" where an axis recorded no value."""
    values = values if isinstance(values, (list, tuple)) else [values]
    out = []
    for v in values:
        if axis == "noise" and isinstance(v, (int, float)):
            out.append(Corruption(float(v)).label)
        elif axis in ("train_size", "subsample_classes") and not v:
            out.append("all")
        else:
            out.append("none" if v is None else str(v))
    return out or ["none"]


def summary_markdown(data: StudyData, numbers: Mapping[str, Any], figures: Sequence[str], measure_text: str) -> str:
    grid = data.study.get("grid", {})
    lines = [f"# Study: {len(data.cells)} finished cells", "",
             "**Question.** Across seeds and corruptions: does hyperplane-arrangement bias emerge with training and "
             "go with learning, does memorization change it, and are the biased layers the critical ones?", "",
             "Grid: " + "; ".join(f"{k}: {', '.join(grid_values(k, v))}" for k, v in grid.items()) + ".", ""]
    if data.missing:
        lines += [f"Not finished ({len(data.missing)}): " + ", ".join(data.missing) + ". The numbers below use the "
                  "finished cells only.", ""]
    if data.at_chance:
        lines += [f"**Warning: {len(data.at_chance)} clean cell(s) stayed at chance** (test top-1 not above chance, "
                  f"one-sided binomial test at {LEVEL:g}): " + ", ".join(data.at_chance)
                  + ". They did not learn: train longer (--epochs) or with another --lr before reading the claims "
                  "about learning.", ""]
    lines += ["## The claims in numbers", "",
              f"Intervals are 95%; bias is {measure_text} of a layer's trained projections; a layer is biased when "
              "its Holm-corrected test rejects the null at its level.", "",
              f"Each cell is classified from its own final accuracies: {REGIME_RULE}.", "",
              *answer_lines(numbers, measure_text),
              "## Per condition", "", markdown_table(condition_table(numbers)), "", "## Figures", ""]
    for name in figures:
        head, text = CAPTIONS[name]
        lines += [f"### {head}", "", f"![{head}]({name}.png) ([PDF]({name}.pdf))", "", text, ""]
    lines += ["## Methods", "", *METHODS, "", "## Files", "",
              "- study.csv and study.parquet: one row per cell x snapshot epoch x layer; statistics.json: every "
              "number above; each cell's own report: cells/<arch>/<dataset>/<condition>/seed_<s>/report/."]
    if len(data.tracked):
        lines.append(f"- tracked_by_epoch.csv: the tracked training of {data.curves['cell'].nunique()} cells "
                     "over seeds, one row per condition x layer x tracked epoch: the mean mass and mean projection "
                     "with their 95% t intervals, and the share of seeds in which the layer is biased.")
    return "\n".join([*lines, ""])
