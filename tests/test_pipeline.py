"""In-process materialisation of every asset on a tiny book: checks, idempotency, replay,
file versions, bad files, and the atomic warehouse."""

from __future__ import annotations

import shutil
from datetime import timedelta
from pathlib import Path

import dagster as dg
import duckdb
import numpy as np
import polars as pl
import pytest
from polars.testing import assert_frame_equal

from assets.resources import resources_for
from assets.state import SILVER_SCHEMAS, read_silver
from orchestration.checks import ASSET_CHECKS
from orchestration.definitions import ALL_ASSETS, build_definitions
from orchestration.sensors import warehouse_after_runs
from transforms import contract

VOLATILE = {"run_id", "ingested_at", "quarantined_at"}


def materialize_all(data_dir: Path) -> dg.ExecuteInProcessResult:
    result = dg.materialize([*ALL_ASSETS, *ASSET_CHECKS], resources=resources_for(data_dir), instance=dg.DagsterInstance.ephemeral())
    assert result.success
    return result


def run_intraday_then_publish(data_dir: Path) -> tuple[dg.ExecuteInProcessResult, dg.ExecuteInProcessResult]:
    """An intraday run, then the publish_warehouse run the ``warehouse_after_runs`` sensor asks
    for after it (both asserted successful), as the daemon launches them: (intraday, publish)."""
    defs, instance = build_definitions(str(data_dir)), dg.DagsterInstance.ephemeral()
    intraday = defs.resolve_job_def("intraday").execute_in_process(instance=instance)
    assert intraday.success
    context = dg.build_run_status_sensor_context(sensor_name=warehouse_after_runs.name,
                                                 dagster_event=intraday.get_run_success_event(),
                                                 dagster_instance=instance, dagster_run=intraday.dagster_run)
    request = warehouse_after_runs(context)
    assert isinstance(request, dg.RunRequest), request
    published = defs.resolve_job_def("publish_warehouse").execute_in_process(instance=instance, tags=request.tags)
    assert published.success
    return intraday, published


def snapshot(data_dir: Path) -> dict[str, pl.DataFrame]:
    """Every lake table's content, sorted and without the columns that name a run."""
    lake = resources_for(data_dir)["lake"]
    tables = {f"silver/{n}": read_silver(lake, n) for n in SILVER_SCHEMAS}
    for kind in contract.INGEST_ORDER:
        tables[f"bronze/{kind}"] = lake.read(f"bronze/{kind}")
        tables[f"bronze/quarantine/{kind}"] = lake.read(f"bronze/quarantine/{kind}")
    out = {}
    for name, frame in tables.items():
        frame = frame.drop([c for c in frame.columns if c in VOLATILE])
        sortable = [c for c in frame.columns if not isinstance(frame.schema[c], (pl.List, pl.Struct))]
        out[name] = frame.sort(sortable, nulls_last=True)
    return out


def assert_same_tables(a: dict[str, pl.DataFrame], b: dict[str, pl.DataFrame]) -> None:
    """Same rows and values. Floats may differ in the last bits only: Polars' parallel group-by
    adds partial sums in whatever order its threads finish (1e-9 of a cent is far below money)."""
    assert a.keys() == b.keys()
    for name in a:
        try:
            assert_frame_equal(a[name], b[name], check_exact=False, rel_tol=1e-12, abs_tol=1e-9)
        except AssertionError as error:
            raise AssertionError(f"{name} differs: {error}") from None


@pytest.fixture
def built(data_dir):
    result = materialize_all(data_dir)
    return data_dir, result


def test_all_assets_and_checks_pass(built):
    data_dir, result = built
    evaluations = result.get_asset_check_evaluations()
    assert len(evaluations) == len(ASSET_CHECKS)
    assert all(e.passed for e in evaluations), [(e.check_name, e.metadata) for e in evaluations if not e.passed]
    with duckdb.connect(str(data_dir / "warehouse.duckdb"), read_only=True) as con:
        names = {r[0] for r in con.execute("SELECT table_name FROM information_schema.tables").fetchall()}
        assert {"portfolio_state", "positions", "lots", "realized_pnl", "cash_ledger", "daily_valuations", "trades",
                "prices", "instruments", "portfolios", "quarantine", "ingestion_log", "cash_balances"} <= names
        n_portfolios = con.execute("SELECT count(*) FROM portfolios").fetchone()[0]
        assert con.execute("SELECT count(*) FROM portfolio_state").fetchone()[0] == n_portfolios
        # NAV = cash + market value, read back from the published positions.
        gap = con.execute(
            """SELECT max(abs(s.total_value - p.mv)) FROM portfolio_state s
               JOIN (SELECT portfolio_id, sum(market_value) mv FROM positions GROUP BY 1) p USING (portfolio_id)"""
        ).fetchone()[0]
        assert gap < 0.01
    assert not list(data_dir.glob(".warehouse.duckdb*")), "temporary warehouse files left behind"


