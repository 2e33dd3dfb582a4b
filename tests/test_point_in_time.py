"""Point in time, lineage and the reader's view of the warehouse, on the tiny book landed in two
steps (through 2026-09-30 in a full run, then October's trade and price files through the
intraday job, as the landing sensor launches it):

- the warehouse macros ``state_as_of`` / ``portfolio_nav_as_of`` equal what
  ``portfolio state --as-of`` computes (``build_book(inputs.as_of(ts))``) at many moments;
- Delta time travel of ``silver/portfolio_state`` and ``silver/positions`` gives the state as
  the first run published it, equal to both recomputations at its ``as_of``;
- the tables keep their history, every commit names its run and code version, bronze commits
  name the file hashes;
- the ``audit`` view traces every lot to its trades, the landing row and the ingestion run;
- a reader of the old warehouse file is not disturbed by the swap.
"""

from __future__ import annotations

import re
import subprocess
import sys
from dataclasses import dataclass
from datetime import date, datetime, time, timedelta, timezone
from pathlib import Path

import dagster as dg
import duckdb
import polars as pl
import pytest
from deltalake import DeltaTable
from polars.testing import assert_frame_equal

from assets.outbox import OUTBOX_TABLE
from assets.publish import warehouse
from assets.resources import TABLE_CONFIGURATION, code_version, resources_for
from assets.state import read_book_inputs
from orchestration.cli import write_landing
from test_pipeline import materialize_all, run_intraday_then_publish
from transforms import contract
from transforms.book import BookInputs, build_book
from transforms.outbox import OUTBOX_SCHEMA

CUTOFF = date(2026, 9, 30)  # the first run's data ends here; October lands later
PORTFOLIOS = ("P001", "P002", "P003", "P004")
TOL = {"check_exact": False, "rel_tol": 1e-12, "abs_tol": 1e-6}
# delta-rs defaults, which the lake must exceed (design.md, "Storage")
DELTA_DEFAULTS = {"delta.logRetentionDuration": timedelta(days=30), "delta.deletedFileRetentionDuration": timedelta(days=7)}
COUNT_TRADES = "SELECT count(*) FROM trades"


@dataclass(frozen=True)
class History:
    data_dir: Path
    first_run_id: str
    intraday_run_ids: tuple[str, ...]  # trades file, then prices file
    state_version: int  # silver/portfolio_state after the first run
    positions_version: int
    as_of: datetime  # the first run's state moment
    middle_state_version: int  # after the October trades, before October's prices
    trades_before: int  # warehouse trades after the first run
    old_reader_after: int  # the same count, read through the connection opened before the swap
    old_reader_rows: int  # rows of a result fetched half before, half after the swap
    new_reader_after: int  # a new connection (another process) after the swap


def _split(book: dict[str, list[tuple[str, pl.DataFrame]]]) -> tuple[dict, dict]:
    """(first landing, later landing): data dated after CUTOFF is held back; the last trade
    file and October's prices land later, October's cash flows not at all (the intraday job
    ingests trades and prices only)."""
    first = {kind: list(files) for kind, files in book.items()}
    *early_trades, last_trades = book["trades"]
    assert last_trades[1]["trade_ts"].min().date() > CUTOFF  # the held file is all after the cut
    first["trades"] = early_trades
    (stem, prices), = book["prices"]
    first["prices"] = [(stem, prices.filter(pl.col("date") <= CUTOFF))]
    first["cash_flows"] = [(s, f.filter(pl.col("ts").dt.date() <= CUTOFF)) for s, f in book["cash_flows"]]
    later = {"trades": [last_trades], "prices": [(f"{stem}_10", prices.filter(pl.col("date") > CUTOFF))]}
    return first, later


def _count_in_new_process(path: Path) -> int:
    """``count(*)`` of trades through a connection opened by another process (in this process a
    new connection to a path that is still open reuses the open database, i.e. the old file)."""
    code = "import duckdb, sys; print(duckdb.connect(sys.argv[1], read_only=True).execute(sys.argv[2]).fetchall()[0][0])"
    out = subprocess.run([sys.executable, "-c", code, str(path), COUNT_TRADES], capture_output=True, text=True, check=True)
    return int(out.stdout)


