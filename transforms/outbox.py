"""Event outbox: the events downstream systems read, one per changed portfolio and event type per
run, numbered per portfolio so that "the events of portfolio P after sequence N" is every event
exactly once and in order. Pure computation: the caller stores the outbox and writes exports.

Event types (``EVENT_TYPES``): ``portfolio_state_updated`` (``state_events``),
``recommendation_published`` (``recommendation_events``), ``order_published``
(``order_events``). Every event is one row of ``OUTBOX_SCHEMA``.

Rules:

- **Payload.** Canonical JSON (``canonical_json``): keys sorted, no whitespace, ASCII, floats
  as Python's ``repr`` (``json.dumps``), NaN and infinities refused, timestamps ISO-8601 UTC
  with six fractional digits and ``Z`` (``2025-03-03T16:00:00.000000Z``), dates
  ``YYYY-MM-DD``, nulls ``null``. Every payload holds ``event_id``, ``timestamp`` (the emission
  time, as the envelope's) and ``portfolio_id``; the rest is the event's *content*, with the
  numbers exactly as given (nothing is rounded in a payload). Shapes: each function's docstring.
- **Fingerprint** = sha256 hex of the canonical JSON of the content, i.e. the payload without
  ``event_id`` and ``timestamp``, with every float *quantised*. So it depends on the portfolio's
  data only, never on ``run_id``, the emission time or the event id, and an unchanged state has
  an unchanged fingerprint. Quantising: a float ``x`` of field ``f`` becomes
  ``round(x * 10**d) / 10**d`` (half to even, -0.0 written 0.0) with
  ``d = clip(SIGNIFICANT_DIGITS - 1 - floor(log10 |x|), 0, STEP_DECIMALS[f])`` (``d`` =
  ``STEP_DECIMALS[f]`` for 0): 12 significant digits, never finer than the field's step
  (money, prices and quantities 1e-6 of a unit, weights 1e-12). Why: float sums can differ in
  their last bits between runs (Polars sums groups in parallel), and such noise must not look
  like a change. The significant-digit bound keeps the grid far above the noise of large values
  (a 1e9 NAV is compared to 1e-3, its noise is about 1e-7), the step bound keeps values that
  are differences of large numbers (an unrealized P&L near 0) from carrying noise. The price:
  a change smaller than the grid emits no event (the next larger change carries it), and a
  value within noise of a half-grid point can, rarely, emit an event whose content repeats the
  previous one; both are harmless to a consumer.
- **Emission.** A portfolio gets an event of a type when its fingerprint differs from the
  fingerprint of its latest event of that type in ``last`` (or it has none). State: an unchanged
  state gives no event. Recommendations and orders carry the rebalance run's id in their content
  (``rebalance_run_id``), so each new rebalance run publishes, and replaying the same run (with
  its events in ``last``) publishes nothing twice.
- **Sequence** = the portfolio's highest sequence in ``last`` (any event type) + 1, or 1: one
  counter per portfolio across all event types, 1, 2, 3, ... without gaps (``check_outbox``).
- **event_id** = ``uuid5(EVENT_ID_NAMESPACE, f"{portfolio_id}:{sequence}")`` as text: the same
  input (same ``last``) gives the same ids, so a retried write can upsert on event_id.
- **last** is the outbox so far, or any part of it holding the latest event of every
  (portfolio, event type): ``latest_events(outbox)`` reduces it to that. Passing only the latest
  row per portfolio (any type) still numbers correctly, but a portfolio whose latest event is
  of another type then gets its state event again.

Chaining the three types in one run (the caller passes this run's events on as ``last``)::

    last = latest_events(outbox)
    states = state_events(state, positions, last, run_id=r, emitted_at=t)
    last = latest_events(last, states)
    recommendations = recommendation_events(recs, last, run_id=r, emitted_at=t)
    last = latest_events(last, recommendations)
    orders = order_events(allocations, orders_table, last, run_id=r, emitted_at=t)
    new = pl.concat([states, recommendations, orders]).sort("portfolio_id", "sequence")

Reading: ``events_after(outbox, P, N)``. Subscriptions (``parse_subscriptions``,
``select_events``, ``to_json_lines``): who receives which events, in which format.

Cost: frames are checked, sorted, grouped and quantised in Polars; the one Python loop runs over
portfolios (one ``json.dumps`` and one sha256 each), because JSON with Python's float ``repr``
has no Polars equivalent.
"""

from __future__ import annotations

import transforms  # noqa: F401

import fnmatch
import hashlib
import json
import re
import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import polars as pl

