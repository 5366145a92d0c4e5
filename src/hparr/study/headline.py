"""The last lines `hparr study` prints: how many cells finished and failed, where the report is, and the study's
main verdict (the claims of bias emerging with training and of the biased layers being the critical ones, for
the clean cells of the first setting) as its report computed it."""
from __future__ import annotations

import math
from pathlib import Path
from typing import Any, Mapping

from ._runner import StudyResult


def _number(value: Any) -> float:
    return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else math.nan


def verdict_line(statistics: Mapping[str, Any] | None, measure_text: str = "|mass - 0.5|") -> str | None:
    """The main verdict of a study's statistics (`statistics.json`), in one line, or None where it has none."""
    from ..report.stats import verdict  # start-up time: scipy only where a report was computed

    settings = statistics.get("settings") if isinstance(statistics, Mapping) else None
    if not isinstance(settings, list) or not settings or not isinstance(settings[0], Mapping):
        return None
    first = settings[0]
    conditions = [c for c in first.get("conditions") or [] if isinstance(c, Mapping)]
    condition = next((c for c in conditions if c.get("noise") == 0), conditions[0] if conditions else None)
    if condition is None:
        return None
    words = []
    e = condition.get("emergence")
    if isinstance(e, Mapping):
        low, high, mean = _number(e.get("low")), _number(e.get("high")), _number(e.get("mean"))
        ci = f" [{low:+.3f}, {high:+.3f}]" if math.isfinite(low) else ""
        words.append(f"bias emerges with training: {verdict(low, high)}, mean {measure_text} "
                     f"{mean:+.3f}{ci} from initialization")
    k = condition.get("criticality")
    if isinstance(k, Mapping) and math.isfinite(_number(k.get("rho"))):
        words.append(f"the biased layers are the critical ones: "
                     f"{verdict(_number(k.get('low')), _number(k.get('high')), _number(k.get('p_value')))}, "
                     f"pooled rho {_number(k.get('rho')):.2f}, permutation p {_number(k.get('p_value')):.2g}")
    if not words:
        return None
    seeds = condition.get("seeds")
    count = f", {len(seeds)} seed{'s' if len(seeds) != 1 else ''}" if isinstance(seeds, list) else ""
    more = f" ({len(settings) - 1} more setting(s) in summary.md)" if len(settings) > 1 else ""
    text = f"({first.get('setting', '?')}, {condition.get('condition', '?')}{count}): " + "; ".join(words) + more
    return text.replace("**", "")


def headline(result: StudyResult, report: Path | None, statistics: Mapping[str, Any] | None) -> list[str]:
    """One or two lines: the cells finished and failed with the report's place, then the main verdict."""
    ran, skipped, failed = result.count("finished"), result.count("skipped"), len(result.failed)
    where = f"report: {report}" if report is not None else f"no report: no cell of {result.out} is finished"
    lines = [f"study: {len(result.outcomes)} cells: {ran} finished now, {skipped} already finished, {failed} failed; "
             f"{where}"]
    verdict = verdict_line(statistics)
    if verdict is not None:
        lines.append(f"verdict {verdict}")
    return lines
