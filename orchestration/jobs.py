"""Jobs and schedules."""

from __future__ import annotations

import dagster as dg

from assets.scope import INTRADAY_JOB

# Every job that writes the lake tags its runs with this key; the instance (orchestration/dagster.yaml)
# runs one such run at a time.
LAKE_WRITER_TAG = "portfolio/lake_writer"

# Everything, from landing files to the warehouse.
daily_refresh = dg.define_asset_job(
    "daily_refresh",
    selection=dg.AssetSelection.all(),
    tags={LAKE_WRITER_TAG: "daily_refresh"},
    description="Ingest new landing files, rebuild the portfolio state and publish the warehouse.",
)

# After the US close (16:00 New York), on business days, when the day's prices have landed.
daily_post_close = dg.ScheduleDefinition(
    name="daily_post_close",
    job=daily_refresh,
    cron_schedule="30 17 * * 1-5",
    execution_timezone="America/New_York",
    description="Daily post-close refresh of the whole book.",
)

# The rebalancing stage alone, over the state the last refresh left. Launched from the UI with
# run config naming portfolios, it rebalances them on request (a manual trigger):
#   ops: {rebalance_triggers: {config: {portfolios: [P0001]}}}
# (the Launchpad scaffolds the exact key).
rebalance = dg.define_asset_job(
    "rebalance",
    selection=dg.AssetSelection.groups("rebalancing"),
    tags={LAKE_WRITER_TAG: "rebalance"},
    description="Triggers, optimised rebalance, recommendations, netted orders and execution quality over the current state; "
    "name portfolios in the triggers' config to rebalance them on request.",
)

# Calendar policies (daily, weekly, monthly per portfolio, in the rebalance policy file) are
# checked every business day after the post-close refresh: a portfolio's calendar trigger fires
# when today is its day (transforms.rebalance_triggers.calendar_due).
rebalance_calendar = dg.ScheduleDefinition(
    name="rebalance_calendar",
    job=rebalance,
    cron_schedule="30 18 * * 1-5",
    execution_timezone="America/New_York",
    description="Business-day rebalancing check: calendar policies, drift, risk and cash-flow triggers.",
)

# The intraday path (orchestration.sensors.landing_sensor launches it per new trade or price file):
# ingest, the state, drift and the rebalancing stage, then the event outbox; the analytics that
# need a whole day (returns, risk, attribution) and execution quality wait for the daily
# refresh or the next rebalance run, and the warehouse is republished by a run of its own after
# this one (below). In one process (no subprocess per step: most of a small run is start-up),
# retried twice when it fails, since a sensor never relaunches a run key that failed.
intraday = dg.define_asset_job(
    INTRADAY_JOB,
    selection=(dg.AssetSelection.assets(dg.AssetKey(["bronze", "trades"]), dg.AssetKey(["bronze", "prices"]),
                                        dg.AssetKey(["publish", "outbox"]))
               | dg.AssetSelection.groups("state", "rebalancing")
               | dg.AssetSelection.assets(*(dg.AssetKey(["gold", name]) for name in ("drift", "drift_summary", "drift_history",
                                                                                   "drift_alerts"))))
    # execution quality matches every order of every rebalance run against the trades since:
    # seconds on a large book, and no event needs it, so the daily and rebalance runs keep it
    - dg.AssetSelection.assets(dg.AssetKey(["gold", "execution_quality"]), dg.AssetKey(["gold", "execution_summary"])),
    executor_def=dg.in_process_executor,
    tags={"dagster/max_retries": "2", LAKE_WRITER_TAG: "intraday"},
    description="A new trade or price file: ingest it, update the state, drift and rebalancing recommendations, "
    "and publish their events (the warehouse follows in a publish_warehouse run).",
)

# Runs of publish_warehouse carry this tag; the instance runs one at a time.
WAREHOUSE_TAG = "portfolio/warehouse_publisher"

# The warehouse alone, republished after every intraday or rebalance run that succeeds
# (orchestration.sensors.warehouse_after_runs). Outside those runs, so that the next landing
# file's state and events do not wait for the analysts' copy: the warehouse only reads the lake
# (each table at one version), so it is no lake writer and may run beside the next intraday run.
publish_warehouse = dg.define_asset_job(
    "publish_warehouse",
    selection=dg.AssetSelection.assets(dg.AssetKey(["publish", "warehouse"])),
    executor_def=dg.in_process_executor,
    tags={"dagster/max_retries": "1", WAREHOUSE_TAG: "publish_warehouse"},
    description="Bring warehouse.duckdb up to the lake's current versions (only the changed portfolios' rows) "
    "and swap it in; launched after each intraday and rebalance run.",
)

JOBS = [daily_refresh, rebalance, intraday, publish_warehouse]
SCHEDULES = [daily_post_close, rebalance_calendar]
