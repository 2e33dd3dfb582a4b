"""The intraday sensor: complete files only, one run per path and content, nothing twice; and the
intraday job applied to a book split into files gives the tables of one full run."""

from __future__ import annotations

import json
import os
import shutil

import dagster as dg
import polars as pl
import pytest
from deltalake import DeltaTable

from assets.resources import resources_for
from orchestration.definitions import build_definitions
from orchestration.sensors import MIN_LOOK_GAP, POLL_SECONDS, landing_requests, landing_sensor, look_at, settled
from assets.analytics import read_gold
from test_pipeline import assert_same_tables, materialize_all, snapshot
from transforms.validation import sha256_of


def _write(path, text: str, mtime_ns: int | None = None) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    if mtime_ns is not None:
        os.utime(path, ns=(mtime_ns, mtime_ns))


def test_a_file_is_complete_when_seen_unchanged_for_the_settle_time_since_an_earlier_look():
    looks = {"trades/a.csv": [10, 1, 1, 100.0]}  # last written at mtime 1, seen as it is since t = 100
    assert settled(looks, 100.0, 0.0) == []  # this look is the first: no earlier one agrees
    assert settled(looks, 100.1, 0.0) == ["trades/a.csv"]
    assert settled(looks, 100.5, 1.0) == []  # unchanged, but not for long enough
    assert settled(looks, 101.0, 1.0) == ["trades/a.csv"]
    # renamed into place after its last write (ctime later than mtime): two looks suffice
    looks = {"trades/b.csv": [10, 1, 5, 100.0]}
    assert settled(looks, 100.0, 1.0) == []
    assert settled(looks, 100.0 + MIN_LOOK_GAP / 2, 1.0) == []
    assert settled(looks, 100.0 + MIN_LOOK_GAP, 1.0) == ["trades/b.csv"]


