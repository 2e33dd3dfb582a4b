"""Daily valuations: one row per portfolio and business day (``DAILY_VALUATIONS_SCHEMA``).

Calendar. Business days are the distinct dates in ``prices``. A portfolio is valued from the
first business day on or after ``max(inception_date, first activity)`` (first activity = the
earliest trade or cash-ledger entry date) through the last price date, whatever its status
(CLOSED portfolios too). A portfolio with no activity at all has no rows. An event dated on a
non-business day (or before the portfolio's first valued day) counts from the next valued day.

At the close of business day ``d`` (all amounts converted to the portfolio's base currency):

- holdings ``q(p, i, d)`` = cumulative signed trade quantity with trade date <= d
  (BUY +, SELL -, SELL_SHORT -, BUY_TO_COVER +);
- each non-zero holding is valued at the latest close on or before ``d`` times the fx rate on
  that close's date (as ``transforms.positions`` does, so the last day's NAV equals the sum of
  positions' market values); a holding whose close is older than ``d`` counts in
  ``stale_prices``. An instrument with no close at all on or before ``d`` is valued at the price
  of the portfolio's latest trade in it on or before ``d`` at ``d``'s fx, and counts as stale;
- ``long_market_value`` sums positive holdings' values (>= 0), ``short_market_value`` negative
  ones (<= 0);
- ``cash`` = cumulative ledger amounts with ts date <= d, per currency, at ``d``'s fx;
  ``settled_cash`` the part whose settle_date (and ts date) is <= d; ``pending_cash`` = the rest;
- ``net_flows`` = external ledger entries (deposits - withdrawals) counted on ``d`` (entries dated
  since the previous business day), at ``d``'s fx;
- ``nav`` = cash + long_market_value + short_market_value.

A value that cannot be converted (a currency never quoted in ``fx_rates``) is null, never NaN.

Implementation. Holdings are piecewise constant between trades, so the trades are folded into
segments ``(portfolio, instrument, first_day, end_day, quantity)`` (only non-zero quantities),
and the segments are expanded to one row per held (portfolio, instrument, day) in bounded
chunks of numpy arrays. Prices and fx are dense forward-filled ``instrument x day`` and
``currency x day`` matrices over the *traded* instruments only, read by flat index, and the
values are summed per (portfolio, day) with ``np.bincount``. Cash is a cumulative sum over a
``(portfolio, currency) x day`` matrix. No grid of never-held instruments is built.
"""

from __future__ import annotations

import numpy as np
import polars as pl

from transforms.contract import BASE_CURRENCY, DAILY_VALUATIONS_SCHEMA
from transforms.fx import usd_per_unit_grid

AnyFrame = pl.DataFrame | pl.LazyFrame

BUY_SIGN = {"BUY": 1.0, "BUY_TO_COVER": 1.0, "SELL": -1.0, "SELL_SHORT": -1.0}
QTY_EPS = 1e-9  # |holding| at or below this is flat (float residue of cumulative sums)
CHUNK_ROWS = 4_000_000  # held (portfolio, instrument, day) rows expanded at a time


def _day_index(days: pl.Series, dates: pl.Series) -> np.ndarray:
    """Index of the first business day on or after each date (len(days) when after the last)."""
    return days.search_sorted(dates.cast(pl.Date), side="left").cast(pl.Int64).to_numpy()


def _empty() -> pl.DataFrame:
    return pl.DataFrame(schema=DAILY_VALUATIONS_SCHEMA)


def _forward_filled_prices(
    prices: pl.DataFrame, inst: pl.DataFrame, days: pl.Series
) -> tuple[np.ndarray, np.ndarray]:
    """(n_instruments, n_days) arrays: forward-filled close and the index of its day (-1: none)."""
    n_i, n_days = inst.height, days.len()
    px = prices.join(inst.select("instrument_id", "i_idx"), on="instrument_id", how="inner")
    close = np.full((n_i, n_days), np.nan)
    close[px["i_idx"].to_numpy(), _day_index(days, px["date"])] = px["close"].to_numpy()
    last = np.where(np.isnan(close), -1, np.arange(n_days, dtype=np.int64)[None, :])
    np.maximum.accumulate(last, axis=1, out=last)
    filled = np.take_along_axis(close, np.maximum(last, 0), axis=1)
    filled[last < 0] = np.nan
    return filled, last