def test_rows_read_equal_accepted_plus_quarantined(built):
    data_dir, _ = built
    lake = resources_for(data_dir)["lake"]
    for kind in contract.INGEST_ORDER:
        log = lake.read(f"bronze/ingestion_log/{kind}")
        table = lake.read(f"bronze/{kind}")
        assert (log["rows_read"] == log["rows_accepted"] + log["rows_quarantined"]).all(), kind
        assert table.height == log["rows_accepted"].sum(), kind


def test_rerun_changes_nothing(built):
    data_dir, _ = built
    before = snapshot(data_dir)
    lake = resources_for(data_dir)["lake"]
    log_before = lake.read("bronze/ingestion_log/trades").height
    materialize_all(data_dir)
    assert_same_tables(before, snapshot(data_dir))
    assert lake.read("bronze/ingestion_log/trades").height == log_before  # nothing re-ingested


def test_same_content_under_new_runs_and_file_order(tmp_path, tiny_landing, built):
    """A fresh data folder with the same files gives the same tables."""
    data_dir, _ = built
    other = tmp_path / "other"
    shutil.copytree(tiny_landing, other / "landing")
    materialize_all(other)
    assert_same_tables(snapshot(data_dir), snapshot(other))


def test_changed_file_is_a_new_version_and_replaces_its_rows(built):
    data_dir, _ = built
    lake = resources_for(data_dir)["lake"]
    path = sorted((data_dir / "landing" / "trades").glob("*.csv"))[0]
    frame = pl.read_csv(path, infer_schema=False)
    frame.head(frame.height - 1).write_csv(path)  # drop the last trade
    materialize_all(data_dir)
    log = lake.read("bronze/ingestion_log/trades").filter(pl.col("source_file") == f"trades/{path.name}")
    assert sorted(log["version"].to_list()) == [1, 2]
    bronze = lake.read("bronze/trades").filter(pl.col("source_file") == f"trades/{path.name}")
    assert bronze.height == frame.height - 1
    assert bronze["source_sha256"].n_unique() == 1


def test_bad_files_are_quarantined_not_fatal(built):
    data_dir, _ = built
    landing = data_dir / "landing" / "trades"
    (landing / "empty.csv").write_bytes(b"")
    (landing / "semicolons.csv").write_text("trade_id;portfolio_id\nX1;P001\n")
    (landing / "notes.txt").write_text("not a landing file")
    good = pl.read_csv(sorted(landing.glob("trades_*.csv"))[0], infer_schema=False).head(3)
    good.with_columns(pl.lit("-5").alias("quantity"), (pl.col("trade_id") + "_neg").alias("trade_id")).write_csv(landing / "negative.csv")
    result = materialize_all(data_dir)
    assert result.success
    lake = resources_for(data_dir)["lake"]
    quarantine = lake.read("bronze/quarantine/trades")
    whole = quarantine.filter(pl.col("stage") == "file")["source_file"].to_list()
    assert {"trades/empty.csv", "trades/semicolons.csv", "trades/notes.txt"} <= set(whole)
    rows = quarantine.filter(pl.col("source_file") == "trades/negative.csv")
    assert rows["source_row"].n_unique() == 3


