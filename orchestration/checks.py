"""Asset checks: the invariants the state must satisfy after every run."""


import dagster as dg
import polars as pl

from assets.analytics import gold_key, read_gold
from assets.publish import ingestion_log_frame
from assets.resources import LakeResource, PipelineSettings
from assets.state import read_silver, silver_key

NAV_TOLERANCE = 0.01  # one cent, in the base currency
QUANTITY_TOLERANCE = 1e-6


@dg.asset_check(
    asset=silver_key("daily_valuations"),
    description="For every portfolio and day, NAV = cash + long market value + short market value; "
    "and on the state's date the NAV from daily valuations (built from trade quantities) equals "
    "the NAV of portfolio_state (built from lots and positions).",
    additional_deps=[silver_key("portfolio_state")],
)
def nav_equals_cash_plus_market_value(lake: LakeResource) -> dg.AssetCheckResult:
    daily = read_silver(lake, "daily_valuations")
    state = read_silver(lake, "portfolio_state")
    identity = daily.filter(
        (pl.col("nav") - (pl.col("cash") + pl.col("long_market_value") + pl.col("short_market_value"))).abs()
        > NAV_TOLERANCE
    )
    latest = daily.filter(pl.col("date") == pl.col("date").max().over("portfolio_id"))
    paths = (
        state.join(latest, on="portfolio_id", how="inner")
        .filter(pl.col("as_of").dt.date() == pl.col("date"))  # the same day on both sides
        .filter((pl.col("total_value") - pl.col("nav")).abs() > NAV_TOLERANCE)
        .select("portfolio_id", "date", "nav", "total_value")
    )
    return dg.AssetCheckResult(
        passed=identity.height == 0 and paths.height == 0,
        metadata={
            "rows_checked": daily.height,
            "identity_breaks": identity.height,
            "state_vs_daily_breaks": paths.height,
            "examples": str(paths.head(5)) if paths.height else "none",
        },
    )


@dg.asset_check(
    asset=silver_key("lots"),
    description="No lot below zero, and each portfolio's open long (short) quantity of an "
    "instrument equals its accepted buys minus sells (short sales minus covers).",
    additional_deps=[silver_key("trades")],
)
def lots_reconcile_to_trades(lake: LakeResource) -> dg.AssetCheckResult:
    lots = read_silver(lake, "lots", ["portfolio_id", "instrument_id", "position_type", "quantity"])
    trades = read_silver(lake, "trades", ["portfolio_id", "instrument_id", "side", "quantity"])
    negative = lots.filter(pl.col("quantity") < -QUANTITY_TOLERANCE).height
    from_lots = lots.group_by("portfolio_id", "instrument_id", "position_type").agg(pl.col("quantity").sum().alias("lots_qty"))
    from_trades = trades.group_by("portfolio_id", "instrument_id").agg(
        long_qty=pl.when(pl.col("side") == "BUY").then(pl.col("quantity")).when(pl.col("side") == "SELL").then(-pl.col("quantity")).otherwise(0.0).sum(),
        short_qty=pl.when(pl.col("side") == "SELL_SHORT").then(pl.col("quantity")).when(pl.col("side") == "BUY_TO_COVER").then(-pl.col("quantity")).otherwise(0.0).sum(),
    ).unpivot(index=["portfolio_id", "instrument_id"], variable_name="position_type", value_name="trades_qty").with_columns(
        pl.col("position_type").replace({"long_qty": "LONG", "short_qty": "SHORT"})
    )
    mismatched = from_trades.join(from_lots, on=["portfolio_id", "instrument_id", "position_type"], how="full", coalesce=True).filter(
        (pl.col("trades_qty").fill_null(0.0) - pl.col("lots_qty").fill_null(0.0)).abs() > QUANTITY_TOLERANCE
    )
    return dg.AssetCheckResult(
        passed=negative == 0 and mismatched.height == 0,
        metadata={"lots": lots.height, "negative_lots": negative, "mismatched_keys": mismatched.height},
    )


@dg.asset_check(
    asset=dg.AssetKey(["publish", "warehouse"]),
    description="The share of rows quarantined (validation and ledger), of all rows read in the "
    "current version of every landing file, stays under settings.quarantine_max_share.",
)
def quarantine_share_under_limit(lake: LakeResource, settings: PipelineSettings) -> dg.AssetCheckResult:
    log = ingestion_log_frame(lake)
    current = log.sort("version").group_by("kind", "source_file").last()
    rows_read = int(current["rows_read"].sum() or 0)
    ledger_rows = read_silver(lake, "ledger_rejections", ["kind"]).height
    quarantined = int(current["rows_quarantined"].sum() or 0) + ledger_rows
    share = quarantined / rows_read if rows_read else 0.0
    return dg.AssetCheckResult(
        passed=share <= settings.quarantine_max_share,
        severity=dg.AssetCheckSeverity.WARN,
        metadata={
            "rows_read": rows_read,
            "rows_quarantined": quarantined,
            "share": round(share, 6),
            "limit": settings.quarantine_max_share,
            "files_quarantined_whole": int((current["status"] == "QUARANTINED").sum()),
        },
    )


WEIGHT_TOLERANCE = 1e-9
EFFECT_TOLERANCE = 1e-9


@dg.asset_check(
    asset=gold_key("attribution"),
    description="Per portfolio and day, the portfolio's sector weights sum to one (cash included) and so do "
    "the benchmark's.",
)
def weights_sum_to_one(lake: LakeResource) -> dg.AssetCheckResult:
    rows = read_gold(lake, "attribution")
    sums = rows.group_by("portfolio_id", "date").agg(pl.col("portfolio_weight").sum(), pl.col("benchmark_weight").sum())
    off = sums.filter(
        ((pl.col("portfolio_weight") - 1).abs() > WEIGHT_TOLERANCE) | ((pl.col("benchmark_weight") - 1).abs() > WEIGHT_TOLERANCE)
    )
    return dg.AssetCheckResult(
        passed=off.height == 0,
        metadata={"portfolio_days": sums.height, "off": off.height, "examples": str(off.head(5)) if off.height else "none"},
    )


@dg.asset_check(
    asset=gold_key("attribution_summary"),
    description="For every portfolio, period and linking method, the linked effects sum to the excess return "
    "(R - B): the residual is below 1e-9.",
)
def attribution_effects_sum_to_excess(lake: LakeResource) -> dg.AssetCheckResult:
    summary = read_gold(lake, "attribution_summary").filter(pl.col("residual").is_not_null())
    worst = float(summary["residual"].abs().max() or 0.0)
    return dg.AssetCheckResult(
        passed=worst <= EFFECT_TOLERANCE,
        metadata={"rows": summary.height, "largest_residual": worst},
    )


ASSET_CHECKS = [
    nav_equals_cash_plus_market_value,
    lots_reconcile_to_trades,
    quarantine_share_under_limit,
    weights_sum_to_one,
    attribution_effects_sum_to_excess,
]