from transforms.contract import (
    ALLOCATIONS_SCHEMA,
    ORDERS_SCHEMA,
    PORTFOLIO_STATE_SCHEMA,
    POSITION_TYPES,
    POSITIONS_SCHEMA,
    RECOMMENDATIONS_SCHEMA,
    TS,
)
from transforms.frame_checks import collected_with, require_finite, require_no_nulls, require_unique
from transforms.fx import as_utc

AnyFrame = pl.DataFrame | pl.LazyFrame

STATE_UPDATED = "portfolio_state_updated"
RECOMMENDATION_PUBLISHED = "recommendation_published"
ORDER_PUBLISHED = "order_published"
EVENT_TYPES: tuple[str, ...] = (STATE_UPDATED, RECOMMENDATION_PUBLISHED, ORDER_PUBLISHED)
FORMATS: tuple[str, ...] = ("jsonl", "parquet")

OUTBOX_SCHEMA: dict[str, pl.DataType] = {
    "event_id": pl.String,  # uuid5(EVENT_ID_NAMESPACE, "<portfolio_id>:<sequence>")
    "event_type": pl.String,  # one of EVENT_TYPES
    "portfolio_id": pl.String,
    "sequence": pl.Int64,  # per portfolio across event types: 1, 2, 3, ... without gaps
    "timestamp": TS,  # when the event was emitted (the caller's emitted_at)
    "run_id": pl.String,  # the pipeline run that emitted it
    "fingerprint": pl.String,  # sha256 hex of the quantised content (module docstring)
    "payload": pl.String,  # canonical JSON
}

# what the emitting functions need of the outbox so far: latest_events
LAST_SCHEMA: dict[str, pl.DataType] = {
    "portfolio_id": pl.String,
    "event_type": pl.String,
    "sequence": pl.Int64,
    "fingerprint": pl.String,
}

NEXT_SEQUENCE_SCHEMA: dict[str, pl.DataType] = {"portfolio_id": pl.String, "sequence": pl.Int64}

# a fixed namespace (uuid5 of the URL namespace and "urn:portfolio-pipeline:outbox"): changing it
# would renumber every event id
EVENT_ID_NAMESPACE = uuid.UUID("dc69fe4b-c59f-5c3c-8441-8de27618c01f")

SIGNIFICANT_DIGITS = 12
MONEY_DECIMALS = 6
WEIGHT_DECIMALS = 12
# the finest decimal place a float field keeps in a fingerprint (module docstring)
STEP_DECIMALS: dict[str, int] = {
    "total_value": MONEY_DECIMALS,
    "cash_balance": MONEY_DECIMALS,
    "quantity": MONEY_DECIMALS,
    "market_value": MONEY_DECIMALS,
    "unrealized_pnl": MONEY_DECIMALS,
    "weight": WEIGHT_DECIMALS,
    "current_weight": WEIGHT_DECIMALS,
    "target_weight": WEIGHT_DECIMALS,
    "recommended_weight": WEIGHT_DECIMALS,
    "trade_quantity": MONEY_DECIMALS,
    "trade_value": MONEY_DECIMALS,
    "estimated_spread": MONEY_DECIMALS,
    "estimated_commission": MONEY_DECIMALS,
    "estimated_impact": MONEY_DECIMALS,
    "estimated_tax": MONEY_DECIMALS,
    "crossed_quantity": MONEY_DECIMALS,
    "external_quantity": MONEY_DECIMALS,
    "price": MONEY_DECIMALS,
}
_POWERS_OF_TEN = {k: float(10**k) for k in range(max(STEP_DECIMALS.values()) + 1)}

ISO_FORMAT = "%Y-%m-%dT%H:%M:%S%.6fZ"  # chrono's %.6f writes the dot and six digits


# --- canonical JSON, quantising, ids ------------------------------------------------------------


def canonical_json(document: Any) -> str:
    """``document`` as canonical JSON: keys sorted, separators without whitespace, ASCII, floats
    as ``repr``; a NaN or an infinity raises ``ValueError`` (they are not JSON)."""
    return json.dumps(document, sort_keys=True, separators=(",", ":"), ensure_ascii=True, allow_nan=False)


def event_id(portfolio_id: str, sequence: int) -> str:
    """The id of a portfolio's event number ``sequence``:
    ``str(uuid5(EVENT_ID_NAMESPACE, f"{portfolio_id}:{sequence}"))`` (the sequence has no
    colon, so the name is unambiguous)."""
    return str(uuid.uuid5(EVENT_ID_NAMESPACE, f"{portfolio_id}:{sequence}"))


