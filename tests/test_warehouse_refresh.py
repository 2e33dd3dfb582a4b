"""The warehouse refreshed in place of its previous version (``assets.publish.refresh_warehouse``
through ``WarehouseResource.publish``), on the tiny book:

- after a full run and two intraday runs on late files of one portfolio each, the refreshed
  file holds exactly the rows (every table, sorted by all columns), views, macros and
  ``_sources`` of a full build of the same lake, and the asset's metadata says incremental,
  with the touched portfolios alone replaced in the per-portfolio tables;
- refreshes without a lake change skip every table;
- a reader (another process, or a connection of this one) still holding the shadow forces the
  full rebuild, and its answers do not change; readers opening during the refresh see the old
  file or the new one, whole;
- a table rewritten whole, created anew or given a new column is replaced whole;
- a missing, corrupt, foreign or edited shadow gives a full build, then refreshes resume;
- two publishes at once take turns, and both files end up equal to a full build.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import dagster as dg
import duckdb
import polars as pl
import pytest
from polars.testing import assert_frame_equal

from assets.publish import refresh_warehouse, warehouse_tables
from assets.resources import LakeResource, WarehouseResource, resources_for
from test_pipeline import materialize_all, run_intraday_then_publish
from transforms.changes import CHANGED_KEY, encode_portfolios

# the per-portfolio tables the intraday job rewrites by predicate (its state and drift)
PER_PORTFOLIO = ("positions", "lots", "realized_pnl", "cash_ledger", "daily_valuations", "trades",
                 "drift", "drift_summary", "drift_history", "drift_alerts")
# what a reader asks: the positions' total quantity and the positions version the file holds
QUESTION = ("SELECT (SELECT round(sum(quantity), 6) FROM positions), "
            "(SELECT version FROM _warehouse._sources WHERE lake_table = 'silver/positions')")


@dataclass(frozen=True)
class Book:
    data: Path
    touched: tuple[str, ...]  # the portfolio of each late file, in landing order
    runs: tuple[dict, ...]  # the warehouse metadata of each intraday run


def _warehouse_metadata(result: dg.ExecuteInProcessResult) -> dict:
    for event in result.get_asset_materialization_events():
        if event.asset_key == dg.AssetKey(["publish", "warehouse"]):
            return {k: v.value for k, v in event.event_specific_data.materialization.metadata.items()}
    raise AssertionError("the run did not publish the warehouse")


@pytest.fixture(scope="module")
def book(tmp_path_factory, tiny_landing) -> Book:
    """A full run without two portfolios' trades of the last file, then one intraday run per
    late file (one portfolio each)."""
    data = tmp_path_factory.mktemp("warehouse_refresh")
    shutil.copytree(tiny_landing, data / "landing")
    last = sorted((data / "landing" / "trades").iterdir())[-1]
    trades = pl.read_csv(last, infer_schema=False)
    touched = tuple(sorted(trades["portfolio_id"].unique())[-2:])
    trades.filter(~pl.col("portfolio_id").is_in(touched)).write_csv(last)
    materialize_all(data)
    runs = []
    for pid in touched:
        trades.filter(pl.col("portfolio_id") == pid).write_csv(data / "landing" / "trades" / f"late_{pid}.csv")
        _, published = run_intraday_then_publish(data)
        runs.append(_warehouse_metadata(published))
    return Book(data, touched, tuple(runs))


def _copy(book: Book, tmp_path: Path) -> Path:
    """A copy of the book's data folder whose warehouse was just built whole (a copy has new
    inodes, so its first refresh is a full build: the stamps do not match)."""
    data = tmp_path / "data"
    shutil.copytree(book.data, data, ignore=shutil.ignore_patterns("landing"))
    assert _refresh(data)["mode"] == "full"
    return data


def _refresh(data: Path) -> dict:
    resources = resources_for(data)
    lake = resources["lake"]
    return resources["warehouse"].publish(lambda con, incremental: refresh_warehouse(con, lake, incremental))


def _full_build(data: Path, into: Path) -> Path:
    """A full build of ``data``'s lake into a new folder (no previous file there)."""
    lake = resources_for(data)["lake"]
    target = WarehouseResource(path=str(into / "warehouse.duckdb"))
    assert target.publish(lambda con, incremental: refresh_warehouse(con, lake, incremental))["mode"] == "full"
    return Path(target.path)


