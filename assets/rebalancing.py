"""Rebalancing: triggers, the optimised rebalance, recommendations, orders, execution quality.

Thin assets over ``transforms.rebalance_triggers`` and ``optimizers``:

- ``rebalance_triggers`` (and ``rebalance_decisions``): why each portfolio should rebalance today
  (drift, calendar, manual, volatility regime, correlation change, risk budget, cash flows) and
  what its status allows (ACTIVE rebalances, LIQUIDATING moves toward cash, SUSPENDED and
  CLOSED do not). A manual run names portfolios in its config (``RebalanceRequest``);
- ``rebalancing``: one run of the optimiser over the decided portfolios: ``recommendations``,
  ``rebalance_analysis`` (do nothing / full rebalance / optimised), ``lot_sales``, ``orders``
  netted across portfolios with their ``order_allocations`` and ``crossings``, and one
  ``rebalance_runs`` row. These tables keep every run: a run replaces only its own rows;
- ``execution_quality`` (and ``execution_summary``): later trades matched to the orders.

Policies come from the YAML file named by ``PipelineSettings.rebalance_policy_file``::

    triggers:   {default: {calendar: weekly, ...}, portfolios: {P0001: {...}}}
    optimizer:  {default: {cash_buffer: 0.02, turnover_max: 0.5, ...}, portfolios: {...}}
"""

import time
from dataclasses import replace
from datetime import datetime, timedelta, timezone
from pathlib import Path

import dagster as dg
import numpy as np
import polars as pl
import yaml

from assets.analytics import gold_key, gold_table, read_gold
from assets.ingest import bronze_table, in_predicate
from assets.memo import derived
from assets.metadata import table_metadata
from assets.resources import LakeResource, PipelineSettings
from assets.scope import INTRADAY_JOB, Scope, plan_scope
from transforms.filters import in_values
from assets.state import (
    bronze_key,
    current_moment,
    input_versions,
    read_bronze,
    read_silver,
    silver_key,
    silver_table,
    write_table,
)
from optimizers.inputs import (
    UNASSIGNED,
    OptimizerPolicy,
    PortfolioBook,
    market_snapshot,
    parse_optimizer_policies,
    policy_of,
    portfolio_problem,
    risk_models,
    sleeve_holdings,
)
from optimizers.netting import net_orders
from optimizers.problem import ProblemCache
from optimizers.rebalance import rebalance_portfolio
from optimizers.tax import (
    harvest_candidates,
    lot_tax_costs,
    recent_purchases,
    select_lots,
    tax_segments,
    wash_sale_blocks,
    WASH_SALE_DAYS,
)
from transforms import contract
from transforms.drift import targets_in_force
from transforms.execution_quality import (
    execution_fills,
    execution_quality as build_execution_quality,
    execution_summary,
)
from transforms.fx import base_per_local_on
from transforms.market_returns import instrument_returns
from transforms.rebalance_triggers import (
    all_triggers,
    calendar_triggers,
    cash_flow_triggers,
    correlation_triggers,
    drift_triggers,
    held_returns_matrix,
    manual_triggers,
    parse_policies,
    rebalance_decisions,
    risk_budget_triggers,
    volatility_triggers,
)

GROUP = "rebalancing"
# Compiled rebalance problems, kept by the process: a run worker executing run after run
# (orchestration.launcher) compiles each problem shape once, not once per run (an intraday file
# of the standard book needed 4 shapes, 1.1 s). Bounded: beyond it the least recently used go.
PROBLEMS = ProblemCache(capacity=64)
SCHEMAS: dict[str, dict[str, pl.DataType]] = {
    "rebalance_triggers": contract.TRIGGERS_SCHEMA,
    "rebalance_decisions": contract.DECISIONS_SCHEMA,
    "recommendations": contract.RECOMMENDATIONS_SCHEMA,
    "rebalance_analysis": contract.REBALANCE_ANALYSIS_SCHEMA,
    "lot_sales": contract.LOT_SALES_SCHEMA,
    "orders": contract.ORDERS_SCHEMA,
    "order_allocations": contract.ALLOCATIONS_SCHEMA,
    "crossings": contract.CROSSINGS_SCHEMA,
    "rebalance_runs": contract.REBALANCE_RUNS_SCHEMA,
    "execution_quality": contract.EXECUTION_QUALITY_SCHEMA,
    "execution_summary": contract.EXECUTION_SUMMARY_SCHEMA,
}
RISK_BUDGET_VAR = ("historical", 0.95, 1)  # the VaR figure a risk budget is checked against