def _quantised(column: str) -> pl.Expr:
    """Column ``column`` on the fingerprint grid (module docstring); -0.0 becomes 0.0 so that
    noise on either side of zero rounds to the same text."""
    x = pl.col(column)
    # floor(log10 0) is -inf, so a zero gets the step: clip turns +inf into the upper bound
    decimals = (SIGNIFICANT_DIGITS - 1 - x.abs().log10().floor()).clip(0, STEP_DECIMALS[column])
    scale = decimals.cast(pl.Int64).replace_strict(_POWERS_OF_TEN, return_dtype=pl.Float64)
    q = (x * scale).round(0, mode="half_to_even") / scale
    return pl.when(q == 0.0).then(pl.lit(0.0)).otherwise(q).alias(column)


def _fingerprint_expr(column: str, dtype: pl.DataType) -> pl.Expr:
    return _quantised(column) if dtype == pl.Float64 else pl.col(column)


def _iso(column: str) -> pl.Expr:
    return pl.col(column).dt.strftime(ISO_FORMAT).alias(column)


# --- input checks --------------------------------------------------------------------------------


def _typed(frame: AnyFrame, schema: Mapping[str, pl.DataType], name: str) -> pl.DataFrame:
    """``frame`` collected, reduced to ``schema``'s columns (``ValueError`` naming a missing one)
    and cast to its types (a naive timestamp is taken as UTC, an aware one converted to UTC)."""
    df = collected_with(frame, schema, name).select(list(schema))
    for column, dtype in schema.items():
        if df.schema[column] == dtype:
            continue
        if dtype == TS and not isinstance(df.schema[column], pl.Datetime):
            raise ValueError(f"{name}.{column} must be a datetime column, got {df.schema[column]}")
        try:
            df = df.with_columns(pl.col(column).cast(dtype))
        except pl.exceptions.PolarsError as e:
            raise ValueError(f"{name}.{column} cannot be read as {dtype}: {e}") from None
    return df


def _checked_run(run_id: str, emitted_at: datetime) -> datetime:
    if not isinstance(run_id, str) or not run_id.strip():
        raise ValueError(f"run_id must be a non-empty string, got {run_id!r}")
    if not isinstance(emitted_at, datetime):
        raise ValueError(f"emitted_at must be a datetime, got {type(emitted_at).__name__}")
    return as_utc(emitted_at)


def _one_per_portfolio(df: pl.DataFrame, column: str, name: str) -> None:
    """``ValueError`` when a portfolio's rows hold more than one value of ``column`` (one event
    describes one rebalance run)."""
    many = df.group_by("portfolio_id").agg(pl.col(column).n_unique().alias("n")).filter(pl.col("n") > 1)
    if many.height:
        pid = many.sort("portfolio_id")["portfolio_id"][0]
        raise ValueError(f"{name} holds several {column} values for portfolio {pid}: pass one run's rows")


# --- the outbox so far ---------------------------------------------------------------------------


def latest_events(*frames: AnyFrame | None) -> pl.DataFrame:
    """The latest event of every (portfolio_id, event_type) over ``frames`` (``LAST_SCHEMA``),
    sorted by (portfolio_id, event_type).

    Input: outbox frames (the whole outbox, a part of it, this run's events; None is skipped)
    with at least portfolio_id, event_type, sequence (Int64), fingerprint. Rule: per
    (portfolio_id, event_type) the row of the highest sequence. This is what the emitting
    functions need as ``last``; ``latest_events(last, new_events)`` chains a run's event types.
    """
    # a frame without columns (pl.DataFrame()) is an empty outbox
    given = [f for f in frames if f is not None and not (isinstance(f, pl.DataFrame) and f.width == 0)]
    parts = [_typed(f, LAST_SCHEMA, "last") for f in given]
    if not parts:
        return pl.DataFrame(schema=LAST_SCHEMA)
    df = pl.concat(parts)
    require_no_nulls(df, ("portfolio_id", "event_type", "sequence"), "last")
    return (
        df.sort("portfolio_id", "event_type", "sequence", "fingerprint", nulls_last=False)
        .group_by("portfolio_id", "event_type", maintain_order=True)
        .agg(pl.col("sequence").last(), pl.col("fingerprint").last())
        .select([pl.col(c).cast(t) for c, t in LAST_SCHEMA.items()])
    )


def next_sequences(last: AnyFrame | None) -> pl.DataFrame:
    """The next sequence of every portfolio in ``last`` (``NEXT_SEQUENCE_SCHEMA``: portfolio_id,
    sequence), sorted by portfolio_id: its highest sequence over all event types + 1. A
    portfolio not listed starts at 1."""
    return (
        latest_events(last)
        .group_by("portfolio_id")
        .agg((pl.col("sequence").max() + 1).alias("sequence"))
        .sort("portfolio_id")
        .select([pl.col(c).cast(t) for c, t in NEXT_SEQUENCE_SCHEMA.items()])
    )


