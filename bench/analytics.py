"""Analytics benchmark: every analytics transform on a built book, beside a pandas peer.

Figures, measured in one process so that their ratios are meaningful on a noisy machine:

- ``stages``: seconds per analytics stage on the book's silver tables (built first, untimed):
  benchmark returns, daily returns and performance, exposures (daily and by dimension), firm
  exposures, cash and margin, drift, risk (covariance, VaR, contributions) with stress tests,
  and attribution (daily Brinson-Fachler over 252 days, linked by four methods, contribution);
  and their total;
- ``pandas_peer``: the since-inception performance statistics per portfolio computed the way a
  pandas user does with empyrical (one pandas Series per portfolio: cumulative and annual
  return, volatility, Sharpe, Sortino, maximum drawdown, Calmar, alpha and beta, information
  ratio), timed against ours (``transforms.performance.period_statistics``, one query over all
  portfolios) on the same returns, with the largest difference between the two.

Run: ``portfolio bench analytics [--standard]``. Results: ``bench/results/analytics.json``.
"""

from __future__ import annotations

import json
import platform
import time
from datetime import datetime
from pathlib import Path

import numpy as np
import polars as pl

from transforms.book import build_book
from transforms.conventions import PERIODS_PER_YEAR

RESULTS = Path(__file__).resolve().parent / "results" / "analytics.json"


def _say(message: str) -> None:
    print(message, flush=True)


def _timed(stages: dict[str, float], name: str, fn, *args, **kwargs):
    started = time.perf_counter()
    out = fn(*args, **kwargs)
    stages[name] = round(time.perf_counter() - started, 3)
    _say(f"    {name:<22} {stages[name]:8.3f} s")
    return out


def run_analytics(inputs, benchmarks: pl.DataFrame, targets: pl.DataFrame) -> tuple[dict[str, float], pl.DataFrame]:
    """Every analytics stage on ``inputs`` (``BookInputs``); returns (seconds per stage, daily returns)."""
    from transforms.attribution_inputs import attribution_report, benchmark_holding_days, portfolio_holding_days
    from transforms.cash import cash_balances
    from transforms.drift import drift, holdings_by_sleeve, targets_in_force
    from transforms.exposures import exposures, exposures_firm
    from transforms.margin import account_types, cash_balances_base, margin
    from transforms.market_returns import basket_returns, benchmark_holdings, instrument_returns
    from transforms.performance import performance, returns_daily
    from transforms.prices import PriceTable
    from transforms.risk_report import benchmark_weights, risk_holdings, risk_report, stress_report
    from transforms.stress import DEFAULT_SCENARIOS_YAML
    from transforms.valuations import holdings

    book = build_book(inputs)
    prices = PriceTable(inputs.prices)
    bases = sorted(set(inputs.portfolios["base_currency"].to_list()))
    stages: dict[str, float] = {}
    started = time.perf_counter()
    bench_holdings = _timed(stages, "benchmark_holdings", benchmark_holdings, benchmarks, prices, inputs.fx_rates, inputs.instruments, bases)
    bench_returns = _timed(stages, "benchmark_returns", basket_returns, bench_holdings)
    daily = _timed(stages, "returns_daily", returns_daily, book.daily_valuations)
    _timed(stages, "performance", performance, daily, inputs.portfolios, bench_returns)
    _timed(stages, "exposures", exposures, book.trades, book.cash_ledger, prices, inputs.fx_rates, inputs.instruments,
           inputs.portfolios, book.daily_valuations, bench_returns)
    _timed(stages, "exposures_firm", exposures_firm, book.positions, inputs.portfolios, inputs.instruments, inputs.fx_rates)

    def cash_and_margin():
        accounts = account_types(book.positions, inputs.portfolios)
        cash_balances_base(cash_balances(book.cash_ledger, book.as_of), book.positions, accounts)
        return margin(book.portfolio_state, accounts)

    _timed(stages, "cash_and_margin", cash_and_margin)
    as_of = book.as_of.date()

    def drift_stage():
        targets_now, issues = targets_in_force(targets, as_of)
        navs = book.positions.group_by("portfolio_id").agg(pl.col("market_value").sum().alias("nav"))
        return drift(holdings_by_sleeve(book.lots, book.positions, inputs.instruments), navs, targets_now, inputs.instruments,
                     as_of, target_issues=issues)

    _timed(stages, "drift", drift_stage)
    returns = _timed(stages, "instrument_returns", instrument_returns, prices, inputs.fx_rates, inputs.instruments, bases)
    held = risk_holdings(book.positions, inputs.instruments, inputs.portfolios)
    _timed(stages, "risk", risk_report, held, returns, benchmark_weights(benchmarks, inputs.portfolios, prices.last_day), inputs.instruments)
    _timed(stages, "stress_tests", stress_report, held, returns, DEFAULT_SCENARIOS_YAML)

    def attribution_stage():
        h = holdings(book.trades, book.cash_ledger, prices, inputs.fx_rates, inputs.instruments, inputs.portfolios)
        first = max(h.cal.n - 252, 1)
        mine = portfolio_holding_days(h, book.daily_valuations, inputs.instruments, first)
        theirs = benchmark_holding_days(bench_holdings, inputs.portfolios, inputs.instruments, h.days[first])
        return attribution_report(mine, theirs, prices.last_day)

    _timed(stages, "attribution", attribution_stage)
    stages["total"] = round(time.perf_counter() - started, 3)
    return stages, daily.join(
        inputs.portfolios.select("portfolio_id", "benchmark_id"), on="portfolio_id", how="left"
    ).join(bench_returns.select("benchmark_id", "base_currency", "date", pl.col("daily_return").alias("benchmark_return")),
           on=["benchmark_id", "base_currency", "date"], how="left")


