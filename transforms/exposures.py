"""Exposures: per portfolio and business day, and firm-wide across portfolios.

Daily, per portfolio (``exposures``), from the holdings of ``transforms.valuations.holdings``
valued exactly as daily valuations value them (so long and short exposures equal the
valuations' long and short market values), in the portfolio's base currency:

- long = sum of positive position values, short = sum of negative ones (<= 0), gross = long -
  short, net = long + short; leverage = gross / nav, net_leverage = net / nav (null when the
  nav is not positive);
- concentration: top10_weight = the ``TOP_N`` largest |value| summed / gross; herfindahl =
  sum((|v| / gross) ** 2) over positions (1 for one position; 1 / herfindahl is the effective
  number of positions); both on gross weights so a levered or short book stays in [0, 1];
- beta_adjusted_net(d) = sum(v * beta_i(d)) / nav, where beta_i(d) is the instrument's beta to
  the portfolio's benchmark on day d, in the base currency: cov(r_i, r_b) / var(r_b)
  (population moments: the OLS slope) over the ``BETA_WINDOW`` business days ending at d
  (the returns of days d - window + 1 .. d) where both returns are known, at least
  ``BETA_MIN_DAYS`` of them (else unknown). r_i is the day's change of one unit's value in
  the base currency (close times fx, as valued), unknown before the instrument's first close;
  r_b the benchmark's ``daily_return``. A day's figure reads no return after that day.
  Positions without a beta are counted in ``positions_without_beta`` and left out of the sum;
  a portfolio without a benchmark has no beta-adjusted exposure.

By dimension (``exposure_breakdown``): the same long / short / gross / net per sector, asset
class, currency (the instrument's) and country, with their weights of nav; an instrument
without a value for a dimension counts under ``UNKNOWN``. Only buckets held that day appear.

Implementation. A compiled loop (``transforms.exposure_kernel``) adds every held segment's daily
value to dense (portfolio, day, bucket) and (portfolio, day) accumulators; the betas are a
(benchmark, base currency, instrument) x day table of rolling estimates from running sums
(``rolling_betas``), for the instruments each benchmark's portfolios hold. Portfolios (sorted
ids), days and buckets (numbered in (dimension, bucket) order) are numbered in the outputs'
sort order, so both frames come out sorted without a sort, and the nav is read from a dense
(portfolio, day) array rather than joined.

Firm-wide (``exposures_firm``): the current positions of every portfolio converted to
``FIRM_CURRENCY`` at the positions' date and summed by instrument and by sector: long, short,
gross, net, the number of portfolios holding, and the share of the firm's gross.
"""

from __future__ import annotations

import struct

import numpy as np
import polars as pl
import pyarrow as pa

from transforms.contract import EXPOSURE_BREAKDOWN_SCHEMA, EXPOSURES_FIRM_SCHEMA, EXPOSURES_SCHEMA
from transforms.exposure_kernel import add_exposures
from transforms.fx import FxRates, usd_table
from transforms.prices import Prices, codes, day_numbers
from transforms.valuations import Holdings, holdings, unit_values, valuation_cells, valued_days

AnyFrame = pl.DataFrame | pl.LazyFrame

DIMENSIONS = ("sector", "asset_class", "currency", "country")
UNKNOWN = "UNKNOWN"
TOP_N = 10
BETA_WINDOW = 252
BETA_MIN_DAYS = 60
FIRM_CURRENCY = "USD"
VARIANCE_RTOL = 1e-10  # rolling_betas: a window variance this small against the running sums is rounding


