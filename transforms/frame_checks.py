"""Checks of the frames a transform is given: the columns it needs, no nulls in keys, unique
keys, finite numbers. Each raises a ``ValueError`` that names the frame and the problem, so a
caller's mistake is reported where it is made, not as a wrong number later."""

from __future__ import annotations

from collections.abc import Iterable

import polars as pl


def collected_with(frame: pl.DataFrame | pl.LazyFrame, columns: Iterable[str], name: str) -> pl.DataFrame:
    """``frame`` collected, with ``columns`` present (else a ``ValueError`` naming them)."""
    df = frame.collect() if isinstance(frame, pl.LazyFrame) else frame
    if not isinstance(df, pl.DataFrame):
        raise ValueError(f"{name} must be a Polars DataFrame or LazyFrame, got {type(frame).__name__}")
    missing = [c for c in columns if c not in df.columns]
    if missing:
        raise ValueError(f"{name} is missing column(s) {', '.join(missing)}")
    return df


def require_no_nulls(df: pl.DataFrame, columns: Iterable[str], name: str) -> None:
    """``ValueError`` when a column of ``columns`` holds a null."""
    for c in columns:
        n = df[c].null_count()
        if n:
            raise ValueError(f"{name} has {n} row(s) with a null {c}")


def strictly_increasing(df: pl.DataFrame, key: list[str]) -> bool:
    """Whether every row's ``key`` is greater than the previous row's, comparing the columns in
    order (lexicographically); nulls compare as unknown, so a frame with a null key is not."""
    if df.height < 2:
        return True
    later = pl.lit(False)
    for c in reversed(key):
        now, before = pl.col(c), pl.col(c).shift(1)
        later = (now > before) | ((now == before) & later)
    return bool(df.select(later.slice(1).fill_null(False).all()).item())


def require_unique(df: pl.DataFrame, key: list[str], name: str) -> None:
    """``ValueError`` naming the first duplicated ``key``.

    A frame already sorted by ``key`` with no repeat (what the transforms produce) is
    recognised in one pass over adjacent rows; hashing every key, the general check, costs
    seconds on tens of millions of rows with string keys."""
    if strictly_increasing(df, key):
        return
    dup = df.select(key).is_duplicated()
    if dup.any():
        raise ValueError(f"{name} has duplicate key ({', '.join(key)}): {df.filter(dup).select(key).row(0)}")


def require_finite(df: pl.DataFrame, columns: Iterable[str], name: str) -> None:
    """Values present must be finite (a NaN or an infinity in an input is a bug upstream)."""
    for c in columns:
        bad = df[c].cast(pl.Float64).is_finite().not_().fill_null(False)
        if bad.any():
            raise ValueError(f"{name} has {int(bad.sum())} non-finite {c} value(s) (NaN or infinite)")
