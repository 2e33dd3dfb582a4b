"""Silver: the state of every portfolio, rebuilt in full from bronze on each run.

Thin assets over ``transforms``: the ledger (accepted trades, lots, realised P&L, rejections),
the cash ledger, positions, daily valuations and the one-row-per-portfolio state. Each commit
records the versions of the tables it was built from, so any silver version can be traced
back to the exact bronze input.
"""


import tempfile
import time
from dataclasses import replace
from datetime import datetime
from pathlib import Path

import dagster as dg
import polars as pl
import pyarrow.dataset as ds

from assets.ingest import bronze_schema_of, bronze_table, in_predicate
from assets.memo import derived
from assets.metadata import markdown_preview, table_metadata
from assets.resources import LakeResource, PipelineSettings, clustered
from assets.scope import Scope, last_build, plan_scope, rows_since_last_build, write_in_scope
from transforms.filters import in_values
from transforms.changes import INPUTS_KEY, parse_inputs
from transforms.ledger_state import continue_ledger, merge_books, open_lots, replay_needed
from transforms import contract
from transforms.book import BookInputs, Market, ledger_quarantine, moment_of
from transforms.cash import CASH_BALANCES_SCHEMA, cash_balances as build_cash_balances, cash_ledger as build_cash_ledger
from transforms.continued_state import (
    REALIZED_TOTALS_SCHEMA,
    carry_cash_balances,
    carry_realized,
    last_business_day,
    valuation_changes,
    valuations_on_day,
)
from transforms.fx import Currencies, usd_table
from transforms.prices import price_table
from transforms.lots import build_ledger
from transforms.positions import positions as build_positions
from transforms.shards import map_shards, portfolio_shards
from transforms.state import portfolio_state as build_portfolio_state
from transforms.valuations import daily_valuations as build_daily_valuations

