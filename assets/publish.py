"""Publish: the analysts' ``warehouse.duckdb``, refreshed from the lake and swapped in atomically,
with the views and macros that answer "what was the state at time T" and "where did this
position come from".

Refresh (``refresh_warehouse``, through ``WarehouseResource.publish``, which keeps the file
double-buffered: the previous published file is brought up to date and swapped in). Each file
records in ``_warehouse._sources`` the Delta id and version of every lake table each published
table was read from (taken before the table is read, and the read pinned to that version). Per
published table, in one transaction with its ``_sources`` rows:

- every source at the recorded id and version: skipped;
- a per-portfolio table (one source, with ``portfolio_id``: ``WarehouseTable.per_portfolio``)
  whose lake commits since the recorded version each name the portfolios they changed
  (``assets.scope.commits_after``, ``transforms.changes.changed_portfolios``) and none of
  which rewrote the table whole (an overwrite or delete without predicate, whose change log
  names the portfolios written, not those dropped): the rows of those portfolios are deleted
  and read again from the lake (a scan filtered on ``portfolio_id``), inserted in
  ``order_by`` order;
- a one-source table whose lake commits since the recorded version only added data files (an
  append, or a predicate write that matched no row, as the outbox and the rebalancing tables
  get each run's rows): the rows those files hold are inserted (``LakeResource.rows_added``);
  the outbox took 10.5 s to copy whole on the standard book;
- otherwise (a commit without change log, a whole rewrite, the version went back, the Delta
  table was created anew (new id) or is gone, the columns changed, a union whose sources
  changed, a table new to the file): replaced whole, sorted by ``WarehouseTable.order_by``.

Tables the code no longer publishes are dropped; views and macros are dropped and created
again. A full build (``incremental=False``) writes every table whole. Either way each table
holds its lake table's rows at the recorded version, as a full build of those versions would.

Point in time (DuckDB table macros over the published tables; ``ts`` is a TIMESTAMPTZ, and a
naive timestamp or a string without an offset is read in the session's ``TimeZone``):

- ``state_as_of(pid, ts)``: one portfolio's positions (``POSITIONS_SCHEMA`` columns) as
  ``build_book(inputs.as_of(ts))`` computes them, i.e. from the trades with ``trade_ts <= ts``,
  the cash entries with ``ts <= ts`` and the prices and fx quoted on or before the UTC date of
  ``ts`` (``d``). From the published ledger, which is causal (a close, a rejection, a wash-sale
  split depends only on earlier events):

  - a lot (or wash-sale piece ``<lot_id>~W<n>``) is held at ts when ``open_ts <= ts`` and it
    is not closed by then (``closed_ts`` null or later); its quantity at ts is
    ``original_quantity - sum(realized_pnl.quantity with close_ts <= ts)`` of that lot id.
    This is exact for pieces too: a split moves the matched shares ``m`` out of the parent's
    ``original_quantity`` into the piece's (``transforms.lot_kernel``), so per lot id
    ``original_quantity - all its closes = quantity`` and, for a piece split off after ts,
    the piece's shares plus the parent's reduced figure add up to what the parent held at ts;
    the pieces of one opening trade sum to its quantity;
  - its local cost basis at ts = quantity at ts x the opening trade's cost per share
    (``(quantity * price + fees) / quantity``, fees subtracted for SHORT), as the ledger
    splits basis pro rata; converted at the fx of the open date;
  - price = the latest finite close on or before ``d``, else the open price of the row's latest
    lot (price_date its open date); ``fx_rate``, market value, average cost, unrealised P&L,
    weight and the CASH rows (``cash_ledger`` entries with ``ts <= ts``, converted at ``d``)
    follow ``transforms.positions``;
  - fx (``transforms.fx``): ``usd_per_unit(c, day)`` = the latest quote on or before ``day``
    among the quotes dated on or before ``d``, else the earliest of those, else 1.0 for USD
    (null otherwise); ``base_per_local = usd(local) / usd(base)``, 1.0 for the same currency.

  What it cannot show: taxable figures at ts. A loss sale's ``disallowed_loss`` and the
  replacement lot's ``wash_sale_adjustment`` are recorded when the sale is replayed, also for
  a replacement bought later; between the two, the published ledger already knows the
  replacement. Quantities, economic cost basis and values are unaffected (tax basis is not
  output here).
- ``portfolio_nav_as_of(pid, ts)``: one row, the ``PORTFOLIO_STATE_SCHEMA`` columns at ts
  (``transforms.state``): total_value, cash_balance, settled/pending cash, long/short market
  value, unrealised P&L, realised P&L (closes by ts at the fx of their close date), positions
  count, weights, as_of, last_updated. An unknown portfolio gives no row.

Both answer "as of trade time, by what the lake knows now". "As the pipeline knew it then"
(late files included or not) is Delta time travel of ``silver/portfolio_state`` (the tables
keep ten years of history, ``assets.resources.TABLE_CONFIGURATION``); the two agree when no
file landed late with trades at or before ts.

Audit: view ``audit``, one row per (lot, trade that built it): the opening trade (role
``OPEN``, quantity = the lot's ``original_quantity``, its share of the trade) and each closing
trade (role ``CLOSE``, the quantity it took from the lot), so per lot ``OPEN - CLOSE`` equals
the remaining quantity; with the trade's source_file, source_row, source_sha256 and the
ingestion log's version, ingested_at and run_id of that file content. ``audit_position(pid,
iid)``: the rows of that position's open lots.

The event outbox (``publish/outbox``) is published as table ``outbox``, ordered by
(portfolio_id, sequence); it is replaced whole when it changed (its commits carry no change log).
"""