class RebalanceRequest(dg.Config):
    """Run config of the triggers: ``portfolios`` rebalanced on request (a manual trigger)."""

    portfolios: list[str] = []


def _policies(settings: PipelineSettings) -> dict:
    if not settings.rebalance_policy_file:
        return {}
    spec = yaml.safe_load(Path(settings.rebalance_policy_file).read_text()) or {}
    unknown = set(spec) - {"triggers", "optimizer"}
    if unknown:
        raise ValueError(f"{settings.rebalance_policy_file}: unknown section(s) {sorted(unknown)}")
    return spec


def _write(context, lake: LakeResource, name: str, frame: pl.DataFrame, sources: list[str], run_id: str | None = None) -> dict:
    """Overwrite ``gold/<name>``, or with ``run_id`` replace only that run's rows; either way the
    commit records the input tables' versions (``state.input_versions``), as ``write_table`` does."""
    schema = SCHEMAS[name]
    frame = frame.select(list(schema)).cast(schema)
    if run_id is None or not lake.exists(gold_table(name)):
        return write_table(context, lake, gold_table(name), frame, sources)
    version = lake.write(gold_table(name), frame, predicate=f"run_id = '{run_id}'", run_id=context.run.run_id,
                         commit_metadata={"inputs": input_versions(lake, sources)})
    return {"dagster/row_count": frame.height, "delta_version": version}


def _read(lake: LakeResource, name: str) -> pl.DataFrame:
    return lake.read(gold_table(name), SCHEMAS[name])


def _navs(positions: pl.DataFrame) -> pl.DataFrame:
    return positions.group_by("portfolio_id").agg(pl.col("market_value").sum().alias("nav"))


@dg.multi_asset(
    specs=[
        dg.AssetSpec(gold_key("rebalance_triggers"), description="Why each portfolio should rebalance now: drift band breaches, its "
                     "calendar, a manual request, a volatility regime, a correlation change, a risk budget breach or a large cash flow "
                     "(kind, value, threshold, priority, time).", kinds={"polars", "delta"},
                     deps=[gold_key("drift_summary"), gold_key("returns_daily"), gold_key("risk"), gold_key("risk_var"),
                           silver_key("positions"), silver_key("cash_ledger")]),
        dg.AssetSpec(gold_key("rebalance_decisions"), description="Per portfolio: REBALANCE, LIQUIDATE or SKIP, with the reason "
                     "(status rules: ACTIVE rebalances when triggered, LIQUIDATING always moves toward cash, SUSPENDED and CLOSED "
                     "never trade).", kinds={"polars", "delta"}, deps=[gold_key("rebalance_triggers"), bronze_key("portfolios")]),
    ],
    group_name=GROUP,
)
def rebalance_triggers(context: dg.AssetExecutionContext, config: RebalanceRequest, lake: LakeResource, settings: PipelineSettings):
    policies = parse_policies(_policies(settings).get("triggers"))  # a bad policy file fails every run
    # the intraday job decides for the changed portfolios alone: read and compute only theirs
    scope = _decision_scope(context, lake, config)
    portfolios = scope.restrict(read_bronze(lake, "portfolios"))
    if scope.empty:  # nothing changed: no decision, and none of the market-wide inputs computed
        triggers, decisions = pl.DataFrame(schema=SCHEMAS["rebalance_triggers"]), pl.DataFrame(schema=SCHEMAS["rebalance_decisions"])
    else:
        triggers = _triggers(lake, policies, config, scope, portfolios)
        decisions = rebalance_decisions(triggers, portfolios.select("portfolio_id", "status"))
    counts = dict(decisions.group_by("action").len().iter_rows())
    yield dg.MaterializeResult(asset_key=gold_key("rebalance_triggers"), metadata={
        **_write_decided(context, lake, "rebalance_triggers", triggers, scope),
        "by_kind": dg.MetadataValue.json(dict(triggers.group_by("kind").len().iter_rows()))})
    yield dg.MaterializeResult(asset_key=gold_key("rebalance_decisions"), metadata={
        **_write_decided(context, lake, "rebalance_decisions", decisions, scope), "by_action": dg.MetadataValue.json(counts)})


