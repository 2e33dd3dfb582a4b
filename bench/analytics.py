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

How: as in the pipeline, the analytics read the book's silver tables after the state is built,
not the build's working memory. The parent process builds the book (untimed) and writes the
tables the analytics read to a temporary folder; a child process with the pipeline's memory
policy (``orchestration.memory``) reads them and runs the stages, recording its resident size
after each stage (``rss_gib``) and at its peak (``peak_rss_gib``).

Run: ``portfolio bench analytics [--standard]``. Results: ``bench/results/analytics.json``.
"""

from __future__ import annotations

import json
import platform
import resource
import subprocess
import sys
import tempfile
import time
from datetime import datetime
from pathlib import Path

import numpy as np
import polars as pl

from transforms.book import BookInputs, build_book
from transforms.conventions import PERIODS_PER_YEAR

RESULTS = Path(__file__).resolve().parent / "results" / "analytics.json"


def _say(message: str) -> None:
    print(message, flush=True)


def _rss_gib() -> float:
    """This process's resident size now (Linux; 0 elsewhere)."""
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * resource.getpagesize() / 2**30
    except OSError:
        return 0.0


# the silver tables (``Book`` fields) the analytics read
SILVER_TABLES = ("trades", "lots", "cash_ledger", "positions", "daily_valuations", "portfolio_state")
INPUT_TABLES = ("portfolios", "instruments", "prices", "fx_rates", "cash_flows")


def save_book(inputs: BookInputs, benchmarks: pl.DataFrame, targets: pl.DataFrame, folder: Path) -> None:
    """Build the book of ``inputs`` and write what the analytics read to ``folder`` (Parquet):
    its silver tables, the inputs, benchmarks, targets and the book's moment."""
    book = build_book(inputs)
    for name in SILVER_TABLES:
        getattr(book, name).write_parquet(folder / f"{name}.parquet")
    for name in INPUT_TABLES:
        getattr(inputs, name).write_parquet(folder / f"{name}.parquet")
    benchmarks.write_parquet(folder / "benchmarks.parquet")
    targets.write_parquet(folder / "targets.parquet")
    (folder / "as_of.txt").write_text(book.as_of.isoformat())


def _inputs(folder: Path) -> BookInputs:
    """The book's inputs as saved in ``folder`` (its trades, and ``INPUT_TABLES``)."""
    return BookInputs(**{name: pl.read_parquet(folder / f"{name}.parquet") for name in ("trades", *INPUT_TABLES)})


def load_book(folder: Path):
    """(inputs, book, benchmarks, targets) as ``save_book`` wrote them; the book has the silver
    tables the analytics read."""
    from types import SimpleNamespace

    read = lambda name: pl.read_parquet(folder / f"{name}.parquet")  # noqa: E731
    inputs = _inputs(folder)
    book = SimpleNamespace(as_of=datetime.fromisoformat((folder / "as_of.txt").read_text()),
                           **{name: read(name) for name in SILVER_TABLES})
    return inputs, book, read("benchmarks"), read("targets")