def test_oversell_goes_to_quarantine_and_the_book_goes_on(built):
    data_dir, _ = built
    lake = resources_for(data_dir)["lake"]
    trades = read_silver(lake, "trades")
    first = trades.filter(pl.col("side") == "BUY").sort("trade_ts").row(0, named=True)
    oversell = {c: first[c] for c in contract.LANDING_SCHEMAS["trades"]}
    oversell.update(trade_id="OVERSELL1", side="SELL", quantity=first["quantity"] * 1e6, lot_id=None)
    pl.DataFrame([oversell], schema=contract.LANDING_SCHEMAS["trades"]).write_csv(
        data_dir / "landing" / "trades" / "oversell.csv", datetime_format="%Y-%m-%dT%H:%M:%S%.6fZ"
    )
    n_before = trades.height
    materialize_all(data_dir)
    rejected = read_silver(lake, "ledger_rejections")
    assert rejected.filter(pl.col("source_file") == "trades/oversell.csv").height == 1
    assert "exceeds" in rejected.filter(pl.col("source_file") == "trades/oversell.csv")["reason"][0]
    assert read_silver(lake, "trades").height == n_before  # the rest of the book is unchanged
    with duckdb.connect(str(data_dir / "warehouse.duckdb"), read_only=True) as con:
        assert con.execute("SELECT count(*) FROM quarantine WHERE stage = 'ledger'").fetchone()[0] >= 1
        assert con.execute("SELECT count(*) FROM trades WHERE trade_id = 'OVERSELL1'").fetchone()[0] == 0


def test_empty_landing_gives_empty_tables(tmp_path):
    (tmp_path / "landing").mkdir()
    materialize_all(tmp_path)
    with duckdb.connect(str(tmp_path / "warehouse.duckdb"), read_only=True) as con:
        assert con.execute("SELECT count(*) FROM portfolio_state").fetchone()[0] == 0
        assert con.execute("SELECT count(*) FROM trades").fetchone()[0] == 0


def test_commits_carry_run_id_and_sources(built):
    data_dir, result = built
    lake = resources_for(data_dir)["lake"]
    history = lake.history("bronze/trades")
    assert history[0]["run_id"] == result.run_id
    assert "trades/" in history[0]["source_files"]
    assert "code_version" in history[0]
    assert "bronze/trades@" in lake.history("silver/lots")[0]["inputs"]


def test_an_id_repeated_across_files_of_one_batch_is_kept_once(tmp_path, tiny_landing):
    shutil.copytree(tiny_landing, tmp_path / "landing")
    trades_dir = tmp_path / "landing" / "trades"
    first = sorted(trades_dir.glob("trades_*.csv"))[0]
    head = pl.read_csv(first, infer_schema=False).head(2)
    head.write_csv(trades_dir / "zz_resent.csv")  # same trade ids, a later file of the same batch
    materialize_all(tmp_path)
    lake = resources_for(tmp_path)["lake"]
    bronze = lake.read("bronze/trades")
    assert bronze.filter(pl.col("trade_id").is_in(head["trade_id"].implode()))["source_file"].unique().to_list() == [f"trades/{first.name}"]
    quarantine = lake.read("bronze/quarantine/trades").filter(pl.col("source_file") == "trades/zz_resent.csv")
    assert quarantine.height == 2
    assert all(f"first in trades/{first.name} row" in r for r in quarantine["reason"])
    log = lake.read("bronze/ingestion_log/trades").filter(pl.col("source_file") == "trades/zz_resent.csv")
    assert log.select("rows_read", "rows_accepted", "rows_quarantined").row(0) == (2, 0, 2)


def test_ledger_in_many_shards_equals_one_shard(tmp_path, tiny_landing, built, monkeypatch):
    """Shards are a filter on portfolio: any shard size gives the same silver tables."""
    import assets.state

    data_dir, _ = built
    monkeypatch.setattr(assets.state, "LEDGER_SHARD_TRADES", 150)
    other = tmp_path / "sharded"
    shutil.copytree(tiny_landing, other / "landing")
    result = materialize_all(other)
    shards = [e.event_specific_data.materialization.metadata["shards"].value
              for e in result.get_asset_materialization_events()
              if e.event_specific_data.materialization.asset_key.to_user_string() == "silver/lots"]
    assert shards[0] > 3
    assert_same_tables(snapshot(data_dir), snapshot(other))


def test_extra_columns_are_kept_out_and_logged(built):
    data_dir, _ = built
    landing = data_dir / "landing" / "instruments"
    frame = pl.read_csv(sorted(landing.glob("*.csv"))[0], infer_schema=False).head(2)
    frame.with_columns(
        pl.lit("x").alias("analyst_note"), (pl.col("instrument_id") + "_X").alias("instrument_id")
    ).write_csv(landing / "more.csv")
    materialize_all(data_dir)
    lake = resources_for(data_dir)["lake"]
    log = lake.read("bronze/ingestion_log/instruments").filter(pl.col("source_file") == "instruments/more.csv")
    assert log["extra_columns"].to_list() == ["analyst_note"]
    assert "analyst_note" in log["message"][0]
    bronze = lake.read("bronze/instruments")
    assert "analyst_note" not in bronze.columns
    assert bronze.filter(pl.col("source_file") == "instruments/more.csv").height == 2