@pytest.fixture(scope="module")
def history(tmp_path_factory, tiny_book) -> History:
    data = tmp_path_factory.mktemp("point_in_time")
    first, later = _split(tiny_book)
    write_landing(first, data / "landing", {"prices"})
    first_run = materialize_all(data)
    lake = resources_for(data)["lake"]
    state_version, positions_version = lake.version("silver/portfolio_state"), lake.version("silver/positions")
    as_of = lake.read("silver/portfolio_state", columns=["as_of"])["as_of"].unique().item()

    warehouse = data / "warehouse.duckdb"
    reader = duckdb.connect(str(warehouse), read_only=True)
    try:
        trades_before = reader.execute(COUNT_TRADES).fetchall()[0][0]
        pending = reader.execute("SELECT * FROM lots")
        fetched = len(pending.fetchmany(100))
        run_ids, middle = [], None
        for kind in ("trades", "prices"):  # one intraday run per file, as the sensor launches them
            write_landing({kind: later[kind]}, data / "landing", {"prices"})
            result, _ = run_intraday_then_publish(data)
            run_ids.append(result.run_id)
            middle = lake.version("silver/portfolio_state") if middle is None else middle
        fetched += len(pending.fetchall())
        old_after = reader.execute(COUNT_TRADES).fetchall()[0][0]
        new_after = _count_in_new_process(warehouse)
    finally:
        reader.close()
    return History(data, first_run.run_id, tuple(run_ids), state_version, positions_version, as_of, middle,
                   trades_before, old_after, fetched, new_after)


@pytest.fixture(scope="module")
def final_inputs(history) -> BookInputs:
    """The bronze inputs of the final lake, as ``portfolio state --as-of`` reads them."""
    return read_book_inputs(resources_for(history.data_dir)["lake"])


@pytest.fixture(scope="module")
def con(history):
    with duckdb.connect(str(history.data_dir / "warehouse.duckdb"), read_only=True) as connection:
        yield connection


def macro_positions(con, pid: str, ts: datetime) -> pl.DataFrame:
    return con.sql("SELECT * FROM state_as_of(?, ?)", params=[pid, ts]).pl().cast(contract.POSITIONS_SCHEMA)


def macro_nav(con, pid: str, ts: datetime) -> pl.DataFrame:
    return con.sql("SELECT * FROM portfolio_nav_as_of(?, ?)", params=[pid, ts]).pl().cast(contract.PORTFOLIO_STATE_SCHEMA)


def assert_macros_equal_book(con, book, pids=PORTFOLIOS) -> tuple[pl.DataFrame, pl.DataFrame]:
    """The macros at ``book.as_of`` equal the book's positions and state, portfolio by portfolio."""
    positions = pl.concat([macro_positions(con, pid, book.as_of) for pid in pids])
    nav = pl.concat([macro_nav(con, pid, book.as_of) for pid in pids])
    wanted = pl.col("portfolio_id").is_in(list(pids))
    assert_frame_equal(positions, book.positions.filter(wanted), **TOL)
    assert_frame_equal(nav, book.portfolio_state.filter(wanted), **TOL)
    return positions, nav


def wash_sale_gap(inputs: BookInputs) -> tuple[datetime, str]:
    """A moment between a loss sale and the later purchase that replaces it (wash sale), and the
    sale's trade id."""
    ledger = build_book(inputs, with_daily=False)
    sales = ledger.realized_pnl.filter(pl.col("disallowed_loss") > 0).select("portfolio_id", "instrument_id", "trade_id", "close_ts")
    replacements = ledger.lots.filter(pl.col("holding_start") < pl.col("open_ts").dt.date()).select(
        "portfolio_id", "instrument_id", "open_ts"
    )
    pairs = (
        sales.join(replacements, on=["portfolio_id", "instrument_id"])
        .filter((pl.col("open_ts") > pl.col("close_ts")) & (pl.col("open_ts") <= pl.col("close_ts") + timedelta(days=30)))
        .sort("close_ts", "open_ts")
    )
    assert pairs.height, "the tiny book has a replacement bought after its loss sale"
    sale = pairs.row(0, named=True)
    return sale["close_ts"] + (sale["open_ts"] - sale["close_ts"]) / 2, sale["trade_id"]