def _contents(path: Path) -> dict[str, pl.DataFrame]:
    """Every table sorted by all its columns, the bookkeeping, and the views and macros."""
    with duckdb.connect(str(path), read_only=True) as con:
        names = [n for (n,) in con.execute("SELECT table_name FROM duckdb_tables() WHERE schema_name = 'main'").fetchall()]
        out = {n: con.sql(f'SELECT * FROM "{n}" ORDER BY ALL').pl() for n in names}
        out["_warehouse._sources"] = con.sql("SELECT * FROM _warehouse._sources ORDER BY ALL").pl()
        out["views and macros"] = con.sql(
            "SELECT view_name AS name, sql FROM duckdb_views() WHERE NOT internal UNION ALL "
            "SELECT function_name, macro_definition FROM duckdb_functions() WHERE NOT internal "
            "AND function_type IN ('macro', 'table_macro') ORDER BY ALL").pl()
    return out


def _assert_same(a: Path, b: Path) -> None:
    left, right = _contents(a), _contents(b)
    assert left.keys() == right.keys()
    for name in left:
        try:
            assert_frame_equal(left[name], right[name], check_exact=True)
        except AssertionError as error:
            raise AssertionError(f"{name} differs: {error}") from None


def _change(lake: LakeResource, pid: str, table: str = "silver/positions", column: str = "quantity", **extra: pl.Expr) -> None:
    """Replace one portfolio's rows of ``table`` (``column`` plus one), recording the change as
    the pipeline's writers do."""
    rows = lake.read(table).filter(pl.col("portfolio_id") == pid).with_columns(pl.col(column) + 1.0, **extra)
    assert rows.height
    lake.write(table, rows, run_id="test", predicate=f"portfolio_id = '{pid}'",
               commit_metadata={CHANGED_KEY: encode_portfolios([pid])})


def _actions(report: dict) -> dict[str, tuple[str, list[str]]]:
    return {name: (entry["action"], entry["portfolios"]) for name, entry in report.items()}


def test_intraday_refreshes_equal_a_full_build_and_replace_only_the_touched_portfolios(book, tmp_path):
    first, second = book.runs
    assert first["mode"] == second["mode"] == "incremental"
    # each file is brought up to date from its own versions: the first refresh works on the
    # full run's copy, the second on the full run's file, which missed both late files
    for run, expected in ((first, [book.touched[0]]), (second, sorted(book.touched))):
        actions = _actions(run["tables"])
        # a table whose commits since only added rows gets those rows; one that replaced rows
        # gets the touched portfolios' rows again
        for name in PER_PORTFOLIO:
            assert actions[name] in (("portfolios replaced", expected), ("rows appended", [])), (name, actions[name])
        for name in ("trades", "cash_ledger"):  # appended to by the continued ledger and cash
            assert actions[name] == ("rows appended", []), name
        for name in ("positions", "lots", "daily_valuations"):  # replaced by portfolio
            assert actions[name] == ("portfolios replaced", expected), name
        replaced = {name for name, (action, _) in actions.items() if action == "portfolios replaced"}
        assert replaced <= set(PER_PORTFOLIO)  # no other table is touched portfolio by portfolio
        assert all(ids == [] for action, ids in actions.values() if action != "portfolios replaced")
        # untouched by the intraday job: reference data and the daily analytics
        for name in ("prices", "instruments", "portfolios", "returns_daily", "performance", "risk", "attribution"):
            assert actions[name][0] == "skipped", name
        # a whole overwrite whose change log names only the scope (the others' as_of moves)
        assert actions["portfolio_state"][0] == "replaced whole"
        assert "rewritten whole" in run["tables"]["portfolio_state"]["why"]
        # each run adds its events (and rebalancing rows) under its own run id
        for name in ("outbox", "recommendations", "orders", "rebalance_runs"):
            assert actions[name] == ("rows appended", []), name
        assert run["dagster/row_count"] == sum(entry["rows"] for entry in run["tables"].values())
    _assert_same(book.data / "warehouse.duckdb", _full_build(book.data, tmp_path / "full"))
    assert {spec.name for spec in warehouse_tables()} == set(first["tables"])


def test_refreshes_without_a_lake_change_skip_every_table(book, tmp_path):
    data = _copy(book, tmp_path)
    before = _contents(data / "warehouse.duckdb")
    for _ in range(2):
        result = _refresh(data)
        assert result["mode"] == "incremental" and result["shadow"] == "the previous published file"
        assert {entry["action"] for entry in result["tables"].values()} == {"skipped"}
        after = _contents(data / "warehouse.duckdb")
        for name in before:
            assert_frame_equal(after[name], before[name], check_exact=True)