def test_analytics_are_published_and_agree_with_the_state(built):
    data_dir, _ = built
    from assets.analytics import ANALYTICS_TABLES
    from transforms.performance import PERIODS

    with duckdb.connect(str(data_dir / "warehouse.duckdb"), read_only=True) as con:
        names = {r[0] for r in con.execute("SELECT table_name FROM information_schema.tables").fetchall()}
        assert set(ANALYTICS_TABLES) <= names
        one = lambda sql: con.execute(sql).fetchone()[0]  # noqa: E731
        assert one("SELECT count(*) FROM returns_daily") == one("SELECT count(*) FROM daily_valuations")
        valued = one("SELECT count(DISTINCT portfolio_id) FROM daily_valuations")
        assert one("SELECT count(*) FROM performance") == valued * len(PERIODS)
        # exposures value the holdings exactly as the valuations do
        assert one("""SELECT max(abs(e.long_exposure - d.long_market_value) + abs(e.short_exposure - d.short_market_value))
                      FROM exposures e JOIN daily_valuations d USING (portfolio_id, date)""") < 1e-6
        # the last day's chain-linked growth is the ITD time-weighted return
        assert one("""SELECT max(abs(p.cumulative_return - (r.growth - 1))) FROM performance p
                      JOIN (SELECT portfolio_id, arg_max(growth, date) growth FROM returns_daily GROUP BY 1) r USING (portfolio_id)
                      WHERE p.period = 'ITD' AND p.cumulative_return IS NOT NULL""") < 1e-9
        # margin equity is the state's nav; cash balances in base add up to the state's cash
        assert one("SELECT max(abs(m.equity - s.total_value)) FROM margin m JOIN portfolio_state s USING (portfolio_id)") < 1e-9
        assert one("""SELECT max(abs(c.cash - s.cash_balance)) FROM portfolio_state s JOIN
                      (SELECT portfolio_id, sum(total_cash_base) cash FROM cash_balances GROUP BY 1) c USING (portfolio_id)""") < 0.01
        # components of risk sum to the volatility; every portfolio has its 8 VaR rows
        assert one("""SELECT max(abs(c.total - r.volatility)) FROM risk r JOIN
                      (SELECT portfolio_id, sum(component) total FROM risk_contributions WHERE level = 'position' GROUP BY 1) c
                      USING (portfolio_id) WHERE r.volatility IS NOT NULL""") < 1e-12
        assert one("SELECT count(*) FROM risk_var") == 8 * one("SELECT count(*) FROM risk")
        # every portfolio is measured for drift or says why not; no NaN anywhere in the analytics
        assert one("SELECT count(*) FROM drift_summary WHERE drift IS NULL AND note IS NULL") == 0
        # closed portfolios are listed unmeasured and raise no alert
        closed = "SELECT portfolio_id FROM portfolios WHERE status = 'CLOSED'"
        assert one(f"SELECT count(*) FROM drift_summary WHERE portfolio_id IN ({closed})") > 0
        assert one(f"""SELECT count(*) FROM drift_summary WHERE portfolio_id IN ({closed})
                       AND (drift IS NOT NULL OR note <> 'not measured: portfolio is CLOSED')""") == 0
        assert one(f"SELECT count(*) FROM drift_alerts WHERE portfolio_id IN ({closed})") == 0
        for table in ANALYTICS_TABLES:
            columns = [r[0] for r in con.execute(f"DESCRIBE {table}").fetchall() if r[1] == "DOUBLE"]
            if columns:
                assert one(f"SELECT count(*) FROM {table} WHERE " + " OR ".join(f"isnan({c}) OR isinf({c})" for c in columns)) == 0, table


