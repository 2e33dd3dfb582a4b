"""The intraday path's sensors: new trade and price files in ``landing/`` launch the ``intraday``
job (``landing_sensor``), and each successful intraday or rebalance run is followed by a
``publish_warehouse`` run (``warehouse_after_runs``).

A file is picked up only when it is complete:

- a writer that renames into place writes ``*.tmp`` / ``*.part`` (or a dot-file) first, which
  are never looked at (``assets.ingest.landing_candidates``);
- a file renamed into place is complete at once: the process evaluating the sensor watches
  the landing folder (``orchestration.landing_watch``: inotify on Linux) and records each file
  renamed into place, while it stays as the rename left it;
- a file renamed into place that the watch did not see (renamed while no watch ran, or moved in
  from another folder) is complete once two looks at least ``MIN_LOOK_GAP`` apart have seen it
  unchanged (size, modification and change times): a rename changes the file's change time
  (ctime) but not its modification time (mtime), while every write sets both to the same
  instant, so a file whose ctime is later than its mtime was last touched by something other
  than a write: the rename (or a ``cp -p`` / ``touch -d`` setting its times once written).
  Timestamps here are coarse (4 ms): a rename within 4 ms of the last write leaves the two
  equal, and the file takes the next rule;
- any other file must be seen unchanged for ``SETTLE_SECONDS`` between two looks: a file still
  being written changes between looks and waits. Each look records, per file, since when it
  has been seen as it is; the looks are the previous ticks' (in the cursor) and this tick's. A
  writer that pauses longer than ``SETTLE_SECONDS`` in the middle of a file it writes in place
  must write it under a temporary name instead.

A complete file whose content (sha256) is already in the kind's ingestion log is not launched
again; otherwise the sensor asks for one run per file, keyed by ``<path>@<sha256>``: Dagster
never launches a run key twice, so the same content landed twice (or seen again after a restart)
runs once, and a changed file (new content, new key) runs again. The cursor is JSON:
``{"looks": {path: [size, mtime_ns, ctime_ns, since]}, "done": {path: [size, mtime_ns, sha256]}}``,
the last look and the files already dealt with (so an unchanged file is not hashed again every
tick); it holds only files present at the last look, so it does not grow with the landing
history.

Because a failed run is never relaunched for the same run key, the job carries a run-retry tag
(the instance must enable run retries: ``orchestration/dagster.yaml``, copied by ``make ui``).
Runs are tagged ``portfolio/lake_writer`` so that the instance's run queue keeps one writer of
the lake at a time.

Tick period: ``dagster-daemon`` evaluates sensors in a loop that comes round every 5 s at the
soonest (Dagster's ``MIN_INTERVAL_LOOP_TIME``, not configurable), and skips a sensor whose last
tick is younger than its ``minimum_interval_seconds``. With an interval of exactly 5 s the
sensor was skipped on every loop that came round a few milliseconds early: half of its ticks
came 10 s apart (measured on the daemon's tick history). An interval below the loop's
(``TICK_SECONDS``) makes the sensor tick on every loop. A tick that looked once and returned
left a file landed just after it waiting for the next tick: 2.5 s on average, 5 s at worst, on
top of its settling. So each tick watches: it looks every ``POLL_SECONDS`` for
``WATCH_SECONDS`` (below the loop's 5 s, so the next tick starts about a second after it ends)
and returns as soon as a file is complete: a file the watch saw renamed into place wakes the
tick at once; any other is complete ``SETTLE_SECONDS`` (or ``MIN_LOOK_GAP``) and at most a poll
after it was first seen. The instance evaluates sensors on threads
(``orchestration/dagster.yaml``), so the warehouse sensor does not wait behind the watch.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from pathlib import Path

import dagster as dg

from assets.ingest import ingestion_log_table, landing_candidates, last_logged
from assets.resources import LakeResource, PipelineSettings
from orchestration.landing_watch import landing_watch
from orchestration.jobs import LAKE_WRITER_TAG, intraday, publish_warehouse, rebalance
from transforms import contract
from transforms.validation import sha256_of

WATCHED_KINDS = ("trades", "prices")
# below the daemon's 5 s loop, so that every loop ticks (module docstring)
TICK_SECONDS = 1
# how long a file must be seen unchanged before it is complete (module docstring)
SETTLE_SECONDS = 1.0
# how long one tick watches the landing folder, and how often it looks meanwhile: the daemon
# starts a tick every 5 s at the soonest, so a tick that returned at once left a new file
# waiting 2.5 s on average for the next one (module docstring)
WATCH_SECONDS = 4.0
POLL_SECONDS = 0.25
# the shortest pause between two looks of one tick, and how long a file renamed into place must
# be seen unchanged
MIN_LOOK_GAP = 0.05


def look_at(landing_dir: Path, kinds: tuple[str, ...] = WATCHED_KINDS) -> dict[str, list[int]]:
    """``{path relative to landing_dir: [size, mtime_ns, ctime_ns]}`` of the candidate files of
    ``kinds``."""
    out: dict[str, list[int]] = {}
    for kind in kinds:
        for path in landing_candidates(landing_dir, kind):
            stat = path.stat()
            out[path.relative_to(landing_dir).as_posix()] = [stat.st_size, stat.st_mtime_ns, stat.st_ctime_ns]
    return out


def renamed_after_last_write(look: list) -> bool:
    """True when a look (``[size, mtime_ns, ctime_ns, ...]``) shows a file whose last change
    was not a write (its ctime is later than its mtime): renamed into place (module docstring)."""
    return look[2] > look[1]


def settle_time(look: list, settle_s: float) -> float:
    """How long a file must be seen unchanged to be complete: ``MIN_LOOK_GAP`` when renamed into
    place (at most ``settle_s``), else ``settle_s``."""
    return min(MIN_LOOK_GAP, settle_s) if renamed_after_last_write(look) else settle_s


def settled(looks: dict[str, list], now: float, settle_s: float,
            renamed: dict[str, list[int]] | None = None) -> list[str]:
    """The complete files of ``looks`` (``{path: [size, mtime_ns, ctime_ns, since]}``), sorted:
    those seen renamed into place and as the rename left them (``renamed``: ``{path: [size,
    mtime_ns]}``, ``orchestration.landing_watch``), and those an earlier look saw as they are
    now (``since < now``), at least ``settle_time`` before ``now``."""
    renamed = renamed or {}
    # a microsecond's slack: a look timed for the settle's end must not miss it by a rounding
    return sorted(path for path, look in looks.items()
                  if renamed.get(path) == look[:2]
                  or (look[3] < now and now - look[3] >= settle_time(look, settle_s) - 1e-6))


def _logged(lake: LakeResource, kind: str) -> dict[str, str]:
    """The last logged sha256 of each file of ``kind``."""
    log = lake.read(ingestion_log_table(kind), contract.INGESTION_LOG_SCHEMA)
    return {path: sha for path, (sha, _) in last_logged(log).items()}


def _look(landing_dir: Path, previous: dict[str, list], now: float) -> dict[str, list]:
    """``look_at`` with, per file, ``since``: when it was first seen as it is (carried from
    ``previous`` while size, mtime and ctime are unchanged, else ``now``)."""
    out = {}
    for path, look in look_at(landing_dir).items():
        before = previous.get(path)
        # a cursor of an older release holds [size, mtime_ns, since]: its files look new once
        same = before is not None and len(before) == 4 and list(before[:3]) == look
        out[path] = [*look, before[3] if same else now]
    return out


def landing_requests(landing_dir: Path, cursor: dict, logged: dict[str, dict[str, str]], settle_s: float = 0.0,
                     sleep: Callable[[float], None] = time.sleep, watch_s: float = 0.0,
                     clock: Callable[[], float] = time.time,
                     renamed: Callable[[], dict[str, list[int]]] | None = None) -> tuple[list[dg.RunRequest], dict]:
    """One tick of the sensor, without Dagster's context: (run requests, new cursor).

    ``cursor`` is the previous tick's (``{}`` at first); ``logged`` maps kind -> {path: sha256}
    of the files already ingested. A file is complete once a look has seen it unchanged (size,
    mtime and ctime) for ``settle_s`` since an earlier look, or ``MIN_LOOK_GAP`` when renamed
    into place (``settled``; with 0, any earlier look, as the previous tick's), or at once
    when ``renamed()`` (a ``LandingWatch``'s) says it was renamed into place and is as the rename
    left it. The tick looks again every ``POLL_SECONDS`` (or when the next file would have
    settled, if sooner, or when ``sleep`` returns early) for ``watch_s``, and at least until the
    files its first look found new or changed have had ``settle_s``; it returns as soon as a
    complete file is to be asked for. ``sleep`` and ``clock`` (wall-clock seconds: the cursor
    keeps them across ticks and processes) are for tests. See the module docstring for the rules."""
    started = clock()
    looks = _look(landing_dir, cursor.get("looks", {}), started)
    waiting_at_first = any(look[3] == started for look in looks.values())
    until = started + max(watch_s, settle_s if waiting_at_first else 0.0)
    done = {path: entry for path, entry in cursor.get("done", {}).items() if path in looks}
    requests: list[dg.RunRequest] = []
    now = started  # the time of the last look
    while True:
        complete = settled(looks, now, settle_s, renamed() if renamed else None)
        for path in complete:
            look = looks[path][:2]  # size and mtime: what a done entry records
            if done.get(path, [None, None])[:2] == look:
                continue
            sha = sha256_of((landing_dir / path).read_bytes())
            done[path] = [*look, sha]
            kind = path.split("/", 1)[0]
            if logged.get(kind, {}).get(path) == sha:
                continue
            requests.append(dg.RunRequest(run_key=f"{path}@{sha}", tags={
                "portfolio/source_file": path, "portfolio/sha256": sha, LAKE_WRITER_TAG: "intraday"}))
        if requests or now >= until:
            break
        # look again when the next waiting file would have settled, or at the next poll
        ready = [look[3] + settle_time(look, settle_s) for path, look in looks.items() if path not in complete]
        wake = min([*ready, now + POLL_SECONDS] if watch_s > 0 else ready or [until], default=until)
        sleep(max(min(wake, until) - now, MIN_LOOK_GAP))
        now = clock()
        looks = _look(landing_dir, looks, now)
        done = {path: entry for path, entry in done.items() if path in looks}
    return requests, {"looks": looks, "done": done}


@dg.sensor(
    job=intraday,
    minimum_interval_seconds=TICK_SECONDS,
    default_status=dg.DefaultSensorStatus.RUNNING,
    description="New, complete files in landing/trades and landing/prices (renamed into place, or seen "
    "unchanged for a second; each tick watches the folder for 4 s) launch the intraday job, one run per file "
    "keyed by path and content hash.",
)
def landing_sensor(context: dg.SensorEvaluationContext, lake: LakeResource, settings: PipelineSettings):
    cursor = json.loads(context.cursor) if context.cursor else {}
    logged = {kind: _logged(lake, kind) for kind in WATCHED_KINDS}
    watch = landing_watch(settings.landing_dir, WATCHED_KINDS)
    requests, cursor = landing_requests(settings.landing_dir, cursor, logged, SETTLE_SECONDS, watch_s=WATCH_SECONDS,
                                        **({"sleep": watch.wait, "renamed": watch.renamed} if watch else {}))
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
