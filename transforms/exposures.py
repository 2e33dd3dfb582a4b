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
- beta_adjusted_net = sum(v * beta_i) / nav, where beta_i is the instrument's beta to the
  portfolio's benchmark, in the base currency: cov(r_i, r_b) / var(r_b) over the last
  ``BETA_WINDOW`` business days of the calendar where both returns are known (at least
  ``BETA_MIN_DAYS`` of them; else unknown). The betas are estimated once, to the last day, and
  applied to every day's holdings: earlier days use betas estimated with later returns.
  Positions without a beta are counted in ``positions_without_beta`` and left out of the sum;
  a portfolio without a benchmark has no beta-adjusted exposure.

By dimension (``exposure_breakdown``): the same long / short / gross / net per sector, asset
class, currency (the instrument's) and country, with their weights of nav; an instrument
without a value for a dimension counts under ``UNKNOWN``. Only buckets held that day appear.

Firm-wide (``exposures_firm``): the current positions of every portfolio converted to
``FIRM_CURRENCY`` at the positions' date and summed by instrument and by sector: long, short,
gross, net, the number of portfolios holding, and the share of the firm's gross.
"""

from __future__ import annotations

import numpy as np
import polars as pl

from transforms.contract import EXPOSURE_BREAKDOWN_SCHEMA, EXPOSURES_FIRM_SCHEMA, EXPOSURES_SCHEMA
from transforms.exposure_kernel import add_exposures
from transforms.fx import FxRates, usd_table
from transforms.prices import Prices, codes
from transforms.valuations import Holdings, holdings, unit_values, valued_days

AnyFrame = pl.DataFrame | pl.LazyFrame

DIMENSIONS = ("sector", "asset_class", "currency", "country")
UNKNOWN = "UNKNOWN"
TOP_N = 10
BETA_WINDOW = 252
BETA_MIN_DAYS = 60
FIRM_CURRENCY = "USD"


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


def _betas(h: Holdings, table: np.ndarray, slot_of_p: np.ndarray, benchmark_ids: pl.Series, benchmark_returns: pl.DataFrame,
           window: int, min_days: int) -> np.ndarray:
    """(portfolios, instruments) betas to each portfolio's benchmark in its base currency."""
    n_ports, n_i, n_days = h.ports.height, h.inst_ids.len(), h.cal.n
    out = np.full((n_ports, n_i), np.nan)
    lo = max(n_days - window, 1)
    values = table.reshape(-1, n_i, n_days)
    bench = benchmark_returns.select("benchmark_id", "base_currency", "date", "daily_return")
    keys = pl.DataFrame({"benchmark_id": benchmark_ids, "base_currency": h.ports["base_currency"], "p": np.arange(n_ports)})
    for (bid, base), group in keys.filter(pl.col("benchmark_id").is_not_null()).group_by(
        ["benchmark_id", "base_currency"], maintain_order=True
    ):
        series = (
            pl.DataFrame({"date": h.days})
            .join(bench.filter((pl.col("benchmark_id") == bid) & (pl.col("base_currency") == base)), on="date", how="left", maintain_order="left")
            .get_column("daily_return")
            .fill_null(np.nan)
            .to_numpy()
        )
        slot = slot_of_p[group["p"][0]]
        v = values[slot][:, lo - 1 :]
        with np.errstate(invalid="ignore", divide="ignore"):
            r = v[:, 1:] / v[:, :-1] - 1.0  # 0 before the first close: inf or NaN, unknown
        r[~np.isfinite(r) | (v[:, :-1] == 0)] = np.nan
        out[group["p"].to_numpy()] = instrument_betas(r, series[lo:], min_days)
    return out


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
    function's output (for the nav) and ``transforms.market_returns.benchmark_returns`` (for
    the betas, over ``beta_window`` days with at least ``beta_min_days``). Sorted by (portfolio_id, date[, dimension, bucket]).
    """
    h = holdings(trades, cash_ledger, prices, fx_rates, instruments, portfolios)
    if h is None:
        return _empty()
    seg, n_ports, n_i, n_days = h.seg, h.ports.height, h.inst_ids.len(), h.cal.n
    attrs = (
        pl.DataFrame({"instrument_id": h.inst_ids})
        .join(instruments.lazy().select("instrument_id", *DIMENSIONS).collect().unique("instrument_id", keep="first"),
              on="instrument_id", how="left", maintain_order="left")
        .with_columns([pl.col(d).cast(pl.String).fill_null(UNKNOWN) for d in DIMENSIONS])
    )
    bucket = np.empty((len(DIMENSIONS), n_i), dtype=np.int64)
    labels_dim: list[str] = []
    labels: list[str] = []
    for k, dim in enumerate(DIMENSIONS):
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
    betas = _betas(h, table, slot_of_p, benchmark_ids, benchmark_returns, beta_window, beta_min_days)

    p, i = seg["p"], seg["i"]
    long_b, short_b = np.zeros((n_ports, n_b, n_days)), np.zeros((n_ports, n_b, n_days))
    beta_net, no_beta, sum_sq = np.zeros((n_ports, n_days)), np.zeros((n_ports, n_days)), np.zeros((n_ports, n_days))
    top = np.zeros((n_ports, n_days, TOP_N))
    add_exposures(
        p, slot_of_p[p] * n_i + i, i, seg["start"], seg["end"], seg["q"], seg["last_trade_price"],
        h.inst_ccy[i] * n_c + h.base_of_p[p], betas[p, i], first_priced, table, fx, bucket,
        long_b, short_b, beta_net, no_beta, sum_sq, top,
    )

    # one row per valued (portfolio, day)
    p_rows, d_rows = valued_days(h.start_idx, n_days)
    first_dim = slice(0, int((np.array(labels_dim) == DIMENSIONS[0]).sum()))  # one dimension covers every position
    long_t = long_b[:, first_dim, :].sum(axis=1)[p_rows, d_rows]
    short_t = short_b[:, first_dim, :].sum(axis=1)[p_rows, d_rows]
    gross = long_t - short_t
    totals = pl.DataFrame(
        {
            "portfolio_id": h.ports["portfolio_id"].gather(p_rows),
            "date": h.days.gather(d_rows),
            "base_currency": h.ports["base_currency"].gather(p_rows),
            "benchmark_id": benchmark_ids.gather(p_rows),
            "long_exposure": long_t,
            "short_exposure": short_t,
            "gross_exposure": gross,
            "net_exposure": long_t + short_t,
            "_top": top[p_rows, d_rows].sum(axis=1),
            "_sum_sq": sum_sq[p_rows, d_rows],
            "_beta_net": beta_net[p_rows, d_rows],
            "positions_without_beta": np.rint(no_beta[p_rows, d_rows]).astype(np.int64),
        },
        nan_to_null=True,
    )
    nav = pl.col("nav")
    positive_nav = pl.when(nav > 0).then(nav)
    positive_gross = pl.when(pl.col("gross_exposure") > 0).then(pl.col("gross_exposure"))
    out = (
        totals.join(daily_valuations.select("portfolio_id", "date", "nav"), on=["portfolio_id", "date"], how="left")
        .with_columns(
            (pl.col("gross_exposure") / positive_nav).alias("leverage"),
            (pl.col("net_exposure") / positive_nav).alias("net_leverage"),
            (pl.col("_top") / positive_gross).alias("top10_weight"),
            (pl.col("_sum_sq") / positive_gross.pow(2)).alias("herfindahl"),
            pl.when(pl.col("benchmark_id").is_not_null()).then(pl.col("_beta_net") / positive_nav).alias("beta_adjusted_net"),
        )
        .select([pl.col(c).cast(t) for c, t in EXPOSURES_SCHEMA.items()])
        .sort("portfolio_id", "date")
    )

    # breakdown: the (portfolio, bucket, day) cells held, days from each portfolio's first
    valued = np.arange(n_days)[None, None, :] >= h.start_idx[:, None, None]
    cp, cb, cd = np.nonzero(((long_b != 0) | (short_b != 0)) & valued)
    lb, sb = long_b[cp, cb, cd], short_b[cp, cb, cd]
    breakdown = (
        pl.DataFrame(
            {
                "portfolio_id": h.ports["portfolio_id"].gather(cp),
                "date": h.days.gather(cd),
                "dimension": pl.Series(labels_dim, dtype=pl.String).gather(cb),
                "bucket": pl.Series(labels, dtype=pl.String).gather(cb),
                "long_exposure": lb,
                "short_exposure": sb,
                "gross_exposure": lb - sb,
                "net_exposure": lb + sb,
            },
            nan_to_null=True,
        )
        .join(daily_valuations.select("portfolio_id", "date", "nav"), on=["portfolio_id", "date"], how="left")
        .with_columns(
            (pl.col("gross_exposure") / positive_nav).alias("gross_weight"),
            (pl.col("net_exposure") / positive_nav).alias("net_weight"),
        )
        .select([pl.col(c).cast(t) for c, t in EXPOSURE_BREAKDOWN_SCHEMA.items()])
        .sort("portfolio_id", "date", "dimension", "bucket")
    )
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
