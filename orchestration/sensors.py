"""The intraday path's sensors: new trade and price files in ``landing/`` launch the ``intraday``
job (``landing_sensor``), and each successful intraday or rebalance run is followed by a
``publish_warehouse`` run (``warehouse_after_runs``).

A file is picked up only when it is complete:

- a writer that renames into place writes ``*.tmp`` / ``*.part`` (or a dot-file) first, which
  are never looked at (``assets.ingest.landing_candidates``);
- every file under its final name, renamed into place or not, must show the same size and
  modification time at two looks (``stable_files``): a file still being written changes between
  looks and waits (a renamed file is complete at the first look, but from the landing folder
  alone it cannot be told from one written in place). The looks are the previous tick's and
  this tick's; when this tick finds a file the previous one had not seen as it is now, it looks
  again ``SETTLE_SECONDS`` later (``landing_requests``' ``settle_s``), so a file landed between
  ticks is picked up by the first tick after it rather than the second, 5 s later. A writer
  that pauses longer than that in the middle of a file it writes in place must write it under
  a temporary name instead.

A complete file whose content (sha256) is already in the kind's ingestion log is not launched
again; otherwise the sensor asks for one run per file, keyed by ``<path>@<sha256>``: Dagster
never launches a run key twice, so the same content landed twice (or seen again after a restart)
runs once, and a changed file (new content, new key) runs again. The cursor is JSON:
``{"looks": {path: [size, mtime_ns]}, "done": {path: [size, mtime_ns, sha256]}}``, the last look
and the files already dealt with (so an unchanged file is not hashed again every tick); it holds
only files present at the last look, so it does not grow with the landing history.

Because a failed run is never relaunched for the same run key, the job carries a run-retry tag
(the instance must enable run retries: ``orchestration/dagster.yaml``, copied by ``make ui``).
Runs are tagged ``portfolio/lake_writer`` so that the instance's run queue keeps one writer of
the lake at a time.

Tick period: ``dagster-daemon`` evaluates sensors in a loop that comes round every 5 s at the
soonest (Dagster's ``MIN_INTERVAL_LOOP_TIME``, not configurable), and skips a sensor whose last
tick is younger than its ``minimum_interval_seconds``. With an interval of exactly 5 s the
sensor was skipped on every loop that came round a few milliseconds early: half of its ticks
came 10 s apart (measured on the daemon's tick history), and a file waits two ticks (one look,
then the look that finds it stable). An interval below the loop's (``TICK_SECONDS``) makes the
sensor tick on every loop, every 5 s, and the second look within the tick means a file waits
one tick, not two.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from pathlib import Path

import dagster as dg

from assets.ingest import ingestion_log_table, landing_candidates, last_logged
from assets.resources import LakeResource, PipelineSettings
from orchestration.jobs import LAKE_WRITER_TAG, intraday, publish_warehouse, rebalance
from transforms import contract
from transforms.validation import sha256_of

WATCHED_KINDS = ("trades", "prices")
# below the daemon's 5 s loop, so that every loop ticks (module docstring)
TICK_SECONDS = 1
# the pause between a tick's two looks at a file it sees for the first time (module docstring)
SETTLE_SECONDS = 1.0


def look_at(landing_dir: Path, kinds: tuple[str, ...] = WATCHED_KINDS) -> dict[str, list[int]]:
    """``{path relative to landing_dir: [size, mtime_ns]}`` of the candidate files of ``kinds``."""
    out: dict[str, list[int]] = {}
    for kind in kinds:
        for path in landing_candidates(landing_dir, kind):
            stat = path.stat()
            out[path.relative_to(landing_dir).as_posix()] = [stat.st_size, stat.st_mtime_ns]
    return out


def stable_files(previous: dict[str, list[int]], current: dict[str, list[int]]) -> list[str]:
    """The paths whose (size, mtime) are the same at both looks, sorted: complete files. A file
    seen for the first time, or changed since the previous look, is not (yet) stable."""
    return sorted(path for path, seen in current.items() if previous.get(path) == seen)


def _logged(lake: LakeResource, kind: str) -> dict[str, str]:
    """The last logged sha256 of each file of ``kind``."""
    log = lake.read(ingestion_log_table(kind), contract.INGESTION_LOG_SCHEMA)
    return {path: sha for path, (sha, _) in last_logged(log).items()}


def landing_requests(landing_dir: Path, cursor: dict, logged: dict[str, dict[str, str]], settle_s: float = 0.0,
                     sleep: Callable[[float], None] = time.sleep) -> tuple[list[dg.RunRequest], dict]:
    """One tick of the sensor, without Dagster's context: (run requests, new cursor).

    ``cursor`` is the previous tick's (``{}`` at first); ``logged`` maps kind -> {path: sha256}
    of the files already ingested. With ``settle_s`` > 0, files this look finds new or changed
    since the previous tick's are looked at once more after ``sleep(settle_s)``, and those the
    two looks agree on are complete too (0: only the previous tick's look counts). See the
    module docstring for the rules."""
    current = look_at(landing_dir)
    complete = stable_files(cursor.get("looks", {}), current)
    if settle_s > 0 and len(complete) < len(current):
        sleep(settle_s)
        first, current = current, look_at(landing_dir)
        complete = sorted(set(stable_files(cursor.get("looks", {}), current)) | set(stable_files(first, current)))
    done = {path: entry for path, entry in cursor.get("done", {}).items() if path in current}
    requests = []
    for path in complete:
        look = current[path]
        if done.get(path, [None, None])[:2] == look:
            continue
        sha = sha256_of((landing_dir / path).read_bytes())
        done[path] = [*look, sha]
        kind = path.split("/", 1)[0]
        if logged.get(kind, {}).get(path) == sha:
            continue
        requests.append(dg.RunRequest(run_key=f"{path}@{sha}",
                                      tags={"portfolio/source_file": path, "portfolio/sha256": sha, LAKE_WRITER_TAG: "intraday"}))
    return requests, {"looks": current, "done": done}


@dg.sensor(
    job=intraday,
    minimum_interval_seconds=TICK_SECONDS,
    default_status=dg.DefaultSensorStatus.RUNNING,
    description="New, complete files in landing/trades and landing/prices (stable over two looks, a second apart "
    "or a tick apart; or renamed into place) launch the intraday job, one run per file keyed by path and content hash.",
)
def landing_sensor(context: dg.SensorEvaluationContext, lake: LakeResource, settings: PipelineSettings):
    cursor = json.loads(context.cursor) if context.cursor else {}
    logged = {kind: _logged(lake, kind) for kind in WATCHED_KINDS}
    requests, cursor = landing_requests(settings.landing_dir, cursor, logged, SETTLE_SECONDS)
    context.update_cursor(json.dumps(cursor, sort_keys=True))
    if not requests:
        return dg.SkipReason("no new complete file in landing/trades or landing/prices")
    return requests


# the after_run tag of a publish_warehouse run: the run whose success launched it
AFTER_RUN_TAG = "portfolio/after_run"


@dg.run_status_sensor(
    run_status=dg.DagsterRunStatus.SUCCESS,
    monitored_jobs=[intraday, rebalance],
    request_job=publish_warehouse,
    minimum_interval_seconds=TICK_SECONDS,
    default_status=dg.DefaultSensorStatus.RUNNING,
    description="Republish the warehouse after each successful intraday or rebalance run (one publish_warehouse "
    "run; none while one is still queued, since that one will read the lake as it is when it starts).",
)
def warehouse_after_runs(context: dg.RunStatusSensorContext):
    waiting = context.instance.get_runs(
        dg.RunsFilter(job_name=publish_warehouse.name,
                      statuses=[dg.DagsterRunStatus.QUEUED, dg.DagsterRunStatus.NOT_STARTED]), limit=1)
    if waiting:
        return dg.SkipReason(f"publish_warehouse run {waiting[0].run_id} is still queued: it will publish the changes "
                             f"of run {context.dagster_run.run_id} too")
    return dg.RunRequest(run_key=f"after:{context.dagster_run.run_id}",
                         tags={AFTER_RUN_TAG: context.dagster_run.run_id})


SENSORS = [landing_sensor, warehouse_after_runs]