def instrument_betas(returns: np.ndarray, benchmark: np.ndarray, min_days: int = BETA_MIN_DAYS) -> np.ndarray:
    """Beta of each row of ``returns`` (instruments x days, NaN where unknown) to ``benchmark``
    (days): ``cov(r, b) / var(r_b)`` (population moments, so the ratio is the OLS slope) over the
    days where both are known; NaN with fewer than ``min_days`` such days or no variance."""
    known = np.isfinite(returns) & np.isfinite(benchmark)[None, :]
    n = known.sum(axis=1)
    r = np.where(known, returns, 0.0)
    b = np.where(known, benchmark[None, :], 0.0)
    with np.errstate(invalid="ignore", divide="ignore"):
        mean_r, mean_b = r.sum(axis=1) / n, b.sum(axis=1) / n
        dr = np.where(known, r - mean_r[:, None], 0.0)
        db = np.where(known, b - mean_b[:, None], 0.0)
        beta = (dr * db).sum(axis=1) / (db * db).sum(axis=1)
    beta[(n < min_days) | ~np.isfinite(beta)] = np.nan
    return beta


def rolling_betas(
    returns: np.ndarray, benchmark: np.ndarray, window: int = BETA_WINDOW, min_days: int = BETA_MIN_DAYS
) -> np.ndarray:
    """Beta of each row of ``returns`` (instruments x days, NaN where unknown) to ``benchmark``
    (days) on every day ``d``, over the returns of days ``d - window + 1 .. d`` (from day 0
    while fewer have passed): ``instrument_betas`` of that window, (instruments, days), NaN with
    fewer than ``min_days`` days where both are known or no benchmark variance.

    Running sums: per row, cumulative sums over the days of the paired count, ``x``, ``y``,
    ``x * y`` and ``y * y``, and a window's sums are the difference of two of them;
    ``beta = (n Sxy - Sx Sy) / (n Syy - Sy^2)``. ``x`` and ``y`` are the returns less the row's
    first paired returns (a shift does not change the slope): returns far from zero would make
    ``n Syy`` and ``Sy^2`` large and close, their difference cancelling digits; after the shift
    the terms are of the order of the returns' spread. The shift is a day at or before every
    window that has a paired day, so a day's beta reads no later return, to the last bit. A
    window whose ``n Syy - Sy^2`` is within rounding of the running sums (``VARIANCE_RTOL`` of
    ``n`` times the running ``Syy``) has no variance.
    """
    n_rows, n_days = returns.shape
    known = np.isfinite(returns) & np.isfinite(benchmark)[None, :]
    first = known.argmax(axis=1)  # each row's first paired day (0 when none: nothing to shift)
    x = np.where(known, returns - returns[np.arange(n_rows), first][:, None], 0.0)
    y = np.where(known, benchmark[None, :] - benchmark[first][:, None], 0.0)
    lo = np.maximum(np.arange(1, n_days + 1) - window, 0)

    def window_sums(values: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(sum over each day's window, running sum through the day)."""
        running = np.zeros((n_rows, n_days + 1))
        np.cumsum(values, axis=1, out=running[:, 1:])
        return running[:, 1:] - running[:, lo], running[:, 1:]

    n = window_sums(known.astype(np.float64))[0]
    sx, sy = window_sums(x)[0], window_sums(y)[0]
    sxy = window_sums(x * y)[0]
    syy, syy_running = window_sums(y * y)
    with np.errstate(invalid="ignore", divide="ignore"):
        variance = n * syy - sy * sy
        beta = (n * sxy - sx * sy) / variance
    beta[(n < min_days) | (variance <= VARIANCE_RTOL * n * syy_running) | ~np.isfinite(beta)] = np.nan
    return beta


def _daily_betas(
    h: Holdings, table: np.ndarray, slot_of_p: np.ndarray, benchmark_ids: pl.Series, benchmark_returns: pl.DataFrame,
    window: int, min_days: int,
) -> tuple[np.ndarray, np.ndarray]:
    """(beta, beta_row): ``beta[row, d]`` the beta on day ``d`` (``rolling_betas``) of one held
    (benchmark, base currency, instrument), in the base currency; ``beta_row`` per segment of
    ``h.seg`` (-1: the portfolio has no benchmark). Only the instruments a benchmark's
    portfolios hold get a row."""
    n_ports, n_i, n_days = h.ports.height, h.inst_ids.len(), h.cal.n
    ports = pl.DataFrame({"benchmark_id": benchmark_ids.cast(pl.String), "base_currency": h.ports["base_currency"].cast(pl.String),
                          "p": np.arange(n_ports)})
    key_of_p = np.full(n_ports, -1, dtype=np.int64)
    keys = []
    for k, (key, group) in enumerate(
        ports.filter(pl.col("benchmark_id").is_not_null()).group_by(["benchmark_id", "base_currency"], maintain_order=True)
    ):
        key_of_p[group["p"].to_numpy()] = k
        keys.append((*key, k, int(slot_of_p[group["p"][0]])))
    n_keys = len(keys)
    seg_key = key_of_p[h.seg["p"]]
    with_key = seg_key >= 0
    code = seg_key[with_key] * n_i + h.seg["i"][with_key]  # (key, instrument) of each segment
    held = np.zeros(n_keys * n_i, dtype=bool)
    held[code] = True
    row_of_code = np.cumsum(held) - 1
    beta_row = np.full(seg_key.size, -1, dtype=np.int64)
    beta_row[with_key] = row_of_code[code]
    beta = np.full((int(held.sum()), n_days), np.nan)
    if not n_keys:
        return beta, beta_row

    # each key's benchmark return per business day (NaN: unknown)
    bench = (
        benchmark_returns.lazy()
        .select(pl.col("benchmark_id").cast(pl.String), pl.col("base_currency").cast(pl.String), pl.col("date").cast(pl.Date),
                pl.col("daily_return").cast(pl.Float64))
        .join(pl.LazyFrame(keys, schema=["benchmark_id", "base_currency", "key", "slot"], orient="row"),
              on=["benchmark_id", "base_currency"], how="inner")
        .filter(pl.col("date").is_not_null())
        .collect()
    )
    number = day_numbers(bench["date"])
    day = h.cal.index(number)
    on_day = day < n_days
    on_day[on_day] = h.cal.numbers[day[on_day]] == number[on_day]
    cell = bench["key"].to_numpy()[on_day] * n_days + day[on_day]
    if cell.size and np.bincount(cell).max() > 1:
        raise ValueError("benchmark_returns has more than one row per (benchmark_id, base_currency, date)")
    series = np.full(n_keys * n_days, np.nan)
    series[cell] = bench["daily_return"].fill_null(np.nan).to_numpy()[on_day]
    series = series.reshape(n_keys, n_days)

    for _, _, k, slot in keys:
        inst = np.flatnonzero(held[k * n_i : (k + 1) * n_i])
        if not inst.size:
            continue
        v = table[slot * n_i + inst]  # rows (base, instrument)
        r = np.full(v.shape, np.nan)
        with np.errstate(invalid="ignore", divide="ignore"):
            r[:, 1:] = v[:, 1:] / v[:, :-1] - 1.0  # 0 before the first close: inf or NaN, unknown
        r[:, 1:][~np.isfinite(r[:, 1:]) | (v[:, :-1] == 0)] = np.nan
        beta[row_of_code[k * n_i + inst]] = rolling_betas(r, series[k], window, min_days)
    return beta, beta_row


def _per_nav(values: np.ndarray, nav: np.ndarray) -> np.ndarray:
    """``values / nav`` where the nav is positive, else NaN (null in the output)."""
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(nav > 0, values / nav, np.nan)


def _labels_at(labels: list[str], index: np.ndarray) -> pl.Series:
    """``labels[index]`` as a String column (``index``: integers into ``labels``), the same
    column as ``pl.Series(labels).gather(index)``.

    Built as Arrow string views in numpy memory and handed to Polars without a copy: a view is
    16 bytes, the length (int32) then the string when it fits in 12 bytes, else its first 4
    bytes, buffer 0 and its offset in one buffer of the long labels. Polars' gather would write
    the same 16 bytes per row into fresh pages of its own allocator (412 MB per column of the
    standard book's breakdown), which the kernel must zero and map first; numpy's heap reuses
    the pages the breakdown's temporaries have just freed (``orchestration.memory``).
    """
    views, data = [], b""
    for label in labels:
        raw = label.encode()
        if len(raw) <= 12:
            views.append(struct.pack("<i12s", len(raw), raw))
        else:
            views.append(struct.pack("<i4sii", len(raw), raw[:4], 0, len(data)))
            data += raw
    table = np.frombuffer(b"".join(views), dtype="V16")
    column = pa.Array.from_buffers(
        pa.string_view(), index.size, [None, pa.py_buffer(table[index]), pa.py_buffer(data)]
    )
    return pl.Series(pl.from_arrow(column)).cast(pl.String)


def _empty() -> tuple[pl.DataFrame, pl.DataFrame]:
    return pl.DataFrame(schema=EXPOSURES_SCHEMA), pl.DataFrame(schema=EXPOSURE_BREAKDOWN_SCHEMA)


def exposures(
    trades: AnyFrame,
    cash_ledger: AnyFrame,
    prices: Prices,
    fx_rates: FxRates,
    instruments: AnyFrame,
    portfolios: AnyFrame,
    daily_valuations: pl.DataFrame,
    benchmark_returns: pl.DataFrame,
    *,
    beta_window: int = BETA_WINDOW,
    beta_min_days: int = BETA_MIN_DAYS,
) -> tuple[pl.DataFrame, pl.DataFrame]:
    """(``EXPOSURES_SCHEMA``, ``EXPOSURE_BREAKDOWN_SCHEMA``) frames; see the module docstring.

    Arguments as ``transforms.valuations.daily_valuations`` (accepted trades), plus that
    function's output (``DAILY_VALUATIONS_SCHEMA``: portfolio_id, date, nav; one row per
    portfolio and date, else ``ValueError``) and ``transforms.market_returns.benchmark_returns``
    (``BENCHMARK_RETURNS_SCHEMA``: benchmark_id, base_currency, date, daily_return; one row
    per key and date) for the betas, each day's over the ``beta_window`` days to it with at
    least ``beta_min_days``. Sorted by (portfolio_id, date[, dimension, bucket]).
    """
    h = holdings(trades, cash_ledger, prices, fx_rates, instruments, portfolios)
    if h is None:
        return _empty()
    seg, n_ports, n_i, n_days = h.seg, h.ports.height, h.inst_ids.len(), h.cal.n
    nav = valuation_cells(daily_valuations, h)["nav"].ravel()  # indexed by portfolio * days + day
    attrs = (
        pl.DataFrame({"instrument_id": h.inst_ids})
        .join(instruments.lazy().select("instrument_id", *DIMENSIONS).collect().unique("instrument_id", keep="first"),
              on="instrument_id", how="left", maintain_order="left")
        .with_columns([pl.col(d).cast(pl.String).fill_null(UNKNOWN) for d in DIMENSIONS])
    )
    # buckets numbered in (dimension, bucket) order, the breakdown's sort order
    bucket = np.empty((len(DIMENSIONS), n_i), dtype=np.int64)
    labels_dim: list[str] = []
    labels: list[str] = []
    for k, dim in enumerate(sorted(DIMENSIONS)):
        values = attrs[dim].unique().sort()
        bucket[k] = codes(attrs[dim], values) + len(labels)
        labels_dim += [dim] * values.len()
        labels += values.to_list()
    n_b = len(labels)

    bases, slot_of_p = np.unique(h.base_of_p, return_inverse=True)
    table, _ = unit_values(bases, h.inst_ccy, h.close, h.last, h.usd2d)
    n_c = h.usd2d.shape[0]
    with np.errstate(invalid="ignore", divide="ignore"):
        fx = (h.usd2d[:, None, :] / h.usd2d[None, :, :]).reshape(n_c * n_c, n_days)
    fx[np.arange(n_c) * (n_c + 1)] = 1.0
    has_price = h.last >= 0
    first_priced = np.where(has_price.any(axis=1), has_price.argmax(axis=1), n_days)
    benchmark_ids = (
        h.ports.select("portfolio_id")
        .join(portfolios.lazy().select("portfolio_id", "benchmark_id").collect().unique("portfolio_id", keep="first"),
              on="portfolio_id", how="left", maintain_order="left")
        .get_column("benchmark_id")
    )
    beta, beta_row = _daily_betas(h, table, slot_of_p, benchmark_ids, benchmark_returns, beta_window, beta_min_days)

    p, i = seg["p"], seg["i"]
    long_b, short_b = np.zeros((n_ports, n_days, n_b)), np.zeros((n_ports, n_days, n_b))
    beta_net, sum_sq = np.zeros((n_ports, n_days)), np.zeros((n_ports, n_days))
    no_beta = np.zeros((n_ports, n_days), dtype=np.int64)
    top, top_min = np.zeros((n_ports, n_days, TOP_N)), np.zeros((n_ports, n_days))
    add_exposures(
        p, slot_of_p[p] * n_i + i, i, seg["start"], seg["end"], seg["q"], seg["last_trade_price"],
        h.inst_ccy[i] * n_c + h.base_of_p[p], beta_row, first_priced, table, fx, beta, bucket,
        long_b, short_b, beta_net, no_beta, sum_sq, top, top_min, np.zeros((n_ports, n_days), dtype=np.int64),
    )
    # the holdings' segments and ledger rows (some 600 MB on the standard book) are done with:
    # the breakdown's columns reuse their memory
    ports, days, start_idx, day_number = h.ports, h.days, h.start_idx, h.cal.numbers
    del h, seg, p, i, table, beta, beta_row, top_min

    # one row per valued (portfolio, day), in (portfolio_id, date) order (ports are sorted)
    p_rows, d_rows = valued_days(start_idx, n_days)
    cell = p_rows * n_days + d_rows
    # one dimension covers every position; its buckets added in order, as a sum over them would
    sector = [k for k, dim in enumerate(labels_dim) if dim == DIMENSIONS[0]]
    long_t, short_t = np.zeros((n_ports, n_days)), np.zeros((n_ports, n_days))  # no instruments: no buckets
    if sector:
        long_t[:], short_t[:] = long_b[:, :, sector[0]], short_b[:, :, sector[0]]
    for k in sector[1:]:
        long_t += long_b[:, :, k]
        short_t += short_b[:, :, k]
    long_t, short_t = long_t.ravel()[cell], short_t.ravel()[cell]
    gross, net, nav_t = long_t - short_t, long_t + short_t, nav[cell]
    with np.errstate(invalid="ignore", divide="ignore"):
        positive_gross = np.where(gross > 0, gross, np.nan)
        top_weight = top.reshape(-1, TOP_N)[cell].sum(axis=1) / positive_gross
        herfindahl = sum_sq.ravel()[cell] / positive_gross**2
    del top, sum_sq
    has_benchmark = benchmark_ids.is_not_null().to_numpy()[p_rows]
    out = pl.DataFrame(
        {
            "portfolio_id": ports["portfolio_id"].gather(p_rows),
            "date": days.gather(d_rows),
            "base_currency": ports["base_currency"].gather(p_rows),
            "benchmark_id": benchmark_ids.gather(p_rows),
            "nav": nav_t,
            "long_exposure": long_t,
            "short_exposure": short_t,
            "gross_exposure": gross,
            "net_exposure": net,
            "leverage": _per_nav(gross, nav_t),
            "net_leverage": _per_nav(net, nav_t),
            "top10_weight": top_weight,
            "herfindahl": herfindahl,
            "beta_adjusted_net": np.where(has_benchmark, _per_nav(beta_net.ravel()[cell], nav_t), np.nan),
            "positions_without_beta": no_beta.ravel()[cell],
        },
        nan_to_null=True,
    ).select([pl.col(c).cast(t) for c, t in EXPOSURES_SCHEMA.items()])
    del beta_net, no_beta

    # breakdown: the (portfolio, day, bucket) cells held from each portfolio's first day, found in
    # output order: portfolios, days and buckets are numbered in sort order
    held = (long_b != 0) | (short_b != 0)
    held &= (np.arange(n_days)[None, :] >= start_idx[:, None])[:, :, None]
    at = np.flatnonzero(held)
    del held
    lb, sb = long_b.ravel()[at], short_b.ravel()[at]
    del long_b, short_b
    cell, b = np.divmod(at, n_b)
    del at
    gross, net, nav_c = lb - sb, lb + sb, nav[cell]
    gross_weight, net_weight = _per_nav(gross, nav_c), _per_nav(net, nav_c)
    del nav_c
    p_c, d_c = np.divmod(cell, n_days)
    del cell
    # every column is numpy memory handed to Polars without a copy (see _labels_at)
    breakdown = pl.DataFrame(
        {
            "portfolio_id": _labels_at(ports["portfolio_id"].to_list(), p_c),
            "date": pl.Series(day_number.astype(np.int32)[d_c]).cast(pl.Date),
            "dimension": _labels_at(labels_dim, b),
            "bucket": _labels_at(labels, b),
            "long_exposure": lb,
            "short_exposure": sb,
            "gross_exposure": gross,
            "net_exposure": net,
            "gross_weight": gross_weight,
            "net_weight": net_weight,
        },
        nan_to_null=True,
    ).select([pl.col(c).cast(t) for c, t in EXPOSURE_BREAKDOWN_SCHEMA.items()])
    return out, breakdown


def exposures_firm(positions: pl.DataFrame, portfolios: pl.DataFrame, instruments: pl.DataFrame, fx_rates: FxRates) -> pl.DataFrame:
    """``EXPOSURES_FIRM_SCHEMA``: the firm's exposure by instrument and by sector from the
    current ``positions`` (``POSITIONS_SCHEMA``, cash rows left out), each position converted
    from its portfolio's base currency to ``FIRM_CURRENCY`` at its price date (fx rules of
    ``transforms.fx``). A value that cannot be converted is left out of the sums and counted in
    ``unconverted_positions``. Sorted by (level, key)."""
    rows = (
        positions.filter(pl.col("position_type") != "CASH")
        .join(portfolios.select("portfolio_id", "base_currency").unique("portfolio_id", keep="first"), on="portfolio_id", how="left")
        .join(instruments.select("instrument_id", "sector").unique("instrument_id", keep="first"), on="instrument_id", how="left")
        .with_columns(pl.col("base_currency").fill_null(FIRM_CURRENCY), pl.col("sector").fill_null(UNKNOWN))
    )
    fx = usd_table(fx_rates)
    to_usd = fx.usd_per_unit(rows["price_date"], rows["base_currency"]) / fx.usd_per_unit(
        rows["price_date"], pl.Series([FIRM_CURRENCY] * rows.height, dtype=pl.String)
    )
    rows = rows.with_columns(pl.Series("value", rows["market_value"].to_numpy() * to_usd, nan_to_null=True))
    value = pl.col("value")
    parts = []
    for level, key in (("instrument", "instrument_id"), ("sector", "sector")):
        parts.append(
            rows.group_by(key)
            .agg(
                value.filter(value > 0).sum().alias("long_exposure"),
                value.filter(value < 0).sum().alias("short_exposure"),
                pl.col("portfolio_id").filter(value.is_not_null()).n_unique().cast(pl.Int64).alias("portfolios"),
                value.is_null().sum().cast(pl.Int64).alias("unconverted_positions"),
            )
            .select(pl.lit(level).alias("level"), pl.col(key).alias("key"), pl.exclude(key))
        )
    firm = pl.concat(parts).with_columns(
        pl.lit(FIRM_CURRENCY).alias("currency"),
        (pl.col("long_exposure") - pl.col("short_exposure")).alias("gross_exposure"),
        (pl.col("long_exposure") + pl.col("short_exposure")).alias("net_exposure"),
    )
    total = pl.col("gross_exposure").sum().over("level")
    firm = firm.with_columns((pl.col("gross_exposure") / pl.when(total > 0).then(total)).alias("share_of_gross"))
    return firm.select([pl.col(c).cast(t) for c, t in EXPOSURES_FIRM_SCHEMA.items()]).sort("level", "key")
