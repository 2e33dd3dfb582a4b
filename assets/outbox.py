"""Publish: the event outbox (``publish/outbox``) and the subscribers' export folders.

Each run appends, per portfolio, a ``portfolio_state_updated`` event when its state changed, and
the latest rebalance run's ``recommendation_published`` / ``order_published`` events
(``transforms.outbox``: one gapless sequence per portfolio, deterministic event ids). A run
replaces only its own events, so a retried run numbers and names them the same way.

Subscriptions come from the YAML file named by ``PipelineSettings.subscriptions_file``
(``transforms.outbox.parse_subscriptions``). Each subscriber gets the run's events it asked for
in ``exports/<subscriber>/<run_id>.jsonl`` (or ``.parquet``), written under a dot-name and
renamed into place, so a reader never sees half a file; a run without events for it writes none.
"""

import os
from datetime import datetime, timezone
from pathlib import Path

import dagster as dg
import polars as pl
import yaml

from assets.analytics import gold_key, gold_table
from assets.rebalancing import SCHEMAS as REBALANCING_SCHEMAS
from assets.resources import LakeResource, PipelineSettings
from assets.state import input_versions, read_silver, silver_key, silver_table
from transforms.outbox import (
    LAST_SCHEMA,
    OUTBOX_SCHEMA,
    latest_events,
    order_events,
    parse_subscriptions,
    recommendation_events,
    select_events,
    state_events,
    to_json_lines,
)

OUTBOX_TABLE = "publish/outbox"


def _latest_run(lake: LakeResource, name: str, run_id: str | None) -> pl.DataFrame:
    """One rebalance run's rows of gold ``name`` (the filter is pushed down to the files)."""
    scan = lake.scan(gold_table(name), REBALANCING_SCHEMAS[name])
    return scan.filter(pl.col("run_id") == run_id).collect() if run_id else scan.head(0).collect()


def export_events(folder: Path, name: str, events: pl.DataFrame, fmt: str) -> Path:
    """Write ``events`` to ``folder/<name>.<fmt>`` atomically: under a dot-name, then renamed."""
    folder.mkdir(parents=True, exist_ok=True)
    target = folder / f"{name}.{fmt}"
    staging = folder / f".{name}.{fmt}.tmp"
    if fmt == "jsonl":
        staging.write_text(to_json_lines(events))
    else:
        events.write_parquet(staging)
    os.replace(staging, target)
    return target


@dg.asset(
    key=dg.AssetKey(["publish", "outbox"]),
    deps=[silver_key("portfolio_state"), silver_key("positions"), gold_key("recommendations"), gold_key("orders"),
          gold_key("order_allocations"), gold_key("rebalance_runs")],
    group_name="publish",
    kinds={"polars", "delta"},
    description="Events for downstream systems: portfolio_state_updated per changed portfolio, and the latest "
    "rebalance run's recommendation and order events, numbered per portfolio; per-subscriber exports.",
)
def outbox(context: dg.AssetExecutionContext, lake: LakeResource, settings: PipelineSettings):
    # Under the lake's lock of the outbox: two runs at once number their events one after the
    # other, never both from the same last sequence.
    with lake.writer_lock(OUTBOX_TABLE):
        return _publish_events(context, lake, settings)


def _publish_events(context: dg.AssetExecutionContext, lake: LakeResource, settings: PipelineSettings):
    run_id, now = context.run.run_id, datetime.now(timezone.utc)
    # the latest event of each (portfolio, type) before this run: never the payloads
    earlier = lake.scan(OUTBOX_TABLE, OUTBOX_SCHEMA).filter(pl.col("run_id") != run_id).select(list(LAST_SCHEMA))
    last = latest_events(earlier.collect())
    states = state_events(read_silver(lake, "portfolio_state"), read_silver(lake, "positions"), last, run_id=run_id, emitted_at=now)
    last = latest_events(last, states)
    runs = lake.read(gold_table("rebalance_runs"), REBALANCING_SCHEMAS["rebalance_runs"], ["run_id", "started_at"])
    rebalance_run = runs.sort("started_at")["run_id"][-1] if runs.height else None
    recommendations = recommendation_events(_latest_run(lake, "recommendations", rebalance_run), last, run_id=run_id,
                                            emitted_at=now)
    last = latest_events(last, recommendations)
    orders = order_events(_latest_run(lake, "order_allocations", rebalance_run), _latest_run(lake, "orders", rebalance_run),
                          last, run_id=run_id, emitted_at=now)
    events = pl.concat([states, recommendations, orders]).sort("portfolio_id", "sequence")
    sources = [silver_table("portfolio_state"), silver_table("positions"), gold_table("recommendations"), gold_table("orders")]
    predicate = f"run_id = '{run_id}'" if lake.exists(OUTBOX_TABLE) else None
    version = lake.write(OUTBOX_TABLE, events, run_id=run_id, predicate=predicate,
                         commit_metadata={"inputs": input_versions(lake, sources)})
    exported = {}
    if settings.subscriptions_file:
        spec = yaml.safe_load(Path(settings.subscriptions_file).read_text())
        for sub in parse_subscriptions(spec):
            chosen = select_events(sub, events)
            if chosen.height:
                export_events(Path(settings.data_dir) / "exports" / sub.name, run_id, chosen, sub.format)
            exported[sub.name] = chosen.height
    by_type = dict(events.group_by("event_type").len().iter_rows()) if events.height else {}
    context.log.info(f"outbox: {events.height} event(s) {by_type}; exported {exported}")
    return dg.MaterializeResult(metadata={"dagster/row_count": events.height, "delta_version": version,
                                          "events": dg.MetadataValue.json(by_type), "exported": dg.MetadataValue.json(exported)})


OUTBOX_ASSETS = [outbox]
