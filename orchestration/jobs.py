"""Jobs and schedules."""

from __future__ import annotations

import dagster as dg

# Everything, from landing files to the warehouse.
daily_refresh = dg.define_asset_job(
    "daily_refresh",
    selection=dg.AssetSelection.all(),
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

JOBS = [daily_refresh]
SCHEDULES = [daily_post_close]