# --- emitting ------------------------------------------------------------------------------------


def _emit(
    top: pl.DataFrame,
    items: pl.DataFrame,
    list_name: str,
    item_order: list[str],
    event_type: str,
    last: AnyFrame | None,
    run_id: str,
    emitted_at: datetime,
) -> pl.DataFrame:
    """Events of ``event_type`` (``OUTBOX_SCHEMA``) for the portfolios of ``top`` (one row each:
    portfolio_id and the content's top-level fields) whose fingerprint changed; ``items`` (rows
    with portfolio_id) become the content's list ``list_name``, sorted by ``item_order``.
    Timestamps and dates must already be text."""
    moment = _checked_run(run_id, emitted_at)
    top = top.sort("portfolio_id")
    item_fields = [c for c in items.columns if c != "portfolio_id"]
    top_fields = [c for c in top.columns if c != "portfolio_id"]
    grouped = (
        items.sort(["portfolio_id", *item_order], nulls_last=False)
        .group_by("portfolio_id", maintain_order=True)
        .agg(
            pl.struct(item_fields).alias("_items"),
            pl.struct([_fingerprint_expr(c, items.schema[c]) for c in item_fields]).alias("_items_fp"),
        )
    )
    docs = top.select(
        "portfolio_id",
        pl.struct(["portfolio_id", *top_fields]).alias("_top"),
        pl.struct(["portfolio_id", *[_fingerprint_expr(c, top.schema[c]) for c in top_fields]]).alias("_top_fp"),
    ).join(grouped, on="portfolio_id", how="left", maintain_order="left")

    contents: list[dict] = []
    fingerprints: list[str] = []
    for head, head_fp, rows, rows_fp in zip(
        docs["_top"].to_list(), docs["_top_fp"].to_list(), docs["_items"].to_list(), docs["_items_fp"].to_list()
    ):
        contents.append({**head, list_name: rows or []})
        text = canonical_json({**head_fp, list_name: rows_fp or []})
        fingerprints.append(hashlib.sha256(text.encode("ascii")).hexdigest())

    latest = latest_events(last)
    previous = latest.filter(pl.col("event_type") == event_type).select("portfolio_id", pl.col("fingerprint").alias("_previous"))
    chosen = (
        pl.DataFrame(
            {"portfolio_id": docs["portfolio_id"], "fingerprint": fingerprints, "_row": range(docs.height)},
            schema={"portfolio_id": pl.String, "fingerprint": pl.String, "_row": pl.Int64},
        )
        .join(previous, on="portfolio_id", how="left", maintain_order="left")
        .filter(pl.col("_previous").is_null() | (pl.col("_previous") != pl.col("fingerprint")))
        .join(next_sequences(latest), on="portfolio_id", how="left", maintain_order="left")
        .with_columns(pl.col("sequence").fill_null(1))
    )

    stamp = moment.strftime("%Y-%m-%dT%H:%M:%S.%fZ")
    ids: list[str] = []
    payloads: list[str] = []
    for pid, sequence, row in chosen.select("portfolio_id", "sequence", "_row").iter_rows():
        eid = event_id(pid, sequence)
        ids.append(eid)
        payloads.append(canonical_json({**contents[row], "event_id": eid, "timestamp": stamp}))
    return (
        chosen.with_columns(
            pl.Series("event_id", ids, dtype=pl.String),
            pl.lit(event_type, dtype=pl.String).alias("event_type"),
            pl.lit(moment).cast(TS).alias("timestamp"),
            pl.lit(run_id, dtype=pl.String).alias("run_id"),
            pl.Series("payload", payloads, dtype=pl.String),
        )
        .select([pl.col(c).cast(t) for c, t in OUTBOX_SCHEMA.items()])
        .sort("portfolio_id", "sequence")
    )