def _triggers(lake: LakeResource, policies, config: RebalanceRequest, scope: Scope, portfolios: pl.DataFrame) -> pl.DataFrame:
    """Every trigger of the scope's ``portfolios`` (by ``policies``) at the lake's current moment."""
    now = current_moment(lake)
    positions = read_silver(lake, "positions", where=scope.where())
    prices = read_bronze(lake, "prices")
    navs = _navs(positions)
    ids = portfolios["portfolio_id"]
    days = prices["date"].unique().sort()
    frames = [drift_triggers(read_gold(lake, "drift_summary"), now), manual_triggers(config.portfolios, ids, now),
              volatility_triggers(read_gold(lake, "returns_daily"), policies, now)]
    if days.len():
        frames.append(calendar_triggers(ids, policies, days, now.date(), now))
    var = read_gold(lake, "risk_var").filter(
        (pl.col("method") == RISK_BUDGET_VAR[0]) & (pl.col("confidence") == RISK_BUDGET_VAR[1]) & (pl.col("horizon_days") == RISK_BUDGET_VAR[2]))
    frames.append(risk_budget_triggers(read_gold(lake, "risk"), var.select("portfolio_id", "var_pct_nav"), policies, now))
    # flows over the last day, converted to each portfolio's base currency on their own date
    since = now - timedelta(days=1)
    flows = read_silver(lake, "cash_ledger", where=pl.col("is_external") & (pl.col("ts") >= since))
    flows = base_per_local_on(
        flows.join(portfolios.select("portfolio_id", "base_currency"), on="portfolio_id", how="left")
        .with_columns(pl.col("ts").dt.date().alias("_day")),
        read_bronze(lake, "fx_rates"), date_col="_day", local_col="currency", base_col="base_currency",
    ).with_columns((pl.col("amount") * pl.col("fx_rate")).alias("amount_base"))
    frames.append(cash_flow_triggers(flows, navs, since, policies, now))
    weights = positions.filter(pl.col("position_type") != "CASH").select("portfolio_id", "instrument_id", "weight")
    returns = _returns(lake, [contract.BASE_CURRENCY])
    if returns.height:
        matrix, ids_ = held_returns_matrix(returns, weights)
        frames.append(correlation_triggers(weights, matrix, ids_, policies, now))
    return scope.restrict(all_triggers(*frames))  # the gold tables read above hold every portfolio


def _decision_scope(context: dg.AssetExecutionContext, lake: LakeResource, config: RebalanceRequest) -> Scope:
    """The portfolios this run decides for: in the intraday job, those whose positions or drift
    changed since the last decisions were written (and any named by a manual request; every
    portfolio after the daily returns or risk changed), so a new file
    produces recommendations for the portfolios it touched alone; in every other job, all
    (calendar, risk and volatility triggers do not wait for new data)."""
    scope = plan_scope(lake, [gold_table("rebalance_decisions")], [silver_table("positions"), gold_table("drift_summary")],
                       [gold_table(name) for name in ("returns_daily", "risk", "risk_var")],
                       incremental=context.job_name == INTRADAY_JOB)
    if scope.full or not config.portfolios:
        return scope
    return replace(scope, portfolios=scope.portfolios | set(config.portfolios))


def _write_decided(context, lake: LakeResource, name: str, frame: pl.DataFrame, scope: Scope) -> dict:
    """Overwrite ``gold/<name>`` with this run's triggers or decisions, recording the positions'
    version they were decided from (the next intraday run starts from it)."""
    schema = SCHEMAS[name]
    frame = frame.select(list(schema)).cast(schema)
    version = lake.write(gold_table(name), frame, run_id=context.run.run_id, commit_metadata=scope.commit_metadata())
    return {**table_metadata(frame), "delta_version": version, "scope": scope.describe()}


REBALANCING_TABLES = {
    "recommendations": "Per run, portfolio, sleeve and instrument: current, target and recommended weight, the trade in shares and "
    "value, its estimated spread, commission, impact and tax, the trigger and the solver's status. Only trades that keep every "
    "hard constraint after rounding to lots are published.",
    "rebalance_analysis": "Per run and portfolio considered: doing nothing, a full rebalance to target and the optimised trade side "
    "by side (costs, drift and tracking error after, risk benefit, net benefit, hard constraints broken) and which was chosen, why.",
    "lot_sales": "The lots each TAXABLE sell is taken from, in tax-optimal order, with the gain, term and tax.",
    "orders": "External orders per run: the trades netted across portfolios per instrument after internal crossing, sells (wave 1) "
    "before buys (wave 2), batched by a share of average daily volume.",
    "order_allocations": "How each portfolio's trade is filled: its crossed part and its share of each external order batch.",
    "crossings": "Shares crossed internally between portfolios per run and instrument, at the decision price.",
    "rebalance_runs": "One row per run: portfolios considered, rebalanced, without benefit, infeasible, rejected; solve times; orders; "
    "costs; average drift before and after.",
}