import time
from collections.abc import Callable
from dataclasses import dataclass

import dagster as dg
import duckdb
import polars as pl
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.dataset  # noqa: F401  (pa.dataset)
from deltalake import DeltaTable

from assets.analytics import ANALYTICS_TABLES, GOLD_SCHEMAS, gold_key, gold_table
from assets.rebalancing import SCHEMAS as REBALANCING_SCHEMAS
from assets.ingest import bronze_schema_of, bronze_table, ingestion_log_table, quarantine_table
from assets.outbox import OUTBOX_TABLE
from assets.resources import LakeResource, WarehouseResource, only_added_files
from assets.scope import commits_after
from assets.state import SILVER_SCHEMAS, silver_key, silver_table
from transforms import contract
from transforms.changes import changed_portfolios
from transforms.outbox import OUTBOX_SCHEMA

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

# --- point in time and audit: SQL run into the warehouse (module docstring) -----------------
USD = contract.BASE_CURRENCY  # fx_rates quote every currency in it


def _pit(ts: str) -> str:
    """The CTE ``pit`` (point in time): the moment ``m`` (TIMESTAMPTZ) and its UTC date ``d``."""
    return f"pit AS (SELECT CAST({ts} AS TIMESTAMPTZ) AS m, CAST(timezone('UTC', CAST({ts} AS TIMESTAMPTZ)) AS DATE) AS d)"


# The fx quotes known at the as-of date, and USD per unit of each (currency, day) of ``needs``
# (a CTE the macro defines): the latest quote on or before the day, else the currency's earliest
# known quote (a back fill), else 1.0 for USD (``transforms.fx``).
_QUOTES = """quotes AS (
        SELECT q.currency, q.date, q.usd_per_unit FROM fx_rates q, pit
        WHERE q.date <= pit.d AND q.currency IS NOT NULL AND q.usd_per_unit > 0 AND isfinite(q.usd_per_unit)
    ),
    first_quotes AS (SELECT currency, arg_min(usd_per_unit, date) AS usd FROM quotes GROUP BY currency)"""
_RATES = f"""rates AS (
        SELECT n.currency, n.day, coalesce(q.usd_per_unit, f.usd, CASE WHEN n.currency = '{USD}' THEN 1.0 END) AS usd
        FROM (SELECT DISTINCT currency, day FROM needs WHERE currency IS NOT NULL AND day IS NOT NULL) n
        ASOF LEFT JOIN quotes q ON n.currency = q.currency AND n.day >= q.date
        LEFT JOIN first_quotes f ON f.currency = n.currency
    )"""


def _cross(local: str, base: str, local_usd: str, base_usd: str) -> str:
    """Base per local currency: 1.0 for the same currency, null for an unknown one."""
    return f"CASE WHEN {local} IS NULL THEN NULL WHEN {local} = {base} THEN 1.0 ELSE {local_usd} / {base_usd} END"


