"""Netting: the trades the optimiser chose for each portfolio, crossed internally and netted into
external order batches.

Input: one trade per (run_id, portfolio_id, instrument_id), signed ``quantity`` (+ buy, - sell,
never 0) at a decision ``price`` (> 0, local currency), with the instrument's ``currency`` and
``adv`` (average daily volume in shares, null when unknown). Runs never net against each other:
every rule below holds per (run_id, instrument_id).

- **Decision price** ``p`` = the quantity-weighted mean of the trades' prices,
  ``sum |q_i| p_i / sum |q_i|`` (exactly the common price when all trades share one). Crosses,
  orders and notionals use ``p``.
- **Crossing first.** With ``B`` = total bought and ``S`` = total sold (absolute shares), the
  crossed quantity is ``C = min(B, S)``: buying portfolios receive ``C`` shares from selling
  portfolios at ``p``, with no market order for that part. Only the net remainder
  ``R = |B - S|`` goes to the market, on the side of the larger total. A remainder within float
  noise (``|B - S| <= 1e-12 (B + S)``) counts as zero: both sides are then fully crossed.
- **Pro-rata allocation of the cross.** Every trade on the smaller side is fully crossed. On the
  larger side (total ``L``) trade ``i`` crosses ``c_i = |q_i| C / L`` and sends
  ``e_i = |q_i| - c_i`` (= ``|q_i| R / L``) to the market. Fractional shares are kept; the
  rounding residual ``C - sum c_i`` is added to the side's largest trade (ties: the smallest
  portfolio_id) so that the crossed quantities sum to ``C`` to the last float.
- **Batches.** The remainder is cut into batches of at most ``cap`` shares, where ``cap`` is the
  smaller of ``max_order_adv_share * adv`` (when adv is known and positive) and
  ``max_batch_quantity`` (when given); without a cap it is one batch. ``k = ceil(R / cap)``
  batches (a ratio within 1e-9 of an integer is that integer): ``k - 1`` batches of ``cap`` and a
  last one of ``R - (k - 1) cap``. More than ``MAX_BATCHES`` batches for one order is refused
  (a trade hundreds of days of volume large is a data problem, not something to slice).
- **Order ids and sequencing.** ``order_id = f"{run_id}-{instrument_id}-{side}-{batch:03d}"``.
  Sells go in wave 1 and buys in wave 2 (sells first, so their cash covers the buys); orders are
  sorted by (run_id, wave, instrument_id, batch).
- **Allocation of the batches.** Every batch is shared pro rata by the trades of the larger side:
  trade ``i`` gets ``e_i cap / R`` of each full batch and the rest of ``e_i`` in the last batch
  (so its parts sum to ``e_i`` to the last float). A trade with an external part has one
  allocation row per batch; its crossed part sits on the row of batch 1 and later rows carry
  ``crossed_quantity = 0``. Per row ``quantity = crossed_quantity + external_quantity``, and a
  trade's rows sum to its absolute quantity. A fully crossed trade has one row with a null
  order_id.

The output is independent of the order of the input rows (the trades are sorted by their key
first, so every float sum runs in the same order).

``netting_summary`` sums the netting per run and currency (notionals in one currency only).
"""

from __future__ import annotations

import transforms  # noqa: F401

from typing import NamedTuple

import polars as pl

from transforms.contract import ALLOCATIONS_SCHEMA, CROSSINGS_SCHEMA, ORDERS_SCHEMA  # noqa: F401  (schemas: published)
from transforms.frame_checks import collected_with, require_finite, require_no_nulls, require_unique

BUY, SELL = "BUY", "SELL"
WAVES = {SELL: 1, BUY: 2}
MAX_BATCHES = 1000
# |B - S| at or below this share of B + S is float noise, not an order
NET_TOLERANCE = 1e-12
# a remainder within this relative distance of a whole number of caps is that many batches
BATCH_TOLERANCE = 1e-9

TRADES_SCHEMA: dict[str, pl.DataType] = {
    "run_id": pl.String,
    "portfolio_id": pl.String,
    "instrument_id": pl.String,
    "quantity": pl.Float64,
    "price": pl.Float64,
    "currency": pl.String,
    "adv": pl.Float64,
}

