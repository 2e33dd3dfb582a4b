"""Gold: analytics over the portfolio state, rebuilt in full on each run.

Thin assets over ``transforms``: market and benchmark returns, daily returns and performance,
exposures, cash and margin, drift and its alerts. Each writes one Delta table under ``gold/``
(the warehouse publishes them under the same names) and records the versions of its inputs.
"""


from datetime import date
from pathlib import Path

import dagster as dg
import polars as pl

from assets.ingest import bronze_table
from assets.metadata import table_metadata
from assets.resources import LakeResource, PipelineSettings
from assets.scope import Scope, plan_scope, write_in_scope
from assets.state import bronze_key, current_moment, read_bronze, read_silver, silver_key, silver_table, write_table
from transforms import contract
from transforms.attribution_inputs import attribution_report, benchmark_sector_sums, portfolio_days
from transforms.conventions import risk_free_per_period
from transforms.drift import (
    closed_portfolios,
    drift as build_drift,
    drift_alerts as build_drift_alerts,
    drift_trend,
    history_date,
    holdings_by_sleeve,
    targets_in_force,
)
from transforms.exposures import exposures as build_exposures, exposures_firm as build_exposures_firm
from transforms.margin import MarginRules, account_types, cash_balances_base, margin as build_margin
from transforms.market_returns import benchmark_returns as build_benchmark_returns
from transforms.market_returns import benchmark_holdings, instrument_returns
from transforms.performance import performance as build_performance, returns_daily as build_returns_daily
from transforms.prices import PriceTable
from transforms.valuations import holdings as book_holdings
from transforms.risk_report import benchmark_weights, risk_holdings, risk_report, stress_report
from transforms.stress import DEFAULT_SCENARIOS_YAML

GROUP = "analytics"
GOLD_SCHEMAS: dict[str, dict[str, pl.DataType]] = {
    "benchmark_returns": contract.BENCHMARK_RETURNS_SCHEMA,
    "returns_daily": contract.RETURNS_DAILY_SCHEMA,
    "performance": contract.PERFORMANCE_SCHEMA,
    "exposures": contract.EXPOSURES_SCHEMA,
    "exposure_breakdown": contract.EXPOSURE_BREAKDOWN_SCHEMA,
    "exposures_firm": contract.EXPOSURES_FIRM_SCHEMA,
    "cash_balances": contract.CASH_BALANCES_BASE_SCHEMA,
    "margin": contract.MARGIN_SCHEMA,
    "drift": contract.DRIFT_SCHEMA,
    "drift_summary": contract.DRIFT_SUMMARY_SCHEMA,
    "drift_alerts": contract.DRIFT_ALERTS_SCHEMA,
    "drift_history": contract.DRIFT_HISTORY_SCHEMA,
    "risk_model": contract.RISK_MODEL_SCHEMA,
    "risk": contract.RISK_SCHEMA,
    "risk_var": contract.VAR_SCHEMA,
    "risk_contributions": contract.RISK_CONTRIBUTIONS_SCHEMA,
    "stress_tests": contract.STRESS_SCHEMA,
    "attribution": contract.ATTRIBUTION_SCHEMA,
    "attribution_linked": contract.ATTRIBUTION_LINKED_TABLE_SCHEMA,
    "attribution_summary": contract.ATTRIBUTION_SUMMARY_TABLE_SCHEMA,
    "contribution": contract.CONTRIBUTION_TABLE_SCHEMA,
}
ATTRIBUTION_WINDOW = 252  # business days of daily attribution kept


def gold_table(name: str) -> str:
    return f"gold/{name}"


def gold_key(name: str) -> dg.AssetKey:
    return dg.AssetKey(["gold", name])


def read_gold(lake: LakeResource, name: str, where: pl.Expr | None = None) -> pl.DataFrame:
    """Gold table ``name`` (typed by its contract), only rows ``where`` if given (pushed down)."""
    if where is None:
        return lake.read(gold_table(name), GOLD_SCHEMAS[name])
    schema = GOLD_SCHEMAS[name]
    return lake.scan(gold_table(name), schema).filter(where).select(list(schema)).cast(schema).collect()


def write_gold(context: dg.AssetExecutionContext, lake: LakeResource, name: str, frame: pl.DataFrame, sources: list[str]) -> dict:
    """Overwrite ``gold/<name>`` with ``frame`` cast to its schema; return metadata."""
    schema = GOLD_SCHEMAS[name]
    return write_table(context, lake, gold_table(name), frame.select(list(schema)).cast(schema), sources)


