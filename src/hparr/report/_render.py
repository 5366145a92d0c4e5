"""The report as text: the answer in numbers, the layer table for reading, and summary.md (index.html is summary.md
rendered by `report._html`)."""
from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any, Mapping, Sequence

import pandas as pd
import scipy

from ..null import note as null_note
from ..provenance import versions
from ..results import RAND, layer_entries
from ._captions import CAPTIONS
from ._found import describe_unusable, missing_text, relative
from ._tables import reinit_measures
from .discovery import RunResults

DISPLAY = [("layer", "name"), ("stage.block", None), ("input", "input_kind"), ("N", "N"), ("d", "d"), ("mass", "mass"),
           ("mass at init", "mass_init"), ("mean", "mean"), ("p-value", "p_value"), ("p (Holm)", "p_adjusted"),
           ("biased", "biased"), ("l2 dist from init", "l2_dist"), ("top-1 trained %", "top1_trained"),
           ("top-1 reinit epoch 0 %", "top1_reinit_0"), ("drop reinit 0", "drop_reinit_0"),
           ("drop rand", "drop_rand"), ("robust/critical", "verdict")]
_FORMATS = {"mass": ".3f", "mass_init": ".3f", "mean": ".3g", "p_value": ".2g", "p_adjusted": ".2g",
            "l2_dist": ".3f", "top1_trained": ".2f", "top1_reinit_0": ".2f", "drop_reinit_0": ".3f",
            "drop_rand": ".3f"}


def display_table(table: pd.DataFrame) -> pd.DataFrame:
    """The layer table as rounded strings, for summary.md (the CSV keeps every digit)."""
    out = {}
    for header, col in DISPLAY:
        if col is None:
            out[header] = [f"{s}.{b}" if not (pd.isna(s) or pd.isna(b)) else "" for s, b in
                           zip(table["stage"], table["block"])]
            continue
        values = []
        for v in table[col]:
            if v is None or (not isinstance(v, str) and pd.isna(v)):
                values.append("")
            elif col == "biased":
                values.append("yes" if v else "no")
            elif col == "input_kind":  # what feeds the layer, marked where its values are all >= 0
                nonneg = table["input_nonneg"].iloc[len(values)] if "input_nonneg" in table else None
                values.append(f"{v} (>= 0)" if not pd.isna(nonneg) and bool(nonneg) else str(v))
            elif col in _FORMATS:
                values.append(format(float(v), _FORMATS[col]))
            else:
                values.append(str(v))
        out[header] = values
    return pd.DataFrame(out)


def markdown_table(df: pd.DataFrame) -> str:
    """A DataFrame as a Markdown table (cells' `|` escaped, line breaks folded)."""
    def cell(v: Any) -> str:
        return str(v).replace("|", "\\|").replace("\n", " ")

    lines = ["| " + " | ".join(map(cell, df.columns)) + " |", "|" + "---|" * len(df.columns)]
    lines += ["| " + " | ".join(cell(v) for v in row) + " |" for row in df.itertuples(index=False)]
    return "\n".join(lines)


def _names(table: pd.DataFrame, mask) -> str:
    names = list(table.loc[mask, "name"])
    return ", ".join(names) if names else "none"


def answer(results: RunResults, table: pd.DataFrame, correlation: Mapping[str, Any]) -> list[str]:
    """The answer in numbers, as Markdown bullet lines."""
    lines = []
    level, threshold = table.attrs.get("level"), table.attrs["threshold"]
    with_stats = table[table["mass"].notna()]
    if len(with_stats) and with_stats["biased"].isna().all():  # the original code's results: no bias test
        lines.append(f"- Trained model ({results.trained_label}): the results record no bias test (no p-values): "
                     f"the masses of the {len(with_stats)} layers are in the table.")
    elif len(with_stats):
        biased = with_stats["biased"].fillna(False).astype(bool)
        lines.append(f"- Trained model ({results.trained_label}): **{int(biased.sum())} of {len(with_stats)}** "
                     f"layers biased at level {level} ({str(table.attrs.get('correction')).capitalize()}-corrected): "
                     f"{_names(with_stats, biased)}.")
        init = results.init_doc
        if init is not None and init is not results.trained_doc:
            init_biased = [e["name"] for e in layer_entries(init) if e.get("biased")]
            lines.append(f"- At initialization (epoch 0): {len(init_biased)} of {len(layer_entries(init))} "
                         f"layers biased{': ' + ', '.join(init_biased) if init_biased else ''}.")
    with_drop = table[table["drop_reinit_0"].notna()]
    if len(with_drop):
        critical = with_drop["verdict"] == "critical"
        lines.append(f"- Re-initialization to epoch 0 (critical when the relative top-1 drop > {threshold:g}): "
                     f"**{int(critical.sum())} of {len(with_drop)}** layers critical: "
                     + (", ".join(f"{r['name']} ({r['drop_reinit_0']:.3f})" for _, r in with_drop[critical].iterrows())
                        or "none") + f"; robust: {_names(with_drop, ~critical)}.")
        both = with_drop[with_drop["mass"].notna()]
        if len(both):
            b = both["biased"].fillna(False).astype(bool)
            c = both["verdict"] == "critical"
            lines.append(f"- Biased and critical: {int((b & c).sum())}; biased and robust: {int((b & ~c).sum())}; "
                         f"not biased and critical: {int((~b & c).sum())}; not biased and robust: "
                         f"{int((~b & ~c).sum())}.")
    elif results.reinit_doc is not None:
        lines.append("- The re-initialization result has no epoch-0 row: no robust/critical verdicts.")
    rho = correlation["spearman_rho"]
    if not math.isnan(rho):
        lines.append(f"- Bias against criticality: **Spearman rho = {rho:.3f}** (p = {correlation['p_value']:.3g}, "
                     f"{correlation['n_layers']} layers), bias measured as {correlation['bias_measure']}.")
    else:
        lines.append(f"- Bias against criticality: Spearman rho undefined ({correlation['note']}).")
    return lines