READER = """
import duckdb, sys
con = duckdb.connect(sys.argv[1], read_only=True)
for _ in sys.stdin:
    print(repr(con.execute(sys.argv[2]).fetchall()), flush=True)
"""
# opens the warehouse again and again until the stop file exists; prints what it saw
LOOPING_READER = """
import duckdb, json, os, sys
answers, errors, opens = set(), [], 0
while True:
    stop = os.path.exists(sys.argv[3])
    try:
        with duckdb.connect(sys.argv[1], read_only=True) as con:
            answers.add(repr(con.execute(sys.argv[2]).fetchall()))
        opens += 1
    except Exception as error:
        errors.append(str(error)[:300])
    if opens == 1:
        print("ready", flush=True)
    if stop:
        break
print(json.dumps({"answers": sorted(answers), "errors": errors, "opens": opens}), flush=True)
"""


def _answer_now(path: Path) -> str:
    """What a new reader (another process) is told."""
    code = "import duckdb, sys; print(repr(duckdb.connect(sys.argv[1], read_only=True).execute(sys.argv[2]).fetchall()))"
    return subprocess.run([sys.executable, "-c", code, str(path), QUESTION], capture_output=True, text=True,
                          check=True).stdout.strip()


def test_a_reader_of_the_shadow_forces_a_full_rebuild_and_keeps_its_answers(book, tmp_path):
    data = _copy(book, tmp_path)
    published, lake = data / "warehouse.duckdb", resources_for(data)["lake"]
    reader = subprocess.Popen([sys.executable, "-c", READER, str(published), QUESTION], stdin=subprocess.PIPE,
                              stdout=subprocess.PIPE, text=True)
    try:
        def ask() -> str:
            reader.stdin.write("\n")
            reader.stdin.flush()
            return reader.stdout.readline().strip()

        answer = ask()
        _change(lake, book.touched[0])
        first = _refresh(data)  # the reader's file becomes the shadow
        assert first["mode"] == "incremental"
        assert _actions(first["tables"])["positions"] == ("portfolios replaced", [book.touched[0]])
        after_first = _answer_now(published)
        assert after_first != answer and ask() == answer

        _change(lake, book.touched[1])
        stop = tmp_path / "stop"
        looping = subprocess.Popen([sys.executable, "-c", LOOPING_READER, str(published), QUESTION, str(stop)],
                                   stdout=subprocess.PIPE, text=True)
        try:
            assert looping.stdout.readline().strip() == "ready"
            second = _refresh(data)
        finally:
            stop.touch()
            seen = json.loads(looping.communicate(timeout=60)[0])
        assert second["mode"] == "full" and "another process" in second["reason"], second["reason"]
        assert second["shadow"] == "the previous published file"  # the reader's inode leaves the rotation
        assert ask() == answer  # the old file was not written
        after_second = _answer_now(published)
        assert after_second not in (answer, after_first)
        assert seen["errors"] == [] and seen["opens"] >= 2
        assert set(seen["answers"]) <= {after_first, after_second}  # one file or the other, whole
    finally:
        reader.stdin.close()
        reader.wait(timeout=30)
    _assert_same(published, _full_build(data, tmp_path / "full"))
    # the reader is gone and its file with it: the next refresh is incremental again (on the
    # first refresh's file, which catches up the second change)
    third = _refresh(data)
    assert third["mode"] == "incremental"
    assert _actions(third["tables"])["positions"] == ("portfolios replaced", [book.touched[1]])
    _assert_same(published, tmp_path / "full" / "warehouse.duckdb")


def test_a_connection_of_this_process_to_the_shadow_forces_a_full_rebuild(book, tmp_path):
    # fcntl locks do not conflict within a process: the refresh must notice this reader itself
    data = _copy(book, tmp_path)
    published, lake = data / "warehouse.duckdb", resources_for(data)["lake"]
    with duckdb.connect(str(published), read_only=True) as reader:
        answer = reader.execute(QUESTION).fetchall()
        _change(lake, book.touched[0])
        assert _refresh(data)["mode"] == "incremental"
        _change(lake, book.touched[1])
        second = _refresh(data)
        assert second["mode"] == "full" and "this process" in second["reason"], second["reason"]
        assert reader.execute(QUESTION).fetchall() == answer
    _assert_same(published, _full_build(data, tmp_path / "full"))


