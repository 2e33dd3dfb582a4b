"""Execution quality: which trades filled the rebalancing stage's orders, and at what cost
against the decision price and the optimiser's estimate.

Inputs. ``allocations``: one row per (order_id, portfolio_id), the shares one portfolio was to
trade (side BUY or SELL, quantity > 0, decision_price > 0, created_at UTC, estimated_cost >= 0
in the instrument's currency). ``trades``: the landing ``trades`` kind (any trades, unrelated ones
included). ``horizon_days`` (default ``DEFAULT_HORIZON_DAYS`` = 5): the calendar days after
created_at during which a trade can fill an allocation.

**Matching rule** (``execution_fills``). A *key* is (portfolio_id, instrument_id, direction);
BUY and BUY_TO_COVER trades are buys, SELL and SELL_SHORT sells. Within a key:

- allocation ``k`` is *open* to a trade at ``t`` when ``created_at_k <= t <= created_at_k + h``
  (both ends included; h = horizon_days calendar days, 24 hours each in UTC);
- trades are taken in (trade_ts, trade_id) order; each fills the open allocations oldest first
  (created_at, then order_id), each allocation up to its remaining quantity, partially when
  needed; what a trade has left once every open allocation is full is unmatched (not counted);
  an allocation whose window has passed keeps its remainder unfilled.

This is the sequential FIFO a loop over trades would run; it is computed without one. Place the
allocations end to end on a line of cumulative quantity: allocation ``k`` occupies
``[A_{k-1}, A_k)``. Since every window has the same length, the allocations open at ``t`` are a
run of consecutive ones, from the first with ``created_at >= t - h`` (starting at ``L(t)``) to the
last with ``created_at <= t`` (ending at ``H(t)``); both are ``join_asof`` look-ups and both only
move forward as ``t`` grows. The FIFO fill state is one pointer ``P`` on that line (everything
before it filled or expired): trade ``m`` of quantity ``q_m`` fills the interval
``[S_m, E_m)`` with

    S_m = max(P_{m-1}, L(t_m)),   E_m = P_m = min(S_m + q_m, H(t_m)),

and allocation ``k`` gets the interval overlap ``max(0, min(A_k, E_m) - max(A_{k-1}, S_m))``
(every allocation the interval meets is open at ``t_m``, as ``L <= S_m <= E_m <= H``). With
``T_m`` the trade's cumulative quantity, ``D_m = P_m - T_m`` follows the clamp recurrence
``D_m = min(max(D_{m-1}, L(t_m) - T_{m-1}), H(t_m) - T_m)``. Clamps compose into clamps
(``clamp(clamp(x, a1, b1), a2, b2) = clamp(x, clamp(a1, a2, b2), clamp(b1, a2, b2))``), so every
``D_m`` comes from one prefix scan of that composition: ``ceil(log2(n))`` vectorised numpy steps
for a key of ``n`` trades (a Hillis-Steele scan), not a loop over rows. A trade that meets no
open allocation gets an empty interval. The pairs are the trades' intervals cut at the
allocation boundaries, at most (trades + allocations) rows.

Quantities are matched in whole micro-shares (``QUANTITY_UNIT`` = 1e-6 share: each quantity is
rounded to the nearest one): the cumulative sums are then exact integers, so no rounding sliver
becomes a fill, the result does not depend on the row order, and a fill of 123.456789 shares
fills an allocation of 123.4567891 shares. A quantity below half a micro-share is refused.

**Outputs.**

- ``execution_fills`` -> ``FILLS_SCHEMA``: one row per (allocation, trade) pair with a matched
  quantity; ``fees`` = the trade's fees (null counts 0) x matched quantity / trade quantity.
- ``execution_quality`` -> ``EXECUTION_QUALITY_SCHEMA``, one row per allocation, with
  ``s`` = +1 for a BUY and -1 for a SELL, ``d`` the decision price, fills ``(q_i, p_i, f_i)``
  and ``Q = sum q_i``:
  fill_ratio = Q / quantity (both in micro-shares); status FILLED when fill_ratio >=
  1 - ``FILLED_TOLERANCE`` (1e-9), PARTIAL when > 0, else UNFILLED;
  average_price = sum(q_i p_i) / Q; slippage_bps = s * sum(q_i (p_i - d)) / Q / d * 1e4
  (positive = worse than the decision price; the same as ``s (avg - d) / d * 1e4``);
  realized_cost = s * sum(q_i (p_i - d)) + sum f_i (= ``s (avg - d) Q + fees``; 0 when nothing
  filled); estimated_cost_filled = estimated_cost * fill_ratio; cost_ratio = realized_cost /
  estimated_cost_filled. Average price and slippage are null when unfilled, the cost ratio when
  its denominator is 0, and ``note`` says why.
- ``execution_summary`` -> ``EXECUTION_SUMMARY_SCHEMA``, one row per run_id: orders (distinct
  order ids), allocations, fully_executed_share (share of allocations FILLED) against
  ``GOAL_FULLY_EXECUTED`` = 0.95 (met when >=), average_fill_ratio (mean over allocations),
  slippage_bps weighted by the filled notional at the decision price (``Q d``), realized_cost,
  estimated_cost (whole allocations), estimated_cost_filled, cost_ratio (realized /
  estimated_cost_filled), average_drift_before / average_drift_after (means over the run's
  portfolios of the given drift frames) against ``GOAL_DRIFT_AFTER`` = 0.02 (met when <=; null
  without a drift after the fills). Costs are summed in the instruments' own currencies: a run
  across currencies should be converted by the caller first.

Sums over groups use ``ordering.ordered_sum`` on rows in a fixed order and quotients are
numpy's correctly rounded division, so the same input in any row order gives the same bits.
"""