STATE_AS_OF = f"""CREATE OR REPLACE MACRO state_as_of(pid, ts) AS TABLE
    WITH {_pit("ts")},
    book AS (SELECT portfolio_id, coalesce(base_currency, '{USD}') AS base FROM portfolios WHERE portfolio_id = pid),
    {_QUOTES},
    closed AS (
        SELECT r.instrument_id, r.lot_id, sum(r.quantity) AS quantity
        FROM realized_pnl r, pit WHERE r.portfolio_id = pid AND r.close_ts <= pit.m
        GROUP BY ALL
    ),
    held_lots AS (
        SELECT l.portfolio_id, l.instrument_id, l.position_type, l.lot_id, l.open_ts, l.open_price,
               CAST(timezone('UTC', l.open_ts) AS DATE) AS open_date, b.base, i.currency, pit.d,
               CASE l.position_type WHEN 'SHORT' THEN -1.0 ELSE 1.0 END AS sign,
               l.original_quantity - coalesce(c.quantity, 0.0) AS quantity,
               (t.quantity * t.price + CASE l.position_type WHEN 'SHORT' THEN -1.0 ELSE 1.0 END * coalesce(t.fees, 0.0))
                   / t.quantity AS unit_cost
        FROM lots l
        CROSS JOIN pit
        JOIN book b ON b.portfolio_id = l.portfolio_id
        JOIN (SELECT trade_id, quantity, price, fees FROM trades WHERE portfolio_id = pid) t ON t.trade_id = l.open_trade_id
        LEFT JOIN closed c ON c.instrument_id = l.instrument_id AND c.lot_id = l.lot_id
        LEFT JOIN instruments i ON i.instrument_id = l.instrument_id
        WHERE l.portfolio_id = pid AND l.position_type IN ('LONG', 'SHORT') AND l.open_ts <= pit.m
          AND (l.closed_ts IS NULL OR l.closed_ts > pit.m)
          AND l.original_quantity - coalesce(c.quantity, 0.0) > 0
    ),
    held AS (
        SELECT portfolio_id, instrument_id, position_type, any_value(base) AS base, any_value(currency) AS currency,
               any_value(d) AS d, sum(sign * quantity) AS quantity, sum(sign * quantity * unit_cost) AS local_basis,
               max(open_ts) AS last_updated, arg_max(open_price, (open_ts, lot_id)) AS fallback_price,
               arg_max(open_date, (open_ts, lot_id)) AS fallback_date
        FROM held_lots GROUP BY portfolio_id, instrument_id, position_type
    ),
    closes AS (
        SELECT p.instrument_id, p.date, p.close FROM prices p, pit
        WHERE p.date <= pit.d AND p.close IS NOT NULL AND isfinite(p.close)
          AND p.instrument_id IN (SELECT instrument_id FROM held)
    ),
    priced AS (
        SELECT h.*, coalesce(p.close, h.fallback_price) AS price,
               CASE WHEN p.close IS NOT NULL THEN p.date ELSE h.fallback_date END AS price_date
        FROM held h ASOF LEFT JOIN closes p ON h.instrument_id = p.instrument_id AND h.d >= p.date
    ),
    cash AS (
        SELECT c.portfolio_id, c.currency, any_value(b.base) AS base, any_value(pit.d) AS d,
               sum(c.amount) AS quantity, max(c.ts) AS last_updated
        FROM cash_ledger c CROSS JOIN pit JOIN book b ON b.portfolio_id = c.portfolio_id
        WHERE c.portfolio_id = pid AND c.ts <= pit.m
        GROUP BY c.portfolio_id, c.currency
    ),
    needs AS (
        SELECT currency, open_date AS day FROM held_lots UNION ALL SELECT base, open_date FROM held_lots
        UNION ALL SELECT currency, price_date FROM priced UNION ALL SELECT base, price_date FROM priced
        UNION ALL SELECT currency, d FROM cash UNION ALL SELECT base, d FROM cash
    ),
    {_RATES},
    basis AS (
        SELECT h.portfolio_id, h.instrument_id, h.position_type,
               coalesce(sum(h.sign * h.quantity * h.unit_cost * {_cross("h.currency", "h.base", "rl.usd", "rb.usd")}), 0.0)
                   AS cost_basis
        FROM held_lots h
        LEFT JOIN rates rl ON rl.currency = h.currency AND rl.day = h.open_date
        LEFT JOIN rates rb ON rb.currency = h.base AND rb.day = h.open_date
        GROUP BY ALL
    ),
    valued AS (
        SELECT p.portfolio_id, p.instrument_id, p.position_type, p.currency, p.quantity, p.price, p.price_date,
               {_cross("p.currency", "p.base", "rl.usd", "rb.usd")} AS fx_rate, b.cost_basis,
               p.local_basis / abs(p.quantity) AS average_cost, p.last_updated
        FROM priced p
        JOIN basis b USING (portfolio_id, instrument_id, position_type)
        LEFT JOIN rates rl ON rl.currency = p.currency AND rl.day = p.price_date
        LEFT JOIN rates rb ON rb.currency = p.base AND rb.day = p.price_date
    ),
    cash_rows AS (
        SELECT c.portfolio_id, 'CASH:' || c.currency AS instrument_id, 'CASH' AS position_type, c.currency,
               c.quantity, 1.0 AS price, c.d AS price_date, {_cross("c.currency", "c.base", "rl.usd", "rb.usd")} AS fx_rate,
               NULL::DOUBLE AS cost_basis, 1.0 AS average_cost, c.last_updated
        FROM cash c
        LEFT JOIN rates rl ON rl.currency = c.currency AND rl.day = c.d
        LEFT JOIN rates rb ON rb.currency = c.base AND rb.day = c.d
    ),
    rows AS (
        SELECT *, quantity * price * fx_rate AS market_value FROM valued
        UNION ALL BY NAME
        SELECT * REPLACE (quantity * fx_rate AS cost_basis), quantity * fx_rate AS market_value FROM cash_rows
    )
    SELECT portfolio_id, instrument_id, position_type, currency, quantity, price, price_date, fx_rate, cost_basis,
           average_cost, market_value, market_value - cost_basis AS unrealized_pnl,
           market_value / nullif(sum(market_value) OVER (), 0.0) AS weight, last_updated
    FROM rows
    ORDER BY portfolio_id, position_type, instrument_id"""

