"""Daily valuations: one row per portfolio and business day (``DAILY_VALUATIONS_SCHEMA``).

Calendar. Business days are the distinct dates of the closes that count (``transforms.prices``).
A portfolio is valued from the first business day on or after ``max(inception_date, first
activity)`` (first activity = the earliest trade or cash-ledger entry date) through the last
price date, whatever its status (CLOSED portfolios too). A portfolio with no activity at all has no rows. An event dated on a
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
segments ``(portfolio, instrument, first_day, quantity)`` (one per pair and valued day traded;
trades ordered through a packed Int64 key, trade_id breaking ties). A compiled loop
(``transforms.valuation_kernel``) adds each held segment's quantity times a precomputed
``(base ccy, instrument, day)`` table of close * fx to its portfolio's long or short total on
every day it spans, pairs in (portfolio, instrument) order, so the sums do not depend on the
input's row order. Prices are the rows of the traded instruments in the book's
``transforms.prices.PriceTable`` (built once per book, or here from a prices frame) and fx a
dense ``currency x day`` matrix (from ``transforms.fx.UsdTable``). Strings (portfolio,
instrument, currency) become integer codes once, through an Enum over the sorted ids. Cash is
a cumulative sum over a ``(portfolio, currency) x day`` matrix. No grid of never-traded
instruments is built.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import polars as pl

from transforms.ordering import order_by_key_then, time_offsets
from transforms.contract import BASE_CURRENCY, DAILY_VALUATIONS_SCHEMA
from transforms.fx import FxRates, usd_table
from transforms.lots import RowCodes
from transforms.prices import Calendar, Prices, codes, day_numbers, price_table, run_codes
from transforms.valuation_kernel import add_holding_values

AnyFrame = pl.DataFrame | pl.LazyFrame

BUY_SIGN = {"BUY": 1.0, "BUY_TO_COVER": 1.0, "SELL": -1.0, "SELL_SHORT": -1.0}
QTY_EPS = 1e-9  # |holding| at or below this is flat (float residue of cumulative sums)
KEY_BITS = 62  # packed (pair, ts) sort keys stay below 2**62: non-negative Int64


def _empty() -> pl.DataFrame:
    return pl.DataFrame(schema=DAILY_VALUATIONS_SCHEMA)


def _cumsum_per_run(values: np.ndarray, run_start: np.ndarray) -> np.ndarray:
    """Running sum of ``values`` restarted at each ``run_start`` (added in order from the start).

    Whole numbers (share quantities, as a rule) sum exactly in any order, so one global cumsum
    less each run's offset is the same answer. Otherwise the runs are laid out as the rows of a
    zero-padded matrix and summed with ``np.cumsum`` along the rows (sequential, so exactly the
    per-run sums), unless one long run would make the matrix far larger than the data: then
    polars' grouped cum_sum (also sequential).
    """
    if values.size == 0:
        return values
    starts = np.flatnonzero(run_start)
    if np.abs(values).sum() < 2.0**52 and np.array_equal(values, np.trunc(values)):
        total = np.cumsum(values)
        before = np.append(0.0, total)[starts]  # running total before each run
        return total - np.repeat(before, np.diff(np.append(starts, values.size)))
    lens = np.diff(np.append(starts, values.size))
    run = np.repeat(np.arange(starts.size), lens)
    col = np.arange(values.size) - starts[run]
    width = int(lens.max())
    if starts.size * width > 16 * values.size + 1024:
        return (
            pl.DataFrame({"run": run, "v": values})
            .select(pl.col("v").cum_sum().over("run"))
            .to_series()
            .to_numpy()
        )
    grid = np.zeros((starts.size, width))
    grid[run, col] = values
    return np.cumsum(grid, axis=1)[run, col]


def _segments(
    tr: pl.DataFrame, tr_day: np.ndarray, p: np.ndarray, i: np.ndarray, start_idx: np.ndarray, n_i: int, cal: Calendar
) -> dict[str, np.ndarray]:
    """Constant-holding segments [start, end) per (portfolio, instrument), non-zero only.

    Trades are ordered by (pair, trade_ts, trade_id) — the same order as (pair, valued day,
    trade_ts, trade_id), since the valued day never decreases with trade_ts — through one packed
    Int64 key, trade_id breaking the rare ties. The per-day sums and the last trade price are
    read at group boundaries, and the running holding is an exact per-pair cumulative sum.
    """
    n_days = cal.n
    keep = (p >= 0) & (i >= 0)
    day = cal.index(tr_day[keep])
    p, i = p[keep], i[keep]
    start = np.maximum(day, start_idx[p])
    valued = start < n_days
    rows = np.flatnonzero(keep)[valued]
    pair, start = (p * n_i + i)[valued], start[valued]
    empty = {k: np.empty(0, dtype=np.int64) for k in ("p", "i", "start", "end")}
    empty |= {"q": np.empty(0), "last_trade_price": np.empty(0)}
    if rows.size == 0:
        return empty
    # numpy columns gathered by row number: gathering the frame (strings included) costs more
    ts = time_offsets(tr["trade_ts"].to_physical().to_numpy()[rows])
    trade_id = tr["trade_id"].rechunk()
    span = int(ts.max()) + 1
    pair_span = n_i * int(start_idx.size)
    if span.bit_length() + pair_span.bit_length() <= KEY_BITS:
        # only the rows tied on (pair, ts) read trade_id (row ``rows[k]`` of ``tr``)
        order = order_by_key_then((pair << span.bit_length()) | ts, trade_id, rows)
    else:  # keys too wide to pack: sort on the columns
        frame = pl.DataFrame({"pair": pair, "ts": ts, "trade_id": trade_id.gather(rows)})
        order = frame.select(pl.arg_sort_by("pair", "ts", "trade_id")).to_series().to_numpy()
    at = rows[order]
    sides = pl.Series(sorted(BUY_SIGN), dtype=pl.String)
    sign = np.append([BUY_SIGN[side] for side in sides], 0.0)[codes(tr["side"], sides)[at]]  # -1: 0.0
    quantity = tr["quantity"].cast(pl.Float64).to_numpy()[at]  # never null (filtered)
    dq = sign * quantity
    price = tr["price"].cast(pl.Float64).fill_null(np.nan).to_numpy()[at]
    pair, start = pair[order], start[order]
    new_day = np.ones(pair.size, dtype=bool)
    new_day[1:] = (pair[1:] != pair[:-1]) | (start[1:] != start[:-1])
    first = np.flatnonzero(new_day)
    last = np.append(first[1:], pair.size) - 1
    g_pair, g_start = pair[first], start[first]
    same_pair_next = np.append(g_pair[1:] == g_pair[:-1], False)
    g_end = np.where(same_pair_next, np.append(g_start[1:], n_days), n_days)
    q = _cumsum_per_run(np.add.reduceat(dq, first), ~np.append(False, same_pair_next[:-1]))
    held = ~(np.abs(q) <= QTY_EPS)  # a NaN holding stays (polars orders NaN above every number)
    h = np.flatnonzero(held)
    return {
        "p": g_pair[h] // n_i,
        "i": g_pair[h] % n_i,
        "start": g_start[h],
        "end": g_end[h],
        "q": q[h],
        "last_trade_price": price[last[h]],  # NaN: unknown
    }


def _expand(base: np.ndarray, lens: np.ndarray) -> np.ndarray:
    """Concatenate ``base[k] + arange(lens[k])`` for every k (vectorised)."""
    offs = np.cumsum(lens) - lens
    return np.repeat(base - offs, lens) + np.arange(int(lens.sum()))


def unit_values(
    bases: np.ndarray, inst_ccy: np.ndarray, close: np.ndarray, last: np.ndarray, usd2d: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """(value, is_stale): one unit of each instrument valued in each of ``bases`` (currency
    codes) on each day, ``(bases * instruments, days)``: the close in force times base per
    local at the close's date; 0 (not NaN) before the instrument's first close, where a holding
    is valued otherwise. ``is_stale`` (instruments, days): the close in force is older than
    the day."""
    n_i, n_days = close.shape
    has_price = last >= 0
    fx_day = np.maximum(last, 0)
    local = usd2d[inst_ccy[:, None], fx_day]
    table = np.empty((bases.size, n_i, n_days))
    for k, b in enumerate(bases.tolist()):
        rate = np.where((inst_ccy == b)[:, None], 1.0, local / usd2d[b][fx_day])
        table[k] = np.where(has_price, close * rate, 0.0)
    return table.reshape(-1, n_days), has_price & (last < np.arange(n_days)[None, :])


def _market_values(
    seg: dict[str, np.ndarray],
    n_ports: int,
    base_of_p: np.ndarray,
    inst_ccy: np.ndarray,
    close: np.ndarray,
    last: np.ndarray,
    usd2d: np.ndarray,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(long, short, stale) per flat (portfolio * n_days + day), summed over held segments.

    Priced cells read a precomputed ``(base ccy, instrument, day)`` table of close * fx (at the
    close's date) in the compiled loop (``transforms.valuation_kernel``); the days before an
    instrument's first close (valued at the last trade price, rare) take a slower exact path
    over the held segments, added first.
    """
    n_days = usd2d.shape[1]
    n_cells = n_ports * n_days
    long_mv, short_mv, stale = np.zeros(n_cells), np.zeros(n_cells), np.zeros(n_cells)
    if seg["q"].size == 0:
        return long_mv, short_mv, stale
    n_i = close.shape[0]
    p, i, start, end, q = seg["p"], seg["i"], seg["start"], seg["end"], seg["q"]
    fallback = seg["last_trade_price"]
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
    table, is_stale = unit_values(bases, inst_ccy, close, last, usd2d)
    add_holding_values(
        p, slot_of_p[p] * n_i + i, i, start, end, q, table, is_stale,
        long_mv.reshape(n_ports, n_days), short_mv.reshape(n_ports, n_days), stale.reshape(n_ports, n_days),
    )
    return long_mv, short_mv, stale