def _base_currencies(portfolios: pl.DataFrame) -> list[str]:
    return sorted(set(portfolios["base_currency"].fill_null(contract.BASE_CURRENCY).to_list()) or {contract.BASE_CURRENCY})


@dg.asset(
    key=gold_key("benchmark_returns"),
    deps=[bronze_key(k) for k in ("benchmarks", "prices", "fx_rates", "instruments", "portfolios")],
    group_name=GROUP,
    kinds={"polars", "delta"},
    description="Daily return of every benchmark in every base currency used by a portfolio: the "
    "basket in force bought at the previous close and held (weights drift with prices); baskets "
    "that do not sum to one are not used and say why.",
)
def benchmark_returns(context: dg.AssetExecutionContext, lake: LakeResource):
    portfolios = read_bronze(lake, "portfolios")
    frame = build_benchmark_returns(
        read_bronze(lake, "benchmarks"), read_bronze(lake, "prices"), read_bronze(lake, "fx_rates"),
        read_bronze(lake, "instruments"), _base_currencies(portfolios),
    )
    flagged = frame.filter(pl.col("note").is_not_null()).select("benchmark_id", "effective_date", "note").unique()
    for row in flagged.iter_rows(named=True):
        context.log.warning(f"benchmark {row['benchmark_id']} from {row['effective_date']}: {row['note']}")
    meta = write_gold(context, lake, "benchmark_returns", frame, ["bronze/benchmarks", "bronze/prices"])
    return dg.MaterializeResult(metadata={**meta, "baskets_not_used": flagged.height})


@dg.asset(
    key=gold_key("returns_daily"),
    deps=[silver_key("daily_valuations")],
    group_name=GROUP,
    kinds={"polars", "delta"},
    description="Daily time-weighted return per portfolio with external flows removed (flows at the "
    "start of the day), chain-linked; days without capital or nav have a null return and a note.",
)
def returns_daily(context: dg.AssetExecutionContext, lake: LakeResource):
    frame = build_returns_daily(read_silver(lake, "daily_valuations"))
    meta = write_gold(context, lake, "returns_daily", frame, [silver_table("daily_valuations")])
    return dg.MaterializeResult(metadata={**meta, "days_without_return": frame["return_note"].is_not_null().sum()})


@dg.asset(
    key=gold_key("performance"),
    deps=[gold_key("returns_daily"), gold_key("benchmark_returns"), bronze_key("portfolios")],
    group_name=GROUP,
    kinds={"polars", "delta"},
    description="Per portfolio and period (MTD, QTD, YTD, 1Y, 3Y, ITD): cumulative and annualised "
    "time-weighted return, money-weighted return (XIRR), volatility, Sharpe, Sortino, maximum "
    "drawdown and its duration, Calmar, and against the benchmark beta, alpha, tracking error and "
    "information ratio.",
)
def performance(context: dg.AssetExecutionContext, lake: LakeResource, settings: PipelineSettings):
    frame = build_performance(
        read_gold(lake, "returns_daily"), read_bronze(lake, "portfolios"), read_gold(lake, "benchmark_returns"),
        risk_free=risk_free_per_period(settings.risk_free_rate),
    )
    meta = write_gold(context, lake, "performance", frame, [gold_table("returns_daily"), gold_table("benchmark_returns")])
    return dg.MaterializeResult(metadata={**meta, "risk_free_rate": settings.risk_free_rate})


@dg.multi_asset(
    specs=[
        dg.AssetSpec(gold_key("exposures"), description="Per portfolio and business day: long, short, gross, net, "
                     "leverage, top-10 weight, Herfindahl and beta-adjusted net exposure.", kinds={"polars", "delta"},
                     deps=[silver_key("daily_valuations"), silver_key("trades"), silver_key("cash_ledger"), gold_key("benchmark_returns")]),
        dg.AssetSpec(gold_key("exposure_breakdown"), description="Per portfolio and business day: long, short, gross "
                     "and net exposure by sector, asset class, currency and country.", kinds={"polars", "delta"},
                     deps=[silver_key("daily_valuations"), silver_key("trades"), silver_key("cash_ledger")]),
    ],
    group_name=GROUP,
)
def exposures(context: dg.AssetExecutionContext, lake: LakeResource):
    frames = build_exposures(
        read_silver(lake, "trades"), read_silver(lake, "cash_ledger"), read_bronze(lake, "prices"),
        read_bronze(lake, "fx_rates"), read_bronze(lake, "instruments"), read_bronze(lake, "portfolios"),
        read_silver(lake, "daily_valuations"), read_gold(lake, "benchmark_returns"),
    )
    sources = [silver_table("trades"), silver_table("daily_valuations"), gold_table("benchmark_returns")]
    for name, frame in zip(("exposures", "exposure_breakdown"), frames):
        yield dg.MaterializeResult(asset_key=gold_key(name), metadata=write_gold(context, lake, name, frame, sources))


