"""The stage behind `hparr survey`: settings in (`SurveySettings`), a result out (`run_survey`), and `save`, which
writes its files (docs/survey.md)."""
from __future__ import annotations

import math
import os
import sys
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Sequence

import pandas as pd

from .. import files
from ..defaults import LEVEL, check_level
from ..errors import UsageError
from ..layout import (
    SUMMARY_NAME,
    SURVEY_CONTROL_FIGURE,
    SURVEY_FIGURE,
    SURVEY_KINDS,
    SURVEY_NETWORKS,
    SURVEY_TABLE,
    SURVEY_VERDICTS,
)
from ..provenance import versions
from . import _analysis as analysis
from . import _figures as figures
from ._collect import (
    Network,
    SurveyOptions,
    file_identity,
    file_network,
    path_networks,
    read_networks_file,
    survey_table,
    unique_names,
)
from ._stats import LEVEL as CONFIDENCE

SURVEY_FORMAT = "hparr-survey-1"


@dataclass
class SurveySettings:
    """inputs: FILE_OR_DIR arguments (hparr runs or studies, checkpoints, ONNX files, folders of them);
    networks: a networks file (published networks, docs/survey.md), whose `file`s are below `data`;
    include_1x1, with_linear: the layers analyzed in checkpoints and ONNX files (as `hparr projections`);
    level: of the tests' readings and of the bias tests of the files analyzed here; confidence: of every
    interval; seed: of a Monte-Carlo permutation test; init_scheme: the initialization assumed for the layers
    of files that do not record theirs (`hparr projections --init-scheme`; None: its default), unless a
    networks file's entry names one."""

    inputs: Sequence[str] = ()
    networks: str | None = None
    data: str = "data/survey"
    out: str = "runs/survey"
    include_1x1: bool = False
    with_linear: bool = False
    level: float = LEVEL
    confidence: float = CONFIDENCE
    seed: int = 0
    init_scheme: str | None = None

    def validate(self) -> None:
        if not self.inputs and not self.networks:
            raise UsageError("nothing to survey: give FILE_OR_DIR arguments and/or --networks FILE")
        check_level(self.level)
        check_level(self.confidence, "the confidence")
        for path in self.inputs:
            if not Path(path).exists():
                raise UsageError(f"survey input {path}: no such file or folder")
        if self.networks is not None and not Path(self.networks).is_file():
            raise UsageError(f"--networks {self.networks}: no such file")
        if self.init_scheme is not None:
            from ..null import check_scheme  # scipy: only where a scheme is named

            check_scheme(self.init_scheme)

    def options(self) -> SurveyOptions:
        return SurveyOptions(include_1x1=self.include_1x1, with_linear=self.with_linear, level=self.level,
                             init_scheme=self.init_scheme)


@dataclass
class SurveyResult:
    """networks: what was surveyed; table: one row per network x layer (`collect.COLUMNS`); comparison: the
    prediction tested (`analysis.compare`); kinds: one row per input kind (`analysis.by_kind`); control: the
    controlled test (`analysis.control`); inputs: the identity of every file or folder read."""

    settings: SurveySettings
    networks: list[Network]
    table: pd.DataFrame
    comparison: dict[str, Any]
    kinds: pd.DataFrame
    control: list[dict[str, Any]]
    inputs: list[dict[str, Any]] = field(default_factory=list)


def _networks_of_file(settings: SurveySettings) -> tuple[list[Network], list[dict[str, Any]]]:
    entries = read_networks_file(settings.networks)
    data = Path(settings.data)
    missing = [str(data / e["file"]) for e in entries if not (data / e["file"]).is_file()]
    if missing:
        raise UsageError(f"--networks {settings.networks}: {len(missing)} file(s) missing below --data {data}: "
                         f"{', '.join(missing[:3])}{' ...' if len(missing) > 3 else ''} (fetch them first: "
                         "make survey-data)")
    networks, inputs = [], []
    for entry in entries:
        path = data / entry["file"]
        networks.append(file_network(path, settings.options(), entry))
        inputs.append({**file_identity(path), "network": entry["name"],
                       **{k: entry[k] for k in ("package", "version", "member") if k in entry}})
    return networks, inputs


def run_survey(settings: SurveySettings) -> SurveyResult:
    """Read every network, build the survey's table and test the prediction on it."""
    settings.validate()
    networks: list[Network] = []
    inputs: list[dict[str, Any]] = []
    if settings.networks is not None:
        found, identities = _networks_of_file(settings)
        networks += found
        inputs += identities
    for path in settings.inputs:
        found = path_networks(path, settings.options())
        networks += found
        inputs += [{**file_identity(n.source), "network": n.name} for n in found]
    networks = unique_names(networks)
    table = survey_table(networks)
    comparison = analysis.compare(table, settings.level, settings.confidence, settings.seed)
    kinds = analysis.by_kind(table, settings.confidence)
    control = analysis.control(table, settings.confidence)
    return SurveyResult(settings, networks, table, comparison, kinds, control, inputs)