NETTING_SUMMARY_SCHEMA: dict[str, pl.DataType] = {
    "run_id": pl.String,
    "currency": pl.String,
    "trades": pl.Int64,
    "portfolios": pl.Int64,
    "instruments": pl.Int64,
    "crossed_instruments": pl.Int64,
    "orders": pl.Int64,
    "gross_quantity": pl.Float64,
    "crossed_quantity": pl.Float64,
    "external_quantity": pl.Float64,
    "gross_notional": pl.Float64,
    "crossed_notional": pl.Float64,
    "external_notional": pl.Float64,
    "external_sell_notional": pl.Float64,
    "external_buy_notional": pl.Float64,
    "crossing_rate": pl.Float64,
}

_INSTRUMENT = ["run_id", "instrument_id"]
_TRADE = ["run_id", "portfolio_id", "instrument_id"]


class NettedOrders(NamedTuple):
    """The result of ``net_orders``: external order batches (``ORDERS_SCHEMA``), internal
    crosses (``CROSSINGS_SCHEMA``) and how each trade is filled (``ALLOCATIONS_SCHEMA``)."""

    orders: pl.DataFrame
    crossings: pl.DataFrame
    allocations: pl.DataFrame


def _cast(frame: pl.DataFrame | pl.LazyFrame, schema: dict[str, pl.DataType]) -> pl.LazyFrame:
    return frame.lazy().select([pl.col(c).cast(t) for c, t in schema.items()])


def _validated(trades: pl.DataFrame | pl.LazyFrame) -> pl.DataFrame:
    """The trades cast to ``TRADES_SCHEMA`` and sorted by their key, or a ``ValueError``."""
    df = collected_with(trades, TRADES_SCHEMA, "trades")
    try:
        df = df.select([pl.col(c).cast(t, strict=True) for c, t in TRADES_SCHEMA.items()])
    except pl.exceptions.PolarsError as e:
        raise ValueError(f"trades has a column of the wrong type: {e}") from e
    require_no_nulls(df, [c for c in TRADES_SCHEMA if c != "adv"], "trades")
    require_finite(df, ["quantity", "price", "adv"], "trades")
    for bad, what in (
        (pl.col("quantity") == 0, "a zero quantity (a trade buys or sells something)"),
        (pl.col("price") <= 0, "a non-positive price"),
        (pl.col("adv") < 0, "a negative adv"),
    ):
        n = df.select(bad.fill_null(False).sum()).item()
        if n:
            raise ValueError(f"trades has {n} row(s) with {what}")
    df = df.sort(_TRADE)
    require_unique(df, _TRADE, "trades (one trade per portfolio and instrument per run)")
    # one instrument has one currency and one adv within a run (null adv counts as a value)
    mixed = df.group_by(_INSTRUMENT).agg(
        pl.col("currency").n_unique().alias("currencies"), pl.col("adv").n_unique().alias("advs")
    )
    for column, what in (("currencies", "currencies"), ("advs", "adv values")):
        bad = mixed.filter(pl.col(column) > 1).sort(_INSTRUMENT)
        if bad.height:
            raise ValueError(f"trades has an instrument with several {what} in one run: {bad.select(_INSTRUMENT).row(0)}")
    return df


def _empty(schema: dict[str, pl.DataType]) -> pl.DataFrame:
    return pl.DataFrame(schema=schema)