@dg.asset(
    key=gold_key("exposures_firm"),
    deps=[silver_key("positions"), bronze_key("portfolios"), bronze_key("instruments"), bronze_key("fx_rates")],
    group_name=GROUP,
    kinds={"polars", "delta"},
    description="The firm's current exposure across all portfolios, in USD, by instrument and by sector.",
)
def exposures_firm(context: dg.AssetExecutionContext, lake: LakeResource):
    frame = build_exposures_firm(
        read_silver(lake, "positions"), read_bronze(lake, "portfolios"), read_bronze(lake, "instruments"), read_bronze(lake, "fx_rates")
    )
    return dg.MaterializeResult(metadata=write_gold(context, lake, "exposures_firm", frame, [silver_table("positions")]))


def _margin_rules(settings: PipelineSettings) -> MarginRules:
    return MarginRules(settings.margin_long_initial, settings.margin_long_maintenance,
                       settings.margin_short_initial, settings.margin_short_maintenance)


@dg.multi_asset(
    specs=[
        dg.AssetSpec(gold_key("cash_balances"), description="Settled and pending cash per portfolio and currency, "
                     "local and base, with the account type; negative settled cash in a cash account is flagged.",
                     kinds={"polars", "delta"}, deps=[silver_key("cash_balances"), silver_key("positions")]),
        dg.AssetSpec(gold_key("margin"), description="Margin per portfolio under the settings' rule set: initial and "
                     "maintenance requirements, excess or deficit, buying power, margin-call flag.",
                     kinds={"polars", "delta"}, deps=[silver_key("portfolio_state"), silver_key("positions")]),
    ],
    group_name=GROUP,
)
def cash_and_margin(context: dg.AssetExecutionContext, lake: LakeResource, settings: PipelineSettings):
    positions = read_silver(lake, "positions")
    state = read_silver(lake, "portfolio_state")
    accounts = account_types(positions, read_bronze(lake, "portfolios"), settings.margin_portfolios)
    balances = cash_balances_base(read_silver(lake, "cash_balances"), positions, accounts)
    frame = build_margin(state, accounts, _margin_rules(settings))
    yield dg.MaterializeResult(
        asset_key=gold_key("cash_balances"),
        metadata={**write_gold(context, lake, "cash_balances", balances, [silver_table("cash_balances")]),
                  "negative_settled_cash": int(balances["negative_settled_cash"].sum())},
    )
    yield dg.MaterializeResult(
        asset_key=gold_key("margin"),
        metadata={**write_gold(context, lake, "margin", frame, [silver_table("portfolio_state")]),
                  "margin_calls": int(frame["margin_call"].sum())},
    )


@dg.multi_asset(
    specs=[
        dg.AssetSpec(gold_key("drift"), description="Target against actual weights per portfolio at instrument, sector "
                     "and sleeve level: absolute and relative drift and band breaches (5/25 by default).",
                     kinds={"polars", "delta"}, deps=[silver_key("positions"), silver_key("lots"), bronze_key("targets")]),
        dg.AssetSpec(gold_key("drift_summary"), description="Per portfolio: the drift figure (half the sum of absolute "
                     "differences), breaches, and why a portfolio was not measured.", kinds={"polars", "delta"},
                     deps=[silver_key("positions"), silver_key("lots"), bronze_key("targets")]),
        dg.AssetSpec(gold_key("drift_history"), description="The drift figure of every run's as-of date (one row per "
                     "portfolio and date, replaced when a date is run again): the input of the drift trend.",
                     kinds={"polars", "delta"}),
        dg.AssetSpec(gold_key("drift_alerts"), description="One row per band breach (instrument, sector, portfolio) with "
                     "severity and whether the drift is rising, and one ERROR row per portfolio not measured.",
                     kinds={"polars", "delta"}),
    ],
    group_name=GROUP,
)
def drift(context: dg.AssetExecutionContext, lake: LakeResource, settings: PipelineSettings):
    """Drift of the portfolios whose positions or lots changed since the last build
    (``assets.scope``; every portfolio when targets, instruments, portfolios or the date
    changed): their rows are replaced, the others' kept."""
    tables = [gold_table(name) for name in ("drift", "drift_summary", "drift_history", "drift_alerts")]
    with lake.writer_lock(gold_table("drift")):
        moment = current_moment(lake)
        scope = plan_scope(lake, tables, [silver_table("positions"), silver_table("lots")],
                           [bronze_table(k) for k in ("targets", "instruments", "portfolios")],
                           moment=moment, incremental=settings.incremental_state)
        context.log.info(f"drift: {scope.describe()}")
        yield from _drift(context, lake, settings, scope, moment.date())


