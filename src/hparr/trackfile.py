"""The `tracking.csv` file of a training run, read without torch (the report uses it).

One row per tracked step x layer: `step` (optimizer steps taken), `epoch` (epochs completed; fractional
between epoch ends), the layer's `name`, `kind`, `stage`, `block`, `N`, `d`, then the statistics of
`hparr.projections.analyze_layers`: `mean`, `std`, `mass`, `n_negative`, `p_sign`, `p_ks`, `p_value`,
`p_adjusted`, `biased`, `null` (the KS test's null; empty in files written before it), `l2_dist`, `l_inf_dist`
(empty without the initial weights), and the settings `normalize` and `level`. Floats are written in full
precision and read back exactly.
"""
from __future__ import annotations

import csv
import io
import math
import os
from pathlib import Path
from typing import Any, Iterable, Sequence

import numpy as np
import pandas as pd

from . import schema
from .errors import HparrError

COLUMNS = ("step", "epoch", *schema.LAYER_COLUMNS, "normalize", "level")
REQUIRED = ("step", "epoch", "name", "mass", "mean")
_INTEGERS = ("step", *(c for c in schema.INTEGERS if c in schema.LAYER))
# pandas 3 parses floats exactly by default (and deprecates the option); pandas 2 needs to be asked
_EXACT = {} if int(pd.__version__.split(".")[0]) >= 3 else {"float_precision": "round_trip"}


def read_tracking(path: str | os.PathLike) -> pd.DataFrame:
    """The rows of a tracking file, in file order, with exact floats and typed columns."""
    path = Path(path)
    try:
        df = pd.read_csv(path, **_EXACT, dtype=dict.fromkeys(schema.TEXT, str))
    except pd.errors.EmptyDataError:
        return pd.DataFrame(columns=list(COLUMNS))
    except (OSError, ValueError, pd.errors.ParserError) as exc:
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:200]
        raise HparrError(f"malformed tracking file {path}: {first}") from None
    missing = [c for c in REQUIRED if c not in df.columns]
    if missing:
        raise HparrError(f"malformed tracking file {path}: missing columns {', '.join(missing)}")
    try:
        for col in _INTEGERS:
            if col in df.columns:
                df[col] = pd.to_numeric(df[col]).astype("Int64")
        df["epoch"] = pd.to_numeric(df["epoch"]).astype(float)
        for col in ("biased", "normalize"):
            if col in df.columns:
                df[col] = df[col].map({True: True, False: False, "True": True, "False": False}).astype("boolean")
    except (TypeError, ValueError) as exc:
        raise HparrError(f"malformed tracking file {path}: {str(exc)[:200]}") from None
    return df


def csv_text(rows: Iterable[Sequence[Any]]) -> str:
    """CSV lines of `rows` (the header is a row of names): floats in their shortest exact form (`repr`),
    missing values (None, NaN, NA) empty, booleans `True`/`False`: what `read_tracking` reads back exactly."""
    out = io.StringIO()
    csv.writer(out, lineterminator="\n").writerows([_cell(v) for v in row] for row in rows)
    return out.getvalue()


def _cell(value: Any) -> str:
    if value is None or value is pd.NA:
        return ""
    if isinstance(value, (bool, np.bool_)):
        return "True" if value else "False"
    if isinstance(value, (int, np.integer)):
        return str(int(value))
    if isinstance(value, (float, np.floating)):
        return "" if math.isnan(value) else repr(float(value))
    return str(value)