def network_summary(result: SurveyResult) -> pd.DataFrame:
    """One row per network: its layers by input sign, biased layers, mean |mass - 1/2|, what is known of its
    image and initialization, and the null its bias tests used (assumed where its initialization is unknown)."""
    rows = []
    for net in result.networks:
        part = result.table[result.table["network"] == net.name]
        nulls = ", ".join(dict.fromkeys(str(v) for v in part["null"]))
        assumed = part["null_assumed"].fillna(False).astype(bool)
        image = {True: "[0, 1] (non-negative)", False: "normalized (both signs)"}.get(net.image_nonneg, "unknown")
        rows.append({"network": net.name, "format": net.format, "layers": len(part),
                     "nonneg": int((part["input_sign"] == "nonneg").sum()),
                     "signed": int((part["input_sign"] == "signed").sum()),
                     "unknown": int((part["input_sign"] == "unknown").sum()),
                     "biased": int(part["biased"].sum()), "deviation": float(part["deviation"].mean()),
                     "image": image, "init": net.init, "null": nulls, "null_assumed": int(assumed.sum()),
                     "init_scheme": net.init_scheme if assumed.any() else None, "source": net.source,
                     "notes": " ".join(net.notes)})
    return pd.DataFrame(rows)


def _f(value: Any, spec: str = ".3f") -> str:
    try:
        return "n/a" if value is None or not math.isfinite(float(value)) else format(float(value), spec)
    except (TypeError, ValueError):
        return str(value)


def _ci(low: Any, high: Any, spec: str = ".3f") -> str:
    return f"[{_f(low, spec)}, {_f(high, spec)}]"


def summary_text(result: SurveyResult, nets: pd.DataFrame) -> str:
    """summary.md: what was surveyed, the prediction's tests and how they read, the input kinds, the networks and
    the controlled test."""
    c, t = result.comparison, result.table
    shares, means = c["across_layers"]["share_biased"], c["across_layers"]["deviation"]
    pct = int(round(100 * result.settings.confidence))
    lines = [
        "# Survey: are layers with non-negative inputs the biased ones?", "",
        f"{c['networks']} networks, {c['layers']} layers: {c['layers_nonneg']} with a non-negative input, "
        f"{c['layers_signed']} with an input of both signs, {c['layers_unknown']} of unknown input (left out of "
        "the tests). Where the input sign comes from: "
        + ", ".join(f"{k} {v}" for k, v in t["sign_from"].value_counts().items()) + ".", "",
        f"## Across layers ({pct}% intervals; tests two-sided, read at level {c['level']:g})", "",
        "| input | layers | biased | share biased | mean abs(mass - 0.5) |", "|---|---|---|---|---|",
        f"| non-negative | {shares['n1']} | {shares['k1']} | {_f(shares['share1'])} "
        f"{_ci(shares['share1_low'], shares['share1_high'])} | {_f(means['mean1'])} "
        f"{_ci(means['mean1_low'], means['mean1_high'])} |",
        f"| both signs | {shares['n2']} | {shares['k2']} | {_f(shares['share2'])} "
        f"{_ci(shares['share2_low'], shares['share2_high'])} | {_f(means['mean2'])} "
        f"{_ci(means['mean2_low'], means['mean2_high'])} |", "",
        f"- Share biased, non-negative minus both signs: {_f(shares['difference'])}; Fisher's exact p = "
        f"{_f(shares['p_fisher'], '.3g')}, Boschloo's exact p = {_f(shares['p_boschloo'], '.3g')}: "
        f"{c['reading']['across_layers_share_biased']['boschloo']}.",
        f"- Mean abs(mass - 0.5), non-negative minus both signs: {_f(means['difference'])} "
        f"{_ci(means['difference_low'], means['difference_high'])} (Welch); permutation p = "
        f"{_f(means['p_permutation'], '.3g')} ({'exact' if means['exact'] else 'Monte Carlo'}): "
        f"{c['reading']['across_layers_deviation']['permutation']}.",
        "- The layers of one network are not independent draws: the paired test below counts each network once.",
        "", f"## Within networks, paired ({c['networks_paired']} networks with layers of both kinds)", ""]
    for measure, text in analysis.MEASURES.items():
        w = c["within_networks"][measure]
        lines.append(f"- {text}, non-negative minus both signs: mean {_f(w['mean'])} "
                     f"{_ci(w['mean_low'], w['mean_high'])} over {w['n']} networks ({w['n_positive']} higher, "
                     f"{w['n_negative']} lower); exact sign test p = {_f(w['p_sign'], '.3g')}, Wilcoxon p = "
                     f"{_f(w['p_wilcoxon'], '.3g')} ({w['wilcoxon_method'] or 'n/a'}): "
                     f"{c['reading'][f'within_networks_{measure}']['sign']}.")
    lines += ["", "## By input kind", "", "| input kind | sign | layers | networks | biased | share biased | "
              "mean abs(mass - 0.5) |", "|---|---|---|---|---|---|---|"]
    for r in result.kinds.to_dict(orient="records"):
        lines.append(f"| {r['input_kind']} | {r['input_sign']} | {r['layers']} | {r['networks']} | {r['biased']} | "
                     f"{_f(r['share_biased'])} {_ci(r['share_low'], r['share_high'])} | {_f(r['deviation'])} "
                     f"{_ci(r['deviation_low'], r['deviation_high'])} |")
    lines += ["", "## Networks", "", "| network | format | layers (non-neg / both / unknown) | biased | mean "
              "abs(mass - 0.5) | image | initialization | null of the bias test |", "|---|---|---|---|---|---|---|---|"]
    for r in nets.to_dict(orient="records"):
        null = r["null"] if not r["null_assumed"] else \
            f"{r['null']} ({r['null_assumed']} of {r['layers']} layers: {r['init_scheme']} initialization assumed)"
        lines.append(f"| {r['network']} | {r['format']} | {r['layers']} ({r['nonneg']} / {r['signed']} / "
                     f"{r['unknown']}) | {r['biased']} | {_f(r['deviation'])} | {r['image']} | {r['init']} | {null} |")
    if result.control:
        lines += ["", "## The controlled test: the first layer, normalized pixels against pixels in [0, 1]", "",
                  f"One hparr run per seed; intervals over the seeds ({pct}% t intervals; Clopper-Pearson for the "
                  "share biased).", "",
                  "| setting | pixels | seeds | mass | abs(mass - 0.5) | mean cosine | biased |",
                  "|---|---|---|---|---|---|---|"]
        for e in result.control:
            setting = ", ".join(f"{k} {e[k]}" for k in analysis.CONTROL_KEY if e[k] is not None) + f", {e['layer']}"
            for name, text in (("normalized", "normalized (both signs)"), ("unnormalized", "[0, 1] (non-negative)")):
                g = e[name]
                lines.append(f"| {setting} | {text} | {len(g['seeds'])} | {_f(g['mass']['mean'])} "
                             f"{_ci(g['mass']['low'], g['mass']['high'])} | {_f(g['deviation']['mean'])} "
                             f"{_ci(g['deviation']['low'], g['deviation']['high'])} | "
                             f"{_f(g['mean_cosine']['mean'])} {_ci(g['mean_cosine']['low'], g['mean_cosine']['high'])}"
                             f" | {g['biased']} of {len(g['seeds'])} |")
            for measure, text in (("deviation", "abs(mass - 0.5)"), ("abs_mean_cosine", "abs(mean cosine)")):
                p = e["paired"][measure]
                lines.append(f"\n- {text}, [0, 1] minus normalized, paired by seed ({p['n']} seeds): mean "
                             f"{_f(p['mean'])} {_ci(p['mean_low'], p['mean_high'])}; exact sign test p = "
                             f"{_f(p['p_sign'], '.3g')}.")
    lines += ["", f"Written by hparr survey; the tables are {SURVEY_TABLE}, {SURVEY_NETWORKS} and {SURVEY_KINDS}, the "
              f"tests with their inputs and versions {SURVEY_VERDICTS}.", ""]
    return "\n".join(lines)