def test_the_macros_equal_the_as_of_recomputation(history, final_inputs, con):
    trades, lots = final_inputs.trades, build_book(final_inputs, with_daily=False).lots
    gap, loss_sale = wash_sale_gap(final_inputs)
    short = lots.filter((pl.col("position_type") == "SHORT") & pl.col("closed_ts").is_not_null()).sort("open_ts").row(0, named=True)
    closes = final_inputs.prices["date"].unique()
    weekend = next(d for d in (CUTOFF - timedelta(days=k) for k in range(10)) if d not in closes.to_list())
    moments = {
        "a trade's own timestamp (inclusive)": trades.filter(pl.col("side") == "SELL")["trade_ts"].min(),
        "between a wash sale and its replacement": gap,
        "a short open": short["open_ts"] + (short["closed_ts"] - short["open_ts"]) / 2,
        "a day without closes (forward fill)": datetime.combine(weekend, time(12), timezone.utc),
        "the first run's as_of": history.as_of,
        "mid-October, from the intraday files": datetime(2026, 10, 15, 15, tzinfo=timezone.utc),
        "the final state": final_inputs.trades["trade_ts"].max() + timedelta(days=1),
    }
    seen_types, split_later = set(), 0
    for name, ts in moments.items():
        book = build_book(final_inputs, ts, with_daily=False)  # what `portfolio state --as-of` computes
        positions, nav = assert_macros_equal_book(con, book)
        assert positions.filter(pl.col("position_type") != "CASH").height, name  # not an empty comparison
        seen_types |= set(positions["position_type"])
        # lots held then that a later wash sale split into pieces (their published
        # original_quantity is smaller): the case the macro's per-piece sum must get right
        held = book.lots.filter(pl.col("status") == "OPEN").join(lots, on="lot_id", suffix="_now")
        split_later += (held["original_quantity"] > held["original_quantity_now"] + 1e-9).sum()
        if name == "between a wash sale and its replacement":
            # the ledger at that moment has not seen the replacement: the sale's disallowed loss
            # is smaller than the published one, yet positions and values agree
            then = book.realized_pnl.filter(pl.col("trade_id") == loss_sale)["disallowed_loss"].sum()
            now = con.execute("SELECT sum(disallowed_loss) FROM realized_pnl WHERE trade_id = ?", [loss_sale]).fetchall()[0][0]
            assert then < now
        if name == "a short open":
            assert (positions["position_type"] == "SHORT").any() and (nav["short_market_value"] < 0).any()
    assert seen_types == {"LONG", "SHORT", "CASH"} and split_later > 0


def test_nothing_before_the_first_trade_and_no_unknown_portfolio(final_inputs, con):
    first_flow, first_trade = final_inputs.cash_flows["ts"].min(), final_inputs.trades["trade_ts"].min()
    assert first_flow < first_trade
    before_all = first_flow - timedelta(microseconds=1)
    for pid in PORTFOLIOS:
        assert macro_positions(con, pid, before_all).height == 0
        nav = macro_nav(con, pid, before_all).row(0, named=True)
        assert nav["total_value"] == 0.0 and nav["positions_count"] == 0 and nav["weights"] == []
        assert nav["last_updated"] is None
    cash_only = first_trade - timedelta(microseconds=1)
    book = build_book(final_inputs, cash_only, with_daily=False)
    positions, _ = assert_macros_equal_book(con, book)
    assert positions.height and set(positions["position_type"]) == {"CASH"}
    for macro in ("state_as_of", "portfolio_nav_as_of"):
        assert con.execute(f"SELECT * FROM {macro}('NO_SUCH_PORTFOLIO', ?)", [cash_only + timedelta(days=60)]).fetchall() == []
    # a string with an offset is a moment too
    text = con.sql("SELECT * FROM portfolio_nav_as_of('P001', '2026-09-15 12:00:00+00')").pl().cast(contract.PORTFOLIO_STATE_SCHEMA)
    assert_frame_equal(text, macro_nav(con, "P001", datetime(2026, 9, 15, 12, tzinfo=timezone.utc)))