def _drift(context: dg.AssetExecutionContext, lake: LakeResource, settings: PipelineSettings, scope: Scope, as_of: date):
    def write(name: str, frame: pl.DataFrame, **extra) -> dg.MaterializeResult:
        schema = GOLD_SCHEMAS[name]
        frame = frame.select(list(schema)).cast(schema)
        version = write_in_scope(lake, gold_table(name), frame, scope, context.run.run_id)
        return dg.MaterializeResult(asset_key=gold_key(name), metadata={
            **table_metadata(frame), "delta_version": version, "scope": scope.describe(), **extra})

    if scope.empty:
        for name in ("drift", "drift_summary", "drift_history", "drift_alerts"):
            yield dg.MaterializeResult(asset_key=gold_key(name), metadata={"scope": scope.describe(), "portfolios_rebuilt": 0})
        return
    positions = read_silver(lake, "positions", where=scope.where())
    instruments = read_bronze(lake, "instruments")
    targets, issues = targets_in_force(scope.restrict(read_bronze(lake, "targets")), as_of)
    navs = positions.group_by("portfolio_id").agg(pl.col("market_value").sum().alias("nav"))
    open_lots = pl.col("status") == "OPEN"
    result = build_drift(
        holdings_by_sleeve(read_silver(lake, "lots", where=open_lots if scope.full else open_lots & scope.where()), positions, instruments),
        navs, targets, instruments, as_of, target_issues=issues, skipped=closed_portfolios(scope.restrict(read_bronze(lake, "portfolios"))),
        abs_band=settings.drift_abs_band, rel_band=settings.drift_rel_band, portfolio_band=settings.drift_portfolio_band,
    )
    yield write("drift", result["drift"])
    yield write("drift_summary", result["summary"])
    # the history keeps one figure per portfolio and as-of date: a rerun of a date replaces it
    today = result["summary"].filter(pl.col("drift").is_not_null()).select(list(contract.DRIFT_HISTORY_SCHEMA)).cast(contract.DRIFT_HISTORY_SCHEMA)
    filed = history_date(as_of)
    today = today.with_columns(pl.lit(filed).alias("date"))
    history = read_gold(lake, "drift_history", where=scope.where())
    history = pl.concat([history.filter(pl.col("date") != filed), today]).sort("portfolio_id", "date")
    yield write("drift_history", history)
    trend = drift_trend(history, settings.drift_trend_window) if history.height else None
    alerts = build_drift_alerts(result["drift"], result["summary"], result["issues"], trend)
    yield write("drift_alerts", alerts, by_severity=dg.MetadataValue.json(dict(alerts.group_by("severity").len().iter_rows())))


def _scenarios_yaml(settings: PipelineSettings) -> str:
    if not settings.stress_scenarios_file:
        return DEFAULT_SCENARIOS_YAML
    return Path(settings.stress_scenarios_file).read_text()


RISK_TABLES = {
    "risk_model": "The sector factor model per base currency (exposures, factor covariance, specific variances; per day) "
    "estimated over the last 252 business days: what the rebalancing optimiser reads.",
    "risk": "Per portfolio: ex-ante volatility and tracking error to its benchmark (Ledoit-Wolf covariance of the last "
    "252 business days), daily and annualised; positions without history excluded and counted.",
    "risk_var": "Per portfolio, method (historical, parametric), confidence (95%, 99%) and horizon (1, 10 days): VaR "
    "and CVaR as positive losses in base currency and as a share of nav.",
    "risk_contributions": "Marginal and component contributions to volatility by position and by sector (components "
    "sum to the portfolio's volatility).",
    "stress_tests": "P&L per portfolio under the named scenarios (settings.stress_scenarios_file, else the defaults) "
    "and its five worst historical days replayed on today's holdings.",
}


def _gold_specs(tables: dict[str, str], deps: list[dg.AssetKey]) -> list[dg.AssetSpec]:
    """One spec per gold table written by one multi-asset, all with the same inputs."""
    return [dg.AssetSpec(gold_key(name), description=text, kinds={"polars", "delta"}, deps=deps) for name, text in tables.items()]