def test_rebalancing_is_published_and_keeps_its_rules(built):
    data_dir, _ = built
    from assets.rebalancing import SCHEMAS

    with duckdb.connect(str(data_dir / "warehouse.duckdb"), read_only=True) as con:
        names = {r[0] for r in con.execute("SELECT table_name FROM information_schema.tables").fetchall()}
        assert set(SCHEMAS) <= names
        one = lambda sql: con.execute(sql).fetchone()[0]  # noqa: E731
        # status rules: SUSPENDED and CLOSED never trade, LIQUIDATING only sells
        assert one("""SELECT count(*) FROM recommendations r JOIN portfolios p USING (portfolio_id)
                      WHERE p.status IN ('SUSPENDED', 'CLOSED')""") == 0
        assert one("""SELECT count(*) FROM recommendations r JOIN portfolios p USING (portfolio_id)
                      WHERE p.status = 'LIQUIDATING' AND r.trade_quantity > 1e-9""") == 0
        assert one("SELECT count(*) FROM rebalance_decisions WHERE action = 'LIQUIDATE'") == one(
            "SELECT count(*) FROM portfolios WHERE status = 'LIQUIDATING'")
        # every published recommendation comes from a chosen optimised scenario that breaks no hard constraint
        assert one("SELECT count(DISTINCT portfolio_id) FROM recommendations") > 0
        assert one("""SELECT count(*) FROM (SELECT DISTINCT run_id, portfolio_id FROM recommendations) r
                      LEFT JOIN rebalance_analysis a ON a.run_id = r.run_id AND a.portfolio_id = r.portfolio_id
                      AND a.scenario = 'optimised' AND a.chosen AND a.hard_violations IS NULL
                      WHERE a.portfolio_id IS NULL""") == 0
        assert one("SELECT count(*) FROM rebalance_analysis WHERE chosen AND reason IS NULL") == 0
        # long-only books stay long, and the sleeves' trades add up to shares held after the trade
        assert one("SELECT count(*) FROM recommendations WHERE recommended_weight < -1e-9") == 0
        # netting conserves shares: per instrument, the orders' signed quantity is the net of the portfolios' trades
        assert one("""SELECT max(abs(t.net - coalesce(o.net, 0))) FROM
                      (SELECT run_id, instrument_id, sum(trade_quantity) net FROM recommendations GROUP BY 1, 2) t
                      LEFT JOIN (SELECT run_id, instrument_id, sum(CASE side WHEN 'BUY' THEN quantity ELSE -quantity END) net
                                 FROM orders GROUP BY 1, 2) o USING (run_id, instrument_id)""") < 1e-6
        # sells come first
        assert one("SELECT count(*) FROM orders WHERE (side = 'SELL') <> (wave = 1)") == 0
        # TAXABLE sells are taken from lots that exist, never more than held
        assert one("""SELECT count(*) FROM lot_sales s JOIN lots l USING (portfolio_id, lot_id)
                      WHERE s.quantity > l.quantity + 1e-6""") == 0
        runs = con.execute("SELECT portfolios, rebalanced, shapes_compiled FROM rebalance_runs").fetchall()
        # shapes this process had compiled before are reused (assets.rebalancing.PROBLEMS): 0 is fine
        assert len(runs) >= 1 and all(r[1] <= r[0] and r[2] is not None and r[2] >= 0 for r in runs)


def test_a_manual_request_names_portfolios(built):
    """A run of the rebalancing group with config names a portfolio: it gets a manual trigger."""
    data_dir, _ = built
    from assets.rebalancing import REBALANCING_ASSETS

    lake = resources_for(data_dir)["lake"]
    active = lake.read("bronze/portfolios").filter(pl.col("status") == "ACTIVE")["portfolio_id"][0]
    key = "rebalance_triggers"
    config = {"ops": {key: {"config": {"portfolios": [active]}}}}
    result = dg.materialize(REBALANCING_ASSETS, selection=dg.AssetSelection.groups("rebalancing"), resources=resources_for(data_dir),
                            instance=dg.DagsterInstance.ephemeral(), run_config=config)
    assert result.success
    triggers = lake.read("gold/rebalance_triggers")
    assert triggers.filter((pl.col("kind") == "manual") & (pl.col("portfolio_id") == active)).height == 1
    runs = lake.read("gold/rebalance_runs")
    assert runs.height == 2  # the fixture's run and this one: each run keeps its own rows
    # the per-run replace records its run and its inputs' versions, like a whole-table write
    commit = lake.history("gold/recommendations")[0]
    assert commit["run_id"] == result.run_id and "gold/rebalance_decisions@" in commit["inputs"] and "code_version" in commit
    with pytest.raises(Exception, match="P_UNKNOWN"):
        dg.materialize(REBALANCING_ASSETS, selection=dg.AssetSelection.groups("rebalancing"), resources=resources_for(data_dir),
                       instance=dg.DagsterInstance.ephemeral(),
                       run_config={"ops": {key: {"config": {"portfolios": ["P_UNKNOWN"]}}}})