# The bronze tables the market frames below are derived from (kept while unchanged: assets.memo).
MARKET_TABLES = [bronze_table(k) for k in ("prices", "fx_rates", "instruments")]


def _returns(lake: LakeResource, bases: list[str]) -> pl.DataFrame:
    """``transforms.market_returns.instrument_returns`` of the bronze prices in each of ``bases``."""
    bases = sorted(set(bases))
    return derived(lake, MARKET_TABLES, ("instrument_returns", *bases), lambda: instrument_returns(
        read_bronze(lake, "prices"), read_bronze(lake, "fx_rates"), read_bronze(lake, "instruments"), bases))


def _snapshot(lake: LakeResource, bases: list[str]) -> pl.DataFrame:
    """``optimizers.inputs.market_snapshot`` in each of ``bases``."""
    bases = sorted(set(bases))
    return derived(lake, MARKET_TABLES, ("market_snapshot", *bases),
                   lambda: market_snapshot(_returns(lake, bases), read_bronze(lake, "prices")))


def _quotes(lake: LakeResource) -> pl.DataFrame:
    """Per instrument: the last local close, its currency and the mean volume of the last 20 days (shares)."""
    def compute() -> pl.DataFrame:
        prices = read_bronze(lake, "prices")
        last = prices.sort("instrument_id", "date").group_by("instrument_id").agg(
            pl.col("close").last().alias("price"), pl.col("volume").cast(pl.Float64).drop_nulls().tail(20).mean().alias("adv"))
        return last.join(read_bronze(lake, "instruments").select("instrument_id", "currency"), on="instrument_id", how="left")

    return derived(lake, MARKET_TABLES, ("quotes",), compute)


def _tax_inputs(lake: LakeResource, taxable: list[str], positions: pl.DataFrame, lots: pl.DataFrame, navs: pl.DataFrame,
                holdings: pl.DataFrame, targets: pl.DataFrame, as_of, policy: OptimizerPolicy):
    """(lot costs, tax segments, instruments not to buy, harvestable instruments) of the TAXABLE portfolios."""
    lots = lots.filter(pl.col("portfolio_id").is_in(taxable))
    quotes = positions.filter((pl.col("position_type") == "LONG") & pl.col("portfolio_id").is_in(taxable)).select(
        "portfolio_id", "instrument_id", "price", "fx_rate")
    costs = lot_tax_costs(lots, quotes, as_of, policy.tax_rates)
    window = datetime.combine(as_of - timedelta(days=WASH_SALE_DAYS + 1), datetime.min.time(), tzinfo=timezone.utc)
    closes = read_silver(lake, "realized_pnl", where=(pl.col("close_ts") >= window) & pl.col("portfolio_id").is_in(taxable))
    blocks = wash_sale_blocks(closes, as_of)
    bought = recent_purchases(read_silver(lake, "lots", where=(pl.col("open_ts") >= window) & pl.col("portfolio_id").is_in(taxable)), as_of)
    candidates = harvest_candidates(costs, navs.filter(pl.col("portfolio_id").is_in(taxable)), blocks, bought, policy.harvest_threshold)
    # harvest only what the book holds at or above target: selling it does not fight the targets
    keys = ["portfolio_id", "instrument_id"]
    held = holdings.group_by(keys).agg(pl.col("weight").sum())
    wanted = targets.group_by(keys).agg(pl.col("target_weight").sum())
    harvestable = (candidates.select(keys).join(held, on=keys, how="left").join(wanted, on=keys, how="left")
                   .filter(pl.col("weight").fill_null(0) >= pl.col("target_weight").fill_null(0)).select(keys))
    segments = tax_segments(costs, navs.filter(pl.col("portfolio_id").is_in(taxable)), None, policy.tax_segments, harvestable)
    no_buy = pl.concat([blocks.select(keys), harvestable]).unique()
    return costs, segments, no_buy, harvestable


