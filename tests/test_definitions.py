"""The Dagster definitions load, and every asset is described, grouped and kinded."""

from __future__ import annotations

import uuid

import dagster as dg

from orchestration.definitions import build_definitions, defs


def test_definitions_load():
    dg.Definitions.validate_loadable(defs)
    repo = defs.get_repository_def()
    keys = {k.to_user_string() for k in repo.asset_graph.get_all_asset_keys()}
    assert {f"bronze/{k}" for k in ("instruments", "portfolios", "prices", "fx_rates", "trades", "cash_flows", "targets", "benchmarks", "signals")} <= keys
    assert {"silver/lots", "silver/positions", "silver/daily_valuations", "silver/portfolio_state", "publish/warehouse"} <= keys


def test_every_asset_has_group_kinds_and_description():
    repo = defs.get_repository_def()
    graph = repo.asset_graph
    for key in graph.get_all_asset_keys():
        node = graph.get(key)
        assert node.group_name in {"ingest", "state", "analytics", "rebalancing", "publish"}, key
        assert node.description, key
        assert node.kinds, key


def test_schedule_job_and_checks():
    assert defs.resolve_schedule_def("daily_post_close").cron_schedule == "30 17 * * 1-5"
    assert defs.resolve_job_def("daily_refresh").name == "daily_refresh"
    check_names = {k.name for k in defs.get_repository_def().asset_graph.asset_check_keys}
    assert {"nav_equals_cash_plus_market_value", "lots_reconcile_to_trades", "quarantine_share_under_limit"} <= check_names


def test_resources_follow_the_data_dir(tmp_path):
    d = build_definitions(str(tmp_path))
    lake = d.resources["lake"]
    assert lake.root == str(tmp_path / "lake")
    assert d.resources["warehouse"].path == str(tmp_path / "warehouse.duckdb")


def test_lake_root_from_environment(tmp_path, monkeypatch):
    monkeypatch.setenv("PORTFOLIO_LAKE_ROOT", str(tmp_path / "elsewhere"))
    d = build_definitions(str(tmp_path / "data"))
    assert d.resources["lake"].root == str(tmp_path / "elsewhere")
    assert d.resources["lake"].uri("silver/lots") == str(tmp_path / "elsewhere" / "silver" / "lots")
    assert d.resources["warehouse"].path == str(tmp_path / "data" / "warehouse.duckdb")


def test_intraday_job_and_landing_sensor():
    from orchestration.jobs import LAKE_WRITER_TAG

    job = defs.resolve_job_def("intraday")
    assert job.tags["dagster/max_retries"] == "2" and job.tags[LAKE_WRITER_TAG] == "intraday"
    assert job.executor_def.name == "in_process"
    sensor = defs.resolve_sensor_def("landing_sensor")
    assert sensor.job_name == "intraday" and sensor.default_status == dg.DefaultSensorStatus.RUNNING
    for name in ("daily_refresh", "rebalance"):  # every lake writer waits for the others
        assert LAKE_WRITER_TAG in defs.resolve_job_def(name).tags
    keys = {k.to_user_string() for k in job.asset_layer.executable_asset_keys}
    assert {"bronze/trades", "bronze/prices", "silver/lots", "silver/portfolio_state", "gold/drift_summary",
            "gold/recommendations", "publish/outbox"} <= keys
    assert "gold/risk" not in keys and "bronze/instruments" not in keys and "publish/warehouse" not in keys
    assert "gold/execution_quality" not in keys and "gold/execution_summary" not in keys


def test_the_warehouse_is_published_by_a_run_of_its_own_after_each_intraday_or_rebalance_run():
    import yaml

    from orchestration.jobs import LAKE_WRITER_TAG, WAREHOUSE_TAG

    job = defs.resolve_job_def("publish_warehouse")
    assert {k.to_user_string() for k in job.asset_layer.executable_asset_keys} == {"publish/warehouse"}
    # it reads the lake only: no lake writer, so the next intraday run need not wait for it
    assert WAREHOUSE_TAG in job.tags and LAKE_WRITER_TAG not in job.tags
    limits = yaml.safe_load(open("orchestration/dagster.yaml"))["concurrency"]["runs"]["tag_concurrency_limits"]
    assert {"key": WAREHOUSE_TAG, "limit": 1} in limits
    sensor = defs.resolve_sensor_def("warehouse_after_runs")
    assert sensor.job_name == "publish_warehouse" and sensor.default_status == dg.DefaultSensorStatus.RUNNING


def test_the_warehouse_sensor_asks_once_per_run_and_not_while_a_publish_run_waits():
    from orchestration.sensors import AFTER_RUN_TAG, warehouse_after_runs

    @dg.op
    def nothing():
        pass

    @dg.job
    def finished():
        nothing()

    instance = dg.DagsterInstance.ephemeral()
    run = finished.execute_in_process(instance=instance)

    def evaluate():
        return warehouse_after_runs(dg.build_run_status_sensor_context(
            sensor_name=warehouse_after_runs.name, dagster_event=run.get_run_success_event(),
            dagster_instance=instance, dagster_run=run.dagster_run))

    request = evaluate()
    assert isinstance(request, dg.RunRequest)
    # keyed by the run it follows: the daemon never launches two for one run
    assert request.run_key == f"after:{run.run_id}" and request.tags == {AFTER_RUN_TAG: run.run_id}
    # a publish run not started yet (a queued one needs a code location to be created)
    instance.add_run(dg.DagsterRun(job_name="publish_warehouse", run_id=str(uuid.uuid4()),
                                   status=dg.DagsterRunStatus.NOT_STARTED))
    skipped = evaluate()
    assert isinstance(skipped, dg.SkipReason) and "still queued" in skipped.skip_message


def test_rebalance_job_and_calendar_schedule():
    job = defs.resolve_job_def("rebalance")
    assert job is not None
    schedule = defs.resolve_schedule_def("rebalance_calendar")
    assert schedule.cron_schedule == "30 18 * * 1-5" and schedule.job_name == "rebalance"