from __future__ import annotations

from datetime import timedelta

import numpy as np
import polars as pl

from transforms.contract import EXECUTION_QUALITY_SCHEMA, EXECUTION_SUMMARY_SCHEMA, TRADE_SIDES, TS  # noqa: F401  (schemas: published)
from transforms.frame_checks import collected_with, require_finite, require_no_nulls, require_unique
from transforms.ordering import ordered_sum

DEFAULT_HORIZON_DAYS = 5
QUANTITY_UNIT = 1e-6  # shares: quantities are matched in whole micro-shares
UNITS_PER_SHARE = 1_000_000
FILLED_TOLERANCE = 1e-9
GOAL_FULLY_EXECUTED = 0.95
GOAL_DRIFT_AFTER = 0.02
ALLOCATION_SIDES = ("BUY", "SELL")
# the direction a trade side counts as: buys fill BUY allocations, sells SELL ones
DIRECTION = {"BUY": "BUY", "BUY_TO_COVER": "BUY", "SELL": "SELL", "SELL_SHORT": "SELL"}
STATUSES = ("FILLED", "PARTIAL", "UNFILLED")
# cumulative micro-shares must stay clear of the int64 range (2**63)
_MAX_TOTAL_UNITS = float(2**61)

UNFILLED_NOTE = "unfilled: no average price, slippage or cost ratio"
NO_ESTIMATE_NOTE = "no estimated cost for the filled part: no cost ratio"
NO_ALLOCATIONS_NOTE = "no allocations"
NOTHING_FILLED_NOTE = "nothing filled: no slippage or cost ratio"
NO_DRIFT_BEFORE_NOTE = "no drift before the rebalance"
NO_DRIFT_AFTER_NOTE = "no drift after the fills"

ALLOCATION_COLUMNS: dict[str, pl.DataType] = {
    "order_id": pl.String,
    "run_id": pl.String,
    "portfolio_id": pl.String,
    "instrument_id": pl.String,
    "side": pl.String,
    "quantity": pl.Float64,
    "decision_price": pl.Float64,
    "created_at": TS,
    "estimated_cost": pl.Float64,
}
TRADE_COLUMNS = ("trade_id", "portfolio_id", "instrument_id", "trade_ts", "side", "quantity", "price")
DRIFT_COLUMNS = ("run_id", "portfolio_id", "drift")

FILLS_SCHEMA: dict[str, pl.DataType] = {
    "order_id": pl.String,
    "portfolio_id": pl.String,
    "instrument_id": pl.String,
    "trade_id": pl.String,
    "quantity": pl.Float64,  # shares of the trade matched to the allocation
    "price": pl.Float64,  # the trade's price, local currency
    "fees": pl.Float64,  # the trade's fees pro rata to the matched share of the trade
    "trade_ts": TS,
}
FILLS_KEY = ["order_id", "portfolio_id", "trade_id"]
EXECUTION_QUALITY_KEY = ["order_id", "portfolio_id"]

