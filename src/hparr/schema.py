"""The per-layer table: its ordered columns and their types, shared by every writer and reader of
projection rows (`hparr projections`, tracking files, the tidy table, the report). Torch-free."""
from __future__ import annotations

from typing import TYPE_CHECKING, Iterable

if TYPE_CHECKING:  # start-up time: pandas only where a table is built (`hparr reinit` builds none)
    import pandas as pd

# the columns of one layer, in order; `biased` is a bool, the rest floats unless listed in INTEGERS or TEXT;
# `null`: the null of the layer's KS test (`hparr.null.null_label`; `beta` in results that predate it)
LAYER = ("name", "kind", "stage", "block", "N", "d", "mean", "std", "mass", "n_negative",
         "p_sign", "p_ks", "p_value", "p_adjusted", "biased", "null")
DISTANCES = ("l2_dist", "l_inf_dist")  # only when the analysis had the initial weights
LAYER_COLUMNS = (*LAYER, *DISTANCES)
TEXT = ("name", "kind", "null")
INTEGERS = ("stage", "block", "N", "d", "n_negative", "n_layers", "n_biased")
# the per-layer fields of a projection document's entry besides projections, mean and mass
ENTRY_FIELDS = ("name", "kind", "N", "d", "std", "n_negative", "p_sign", "p_ks", "p_value", "p_adjusted", "biased",
                "null")
# what the statistics of one layer compute, before the Holm correction over the network
COMPUTED = LAYER[:LAYER.index("p_adjusted")]
# what feeds each layer (hparr.inputs): the kind of operation, whether that kind is non-negative (empty: unknown),
# and the measured share of negative values in the layer's input (empty without data); per-layer columns of
# projection results, after the others
INPUT = ("input_kind", "input_nonneg", "input_neg_share")


def ordered(columns: Iterable[str], first: Iterable[str] = ()) -> list[str]:
    """`columns` in the schema's order: those of `first`, then the layer columns, then the rest as given."""
    columns = list(columns)
    head = [c for c in (*first, *LAYER_COLUMNS) if c in columns]
    head = list(dict.fromkeys(head))
    return head + [c for c in columns if c not in head]


def typed(df: pd.DataFrame, integers: Iterable[str] = ()) -> pd.DataFrame:
    """`df` with its integer columns (the schema's and `integers`) as nullable integers, in place."""
    import pandas as pd  # start-up time: pandas only for tables

    for col in (*INTEGERS, *integers):
        if col in df.columns:
            df[col] = pd.to_numeric(df[col]).astype("Int64")
    return df
