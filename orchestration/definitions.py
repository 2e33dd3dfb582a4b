"""The one Dagster code location of the pipeline."""

from __future__ import annotations

import dagster as dg

from assets.analytics import ANALYTICS_ASSETS
from assets.ingest import INGEST_ASSETS
from assets.outbox import OUTBOX_ASSETS
from assets.publish import PUBLISH_ASSETS
from assets.rebalancing import REBALANCING_ASSETS
from assets.resources import resources_for
from assets.state import STATE_ASSETS
from orchestration.checks import ASSET_CHECKS
from orchestration.jobs import JOBS, SCHEDULES
from orchestration.sensors import SENSORS

ALL_ASSETS = [*INGEST_ASSETS, *STATE_ASSETS, *ANALYTICS_ASSETS, *REBALANCING_ASSETS, *PUBLISH_ASSETS, *OUTBOX_ASSETS]


def build_definitions(data_dir: str | None = None) -> dg.Definitions:
    """Definitions for one data folder (default: ``$PORTFOLIO_DATA_DIR`` or ``data/``)."""
    return dg.Definitions(
        assets=ALL_ASSETS,
        asset_checks=ASSET_CHECKS,
        jobs=JOBS,
        schedules=SCHEDULES,
        sensors=SENSORS,
        resources=resources_for(data_dir),
    )


defs = build_definitions()