@dg.multi_asset(
    specs=_gold_specs(RISK_TABLES, [silver_key("positions"), bronze_key("prices"), bronze_key("fx_rates"), bronze_key("benchmarks")]),
    group_name=GROUP,
)
def risk(context: dg.AssetExecutionContext, lake: LakeResource, settings: PipelineSettings):
    portfolios, instruments = read_bronze(lake, "portfolios"), read_bronze(lake, "instruments")
    prices = PriceTable(read_bronze(lake, "prices"))
    returns = instrument_returns(prices, read_bronze(lake, "fx_rates"), instruments, _base_currencies(portfolios))
    holdings = risk_holdings(read_silver(lake, "positions"), instruments, portfolios)
    benchmark = benchmark_weights(read_bronze(lake, "benchmarks"), portfolios, prices.last_day) if prices.last_day else None
    report = risk_report(holdings, returns, benchmark if benchmark is not None else pl.DataFrame(
        schema={"portfolio_id": pl.String, "instrument_id": pl.String, "weight": pl.Float64}), instruments)
    report["stress_tests"] = stress_report(holdings, returns, _scenarios_yaml(settings))
    sources = [silver_table("positions"), "bronze/prices", "bronze/fx_rates", "bronze/benchmarks"]
    names = {"risk_model": "risk_model", "risk": "risk", "risk_var": "var", "risk_contributions": "contributions", "stress_tests": "stress_tests"}
    for table, key in names.items():
        yield dg.MaterializeResult(asset_key=gold_key(table), metadata=write_gold(context, lake, table, report[key], sources))


ATTRIBUTION_TABLES = {
    "attribution": "Daily Brinson-Fachler attribution by sector against the portfolio's benchmark (allocation, "
    "selection, interaction) over the last 252 business days, holdings-based.",
    "attribution_linked": "The daily effects linked over MTD, QTD, YTD and 1Y by Carino, Menchero, GRAP and Frongello, "
    "per sector.",
    "attribution_summary": "Per portfolio, period and linking method: portfolio, benchmark and excess return, the linked "
    "effects and the residual (excess minus effects, ~0).",
    "contribution": "Contribution to return by position over MTD, QTD, YTD and 1Y (compound linking: they sum to the "
    "period's holdings-based return).",
}


@dg.multi_asset(
    specs=_gold_specs(ATTRIBUTION_TABLES, [silver_key("daily_valuations"), silver_key("trades"), silver_key("cash_ledger"),
                                           bronze_key("benchmarks")]),
    group_name=GROUP,
)
def attribution(context: dg.AssetExecutionContext, lake: LakeResource):
    portfolios, instruments, fx = read_bronze(lake, "portfolios"), read_bronze(lake, "instruments"), read_bronze(lake, "fx_rates")
    prices = PriceTable(read_bronze(lake, "prices"))
    daily = read_silver(lake, "daily_valuations")
    held = book_holdings(read_silver(lake, "trades"), read_silver(lake, "cash_ledger"), prices, fx, instruments, portfolios)
    sources = [silver_table("daily_valuations"), silver_table("trades"), "bronze/benchmarks", "bronze/prices"]
    if held is None or held.cal.n < 2:
        frames = {name: pl.DataFrame(schema=GOLD_SCHEMAS[name]) for name in ATTRIBUTION_TABLES}
    else:
        first = max(held.cal.n - ATTRIBUTION_WINDOW, 1)
        mine = portfolio_days(held, daily, instruments, first)
        theirs = benchmark_sector_sums(
            benchmark_holdings(read_bronze(lake, "benchmarks"), prices, fx, instruments, _base_currencies(portfolios)),
            portfolios, instruments, held.days[first],
        )
        report = attribution_report(mine, theirs, prices.last_day)
        frames = {
            "attribution": report["daily"], "attribution_linked": report["linked"],
            "attribution_summary": report["summary"], "contribution": report["contribution"],
        }
        frames = {k: v if v is not None else pl.DataFrame(schema=GOLD_SCHEMAS[k]) for k, v in frames.items()}
    for name, frame in frames.items():
        yield dg.MaterializeResult(asset_key=gold_key(name), metadata=write_gold(context, lake, name, frame, sources))


ANALYTICS_ASSETS = [benchmark_returns, returns_daily, performance, exposures, exposures_firm, cash_and_margin, drift, risk, attribution]
ANALYTICS_TABLES = tuple(GOLD_SCHEMAS)
