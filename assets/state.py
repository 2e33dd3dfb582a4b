"""Silver: the state of every portfolio, rebuilt in full from bronze on each run.

Thin assets over ``transforms``: the ledger (accepted trades, lots, realised P&L, rejections),
the cash ledger, positions, daily valuations and the one-row-per-portfolio state. Each commit
records the versions of the tables it was built from, so any silver version can be traced
back to the exact bronze input.
"""


import tempfile
from datetime import datetime
from pathlib import Path

import dagster as dg
import polars as pl
import pyarrow.dataset as ds

from assets.ingest import bronze_schema_of, bronze_table
from assets.metadata import markdown_preview, table_metadata
from assets.resources import LakeResource, PipelineSettings
from transforms import contract
from transforms.book import BookInputs, ledger_quarantine, moment_of
from transforms.cash import cash_ledger as build_cash_ledger
from transforms.lots import build_ledger
from transforms.positions import positions as build_positions
from transforms.shards import map_shards, portfolio_shards
from transforms.state import portfolio_state as build_portfolio_state
from transforms.valuations import daily_valuations as build_daily_valuations

GROUP = "state"
# Trades per ledger shard: bounds the ledger's memory (about 2 GB per million trades of a
# book with many wash-sale splits) whatever the size of the book.
LEDGER_SHARD_TRADES = 1_000_000
SILVER_SCHEMAS: dict[str, dict[str, pl.DataType]] = {
    "trades": {**contract.LANDING_SCHEMAS["trades"], **contract.LINEAGE},
    "lots": contract.LOTS_SCHEMA,
    "realized_pnl": contract.REALIZED_PNL_SCHEMA,
    "ledger_rejections": contract.QUARANTINE_SCHEMA,
    "cash_ledger": contract.CASH_LEDGER_SCHEMA,
    "positions": contract.POSITIONS_SCHEMA,
    "daily_valuations": contract.DAILY_VALUATIONS_SCHEMA,
    "portfolio_state": contract.PORTFOLIO_STATE_SCHEMA,
}


def silver_table(name: str) -> str:
    return f"silver/{name}"


def silver_key(name: str) -> dg.AssetKey:
    return dg.AssetKey(["silver", name])


def bronze_key(kind: str) -> dg.AssetKey:
    return dg.AssetKey(["bronze", kind])


def read_bronze(lake: LakeResource, kind: str) -> pl.DataFrame:
    return lake.read(bronze_table(kind), bronze_schema_of(kind))


def read_silver(
    lake: LakeResource, name: str, columns: list[str] | None = None, where: pl.Expr | None = None
) -> pl.DataFrame:
    """Silver table ``name`` (typed by its contract), only ``columns`` and rows ``where`` if
    given: both are pushed down to the Delta scan, so large tables are never read whole."""
    schema = SILVER_SCHEMAS[name]
    frame = lake.scan(silver_table(name), schema)
    if where is not None:
        frame = frame.filter(where)
    columns = columns or list(schema)
    return frame.select(columns).cast({c: schema[c] for c in columns}).collect()


def read_book_inputs(lake: LakeResource, accepted_trades: bool = False) -> BookInputs:
    """The frames the state is built from: bronze trades (for the ledger, and for a
    point-in-time rebuild), or with ``accepted_trades`` the trades the ledger accepted."""
    return BookInputs(
        trades=read_silver(lake, "trades") if accepted_trades else read_bronze(lake, "trades"),
        portfolios=read_bronze(lake, "portfolios"),
        instruments=read_bronze(lake, "instruments"),
        prices=read_bronze(lake, "prices"),
        fx_rates=read_bronze(lake, "fx_rates"),
        cash_flows=read_bronze(lake, "cash_flows"),
    )


def current_moment(lake: LakeResource) -> datetime:
    """The moment the current state describes (``transforms.book.moment_of``), from three
    maxima pushed down to the Delta scans: no table is read whole for it."""

    def last(table: str, schema: dict[str, pl.DataType], column: str):
        return lake.scan(table, schema).select(pl.col(column).max()).collect().item()

    return moment_of(
        last(bronze_table("prices"), bronze_schema_of("prices"), "date"),
        last(silver_table("trades"), SILVER_SCHEMAS["trades"], "trade_ts"),
        last(bronze_table("cash_flows"), bronze_schema_of("cash_flows"), "ts"),
    )


def input_versions(lake: LakeResource, tables: list[str]) -> str:
    """``table@version`` for each input table, recorded in the commit for lineage."""
    return ",".join(f"{t}@{lake.version(t)}" for t in tables)