def state_events(
    state: AnyFrame, positions: AnyFrame, last: AnyFrame | None, *, run_id: str, emitted_at: datetime
) -> pl.DataFrame:
    """``portfolio_state_updated`` events (``OUTBOX_SCHEMA``) of the portfolios whose state
    changed, sorted by (portfolio_id, sequence).

    Inputs:

    - ``state``: ``PORTFOLIO_STATE_SCHEMA`` rows, at least portfolio_id (unique), total_value,
      cash_balance (Float64), last_updated (timestamp), one per candidate portfolio;
    - ``positions``: ``POSITIONS_SCHEMA`` rows, at least portfolio_id, instrument_id,
      position_type (LONG, SHORT, CASH), quantity, market_value, weight, unrealized_pnl
      (Float64), last_updated; unique (portfolio_id, instrument_id). Rows of portfolios not in
      ``state`` are ignored (the whole positions table may be passed);
    - ``last``: the outbox so far (module docstring), or None;
    - ``run_id``, ``emitted_at`` (a naive datetime is taken as UTC): the envelope's run_id and
      timestamp.

    Payload: ``{"event_id", "timestamp", "portfolio_id", "total_value", "cash_balance",
    "positions": [{"instrument_id", "quantity", "market_value", "weight", "unrealized_pnl",
    "last_updated"}, ...], "last_updated"}``. ``positions`` lists the LONG and SHORT rows sorted
    by instrument_id (a SHORT has a negative quantity and market value); CASH rows are not
    listed, cash is ``cash_balance``. Event when the fingerprint (content = the payload without
    event_id and timestamp, quantised) differs from the portfolio's latest state event in
    ``last``. ``ValueError`` on a missing column, a null key, a duplicate portfolio or
    (portfolio_id, instrument_id), an unknown position_type or a NaN or infinite number.
    """
    st = _typed(
        state,
        {c: PORTFOLIO_STATE_SCHEMA[c] for c in ("portfolio_id", "total_value", "cash_balance", "last_updated")},
        "state",
    ).sort("portfolio_id")
    require_no_nulls(st, ("portfolio_id",), "state")
    require_unique(st, ["portfolio_id"], "state")
    require_finite(st, ("total_value", "cash_balance"), "state")

    position_columns = (
        "portfolio_id", "instrument_id", "position_type", "quantity", "market_value", "weight", "unrealized_pnl", "last_updated",
    )
    pos = _typed(positions, {c: POSITIONS_SCHEMA[c] for c in position_columns}, "positions").sort("portfolio_id", "instrument_id")
    require_no_nulls(pos, ("portfolio_id", "instrument_id", "position_type"), "positions")
    unknown = pos.filter(~pl.col("position_type").is_in(POSITION_TYPES))
    if unknown.height:
        raise ValueError(
            f"positions has unknown position_type {unknown['position_type'][0]!r} (allowed: {', '.join(POSITION_TYPES)})"
        )
    require_unique(pos, ["portfolio_id", "instrument_id"], "positions")
    require_finite(pos, ("quantity", "market_value", "weight", "unrealized_pnl"), "positions")

    items = pos.filter((pl.col("position_type") != "CASH") & pl.col("portfolio_id").is_in(st["portfolio_id"].implode())).select(
        "portfolio_id", "instrument_id", "quantity", "market_value", "weight", "unrealized_pnl", _iso("last_updated")
    )
    top = st.select("portfolio_id", "total_value", "cash_balance", _iso("last_updated"))
    return _emit(top, items, "positions", ["instrument_id"], STATE_UPDATED, last, run_id, emitted_at)


RECOMMENDATION_FIELDS: tuple[str, ...] = (
    "instrument_id",
    "strategy_id",
    "current_weight",
    "target_weight",
    "recommended_weight",
    "trade_quantity",
    "trade_value",
    "estimated_spread",
    "estimated_commission",
    "estimated_impact",
    "estimated_tax",
    "solver_status",
)


def recommendation_events(
    recommendations: AnyFrame, last: AnyFrame | None, *, run_id: str, emitted_at: datetime
) -> pl.DataFrame:
    """``recommendation_published`` events (``OUTBOX_SCHEMA``): one per portfolio with
    recommendation rows, sorted by (portfolio_id, sequence).

    Inputs: ``recommendations``: ``RECOMMENDATIONS_SCHEMA`` rows of one rebalance run per
    portfolio, at least run_id, as_of (Date), portfolio_id and ``RECOMMENDATION_FIELDS``; unique
    (portfolio_id, strategy_id, instrument_id). ``last``, ``run_id``, ``emitted_at``: as
    ``state_events``.

    Payload: ``{"event_id", "timestamp", "portfolio_id", "rebalance_run_id", "as_of",
    "recommendations": [{"instrument_id", "strategy_id", "current_weight", "target_weight",
    "recommended_weight", "trade_quantity", "trade_value", "estimated_spread",
    "estimated_commission", "estimated_impact", "estimated_tax", "solver_status"}, ...]}``,
    rows sorted by (instrument_id, strategy_id); ``rebalance_run_id`` is the rows' run_id.
    Event unless the portfolio's latest recommendation event in ``last`` has the same
    fingerprint (the same run replayed). ``ValueError`` on a missing column, a null key, a
    duplicate row, several runs or as-of dates for one portfolio, a NaN or infinite number.
    """
    columns = ("run_id", "as_of", "portfolio_id", *RECOMMENDATION_FIELDS)
    recs = _typed(recommendations, {c: RECOMMENDATIONS_SCHEMA[c] for c in columns}, "recommendations").sort(
        "portfolio_id", "strategy_id", "instrument_id"
    )
    require_no_nulls(recs, ("run_id", "as_of", "portfolio_id", "strategy_id", "instrument_id"), "recommendations")
    require_unique(recs, ["portfolio_id", "strategy_id", "instrument_id"], "recommendations")
    _one_per_portfolio(recs, "run_id", "recommendations")
    _one_per_portfolio(recs, "as_of", "recommendations")
    require_finite(recs, [c for c in RECOMMENDATION_FIELDS if recs.schema[c] == pl.Float64], "recommendations")

    top = recs.group_by("portfolio_id").agg(
        pl.col("run_id").first().alias("rebalance_run_id"), pl.col("as_of").first().dt.strftime("%Y-%m-%d").alias("as_of")
    )
    items = recs.select("portfolio_id", *RECOMMENDATION_FIELDS)
    return _emit(
        top, items, "recommendations", ["instrument_id", "strategy_id"], RECOMMENDATION_PUBLISHED, last, run_id, emitted_at
    )