PORTFOLIO_NAV_AS_OF = f"""CREATE OR REPLACE MACRO portfolio_nav_as_of(pid, ts) AS TABLE
    WITH {_pit("ts")},
    book AS (
        SELECT portfolio_id, portfolio_name, status, coalesce(base_currency, '{USD}') AS base_currency
        FROM portfolios WHERE portfolio_id = pid
    ),
    {_QUOTES},
    pos AS (SELECT * FROM state_as_of(pid, ts)),
    totals AS (
        SELECT sum(market_value) AS total_value,
               sum(market_value) FILTER (WHERE position_type = 'CASH') AS cash_balance,
               sum(market_value) FILTER (WHERE position_type = 'LONG') AS long_market_value,
               sum(market_value) FILTER (WHERE position_type = 'SHORT') AS short_market_value,
               sum(unrealized_pnl) AS unrealized_pnl,
               count(*) FILTER (WHERE position_type <> 'CASH') AS positions_count,
               max(last_updated) AS pos_updated
        FROM pos
    ),
    cash_split AS (
        SELECT sum(c.settled * p.fx_rate) AS settled_cash, sum(c.pending * p.fx_rate) AS pending_cash
        FROM (
            SELECT c.currency, sum(CASE WHEN c.settle_date <= pit.d THEN c.amount ELSE 0.0 END) AS settled,
                   sum(CASE WHEN c.settle_date <= pit.d THEN 0.0 ELSE c.amount END) AS pending
            FROM cash_ledger c, pit WHERE c.portfolio_id = pid AND c.ts <= pit.m GROUP BY c.currency
        ) c
        JOIN pos p ON p.position_type = 'CASH' AND p.instrument_id = 'CASH:' || c.currency
    ),
    closes AS (
        SELECT r.realized_pnl, r.close_ts, CAST(timezone('UTC', r.close_ts) AS DATE) AS day, i.currency, b.base_currency AS base
        FROM realized_pnl r CROSS JOIN pit JOIN book b ON b.portfolio_id = r.portfolio_id
        LEFT JOIN instruments i ON i.instrument_id = r.instrument_id
        WHERE r.portfolio_id = pid AND r.close_ts <= pit.m
    ),
    needs AS (SELECT currency, day FROM closes UNION ALL SELECT base, day FROM closes),
    {_RATES},
    realized AS (
        SELECT sum(c.realized_pnl * {_cross("c.currency", "c.base", "rl.usd", "rb.usd")}) AS realized_pnl,
               max(c.close_ts) AS last_close_ts
        FROM closes c
        LEFT JOIN rates rl ON rl.currency = c.currency AND rl.day = c.day
        LEFT JOIN rates rb ON rb.currency = c.base AND rb.day = c.day
    ),
    weights AS (
        SELECT list({{'instrument_id': instrument_id, 'weight': weight}} ORDER BY weight DESC NULLS LAST, instrument_id)
                   AS weights
        FROM (
            SELECT instrument_id, CASE WHEN count(weight) > 0 THEN sum(weight) END AS weight
            FROM pos WHERE position_type <> 'CASH' GROUP BY instrument_id
        )
    )
    SELECT b.portfolio_id, b.portfolio_name, b.status, b.base_currency,
           coalesce(t.total_value, 0.0) AS total_value, coalesce(t.cash_balance, 0.0) AS cash_balance,
           coalesce(s.settled_cash, 0.0) AS settled_cash, coalesce(s.pending_cash, 0.0) AS pending_cash,
           coalesce(t.long_market_value, 0.0) AS long_market_value,
           coalesce(t.short_market_value, 0.0) AS short_market_value,
           coalesce(t.unrealized_pnl, 0.0) AS unrealized_pnl, coalesce(r.realized_pnl, 0.0) AS realized_pnl,
           coalesce(t.positions_count, 0) AS positions_count,
           coalesce(w.weights, []::STRUCT(instrument_id VARCHAR, weight DOUBLE)[]) AS weights,
           pit.m AS as_of, greatest(t.pos_updated, r.last_close_ts) AS last_updated
    FROM book b CROSS JOIN pit CROSS JOIN totals t CROSS JOIN cash_split s CROSS JOIN realized r CROSS JOIN weights w"""

# The file version each trade row came from: the ingestion log's first ingestion of that content.
AUDIT = """CREATE OR REPLACE VIEW audit AS
    WITH files AS (
        SELECT source_file, source_sha256, min(version) AS file_version, min(ingested_at) AS ingested_at,
               arg_min(run_id, ingested_at) AS run_id
        FROM ingestion_log WHERE kind = 'trades' GROUP BY source_file, source_sha256
    ),
    legs AS (
        SELECT portfolio_id, instrument_id, position_type, lot_id, open_trade_id AS trade_id, 'OPEN' AS role,
               original_quantity AS quantity
        FROM lots
        UNION ALL
        SELECT portfolio_id, instrument_id, position_type, lot_id, trade_id, 'CLOSE', quantity FROM realized_pnl
    )
    SELECT g.portfolio_id, g.instrument_id, g.position_type, g.lot_id, l.status AS lot_status,
           l.quantity AS lot_quantity, g.trade_id, t.trade_ts, t.side, g.role, g.quantity,
           t.quantity AS trade_quantity, t.price, t.source_file, t.source_row, t.source_sha256,
           f.file_version, f.ingested_at, f.run_id
    FROM legs g
    JOIN lots l USING (portfolio_id, instrument_id, lot_id)
    -- every lot's and close's trade is an accepted trade; joining on the portfolio too lets a
    -- filter on one portfolio reach the trades scan
    JOIN trades t ON t.portfolio_id = g.portfolio_id AND t.trade_id = g.trade_id
    LEFT JOIN files f ON f.source_file = t.source_file AND f.source_sha256 = t.source_sha256"""