class FakeClock:
    """A wall clock that moves only when slept on; ``on_sleep`` runs at each pause (a writer)."""

    def __init__(self, on_sleep=None):
        self.now, self.pauses, self.on_sleep = 1_000.0, [], on_sleep

    def __call__(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.pauses.append(round(seconds, 6))
        self.now += seconds
        if self.on_sleep:
            self.on_sleep()


def test_one_run_per_complete_file_and_content(tmp_path):
    landing = tmp_path / "landing"
    _write(landing / "trades" / "t1.csv", "trade_id\nT1\n", 1_000)
    _write(landing / "trades" / "t2.csv.part", "trade_id\nT2", 1_000)  # being written under a temporary name
    _write(landing / "cash_flows" / "c.csv", "flow_id\nF1\n", 1_000)  # not a watched kind
    requests, cursor = landing_requests(landing, {}, {})
    assert requests == [] and set(cursor["looks"]) == {"trades/t1.csv"}  # first look: not yet known to be complete
    requests, cursor = landing_requests(landing, cursor, {})
    assert [r.run_key.split("@")[0] for r in requests] == ["trades/t1.csv"]
    sha = requests[0].tags["portfolio/sha256"]
    assert requests[0].run_key == f"trades/t1.csv@{sha}" and requests[0].tags["portfolio/lake_writer"] == "intraday"
    assert landing_requests(landing, cursor, {})[0] == []  # the same content is never asked for twice
    # the partial upload is renamed into place: complete after two looks
    (landing / "trades" / "t2.csv.part").rename(landing / "trades" / "t2.csv")
    requests, cursor = landing_requests(landing, cursor, {})
    assert requests == []
    requests, cursor = landing_requests(landing, cursor, {})
    assert [r.tags["portfolio/source_file"] for r in requests] == ["trades/t2.csv"]
    # a file rewritten with new content is a new run key; while it changes it waits
    _write(landing / "trades" / "t1.csv", "trade_id\nT1\nT3\n", 2_000)
    requests, cursor = landing_requests(landing, cursor, {})
    assert requests == []  # changed since the last look: it waits
    requests, cursor = landing_requests(landing, cursor, {})
    assert len(requests) == 1 and requests[0].run_key.startswith("trades/t1.csv@") and requests[0].tags["portfolio/sha256"] != sha
    # a file the ingestion log already holds (same content) launches nothing
    _write(landing / "prices" / "p.csv", "date\n2026-01-02\n", 3_000)
    logged = {"prices": {"prices/p.csv": sha256_of((landing / "prices" / "p.csv").read_bytes())}}
    _, cursor = landing_requests(landing, cursor, logged)
    assert landing_requests(landing, cursor, logged)[0] == []
    # the cursor holds only files present at the last look
    (landing / "trades" / "t2.csv").unlink()
    _, cursor = landing_requests(landing, cursor, logged)
    assert "trades/t2.csv" not in cursor["looks"] and "trades/t2.csv" not in cursor["done"]
    assert set(look_at(landing)) == {"trades/t1.csv", "prices/p.csv"}


def test_a_tick_looks_twice_at_a_file_it_has_not_seen_before(tmp_path):
    landing = tmp_path / "landing"
    _write(landing / "trades" / "t1.csv", "trade_id\nT1\n")  # written in place: it must settle
    clock = FakeClock()
    requests, cursor = landing_requests(landing, {}, {}, settle_s=0.5, sleep=clock.sleep, clock=clock)
    assert clock.pauses == [0.5] and [r.tags["portfolio/source_file"] for r in requests] == ["trades/t1.csv"]
    # nothing new: no pause
    assert landing_requests(landing, cursor, {}, settle_s=0.5, sleep=clock.sleep, clock=clock)[0] == []
    assert clock.pauses == [0.5]

    # a writer still appending, between ticks and during the pause: never complete while it
    # goes on, and complete at the first tick whose two looks agree
    growing = landing / "trades" / "t2.csv"
    _write(growing, "trade_id\n")

    def append() -> None:
        with growing.open("a") as f:
            f.write("T\n")
    writing = FakeClock(on_sleep=append)
    for _ in range(3):
        append()
        requests, cursor = landing_requests(landing, cursor, {}, settle_s=0.5, sleep=writing.sleep, clock=writing)
        assert requests == []
    writing.on_sleep = None
    requests, cursor = landing_requests(landing, cursor, {}, settle_s=0.5, sleep=writing.sleep, clock=writing)
    assert [r.tags["portfolio/source_file"] for r in requests] == ["trades/t2.csv"]
    assert growing.read_text() == "trade_id\n" + "T\n" * 6


def test_a_watching_tick_asks_for_a_file_landed_during_it_once_settled(tmp_path):
    landing = tmp_path / "landing"
    _write(landing / "trades" / "old.csv", "trade_id\nT0\n", 1_000)
    clock = FakeClock()
    requests, cursor = landing_requests(landing, {}, {}, settle_s=1.0, sleep=clock.sleep, clock=clock)
    assert len(requests) == 1
    # the old file is done: a tick that sees nothing new watches for its whole watch, polling,
    # and asks for nothing
    clock.pauses.clear()
    requests, cursor = landing_requests(landing, cursor, {}, settle_s=1.0, watch_s=4.0, sleep=clock.sleep, clock=clock)
    assert requests == [] and sum(clock.pauses) == 4.0 and max(clock.pauses) <= POLL_SECONDS

    # a file lands 1.1 s into the next tick, written in two parts 0.3 s apart: the tick asks for
    # it 1 s after the look that saw it whole, and returns at once
    new = landing / "trades" / "new.csv"
    writes = {1.1: "trade_id\nT1\n", 1.4: "trade_id\nT1\nT2\n"}

    def writer() -> None:
        for at, text in list(writes.items()):
            if clock.now - started >= at:
                new.write_text(text)
                del writes[at]
    clock = FakeClock(on_sleep=writer)
    started = clock.now
    requests, cursor = landing_requests(landing, cursor, {}, settle_s=1.0, watch_s=4.0, sleep=clock.sleep, clock=clock)
    assert [r.tags["portfolio/source_file"] for r in requests] == ["trades/new.csv"]
    whole_seen = 1.5  # the first poll after the second write
    assert whole_seen + 1.0 <= clock.now - started <= whole_seen + 1.0 + POLL_SECONDS
    assert requests[0].tags["portfolio/sha256"] == sha256_of(new.read_bytes())


def test_a_file_renamed_into_place_is_asked_for_after_two_looks_and_one_written_in_place_settles(tmp_path):
    landing = tmp_path / "landing"
    (landing / "trades").mkdir(parents=True)
    clock = FakeClock()
    _, cursor = landing_requests(landing, {}, {}, settle_s=1.0, sleep=clock.sleep, clock=clock)

    # 0.6 s into a watching tick, one file is renamed into place (written under a temporary
    # name, its times set in the past as a slow upload's would be) and another is written in place
    def writer() -> None:
        if clock.now - started >= 0.6 and not (landing / "trades" / "renamed.csv").exists():
            part = landing / "trades" / "renamed.csv.part"
            _write(part, "trade_id\nT1\n", 1_000)
            part.rename(landing / "trades" / "renamed.csv")
            _write(landing / "trades" / "in_place.csv", "trade_id\nT2\n")
    clock = FakeClock(on_sleep=writer)
    started = clock.now
    requests, cursor = landing_requests(landing, cursor, {}, settle_s=1.0, watch_s=4.0, sleep=clock.sleep, clock=clock)
    assert [r.tags["portfolio/source_file"] for r in requests] == ["trades/renamed.csv"]
    seen = 0.75  # the first poll after the writer
    assert seen + MIN_LOOK_GAP <= round(clock.now - started, 6) <= seen + POLL_SECONDS
    # the file written in place is asked for only a full second after it was first seen
    requests, cursor = landing_requests(landing, cursor, {}, settle_s=1.0, watch_s=4.0, sleep=clock.sleep, clock=clock)
    assert [r.tags["portfolio/source_file"] for r in requests] == ["trades/in_place.csv"]
    assert clock.now - started >= seen + 1.0
    # changing a renamed file (an append) makes it wait the full settle again
    before = clock.now
    with (landing / "trades" / "renamed.csv").open("a") as f:
        f.write("T3\n")
    requests, cursor = landing_requests(landing, cursor, {}, settle_s=1.0, watch_s=4.0, sleep=clock.sleep, clock=clock)
    assert [r.tags["portfolio/source_file"] for r in requests] == ["trades/renamed.csv"]
    assert clock.now - before >= 1.0


def test_the_sensor_in_dagster_requests_each_file_once(tmp_path, tiny_landing):
    shutil.copytree(tiny_landing, tmp_path / "landing")
    resources = resources_for(tmp_path)
    with dg.build_sensor_context(resources=resources) as context:
        # the files were written before this tick: its second look agrees with its first
        requests = landing_sensor(context)
        kinds = {r.tags["portfolio/source_file"].split("/")[0] for r in requests}
        assert kinds == {"trades", "prices"} and len({r.run_key for r in requests}) == len(requests)
        cursor = context.cursor
        assert json.loads(cursor)["done"]
    with dg.build_sensor_context(cursor=cursor, resources=resources) as context:
        assert isinstance(landing_sensor(context), dg.SkipReason)


def _materialized(result, key: str) -> dict:
    """The metadata values of the materialisation of ``key`` in a run."""
    [event] = [e for e in result.get_asset_materialization_events() if e.asset_key.to_user_string() == key]
    return {k: v.value for k, v in event.event_specific_data.materialization.metadata.items()}


def _full_and_held_back(tmp_path, source, held: str):
    """Two data folders over the landing files in ``source``: ``full`` built over all of them,
    ``split`` built over all but trade file ``held`` (landed afterwards by the caller)."""
    full = tmp_path / "full"
    shutil.copytree(source, full / "landing")
    materialize_all(full)
    split_dir = tmp_path / "split"
    shutil.copytree(source, split_dir / "landing")
    (split_dir / "landing" / "trades" / held).unlink()
    materialize_all(split_dir)
    return full, split_dir


def test_last_day_trades_are_carried_through_every_state_table(tmp_path, tiny_landing):
    """The trades of the book's last price date land as their own file after a full run: the
    ledger replays only their books, the cash ledger appends their entries, the balances and
    realised totals are carried, the valuations recompute that date's row alone, and the
    tables equal one full run over every file. Between the two runs the per-portfolio tables
    are re-clustered (OPTIMIZE, a maintenance commit recording no build): the intraday run
    still continues from their last build."""
    source = tmp_path / "landing"
    shutil.copytree(tiny_landing, source)
    last = sorted((source / "trades").iterdir())[-1]
    trades = pl.read_csv(last, infer_schema=False)
    last_day = trades.filter(pl.col("trade_ts").str.slice(0, 10) == trades["trade_ts"].str.slice(0, 10).max())
    assert last_day.height >= 5
    trades.filter(~pl.col("trade_id").is_in(last_day["trade_id"].implode())).write_csv(last)
    last_day.write_csv(source / "trades" / "trades_last_day.csv")
    full, split_dir = _full_and_held_back(tmp_path, source, "trades_last_day.csv")
    lake = resources_for(split_dir)["lake"]
    for table in ("lots", "realized_pnl", "ledger_state", "ledger_books", "positions", "daily_valuations"):
        DeltaTable(lake.uri(f"silver/{table}")).optimize.z_order(["portfolio_id"])
        assert lake.history(f"silver/{table}", 1)[0]["operation"] == "OPTIMIZE"
    shutil.copy(source / "trades" / "trades_last_day.csv", split_dir / "landing" / "trades")
    result = build_definitions(str(split_dir)).resolve_job_def("intraday").execute_in_process(
        instance=dg.DagsterInstance.ephemeral())
    assert result.success
    for key in ("silver/cash_ledger", "silver/cash_balances", "silver/daily_valuations"):
        assert _materialized(result, key)["continued"] is True, key
    assert _materialized(result, "silver/daily_valuations")["rebuilt_portfolios"] == 0
    assert lake.history("silver/portfolio_state", 1)[0].get("continued") == "true"
    # a file of a few books: the open lots of the portfolios' other books came from the state
    held = lake.read("silver/lots").filter(pl.col("status") == "OPEN", pl.col("portfolio_id").is_in(
        last_day["portfolio_id"].implode()))
    assert held["instrument_id"].n_unique() > last_day["instrument_id"].n_unique()
    assert_same_tables(snapshot(split_dir), snapshot(full))


@pytest.mark.parametrize("split", ["last_trades_file", "prices_and_trades"])
def test_intraday_runs_over_a_split_book_equal_one_full_run(tmp_path, tiny_landing, split):
    """The book's last trade file (and, in the second case, its price file too) lands after a
    full run and is applied by the intraday job: the tables equal one full run over every file."""
    full = tmp_path / "full"
    shutil.copytree(tiny_landing, full / "landing")
    materialize_all(full)

    split_dir = tmp_path / "split"
    shutil.copytree(tiny_landing, split_dir / "landing")
    later = sorted((split_dir / "landing" / "trades").iterdir())[-1:]
    if split == "prices_and_trades":
        later += sorted((split_dir / "landing" / "prices").iterdir())[-1:]
    held = tmp_path / "held"
    held.mkdir()
    for path in later:
        shutil.move(path, held / f"{path.parent.name}__{path.name}")
    materialize_all(split_dir)
    for path in sorted(held.iterdir()):
        kind, name = path.name.split("__", 1)
        shutil.move(path, split_dir / "landing" / kind / name)
        job = build_definitions(str(split_dir)).resolve_job_def("intraday")
        assert job.execute_in_process(instance=dg.DagsterInstance.ephemeral()).success
    # the ledger continued from its state (two commits: a new BUY took an earlier open loss)
    ledger_commits = resources_for(split_dir)["lake"].history("silver/realized_pnl", 2)
    assert [c.get("continued") for c in ledger_commits] == ["true", "true"]
    assert_same_tables(snapshot(split_dir), snapshot(full))


DRIFT_TABLES = ("drift", "drift_summary", "drift_history", "drift_alerts")


def _with_drift(data_dir) -> dict[str, pl.DataFrame]:
    """``snapshot`` plus the drift tables the intraday job rebuilds."""
    tables = snapshot(data_dir)
    lake = resources_for(data_dir)["lake"]
    for name in DRIFT_TABLES:
        frame = read_gold(lake, name)
        sortable = [c for c in frame.columns if not isinstance(frame.schema[c], (pl.List, pl.Struct))]
        tables[f"gold/{name}"] = frame.sort(sortable, nulls_last=True)
    return tables


def test_a_file_of_one_portfolio_updates_that_portfolio_alone(tmp_path, tiny_landing):
    """One portfolio's late trades (within the day the state already describes) land after a
    full run: the intraday run rebuilds that portfolio alone in every state and drift table,
    decides for it alone, and the tables equal one full run over the same files."""
    source = tmp_path / "landing"
    shutil.copytree(tiny_landing, source)
    last = sorted((source / "trades").iterdir())[-1]
    trades = pl.read_csv(last, infer_schema=False)
    late = trades.filter(pl.col("portfolio_id") == trades["portfolio_id"].max())
    pid = late["portfolio_id"][0]
    trades.filter(pl.col("portfolio_id") != pid).write_csv(last)
    late_name = last.with_name(last.stem + "_late.csv").name
    late.write_csv(source / "trades" / late_name)

    full, split_dir = _full_and_held_back(tmp_path, source, late_name)
    shutil.copy(source / "trades" / late_name, split_dir / "landing" / "trades" / late_name)
    result = build_definitions(str(split_dir)).resolve_job_def("intraday").execute_in_process(
        instance=dg.DagsterInstance.ephemeral()
    )
    assert result.success
    scopes = _scopes(result)
    rebuilt = [f"silver/{n}" for n in ("trades", "lots", "realized_pnl", "cash_ledger", "positions", "daily_valuations",
                                       "portfolio_state")] + [f"gold/{n}" for n in DRIFT_TABLES]
    for key in rebuilt + ["gold/rebalance_decisions"]:
        assert scopes[key].startswith("1 portfolio(s) changed"), (key, scopes.get(key))
    decided = resources_for(split_dir)["lake"].read("gold/rebalance_decisions")
    assert decided["portfolio_id"].unique().to_list() == [pid]
    assert_same_tables(_with_drift(split_dir), _with_drift(full))
    # nothing new: the next run rebuilds nothing and changes no table
    again = build_definitions(str(split_dir)).resolve_job_def("intraday").execute_in_process(
        instance=dg.DagsterInstance.ephemeral()
    )
    assert again.success
    assert_same_tables(_with_drift(split_dir), _with_drift(full))
    # and decides for no portfolio (without computing any trigger input)
    assert _scopes(again)["gold/rebalance_decisions"].startswith("0 portfolio(s) changed")
    assert resources_for(split_dir)["lake"].read("gold/rebalance_decisions").height == 0


def test_a_file_of_trades_before_the_last_ones_replays_their_portfolio(tmp_path, tiny_landing):
    """A portfolio's trades from the book's first file arrive last, after a full run of the
    others: they come before its later trades, so the ledger replays that portfolio rather
    than continue it, and the tables equal one full run over every file."""
    source = tmp_path / "landing"
    shutil.copytree(tiny_landing, source)
    first = sorted((source / "trades").iterdir())[0]
    trades = pl.read_csv(first, infer_schema=False)
    pid = trades["portfolio_id"].max()
    trades.filter(pl.col("portfolio_id") != pid).write_csv(first)
    trades.filter(pl.col("portfolio_id") == pid).write_csv(source / "trades" / "zz_early.csv")
    full, split_dir = _full_and_held_back(tmp_path, source, "zz_early.csv")
    shutil.copy(source / "trades" / "zz_early.csv", split_dir / "landing" / "trades" / "zz_early.csv")
    result = build_definitions(str(split_dir)).resolve_job_def("intraday").execute_in_process(
        instance=dg.DagsterInstance.ephemeral()
    )
    assert result.success
    assert _scopes(result)["silver/lots"].startswith("1 portfolio(s) changed")
    assert resources_for(split_dir)["lake"].history("silver/lots", 1)[0].get("continued") is None
    assert_same_tables(snapshot(split_dir), snapshot(full))


def _scopes(result) -> dict[str, str]:
    """The ``scope`` metadata of each asset a run materialised."""
    return {
        event.asset_key.to_user_string(): event.event_specific_data.materialization.metadata["scope"].value
        for event in result.get_asset_materialization_events()
        if "scope" in event.event_specific_data.materialization.metadata
    }