def save(result: SurveyResult, out: str | os.PathLike | None = None) -> dict[str, Path]:
    """Write the survey's files to `out` (default: the settings' `out`): survey.csv (one row per network x layer),
    networks.csv, by_kind.csv, verdicts.json (the tests, the settings, the inputs with their SHA-256 and the
    versions), summary.md, survey.png and, where the survey holds a controlled test, control.png."""
    out_dir = files.ensure_dir(Path(out if out is not None else result.settings.out))
    nets = network_summary(result)
    written: dict[str, Path] = {}
    for name, frame in ((SURVEY_TABLE, result.table), (SURVEY_NETWORKS, nets), (SURVEY_KINDS, result.kinds)):
        with files.atomic_path(out_dir / name) as tmp:
            frame.to_csv(tmp, index=False)
        written[name] = out_dir / name
    doc = {"format": SURVEY_FORMAT, "settings": asdict(result.settings), "inputs": result.inputs,
           "versions": versions(with_torch="torch" in sys.modules), "prediction": result.comparison,
           "by_kind": result.kinds.to_dict(orient="records"), "control": result.control,
           "networks": nets.to_dict(orient="records")}
    files.write_json(out_dir / SURVEY_VERDICTS, files.jsonable(doc))
    written[SURVEY_VERDICTS] = out_dir / SURVEY_VERDICTS
    files.write_text(out_dir / SUMMARY_NAME, summary_text(result, nets))
    written[SUMMARY_NAME] = out_dir / SUMMARY_NAME
    written[SURVEY_FIGURE] = figures.plot_layers(result.table, out_dir / SURVEY_FIGURE)
    control = figures.plot_control(result.table, result.control, out_dir / SURVEY_CONTROL_FIGURE)
    if control is not None:
        written[SURVEY_CONTROL_FIGURE] = control
    return written