def conform(name: str, frame: pl.DataFrame) -> pl.DataFrame:
    """``frame`` with exactly the columns and types of silver table ``name``."""
    schema = SILVER_SCHEMAS[name]
    return frame.select(list(schema)).cast(schema)


def write_table(
    context: dg.AssetExecutionContext, lake: LakeResource, table: str, frame: pl.DataFrame, sources: list[str]
) -> dict:
    """Overwrite lake ``table`` with ``frame``, recording the input versions; return metadata."""
    version = lake.write(table, frame, run_id=context.run.run_id, commit_metadata={"inputs": input_versions(lake, sources)})
    return {**table_metadata(frame), "delta_version": version}


def write_silver(
    context: dg.AssetExecutionContext, lake: LakeResource, name: str, frame: pl.DataFrame, sources: list[str]
) -> dict:
    """Overwrite ``silver/<name>`` with ``frame`` (cast to its contract schema); return metadata."""
    return write_table(context, lake, silver_table(name), conform(name, frame), sources)


LEDGER_OUTPUTS = {
    "trades": "Trades the ledger accepted (bronze trades minus oversells and unknown lots).",
    "lots": "Every tax lot ever opened (long and short), with remaining quantity, cost basis, "
    "wash-sale adjustment and holding start, by the portfolio's lot method.",
    "realized_pnl": "Realised P&L per closing trade and lot: proceeds, basis, disallowed wash-sale "
    "loss, term (SHORT <= 1 year < LONG).",
    "ledger_rejections": "Trades the ledger refused (a SELL beyond the long quantity, a cover beyond "
    "the short, an unknown lot), as quarantine rows with the reason.",
}


@dg.multi_asset(
    specs=[
        dg.AssetSpec(
            silver_key(name),
            deps=[bronze_key("trades"), bronze_key("portfolios")],
            description=description,
            kinds={"polars", "delta"},
        )
        for name, description in LEDGER_OUTPUTS.items()
    ],
    group_name=GROUP,
)
def ledger(context: dg.AssetExecutionContext, lake: LakeResource, settings: PipelineSettings):
    """Tax-lot ledger over all bronze trades, computed shard by shard of portfolios.

    ``settings.shard_workers`` shards are built at once (``transforms.shards.map_shards``).
    Each shard's outputs are staged as Parquet and every table is then streamed into Delta in
    one commit, so memory holds a few shards (not the whole book) and readers never see half a
    table.
    """
    trades = read_bronze(lake, "trades")
    portfolios = read_bronze(lake, "portfolios")
    shards = portfolio_shards(trades, LEDGER_SHARD_TRADES)
    sources = [bronze_table("trades"), bronze_table("portfolios")]
    rows = dict.fromkeys(LEDGER_OUTPUTS, 0)
    previews: dict[str, pl.DataFrame] = {}

    def build(ids: pl.Series):
        shard_ids = ids.implode()
        return build_ledger(
            trades.filter(pl.col("portfolio_id").is_in(shard_ids)),
            portfolios.filter(pl.col("portfolio_id").is_in(shard_ids)),
        )

    with tempfile.TemporaryDirectory(prefix="ledger-") as staging:
        built = map_shards(build, shards, settings.shard_workers)
        for number, (ids, result) in enumerate(zip(shards, built)):
            rejections = ledger_quarantine(result.rejected_trades).with_columns(
                pl.lit(context.run.run_id).alias("run_id")
            )
            for name, frame in (
                ("trades", result.accepted_trades),
                ("lots", result.lots),
                ("realized_pnl", result.realized_pnl),
                ("ledger_rejections", rejections),
            ):
                frame = conform(name, frame)
                folder = Path(staging) / name
                folder.mkdir(exist_ok=True)
                frame.write_parquet(folder / f"{number:05d}.parquet")
                rows[name] += frame.height
                previews.setdefault(name, frame.head(10))
            context.log.info(f"ledger shard {number + 1}/{len(shards)}: {ids.len()} portfolios")
            del result, rejections, frame  # written: free it while the next shards are built
        for name in LEDGER_OUTPUTS:
            folder = Path(staging) / name
            data = (
                ds.dataset(folder, format="parquet").scanner().to_reader()
                if folder.is_dir()
                else pl.DataFrame(schema=SILVER_SCHEMAS[name])
            )
            version = lake.write(
                silver_table(name), data, run_id=context.run.run_id,
                commit_metadata={"inputs": input_versions(lake, sources), "shards": str(len(shards))},
            )
            yield dg.MaterializeResult(
                asset_key=silver_key(name),
                metadata={
                    "dagster/row_count": rows[name],
                    "preview": markdown_preview(previews.get(name, pl.DataFrame(schema=SILVER_SCHEMAS[name]))),
                    "delta_version": version,
                    "shards": len(shards),
                },
            )