def _tax_inputs_by_policy(lake: LakeResource, taxable: list[str], policies: dict[str, OptimizerPolicy], *args):
    """``_tax_inputs`` for each group of TAXABLE portfolios that share tax rates, harvest
    threshold and tax pieces under their own policies, stacked."""
    groups: dict[tuple, list[str]] = {}
    for pid in taxable:
        p = policy_of(policies, pid)
        groups.setdefault((p.tax_rates, p.harvest_threshold, p.tax_segments), []).append(pid)
    parts = [_tax_inputs(lake, pids, *args, policy_of(policies, pids[0])) for pids in groups.values()]
    return tuple(pl.concat([part[i] for part in parts]) for i in range(4))


def _by_portfolio(frame: pl.DataFrame) -> dict[str, pl.DataFrame]:
    return {key[0]: part for key, part in frame.partition_by("portfolio_id", as_dict=True).items()}


@dg.multi_asset(
    specs=[dg.AssetSpec(gold_key(name), description=text, kinds={"cvxpy", "delta"},
                        deps=[gold_key("rebalance_decisions"), gold_key("risk_model"), gold_key("drift_summary"),
                              silver_key("positions"), silver_key("lots"), bronze_key("targets"), bronze_key("prices")])
           for name, text in REBALANCING_TABLES.items()],
    group_name=GROUP,
)
def rebalancing(context: dg.AssetExecutionContext, lake: LakeResource, settings: PipelineSettings):
    # Under the lake's lock of these tables: a run's rows are complete once its rebalance_runs
    # row is written (last), so rows of a run without one are a dead run's and are dropped
    # first; a run in progress elsewhere cannot be taken for a dead one.
    with lake.writer_lock(gold_table("rebalance_runs")):
        _drop_unfinished_runs(context, lake)
        yield from _rebalance(context, lake, settings)


def _drop_unfinished_runs(context: dg.AssetExecutionContext, lake: LakeResource) -> None:
    """Delete the per-run rows of runs that never wrote their ``rebalance_runs`` row (killed,
    or failed half-way: a retry has a new run id and would never replace them)."""
    finished = set(_read(lake, "rebalance_runs")["run_id"].to_list())
    for name in REBALANCING_TABLES:
        if name == "rebalance_runs" or not lake.exists(gold_table(name)):
            continue
        runs = lake.scan(gold_table(name)).select(pl.col("run_id").unique()).collect()["run_id"].to_list()
        dead = sorted(set(runs) - finished - {None})
        if dead:
            lake.write(gold_table(name), pl.DataFrame(schema=SCHEMAS[name]), predicate=in_predicate("run_id", dead),
                       run_id=context.run.run_id, commit_metadata={"dropped_runs": ",".join(dead)})
            context.log.warning(f"{name}: dropped the rows of {len(dead)} run(s) that did not finish: {', '.join(dead)}")


