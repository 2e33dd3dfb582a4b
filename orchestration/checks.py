"""Asset checks: the invariants the state must satisfy after every run, checked on the
portfolios the run changed.

Scope of a check (``check_scope``): the per-portfolio tables record, in each Delta commit, the
portfolios the commit replaced (``transforms.changes.CHANGED_KEY``; a commit without it
rewrote every portfolio). A check of such tables reads the latest data-changing commit of each
table it compares (commits that change no row, ``NEUTRAL_OPERATIONS`` such as OPTIMIZE, are
passed over) and checks the union of the portfolios they changed, reading only those
portfolios' rows (the filter is pushed down to the Delta scan). When one of them rewrote every
portfolio (a full build, or a table with no history), every portfolio is checked. A portfolio
the latest commit did not touch was checked when it was last written, and its rows have not
changed since, so checking it again proves nothing new; over-checking is always safe.

Every scoped check reports ``scope`` (what was checked and why), ``portfolios_checked`` and
``portfolios`` (the first ``LISTED_PORTFOLIOS`` ids checked) in its metadata.

Invariants:
- NAV identity: per portfolio and day, nav = cash + long_market_value + short_market_value
  (within ``NAV_TOLERANCE``); and on the state's date, portfolio_state.total_value = nav of the
  portfolio's latest daily valuation.
- Lots: no remaining quantity below -``QUANTITY_TOLERANCE``; per (portfolio, instrument),
  open LONG quantity = sum(BUY) - sum(SELL) and open SHORT quantity = sum(SELL_SHORT) -
  sum(BUY_TO_COVER) over the accepted trades.
- Quarantine share (book-wide, not scoped): quarantined rows / rows read <= the settings' limit.
- Attribution (gold, scoped the same way): sector weights sum to one per portfolio and day;
  linked effects sum to the excess return (|residual| <= ``EFFECT_TOLERANCE``).
"""


from dataclasses import dataclass

import dagster as dg
import polars as pl

from assets.analytics import gold_key, gold_table, read_gold
from assets.publish import ingestion_log_frame
from assets.resources import LakeResource, PipelineSettings
from assets.scope import last_build, portfolio_filter
from assets.state import SILVER_SCHEMAS, read_silver, silver_key, silver_table
from transforms.changes import changed_portfolios

NAV_TOLERANCE = 0.01  # one cent, in the base currency
QUANTITY_TOLERANCE = 1e-6
LISTED_PORTFOLIOS = 20


@dataclass(frozen=True)
class CheckScope:
    """The portfolios a check covers (``None``: every one) and why."""

    portfolios: frozenset[str] | None
    reason: str

    @property
    def full(self) -> bool:
        return self.portfolios is None

    def where(self, column: str = "portfolio_id") -> pl.Expr | None:
        """The row filter of the scope (``None``: every row)."""
        return portfolio_filter(self.portfolios, column)

    def metadata(self, checked: pl.Series | None = None) -> dict:
        """``scope``, ``portfolios_checked`` and ``portfolios``: for a full scope, the distinct
        ids in ``checked`` (the portfolio column of the rows read)."""
        if self.portfolios is None:
            ids = sorted(checked.drop_nulls().unique().to_list()) if checked is not None else []
            text = f"every portfolio ({self.reason})"
        else:
            ids = sorted(self.portfolios)
            text = f"{len(ids)} portfolio(s) changed by the latest commit ({self.reason})"
        listed = ", ".join(ids[:LISTED_PORTFOLIOS]) + (" …" if len(ids) > LISTED_PORTFOLIOS else "")
        return {"scope": text, "portfolios_checked": len(ids), "portfolios": listed or "none"}


def latest_change(lake: LakeResource, table: str) -> frozenset[str] | None:
    """The portfolios the latest data-changing commit of lake ``table`` (``assets.scope.last_build``)
    replaced, ``None`` when it rewrote every portfolio (no ``CHANGED_KEY``) or when there is none.
    Rule in the module docstring."""
    last = last_build(lake, table)
    return None if last is None else changed_portfolios([last])


def check_scope(lake: LakeResource, tables: list[str]) -> CheckScope:
    """The scope of a check comparing lake ``tables``: the union of the portfolios their latest
    commits changed, or every portfolio when one of them rewrote every portfolio."""
    union: set[str] = set()
    for table in tables:
        changed = latest_change(lake, table)
        if changed is None:
            return CheckScope(None, f"the latest commit of {table} rewrote every portfolio")
        union |= changed
    return CheckScope(frozenset(union), "latest commit of " + ", ".join(tables))