@dg.asset(
    key=silver_key("cash_ledger"),
    deps=[silver_key("trades"), bronze_key("cash_flows"), bronze_key("instruments")],
    group_name=GROUP,
    kinds={"polars", "delta"},
    description="Every cash movement per portfolio and currency (trade settlements with fees, "
    "deposits, withdrawals, dividends, interest, fees) with its settle date.",
)
def cash_ledger(context: dg.AssetExecutionContext, lake: LakeResource):
    frame = build_cash_ledger(read_silver(lake, "trades"), read_bronze(lake, "cash_flows"), read_bronze(lake, "instruments"))
    sources = [silver_table("trades"), bronze_table("cash_flows"), bronze_table("instruments")]
    return dg.MaterializeResult(metadata=write_silver(context, lake, "cash_ledger", frame, sources))


@dg.asset(
    key=silver_key("positions"),
    deps=[silver_key("lots"), silver_key("cash_ledger")] + [bronze_key(k) for k in ("prices", "fx_rates", "instruments", "portfolios")],
    group_name=GROUP,
    kinds={"polars", "delta"},
    description="Current positions per portfolio (LONG, SHORT and one CASH row per currency): "
    "quantity, cost basis, average cost, market value, unrealised P&L and weight in the base currency.",
)
def positions(context: dg.AssetExecutionContext, lake: LakeResource):
    moment = current_moment(lake)
    frame = build_positions(
        read_silver(lake, "lots", where=pl.col("status") == "OPEN"),
        read_silver(lake, "cash_ledger"),
        read_bronze(lake, "prices"),
        read_bronze(lake, "fx_rates"),
        read_bronze(lake, "instruments"),
        read_bronze(lake, "portfolios"),
        moment,
    )
    sources = [silver_table("lots"), silver_table("cash_ledger"), bronze_table("prices"), bronze_table("fx_rates")]
    meta = write_silver(context, lake, "positions", frame, sources)
    return dg.MaterializeResult(metadata={**meta, "as_of": moment.isoformat()})


@dg.asset(
    key=silver_key("daily_valuations"),
    deps=[silver_key("trades"), silver_key("cash_ledger"), bronze_key("prices"), bronze_key("fx_rates")],
    group_name=GROUP,
    kinds={"polars", "delta"},
    description="NAV, cash (settled and pending), long and short market value and external flows "
    "per portfolio and business day of the price calendar.",
)
def daily_valuations(context: dg.AssetExecutionContext, lake: LakeResource):
    inputs = read_book_inputs(lake, accepted_trades=True)
    frame = build_daily_valuations(
        inputs.trades, read_silver(lake, "cash_ledger"), inputs.prices, inputs.fx_rates, inputs.instruments, inputs.portfolios
    )
    sources = [silver_table("trades"), silver_table("cash_ledger"), bronze_table("prices"), bronze_table("fx_rates")]
    return dg.MaterializeResult(metadata=write_silver(context, lake, "daily_valuations", frame, sources))


@dg.asset(
    key=silver_key("portfolio_state"),
    deps=[silver_key("positions"), silver_key("realized_pnl"), silver_key("cash_ledger")] + [bronze_key(k) for k in ("fx_rates", "instruments", "portfolios")],
    group_name=GROUP,
    kinds={"polars", "delta"},
    description="One row per portfolio: total value (NAV), cash, long/short market value, "
    "unrealised and realised P&L, weights, status and the moment the state describes.",
)
def portfolio_state(context: dg.AssetExecutionContext, lake: LakeResource):
    moment = current_moment(lake)
    frame = build_portfolio_state(
        read_silver(lake, "positions"),
        read_silver(lake, "realized_pnl", ["portfolio_id", "instrument_id", "close_ts", "realized_pnl"]),
        read_bronze(lake, "portfolios"),
        moment,
        read_bronze(lake, "fx_rates"),
        instruments=read_bronze(lake, "instruments"),
        cash_ledger=read_silver(lake, "cash_ledger"),
    )
    sources = [silver_table("positions"), silver_table("realized_pnl"), bronze_table("portfolios")]
    meta = write_silver(context, lake, "portfolio_state", frame, sources)
    return dg.MaterializeResult(metadata={**meta, "total_nav": float(frame["total_value"].sum() or 0.0)})


STATE_ASSETS = [ledger, cash_ledger, positions, daily_valuations, portfolio_state]
