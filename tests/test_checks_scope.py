"""The state checks cover the portfolios the tables' latest commits changed: one late file's
portfolio after an intraday run, every portfolio after a full build; a corrupted lot recorded as
changed fails the check; commits that change no data (OPTIMIZE) are passed over."""

from __future__ import annotations

import shutil

import dagster as dg
import polars as pl
import pytest
from deltalake import DeltaTable

from assets.ingest import in_predicate
from assets.resources import TABLE_CONFIGURATION, resources_for
from assets.state import read_silver, silver_table
from orchestration.checks import (
    CheckScope,
    check_scope,
    latest_change,
    lots_reconcile_to_trades,
)
from orchestration.definitions import build_definitions
from test_pipeline import materialize_all
from transforms.changes import CHANGED_KEY, encode_portfolios

SCOPED_CHECKS = ("lots_reconcile_to_trades", "nav_equals_cash_plus_market_value")


def _evaluations(result) -> dict[str, dg.AssetCheckEvaluation]:
    return {e.check_name: e for e in result.get_asset_check_evaluations()}


def _meta(evaluation) -> dict:
    return {k: v.value for k, v in evaluation.metadata.items()}


@pytest.fixture(scope="module")
def late_book(tmp_path_factory, tiny_landing):
    """A book built by a full run, then one portfolio's late trades (within the day the state
    describes) applied by the intraday job: (data folder, that portfolio, the full run's
    result, the intraday run's result)."""
    root = tmp_path_factory.mktemp("checks_scope")
    source = root / "source"
    shutil.copytree(tiny_landing, source)
    last = sorted((source / "trades").iterdir())[-1]
    trades = pl.read_csv(last, infer_schema=False)
    pid = trades["portfolio_id"].max()
    trades.filter(pl.col("portfolio_id") != pid).write_csv(last)
    data_dir = root / "book"
    shutil.copytree(source, data_dir / "landing")
    full = materialize_all(data_dir)
    trades.filter(pl.col("portfolio_id") == pid).write_csv(data_dir / "landing" / "trades" / (last.stem + "_late.csv"))
    intraday = build_definitions(str(data_dir)).resolve_job_def("intraday").execute_in_process(
        instance=dg.DagsterInstance.ephemeral()
    )
    assert intraday.success
    return data_dir, pid, full, intraday


@pytest.fixture
def book(tmp_path, late_book):
    """A copy of the late book's data folder, free to corrupt: (lake, the late portfolio)."""
    data_dir, pid, _, _ = late_book
    shutil.copytree(data_dir / "lake", tmp_path / "lake")
    return resources_for(tmp_path)["lake"], pid


def test_a_full_build_checks_every_portfolio(late_book):
    data_dir, _, full, _ = late_book
    portfolios = resources_for(data_dir)["lake"].read("bronze/portfolios")["portfolio_id"].n_unique()
    evaluations = _evaluations(full)
    assert all(e.passed for e in evaluations.values()), [(n, _meta(e)) for n, e in evaluations.items() if not e.passed]
    for name in SCOPED_CHECKS:
        meta = _meta(evaluations[name])
        assert evaluations[name].passed, (name, meta)
        assert meta["scope"].startswith("every portfolio"), (name, meta["scope"])
        assert meta["portfolios_checked"] == portfolios > 1


def test_an_intraday_run_checks_the_one_portfolio_it_changed(late_book):
    _, pid, _, intraday = late_book
    evaluations = _evaluations(intraday)
    for name in SCOPED_CHECKS:
        meta = _meta(evaluations[name])
        assert evaluations[name].passed, (name, meta)
        assert meta["portfolios_checked"] == 1 and meta["portfolios"] == pid, (name, meta)
        assert meta["scope"].startswith("1 portfolio(s) changed by the latest commit"), meta["scope"]
    # the lots check read that portfolio's lots alone
    lake = resources_for(late_book[0])["lake"]
    assert _meta(evaluations["lots_reconcile_to_trades"])["lots"] == read_silver(
        lake, "lots", ["portfolio_id"], where=pl.col("portfolio_id") == pid
    ).height