AUDIT_POSITION = """CREATE OR REPLACE MACRO audit_position(pid, iid) AS TABLE
    SELECT * FROM audit WHERE portfolio_id = pid AND instrument_id = iid AND lot_status = 'OPEN'
    ORDER BY position_type, lot_id, trade_ts, role DESC, trade_id"""

# Views and macros an analyst gets with the file (see README for examples).
WAREHOUSE_STATEMENTS = [
    """CREATE OR REPLACE MACRO portfolio_positions(pid) AS TABLE
       SELECT * FROM positions WHERE portfolio_id = pid ORDER BY abs(market_value) DESC""",
    STATE_AS_OF,
    PORTFOLIO_NAV_AS_OF,
    AUDIT,
    AUDIT_POSITION,
]


# The lake tables of the two unions (the ledger's rejections last).
QUARANTINE_SOURCES = (*(quarantine_table(kind) for kind in contract.INGEST_ORDER), silver_table("ledger_rejections"))
INGESTION_LOG_SOURCES = tuple(ingestion_log_table(kind) for kind in contract.INGEST_ORDER)


def quarantine_frame(lake: LakeResource, versions: dict[str, int | None] | None = None) -> pl.DataFrame:
    """Every quarantined row and file: bronze validation of all kinds plus ledger rejections
    (``QUARANTINE_SCHEMA`` columns). ``versions``: the Delta version to read of each source
    (``QUARANTINE_SOURCES``; default and ``None``: the latest)."""
    versions = versions or {}
    parts = [lake.read(table, contract.QUARANTINE_SCHEMA, version=versions.get(table)) for table in QUARANTINE_SOURCES[:-1]]
    rejections = QUARANTINE_SOURCES[-1]
    parts.append(
        lake.read(rejections, SILVER_SCHEMAS["ledger_rejections"], list(contract.QUARANTINE_SCHEMA),
                  version=versions.get(rejections)).select(list(contract.QUARANTINE_SCHEMA))
    )
    return pl.concat(parts).sort("kind", "source_file", "source_row", nulls_last=True)


def ingestion_log_frame(lake: LakeResource, versions: dict[str, int | None] | None = None) -> pl.DataFrame:
    """The ingestion log of every kind (one row per file version ingested; ``INGESTION_LOG_SCHEMA``).
    ``versions``: the Delta version to read of each source (default: the latest)."""
    versions = versions or {}
    parts = [lake.read(table, contract.INGESTION_LOG_SCHEMA, version=versions.get(table)) for table in INGESTION_LOG_SOURCES]
    return pl.concat(parts).sort("ingested_at", "kind", "source_file")


# Rows stored in portfolio order, so DuckDB's zone maps make one portfolio's lookup cheap; the
# outbox in (portfolio_id, sequence) order, so a consumer's range scan reads it in order.
WAREHOUSE_ORDER: dict[str, tuple[str, ...]] = (
    {name: ("portfolio_id",) for name in SILVER_PUBLISHED}
    | {name: ("portfolio_id",) for name in ANALYTICS_TABLES if "portfolio_id" in GOLD_SCHEMAS[name]}
    | {name: ("portfolio_id",) for name, schema in REBALANCING_SCHEMAS.items() if "portfolio_id" in schema}
    | {"outbox": ("portfolio_id", "sequence")}
)


@dataclass(frozen=True)
class WarehouseTable:
    """One published table: its ``name``, the lake tables it is read from (``sources``), the
    ``schema`` it has while its lake table does not exist, the columns it is stored in order
    of, and for a union of several lake tables the function that builds it
    (``union(lake, {source: version})``, a Polars frame)."""

    name: str
    sources: tuple[str, ...]
    schema: dict[str, pl.DataType]
    order_by: tuple[str, ...] = ()
    union: Callable[[LakeResource, dict[str, int | None]], pl.DataFrame] | None = None

    @property
    def per_portfolio(self) -> bool:
        """Whether its rows can be replaced portfolio by portfolio (one source with ``portfolio_id``)."""
        return self.union is None and "portfolio_id" in self.schema