def _rebalance(context: dg.AssetExecutionContext, lake: LakeResource, settings: PipelineSettings):
    started, clock = datetime.now(timezone.utc), time.perf_counter()
    run_id = context.run.run_id
    policies = parse_optimizer_policies(_policies(settings).get("optimizer"))
    decisions = _read(lake, "rebalance_decisions")
    chosen = decisions.filter(pl.col("action").is_in(["REBALANCE", "LIQUIDATE"]))
    ids = chosen["portfolio_id"].to_list()
    moment = current_moment(lake)
    as_of = moment.date()
    portfolios = read_bronze(lake, "portfolios").filter(pl.col("portfolio_id").is_in(ids))
    positions = read_silver(lake, "positions", where=pl.col("portfolio_id").is_in(ids))
    lots = read_silver(lake, "lots", where=(pl.col("status") == "OPEN") & pl.col("portfolio_id").is_in(ids))
    instruments = read_bronze(lake, "instruments")
    targets, _ = targets_in_force(read_bronze(lake, "targets"), as_of)
    targets = targets.filter(pl.col("portfolio_id").is_in(ids)).with_columns(pl.col("strategy_id").fill_null(UNASSIGNED))
    models = derived(lake, [gold_table("risk_model")], ("risk_models",), lambda: risk_models(read_gold(lake, "risk_model")))
    bases = sorted(set(portfolios["base_currency"].to_list()))
    snapshot = _snapshot(lake, bases) if bases else None
    snapshot_of = {key[0]: part for key, part in snapshot.partition_by("base_currency", as_dict=True).items()} if bases else {}
    holdings, navs = sleeve_holdings(positions, lots), _navs(positions)
    cash = positions.filter(pl.col("position_type") == "CASH").group_by("portfolio_id").agg(pl.col("weight").sum())
    taxable = portfolios.filter(pl.col("tax_status") == "TAXABLE")["portfolio_id"].to_list()
    lot_costs = segments = None
    no_buy = harvestable = pl.DataFrame(schema={"portfolio_id": pl.String, "instrument_id": pl.String})
    if taxable:
        lot_costs, segments, no_buy, harvestable = _tax_inputs_by_policy(lake, taxable, policies, positions, lots, navs, holdings,
                                                                         targets, as_of)
    parts = {name: _by_portfolio(frame) for name, frame in
             {"holdings": holdings, "targets": targets, "segments": segments if segments is not None else pl.DataFrame(
                 schema={"portfolio_id": pl.String}), "no_buy": no_buy, "harvestable": harvestable}.items()}
    nav_of, cash_of = dict(navs.iter_rows()), dict(cash.iter_rows())
    kinds = {pid: ", ".join(k) for pid, k in decisions.select("portfolio_id", "trigger_kinds").iter_rows()}
    outcomes, counts, problems = [], {"INFEASIBLE": 0}, []
    rows = portfolios.join(chosen.select("portfolio_id", "action", "reason"), on="portfolio_id").sort("portfolio_id")
    for row in rows.iter_rows(named=True):
        pid, base = row["portfolio_id"], row["base_currency"]
        nav = nav_of.get(pid)
        if base not in models or not nav or nav <= 0:
            context.log.warning(f"{pid}: not optimised ({'no risk model for ' + base if base not in models else 'nav is not positive'})")
            counts["INFEASIBLE"] += 1
            continue
        empty = pl.DataFrame(schema={"instrument_id": pl.String})
        book = PortfolioBook(
            pid, row["status"], base, pid in taxable, nav, cash_of.get(pid, 0.0),
            parts["holdings"].get(pid, holdings.clear()), parts["targets"].get(pid, targets.clear()),
            parts["segments"].get(pid) if pid in taxable else None,
            frozenset(parts["no_buy"].get(pid, empty)["instrument_id"].to_list()),
            frozenset(parts["harvestable"].get(pid, empty)["instrument_id"].to_list()),
        )
        policy = policy_of(policies, pid)
        x, meta = portfolio_problem(book, instruments, models[base], snapshot_of.get(base, snapshot.clear()), policy)
        problems.append((row, policy, x, meta))
    cache, builds_before = PROBLEMS, PROBLEMS.builds
    compiling = time.perf_counter()
    cache.warm(x for _, _, x, _ in problems)
    compiled = cache.builds - builds_before
    context.log.info(f"rebalancing: {compiled} problem shape(s) compiled in {time.perf_counter() - compiling:.1f} s "
                     f"for {len(problems)} portfolio(s)")
    for i, (row, policy, x, meta) in enumerate(problems):
        pid = row["portfolio_id"]
        forced = row["reason"] if row["action"] == "LIQUIDATE" else None
        outcome = rebalance_portfolio(x, meta, policy, cache, run_id=run_id, as_of=as_of, trigger=kinds.get(pid) or row["action"].lower(),
                                      forced_reason=forced)
        outcomes.append(outcome)
        if (i + 1) % 100 == 0:
            context.log.info(f"rebalancing: {i + 1} of {len(problems)} portfolios solved")
    for o in outcomes:
        counts[o.outcome] = counts.get(o.outcome, 0) + 1

    def stack(attr: str, schema: dict) -> pl.DataFrame:
        frames = [getattr(o, attr) for o in outcomes if getattr(o, attr).height]
        return pl.concat(frames) if frames else pl.DataFrame(schema=schema)

    recommendations = stack("recommendations", contract.RECOMMENDATIONS_SCHEMA)
    drift_now = read_gold(lake, "drift_summary").select("portfolio_id", pl.col("drift").alias("_drift"))
    analysis = (stack("analysis", contract.REBALANCE_ANALYSIS_SCHEMA).join(drift_now, on="portfolio_id", how="left")
                .with_columns(pl.col("_drift").alias("drift_at_decision")).select(list(contract.REBALANCE_ANALYSIS_SCHEMA)))
    trades = pl.concat([o.trades.with_columns(pl.lit(o.portfolio_id).alias("portfolio_id")) for o in outcomes if o.trades.height]
                       or [pl.DataFrame(schema={"instrument_id": pl.String, "quantity": pl.Float64, "unit_value": pl.Float64,
                                                "portfolio_id": pl.String})])
    quotes = _quotes(lake)
    netted = net_orders(
        trades.join(quotes, on="instrument_id", how="left").select(
            pl.lit(run_id).alias("run_id"), "portfolio_id", "instrument_id", "quantity", "price", "currency", "adv"))
    sales = pl.DataFrame(schema=contract.LOT_SALES_SCHEMA)
    sells = trades.filter((pl.col("quantity") < 0) & pl.col("portfolio_id").is_in(taxable))
    if lot_costs is not None and sells.height:
        open_qty = lots.group_by("portfolio_id", "instrument_id").agg(pl.col("quantity").sum().alias("open"))
        sells = sells.join(open_qty, on=["portfolio_id", "instrument_id"]).select(
            "portfolio_id", "instrument_id", pl.min_horizontal(-pl.col("quantity"), pl.col("open")).alias("quantity"))
        priced = lot_costs.filter(pl.col("note").is_null())
        sells = sells.join(priced.select("portfolio_id", "instrument_id").unique(), on=["portfolio_id", "instrument_id"], how="semi")
        sales = select_lots(priced, sells.filter(pl.col("quantity") > 0)).with_columns(pl.lit(run_id).alias("run_id"))
    solve = np.array([o.solve_seconds for o in outcomes]) if outcomes else np.zeros(0)
    done = [o for o in outcomes if o.outcome == "REBALANCE"]
    liquidating = set(portfolios.filter(pl.col("status") == "LIQUIDATING")["portfolio_id"].to_list())
    steered = [o for o in done if o.portfolio_id not in liquidating]  # toward targets: where drift means something
    runs = pl.DataFrame([{
        "run_id": run_id, "as_of": as_of, "decided_at": moment, "started_at": started, "portfolios": decisions.height,
        "triggered": decisions.filter(pl.col("top_priority").is_not_null()).height, "rebalanced": len(done),
        "no_benefit": counts.get("NO_BENEFIT", 0) + counts.get("NOTHING_TO_TRADE", 0), "infeasible": counts["INFEASIBLE"],
        "rejected": counts.get("REJECTED", 0), "skipped": decisions.filter(pl.col("action") == "SKIP").height,
        "shapes_compiled": cache.builds - builds_before,
        "solve_seconds_p50": float(np.percentile(solve, 50)) if solve.size else None,
        "solve_seconds_p99": float(np.percentile(solve, 99)) if solve.size else None,
        "seconds": time.perf_counter() - clock, "orders": netted.orders.height,
        "gross_notional": float(recommendations["trade_value"].abs().sum()) if recommendations.height else 0.0,
        "estimated_cost": float(recommendations.select(pl.sum_horizontal(
            "estimated_spread", "estimated_commission", "estimated_impact", "estimated_tax").sum()).item()) if recommendations.height else 0.0,
        "average_drift_before": float(np.mean([o.drift_before for o in steered])) if steered else None,
        "average_drift_after": float(np.mean([o.drift_after for o in steered])) if steered else None,
    }], schema=contract.REBALANCE_RUNS_SCHEMA)
    context.log.info(f"rebalancing: {counts}")
    sources = ["gold/rebalance_decisions", "gold/risk_model", "gold/drift_summary", silver_table("positions"), silver_table("lots"),
               "bronze/targets", "bronze/prices"]
    tables = {"recommendations": recommendations, "rebalance_analysis": analysis, "lot_sales": sales, "orders": netted.orders,
              "order_allocations": netted.allocations, "crossings": netted.crossings, "rebalance_runs": runs}
    for name, frame in tables.items():
        meta = _write(context, lake, name, frame, sources, run_id=run_id)
        if name == "rebalance_runs":
            meta |= {"outcomes": dg.MetadataValue.json(counts), "seconds": float(runs["seconds"][0])}
        yield dg.MaterializeResult(asset_key=gold_key(name), metadata=meta)