ORDER_FIELDS: tuple[str, ...] = (
    "order_id",
    "instrument_id",
    "side",
    "quantity",
    "crossed_quantity",
    "external_quantity",
    "price",
    "currency",
    "wave",
    "batch",
)


def order_events(
    allocations: AnyFrame, orders: AnyFrame, last: AnyFrame | None, *, run_id: str, emitted_at: datetime
) -> pl.DataFrame:
    """``order_published`` events (``OUTBOX_SCHEMA``): one per portfolio with allocation rows,
    sorted by (portfolio_id, sequence).

    Inputs: ``allocations``: ``ALLOCATIONS_SCHEMA`` rows of one rebalance run per portfolio
    (run_id, portfolio_id, instrument_id, side, quantity, crossed_quantity, external_quantity,
    order_id; order_id is null on a fully crossed trade); unique (run_id, portfolio_id,
    instrument_id, order_id). ``orders``: ``ORDERS_SCHEMA`` rows (at least run_id, order_id,
    price, currency, wave, batch), unique (run_id, order_id). ``last``, ``run_id``,
    ``emitted_at``: as ``state_events``.

    Payload: ``{"event_id", "timestamp", "portfolio_id", "rebalance_run_id", "orders":
    [{"order_id", "instrument_id", "side", "quantity", "crossed_quantity", "external_quantity",
    "price", "currency", "wave", "batch"}, ...]}``: one entry per allocation, sorted by
    (instrument_id, order_id) with the null order_id first; price, currency, wave and batch are
    the order's (null on a fully crossed allocation, which has no order). Event unless the
    portfolio's latest order event in ``last`` has the same fingerprint. ``ValueError`` on a
    missing column, a null key, a duplicate row, an allocation naming an order not in
    ``orders``, several runs for one portfolio, a NaN or infinite number.
    """
    alloc_columns = (
        "run_id", "portfolio_id", "instrument_id", "side", "quantity", "crossed_quantity", "external_quantity", "order_id",
    )
    alloc = _typed(allocations, {c: ALLOCATIONS_SCHEMA[c] for c in alloc_columns}, "allocations").sort(
        "run_id", "portfolio_id", "instrument_id", "order_id", nulls_last=False
    )
    require_no_nulls(alloc, ("run_id", "portfolio_id", "instrument_id", "side", "quantity"), "allocations")
    require_unique(alloc, ["run_id", "portfolio_id", "instrument_id", "order_id"], "allocations")
    _one_per_portfolio(alloc, "run_id", "allocations")
    require_finite(alloc, ("quantity", "crossed_quantity", "external_quantity"), "allocations")

    order_columns = ("run_id", "order_id", "price", "currency", "wave", "batch")
    ords = _typed(orders, {c: ORDERS_SCHEMA[c] for c in order_columns}, "orders").sort("run_id", "order_id")
    require_no_nulls(ords, ("run_id", "order_id"), "orders")
    require_unique(ords, ["run_id", "order_id"], "orders")
    require_finite(ords, ("price",), "orders")

    found = ords.with_columns(pl.lit(True).alias("_found"))
    joined = alloc.join(found, on=["run_id", "order_id"], how="left", maintain_order="left")
    orphan = joined.filter(pl.col("order_id").is_not_null() & pl.col("_found").is_null())
    if orphan.height:
        raise ValueError(
            f"allocations name order {orphan['order_id'][0]!r} of run {orphan['run_id'][0]!r}, which is not in orders"
        )

    top = joined.group_by("portfolio_id").agg(pl.col("run_id").first().alias("rebalance_run_id"))
    items = joined.select("portfolio_id", *ORDER_FIELDS)
    return _emit(top, items, "orders", ["instrument_id", "order_id"], ORDER_PUBLISHED, last, run_id, emitted_at)