def warehouse_tables() -> tuple[WarehouseTable, ...]:
    """What the warehouse publishes, in the order it is written: the silver state, bronze
    reference and market data, the analytics, rebalancing, the two unions (quarantine, the
    ingestion log) and the outbox."""

    def one(name: str, source: str, schema: dict[str, pl.DataType]) -> WarehouseTable:
        return WarehouseTable(name, (source,), schema, WAREHOUSE_ORDER.get(name, ()))

    return (
        *(one(name, silver_table(name), SILVER_SCHEMAS[name]) for name in SILVER_PUBLISHED),
        *(one(kind, bronze_table(kind), bronze_schema_of(kind)) for kind in BRONZE_PUBLISHED),
        *(one(name, gold_table(name), GOLD_SCHEMAS[name]) for name in ANALYTICS_TABLES),
        *(one(name, gold_table(name), schema) for name, schema in REBALANCING_SCHEMAS.items()),
        WarehouseTable("quarantine", QUARANTINE_SOURCES, contract.QUARANTINE_SCHEMA, union=quarantine_frame),
        WarehouseTable("ingestion_log", INGESTION_LOG_SOURCES, contract.INGESTION_LOG_SCHEMA, union=ingestion_log_frame),
        one("outbox", OUTBOX_TABLE, OUTBOX_SCHEMA),
    )


# --- the refresh (module docstring) ----------------------------------------------------------

# Up to this many portfolio ids go into the DELETE as an IN list (DuckDB prunes row groups by
# their min/max); more are registered as a table and semi-joined.
IN_LIST_MAX = 256
# Delta operations that replace every row when they carry no predicate.
_WHOLE_OPERATIONS = frozenset({"WRITE", "CREATE TABLE", "CREATE OR REPLACE TABLE", "DELETE"})
# Portfolio ids listed in the metadata per table (the count is always given).
_IDS_SHOWN = 100


class _Source:
    """One lake table at the version it had when first looked at: its id, version and (on
    demand) its Arrow dataset at that version, so what is read is what is recorded."""

    def __init__(self, lake: LakeResource, table: str):
        self.table = table
        self.delta: DeltaTable | None = lake.table(table)
        self.table_id = self.delta.metadata().id if self.delta is not None else None
        self.version = self.delta.version() if self.delta is not None else -1
        self._dataset = None

    @property
    def dataset(self) -> pa.dataset.Dataset:
        if self._dataset is None:
            self._dataset = self.delta.to_pyarrow_dataset()
        return self._dataset


def _rewrites_whole(commit: dict) -> bool:
    """Whether a Delta commit replaced every row (an overwrite or delete without predicate):
    its change log, if any, then lists only the portfolios it wrote, not those it removed."""
    params = commit.get("operationParameters") or {}
    if commit.get("operation") not in _WHOLE_OPERATIONS or params.get("predicate"):
        return False
    return commit.get("operation") == "DELETE" or params.get("mode") == "Overwrite"


def _describe(con: duckdb.DuckDBPyConnection, relation: str) -> list[tuple[str, str]]:
    return [(row[0], row[1]) for row in con.execute(f"DESCRIBE SELECT * FROM {relation}").fetchall()]


def _plan(
    con: duckdb.DuckDBPyConnection,
    lake: LakeResource,
    spec: WarehouseTable,
    sources: dict[str, _Source],
    recorded: dict[tuple[str, str], tuple[str | None, int]],
    in_file: bool,
) -> tuple[str, list[str], str]:
    """What to do with ``spec``'s table in a file that records ``recorded``: ``("skip", [], why)``,
    ``("append", [], why)``, ``("portfolios", ids, why)`` or ``("whole", [], why)`` (rules in the
    module docstring)."""
    if not in_file:
        return "whole", [], "not in the file yet"
    before = {name: recorded.get((spec.name, name)) for name in spec.sources}
    if any(b is None for b in before.values()):
        return "whole", [], "no recorded version of a source"
    moved = {name: s for name, s in sources.items() if (s.table_id, s.version) != tuple(before[name])}
    if not moved:
        return "skip", [], "unchanged"
    steps = ", ".join(f"{name}@{before[name][1]}->{s.version}" for name, s in moved.items())
    if spec.union is not None:
        return "whole", [], f"changed: {steps}"
    (name, source), = sources.items()
    old_id, old_version = before[name]
    if source.delta is None:
        return "whole", [], f"{name} no longer exists"
    if old_id != source.table_id:
        return "whole", [], f"{name} was created anew" if old_id is not None else f"{name} did not exist"
    if source.version < old_version:
        return "whole", [], f"{name} went back from version {old_version} to {source.version}"
    commits = commits_after(lake, name, old_version)
    missing = set(range(old_version + 1, source.version + 1)) - {c.get("version") for c in commits}
    if missing:
        return "whole", [], f"{name}: no commit info for version(s) {sorted(missing)[:5]}"
    whole = next((c for c in sorted(commits, key=lambda c: c["version"]) if _rewrites_whole(c)), None)
    if whole is not None:
        return "whole", [], f"{name} was rewritten whole at version {whole['version']}"
    if all(only_added_files(c) for c in commits):
        plan = ("append", [], f"rows added: {steps}")
    elif not spec.per_portfolio:
        return "whole", [], f"changed: {steps} (no portfolio_id)"
    else:
        try:
            changed = changed_portfolios(commits)
        except ValueError as error:
            return "whole", [], f"{name}: {error}"
        if changed is None:
            return "whole", [], f"{name}: a commit records no changed portfolios ({steps})"
        plan = ("portfolios", sorted(changed), steps)
    con.register("_probe", source.dataset)
    try:
        same_columns = _describe(con, "_probe") == _describe(con, f'"{spec.name}"')
    finally:
        con.unregister("_probe")
    if not same_columns:
        return "whole", [], f"{name}: the columns changed"
    return plan


