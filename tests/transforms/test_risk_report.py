"""The risk report's inputs from positions (transforms.risk_report), and the report itself on
the generated tiny book: ex-ante volatility equals the volatility of today's weights applied to
the same covariance, computed independently."""

from datetime import date

import numpy as np
import polars as pl
import pytest

from transforms.book import BookInputs, build_book
from transforms.covariance import ledoit_wolf, return_matrix
from transforms.market_returns import instrument_returns
from transforms.risk_report import UNCLASSIFIED, benchmark_weights, risk_holdings, risk_report, stress_report
from transforms.sample_book import generate_book
from transforms.stress import DEFAULT_SCENARIOS_YAML


def test_holdings_from_positions():
    positions = pl.DataFrame({
        "portfolio_id": ["P", "P", "P", "P"], "instrument_id": ["A", "A", "X", "CASH:USD"],
        "position_type": ["LONG", "SHORT", "LONG", "CASH"], "currency": ["USD", "USD", "EUR", "USD"],
        "market_value": [300.0, -100.0, 50.0, 250.0],
    })
    instruments = pl.DataFrame({"instrument_id": ["A", "X"], "sector": ["Energy", None], "asset_class": ["EQUITY", "EQUITY"], "currency": ["USD", "EUR"]})
    portfolios = pl.DataFrame({"portfolio_id": ["P"], "base_currency": ["USD"]})
    out = risk_holdings(positions, instruments, portfolios)
    rows = {r["instrument_id"]: r for r in out.iter_rows(named=True)}
    assert rows["A"]["market_value"] == 200.0 and rows["A"]["weight"] == pytest.approx(0.4)  # long and short net
    assert rows["X"]["sector"] == UNCLASSIFIED  # risky without a sector, not cash
    assert rows["CASH:USD"]["sector"] is None and rows["CASH:USD"]["asset_class"] == "CASH"
    assert set(out["nav"]) == {500.0}


def test_benchmark_weights_in_force():
    bm = pl.DataFrame({"benchmark_id": ["B", "B", "B"], "instrument_id": ["A", "A", "C"], "weight": [1.0, 0.5, 0.5],
                       "effective_date": [date(2026, 1, 1), date(2026, 6, 1), date(2026, 6, 1)]})
    ports = pl.DataFrame({"portfolio_id": ["P", "Q"], "benchmark_id": ["B", None]}, schema_overrides={"benchmark_id": pl.String})
    assert benchmark_weights(bm, ports, date(2026, 3, 1)).rows() == [("P", "A", 1.0)]
    assert sorted(benchmark_weights(bm, ports, date(2026, 7, 1)).rows()) == [("P", "A", 0.5), ("P", "C", 0.5)]


def test_report_on_the_tiny_book():
    book = generate_book("tiny", 11)
    frame = {k: pl.concat([f for _, f in parts], how="diagonal_relaxed") for k, parts in book.items()}
    inputs = BookInputs(*(frame[k] for k in ("trades", "portfolios", "instruments", "prices", "fx_rates", "cash_flows")))
    state = build_book(inputs)
    returns = instrument_returns(inputs.prices, inputs.fx_rates, inputs.instruments, ["USD", "EUR"])
    holdings = risk_holdings(state.positions, inputs.instruments, inputs.portfolios)
    last = inputs.prices["date"].max()
    report = risk_report(holdings, returns, benchmark_weights(frame["benchmarks"], inputs.portfolios, last), inputs.instruments)
    assert report["risk"].height == holdings["portfolio_id"].n_unique()
    # independent: Ledoit-Wolf on the same matrix, today's weights of the covered instruments
    usd = holdings.filter(pl.col("base_currency") == "USD")
    pid = usd.filter(pl.col("sector").is_not_null())["portfolio_id"][0]
    matrix = return_matrix(returns.filter(pl.col("base_currency") == "USD").select("instrument_id", "date", "daily_return"),
                           column="daily_return")
    cov, _ = ledoit_wolf(matrix.values)
    mine = usd.filter(pl.col("portfolio_id") == pid)
    w = np.zeros(len(matrix.ids))
    for i, weight in mine.select("instrument_id", "weight").iter_rows():
        if i in matrix.ids:
            w[list(matrix.ids).index(i)] += weight
    expected = float(np.sqrt(w @ cov @ w))
    assert report["risk"].filter(pl.col("portfolio_id") == pid)["volatility"].item() == pytest.approx(expected, rel=1e-10)
    stress = stress_report(holdings, returns, DEFAULT_SCENARIOS_YAML)
    assert set(stress["kind"]) == {"named", "historical"}
    assert stress.select(pl.col("pnl").is_nan().any()).item() is False
