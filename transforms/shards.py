"""Portfolio shards: every per-portfolio computation is a group-by on ``portfolio_id``, so a
shard of portfolios is just a filter, and work done shard by shard needs the memory of one
shard, not of the whole book (and can be spread over processes or machines)."""

from __future__ import annotations

import polars as pl


def portfolio_shards(frame: pl.DataFrame, max_rows: int, key: str = "portfolio_id") -> list[pl.Series]:
    """Split the portfolios of ``frame`` into shards of about ``max_rows`` rows each.

    Input: any frame with a ``key`` column (e.g. trades); ``max_rows`` > 0. Output: a list of
    Series of portfolio ids, in id order, every id in exactly one shard. Rule: portfolios are
    taken in id order and a new shard starts when the rows before a portfolio reach the next
    multiple of ``max_rows`` (so a portfolio larger than ``max_rows`` has a shard of its own,
    and a portfolio is never split). Deterministic: the same frame gives the same shards.
    """
    if max_rows <= 0:
        raise ValueError(f"max_rows must be positive, got {max_rows}")
    sizes = frame.group_by(key).len().sort(key)
    if sizes.height == 0:
        return []
    shard = ((pl.col("len").cum_sum() - pl.col("len")) // max_rows).alias("shard")
    groups = sizes.with_columns(shard).group_by("shard", maintain_order=True).agg(pl.col(key))
    return [pl.Series(key, ids) for ids in groups[key].to_list()]