def net_orders(
    trades: pl.DataFrame | pl.LazyFrame,
    *,
    max_order_adv_share: float = 0.10,
    max_batch_quantity: float | None = None,
) -> NettedOrders:
    """Cross each run's trades internally and net the rest into external order batches.

    Input ``trades``: run_id, portfolio_id, instrument_id (String), quantity (Float64, signed:
    + buy, - sell, never 0), price (Float64 > 0, local), currency (String), adv (Float64 >= 0 or
    null); one row per (run_id, portfolio_id, instrument_id). ``max_order_adv_share`` (> 0) caps
    a batch at that share of adv (null or 0 adv: no adv cap); ``max_batch_quantity`` (> 0 or
    None) caps every batch in shares.

    Output ``NettedOrders``:

    - ``orders`` (``ORDERS_SCHEMA``), one row per batch: ``quantity`` > 0, ``price`` the
      decision price ``sum |q| p / sum |q|``, ``notional = quantity * price``, ``wave`` 1 for
      SELL and 2 for BUY, ``batch`` 1..``batches``; sorted by (run_id, wave, instrument_id,
      batch);
    - ``crossings`` (``CROSSINGS_SCHEMA``), one row per instrument with both buys and sells:
      ``quantity = min(B, S)``, ``notional = quantity * price`` (one side); sorted by
      (run_id, instrument_id);
    - ``allocations`` (``ALLOCATIONS_SCHEMA``): per trade, its crossed part (pro rata on the
      larger side, in full on the smaller) and its external part per batch, sorted by
      (run_id, instrument_id, portfolio_id, order_id) with the null order_id first.

    The rules (crossing, pro rata, batches, order ids) are in the module docstring. Raises
    ``ValueError`` on a missing column, a null, a zero quantity, a non-positive price, a negative
    adv, a NaN or infinity, a duplicate trade, an instrument with two currencies or advs in a
    run, a bad parameter or an order that needs more than ``MAX_BATCHES`` batches.
    """
    if not (max_order_adv_share > 0 and max_order_adv_share < float("inf")):
        raise ValueError(f"max_order_adv_share must be a positive finite number, got {max_order_adv_share}")
    if max_batch_quantity is not None and not (0 < max_batch_quantity < float("inf")):
        raise ValueError(f"max_batch_quantity must be positive and finite or None, got {max_batch_quantity}")
    df = _validated(trades)
    if df.height == 0:
        return NettedOrders(_empty(ORDERS_SCHEMA), _empty(CROSSINGS_SCHEMA), _empty(ALLOCATIONS_SCHEMA))

    q, absq = pl.col("quantity"), pl.col("quantity").abs()
    side = pl.when(q > 0).then(pl.lit(BUY)).otherwise(pl.lit(SELL))
    t = df.lazy().with_columns(side.alias("side"), absq.alias("abs_q"))

    weighted = (pl.col("abs_q") * pl.col("price")).sum() / pl.col("abs_q").sum()
    buy, sell = pl.col("buy"), pl.col("sell")
    adv_cap = pl.when(pl.col("adv") > 0).then(pl.col("adv") * max_order_adv_share)
    cap = pl.min_horizontal(adv_cap, pl.lit(max_batch_quantity, dtype=pl.Float64))  # nulls ignored
    noise = (buy - sell).abs() <= NET_TOLERANCE * (buy + sell)
    instruments = (
        t.group_by(_INSTRUMENT)
        .agg(
            pl.col("abs_q").filter(pl.col("side") == BUY).sum().alias("buy"),
            pl.col("abs_q").filter(pl.col("side") == SELL).sum().alias("sell"),
            pl.col("currency").first(),
            pl.col("adv").first(),
            # the common price itself when every trade has it (a weighted mean may round off it)
            pl.when(pl.col("price").min() == pl.col("price").max())
            .then(pl.col("price").first())
            .otherwise(weighted)
            .alias("price"),
        )
        .with_columns(
            pl.min_horizontal(buy, sell).alias("crossed"),
            pl.max_horizontal(buy, sell).alias("larger_total"),
            pl.when(noise).then(0.0).otherwise((buy - sell).abs()).alias("remainder"),
            pl.when(noise).then(None).when(buy > sell).then(pl.lit(BUY)).otherwise(pl.lit(SELL)).alias("larger"),
            cap.alias("cap"),
        )
        .with_columns(
            pl.when(pl.col("cap").is_null() | (pl.col("remainder") == 0))
            .then(1)
            .otherwise((pl.col("remainder") / pl.col("cap") - BATCH_TOLERANCE).ceil().clip(lower_bound=1))
            .cast(pl.Int64)
            .alias("batches")
        )
        .collect()
    )
    too_many = instruments.filter(pl.col("batches") > MAX_BATCHES).sort(_INSTRUMENT)
    if too_many.height:
        row = too_many.row(0, named=True)
        raise ValueError(
            f"order for {row['run_id']}/{row['instrument_id']} needs {row['batches']} batches "
            f"(more than {MAX_BATCHES}): remainder {row['remainder']} against a batch cap of {row['cap']}"
        )

    batch, k = pl.col("batch"), pl.col("batches")
    order_id = pl.concat_str(
        pl.col("run_id"), pl.col("instrument_id"), pl.col("side"), batch.cast(pl.String).str.zfill(3), separator="-"
    )
    orders = (
        instruments.lazy()
        .filter(pl.col("remainder") > 0)
        .with_columns(pl.col("larger").alias("side"), pl.int_ranges(1, k + 1).alias("batch"))
        .explode("batch")
        .with_columns(
            pl.when(batch < k)
            .then(pl.col("cap"))
            .otherwise(pl.col("remainder") - (k - 1).cast(pl.Float64) * pl.col("cap").fill_null(0.0))
            .alias("quantity"),
            order_id.alias("order_id"),
            pl.col("side").replace_strict(WAVES, return_dtype=pl.Int64).alias("wave"),
        )
        .with_columns((pl.col("quantity") * pl.col("price")).alias("notional"))
    )
    orders = _cast(orders, ORDERS_SCHEMA).sort("run_id", "wave", "instrument_id", "batch").collect()
    dup = orders["order_id"].is_duplicated()
    if dup.any():  # only possible when run and instrument ids contain "-" and collide
        raise ValueError(f"order ids collide: {orders.filter(dup)['order_id'][0]} (a '-' in run or instrument ids)")

    crossings = _cast(
        instruments.lazy()
        .filter(pl.col("crossed") > 0)
        .with_columns(pl.col("crossed").alias("quantity"), (pl.col("crossed") * pl.col("price")).alias("notional")),
        CROSSINGS_SCHEMA,
    ).sort(_INSTRUMENT)

    # crossed part per trade: pro rata on the larger side, in full on the smaller one
    group = [*_INSTRUMENT, "side"]
    on_larger = pl.col("side") == pl.col("larger").fill_null("")
    raw = pl.when(on_larger).then(pl.col("abs_q") * (pl.col("crossed") / pl.col("larger_total"))).otherwise(pl.col("abs_q"))
    # the side's largest trade (ties: smallest portfolio_id) takes the rounding residual
    first = pl.int_range(pl.len()).over(group) == 0
    per_trade = (
        t.join(instruments.lazy().select(*_INSTRUMENT, "crossed", "larger_total", "larger"), on=_INSTRUMENT)
        .sort([*group, "abs_q", "portfolio_id"], descending=[False, False, False, True, False])
        .with_columns(raw.alias("_raw"), on_larger.alias("_larger"))
        .with_columns(
            pl.when(pl.col("_larger") & first)
            .then(pl.col("_raw") + (pl.col("crossed") - pl.col("_raw").sum().over(group)))
            .otherwise(pl.col("_raw"))
            .clip(0.0, pl.col("abs_q"))
            .alias("crossed_quantity")
        )
        .with_columns((pl.col("abs_q") - pl.col("crossed_quantity")).alias("external_total"))
    )

    crossed_only = per_trade.filter(~pl.col("_larger")).with_columns(
        pl.col("abs_q").alias("quantity"),
        pl.col("external_total").alias("external_quantity"),
        pl.lit(None, dtype=pl.String).alias("order_id"),
    )
    # each batch shared pro rata by the larger side's trades; a trade's last batch takes the
    # rest of its external quantity so its parts sum to it
    full_part = pl.col("external_total") * (pl.col("cap") / pl.col("remainder"))
    last_part = pl.col("external_total") - (k - 1).cast(pl.Float64) * full_part.fill_null(0.0)
    with_orders = (
        per_trade.filter(pl.col("_larger"))
        .join(instruments.lazy().select(*_INSTRUMENT, "remainder", "cap", "batches"), on=_INSTRUMENT)
        .with_columns(pl.int_ranges(1, k + 1).alias("batch"))
        .explode("batch")
        .with_columns(
            pl.when(batch < k).then(full_part).otherwise(last_part).alias("external_quantity"),
            pl.when(batch == 1).then(pl.col("crossed_quantity")).otherwise(0.0).alias("crossed_quantity"),
            order_id.alias("order_id"),
        )
        .with_columns((pl.col("crossed_quantity") + pl.col("external_quantity")).alias("quantity"))
    )
    allocations = (
        pl.concat([_cast(crossed_only, ALLOCATIONS_SCHEMA), _cast(with_orders, ALLOCATIONS_SCHEMA)])
        .sort("run_id", "instrument_id", "portfolio_id", "order_id", nulls_last=False)
    )
    crossings_df, allocations_df = pl.collect_all([crossings, allocations])
    return NettedOrders(orders, crossings_df, allocations_df)