def provenance(results: RunResults) -> dict[str, Any]:
    import matplotlib  # on first use: start-up time

    trained, r = results.trained_doc or {}, results.reinit_doc or {}
    return {
        "seeds": {"projections": {k: trained.get(k) for k in ("seed", "init_seed", "snapshot_seeds") if k in trained},
                  "reinit": r.get("seeds", {"seed": r.get("seed")} if r else {})},
        "normalization": {"training": trained.get("snapshot_normalization"), "reinit": r.get("normalization")},
        "versions": {"report": {**versions(with_torch=False), "scipy": scipy.__version__, "pandas": pd.__version__,
                                "matplotlib": matplotlib.__version__},
                     "projections": trained.get("versions"), "reinit": r.get("versions")},
    }


def condition_lines(results: RunResults) -> list[str]:
    """What the run is, as Markdown bullets: the training set, why training stopped, the split of the drops, and
    the null the bias test assumed where the results record it."""
    lines = results.condition.lines()
    final = (results.manifest or {}).get("final")
    if isinstance(final, Mapping) and all(isinstance(final.get(k), Mapping) for k in ("test", "train")):
        lines.append(f"- Final model: test top-1 {final['test']['top1']:.2f}%, top-1 on its own training set "
                     f"{final['train']['top1']:.2f}% (the labels and pixels it was trained on).")
    splits = (results.manifest or {}).get("reinit_splits")
    if isinstance(splits, Mapping):
        shown = results.condition.eval_split
        words = {"test": "test images", "train": "training images, with the labels trained on"}
        lines += [f"- Drops also measured on the {words.get(split, split)}: {relative(Path(path), results.run_dir)} "
                  f"(this report shows those on the {words.get(shown, shown).split(',')[0]})"
                  for split, path in splits.items() if split != shown]
    return lines


def layers_legend(table: pd.DataFrame) -> str:
    """The sentence under the layer table that says what its columns are."""
    level = table.attrs.get("level")
    biased = (f"p (Holm): adjusted over the layers, biased when <= {level:g}; " if isinstance(level, (int, float))
              else "p (Holm): adjusted over the layers; ")
    return ("input: the operation that feeds the layer, (>= 0) where its values are non-negative; "
            "mass: share of filters with projection <= 0; p-value: the layer's bias test (sign test and KS test "
            f"against the null), {biased}l2 dist from init: ||W - W0|| / ||W0||; drop: (acc trained - acc "
            f"re-initialized) / acc trained; robust when the drop to epoch 0 is <= {table.attrs['threshold']:g}, "
            "else critical. Every digit is in [layers.csv](layers.csv).")


def _missing_caption(results: RunResults, figure: str) -> str:
    """The caption's mark of the epochs missing from a figure drawn from the projection results."""
    if figure not in ("distributions", "mass_mean_by_epoch") or not results.missing_epochs:
        return ""
    text = missing_text(results.missing_epochs)
    return f" {text[:1].upper()}{text[1:]} (see \"Result files not used\")."