def _append(con: duckdb.DuckDBPyConnection, lake: LakeResource, spec: WarehouseTable, source: _Source, since: int) -> None:
    """Insert the rows lake table ``source`` gained from version ``since`` to the pinned one
    (``LakeResource.rows_added``: read from the data files those commits added)."""
    rows = lake.rows_added(source.table, since, source.version)
    if rows is None:  # checked by _plan from the same commits; a table rewritten since cannot reach here
        raise RuntimeError(f"{source.table}: a commit after version {since} removed files")
    if rows.height:
        _from_incoming(con, rows.to_arrow(), f'INSERT INTO "{spec.name}" BY NAME SELECT * FROM _incoming{_order(spec)}')


def _replace_whole(con: duckdb.DuckDBPyConnection, lake: LakeResource, spec: WarehouseTable, sources: dict[str, _Source]) -> None:
    if spec.union is not None:
        data = spec.union(lake, {name: (s.version if s.delta is not None else None) for name, s in sources.items()})
    else:
        (source,) = sources.values()
        # an Arrow dataset, which DuckDB streams (never whole in memory)
        data = source.dataset if source.delta is not None else pl.DataFrame(schema=spec.schema)
    _from_incoming(con, data, f'CREATE OR REPLACE TABLE "{spec.name}" AS SELECT * FROM _incoming{_order(spec)}')


def _order(spec: WarehouseTable) -> str:
    return f" ORDER BY {', '.join(spec.order_by)}" if spec.order_by else ""


def _from_incoming(con: duckdb.DuckDBPyConnection, data, sql: str) -> None:
    """Run ``sql``, which reads ``_incoming``, with ``data`` (anything DuckDB scans) under that name."""
    con.register("_incoming", data)
    try:
        con.execute(sql)
    finally:
        con.unregister("_incoming")


def _replace_portfolios(con: duckdb.DuckDBPyConnection, spec: WarehouseTable, source: _Source, ids: list[str]) -> None:
    if not ids:
        return
    if len(ids) <= IN_LIST_MAX:
        con.execute(f'DELETE FROM "{spec.name}" WHERE portfolio_id IN ({", ".join("?" * len(ids))})', ids)
    else:
        con.register("_ids", pa.table({"portfolio_id": pa.array(ids, pa.string())}))
        try:
            con.execute(f'DELETE FROM "{spec.name}" WHERE portfolio_id IN (SELECT portfolio_id FROM _ids)')
        finally:
            con.unregister("_ids")
    # a scan of the lake table filtered to those portfolios, streamed batch by batch
    rows = source.dataset.scanner(filter=pc.field("portfolio_id").isin(ids)).to_reader()
    _from_incoming(con, rows, f'INSERT INTO "{spec.name}" BY NAME SELECT * FROM _incoming{_order(spec)}')


def _record(con: duckdb.DuckDBPyConnection, name: str, sources: dict[str, _Source]) -> None:
    con.execute(f"DELETE FROM {WarehouseResource.SOURCES} WHERE table_name = ?", [name])
    con.executemany(f"INSERT INTO {WarehouseResource.SOURCES} VALUES (?, ?, ?, ?)",
                    [[name, s.table, s.table_id, s.version] for s in sources.values()])