@dg.multi_asset(
    specs=[
        dg.AssetSpec(gold_key("execution_quality"), description="Per order allocation: later trades matched FIFO within the horizon, "
                     "fill ratio, average price, slippage against the decision price, realised against estimated cost.",
                     kinds={"polars", "delta"}, deps=[gold_key("order_allocations"), gold_key("orders"), silver_key("trades")]),
        dg.AssetSpec(gold_key("execution_summary"), description="Per rebalance run: share of allocations fully executed (goal > 95%), "
                     "average fill ratio, slippage, costs, and average drift before and after (goal < 2%).",
                     kinds={"polars", "delta"}, deps=[gold_key("execution_quality"), gold_key("drift_summary"),
                                                       gold_key("rebalance_analysis")]),
    ],
    group_name=GROUP,
)
def execution_quality(context: dg.AssetExecutionContext, lake: LakeResource):
    allocations = _read(lake, "order_allocations").filter(pl.col("order_id").is_not_null())
    orders = _read(lake, "orders").select("run_id", "order_id", "price")
    # orders are made on the state of ``decided_at``: later trades can fill them (runs written
    # before that column existed fall back to their start)
    runs = _read(lake, "rebalance_runs").select("run_id", pl.coalesce("decided_at", "started_at").alias("created_at"))
    recs = _read(lake, "recommendations").group_by("run_id", "portfolio_id", "instrument_id").agg(
        pl.sum_horizontal("estimated_spread", "estimated_commission", "estimated_impact").sum().alias("cost_base"),
        pl.col("trade_value").abs().sum().alias("value_base"))
    intended = (
        allocations.join(orders, on=["run_id", "order_id"], how="left").join(runs, on="run_id", how="left")
        .join(recs, on=["run_id", "portfolio_id", "instrument_id"], how="left")
        .group_by("order_id", "run_id", "portfolio_id", "instrument_id", "side")
        .agg(pl.col("external_quantity").sum().alias("quantity"), pl.col("price").first().alias("decision_price"),
             pl.col("created_at").first(), pl.col("cost_base").first(), pl.col("value_base").first(),
             pl.col("quantity").sum().alias("_all"))
        # the estimated cost in local currency: the base estimate scaled by local notional / base value of this part
        .with_columns((pl.col("cost_base").fill_null(0.0) * pl.col("quantity") * pl.col("decision_price")
                       / pl.when(pl.col("value_base") > 0).then(pl.col("value_base")).otherwise(None)).fill_null(0.0)
                      .alias("estimated_cost"))
        .filter(pl.col("quantity") > 0)
        .select("order_id", "run_id", "portfolio_id", "instrument_id", "side", "quantity", "decision_price", "created_at", "estimated_cost")
    )
    if intended.height:
        first = intended["created_at"].min()
        # only the ordered portfolios' trades can fill (fills match within a portfolio): the
        # filter prunes the files of the others, where the time alone scanned every trade
        trades = read_silver(lake, "trades", where=in_values("portfolio_id", intended["portfolio_id"]) & (pl.col("trade_ts") >= first))
        quality = build_execution_quality(intended, execution_fills(intended, trades))
    else:
        quality = pl.DataFrame(schema=contract.EXECUTION_QUALITY_SCHEMA)
    # drift before and after in one measure (gold drift_summary's figure): at the decision, and
    # now; a LIQUIDATING book moves to cash, away from its model targets, so it is left out
    liquidating = read_bronze(lake, "portfolios").filter(pl.col("status") == "LIQUIDATING").select("portfolio_id")
    measured = quality.select("run_id", "portfolio_id").unique().join(liquidating, on="portfolio_id", how="anti")
    before = _read(lake, "rebalance_analysis").filter(pl.col("scenario") == "do_nothing").select(
        "run_id", "portfolio_id", pl.col("drift_at_decision").alias("drift")).join(measured, on=["run_id", "portfolio_id"])
    after = measured.join(read_gold(lake, "drift_summary").select("portfolio_id", "drift"), on="portfolio_id", how="inner")
    summary = execution_summary(quality, before, after)
    sources = ["gold/order_allocations", "gold/orders", silver_table("trades")]
    yield dg.MaterializeResult(asset_key=gold_key("execution_quality"), metadata=_write(context, lake, "execution_quality", quality, sources))
    yield dg.MaterializeResult(asset_key=gold_key("execution_summary"), metadata=_write(context, lake, "execution_summary", summary, sources))


REBALANCING_ASSETS = [rebalance_triggers, rebalancing, execution_quality]