def test_each_taxable_portfolio_is_taxed_at_its_own_policy_rates(built, tmp_path):
    """A per-portfolio optimizer policy with zero tax rates: that portfolio's estimated tax and
    its lot sales' tax are zero, where the default rates taxed its sales."""
    data_dir, _ = built
    from assets.rebalancing import REBALANCING_ASSETS
    from assets.resources import PipelineSettings

    lake = resources_for(data_dir)["lake"]
    taxed = (lake.read("gold/lot_sales").filter(pl.col("tax") > 0).group_by("portfolio_id").len()
             .sort("len", descending=True)["portfolio_id"])
    assert taxed.len() >= 1, "the tiny book's default run sells a gain in a TAXABLE portfolio"
    pid = taxed[0]
    policy = tmp_path / "policy.yaml"
    policy.write_text(f"optimizer:\n  portfolios:\n    {pid}: {{short_term_rate: 0.0, long_term_rate: 0.0}}\n")
    resources = resources_for(data_dir) | {"settings": PipelineSettings(data_dir=str(data_dir), rebalance_policy_file=str(policy))}
    result = dg.materialize(REBALANCING_ASSETS, selection=dg.AssetSelection.groups("rebalancing"), resources=resources,
                            instance=dg.DagsterInstance.ephemeral())
    assert result.success
    run = result.run_id
    sales = lake.read("gold/lot_sales").filter(pl.col("run_id") == run)
    recs = lake.read("gold/recommendations").filter(pl.col("run_id") == run)
    mine = sales.filter(pl.col("portfolio_id") == pid)
    assert recs.filter(pl.col("portfolio_id") == pid).height > 0
    assert mine.height == 0 or mine["tax"].abs().max() == 0.0
    assert recs.filter(pl.col("portfolio_id") == pid)["estimated_tax"].abs().max() == 0.0
    # the other TAXABLE portfolios keep the default rates: their gains are still taxed
    others = sales.filter((pl.col("portfolio_id") != pid) & (pl.col("gain") > 0))
    assert others.height == 0 or others["tax"].min() > 0


def test_fills_after_the_orders_are_matched_and_measured(built):
    """Trades that execute every recommendation an hour after the decision, at 10 bp worse than
    the decision price, land as a new file: the next run matches them to the first run's
    allocations (all FILLED, 10 bp slippage), reports every order fully executed, and measures
    the drift after on the filled books."""
    data_dir, _ = built
    lake = resources_for(data_dir)["lake"]
    first = lake.read("gold/rebalance_runs").row(0, named=True)
    run = first["run_id"]
    decided = lake.read("gold/drift_summary")  # the figures the run decided on
    recs = lake.read("gold/recommendations").filter((pl.col("run_id") == run) & (pl.col("trade_quantity") != 0))
    assert recs.height > 0
    prices = lake.read("gold/orders").filter(pl.col("run_id") == run).group_by("instrument_id").agg(pl.col("price").first())
    at = first["decided_at"] + timedelta(hours=1)
    sign = pl.col("trade_quantity").sign()
    fills = recs.join(prices, on="instrument_id").with_row_index("i").select(
        pl.format("F{}", pl.col("i")).alias("trade_id"), "portfolio_id", "instrument_id",
        pl.lit(at.strftime("%Y-%m-%dT%H:%M:%S.%fZ")).alias("trade_ts"),
        pl.lit((at + timedelta(days=3)).date().isoformat()).alias("settle_date"),
        pl.when(sign > 0).then(pl.lit("BUY")).otherwise(pl.lit("SELL")).alias("side"),
        pl.col("trade_quantity").abs().alias("quantity"),
        (pl.col("price") * (1 + 0.001 * sign)).alias("price"),  # buys pay 10 bp more, sells get 10 bp less
        pl.lit(0.0).alias("fees"), "strategy_id", pl.lit(None, pl.String).alias("lot_id"))
    fills.write_csv(data_dir / "landing" / "trades" / "trades_fills.csv")
    materialize_all(data_dir)

    refused = lake.read("bronze/quarantine/trades").filter(pl.col("source_file").str.ends_with("trades_fills.csv"))
    assert refused.height == 0, refused["reason"].to_list()
    quality = lake.read("gold/execution_quality").filter(pl.col("run_id") == run)
    assert quality.height == lake.read("gold/order_allocations").filter(
        (pl.col("run_id") == run) & (pl.col("external_quantity") > 0)).select("order_id", "portfolio_id").unique().height
    assert (quality["status"] == "FILLED").all() and quality["fill_ratio"].min() == pytest.approx(1.0)
    np.testing.assert_allclose(quality["slippage_bps"].to_numpy(), 10.0, rtol=1e-9)
    summary = lake.read("gold/execution_summary").filter(pl.col("run_id") == run).row(0, named=True)
    assert summary["fully_executed_share"] == 1.0 and summary["fully_executed_goal_met"]
    # before and after in one measure, drift_summary's figure: at the decision, and on the filled
    # books now; a LIQUIDATING book (moving to cash, away from its model targets) is left out
    liquidating = lake.read("bronze/portfolios").filter(pl.col("status") == "LIQUIDATING")["portfolio_id"]
    steered = quality.filter(~pl.col("portfolio_id").is_in(liquidating.implode()))["portfolio_id"].unique()
    assert steered.len() >= 1
    now = lake.read("gold/drift_summary").filter(pl.col("portfolio_id").is_in(steered.implode()))
    assert summary["average_drift_after"] == pytest.approx(now["drift"].mean(), rel=1e-12)
    at_decision = lake.read("gold/rebalance_analysis").filter(
        (pl.col("run_id") == run) & (pl.col("scenario") == "do_nothing") & pl.col("portfolio_id").is_in(steered.implode()))
    assert summary["average_drift_before"] == pytest.approx(at_decision["drift_at_decision"].mean(), rel=1e-12)
    assert decided["drift"].filter(decided["portfolio_id"].is_in(steered.implode())).mean() == pytest.approx(
        summary["average_drift_before"], rel=1e-12)
    assert summary["average_drift_after"] < summary["average_drift_before"]