_KEY = ["portfolio_id", "instrument_id", "_dir"]


# --- helpers ----------------------------------------------------------------------------------


def _cast(frame: pl.DataFrame, schema: dict[str, pl.DataType], keys: list[str]) -> pl.DataFrame:
    return frame.select([pl.col(c).cast(t) for c, t in schema.items()]).sort(keys)


def _exact_quotient(columns: list[pl.Series]) -> pl.Series:
    with np.errstate(divide="ignore", invalid="ignore"):
        q = columns[0].cast(pl.Float64).to_numpy() / columns[1].cast(pl.Float64).to_numpy()
    return pl.Series(np.where(np.isfinite(q), q, np.nan), dtype=pl.Float64, nan_to_null=True)


def _divide(num: pl.Expr, den: pl.Expr) -> pl.Expr:
    """``num / den`` correctly rounded, null where either is null or the quotient is not finite.

    Polars may divide a column by a value it holds as a scalar as a product with the reciprocal
    (pola-rs/polars#23741), so a one-row input would give other bits than the same row among
    others; numpy's division is the IEEE 754 quotient."""
    return pl.map_batches([num, den], _exact_quotient, return_dtype=pl.Float64, is_elementwise=True)


def _utc(df: pl.DataFrame, column: str, name: str) -> pl.DataFrame:
    """``column`` as UTC microseconds (``TS``); a naive timestamp is taken as UTC, the
    contract's convention."""
    dtype = df.schema[column]
    if not isinstance(dtype, pl.Datetime):
        raise ValueError(f"{name}.{column} must be a Datetime (UTC), got {dtype}")
    ts = pl.col(column).dt.convert_time_zone("UTC") if dtype.time_zone else pl.col(column).dt.replace_time_zone("UTC")
    return df.with_columns(ts.cast(TS))


def _units(df: pl.DataFrame, name: str) -> pl.DataFrame:
    """Adds ``_units``: quantity in whole micro-shares; refuses a non-positive quantity, one
    below half a micro-share, and totals too large for exact int64 sums."""
    q = pl.col("quantity").cast(pl.Float64)
    bad = df.filter(~(q > 0))
    if bad.height:
        raise ValueError(f"{name} has {bad.height} row(s) with a quantity that is not positive: {bad['quantity'][0]}")
    if float(df.select((q * UNITS_PER_SHARE).sum()).item() or 0.0) >= _MAX_TOTAL_UNITS:
        raise ValueError(f"{name} quantities are too large to match in micro-shares (total >= 2**61 / 1e6 shares)")
    out = df.with_columns((q * UNITS_PER_SHARE).round().cast(pl.Int64).alias("_units"))
    tiny = out.filter(pl.col("_units") < 1)
    if tiny.height:
        raise ValueError(f"{name} has {tiny.height} quantity(ies) below the matching unit of {QUANTITY_UNIT} share")
    return out


def _allocations(allocations: pl.DataFrame | pl.LazyFrame) -> pl.DataFrame:
    """The allocations checked and typed (``ALLOCATION_COLUMNS`` and ``_units``, ``_dir``)."""
    name = "allocations"
    df = collected_with(allocations, ALLOCATION_COLUMNS, name)
    df = df.select(list(ALLOCATION_COLUMNS))
    df = _utc(df, "created_at", name)
    df = df.with_columns(pl.col(c).cast(t) for c, t in ALLOCATION_COLUMNS.items() if c != "created_at")
    require_no_nulls(df, ALLOCATION_COLUMNS, name)
    require_finite(df, ["quantity", "decision_price", "estimated_cost"], name)
    require_unique(df, EXECUTION_QUALITY_KEY, name)
    bad_side = df.filter(~pl.col("side").is_in(ALLOCATION_SIDES))
    if bad_side.height:
        raise ValueError(f"{name} has side {bad_side['side'][0]!r}: an allocation is a BUY or a SELL")
    if (df["decision_price"] <= 0).any():
        raise ValueError(f"{name} has a decision_price that is not positive")
    if (df["estimated_cost"] < 0).any():
        raise ValueError(f"{name} has a negative estimated_cost")
    return _units(df, name).with_columns(pl.col("side").alias("_dir"))