def _corrupt_lot(lake, pid: str, changed: list[str] | None) -> None:
    """Add 5 to the quantity of ``pid``'s first open lot, replacing ``pid``'s rows by predicate
    and recording ``changed`` as the portfolios changed (``None``: a whole-table write with no
    change log)."""
    lots = lake.read(silver_table("lots"))
    target = lots.filter(pl.col("portfolio_id") == pid, pl.col("quantity") > 0).sort("lot_id").row(0, named=True)["lot_id"]
    bumped = lots.with_columns(
        pl.when(pl.col("lot_id") == target).then(pl.col("quantity") + 5.0).otherwise(pl.col("quantity")).alias("quantity")
    )
    if changed is None:
        lake.write(silver_table("lots"), bumped, run_id="test")
    else:
        lake.write(silver_table("lots"), bumped.filter(pl.col("portfolio_id") == pid), run_id="test",
                   predicate=in_predicate("portfolio_id", [pid]), commit_metadata={CHANGED_KEY: encode_portfolios(changed)})


def test_a_corrupted_lot_recorded_as_changed_fails_the_check(book):
    lake, pid = book
    assert lots_reconcile_to_trades(lake=lake).passed
    _corrupt_lot(lake, pid, [pid])
    result = lots_reconcile_to_trades(lake=lake)
    meta = _meta(result)
    assert not result.passed
    assert meta["mismatched_keys"] == 1 and meta["portfolios_checked"] == 1 and meta["portfolios"] == pid
    assert pid in meta["examples"]


def test_a_whole_table_write_checks_every_portfolio(book):
    lake, pid = book
    other = sorted(set(lake.read(silver_table("lots"))["portfolio_id"].to_list()) - {pid})[0]
    # the latest commits name pid alone: a corruption of another portfolio is not looked at ...
    assert lots_reconcile_to_trades(lake=lake).passed
    # ... but a write without the change log rewrote every portfolio: all are checked
    _corrupt_lot(lake, other, None)
    result = lots_reconcile_to_trades(lake=lake)
    meta = _meta(result)
    assert not result.passed and meta["mismatched_keys"] == 1 and other in meta["examples"]
    assert meta["scope"].startswith("every portfolio (the latest commit of silver/lots rewrote every portfolio")
    assert meta["portfolios_checked"] == lake.read(silver_table("lots"))["portfolio_id"].n_unique() > 1


def test_a_commit_that_changed_no_portfolio_checks_none(book):
    lake, pid = book
    # both tables' rows of pid rewritten as they were, each commit recording no changed portfolio
    for name in ("lots", "trades"):
        rows = lake.read(silver_table(name)).filter(pl.col("portfolio_id") == pid)
        lake.write(silver_table(name), rows, run_id="test", predicate=in_predicate("portfolio_id", [pid]),
                   commit_metadata={CHANGED_KEY: encode_portfolios([])})
    result = lots_reconcile_to_trades(lake=lake)
    meta = _meta(result)
    assert result.passed and meta["portfolios_checked"] == 0 and meta["lots"] == 0 and meta["portfolios"] == "none"


def test_neutral_commits_are_passed_over_and_scopes_unite(book):
    lake, pid = book
    assert latest_change(lake, silver_table("lots")) == frozenset({pid})
    # a commit that changes no row (a table property set again, as a maintenance job would)
    DeltaTable(lake.uri(silver_table("lots"))).alter.set_table_properties(TABLE_CONFIGURATION)
    assert lake.history(silver_table("lots"), 1)[0]["operation"] == "SET TBLPROPERTIES"
    assert latest_change(lake, silver_table("lots")) == frozenset({pid})
    assert check_scope(lake, [silver_table("lots"), silver_table("trades")]).portfolios == frozenset({pid})
    assert check_scope(lake, [silver_table("lots"), "silver/no_such_table"]).full  # no history: everything
    _corrupt_lot(lake, pid, ["P_OTHER"])
    assert check_scope(lake, [silver_table("lots"), silver_table("trades")]).portfolios == frozenset({pid, "P_OTHER"})


def test_scope_filter_and_metadata():
    frame = pl.DataFrame({"portfolio_id": ["A", "B", "C", None]})
    scope = CheckScope(frozenset({"C", "A"}), "test")
    assert frame.filter(scope.where())["portfolio_id"].to_list() == ["A", "C"]
    assert scope.metadata() == {"scope": "2 portfolio(s) changed by the latest commit (test)", "portfolios_checked": 2,
                                "portfolios": "A, C"}
    everything = CheckScope(None, "why")
    assert everything.where() is None and everything.full
    assert everything.metadata(frame["portfolio_id"]) == {"scope": "every portfolio (why)", "portfolios_checked": 3,
                                                          "portfolios": "A, B, C"}
    assert CheckScope(frozenset(), "none").metadata()["portfolios"] == "none"
