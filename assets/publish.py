"""Publish: the analysts' ``warehouse.duckdb``, rebuilt from the lake in one atomic swap."""

from collections.abc import Callable

import dagster as dg
import polars as pl

from assets.analytics import ANALYTICS_TABLES, GOLD_SCHEMAS, gold_key, gold_table
from assets.rebalancing import SCHEMAS as REBALANCING_SCHEMAS
from assets.ingest import bronze_schema_of, bronze_table, ingestion_log_table, quarantine_table
from assets.resources import LakeResource, WarehouseResource
from assets.state import SILVER_SCHEMAS, read_silver, silver_key, silver_table
from transforms import contract

# Silver tables published under their own names.
SILVER_PUBLISHED = (
    "portfolio_state",
    "positions",
    "lots",
    "realized_pnl",
    "cash_ledger",
    "daily_valuations",
    "trades",
)
# Bronze kinds published under their own names (reference and market data, as validated).
BRONZE_PUBLISHED = ("prices", "instruments", "portfolios", "fx_rates", "cash_flows", "targets", "benchmarks", "signals")

# Views and macros an analyst gets with the file (see README for examples).
WAREHOUSE_STATEMENTS = [
    """CREATE MACRO portfolio_positions(pid) AS TABLE
       SELECT * FROM positions WHERE portfolio_id = pid ORDER BY abs(market_value) DESC""",
]


def quarantine_frame(lake: LakeResource) -> pl.DataFrame:
    """Every quarantined row and file: bronze validation of all kinds plus ledger rejections."""
    parts = [lake.read(quarantine_table(kind), contract.QUARANTINE_SCHEMA) for kind in contract.INGEST_ORDER]
    parts.append(read_silver(lake, "ledger_rejections", list(contract.QUARANTINE_SCHEMA)))
    return pl.concat(parts).sort("kind", "source_file", "source_row", nulls_last=True)


def ingestion_log_frame(lake: LakeResource) -> pl.DataFrame:
    """The ingestion log of every kind (one row per file version ingested)."""
    parts = [lake.read(ingestion_log_table(kind), contract.INGESTION_LOG_SCHEMA) for kind in contract.INGEST_ORDER]
    return pl.concat(parts).sort("ingested_at", "kind", "source_file")


def warehouse_tables(lake: LakeResource) -> dict[str, Callable[[], object]]:
    """Loaders of what the warehouse publishes, by published name: lake tables as Arrow
    datasets that DuckDB streams (never whole in memory), the two unions as frames."""

    def table(path: str, schema: dict[str, pl.DataType]) -> Callable[[], object]:
        return lambda: lake.dataset(path) if lake.exists(path) else pl.DataFrame(schema=schema)

    tables: dict[str, Callable[[], object]] = {
        name: table(silver_table(name), SILVER_SCHEMAS[name]) for name in SILVER_PUBLISHED
    }
    tables.update({kind: table(bronze_table(kind), bronze_schema_of(kind)) for kind in BRONZE_PUBLISHED})
    tables.update({name: table(gold_table(name), GOLD_SCHEMAS[name]) for name in ANALYTICS_TABLES})
    tables.update({name: table(gold_table(name), schema) for name, schema in REBALANCING_SCHEMAS.items()})
    tables["quarantine"] = lambda: quarantine_frame(lake)
    tables["ingestion_log"] = lambda: ingestion_log_frame(lake)
    return tables


# Rows stored in portfolio order, so DuckDB's zone maps make one portfolio's lookup cheap.
WAREHOUSE_ORDER = {name: "portfolio_id" for name in SILVER_PUBLISHED} | {
    name: "portfolio_id" for name in ANALYTICS_TABLES if "portfolio_id" in GOLD_SCHEMAS[name]
} | {name: "portfolio_id" for name, schema in REBALANCING_SCHEMAS.items() if "portfolio_id" in schema}


@dg.asset(
    key=dg.AssetKey(["publish", "warehouse"]),
    deps=[silver_key(n) for n in SILVER_PUBLISHED]
    + [silver_key("ledger_rejections")]
    + [dg.AssetKey(["bronze", k]) for k in contract.INGEST_ORDER]
    + [gold_key(name) for name in ANALYTICS_TABLES]
    + [gold_key(name) for name in REBALANCING_SCHEMAS],
    group_name="publish",
    kinds={"duckdb"},
    description="`warehouse.duckdb` for analysts: state, positions, lots, realised P&L, cash, daily "
    "valuations, trades, reference and market data, the analytics (returns, performance, "
    "exposures, cash and margin, drift, risk, attribution), rebalancing (triggers, recommendations, orders, execution quality), quarantine and the ingestion log. Rebuilt "
    "under a temporary name and swapped in atomically.",
)
def warehouse(lake: LakeResource, warehouse: WarehouseResource):
    counts = warehouse.publish(warehouse_tables(lake), WAREHOUSE_STATEMENTS, WAREHOUSE_ORDER)
    return dg.MaterializeResult(
        metadata={
            "path": dg.MetadataValue.path(warehouse.path),
            "tables": dg.MetadataValue.json(counts),
            "dagster/row_count": sum(counts.values()),
        }
    )


PUBLISH_ASSETS = [warehouse]