def pandas_peer(daily: pl.DataFrame) -> dict[str, object]:
    """Since-inception statistics per portfolio with empyrical on pandas Series, against ours."""
    import empyrical

    from transforms.performance import period_statistics

    rows = daily.filter(pl.col("daily_return").is_not_null() & pl.col("benchmark_return").is_not_null())
    started = time.perf_counter()
    ours = period_statistics(rows, ["portfolio_id"])
    ours_s = time.perf_counter() - started
    frame = rows.select("portfolio_id", "date", "daily_return", "benchmark_return").to_pandas()
    started = time.perf_counter()
    theirs = {}
    for pid, part in frame.groupby("portfolio_id", sort=True):
        r = part.set_index("date")["daily_return"]
        b = part.set_index("date")["benchmark_return"]
        alpha, beta = empyrical.alpha_beta(r, b)
        theirs[pid] = {
            "cumulative_return": empyrical.cum_returns_final(r), "annualised_return": empyrical.annual_return(r),
            "volatility": empyrical.annual_volatility(r), "sharpe": empyrical.sharpe_ratio(r),
            "sortino": empyrical.sortino_ratio(r), "max_drawdown": empyrical.max_drawdown(r), "calmar": empyrical.calmar_ratio(r),
            "alpha": alpha, "beta": beta,
            "information_ratio": empyrical.excess_sharpe(r, b) * np.sqrt(PERIODS_PER_YEAR),
        }
    pandas_s = time.perf_counter() - started
    worst = 0.0
    for row in ours.iter_rows(named=True):
        for key, value in theirs[row["portfolio_id"]].items():
            if row[key] is not None and np.isfinite(value):
                worst = max(worst, abs(row[key] - value) / max(1.0, abs(value)))
    return {
        "portfolios": ours.height, "days": rows.height, "ours_s": round(ours_s, 4), "pandas_empyrical_s": round(pandas_s, 4),
        "ratio": round(pandas_s / ours_s, 1) if ours_s else None, "largest_relative_difference": worst,
    }


def main(data_dir: Path | None = None, standard: bool = False, output: str | None = None, seed: int = 7) -> int:
    from transforms.sample_book import generate_book

    from bench.foundation import book_inputs_from

    results: dict[str, object] = {"when": datetime.now().isoformat(timespec="seconds"), "machine": platform.platform(), "books": {}}
    for scale in ("demo", "standard") if standard else ("demo",):
        _say(f"{scale} book: generating …")
        book = generate_book(scale, seed, include_bad_rows=False)
        inputs = book_inputs_from(book)
        benchmarks = pl.concat([f for _, f in book["benchmarks"]])
        targets = pl.concat([f for _, f in book["targets"]])
        _say(f"  {inputs.trades.height:,} trades, {inputs.portfolios.height:,} portfolios; analytics:")
        stages, daily = run_analytics(inputs, benchmarks, targets)
        peer = pandas_peer(daily)
        _say(f"  all analytics {stages['total']:.2f} s; performance statistics: ours {peer['ours_s']:.3f} s, "
             f"pandas + empyrical {peer['pandas_empyrical_s']:.3f} s ({peer['ratio']}x), largest difference {peer['largest_relative_difference']:.1e}")
        results["books"][scale] = {"trades": inputs.trades.height, "portfolios": inputs.portfolios.height, "stages": stages, "pandas_peer": peer}
    path = Path(output) if output else RESULTS
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(results, indent=2))
    _say(f"results: {path}")
    return 0