def run_analytics(inputs, book, benchmarks: pl.DataFrame, targets: pl.DataFrame,
                  ) -> tuple[dict[str, float], dict[str, float], pl.DataFrame]:
    """Every analytics stage on a built ``book`` of ``inputs``; returns (seconds per stage,
    resident GiB after each stage, daily returns with their benchmark's)."""
    from transforms.attribution_inputs import attribution_report, benchmark_sector_sums, portfolio_days
    from transforms.cash import cash_balances
    from transforms.drift import closed_portfolios, drift, holdings_by_sleeve, targets_in_force
    from transforms.exposures import exposures, exposures_firm
    from transforms.margin import account_types, cash_balances_base, margin
    from transforms.market_returns import basket_returns, benchmark_holdings, instrument_returns
    from transforms.performance import performance, returns_daily
    from transforms.prices import PriceTable
    from transforms.risk_report import benchmark_weights, risk_holdings, risk_report, stress_report
    from transforms.stress import DEFAULT_SCENARIOS_YAML
    from transforms.valuations import holdings

    prices = PriceTable(inputs.prices)
    bases = sorted(set(inputs.portfolios["base_currency"].to_list()))
    stages: dict[str, float] = {}
    rss: dict[str, float] = {}

    def timed(name: str, fn, *args):
        started = time.perf_counter()
        out = fn(*args)
        stages[name], rss[name] = round(time.perf_counter() - started, 3), round(_rss_gib(), 2)
        _say(f"    {name:<22} {stages[name]:8.3f} s   rss {rss[name]:6.2f} GiB")
        return out

    started = time.perf_counter()
    bench_holdings = timed("benchmark_holdings", benchmark_holdings, benchmarks, prices, inputs.fx_rates, inputs.instruments, bases)
    bench_returns = timed("benchmark_returns", basket_returns, bench_holdings)
    daily = timed("returns_daily", returns_daily, book.daily_valuations)
    timed("performance", performance, daily, inputs.portfolios, bench_returns)
    timed("exposures", exposures, book.trades, book.cash_ledger, prices, inputs.fx_rates, inputs.instruments,
           inputs.portfolios, book.daily_valuations, bench_returns)
    timed("exposures_firm", exposures_firm, book.positions, inputs.portfolios, inputs.instruments, inputs.fx_rates)

    def cash_and_margin():
        accounts = account_types(book.positions, inputs.portfolios)
        cash_balances_base(cash_balances(book.cash_ledger, book.as_of), book.positions, accounts)
        return margin(book.portfolio_state, accounts)

    timed("cash_and_margin", cash_and_margin)
    as_of = book.as_of.date()

    def drift_stage():
        targets_now, issues = targets_in_force(targets, as_of)
        navs = book.positions.group_by("portfolio_id").agg(pl.col("market_value").sum().alias("nav"))
        return drift(holdings_by_sleeve(book.lots, book.positions, inputs.instruments), navs, targets_now, inputs.instruments,
                     as_of, target_issues=issues, skipped=closed_portfolios(inputs.portfolios))

    timed("drift", drift_stage)
    returns = timed("instrument_returns", instrument_returns, prices, inputs.fx_rates, inputs.instruments, bases)
    held = risk_holdings(book.positions, inputs.instruments, inputs.portfolios)
    timed("risk", risk_report, held, returns, benchmark_weights(benchmarks, inputs.portfolios, prices.last_day), inputs.instruments)
    timed("stress_tests", stress_report, held, returns, DEFAULT_SCENARIOS_YAML)

    def attribution_stage():
        h = holdings(book.trades, book.cash_ledger, prices, inputs.fx_rates, inputs.instruments, inputs.portfolios)
        first = max(h.cal.n - 252, 1)
        mine = portfolio_days(h, book.daily_valuations, inputs.instruments, first)
        theirs = benchmark_sector_sums(bench_holdings, inputs.portfolios, inputs.instruments, h.days[first])
        return attribution_report(mine, theirs, prices.last_day)

    timed("attribution", attribution_stage)
    stages["total"] = round(time.perf_counter() - started, 3)
    return stages, rss, daily.join(
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


def _child(call: str, folder: Path) -> None:
    """Run ``bench.analytics.<call>(folder)`` in a fresh Python with the pipeline's memory policy."""
    code = f"import orchestration; from bench.analytics import {call}; {call}({str(folder)!r})"
    subprocess.run([sys.executable, "-c", code], check=True, cwd=Path(__file__).resolve().parent.parent)


def build_child(folder: str) -> None:
    """Child process: build the book of the inputs in ``folder`` and save what the analytics read."""
    read = lambda name: pl.read_parquet(Path(folder) / f"{name}.parquet")  # noqa: E731
    started = time.perf_counter()
    save_book(_inputs(Path(folder)), read("benchmarks"), read("targets"), Path(folder))
    _say(f"  book built and saved in {time.perf_counter() - started:.1f} s")


def analytics_child(folder: str) -> None:
    """Child process: every analytics stage and the pandas peer on the saved book in ``folder``;
    writes ``result.json`` there."""
    inputs, book, benchmarks, targets = load_book(Path(folder))
    _say(f"  {inputs.trades.height:,} accepted trades, {inputs.portfolios.height:,} portfolios "
         f"(rss {_rss_gib():.2f} GiB after reading); analytics:")
    stages, rss, daily = run_analytics(inputs, book, benchmarks, targets)
    peer = pandas_peer(daily)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # KiB on Linux
    _say(f"  all analytics {stages['total']:.2f} s (peak rss {peak:.2f} GiB); performance statistics: ours {peer['ours_s']:.3f} s, "
         f"pandas + empyrical {peer['pandas_empyrical_s']:.3f} s ({peer['ratio']}x), largest difference {peer['largest_relative_difference']:.1e}")
    result = {"trades": inputs.trades.height, "portfolios": inputs.portfolios.height, "stages": stages,
              "rss_gib": rss, "peak_rss_gib": round(peak, 2), "pandas_peer": peer}
    (Path(folder) / "result.json").write_text(json.dumps(result))


def main(data_dir: Path | None = None, standard: bool = False, output: str | None = None, seed: int = 7) -> int:
    from transforms.sample_book import generate_book

    from bench.foundation import book_inputs_from

    results: dict[str, object] = {"when": datetime.now().isoformat(timespec="seconds"), "machine": platform.platform(), "books": {}}
    for scale in ("demo", "standard") if standard else ("demo",):
        _say(f"{scale} book: generating …")
        with tempfile.TemporaryDirectory(prefix=f"bench-analytics-{scale}-") as tmp:
            folder = Path(tmp)
            book = generate_book(scale, seed, include_bad_rows=False)
            inputs = book_inputs_from(book)
            for name in ("trades", *INPUT_TABLES):
                getattr(inputs, name).write_parquet(folder / f"{name}.parquet")
            pl.concat([f for _, f in book["benchmarks"]]).write_parquet(folder / "benchmarks.parquet")
            pl.concat([f for _, f in book["targets"]]).write_parquet(folder / "targets.parquet")
            del book, inputs  # the children read the files; this process keeps nothing large
            _child("build_child", folder)
            _child("analytics_child", folder)
            results["books"][scale] = json.loads((folder / "result.json").read_text())
    path = Path(output) if output else RESULTS
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(results, indent=2))
    _say(f"results: {path}")
    return 0