@dg.asset_check(
    asset=silver_key("daily_valuations"),
    description="For every portfolio and day, NAV = cash + long market value + short market value; "
    "and on the state's date the NAV from daily valuations (built from trade quantities) equals "
    "the NAV of portfolio_state (built from lots and positions). Checks the portfolios the latest "
    "commits of both tables changed (every portfolio after a full build).",
    additional_deps=[silver_key("portfolio_state")],
)
def nav_equals_cash_plus_market_value(lake: LakeResource) -> dg.AssetCheckResult:
    scope = check_scope(lake, [silver_table("daily_valuations"), silver_table("portfolio_state")])
    daily = read_silver(lake, "daily_valuations", where=scope.where())
    state = read_silver(lake, "portfolio_state", ["portfolio_id", "as_of", "total_value"], where=scope.where())
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
            **scope.metadata(pl.concat([daily["portfolio_id"], state["portfolio_id"]])),
            "rows_checked": daily.height,
            "identity_breaks": identity.height,
            "state_vs_daily_breaks": paths.height,
            "examples": str(paths.head(5)) if paths.height else "none",
        },
    )


@dg.asset_check(
    asset=silver_key("lots"),
    description="No lot below zero, and each portfolio's open long (short) quantity of an "
    "instrument equals its accepted buys minus sells (short sales minus covers). Checks the "
    "portfolios the latest commits of lots and trades changed (every portfolio after a full build).",
    additional_deps=[silver_key("trades")],
)
def lots_reconcile_to_trades(lake: LakeResource) -> dg.AssetCheckResult:
    scope = check_scope(lake, [silver_table("lots"), silver_table("trades")])
    lots = read_silver(lake, "lots", ["portfolio_id", "instrument_id", "position_type", "quantity"], where=scope.where())
    trades = read_silver(lake, "trades", ["portfolio_id", "instrument_id", "side", "quantity"], where=scope.where())
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
        metadata={
            **scope.metadata(pl.concat([lots["portfolio_id"], trades["portfolio_id"]])),
            "lots": lots.height,
            "negative_lots": negative,
            "mismatched_keys": mismatched.height,
            "examples": str(mismatched.sort("portfolio_id", "instrument_id").head(5)) if mismatched.height else "none",
        },
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
    # a book-wide share, so every portfolio's rejections count: a row count, which the scan
    # answers without reading the table's columns
    ledger_rows = int(lake.scan(silver_table("ledger_rejections"), SILVER_SCHEMAS["ledger_rejections"]).select(pl.len()).collect().item())
    quarantined = int(current["rows_quarantined"].sum() or 0) + ledger_rows
    share = quarantined / rows_read if rows_read else 0.0
    return dg.AssetCheckResult(
        passed=share <= settings.quarantine_max_share,
        severity=dg.AssetCheckSeverity.WARN,
        metadata={
            "scope": "every portfolio (a share of the whole book)",
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
    "the benchmark's. Checks the portfolios the table's latest commit changed (every portfolio after a full build).",
)
def weights_sum_to_one(lake: LakeResource) -> dg.AssetCheckResult:
    scope = check_scope(lake, [gold_table("attribution")])
    rows = read_gold(lake, "attribution", where=scope.where())
    sums = rows.group_by("portfolio_id", "date").agg(pl.col("portfolio_weight").sum(), pl.col("benchmark_weight").sum())
    off = sums.filter(
        ((pl.col("portfolio_weight") - 1).abs() > WEIGHT_TOLERANCE) | ((pl.col("benchmark_weight") - 1).abs() > WEIGHT_TOLERANCE)
    )
    return dg.AssetCheckResult(
        passed=off.height == 0,
        metadata={**scope.metadata(rows["portfolio_id"]), "portfolio_days": sums.height, "off": off.height,
                  "examples": str(off.sort("portfolio_id", "date").head(5)) if off.height else "none"},
    )


@dg.asset_check(
    asset=gold_key("attribution_summary"),
    description="For every portfolio, period and linking method, the linked effects sum to the excess return "
    "(R - B): the residual is below 1e-9. Checks the portfolios the table's latest commit changed "
    "(every portfolio after a full build).",
)
def attribution_effects_sum_to_excess(lake: LakeResource) -> dg.AssetCheckResult:
    scope = check_scope(lake, [gold_table("attribution_summary")])
    summary = read_gold(lake, "attribution_summary", where=scope.where())
    residuals = summary.filter(pl.col("residual").is_not_null())
    worst = float(residuals["residual"].abs().max() or 0.0)
    return dg.AssetCheckResult(
        passed=worst <= EFFECT_TOLERANCE,
        metadata={**scope.metadata(summary["portfolio_id"]), "rows": residuals.height, "largest_residual": worst},
    )


ASSET_CHECKS = [
    nav_equals_cash_plus_market_value,
    lots_reconcile_to_trades,
    quarantine_share_under_limit,
    weights_sum_to_one,
    attribution_effects_sum_to_excess,
]