def test_time_travel_gives_the_state_as_published_then(history, final_inputs, con):
    lake = resources_for(history.data_dir)["lake"]
    state = lake.read("silver/portfolio_state", contract.PORTFOLIO_STATE_SCHEMA, version=history.state_version)
    positions = lake.read("silver/positions", contract.POSITIONS_SCHEMA, version=history.positions_version)
    assert history.as_of == datetime.combine(CUTOFF, time.max, timezone.utc)
    assert (state["as_of"] == history.as_of).all() and state["portfolio_id"].to_list() == list(PORTFOLIOS)
    # the lake has moved on since: the current state is later and holds October
    assert lake.read("silver/portfolio_state", columns=["as_of"])["as_of"].min() > history.as_of
    book = build_book(final_inputs, history.as_of, with_daily=False)
    assert_frame_equal(state, book.portfolio_state, **TOL)
    assert_frame_equal(positions, book.positions, **TOL)
    macro_positions_then, macro_state_then = assert_macros_equal_book(con, book)
    assert_frame_equal(macro_state_then, state, **TOL)
    assert_frame_equal(macro_positions_then, positions, **TOL)

    # Time travel answers "what was published", the macros "what happened by ts as known now":
    # after the October trades landed and before October's prices did, the published state
    # valued October's holdings at September's closes; the lake now knows October's closes.
    middle = lake.read("silver/portfolio_state", contract.PORTFOLIO_STATE_SCHEMA, version=history.middle_state_version)
    moment = middle["as_of"].max()
    assert moment.date() > CUTOFF
    recomputed = build_book(final_inputs, moment, with_daily=False).portfolio_state
    assert (middle["total_value"] - recomputed["total_value"]).abs().max() > 1.0


def _interval(text: str) -> timedelta:
    number, unit = re.fullmatch(r"interval (\d+) (day|hour|minute|second)s?", text.strip()).groups()
    return timedelta(**{f"{unit}s": int(number)})


@pytest.mark.parametrize("table", ["silver/portfolio_state", "silver/positions", "silver/lots", "silver/realized_pnl",
                                   "silver/cash_ledger", "bronze/trades", "bronze/prices"])
def test_tables_keep_the_history_reconstruction_needs(history, table):
    delta = DeltaTable(resources_for(history.data_dir)["lake"].uri(table))
    configuration = delta.metadata().configuration
    for key, promised in TABLE_CONFIGURATION.items():
        assert _interval(configuration[key]) >= _interval(promised) > DELTA_DEFAULTS[key], (table, key)
    assert configuration.get("delta.enableDeletionVectors", "false") == "false"
    assert "deletionVectors" not in (delta.protocol().reader_features or [])
    assert delta.version() >= 1
    first = DeltaTable(delta.table_uri, version=0)  # the oldest version still reads
    assert first.to_pyarrow_table().num_columns


def test_every_commit_names_its_run_code_version_and_sources(history):
    lake = resources_for(history.data_dir)["lake"]
    runs = {history.first_run_id, *history.intraday_run_ids}
    for table in ("silver/portfolio_state", "bronze/trades", "bronze/prices"):
        commits = lake.history(table)
        assert commits and {c["run_id"] for c in commits} <= runs, table
        assert all(c["code_version"] == code_version() for c in commits), table
    state_runs = [c["run_id"] for c in sorted(lake.history("silver/portfolio_state"), key=lambda c: c["version"])]
    assert state_runs[0] == history.first_run_id and set(history.intraday_run_ids) <= set(state_runs)
    for kind in ("trades", "prices"):
        log = lake.read(f"bronze/ingestion_log/{kind}", contract.INGESTION_LOG_SCHEMA)
        for commit in lake.history(f"bronze/{kind}"):
            named = set(commit["source_files"].split(",")) - {""}
            ingested = log.filter(pl.col("run_id") == commit["run_id"])
            expected = {f"{r['source_file']}@{r['source_sha256'][:12]}" for r in ingested.iter_rows(named=True)}
            assert named == expected and named, (kind, commit["version"])
    # the held trade file was ingested by the first intraday run, the rest by the full run
    trades_log = lake.read("bronze/ingestion_log/trades", contract.INGESTION_LOG_SCHEMA)
    assert trades_log.filter(pl.col("run_id") == history.intraday_run_ids[0])["source_file"].to_list() == ["trades/trades_2026_10.csv"]