def test_the_outbox_numbers_events_per_portfolio_and_exports_them(built, tmp_path):
    """First run: one portfolio_state_updated per portfolio with a state, recommendation and order
    events for the rebalanced ones; a rerun on the same files adds no state event (nothing
    changed) but the new rebalance run's events, numbered on; a subscriber gets its events in
    an export file."""
    from assets.outbox import OUTBOX_TABLE
    from assets.resources import PipelineSettings
    from transforms.outbox import STATE_UPDATED, check_outbox, events_after

    data_dir, _ = built
    lake = resources_for(data_dir)["lake"]
    first = lake.read(OUTBOX_TABLE)
    check_outbox(first)
    states = first.filter(pl.col("event_type") == STATE_UPDATED)
    assert sorted(states["portfolio_id"]) == sorted(lake.read("silver/portfolio_state")["portfolio_id"])
    recommended = set(lake.read("gold/recommendations")["portfolio_id"])
    assert set(first.filter(pl.col("event_type") == "recommendation_published")["portfolio_id"]) == recommended

    subscriptions = tmp_path / "subscriptions.yaml"
    subscriptions.write_text("subscribers:\n  - {name: risk-desk, events: [portfolio_state_updated, recommendation_published], "
                             "portfolios: '*', format: jsonl}\n")
    resources = resources_for(data_dir) | {"settings": PipelineSettings(data_dir=str(data_dir), subscriptions_file=str(subscriptions))}
    result = dg.materialize([*ALL_ASSETS, *ASSET_CHECKS], resources=resources, instance=dg.DagsterInstance.ephemeral())
    assert result.success
    both = lake.read(OUTBOX_TABLE)
    check_outbox(both)
    new = both.filter(pl.col("run_id") == result.run_id)
    assert new.filter(pl.col("event_type") == STATE_UPDATED).height == 0  # the same files: no state changed
    assert set(new.filter(pl.col("event_type") == "recommendation_published")["portfolio_id"]) == recommended
    # a consumer that read everything of the first run gets exactly the new events after it
    for pid in recommended:
        seen = first.filter(pl.col("portfolio_id") == pid)["sequence"].max()
        assert events_after(both, pid, seen)["event_id"].to_list() == new.filter(
            pl.col("portfolio_id") == pid).sort("sequence")["event_id"].to_list()
    export = data_dir / "exports" / "risk-desk" / f"{result.run_id}.jsonl"
    lines = export.read_text().splitlines()
    assert len(lines) == new.filter(pl.col("event_type") != "order_published").height > 0
    assert not list((data_dir / "exports" / "risk-desk").glob(".*"))  # no staging file left behind