def refresh_warehouse(
    con: duckdb.DuckDBPyConnection,
    lake: LakeResource,
    incremental: bool,
    tables: tuple[WarehouseTable, ...] | None = None,
    statements: list[str] | None = None,
) -> dict[str, dict]:
    """Bring the open warehouse file ``con`` up to the lake's current versions (``incremental``:
    from the versions its ``_warehouse._sources`` records; else every table written whole),
    then drop and re-run the views and macros (``statements``, default ``WAREHOUSE_STATEMENTS``).

    Returns, per published table: ``action`` (``skipped``, ``rows appended``, ``portfolios
    replaced`` or ``replaced whole``), ``why``, ``portfolio_count`` and ``portfolios`` (the ids replaced, the
    first ``_IDS_SHOWN``), ``rows`` (after) and ``seconds``. Each table changes in one
    transaction with its ``_sources`` rows, so a file interrupted half-way is consistent table
    by table and the next refresh resumes from it.
    """
    tables = warehouse_tables() if tables is None else tables
    statements = WAREHOUSE_STATEMENTS if statements is None else statements
    recorded: dict[tuple[str, str], tuple[str | None, int]] = {}
    if incremental:
        rows = con.execute(f"SELECT table_name, lake_table, table_id, version FROM {WarehouseResource.SOURCES}").fetchall()
        recorded = {(t, lake_table): (table_id, version) for t, lake_table, table_id, version in rows}
    # views and macros are created again at the end (those the code no longer defines vanish)
    for (view,) in con.execute(
        "SELECT DISTINCT view_name FROM duckdb_views() WHERE NOT internal AND schema_name = 'main'").fetchall():
        con.execute(f'DROP VIEW "{view}"')
    for macro, kind in con.execute(
        "SELECT DISTINCT function_name, function_type FROM duckdb_functions() WHERE NOT internal AND schema_name = 'main' "
        "AND function_type IN ('macro', 'table_macro')").fetchall():
        con.execute(f'DROP MACRO {"TABLE " if kind == "table_macro" else ""}"{macro}"')
    existing = {t for (t,) in con.execute("SELECT table_name FROM duckdb_tables() WHERE schema_name = 'main'").fetchall()}
    for stale in sorted(existing - {spec.name for spec in tables}):
        con.execute(f'DROP TABLE "{stale}"')
        con.execute(f"DELETE FROM {WarehouseResource.SOURCES} WHERE table_name = ?", [stale])

    report: dict[str, dict] = {}
    for spec in tables:
        started = time.perf_counter()
        # versions first, then the reads (pinned to those versions)
        sources = {name: _Source(lake, name) for name in spec.sources}
        if incremental:
            action, ids, why = _plan(con, lake, spec, sources, recorded, spec.name in existing)
        else:
            action, ids, why = "whole", [], "full build"
        con.execute("BEGIN TRANSACTION")
        try:
            if action == "whole":
                _replace_whole(con, lake, spec, sources)
            elif action == "portfolios":
                (source,) = sources.values()
                _replace_portfolios(con, spec, source, ids)
            elif action == "append":
                (source,) = sources.values()
                _append(con, lake, spec, source, recorded[(spec.name, source.table)][1])
            if action != "skip":
                _record(con, spec.name, sources)
            con.execute("COMMIT")
        except BaseException:
            con.execute("ROLLBACK")
            raise
        report[spec.name] = {
            "action": {"skip": "skipped", "portfolios": "portfolios replaced", "append": "rows appended",
                       "whole": "replaced whole"}[action],
            "why": why,
            "portfolio_count": len(ids),
            "portfolios": ids[:_IDS_SHOWN],
            "rows": con.execute(f'SELECT count(*) FROM "{spec.name}"').fetchall()[0][0],
            "seconds": round(time.perf_counter() - started, 3),
        }
    for statement in statements:
        con.execute(statement)
    return report


@dg.asset(
    key=dg.AssetKey(["publish", "warehouse"]),
    deps=[silver_key(n) for n in SILVER_PUBLISHED]
    + [silver_key("ledger_rejections")]
    + [dg.AssetKey(["bronze", k]) for k in contract.INGEST_ORDER]
    + [gold_key(name) for name in ANALYTICS_TABLES]
    + [gold_key(name) for name in REBALANCING_SCHEMAS]
    # the outbox reads silver and gold only (assets.outbox), so this adds no cycle
    + [dg.AssetKey(["publish", "outbox"])],
    group_name="publish",
    kinds={"duckdb"},
    description="`warehouse.duckdb` for analysts: state, positions, lots, realised P&L, cash, daily "
    "valuations, trades, reference and market data, the analytics (returns, performance, "
    "exposures, cash and margin, drift, risk, attribution), rebalancing (triggers, recommendations, orders, execution quality), quarantine, the ingestion log and the "
    "event outbox; point-in-time macros (state_as_of, portfolio_nav_as_of) and the audit view. The previous "
    "version is brought up to date (only the changed portfolios' rows of a per-portfolio table) and swapped in "
    "atomically; rebuilt whole when a reader still holds it.",
)
def warehouse(context: dg.AssetExecutionContext, lake: LakeResource, warehouse: WarehouseResource):
    result = warehouse.publish(lambda con, incremental: refresh_warehouse(con, lake, incremental))
    tables = result["tables"]
    done = {t: e["action"] + (f" ({e['portfolio_count']})" if e["portfolio_count"] else "") for t, e in tables.items()
            if e["action"] != "skipped"}
    context.log.info(f"warehouse: {result['mode']}{' (' + result['reason'] + ')' if result['reason'] else ''} in "
                     f"{result['seconds']} s; {len(tables) - len(done)} table(s) skipped; {done}")
    return dg.MaterializeResult(
        metadata={
            "path": dg.MetadataValue.path(warehouse.path),
            "mode": result["mode"],
            "reason": result["reason"],
            "shadow": result["shadow"],
            "seconds": result["seconds"],
            "tables": dg.MetadataValue.json(tables),
            "dagster/row_count": sum(e["rows"] for e in tables.values()),
        }
    )


PUBLISH_ASSETS = [warehouse]