GROUP = "state"
# Trades per ledger shard: bounds the ledger's memory (about 2 GB per million trades of a
# book with many wash-sale splits) whatever the size of the book.
LEDGER_SHARD_TRADES = 1_000_000
# The lock the ledger's tables are written under (``LakeResource.writer_lock``)
LEDGER_LOCK = "silver/lots"
SILVER_SCHEMAS: dict[str, dict[str, pl.DataType]] = {
    "trades": {**contract.LANDING_SCHEMAS["trades"], **contract.LINEAGE},
    "lots": contract.LOTS_SCHEMA,
    "realized_pnl": contract.REALIZED_PNL_SCHEMA,
    # the quarantine rows, with the portfolio: the incremental build replaces them by portfolio
    "ledger_rejections": {**contract.QUARANTINE_SCHEMA, "portfolio_id": pl.String},
    "ledger_state": contract.LEDGER_STATE_SCHEMA,
    "ledger_books": contract.LEDGER_BOOKS_SCHEMA,
    "ledger_open_losses": contract.LEDGER_OPEN_LOSSES_SCHEMA,
    "cash_ledger": contract.CASH_LEDGER_SCHEMA,
    "cash_balances": CASH_BALANCES_SCHEMA,
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


# Reference tables read whole by most steps of every run: the process keeps each read while the
# table is unchanged (assets.memo). The trades are not: a full read of them is a full build's.
KEPT_BRONZE = frozenset({"prices", "fx_rates", "instruments", "portfolios", "targets", "benchmarks"})


def read_bronze(lake: LakeResource, kind: str, where: pl.Expr | None = None) -> pl.DataFrame:
    """Bronze table ``kind`` (typed by its contract), only rows ``where`` if given (pushed
    down to the Delta scan). A whole ``KEPT_BRONZE`` table is read once while unchanged."""
    if where is None:
        def read() -> pl.DataFrame:
            return lake.read(bronze_table(kind), bronze_schema_of(kind))

        return derived(lake, [bronze_table(kind)], ("bronze", kind), read) if kind in KEPT_BRONZE else read()
    schema = bronze_schema_of(kind)
    return lake.scan(bronze_table(kind), schema).filter(where).select(list(schema)).cast(schema).collect()


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
    maxima pushed down to the Delta scans: no table is read whole for it. Kept while those
    tables are unchanged (``assets.memo``): a run asks for it seven times."""

    def last(table: str, schema: dict[str, pl.DataType], column: str):
        return lake.scan(table, schema).select(pl.col(column).max()).collect().item()

    tables = [bronze_table("prices"), silver_table("trades"), bronze_table("cash_flows")]
    return derived(lake, tables, ("current_moment",), lambda: moment_of(
        last(tables[0], bronze_schema_of("prices"), "date"),
        last(tables[1], SILVER_SCHEMAS["trades"], "trade_ts"),
        last(tables[2], bronze_schema_of("cash_flows"), "ts"),
    ))


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


def write_scoped(context: dg.AssetExecutionContext, lake: LakeResource, name: str, frame: pl.DataFrame, scope: Scope) -> dict:
    """Replace the scope's portfolios in ``silver/<name>`` with ``frame`` (the whole table for
    a full scope), recording the scope (``Scope.commit_metadata``); return metadata."""
    frame = conform(name, frame)
    version = write_in_scope(lake, silver_table(name), frame, scope, context.run.run_id)
    return {**table_metadata(frame), "delta_version": version, "scope": scope.describe()}


def unchanged(scope: Scope) -> dict:
    """Metadata of a build that had nothing to do (its inputs changed no portfolio)."""
    return {"scope": scope.describe(), "portfolios_rebuilt": 0}


LEDGER_OUTPUTS = {
    "trades": "Trades the ledger accepted (bronze trades minus oversells and unknown lots).",
    "lots": "Every tax lot ever opened (long and short), with remaining quantity, cost basis, "
    "wash-sale adjustment and holding start, by the portfolio's lot method.",
    "realized_pnl": "Realised P&L per closing trade and lot: proceeds, basis, disallowed wash-sale "
    "loss, term (SHORT <= 1 year < LONG).",
    "ledger_rejections": "Trades the ledger refused (a SELL beyond the long quantity, a cover beyond "
    "the short, an unknown lot), as quarantine rows with the reason.",
    "ledger_state": "The ledger's working state: every open lot with its per-unit tax basis (the HIFO "
    "key), wash-sale piece count and absorbed-loss flag; what a later build continues from "
    "(transforms.ledger_state).",
    "ledger_books": "Per book (portfolio, instrument, side): its last event; new trades after it "
    "continue the book, earlier ones replay its portfolio (transforms.ledger_state).",
    "ledger_open_losses": "Loss rows of the last 30 days' sales whose loss no replacement shares have "
    "taken yet: a later BUY in the window takes it (wash-sale rule) when the ledger is continued.",
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
    """Tax-lot ledger over the bronze trades of the portfolios whose trades changed since its
    last build (``assets.scope``), or of every portfolio, computed shard by shard.

    ``settings.shard_workers`` shards are built at once (``transforms.shards.map_shards``).
    Each shard's outputs are staged as Parquet and every table is then streamed into Delta in
    one commit (the whole table, or the scope's portfolios by predicate), so memory holds a
    few shards (not the whole book) and readers never see half a table. An incremental build
    replays only the changed portfolios' trades.
    """
    outputs = [silver_table(name) for name in LEDGER_OUTPUTS]
    with lake.writer_lock(LEDGER_LOCK):
        scope = plan_scope(lake, outputs, [bronze_table("trades")], [bronze_table("portfolios")], incremental=settings.incremental_state)
        context.log.info(f"ledger: {scope.describe()}")
        if scope.empty:
            for name in LEDGER_OUTPUTS:
                yield dg.MaterializeResult(asset_key=silver_key(name), metadata=unchanged(scope))
            return
        continued = None if scope.full else _continued_ledger(context, lake, scope)
        if continued is not None:
            yield from continued
            return
        yield from _sharded_ledger(context, lake, settings, scope)


def _recorded_inputs(lake: LakeResource) -> set[str | None]:
    """The input versions each ledger table's last commit recorded (None: none), distinct."""
    recorded = set()
    for name in LEDGER_OUTPUTS:
        last = last_build(lake, silver_table(name))
        recorded.add(last.get(INPUTS_KEY) if last else None)
    return recorded


def _new_trades(lake: LakeResource, scope: Scope) -> tuple[pl.DataFrame | None, str, str]:
    """``(rows, inputs, why)``: the bronze trades added since every ledger table's last build
    and the input versions that build recorded; or None, and why they cannot be told apart:
    the tables recorded different input versions (a build stopped half-way), or a bronze
    commit since then rewrote rows (a file landed again)."""
    recorded = _recorded_inputs(lake)
    if len(recorded) != 1 or None in recorded:
        return None, "", "the ledger tables were last built from different inputs"
    inputs = recorded.pop()
    trades = bronze_table("trades")
    since = parse_inputs(inputs).get(trades)
    until = scope.versions.get(trades)
    if since is None or until is None or since < 0:
        return None, inputs, "no recorded bronze trades version"
    new = lake.rows_added(trades, since, until)
    if new is None:
        return None, inputs, "a bronze trades commit since the last build rewrote rows"
    schema = bronze_schema_of("trades")
    new = new.with_columns(pl.lit(None, schema[c]).alias(c) for c in schema if c not in new.columns)
    return new.select(list(schema)).cast(schema), inputs, ""


def _continued_ledger(context: dg.AssetExecutionContext, lake: LakeResource, scope: Scope) -> list | None:
    """Apply the bronze trades added since the last build to the scope's portfolios from the
    ledger's state (``transforms.ledger_state.continue_ledger``) rather than replaying their
    history, when every one of them can be continued; None (replay the scope) otherwise.

    Writes, each recording the scope: the new accepted trades and rejections appended; the
    scope's OPEN lots replaced by those of the continued state, the lots the new trades closed
    appended; earlier realised rows whose disallowed loss a new BUY raised replaced, new ones
    appended; the scope's state, open losses and books replaced. Only appends and predicate overwrites:
    delta-rs MERGE and DELETE rewrite string columns as ``string_view``, which PyArrow cannot
    filter (delta-io/delta-rs#4579), and the warehouse reads the tables through PyArrow.
    A build stopped between two commits leaves the tables with different recorded inputs, so
    the next build replays the scope instead (``_new_trades``)."""
    started = time.perf_counter()
    new, inputs_before, why = _new_trades(lake, scope)
    where = scope.where()
    books = read_silver(lake, "ledger_books", where=where) if new is not None else None
    if new is not None:
        early = replay_needed(new, books)
        if early.len():
            new, why = None, f"{early.len()} portfolio(s) have trades at or before their book's last event"
    if new is None:
        context.log.info(f"ledger: replaying the scope ({why})")
        return None
    portfolios = scope.restrict(read_bronze(lake, "portfolios"))
    state, losses = read_silver(lake, "ledger_state", where=where), read_silver(lake, "ledger_open_losses", where=where)
    read_at = time.perf_counter()
    result = continue_ledger(new, portfolios, state, losses)
    # the scope's portfolios without a new row (none, as a rule: the scope is the portfolios
    # the new bronze rows name) keep their state, which the scope's writes replace
    idle = ~pl.col("portfolio_id").is_in(new["portfolio_id"].unique().implode())
    result = replace(result, state=pl.concat([result.state, state.filter(idle)]),
                     open_losses=pl.concat([result.open_losses, losses.filter(idle)]))
    computed_at = time.perf_counter()
    tables = dict(_ledger_tables(result, context.run.run_id))
    run_id, meta = context.run.run_id, {**scope.commit_metadata(), "continued": "true"}
    # a table written in two commits records the earlier inputs in the first: a build stopped
    # between them leaves it unlike the trades (written first, with the new inputs), so the
    # next build replays the scope
    first = {**meta, INPUTS_KEY: inputs_before}
    in_scope = scope.predicate()
    # every open lot of the scope comes from the continued state (the books no new trade
    # touched were not replayed); the replayed books' lots the new trades closed are appended
    closed = conform("lots", tables["lots"]).filter(pl.col("status") == "CLOSED")
    versions = {"trades": lake.write(silver_table("trades"), conform("trades", tables["trades"]), run_id=run_id,
                                     mode="append", commit_metadata=meta)}
    lake.write(silver_table("lots"), open_lots(result.state), run_id=run_id, predicate=f"{in_scope} AND status = 'OPEN'",
               commit_metadata=first)
    versions["lots"] = lake.write(silver_table("lots"), closed, run_id=run_id, mode="append", commit_metadata=meta)
    updates = result.loss_updates
    if updates.height:  # earlier realised rows whose disallowed loss a new BUY raised
        key = ["portfolio_id", "trade_id", "lot_id"]
        sales = updates["trade_id"].unique().sort().to_list()
        earlier = read_silver(lake, "realized_pnl", where=where & in_values("trade_id", sales)).update(
            updates.select(*key, "disallowed_loss", "taxable_pnl"), on=key
        )
        lake.write(silver_table("realized_pnl"), earlier, run_id=run_id,
                   predicate=f"{in_scope} AND {in_predicate('trade_id', sales)}", commit_metadata=first)
    for name in ("realized_pnl", "ledger_rejections"):
        versions[name] = lake.write(silver_table(name), conform(name, tables[name]), run_id=run_id, mode="append",
                                    commit_metadata=meta)
    tables["ledger_books"] = merge_books(books, tables["ledger_books"])
    for name in ("ledger_state", "ledger_open_losses", "ledger_books"):
        versions[name] = lake.write(silver_table(name), conform(name, tables[name]), run_id=run_id, predicate=in_scope,
                                    commit_metadata=meta)
    context.log.info(
        f"ledger: continued {scope.describe()} from {state.height} open lots and {losses.height} open losses: "
        f"{new.height} new trades, {result.loss_updates.height} earlier realised rows' disallowed loss raised; "
        f"read {read_at - started:.2f} s, computed {computed_at - read_at:.2f} s, "
        f"written {time.perf_counter() - computed_at:.2f} s"
    )
    return [
        dg.MaterializeResult(
            asset_key=silver_key(name),
            metadata={"dagster/row_count": tables[name].height, "delta_version": versions[name],
                      "scope": scope.describe(), "continued": True,
                      "preview": markdown_preview(tables[name].head(10))},
        )
        for name in LEDGER_OUTPUTS
    ]


def _ledger_tables(result, run_id: str) -> list[tuple[str, pl.DataFrame]]:
    """The silver tables of a ledger result (``LEDGER_OUTPUTS``), its rejected trades as
    quarantine rows of this run with their portfolio."""
    rejections = ledger_quarantine(result.rejected_trades).with_columns(
        pl.lit(run_id).alias("run_id"), result.rejected_trades["portfolio_id"].cast(pl.String).alias("portfolio_id")
    )
    return [("trades", result.accepted_trades), ("lots", result.lots), ("realized_pnl", result.realized_pnl),
            ("ledger_rejections", rejections), ("ledger_state", result.state), ("ledger_books", result.books),
            ("ledger_open_losses", result.open_losses)]


def _sharded_ledger(context: dg.AssetExecutionContext, lake: LakeResource, settings: PipelineSettings, scope: Scope):
    """Build the scope's ledger shard by shard and replace the scope's rows of the four tables
    (each in one commit). An incremental scope takes the same path as a full one: a file
    touching most portfolios replays most of the book, and one unsharded replay of that many
    trades took 55 s (standard book, 9.5M trades) where shards take a fraction of it."""
    trades = read_bronze(lake, "trades", scope.where())
    portfolios = scope.restrict(read_bronze(lake, "portfolios"))
    shards = portfolio_shards(trades, LEDGER_SHARD_TRADES)
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
            for name, frame in _ledger_tables(result, context.run.run_id):
                # shards come in portfolio order: each in that order makes the stream clustered
                frame = clustered(conform(name, frame))
                folder = Path(staging) / name
                folder.mkdir(exist_ok=True)
                frame.write_parquet(folder / f"{number:05d}.parquet")
                rows[name] += frame.height
                previews.setdefault(name, frame.head(10))
            context.log.info(f"ledger shard {number + 1}/{len(shards)}: {ids.len()} portfolios")
            del result, frame  # written: free it while the next shards are built
        for name in LEDGER_OUTPUTS:
            folder = Path(staging) / name
            data = (
                ds.dataset(sorted(str(f) for f in folder.iterdir()), format="parquet").scanner().to_reader()
                if folder.is_dir()
                else pl.DataFrame(schema=SILVER_SCHEMAS[name])
            )
            version = lake.write(
                silver_table(name), data, run_id=context.run.run_id, predicate=scope.predicate(),
                commit_metadata={**scope.commit_metadata(), "shards": str(len(shards))},
            )
            yield dg.MaterializeResult(
                asset_key=silver_key(name),
                metadata={
                    "dagster/row_count": rows[name],
                    "preview": markdown_preview(previews.get(name, pl.DataFrame(schema=SILVER_SCHEMAS[name]))),
                    "delta_version": version,
                    "shards": len(shards),
                    "scope": scope.describe(),
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
def cash_ledger(context: dg.AssetExecutionContext, lake: LakeResource, settings: PipelineSettings):
    """The cash entries of the accepted trades and the cash flows. When the trades and flows
    only gained rows since the last build (an intraday file the ledger continued), the new
    rows' entries are appended; otherwise the scope's entries are rebuilt."""
    # the ledger's lock too: the entries appended are those of the trades added since the
    # versions this build records, so no ledger write may land between its plan and its reads
    with lake.writer_lock(silver_table("cash_ledger")), lake.writer_lock(LEDGER_LOCK):
        table = silver_table("cash_ledger")
        scope = plan_scope(
            lake, [table], [silver_table("trades"), bronze_table("cash_flows")],
            [bronze_table("instruments")], incremental=settings.incremental_state,
        )
        if scope.empty:
            return dg.MaterializeResult(metadata=unchanged(scope))
        instruments = read_bronze(lake, "instruments")
        if not scope.full:
            trades = rows_since_last_build(lake, table, silver_table("trades"), scope.versions[silver_table("trades")],
                                           SILVER_SCHEMAS["trades"])
            flows = rows_since_last_build(lake, table, bronze_table("cash_flows"),
                                          scope.versions[bronze_table("cash_flows")], bronze_schema_of("cash_flows"))
            if trades is not None and flows is not None:
                frame = conform("cash_ledger", build_cash_ledger(scope.restrict(trades), scope.restrict(flows), instruments))
                version = lake.write(table, frame, mode="append", run_id=context.run.run_id,
                                     commit_metadata={**scope.commit_metadata(), "continued": "true"})
                context.log.info(f"cash ledger: appended the entries of {trades.height} new trades and {flows.height} flows")
                return dg.MaterializeResult(metadata={**table_metadata(frame), "delta_version": version,
                                                      "scope": scope.describe(), "continued": True})
        frame = build_cash_ledger(
            read_silver(lake, "trades", where=scope.where()), read_bronze(lake, "cash_flows", scope.where()), instruments
        )
        return dg.MaterializeResult(metadata=write_scoped(context, lake, "cash_ledger", frame, scope))


@dg.asset(
    key=silver_key("cash_balances"),
    deps=[silver_key("cash_ledger")],
    group_name=GROUP,
    kinds={"polars", "delta"},
    description="Cash per portfolio and currency at the state's moment: settled, pending (settling "
    "after its date) and total, with the latest entry.",
)
def cash_balances(context: dg.AssetExecutionContext, lake: LakeResource, settings: PipelineSettings):
    """The balances of the cash ledger at the current moment. Within one date, the entries
    appended since the last build are added to the stored balances
    (``transforms.continued_state.carry_cash_balances``) rather than summing every entry again."""
    # the cash ledger's lock too: the entries carried are those added since the recorded version
    with lake.writer_lock(silver_table("cash_balances")), lake.writer_lock(silver_table("cash_ledger")):
        table, moment = silver_table("cash_balances"), current_moment(lake)
        scope = plan_scope(lake, [table], [silver_table("cash_ledger")], [], moment=moment,
                           incremental=settings.incremental_state)
        if scope.empty:
            return dg.MaterializeResult(metadata={**unchanged(scope), "as_of": moment.isoformat()})
        entries = None if scope.full else rows_since_last_build(
            lake, table, silver_table("cash_ledger"), scope.versions[silver_table("cash_ledger")],
            SILVER_SCHEMAS["cash_ledger"])
        if entries is not None:
            frame = carry_cash_balances(read_silver(lake, "cash_balances", where=scope.where()), scope.restrict(entries), moment)
        else:
            frame = build_cash_balances(read_silver(lake, "cash_ledger", where=scope.where()), moment)
        meta = write_scoped(context, lake, "cash_balances", frame, scope)
        return dg.MaterializeResult(metadata={**meta, "as_of": moment.isoformat(), "continued": entries is not None})


@dg.asset(
    key=silver_key("positions"),
    deps=[silver_key("ledger_state"), silver_key("cash_balances")]
    + [bronze_key(k) for k in ("prices", "fx_rates", "instruments", "portfolios")],
    group_name=GROUP,
    kinds={"polars", "delta"},
    description="Current positions per portfolio (LONG, SHORT and one CASH row per currency): "
    "quantity, cost basis, average cost, market value, unrealised P&L and weight in the base currency.",
)
def positions(context: dg.AssetExecutionContext, lake: LakeResource, settings: PipelineSettings):
    """Positions from the ledger's open lots (its state: the open lots alone, a fraction of
    every lot ever opened) and the cash balances."""
    with lake.writer_lock(silver_table("positions")):
        moment = current_moment(lake)
        scope = plan_scope(
            lake, [silver_table("positions")], [silver_table("ledger_state"), silver_table("cash_balances")],
            [bronze_table(k) for k in ("prices", "fx_rates", "instruments", "portfolios")],
            moment=moment, incremental=settings.incremental_state,
        )
        if scope.empty:
            return dg.MaterializeResult(metadata={**unchanged(scope), "as_of": moment.isoformat()})
        frame = build_positions(
            open_lots(read_silver(lake, "ledger_state", where=scope.where())),
            None,
            read_bronze(lake, "prices"),
            read_bronze(lake, "fx_rates"),
            read_bronze(lake, "instruments"),
            scope.restrict(read_bronze(lake, "portfolios")),
            moment,
            balances=read_silver(lake, "cash_balances", where=scope.where()),
        )
        meta = write_scoped(context, lake, "positions", frame, scope)
        return dg.MaterializeResult(metadata={**meta, "as_of": moment.isoformat()})


@dg.asset(
    key=silver_key("daily_valuations"),
    deps=[silver_key("trades"), silver_key("cash_ledger"), silver_key("positions"), silver_key("cash_balances"),
          bronze_key("prices"), bronze_key("fx_rates")],
    group_name=GROUP,
    kinds={"polars", "delta"},
    description="NAV, cash (settled and pending), long and short market value and external flows "
    "per portfolio and business day of the price calendar.",
)
def daily_valuations(context: dg.AssetExecutionContext, lake: LakeResource, settings: PipelineSettings):
    """The valuations of the scope's portfolios over their history; or, when the cash ledger
    only gained entries since the last build, the one row those entries change (the last
    business day's, from the positions and balances) and a rebuild of the portfolios whose
    entries are dated earlier (``transforms.continued_state.valuation_changes``)."""
    with lake.writer_lock(silver_table("daily_valuations")):
        table = silver_table("daily_valuations")
        scope = plan_scope(
            lake, [table], [silver_table("trades"), silver_table("cash_ledger")],
            [bronze_table(k) for k in ("prices", "fx_rates", "instruments", "portfolios")], incremental=settings.incremental_state,
        )
        if scope.empty:
            return dg.MaterializeResult(metadata=unchanged(scope))
        entries = None if scope.full else rows_since_last_build(
            lake, table, silver_table("cash_ledger"), scope.versions[silver_table("cash_ledger")],
            SILVER_SCHEMAS["cash_ledger"])
        inputs = {k: read_bronze(lake, k) for k in ("prices", "fx_rates", "instruments")}
        portfolios = scope.restrict(read_bronze(lake, "portfolios"))

        def rebuilt(where: pl.Expr | None) -> pl.DataFrame:
            return build_daily_valuations(
                read_silver(lake, "trades", where=where), read_silver(lake, "cash_ledger", where=where),
                inputs["prices"], inputs["fx_rates"], inputs["instruments"],
                portfolios if where is None else portfolios.filter(where),
            )

        if entries is None:
            return dg.MaterializeResult(metadata=write_scoped(context, lake, "daily_valuations", rebuilt(scope.where()), scope))
        moment = current_moment(lake)
        # read inside the computation, after the stamp (assets.memo.derived): never a value from
        # older prices kept under a newer version
        market = derived(lake, [bronze_table(k) for k in ("prices", "fx_rates")], ("market",),
                         lambda: Market(price_table(read_bronze(lake, "prices")), usd_table(read_bronze(lake, "fx_rates"))))
        last_day = last_business_day(market, moment.date())
        stored = read_silver(lake, "daily_valuations", where=scope.where() & (pl.col("date") == last_day)) \
            if last_day is not None else pl.DataFrame(schema=SILVER_SCHEMAS["daily_valuations"])
        on_day, rebuild = valuation_changes(scope.restrict(entries), stored, moment.date(), last_day)
        valued = in_values("portfolio_id", on_day["portfolio_id"])
        rows, unpriced = valuations_on_day(
            read_silver(lake, "positions", where=valued), read_silver(lake, "cash_balances", where=valued), on_day,
            market, Currencies(inputs["instruments"], portfolios), last_day or moment.date(),
        )
        rebuild = pl.concat([rebuild, unpriced]).unique().sort()
        again = rebuilt(in_values("portfolio_id", rebuild)) if rebuild.len() else rows.clear()
        frame = conform("daily_valuations", pl.concat([rows, again]))
        parts = [f"({in_predicate('portfolio_id', rows['portfolio_id'].to_list())} AND date = '{last_day}')"] if rows.height else []
        parts += [in_predicate("portfolio_id", rebuild.to_list())] if rebuild.len() else []
        if not parts:
            return dg.MaterializeResult(metadata={**unchanged(scope), "continued": True})
        version = lake.write(table, frame, predicate=" OR ".join(parts), run_id=context.run.run_id,
                             commit_metadata={**scope.commit_metadata(), "continued": "true"})
        context.log.info(f"daily valuations: {rows.height} row(s) of {last_day} recomputed, "
                         f"{rebuild.len()} portfolio(s) rebuilt")
        return dg.MaterializeResult(metadata={**table_metadata(frame), "delta_version": version, "scope": scope.describe(),
                                              "continued": True, "rebuilt_portfolios": rebuild.len()})


@dg.asset(
    key=silver_key("portfolio_state"),
    deps=[silver_key("positions"), silver_key("realized_pnl"), silver_key("cash_balances")]
    + [bronze_key(k) for k in ("fx_rates", "instruments", "portfolios")],
    group_name=GROUP,
    kinds={"polars", "delta"},
    description="One row per portfolio: total value (NAV), cash, long/short market value, "
    "unrealised and realised P&L, weights, status and the moment the state describes.",
)
def portfolio_state(context: dg.AssetExecutionContext, lake: LakeResource, settings: PipelineSettings):
    """The state of the scope's portfolios from their positions, cash balances and realised
    P&L. When the accepted trades only gained rows since the last build, the realised total
    is the stored one plus the new trades' realised rows (``carry_realized``) rather than
    every realised row summed again."""
    # the ledger's lock too: a carried total adds the realised rows of the trades added since
    # the recorded version, so the trades and realised rows must not move between plan and read
    with lake.writer_lock(silver_table("portfolio_state")), lake.writer_lock(LEDGER_LOCK):
        moment = current_moment(lake)
        scope = plan_scope(
            lake, [silver_table("portfolio_state")],
            [silver_table("positions"), silver_table("realized_pnl"), silver_table("cash_balances"), silver_table("trades")],
            [bronze_table(k) for k in ("fx_rates", "instruments", "portfolios")],
            moment=moment, incremental=settings.incremental_state,
        )
        previous = None if scope.full else read_silver(lake, "portfolio_state")
        if scope.empty and previous["as_of"].eq(moment).all():
            return dg.MaterializeResult(metadata=unchanged(scope))
        fx, instruments = read_bronze(lake, "fx_rates"), read_bronze(lake, "instruments")
        portfolios = scope.restrict(read_bronze(lake, "portfolios"))
        new_trades = None if scope.full else rows_since_last_build(
            lake, silver_table("portfolio_state"), silver_table("trades"), scope.versions[silver_table("trades")],
            SILVER_SCHEMAS["trades"])
        realized_columns = ["portfolio_id", "instrument_id", "close_ts", "realized_pnl"]
        if new_trades is not None:
            ids = scope.restrict(new_trades)["trade_id"].unique().sort()
            rows = read_silver(lake, "realized_pnl", realized_columns,
                               where=scope.where() & in_values("trade_id", ids))
            totals = scope.restrict(previous).select(
                "portfolio_id", "realized_pnl", pl.col("last_updated").alias("last_close_ts")).cast(REALIZED_TOTALS_SCHEMA)
            realized = carry_realized(totals, rows, portfolios, instruments, moment, fx)
        else:
            rows, realized = read_silver(lake, "realized_pnl", realized_columns, where=scope.where()), None
        frame = build_portfolio_state(
            read_silver(lake, "positions", where=scope.where()),
            rows,
            portfolios,
            moment,
            fx,
            instruments=instruments,
            cash_ledger=None,
            balances=read_silver(lake, "cash_balances", where=scope.where()),
            realized=realized,
        )
        if previous is not None:
            # The other portfolios' state is the same at the later moment of the same day
            # (their entries are all before it; cash settles by date): only the stamp moves.
            kept = previous.filter(~scope.where()).with_columns(pl.lit(moment).cast(contract.TS).alias("as_of"))
            frame = pl.concat([kept, conform("portfolio_state", frame)]).sort("portfolio_id")
        version = lake.write(
            silver_table("portfolio_state"), conform("portfolio_state", frame), run_id=context.run.run_id,
            commit_metadata={**scope.commit_metadata(), "continued": str(new_trades is not None).lower()},
        )
        meta = {**table_metadata(frame), "delta_version": version, "scope": scope.describe()}
        return dg.MaterializeResult(metadata={**meta, "total_nav": float(frame["total_value"].sum() or 0.0)})


STATE_ASSETS = [ledger, cash_ledger, cash_balances, positions, daily_valuations, portfolio_state]