def _trades(trades: pl.DataFrame | pl.LazyFrame) -> pl.DataFrame:
    """The trades checked and typed, with ``_dir`` (BUY or SELL), ``_units`` and null fees as 0."""
    name = "trades"
    df = collected_with(trades, TRADE_COLUMNS, name)
    fees = pl.col("fees").cast(pl.Float64).fill_null(0.0) if "fees" in df.columns else pl.lit(0.0)
    df = df.select(
        pl.col("trade_id", "portfolio_id", "instrument_id", "side").cast(pl.String),
        "trade_ts",
        pl.col("quantity", "price").cast(pl.Float64),
        fees.alias("fees"),
    )
    df = _utc(df, "trade_ts", name)
    require_no_nulls(df, TRADE_COLUMNS, name)
    require_finite(df, ["quantity", "price", "fees"], name)
    require_unique(df, ["trade_id"], name)
    bad_side = df.filter(~pl.col("side").is_in(TRADE_SIDES))
    if bad_side.height:
        raise ValueError(f"trades has side {bad_side['side'][0]!r}, not one of {', '.join(TRADE_SIDES)}")
    return _units(df, name).with_columns(pl.col("side").replace_strict(DIRECTION, return_dtype=pl.String).alias("_dir"))


def _clamp_scan(lo: np.ndarray, hi: np.ndarray, first: np.ndarray, start: np.ndarray, longest: int) -> np.ndarray:
    """``x_m = min(max(x_{m-1}, lo_m), hi_m)`` along segments of rows; a segment begins where
    ``first`` and starts from ``start`` there. Int64 arrays in, ``x`` out.

    Each step is the clamp ``c_m = (a_m, b_m)`` with ``a <= b`` (``lo > hi`` clamps everything
    to ``hi``); a segment's first step is the constant ``clamp(start, lo, hi)``, which absorbs
    whatever precedes it, so the segments need no other separation. Composition
    ``c2 . c1 = (clamp(a1, a2, b2), clamp(b1, a2, b2))`` is associative: after the doubling
    steps of an inclusive (Hillis-Steele) scan each row holds the composition of its segment
    up to it, a constant, i.e. ``x_m``. ``longest`` (the longest segment) bounds the steps."""
    b = hi.copy()
    a = np.minimum(lo, hi)
    x0 = np.minimum(np.maximum(start, lo[first]), hi[first])
    a[first] = x0
    b[first] = x0
    shift = 1
    while shift < longest:
        a2, b2 = a[shift:], b[shift:]
        new_a = np.minimum(np.maximum(a[:-shift], a2), b2)
        new_b = np.minimum(np.maximum(b[:-shift], a2), b2)
        a[shift:] = new_a
        b[shift:] = new_b
        shift *= 2
    return a


# --- matching ---------------------------------------------------------------------------------