def _segments(trades: pl.DataFrame, ports: pl.DataFrame, inst: pl.DataFrame, days: pl.Series) -> pl.DataFrame:
    """Constant-holding segments [start, end) per (portfolio, instrument), non-zero only.

    One sort by (portfolio, instrument, valued day, trade_ts, trade_id); the per-day sums and
    the last trade price are read at group boundaries, and the running holding is an exact
    per-(portfolio, instrument) cumulative sum.
    """
    n_days, n_i = days.len(), inst.height
    t = trades.join(ports.select("portfolio_id", "p_idx", "start_idx"), on="portfolio_id", how="inner").join(
        inst.select("instrument_id", "i_idx"), on="instrument_id", how="inner"
    )
    t = (
        t.with_columns(pl.Series("day", _day_index(days, t["trade_ts"].dt.date())))
        .with_columns(pl.max_horizontal("day", "start_idx").alias("start"))
        .filter(pl.col("start") < n_days)
        .select(
            (pl.col("p_idx").cast(pl.Int64) * n_i + pl.col("i_idx").cast(pl.Int64)).alias("pair"),
            pl.col("start").cast(pl.Int64),
            (pl.col("side").replace_strict(BUY_SIGN, default=0.0) * pl.col("quantity")).alias("dq"),
            pl.col("price").cast(pl.Float64),
            "trade_ts",
            "trade_id",
        )
        .sort("pair", "start", "trade_ts", "trade_id")
    )
    empty = pl.DataFrame(
        schema={"p_idx": pl.Int64, "i_idx": pl.Int64, "start": pl.Int64, "end": pl.Int64, "q": pl.Float64,
                "last_trade_price": pl.Float64}
    )
    if t.height == 0:
        return empty
    pair, start = t["pair"].to_numpy(), t["start"].to_numpy()
    dq, price = t["dq"].fill_null(0.0).to_numpy(), t["price"].fill_null(np.nan).to_numpy()
    new_day = np.ones(pair.size, dtype=bool)
    new_day[1:] = (pair[1:] != pair[:-1]) | (start[1:] != start[:-1])
    first = np.flatnonzero(new_day)
    last = np.append(first[1:], pair.size) - 1
    g_pair, g_start = pair[first], start[first]
    g_end = np.append(g_start[1:], n_days)
    same_pair_next = np.append(g_pair[1:] == g_pair[:-1], False)
    g_end = np.where(same_pair_next, g_end, n_days)
    grouped = pl.DataFrame(
        {
            "pair": pl.Series(g_pair).set_sorted(),
            "start": g_start,
            "end": g_end,
            "dq": np.add.reduceat(dq, first),
            "last_trade_price": price[last],
        }
    )
    return (
        grouped.with_columns(pl.col("dq").cum_sum().over("pair").alias("q"))
        .filter(pl.col("q").abs() > QTY_EPS)
        .select(
            (pl.col("pair") // n_i).alias("p_idx"),
            (pl.col("pair") % n_i).alias("i_idx"),
            "start",
            "end",
            "q",
            pl.col("last_trade_price").fill_nan(None),
        )
    )


def _expand(base: np.ndarray, lens: np.ndarray) -> np.ndarray:
    """Concatenate ``base[k] + arange(lens[k])`` for every k (vectorised)."""
    offs = np.cumsum(lens) - lens
    return np.repeat(base - offs, lens) + np.arange(int(lens.sum()))


def _chunks(lens: np.ndarray, chunk_rows: int) -> list[tuple[int, int]]:
    """Split segments [0, len) into runs of about ``chunk_rows`` expanded rows (whole segments)."""
    if lens.size == 0:
        return []
    ends = np.cumsum(lens)
    cuts = np.searchsorted(ends, np.arange(chunk_rows, ends[-1], chunk_rows), side="left") + 1
    bounds = np.unique(np.concatenate([[0], cuts, [lens.size]]).clip(0, lens.size))
    return list(zip(bounds[:-1].tolist(), bounds[1:].tolist()))


def _market_values(
    seg: pl.DataFrame,
    ports: pl.DataFrame,
    inst: pl.DataFrame,
    close: np.ndarray,
    last: np.ndarray,
    usd: np.ndarray,
    n_days: int,
    chunk_rows: int,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(long, short, stale) per flat (portfolio * n_days + day), summed over held segments.

    Priced cells read a precomputed ``(base ccy, instrument, day)`` table of close * fx (at the
    close's date), so each expanded row costs two gathers; the days before an instrument's first
    close (valued at the last trade price, rare) take a slower exact path.
    """
    n_cells = ports.height * n_days
    long_mv, short_mv, stale = np.zeros(n_cells), np.zeros(n_cells), np.zeros(n_cells)
    if seg.height == 0:
        return long_mv, short_mv, stale
    n_i = close.shape[0]
    usd2d = usd.reshape(-1, n_days)
    p = seg["p_idx"].cast(pl.Int64).to_numpy()
    i = seg["i_idx"].cast(pl.Int64).to_numpy()
    start = seg["start"].cast(pl.Int64).to_numpy()
    end = seg["end"].cast(pl.Int64).to_numpy()
    q = seg["q"].to_numpy()
    fallback = seg["last_trade_price"].cast(pl.Float64).fill_null(np.nan).to_numpy()
    inst_ccy = inst["ccy_idx"].cast(pl.Int64).to_numpy()
    base_of_p = ports["base_idx"].cast(pl.Int64).to_numpy()
    bases, slot_of_p = np.unique(base_of_p, return_inverse=True)
    has_price = last >= 0
    first_priced = np.where(has_price.any(axis=1), has_price.argmax(axis=1), n_days)[i]

    # 1. days before the instrument's first close: last trade price at that day's fx, stale
    u_end = np.minimum(end, first_priced)
    m = u_end > start
    if m.any():
        lens = u_end[m] - start[m]
        d = _expand(start[m], lens)
        rep = np.repeat(np.flatnonzero(m), lens)
        lc, bc = inst_ccy[i[rep]], base_of_p[p[rep]]
        rate = np.where(lc == bc, 1.0, usd2d[lc, d] / usd2d[bc, d])
        value = q[rep] * fallback[rep] * rate
        out = p[rep] * n_days + d
        is_long = q[rep] > 0
        long_mv += np.bincount(out[is_long], weights=value[is_long], minlength=n_cells)
        short_mv += np.bincount(out[~is_long], weights=value[~is_long], minlength=n_cells)
        stale += np.bincount(out, minlength=n_cells)

    # 2. priced days: value table per base currency (a handful of bases, not rows)
    fx_day = np.maximum(last, 0)
    local = usd2d[inst_ccy[:, None], fx_day]
    table = np.empty((bases.size, n_i, n_days))
    for k, b in enumerate(bases.tolist()):
        rate = np.where((inst_ccy == b)[:, None], 1.0, local / usd2d[b][fx_day])
        table[k] = close * rate
    table = table.ravel()
    is_stale = (last < np.arange(n_days)[None, :]).astype(np.float64).ravel()
    p_start = np.maximum(start, first_priced)
    for sign_mask, acc in ((q > 0, long_mv), (q < 0, short_mv)):
        m = sign_mask & (end > p_start)
        lens, ps, ii, pp, qq = end[m] - p_start[m], p_start[m], i[m], p[m], q[m]
        cell_base = (slot_of_p[pp] * n_i + ii) * n_days + ps
        stale_base = ii * n_days + ps
        out_base = pp * n_days + ps
        for a, b in _chunks(lens, chunk_rows):
            ln = lens[a:b]
            out = _expand(out_base[a:b], ln)
            value = np.repeat(qq[a:b], ln) * table[_expand(cell_base[a:b], ln)]
            acc += np.bincount(out, weights=value, minlength=n_cells)
            stale += np.bincount(out, weights=is_stale[_expand(stale_base[a:b], ln)], minlength=n_cells)
    return long_mv, short_mv, stale


def _cash(
    ledger: pl.DataFrame, ports: pl.DataFrame, ccys: pl.DataFrame, usd: np.ndarray, days: pl.Series
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(cash, settled, net_flows) in base ccy per flat (portfolio * n_days + day)."""
    n_days = days.len()
    n_cells = ports.height * n_days
    zeros = (np.zeros(n_cells), np.zeros(n_cells), np.zeros(n_cells))
    led = ledger.join(ports.select("portfolio_id", "p_idx", "start_idx", "base_idx"), on="portfolio_id", how="inner")
    led = led.join(ccys, on="currency", how="left").with_columns(pl.col("ccy_idx").fill_null(ccys.height))
    if led.height == 0:
        return zeros
    start = led["start_idx"].cast(pl.Int64).to_numpy()
    t_day = np.maximum(_day_index(days, led["ts"].dt.date()), start)
    settle = pl.coalesce(led["settle_date"], led["ts"].dt.date())
    s_day = np.maximum(_day_index(days, settle), t_day)
    amount = led["amount"].to_numpy()
    pairs = led.select("p_idx", "ccy_idx", "base_idx").with_columns(
        (pl.col("p_idx").cast(pl.Int64) * (ccys.height + 1) + pl.col("ccy_idx"))
        .rank("dense")
        .cast(pl.Int64)
        .sub(1)
        .alias("pair")
    )
    pair = pairs["pair"].to_numpy()
    n_pairs = int(pair.max()) + 1
    first = pairs.unique("pair").sort("pair")
    pair_p = first["p_idx"].cast(pl.Int64).to_numpy()
    pair_ccy = first["ccy_idx"].cast(pl.Int64).to_numpy()
    pair_base = first["base_idx"].cast(pl.Int64).to_numpy()
    day = np.arange(n_days)
    table = usd.reshape(-1, n_days)  # (currency, day); the last row is the NaN "unknown" one
    rate = np.where((pair_ccy == pair_base)[:, None], 1.0, table[pair_ccy] / table[pair_base])

    def cumulative(when: np.ndarray, weights: np.ndarray) -> np.ndarray:
        keep = when < n_days
        flat = np.bincount(pair[keep] * n_days + when[keep], weights=weights[keep], minlength=n_pairs * n_days)
        return np.cumsum(flat.reshape(n_pairs, n_days), axis=1)

    def to_portfolio(per_pair: np.ndarray) -> np.ndarray:
        cells = (pair_p[:, None] * n_days + day[None, :]).ravel()
        return np.bincount(cells, weights=(per_pair * rate).ravel(), minlength=n_cells)

    cash = to_portfolio(cumulative(t_day, amount))
    settled = to_portfolio(cumulative(s_day, amount))
    external = led["is_external"].fill_null(False).to_numpy()
    ext_amount = np.where(external, amount, 0.0)
    keep = t_day < n_days
    flows_pair = np.bincount(
        pair[keep] * n_days + t_day[keep], weights=ext_amount[keep], minlength=n_pairs * n_days
    ).reshape(n_pairs, n_days)
    flows = to_portfolio(flows_pair)
    return cash, settled, flows


def daily_valuations(
    trades: AnyFrame,
    cash_ledger: AnyFrame,
    prices: AnyFrame,
    fx_rates: AnyFrame,
    instruments: AnyFrame,
    portfolios: AnyFrame,
    *,
    chunk_rows: int = CHUNK_ROWS,
) -> pl.DataFrame:
    """Daily NAV per portfolio and business day (``DAILY_VALUATIONS_SCHEMA``).

    See the module docstring for the rules. ``chunk_rows`` bounds memory: about 100 bytes per
    expanded (portfolio, instrument, day) row are alive at once. Sorted by (portfolio_id, date).
    """
    px = (
        prices.lazy()
        .select("instrument_id", pl.col("date").cast(pl.Date), pl.col("close").cast(pl.Float64))
        .filter(pl.col("date").is_not_null() & pl.col("close").is_not_null() & pl.col("close").is_finite())
        .collect()
    )
    days = px["date"].unique().sort()
    n_days = days.len()
    if n_days == 0:
        return _empty()
    tr = (
        trades.lazy()
        .select("trade_id", "portfolio_id", "instrument_id", "trade_ts", "side", "quantity", "price")
        .filter(pl.col("trade_ts").is_not_null() & pl.col("quantity").is_not_null())
        .collect()
    )
    led = (
        cash_ledger.lazy()
        .select("portfolio_id", "ts", "settle_date", "currency", "amount", "is_external")
        .filter(pl.col("ts").is_not_null() & pl.col("amount").is_not_null())
        .collect()
    )
    first_activity = (
        pl.concat([tr.select("portfolio_id", pl.col("trade_ts").alias("ts")), led.select("portfolio_id", "ts")])
        .group_by("portfolio_id")
        .agg(pl.col("ts").min().dt.date().alias("first_activity"))
    )
    ports = (
        portfolios.lazy()
        .select(
            "portfolio_id",
            pl.col("base_currency").fill_null(BASE_CURRENCY),
            pl.col("inception_date").cast(pl.Date),
        )
        .unique("portfolio_id", keep="first")
        .collect()
        .join(first_activity, on="portfolio_id", how="inner")
        .with_columns(pl.max_horizontal("inception_date", "first_activity").alias("start_date"))
    )
    ports = (
        ports.with_columns(pl.Series("start_idx", _day_index(days, ports["start_date"])))
        .filter(pl.col("start_idx") < n_days)
        .sort("portfolio_id")
        .with_row_index("p_idx")
    )
    if ports.height == 0:
        return _empty()
    traded = tr.join(ports.select("portfolio_id"), on="portfolio_id", how="semi")
    inst = (
        traded.select("instrument_id")
        .unique()
        .join(instruments.lazy().select("instrument_id", "currency").collect(), on="instrument_id", how="left")
        .sort("instrument_id")
        .with_row_index("i_idx")
    )
    currencies = sorted(
        set(inst["currency"].drop_nulls().unique())
        | set(led["currency"].drop_nulls().unique())
        | set(ports["base_currency"].unique())
    )
    ccys = pl.DataFrame({"currency": currencies}, schema={"currency": pl.String}).with_row_index("ccy_idx")
    n_ccy = len(currencies)  # row n_ccy of the usd table is all NaN: a currency never seen
    grid = usd_per_unit_grid(fx_rates, days, currencies).join(ccys, on="currency")
    usd = np.full((n_ccy + 1) * n_days, np.nan)
    usd[(grid["ccy_idx"].cast(pl.Int64) * n_days + grid["day_idx"]).to_numpy()] = (
        grid["usd_per_unit"].fill_null(np.nan).to_numpy()
    )
    inst = (
        inst.join(ccys, on="currency", how="left")
        .with_columns(pl.col("ccy_idx").fill_null(n_ccy))
        .sort("i_idx")
    )
    ports = ports.join(
        ccys.rename({"currency": "base_currency", "ccy_idx": "base_idx"}), on="base_currency", how="left"
    ).sort("p_idx")

    close, last = _forward_filled_prices(px, inst, days)
    seg = _segments(tr, ports, inst, days)
    long_mv, short_mv, stale = _market_values(seg, ports, inst, close, last, usd, n_days, chunk_rows)
    cash, settled, flows = _cash(led, ports, ccys, usd, days)

    start = ports["start_idx"].cast(pl.Int64).to_numpy()
    counts = n_days - start
    p_rows = np.repeat(np.arange(ports.height), counts)
    d_rows = start[p_rows] + (np.arange(p_rows.size) - np.repeat(np.cumsum(counts) - counts, counts))
    cell = p_rows * n_days + d_rows
    lm, sm, c, sc = long_mv[cell], short_mv[cell], cash[cell], settled[cell]
    out = pl.DataFrame(
        {
            "portfolio_id": ports["portfolio_id"].gather(p_rows),
            "date": days.gather(d_rows),
            "base_currency": ports["base_currency"].gather(p_rows),
            "nav": c + lm + sm,
            "cash": c,
            "settled_cash": sc,
            "pending_cash": c - sc,
            "long_market_value": lm,
            "short_market_value": sm,
            "net_flows": flows[cell],
            "stale_prices": np.rint(stale[cell]).astype(np.int64),
        }
    )
    floats = [c for c, t in DAILY_VALUATIONS_SCHEMA.items() if t == pl.Float64]
    return out.with_columns([pl.col(c).fill_nan(None) for c in floats]).select(
        [pl.col(c).cast(t) for c, t in DAILY_VALUATIONS_SCHEMA.items()]
    )