# --- reading -------------------------------------------------------------------------------------


def events_after(outbox: AnyFrame, portfolio_id: str, sequence: int) -> pl.DataFrame:
    """The events of ``portfolio_id`` with sequence > ``sequence``, in sequence order
    (``OUTBOX_SCHEMA``). Input: outbox rows (``OUTBOX_SCHEMA`` columns). A consumer that reads
    after 0, then after the highest sequence it has seen, gets every event exactly once."""
    df = _typed(outbox, OUTBOX_SCHEMA, "outbox")
    return df.filter((pl.col("portfolio_id") == portfolio_id) & (pl.col("sequence") > sequence)).sort("sequence")


def check_outbox(outbox: AnyFrame, *, from_start: bool = True) -> None:
    """``ValueError`` unless ``outbox`` (columns event_id, event_type, portfolio_id, sequence) is
    well numbered: no null key, known event types, no repeated event_id, no repeated
    (portfolio_id, sequence), and per portfolio the sequences are consecutive, starting at 1
    (with ``from_start=False``, e.g. after old events were archived, only consecutive)."""
    df = _typed(
        outbox, {c: OUTBOX_SCHEMA[c] for c in ("event_id", "event_type", "portfolio_id", "sequence")}, "outbox"
    ).sort("portfolio_id", "sequence")
    require_no_nulls(df, df.columns, "outbox")
    unknown = df.filter(~pl.col("event_type").is_in(EVENT_TYPES))
    if unknown.height:
        raise ValueError(f"outbox has unknown event_type {unknown['event_type'][0]!r} (allowed: {', '.join(EVENT_TYPES)})")
    dup_seq = df.filter(pl.struct("portfolio_id", "sequence").is_duplicated())
    if dup_seq.height:
        raise ValueError(f"outbox has duplicate sequence {dup_seq['sequence'][0]} for portfolio {dup_seq['portfolio_id'][0]}")
    dup_id = df.filter(pl.col("event_id").is_duplicated())
    if dup_id.height:
        raise ValueError(f"outbox has duplicate event_id {dup_id['event_id'][0]}")
    expected = pl.col("sequence").shift(1).over("portfolio_id") + 1
    if from_start:
        expected = expected.fill_null(1)
    bad = df.filter(pl.col("sequence") != expected)
    if bad.height:
        row = bad.row(0, named=True)
        before = df.filter((pl.col("portfolio_id") == row["portfolio_id"]) & (pl.col("sequence") < row["sequence"]))
        after = before["sequence"].max() if before.height else 0
        raise ValueError(
            f"outbox has a gap for portfolio {row['portfolio_id']}: sequence {row['sequence']} follows {after}"
        )


# --- subscriptions -------------------------------------------------------------------------------

SUBSCRIPTION_KEYS: tuple[str, ...] = ("name", "events", "portfolios", "format")
_NAME = re.compile(r"[A-Za-z0-9_-][A-Za-z0-9._-]*")


@dataclass(frozen=True)
class Subscription:
    """One subscriber: ``name`` (its export folder's name: letters, digits, ``.``, ``_``, ``-``,
    not starting with ``.``), the ``events`` types it receives, the ``portfolios`` patterns
    (shell globs matched with ``fnmatch.fnmatchcase``: ``"*"`` all, ``"P00*"``, or plain ids)
    and the export ``format`` (``FORMATS``)."""

    name: str
    events: tuple[str, ...]
    portfolios: tuple[str, ...]
    format: str

    def matches(self, portfolio_id: str) -> bool:
        """Whether ``portfolio_id`` matches one of the portfolio patterns."""
        return any(fnmatch.fnmatchcase(portfolio_id, p) for p in self.portfolios)


def _strings(value: object, where: str, allow_single: bool) -> tuple[str, ...]:
    items = [value] if allow_single and isinstance(value, str) else value
    if isinstance(items, str) or not isinstance(items, (list, tuple)):
        raise ValueError(f"{where} must be a list of strings{' or one string' if allow_single else ''}, got {value!r}")
    if not items:
        raise ValueError(f"{where} is empty")
    bad = [v for v in items if not isinstance(v, str) or not v.strip()]
    if bad:
        raise ValueError(f"{where} holds {bad[0]!r}, not a non-empty string (quote ids in YAML)")
    return tuple(dict.fromkeys(items))  # repeats dropped, order kept