def execution_fills(
    allocations: pl.DataFrame | pl.LazyFrame,
    trades: pl.DataFrame | pl.LazyFrame,
    horizon_days: int = DEFAULT_HORIZON_DAYS,
) -> pl.DataFrame:
    """The trades that filled each allocation, by the FIFO matching rule of the module
    docstring (``FILLS_SCHEMA``), sorted by (order_id, portfolio_id, trade_id).

    Inputs: ``allocations`` with order_id, run_id, portfolio_id, instrument_id (String), side
    (BUY or SELL), quantity (> 0), decision_price (> 0), created_at (Datetime UTC),
    estimated_cost (>= 0), unique per (order_id, portfolio_id); ``trades`` with trade_id
    (unique), portfolio_id, instrument_id, trade_ts (Datetime UTC), side (``TRADE_SIDES``),
    quantity (> 0), price and optionally fees (null counts 0); ``horizon_days`` (int >= 0).

    Output per (allocation, trade) pair with a matched quantity: order_id, portfolio_id,
    instrument_id, trade_id, quantity (matched shares), price (the trade's), fees (the trade's
    fees x matched / trade quantity), trade_ts. Per allocation the matched quantities sum to at
    most its quantity, per trade to at most the trade's; a trade's excess is in no row.
    Raises ``ValueError`` on a missing column, a null, a non-finite number, a duplicate key, an
    unknown side, a non-positive quantity or price, or a negative estimated cost.
    """
    if isinstance(horizon_days, bool) or not isinstance(horizon_days, (int, np.integer)) or horizon_days < 0:
        raise ValueError(f"horizon_days must be a non-negative integer, got {horizon_days!r}")
    horizon = timedelta(days=int(horizon_days))
    a = _allocations(allocations)
    t = _trades(trades)

    # one integer per key, in key order, for the allocations' and trades' shared sort
    keys = a.select(_KEY).unique().sort(_KEY).with_row_index("_key").with_columns(pl.col("_key").cast(pl.Int64))
    a = a.join(keys, on=_KEY).sort("_key", "created_at", "order_id")
    t = t.join(keys, on=_KEY).sort("_key", "trade_ts", "trade_id")
    if a.height == 0 or t.height == 0:
        return pl.DataFrame(schema=FILLS_SCHEMA)

    # allocations end to end on one line of cumulative micro-shares, key after key
    a_units = a["_units"].to_numpy()
    a_end = np.cumsum(a_units)
    a_start = a_end - a_units
    a = a.with_columns(pl.Series("_a_start", a_start), pl.Series("_a_end", a_end))
    spans = a.group_by("_key").agg(pl.col("_a_start").min().alias("_base"), pl.col("_a_end").max().alias("_top"))
    # per (key, created_at): where the first such allocation starts and the last one ends
    stamps = (
        a.group_by("_key", "created_at")
        .agg(pl.col("_a_start").min().alias("_L"), pl.col("_a_end").max().alias("_H"))
        .sort("_key", "created_at")
    )
    t = t.with_columns((pl.col("trade_ts") - horizon).alias("_from"))
    # L: start of the first allocation created at or after t - h (the oldest still open);
    # H: end of the last allocation created at or before t (the newest already open)
    t = t.join_asof(
        stamps.select("_key", pl.col("created_at").alias("_from"), "_L"),
        on="_from",
        by="_key",
        strategy="forward",
        check_sortedness=False,
    )
    t = t.join_asof(
        stamps.select("_key", pl.col("created_at").alias("trade_ts"), "_H"),
        on="trade_ts",
        by="_key",
        strategy="backward",
        check_sortedness=False,
    )
    t = t.join(spans, on="_key", how="left").sort("_key", "trade_ts", "trade_id")
    # every allocation expired: L = the key's end; none created yet: H = the key's start
    t = t.with_columns(pl.col("_L").fill_null(pl.col("_top")), pl.col("_H").fill_null(pl.col("_base")))

    key = t["_key"].to_numpy()
    q = t["_units"].to_numpy()
    lower, upper = t["_L"].to_numpy(), t["_H"].to_numpy()
    first = np.ones(key.size, dtype=bool)
    first[1:] = key[1:] != key[:-1]
    starts = np.flatnonzero(first)
    lengths = np.diff(np.append(starts, key.size))
    # cumulative trade quantity within the key, before (T_{m-1}) and after (T_m) each trade
    cum = np.cumsum(q)
    before = cum - q - np.repeat(cum[starts] - q[starts], lengths)
    after = before + q
    d = _clamp_scan(lower - before, upper - after, first, t["_base"].to_numpy()[first], int(lengths.max()))
    end = d + after  # P_m
    previous = np.empty_like(end)
    previous[1:] = end[:-1]
    previous[first] = t["_base"].to_numpy()[first]
    begin = np.maximum(previous, lower)  # S_m

    # cut each trade's interval [S, E) at the allocation boundaries
    filled = np.flatnonzero(end > begin)
    s, e = begin[filled], end[filled]
    k1 = np.searchsorted(a_end, s, side="right")  # first allocation ending after S
    k2 = np.searchsorted(a_start, e, side="left") - 1  # last allocation starting before E
    counts = k2 - k1 + 1
    pair_trade = np.repeat(filled, counts)
    offsets = np.arange(counts.sum()) - np.repeat(np.cumsum(counts) - counts, counts)
    pair_alloc = np.repeat(k1, counts) + offsets
    matched = np.minimum(a_end[pair_alloc], end[pair_trade]) - np.maximum(a_start[pair_alloc], begin[pair_trade])
    keep = matched > 0
    pair_trade, pair_alloc, matched = pair_trade[keep], pair_alloc[keep], matched[keep]

    trade_rows = t.select("trade_id", "price", "fees", "trade_ts", "_units")[pair_trade]
    alloc_rows = a.select("order_id", "portfolio_id", "instrument_id")[pair_alloc]
    share = matched / trade_rows["_units"].to_numpy()
    fills = pl.concat([alloc_rows, trade_rows], how="horizontal").with_columns(
        pl.Series("quantity", matched / UNITS_PER_SHARE),
        (pl.col("fees") * pl.Series(share)).alias("fees"),
    )
    return _cast(fills, FILLS_SCHEMA, FILLS_KEY)


