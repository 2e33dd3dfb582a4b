"""Row filters that a lazy scan pushes down to the files it reads."""

from __future__ import annotations

from collections.abc import Iterable

import polars as pl


def in_values(column: str, values: Iterable, dtype: pl.DataType = pl.String) -> pl.Expr:
    """The row filter ``column IN values`` as one list literal of ``dtype`` (a null in
    ``values`` matches a null).

    Why not ``is_in(series.implode())``: Polars pushes a list literal down to a Delta scan's
    file statistics and skips the files that cannot match, but not a Series literal. Reading
    five portfolios' realised P&L of the standard book (438 files) took 0.85 s with the Series,
    0.04 s with the list."""
    distinct = set(values)
    has_null = None in distinct
    ordered = sorted(v for v in distinct if v is not None) + ([None] if has_null else [])
    return pl.col(column).is_in(pl.lit(ordered, dtype=pl.List(dtype)), nulls_equal=has_null)