def netting_summary(netted: NettedOrders) -> pl.DataFrame:
    """How much of each run's trading the netting kept off the market, per run and currency
    (notionals are local, so currencies are never added together).

    Input: a ``NettedOrders``. Output (``NETTING_SUMMARY_SCHEMA``), one row per (run_id,
    currency), sorted by them:

    - trades, portfolios, instruments: distinct trades, portfolios and instruments traded;
      crossed_instruments: instruments with a cross; orders: external order batches;
    - gross_quantity = sum of the trades' |quantity|; crossed_quantity = sum of the crossings
      (each crossed share counted once, though it fills a buy and a sell); external_quantity =
      sum of the orders. ``gross = 2 crossed + external``;
    - the same in money (``*_notional``), every quantity valued at its instrument's decision
      price (the price of its orders and crossings), so ``gross_notional = 2 crossed_notional +
      external_notional``; external_sell_notional / external_buy_notional split the orders by
      side (the sells' cash against the buys');
    - crossing_rate = the share of the gross kept off the market,
      ``2 crossed_notional / gross_notional = 1 - external_notional / gross_notional``
      (null when the gross is zero).
    """
    orders, crossings, allocations = netted
    if allocations.height == 0:
        return _empty(NETTING_SUMMARY_SCHEMA)
    # every instrument traded has an order or a cross (or both), with the same price and currency
    prices = pl.concat(
        [orders.select(*_INSTRUMENT, "price", "currency"), crossings.select(*_INSTRUMENT, "price", "currency")]
    ).unique(_INSTRUMENT, keep="first")
    keys = ["run_id", "currency"]
    gross = (
        allocations.lazy()
        .join(prices.lazy(), on=_INSTRUMENT, how="left")
        .group_by(keys)
        .agg(
            pl.struct("portfolio_id", "instrument_id").n_unique().cast(pl.Int64).alias("trades"),
            pl.col("portfolio_id").n_unique().cast(pl.Int64).alias("portfolios"),
            pl.col("instrument_id").n_unique().cast(pl.Int64).alias("instruments"),
            pl.col("quantity").sum().alias("gross_quantity"),
            (pl.col("quantity") * pl.col("price")).sum().alias("gross_notional"),
        )
    )
    crossed = crossings.lazy().group_by(keys).agg(
        pl.len().cast(pl.Int64).alias("crossed_instruments"),
        pl.col("quantity").sum().alias("crossed_quantity"),
        pl.col("notional").sum().alias("crossed_notional"),
    )
    external = orders.lazy().group_by(keys).agg(
        pl.len().cast(pl.Int64).alias("orders"),
        pl.col("quantity").sum().alias("external_quantity"),
        pl.col("notional").sum().alias("external_notional"),
        pl.col("notional").filter(pl.col("side") == SELL).sum().alias("external_sell_notional"),
        pl.col("notional").filter(pl.col("side") == BUY).sum().alias("external_buy_notional"),
    )
    counts = ["crossed_instruments", "orders"]
    sums = [
        "crossed_quantity", "crossed_notional", "external_quantity", "external_notional",
        "external_sell_notional", "external_buy_notional",
    ]
    out = (
        gross.join(crossed, on=keys, how="left")
        .join(external, on=keys, how="left")
        .with_columns(pl.col(*counts).fill_null(0), pl.col(*sums).fill_null(0.0))
        .with_columns(
            pl.when(pl.col("gross_notional") > 0)
            .then(2.0 * pl.col("crossed_notional") / pl.col("gross_notional"))
            .alias("crossing_rate")
        )
    )
    return _cast(out, NETTING_SUMMARY_SCHEMA).sort(keys).collect()