def _cash(
    led: pl.DataFrame,
    ts_day: np.ndarray,
    p: np.ndarray,
    ccy: np.ndarray,
    n_ccy: int,
    start_idx: np.ndarray,
    base_of_p: np.ndarray,
    usd2d: np.ndarray,
    cal: Calendar,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(cash, settled, net_flows) in base ccy per flat (portfolio * n_days + day).

    ``ts_day`` is each ledger row's ts date as a day number, ``p`` its portfolio index (-1: not
    valued), ``ccy`` its currency index (``n_ccy``: null, the NaN row of ``usd2d``). Sums run
    over the (portfolio, currency) pairs present, ordered by (portfolio, currency).
    """
    n_days = cal.n
    n_ports = start_idx.size
    n_cells = n_ports * n_days
    keep = p >= 0
    if not keep.any():
        return np.zeros(n_cells), np.zeros(n_cells), np.zeros(n_cells)
    led = led.filter(pl.Series(keep))
    p, ccy, ts_day = p[keep], ccy[keep], ts_day[keep]
    t_day = np.maximum(cal.index(ts_day), start_idx[p])
    settle = led["settle_date"].cast(pl.Date).to_physical().cast(pl.Int64).fill_null(pl.Series(ts_day))
    s_day = np.maximum(cal.index(settle.to_numpy()), t_day)
    amount = led["amount"].cast(pl.Float64).to_numpy()
    code = p * (n_ccy + 1) + ccy
    present = np.flatnonzero(np.bincount(code, minlength=n_ports * (n_ccy + 1)))
    pair_of_code = np.zeros(n_ports * (n_ccy + 1), dtype=np.int64)
    pair_of_code[present] = np.arange(present.size)
    pair, n_pairs = pair_of_code[code], present.size
    pair_p, pair_ccy = present // (n_ccy + 1), present % (n_ccy + 1)
    pair_base = base_of_p[pair_p]
    day = np.arange(n_days)
    rate = np.where((pair_ccy == pair_base)[:, None], 1.0, usd2d[pair_ccy] / usd2d[pair_base])

    def per_pair(when: np.ndarray, weights: np.ndarray) -> np.ndarray:
        valued = when < n_days
        flat = np.bincount(pair[valued] * n_days + when[valued], weights=weights[valued], minlength=n_pairs * n_days)
        return flat.reshape(n_pairs, n_days)

    def to_portfolio(values: np.ndarray) -> np.ndarray:
        cells = (pair_p[:, None] * n_days + day[None, :]).ravel()
        return np.bincount(cells, weights=(values * rate).ravel(), minlength=n_cells)

    cash = to_portfolio(np.cumsum(per_pair(t_day, amount), axis=1))
    settled = to_portfolio(np.cumsum(per_pair(s_day, amount), axis=1))
    external = led["is_external"].fill_null(False).to_numpy()
    flows = to_portfolio(per_pair(t_day, np.where(external, amount, 0.0)))
    return cash, settled, flows


@dataclass
class Holdings:
    """Every valued portfolio's holdings as constant segments, with what values them.

    ``ports`` (portfolio_id, base_currency, inception_date; sorted, valued portfolios only) and
    ``start_idx`` (first valued day of each); ``days``/``cal`` the business calendar;
    ``inst_ids`` the instruments traded (sorted) with ``inst_ccy`` (currency codes into
    ``currencies``; ``len(currencies)``: unknown) and their ``close``/``last`` rows of the
    ``PriceTable``; ``usd2d`` USD per unit of each currency per day (last row NaN);
    ``base_of_p`` each portfolio's base-currency code; ``seg`` the segments of ``_segments``;
    ``led``/``led_day``/``led_p`` the cash-ledger rows with their day numbers and portfolio codes.
    """

    ports: pl.DataFrame
    start_idx: np.ndarray
    days: pl.Series
    cal: Calendar
    inst_ids: pl.Series
    inst_ccy: np.ndarray
    currencies: pl.Series
    close: np.ndarray
    last: np.ndarray
    usd2d: np.ndarray
    base_of_p: np.ndarray
    seg: dict[str, np.ndarray]
    led: pl.DataFrame
    led_day: np.ndarray
    led_p: np.ndarray


def holdings(
    trades: AnyFrame,
    cash_ledger: AnyFrame,
    prices: Prices,
    fx_rates: FxRates,
    instruments: AnyFrame,
    portfolios: AnyFrame,
    *,
    trade_codes: RowCodes | None = None,
) -> Holdings | None:
    """The ``Holdings`` of the book (module rules; arguments as ``daily_valuations``); None
    when there are no business days or no valued portfolio."""
    table = price_table(prices)
    days, cal = table.days, table.calendar
    if cal is None:
        return None
    n_days = cal.n
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
    # every portfolio (first row per id), sorted: its position is its code
    ports = (
        portfolios.lazy()
        .select(
            "portfolio_id",
            pl.col("base_currency").fill_null(BASE_CURRENCY),
            pl.col("inception_date").cast(pl.Date),
        )
        .filter(pl.col("portfolio_id").is_not_null())
        .unique("portfolio_id", keep="first")
        .sort("portfolio_id")
        .collect()
    )
    if trade_codes is not None and trade_codes.portfolio.size != tr.height:
        trade_codes = None  # rows were filtered out: the codes no longer line up
    # trades and ledger entries come grouped by portfolio (and instrument): ids are coded per
    # run, or the trades' codes given are translated (only the few ids are looked up)
    if trade_codes is None:
        tr_p = run_codes(tr["portfolio_id"], ports["portfolio_id"])
    else:
        tr_p = np.append(codes(trade_codes.portfolio_ids, ports["portfolio_id"]), -1)[trade_codes.portfolio]
    led_p = run_codes(led["portfolio_id"], ports["portfolio_id"])
    # first activity: the earliest trade or ledger date per portfolio (none: not valued)
    no_activity = np.iinfo(np.int64).max
    first = np.full(ports.height, no_activity, dtype=np.int64)
    tr_day, led_day = day_numbers(tr["trade_ts"]), day_numbers(led["ts"])
    for port, day in ((tr_p, tr_day), (led_p, led_day)):
        known = port >= 0
        np.minimum.at(first, port[known], day[known])
    inception = ports["inception_date"].to_physical().cast(pl.Int64).fill_null(np.iinfo(np.int64).min).to_numpy()
    start_all = np.where(first == no_activity, n_days, cal.index(np.maximum(inception, first)))
    valued = np.flatnonzero(start_all < n_days)
    if valued.size == 0:
        return None
    new_code = np.full(ports.height + 1, -1, dtype=np.int64)  # slot -1 keeps -1 (unknown)
    new_code[valued] = np.arange(valued.size)
    tr_p, led_p = new_code[tr_p], new_code[led_p]
    ports, start_idx = ports[valued], start_all[valued]

    if trade_codes is None:
        inst_ids = tr["instrument_id"].filter(pl.Series(tr_p >= 0)).drop_nulls().unique().sort()
        tr_i = run_codes(tr["instrument_id"], inst_ids)
    else:  # the instruments traded in valued portfolios, renumbered among themselves
        n_given = trade_codes.instrument_ids.len()
        used = np.bincount(trade_codes.instrument[tr_p >= 0], minlength=n_given) > 0
        inst_ids = trade_codes.instrument_ids.filter(pl.Series(used))
        tr_i = np.where(used, np.cumsum(used) - 1, -1)[trade_codes.instrument]
    inst_ccy_names = (
        pl.DataFrame({"instrument_id": inst_ids})
        .join(
            instruments.lazy().select("instrument_id", "currency").collect().unique("instrument_id", keep="first"),
            on="instrument_id",
            how="left",
            maintain_order="left",
        )["currency"]
        .cast(pl.String)
    )
    currencies = pl.Series(
        sorted(
            set(inst_ccy_names.drop_nulls().unique())
            | set(led["currency"].cast(pl.String).drop_nulls().unique())
            | set(ports["base_currency"].cast(pl.String).unique())
        ),
        dtype=pl.String,
    )
    n_ccy = currencies.len()  # row n_ccy of the usd table is all NaN: a currency never seen
    fx = usd_table(fx_rates)
    usd2d = np.full((n_ccy + 1, n_days), np.nan)
    for k, code in enumerate(currencies.to_list()):
        usd2d[k] = fx.lookup(code, cal.numbers)
    inst_ccy = np.where((c := codes(inst_ccy_names, currencies)) < 0, n_ccy, c)
    base_of_p = codes(ports["base_currency"], currencies)

    close, last = table.rows(inst_ids)
    seg = _segments(tr, tr_day, tr_p, tr_i, start_idx, inst_ids.len(), cal)
    return Holdings(ports, start_idx, days, cal, inst_ids, inst_ccy, currencies, close, last, usd2d, base_of_p, seg, led, led_day, led_p)


def valued_days(start_idx: np.ndarray, n_days: int) -> tuple[np.ndarray, np.ndarray]:
    """(portfolio, day) indices of every valued cell: each portfolio ``p`` from its first
    valued day ``start_idx[p]`` to the last, portfolios in order."""
    counts = n_days - start_idx
    p_rows = np.repeat(np.arange(start_idx.size), counts)
    d_rows = start_idx[p_rows] + (np.arange(p_rows.size) - np.repeat(np.cumsum(counts) - counts, counts))
    return p_rows, d_rows


def valuation_cells(daily_valuations: pl.DataFrame, h: Holdings, columns: tuple[str, ...] = ("nav",)) -> dict[str, np.ndarray]:
    """``columns`` of ``daily_valuations`` as dense (portfolio, day) float arrays in the codes of
    ``h`` (shape ``(h.ports.height, h.cal.n)``): NaN where a cell has no row or a null value; rows
    of other portfolios or days are ignored. ``ValueError`` when a (portfolio_id, date) has more
    than one row (every use reads one value per cell)."""
    n_days = h.cal.n
    dv = daily_valuations.select("portfolio_id", "date", *columns).filter(pl.col("date").is_not_null())
    p = run_codes(dv["portfolio_id"], h.ports["portfolio_id"])
    number = day_numbers(dv["date"])
    day = h.cal.index(number)
    found = (p >= 0) & (day < n_days)
    found[found] = h.cal.numbers[day[found]] == number[found]
    cell = p[found] * n_days + day[found]
    if cell.size and np.bincount(cell).max() > 1:
        raise ValueError("daily_valuations has more than one row per (portfolio_id, date)")
    out = {}
    for c in columns:
        values = np.full(h.ports.height * n_days, np.nan)
        values[cell] = dv[c].cast(pl.Float64).fill_null(np.nan).to_numpy()[found]
        out[c] = values.reshape(h.ports.height, n_days)
    return out


def daily_valuations(
    trades: AnyFrame,
    cash_ledger: AnyFrame,
    prices: Prices,
    fx_rates: FxRates,
    instruments: AnyFrame,
    portfolios: AnyFrame,
    *,
    trade_codes: RowCodes | None = None,
) -> pl.DataFrame:
    """Daily NAV per portfolio and business day (``DAILY_VALUATIONS_SCHEMA``).

    See the module docstring for the rules. ``prices`` is a prices frame or the book's
    ``PriceTable``; ``fx_rates`` a frame or a ``UsdTable``. ``trade_codes``, when given, are
    the portfolio and instrument codes of the rows of ``trades`` (``Ledger.accepted_codes`` of
    the ledger that accepted them, a DataFrame): the id strings are then not looked up. Sorted
    by (portfolio_id, date).
    """
    h = holdings(trades, cash_ledger, prices, fx_rates, instruments, portfolios, trade_codes=trade_codes)
    if h is None:
        return _empty()
    ports, start_idx, days, cal, usd2d, base_of_p = h.ports, h.start_idx, h.days, h.cal, h.usd2d, h.base_of_p
    n_ports, n_days, n_ccy = ports.height, cal.n, h.currencies.len()
    long_mv, short_mv, stale = _market_values(h.seg, n_ports, base_of_p, h.inst_ccy, h.close, h.last, usd2d)
    led_ccy = codes(h.led["currency"], h.currencies)  # currencies alternate within a portfolio
    cash, settled, flows = _cash(
        h.led, h.led_day, h.led_p, np.where(led_ccy < 0, n_ccy, led_ccy), n_ccy, start_idx, base_of_p, usd2d, cal
    )

    p_rows, d_rows = valued_days(start_idx, n_days)
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