def test_the_audit_view_traces_every_lot_to_its_trades_and_files(history, con):
    audit = con.sql("FROM audit").pl()
    lots = con.sql("SELECT portfolio_id, instrument_id, position_type, lot_id, open_trade_id, quantity, status FROM lots").pl()
    log = con.sql("SELECT source_file, source_sha256, run_id FROM ingestion_log WHERE kind = 'trades'").pl()
    assert audit.height == lots.height + con.execute("SELECT count(*) FROM realized_pnl").fetchall()[0][0]

    # every open lot of a position: its opening trade, from a file the ingestion log holds
    opening = audit.filter(pl.col("role") == "OPEN")
    open_lots = lots.filter(pl.col("status") == "OPEN")
    traced = open_lots.join(opening, left_on=["lot_id", "open_trade_id"], right_on=["lot_id", "trade_id"], how="left")
    assert open_lots.height and traced.height == open_lots.height
    assert traced["source_file"].null_count() == 0 and traced["run_id"].null_count() == 0
    assert traced["ingested_at"].null_count() == 0
    assert traced.join(log, on=["source_file", "source_sha256", "run_id"], how="anti").height == 0
    positions = con.sql("SELECT portfolio_id, instrument_id, position_type FROM positions WHERE position_type <> 'CASH'").pl()
    assert positions.join(traced, on=["portfolio_id", "instrument_id", "position_type"], how="anti").height == 0

    # quantities: per lot OPEN - CLOSE = the remaining quantity; the pieces of a trade sum to it
    signed = pl.when(pl.col("role") == "OPEN").then(pl.col("quantity")).otherwise(-pl.col("quantity"))
    balance = audit.group_by("lot_id").agg(signed.sum().alias("balance"), pl.col("lot_quantity").first())
    assert (balance["balance"] - balance["lot_quantity"]).abs().max() < 1e-6
    assert audit["lot_id"].str.contains("~W").any()  # wash-sale pieces are covered
    pieces = opening.group_by("trade_id").agg(pl.col("quantity").sum(), pl.col("trade_quantity").first())
    assert (pieces["quantity"] - pieces["trade_quantity"]).abs().max() < 1e-6

    # the lineage points at the landing row that holds the trade, and at the run that read it
    landing = pl.concat(
        [pl.read_csv(path, columns=["trade_id"]).with_row_index("source_row", offset=1)
         .with_columns(pl.lit(f"trades/{path.name}").alias("source_file"), pl.col("source_row").cast(pl.Int64))
         for path in sorted((history.data_dir / "landing" / "trades").glob("*.csv"))]
    )
    rows = audit.select("trade_id", "source_file", "source_row").unique()
    assert rows.join(landing, on=["trade_id", "source_file", "source_row"], how="anti").height == 0
    october = audit.filter(pl.col("source_file") == "trades/trades_2026_10.csv")
    assert october.height and (october["run_id"] == history.intraday_run_ids[0]).all()
    assert (audit.filter(pl.col("source_file") != "trades/trades_2026_10.csv")["run_id"] == history.first_run_id).all()

    # audit_position: the rows of that position's open lots, opening trade first
    pid, iid = open_lots.row(0, named=True)["portfolio_id"], open_lots.row(0, named=True)["instrument_id"]
    one = con.sql("SELECT * FROM audit_position(?, ?)", params=[pid, iid]).pl()
    expected = audit.filter((pl.col("portfolio_id") == pid) & (pl.col("instrument_id") == iid) & (pl.col("lot_status") == "OPEN"))
    assert one.height == expected.height > 0
    assert one.group_by("lot_id", maintain_order=True).agg(pl.col("role").first())["role"].to_list() == ["OPEN"] * one["lot_id"].n_unique()
    assert con.execute("SELECT count(*) FROM audit_position('NO_SUCH_PORTFOLIO', ?)", [iid]).fetchall()[0][0] == 0


def test_the_outbox_is_published_in_order(history, con):
    lake = resources_for(history.data_dir)["lake"]
    published = con.sql("SELECT * FROM outbox").pl().cast(OUTBOX_SCHEMA)
    stored = lake.read(OUTBOX_TABLE, OUTBOX_SCHEMA).sort("portfolio_id", "sequence")
    assert published.height and published.height == stored.height
    assert_frame_equal(published, stored)  # same rows, stored in (portfolio_id, sequence) order
    # the warehouse waits for the outbox (which reads silver and gold only: no cycle)
    assert dg.AssetKey(["publish", "outbox"]) in warehouse.asset_deps[warehouse.key]


def test_a_reader_of_the_old_file_is_not_disturbed_by_the_swap(history):
    # two intraday runs republished the warehouse while one connection stayed open on it
    assert history.old_reader_after == history.trades_before  # still the old file's content
    assert history.old_reader_rows > 100  # a result fetched across the swap came out whole
    assert history.new_reader_after > history.trades_before  # a new connection sees the new file
    with duckdb.connect(str(history.data_dir / "warehouse.duckdb"), read_only=True) as con:
        assert con.execute(COUNT_TRADES).fetchall()[0][0] == history.new_reader_after