# --- quality per allocation -------------------------------------------------------------------


def execution_quality(allocations: pl.DataFrame | pl.LazyFrame, fills: pl.DataFrame | pl.LazyFrame) -> pl.DataFrame:
    """One row per allocation (``EXECUTION_QUALITY_SCHEMA``), sorted by (order_id, portfolio_id).

    Inputs: ``allocations`` as for ``execution_fills``; ``fills`` in ``FILLS_SCHEMA`` (as
    ``execution_fills`` returns them; every fill names an allocation, and an allocation's
    fills sum to at most its quantity). With ``s`` = +1 (BUY) / -1 (SELL), ``d`` the decision
    price and the allocation's fills ``(q_i, p_i, f_i)``, ``Q = sum q_i``:

    - filled_quantity = Q; fill_ratio = Q / quantity (in micro-shares); status FILLED when
      fill_ratio >= 1 - 1e-9, PARTIAL when > 0, else UNFILLED;
    - average_price = sum(q_i p_i) / Q; slippage_bps = s * sum(q_i (p_i - d)) / Q / d * 1e4;
    - fees = sum f_i; realized_cost = s * sum(q_i (p_i - d)) + fees (0 when nothing filled);
    - estimated_cost_filled = estimated_cost * fill_ratio; cost_ratio = realized_cost /
      estimated_cost_filled.

    Null where a figure cannot be computed (unfilled: average price, slippage, cost ratio; an
    estimated cost of 0: cost ratio), with ``note`` saying why.
    """
    a = _allocations(allocations)
    f = collected_with(fills, FILLS_SCHEMA, "fills").select([pl.col(c).cast(t) for c, t in FILLS_SCHEMA.items()])
    require_no_nulls(f, ["order_id", "portfolio_id", "trade_id", "quantity", "price", "trade_ts"], "fills")
    require_finite(f, ["quantity", "price", "fees"], "fills")
    require_unique(f, FILLS_KEY, "fills")
    f = _units(f.with_columns(pl.col("fees").fill_null(0.0)), "fills")
    unknown = f.join(a, on=EXECUTION_QUALITY_KEY, how="anti")
    if unknown.height:
        raise ValueError(f"fills name {unknown.height} allocation(s) not in allocations, e.g. {unknown.select(EXECUTION_QUALITY_KEY).row(0)}")

    d = pl.col("decision_price")
    # fills in a fixed order, so each allocation's sums add the same numbers in the same order
    sums = (
        f.join(a.select(*EXECUTION_QUALITY_KEY, "decision_price"), on=EXECUTION_QUALITY_KEY)
        .sort(*EXECUTION_QUALITY_KEY, "trade_ts", "trade_id")
        .group_by(EXECUTION_QUALITY_KEY)
        .agg(
            pl.col("_units").sum().alias("_filled_units"),
            ordered_sum(pl.col("quantity") * pl.col("price")).alias("_qp"),
            ordered_sum(pl.col("quantity") * (pl.col("price") - d)).alias("_impact"),
            ordered_sum(pl.col("fees")).alias("fees"),
        )
    )
    rows = a.join(sums, on=EXECUTION_QUALITY_KEY, how="left").with_columns(
        pl.col("_filled_units", "_qp", "_impact", "fees").fill_null(0)
    )
    over = rows.filter(pl.col("_filled_units") > pl.col("_units"))
    if over.height:
        raise ValueError(f"fills exceed the allocation's quantity for {over.height} allocation(s), e.g. {over.select(EXECUTION_QUALITY_KEY).row(0)}")

    sign = pl.when(pl.col("side") == "BUY").then(1.0).otherwise(-1.0)
    filled_q = _divide(pl.col("_filled_units"), pl.lit(float(UNITS_PER_SHARE)))
    is_filled = pl.col("_filled_units") > 0
    rows = rows.with_columns(
        filled_q.alias("filled_quantity"),
        _divide(pl.col("_filled_units"), pl.col("_units")).alias("fill_ratio"),
    ).with_columns(
        pl.when(pl.col("fill_ratio") >= 1.0 - FILLED_TOLERANCE)
        .then(pl.lit("FILLED"))
        .when(is_filled)
        .then(pl.lit("PARTIAL"))
        .otherwise(pl.lit("UNFILLED"))
        .alias("status"),
        pl.when(is_filled).then(_divide(pl.col("_qp"), pl.col("filled_quantity"))).alias("average_price"),
        pl.when(is_filled)
        .then(_divide(sign * pl.col("_impact"), pl.col("filled_quantity") * d) * 1e4)
        .alias("slippage_bps"),
        (sign * pl.col("_impact") + pl.col("fees")).alias("realized_cost"),
        (pl.col("estimated_cost") * pl.col("fill_ratio")).alias("estimated_cost_filled"),
    )
    rows = rows.with_columns(
        pl.when(pl.col("estimated_cost_filled") != 0)
        .then(_divide(pl.col("realized_cost"), pl.col("estimated_cost_filled")))
        .alias("cost_ratio"),
        pl.when(~is_filled)
        .then(pl.lit(UNFILLED_NOTE))
        .when(pl.col("estimated_cost_filled") == 0)
        .then(pl.lit(NO_ESTIMATE_NOTE))
        .alias("note"),
    )
    return _cast(rows, EXECUTION_QUALITY_SCHEMA, EXECUTION_QUALITY_KEY)