def summary_markdown(results: RunResults, table: pd.DataFrame, correlation: Mapping[str, Any], figures: Sequence[str],
                     provenance: Mapping[str, Any]) -> str:
    """summary.md: the question, the answer in numbers, the layer table, the re-initialization measures, the
    figures with their captions, the inputs and the provenance."""
    base = results.run_dir
    lines = [f"# Hyperplane arrangement bias and layer criticality: {results.title}", "",
             "**Question.** Are the trained layers' hyperplane arrangements biased (their filters agree in "
             "orientation relative to the identity line far beyond a random initialization), and are the "
             "biased layers the critical ones of Zhang et al. (re-initializing them to their initial values "
             "hurts accuracy)?", "", "## The run", "", *condition_lines(results), "",
             "## Answer in numbers", "", *answer(results, table, correlation), "",
             "## Layers", "", markdown_table(display_table(table)), "", layers_legend(table), ""]
    lines += null_note(results.trained_doc)  # which null the bias tests used, and any assumption
    missing_p = list(table.loc[table["missing"] == "projections", "name"])
    missing_r = list(table.loc[table["missing"] == "reinit", "name"])
    if missing_p:
        lines += [f"Layers with no projection results (e.g. 1x1 convs or Linear layers are not analyzed): "
                  f"{', '.join(missing_p)}.", ""]
    if missing_r:
        lines += [f"Layers with no re-initialization result: {', '.join(missing_r)}.", ""]
    if results.reinit_doc is not None:  # loss and agreement next to the top-1 drop
        lines += [reinit_section(results.reinit_doc)]
    lines += ["## Figures", ""]
    for name in figures:
        head, text = CAPTIONS[name]
        lines += [f"### {head}", "", f"![{head}]({name}.png) ([PDF]({name}.pdf))", "", text
                  + _missing_caption(results, name), ""]
    if results.unusable:
        lines += ["## Result files not used", ""]
        lines += [f"- {describe_unusable(u, base)}" for u in results.unusable] + [""]
    lines += ["## Inputs", ""]
    if results.projection_folder is not None:
        lines.append(f"- Projections: {results.projection_folder.describe(base)}; files: "
                     + ", ".join(relative(p, base) for p in results.projection_folder.paths))
    for other in results.other_runs:
        lines.append(f"- Projection run not used: {other}")
    if results.reinit_path is not None:
        lines.append(f"- Re-initialization: {relative(results.reinit_path, base)}")
        if results.reinit_doc.get("batchnorm"):
            lines.append(f"- {results.reinit_doc['batchnorm']}.")
    lines += [f"- {n}" for n in results.notes]
    lines += ["", "## Provenance", "", "```json", json.dumps(provenance, indent=2, default=str), "```", ""]
    return "\n".join(lines)


def reinit_display(doc: Mapping[str, Any]) -> pd.DataFrame:
    """Per unit: top-1 drop, loss and agreement after re-initialization to epoch 0 and re-randomization."""
    table = reinit_measures(doc)
    out: dict[str, list[str]] = {"layer": list(doc["layers"])}

    def fmt(v: float, sd: float, spec: str) -> str:
        if math.isnan(v):
            return ""
        return format(v, spec) + ("" if math.isnan(sd) else f" ± {format(sd, spec)}")

    for label, name in (("0", "epoch 0"), (RAND, "rand")):
        part = table[table["label"] == label]
        if part.empty:
            continue
        for m, head, spec in (("relative_drop", "drop", ".3f"), ("loss", "loss", ".3f"),
                              ("agreement", "agreement", ".3f")):
            out[f"{head} {name}"] = [fmt(v, sd, spec) for v, sd in zip(part[m], part[f"{m}_sd"])]
    return pd.DataFrame(out)


def reinit_section(doc: Mapping[str, Any] | None) -> str:
    """The Markdown section on the re-initialization measures ("" without a reinit result)."""
    if doc is None:
        return ""
    trained_loss = doc.get("trained_loss")
    split = doc.get("eval_split") or "test"
    lines = [f"## Re-initialization: top-1 drop, {split} loss and agreement", "",
             markdown_table(reinit_display(doc)), "",
             f"Trained: {split} top-1 {doc['top1_test']:.2f}%"
             + (f", {split} loss {trained_loss:.3f}" if trained_loss is not None else "") + ". "
             + ("Measured on the training images with the labels the model was trained on. " if split == "train"
                else "") +
             f"drop: relative top-1 drop; loss: mean {split} cross-entropy; agreement: share of {split} images whose "
             "top-1 class is the trained model's"
             + (f"; rand: mean ± standard deviation of {doc['rand_trials']['k']} re-randomizations"
                if isinstance(doc.get("rand_trials"), Mapping) else "")
             + f"; re-initialized at once: {doc.get('granularity', 'layer')}. "
             "Every alternative is in [reinit.csv](reinit.csv).",
             ""]
    return "\n".join(lines)