def test_a_table_rewritten_whole_recreated_or_with_new_columns_is_replaced_whole(book, tmp_path):
    data = _copy(book, tmp_path)
    lake = resources_for(data)["lake"]
    pid, other = book.touched
    # a whole overwrite whose change log names one portfolio, while it drops another's rows
    lots = lake.read("silver/lots")
    lake.write("silver/lots", lots.filter(pl.col("portfolio_id") != other), run_id="test",
               commit_metadata={CHANGED_KEY: encode_portfolios([pid])})
    # a Delta table created anew at the same version (a new table id)
    signals = lake.read("bronze/signals")
    version = lake.version("bronze/signals")
    shutil.rmtree(Path(lake.uri("bronze/signals")))
    for _ in range(version + 1):
        lake.write("bronze/signals", signals.head(signals.height - 1), run_id="test")
    assert lake.version("bronze/signals") == version
    # a per-portfolio write that adds a column
    _change(lake, pid, "silver/cash_ledger", "amount", test_note=pl.lit("added"))
    # a per-portfolio write the refresh applies portfolio by portfolio
    _change(lake, other)
    result = _refresh(data)
    assert result["mode"] == "incremental"
    tables = result["tables"]
    assert tables["lots"]["action"] == "replaced whole" and "rewritten whole" in tables["lots"]["why"]
    assert tables["signals"]["action"] == "replaced whole" and "created anew" in tables["signals"]["why"]
    assert tables["cash_ledger"]["action"] == "replaced whole" and "columns changed" in tables["cash_ledger"]["why"]
    assert _actions(tables)["positions"] == ("portfolios replaced", [other])
    assert {name for name, e in tables.items() if e["action"] != "skipped"} == {"lots", "signals", "cash_ledger", "positions"}
    _assert_same(data / "warehouse.duckdb", _full_build(data, tmp_path / "full"))


def _restamp(warehouse: WarehouseResource) -> None:
    """Record the shadow's current size and time as this pipeline's (the lock file's JSON)."""
    stamps = json.loads(warehouse.lock_path.read_text())
    st = warehouse.shadow_path.stat()
    stamps["files"][str(st.st_ino)] = {"size": st.st_size, "mtime_ns": st.st_mtime_ns}
    warehouse.lock_path.write_text(json.dumps(stamps))


@pytest.mark.parametrize("damage", ["missing", "corrupt", "foreign", "edited by a reader", "of another format"])
def test_a_bad_shadow_gives_a_full_build_then_refreshes_resume(book, tmp_path, damage):
    data = _copy(book, tmp_path)
    warehouse = resources_for(data)["warehouse"]
    shadow = warehouse.shadow_path
    if damage == "missing":
        shadow.unlink()
    elif damage == "corrupt":
        with open(shadow, "r+b") as handle:
            handle.write(os.urandom(64 * 1024))
    elif damage == "foreign":  # made elsewhere (so a new inode), then moved in
        foreign = tmp_path / "foreign.duckdb"
        duckdb.connect(str(foreign)).execute("CREATE TABLE t AS SELECT 1 AS x").close()
        os.replace(foreign, shadow)
    elif damage == "edited by a reader":  # an analyst opened the published file read-write
        with duckdb.connect(str(shadow)) as con:
            con.execute("DELETE FROM positions")
    else:  # stamped by this pipeline, but without the bookkeeping this version reads
        with duckdb.connect(str(shadow)) as con:
            con.execute("DROP TABLE _warehouse._sources")
        _restamp(warehouse)
    _change(resources_for(data)["lake"], book.touched[0])
    result = _refresh(data)
    assert result["mode"] == "full" and result["shadow"] == "a copy of the new file (made once)"
    expected = {"missing": "no shadow file", "corrupt": "changed since", "foreign": "not written by this pipeline",
                "edited by a reader": "changed since", "of another format": "no _warehouse._sources"}[damage]
    assert expected in result["reason"], result["reason"]
    _assert_same(data / "warehouse.duckdb", _full_build(data, tmp_path / "full"))
    again = _refresh(data)
    assert again["mode"] == "incremental" and {e["action"] for e in again["tables"].values()} == {"skipped"}
    assert not list(data.glob(".warehouse.duckdb*")), "temporary files left behind"


def test_two_publishes_at_once_take_turns(book, tmp_path):
    data = _copy(book, tmp_path)
    _change(resources_for(data)["lake"], book.touched[0])
    with ThreadPoolExecutor(2) as pool:
        results = list(pool.map(lambda _: _refresh(data), range(2)))
    assert [r["mode"] for r in results] == ["incremental", "incremental"]
    # one after the other, each on the file the other did not write: both catch up the change
    assert [_actions(r["tables"])["positions"] for r in results] == [("portfolios replaced", [book.touched[0]])] * 2
    _assert_same(data / "warehouse.duckdb", _full_build(data, tmp_path / "full"))
    _assert_same(resources_for(data)["warehouse"].shadow_path, tmp_path / "full" / "warehouse.duckdb")
    assert not list(data.glob(".warehouse.duckdb*"))