# --- summary per run --------------------------------------------------------------------------


def _drift_means(drift: pl.DataFrame | pl.LazyFrame | None, name: str, alias: str) -> pl.DataFrame:
    """Mean drift per run_id over the frame's portfolios (null drifts left out)."""
    if drift is None:
        return pl.DataFrame(schema={"run_id": pl.String, alias: pl.Float64})
    df = collected_with(drift, DRIFT_COLUMNS, name).select(
        pl.col("run_id", "portfolio_id").cast(pl.String), pl.col("drift").cast(pl.Float64)
    )
    require_no_nulls(df, ["run_id", "portfolio_id"], name)
    require_finite(df, ["drift"], name)
    require_unique(df, ["run_id", "portfolio_id"], name)
    return (
        df.filter(pl.col("drift").is_not_null())
        .sort("run_id", "portfolio_id")
        .group_by("run_id")
        .agg(ordered_sum(pl.col("drift")).alias("_sum"), pl.len().alias("_n"))
        .select("run_id", _divide(pl.col("_sum"), pl.col("_n")).alias(alias))
    )


def execution_summary(
    quality: pl.DataFrame | pl.LazyFrame,
    drift_before: pl.DataFrame | pl.LazyFrame | None,
    drift_after: pl.DataFrame | pl.LazyFrame | None,
) -> pl.DataFrame:
    """One row per run_id (``EXECUTION_SUMMARY_SCHEMA``), sorted by run_id.

    Inputs: ``quality`` (``EXECUTION_QUALITY_SCHEMA``, as ``execution_quality`` returns it);
    ``drift_before`` and ``drift_after`` (run_id, portfolio_id, drift; unique per run and
    portfolio; either may be None): the portfolio drift figure before the rebalance and the
    latest one after the fills. The runs are those of any of the three frames. Per run:

    - orders = distinct order_id; allocations = rows; filled_allocations = rows FILLED;
      fully_executed_share = filled_allocations / allocations; fully_executed_goal_met =
      share >= ``GOAL_FULLY_EXECUTED`` (0.95); average_fill_ratio = mean fill_ratio;
    - slippage_bps = sum(slippage_bps_i w_i) / sum(w_i), w_i = filled_quantity_i *
      decision_price_i (filled notional at the decision price, local currency);
    - realized_cost, estimated_cost, estimated_cost_filled: sums (local currencies);
      cost_ratio = realized_cost / estimated_cost_filled;
    - average_drift_before / after = mean drift over the run's portfolios (null drifts left
      out); drift_goal_met = average_drift_after <= ``GOAL_DRIFT_AFTER`` (0.02), null when the
      run has no drift after the fills.

    Figures without data (no allocations, nothing filled, no drift) are null; ``note`` says
    which.
    """
    qcols = list(EXECUTION_QUALITY_SCHEMA)
    qual = collected_with(quality, qcols, "quality").select([pl.col(c).cast(t) for c, t in EXECUTION_QUALITY_SCHEMA.items()])
    needed = ["order_id", "run_id", "portfolio_id", "status", "fill_ratio", "filled_quantity", "decision_price"]
    require_no_nulls(qual, [*needed, "realized_cost", "estimated_cost", "estimated_cost_filled"], "quality")
    require_unique(qual, EXECUTION_QUALITY_KEY, "quality")
    before = _drift_means(drift_before, "drift_before", "average_drift_before")
    after = _drift_means(drift_after, "drift_after", "average_drift_after")

    weight = pl.col("filled_quantity") * pl.col("decision_price")
    per_run = (
        qual.sort("run_id", *EXECUTION_QUALITY_KEY)
        .group_by("run_id")
        .agg(
            pl.col("order_id").n_unique().cast(pl.Int64).alias("orders"),
            pl.len().cast(pl.Int64).alias("allocations"),
            (pl.col("status") == "FILLED").sum().cast(pl.Int64).alias("filled_allocations"),
            ordered_sum(pl.col("fill_ratio")).alias("_ratio_sum"),
            ordered_sum(pl.when(pl.col("slippage_bps").is_not_null()).then(pl.col("slippage_bps") * weight).otherwise(0.0)).alias("_slip"),
            ordered_sum(pl.when(pl.col("slippage_bps").is_not_null()).then(weight).otherwise(0.0)).alias("_weight"),
            ordered_sum(pl.col("realized_cost")).alias("realized_cost"),
            ordered_sum(pl.col("estimated_cost")).alias("estimated_cost"),
            ordered_sum(pl.col("estimated_cost_filled")).alias("estimated_cost_filled"),
        )
    )
    runs = pl.concat([per_run.select("run_id"), before.select("run_id"), after.select("run_id")]).unique()
    out = (
        runs.join(per_run, on="run_id", how="left")
        .join(before, on="run_id", how="left")
        .join(after, on="run_id", how="left")
        .with_columns(pl.col("orders", "allocations", "filled_allocations").fill_null(0))
        .with_columns(pl.col("realized_cost", "estimated_cost", "estimated_cost_filled").fill_null(0.0))
    )
    share = _divide(pl.col("filled_allocations"), pl.col("allocations"))
    has_allocations = pl.col("allocations") > 0
    out = out.with_columns(
        pl.when(has_allocations).then(share).alias("fully_executed_share"),
        pl.lit(GOAL_FULLY_EXECUTED).alias("goal_fully_executed"),
        pl.when(has_allocations).then(_divide(pl.col("_ratio_sum"), pl.col("allocations"))).alias("average_fill_ratio"),
        pl.when(pl.col("_weight") > 0).then(_divide(pl.col("_slip"), pl.col("_weight"))).alias("slippage_bps"),
        pl.when(pl.col("estimated_cost_filled") != 0)
        .then(_divide(pl.col("realized_cost"), pl.col("estimated_cost_filled")))
        .alias("cost_ratio"),
        pl.lit(GOAL_DRIFT_AFTER).alias("goal_drift_after"),
        (pl.col("average_drift_after") <= GOAL_DRIFT_AFTER).alias("drift_goal_met"),
    ).with_columns((pl.col("fully_executed_share") >= GOAL_FULLY_EXECUTED).alias("fully_executed_goal_met"))
    note = pl.concat_str(
        [
            pl.when(~has_allocations).then(pl.lit(NO_ALLOCATIONS_NOTE)),
            pl.when(has_allocations & pl.col("slippage_bps").is_null()).then(pl.lit(NOTHING_FILLED_NOTE)),
            pl.when(pl.col("average_drift_before").is_null()).then(pl.lit(NO_DRIFT_BEFORE_NOTE)),
            pl.when(pl.col("average_drift_after").is_null()).then(pl.lit(NO_DRIFT_AFTER_NOTE)),
        ],
        separator="; ",
        ignore_nulls=True,
    )
    out = out.with_columns(pl.when(note != "").then(note).alias("note"))
    return _cast(out, EXECUTION_SUMMARY_SCHEMA, ["run_id"])
