"""The book's risk report: today's holdings against the return history, per base currency.

``risk_holdings`` turns current positions (``POSITIONS_SCHEMA``) into the holdings that
``transforms.risk`` and ``transforms.stress`` read: weight and market value in the base
currency, sector, asset class, currency and nav; cash rows have a null sector (riskless) and an
instrument without a sector is ``UNCLASSIFIED`` (risky, not cash).

``risk_report`` then, for each base currency, builds the return matrix of the last
``RISK_WINDOW`` business days (``transforms.covariance.return_matrix``), estimates the daily
covariance by Ledoit-Wolf shrinkage (well conditioned when instruments outnumber days), fits
the sector factor model the rebalancing optimiser uses, and computes the ex-ante volatility
and tracking error to the benchmark in force (its effective weights), VaR and CVaR, and the
risk contributions; ``stress_report`` applies the named scenarios and replays the worst
historical days (the whole history) on today's holdings.
"""

from __future__ import annotations

from datetime import date

import numpy as np
import polars as pl

from transforms.contract import UNCLASSIFIED
from transforms.covariance import FactorModel, ledoit_wolf, return_matrix, sector_factor_model
from transforms.risk import RISK_CONTRIBUTIONS_SCHEMA, RISK_SCHEMA, VAR_SCHEMA, ex_ante_risk, risk_contributions, value_at_risk
from transforms.stress import STRESS_SCHEMA, apply_scenarios, historical_scenarios, parse_scenarios
from transforms.contract import RISK_MODEL_SCHEMA  # noqa: F401 (published schemas, defined in the contract)

RISK_WINDOW = 252


def risk_holdings(positions: pl.DataFrame, instruments: pl.DataFrame, portfolios: pl.DataFrame) -> pl.DataFrame:
    """Holdings for risk and stress: portfolio_id, base_currency, instrument_id, weight,
    market_value, sector (null: cash), asset_class, currency, nav (sum of the portfolio's market
    values, cash included). Rows of a portfolio with an unknown value keep a null nav."""
    cash = pl.col("position_type") == "CASH"
    return (
        positions.join(instruments.select("instrument_id", "sector", "asset_class", pl.col("currency").alias("_ccy")).unique("instrument_id", keep="first"),
                       on="instrument_id", how="left")
        .join(portfolios.select("portfolio_id", "base_currency").unique("portfolio_id", keep="first"), on="portfolio_id", how="left")
        .with_columns(
            pl.when(cash).then(None).otherwise(pl.col("sector").fill_null(UNCLASSIFIED)).alias("sector"),
            pl.when(cash).then(pl.lit("CASH")).otherwise(pl.col("asset_class")).alias("asset_class"),
            pl.coalesce("_ccy", "currency").alias("currency"),
            pl.col("base_currency").fill_null("USD"),
            pl.col("market_value").sum().over("portfolio_id").alias("nav"),
        )
        .group_by("portfolio_id", "base_currency", "instrument_id", "sector", "asset_class", "currency", maintain_order=True)
        .agg(pl.col("market_value").sum(), pl.col("nav").first())  # a LONG and a SHORT row of one instrument net
        .with_columns((pl.col("market_value") / pl.when(pl.col("nav") > 0).then(pl.col("nav"))).alias("weight"))
        .sort("portfolio_id", "instrument_id")
    )


def benchmark_weights(benchmarks: pl.DataFrame, portfolios: pl.DataFrame, as_of: date) -> pl.DataFrame:
    """(portfolio_id, instrument_id, weight): each portfolio's benchmark basket in force on
    ``as_of`` (the latest effective_date on or before it), at its effective weights."""
    in_force = benchmarks.filter(pl.col("effective_date") <= as_of)
    in_force = in_force.filter(pl.col("effective_date") == pl.col("effective_date").max().over("benchmark_id"))
    return (
        portfolios.select("portfolio_id", "benchmark_id")
        .join(in_force.select("benchmark_id", "instrument_id", "weight"), on="benchmark_id", how="inner")
        .select("portfolio_id", "instrument_id", "weight")
    )