def parse_subscriptions(spec: Mapping | None) -> tuple[Subscription, ...]:
    """Subscriptions from a parsed YAML mapping, in file order.

    Input: ``{"subscribers": [{"name": str, "events": [event type, ...], "portfolios": "*" |
    glob | [id or glob, ...], "format": "jsonl" | "parquet"}, ...]}`` (None, an empty mapping or
    an empty list: no subscriber). Every key of a subscriber is required. ``ValueError`` names
    the problem: an unknown top-level or subscriber key, a missing key, an empty or malformed
    name, a duplicate name, an unknown event type or format, an empty or non-string list.
    """
    if spec is None:
        return ()
    if not isinstance(spec, Mapping):
        raise ValueError(f"a subscription spec must be a mapping, got {type(spec).__name__}")
    unknown = sorted(map(str, set(spec) - {"subscribers"}))
    if unknown:
        raise ValueError(f"subscription spec: unknown top-level key(s) {', '.join(unknown)} (allowed: subscribers)")
    entries = spec.get("subscribers") or []
    if not isinstance(entries, list):
        raise ValueError(f"subscription spec: subscribers must be a list, got {type(entries).__name__}")
    out: list[Subscription] = []
    seen: set[str] = set()
    for i, entry in enumerate(entries, start=1):
        if not isinstance(entry, Mapping):
            raise ValueError(f"subscriber #{i} must be a mapping with {', '.join(SUBSCRIPTION_KEYS)}")
        name = entry.get("name")
        if not isinstance(name, str) or not name.strip():
            raise ValueError(f"subscriber #{i} has an empty or missing name")
        if not _NAME.fullmatch(name):
            raise ValueError(
                f"subscriber #{i}: name {name!r} must be letters, digits, '.', '_', '-' and not start with '.'"
                " (it names a folder)"
            )
        if name in seen:
            raise ValueError(f"duplicate subscriber name {name!r}")
        seen.add(name)
        extra = sorted(map(str, set(entry) - set(SUBSCRIPTION_KEYS)))
        if extra:
            raise ValueError(f"subscriber {name!r}: unknown key(s) {', '.join(extra)} (allowed: {', '.join(SUBSCRIPTION_KEYS)})")
        missing = [k for k in SUBSCRIPTION_KEYS if k not in entry]
        if missing:
            raise ValueError(f"subscriber {name!r}: missing key(s) {', '.join(missing)}")
        events = _strings(entry["events"], f"subscriber {name!r}: events", allow_single=False)
        bad = [e for e in events if e not in EVENT_TYPES]
        if bad:
            raise ValueError(f"subscriber {name!r}: unknown event type {bad[0]!r} (allowed: {', '.join(EVENT_TYPES)})")
        portfolios = _strings(entry["portfolios"], f"subscriber {name!r}: portfolios", allow_single=True)
        fmt = entry["format"]
        if fmt not in FORMATS:
            raise ValueError(f"subscriber {name!r}: unknown format {fmt!r} (allowed: {', '.join(FORMATS)})")
        out.append(Subscription(name=name, events=events, portfolios=portfolios, format=fmt))
    return tuple(out)


def select_events(subscription: Subscription, events: AnyFrame) -> pl.DataFrame:
    """The events ``subscription`` receives (``OUTBOX_SCHEMA``), sorted by (portfolio_id,
    sequence): event_type in ``subscription.events`` and portfolio_id matching one of its
    patterns. Input: outbox rows (``OUTBOX_SCHEMA`` columns)."""
    df = _typed(events, OUTBOX_SCHEMA, "events")
    # patterns are matched once per distinct portfolio, not per event
    ids = df["portfolio_id"].drop_nulls().unique().to_list()
    wanted = [p for p in ids if subscription.matches(p)]
    return df.filter(
        pl.col("event_type").is_in(list(subscription.events)) & pl.col("portfolio_id").is_in(wanted)
    ).sort("portfolio_id", "sequence")


def to_json_lines(events: AnyFrame) -> str:
    """``events`` (``OUTBOX_SCHEMA`` columns) as JSON Lines, sorted by (portfolio_id, sequence):
    one canonical JSON object per line, each line ending in a newline (no event: ``""``). The
    object is the envelope (event_id, event_type, portfolio_id, sequence, timestamp as ISO-8601
    ``Z`` text, run_id) and ``payload``, the payload parsed back into an object."""
    df = _typed(events, OUTBOX_SCHEMA, "events").sort("portfolio_id", "sequence").with_columns(_iso("timestamp"))
    fields = ("event_id", "event_type", "portfolio_id", "sequence", "timestamp", "run_id")
    lines = []
    for row in df.select(*fields, "payload").iter_rows(named=True):
        envelope = {k: row[k] for k in fields}
        envelope["payload"] = json.loads(row["payload"])
        lines.append(canonical_json(envelope) + "\n")
    return "".join(lines)