def _model_rows(base: str, model: FactorModel) -> pl.DataFrame:
    ids, factors = list(model.instrument_ids), list(model.factor_names)
    n, k = len(ids), len(factors)
    parts = [
        pl.DataFrame({"matrix": "exposures", "row_id": np.repeat(ids, k), "column_id": np.tile(factors, n), "value": model.exposures.ravel()}),
        pl.DataFrame({"matrix": "factor_covariance", "row_id": np.repeat(factors, k), "column_id": np.tile(factors, k), "value": model.factor_covariance.ravel()}),
        pl.DataFrame({"matrix": "specific_variance", "row_id": ids, "column_id": pl.Series([None] * n, dtype=pl.String), "value": model.specific_variance}),
    ]
    rows = pl.concat([p.cast({"row_id": pl.String, "column_id": pl.String}) for p in parts])
    rows = rows.filter((rows["matrix"] != "exposures") | (rows["value"] != 0.0))  # exposures are one-hot by sector
    return rows.with_columns(pl.lit(base).alias("base_currency")).select(list(RISK_MODEL_SCHEMA)).cast(RISK_MODEL_SCHEMA)


def risk_report(
    holdings: pl.DataFrame, instrument_returns: pl.DataFrame, benchmark: pl.DataFrame, instruments: pl.DataFrame,
    window: int = RISK_WINDOW,
) -> dict[str, pl.DataFrame]:
    """``{"risk", "var", "contributions", "risk_model"}`` (``RISK_SCHEMA``, ``VAR_SCHEMA``,
    ``RISK_CONTRIBUTIONS_SCHEMA``, ``RISK_MODEL_SCHEMA``) for ``holdings`` (``risk_holdings``)
    from ``instrument_returns`` (``transforms.market_returns.instrument_returns``) over the
    last ``window`` business days, per base currency (module docstring)."""
    out: dict[str, list[pl.DataFrame]] = {"risk": [], "var": [], "contributions": [], "risk_model": []}
    sectors = instruments.select("instrument_id", pl.col("sector").fill_null(UNCLASSIFIED)).unique("instrument_id", keep="first")
    for base in holdings["base_currency"].unique().sort().to_list():
        held = holdings.filter(pl.col("base_currency") == base)
        returns = instrument_returns.filter(pl.col("base_currency") == base)
        days = returns["date"].unique().sort().tail(window)
        returns = returns.filter(pl.col("date").is_in(days.implode()))
        matrix = return_matrix(returns.select("instrument_id", "date", "daily_return"), column="daily_return")
        if len(matrix.ids) == 0:
            continue
        covariance, _ = ledoit_wolf(matrix.values)
        ids = list(matrix.ids)
        sector_of = dict(sectors.filter(pl.col("instrument_id").is_in(pl.Series(ids).implode())).iter_rows())
        model = sector_factor_model(matrix, [sector_of.get(i, UNCLASSIFIED) for i in ids])
        out["risk"].append(ex_ante_risk(held, ids, covariance, benchmark.filter(pl.col("portfolio_id").is_in(held["portfolio_id"].implode()))))
        out["var"].append(value_at_risk(held, matrix, covariance))
        out["contributions"].append(risk_contributions(held, ids, covariance))
        out["risk_model"].append(_model_rows(base, model))
    schemas = {"risk": RISK_SCHEMA, "var": VAR_SCHEMA, "contributions": RISK_CONTRIBUTIONS_SCHEMA, "risk_model": RISK_MODEL_SCHEMA}
    return {k: pl.concat(v) if v else pl.DataFrame(schema=schemas[k]) for k, v in out.items()}


def stress_report(holdings: pl.DataFrame, instrument_returns: pl.DataFrame, scenarios_yaml: str, worst: int = 5) -> pl.DataFrame:
    """``STRESS_SCHEMA``: the named scenarios of ``scenarios_yaml`` and each portfolio's
    ``worst`` historical days (whole history in its base currency) on ``holdings``."""
    scenarios = parse_scenarios(scenarios_yaml)
    parts = []
    for base in holdings["base_currency"].unique().sort().to_list():
        held = holdings.filter(pl.col("base_currency") == base)
        parts.append(apply_scenarios(held, scenarios))
        returns = instrument_returns.filter(pl.col("base_currency") == base).select(
            "instrument_id", "date", pl.col("daily_return").alias("return")
        )
        parts.append(historical_scenarios(held, returns, worst))
    return pl.concat(parts).sort("portfolio_id", "kind", "scenario") if parts else pl.DataFrame(schema=STRESS_SCHEMA)
