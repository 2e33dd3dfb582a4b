"""Reliability of the intraday path, end to end on the tiny book (design: "Near-real-time path").

- **kill -9 mid-run**: an intraday run in a subprocess is SIGKILLed right after a chosen Delta
  commit (bronze trades, a silver ledger table, the first rebalancing table); rerunning the job
  (what Dagster's run retry does) gives the tables of one clean full run over every file.
- **the same file landed twice is processed once**: the same content at the same path launches
  no second run and changes no bronze table; the same content under another name is a new file
  by design (new run key) whose every row is quarantined as already ingested from another file.
- **a file still being written** is not requested until two looks agree, and a ``.part`` /
  ``.tmp`` / dot-name upload never is; then exactly one request, keyed by the final sha256.
- **100 malformed files** landed at once: no crash, exactly one quarantine record per file
  (whole-file records for unreadable files, one row record for a file of one bad row), and the
  good tables unchanged.
- **two intraday runs at once** over the same lake, started together or with one overtaking the
  other (held before its first silver commit, and again before its outbox commit, while the
  other runs on): afterwards the tables equal a clean run and the outbox is well numbered.

The killed and concurrent runs are real processes (``sys.executable -c CHILD``). Importing the
code location takes several seconds, so the children are started once per module, import while
the parent builds the shared full runs, and then wait on stdin for their order (data folder and
kill point). Killing is deterministic: the child wraps ``write_deltalake`` (as imported by
``assets.resources``) so that it says so and sleeps right after the kill point's commit; the
parent waits for that word, checks the new commit in the table's ``_delta_log``, and sends SIGKILL.
The same wrapper can hold a run just before a commit until the parent lets it go; whether the
other run then waits on a lake lock is read from ``/proc/locks`` (Linux).
"""

from __future__ import annotations

import gzip
import io
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import dagster as dg
import polars as pl
import pytest

import transforms  # noqa: F401  (engine affinity first)
from assets.outbox import OUTBOX_TABLE
from assets.resources import resources_for
from orchestration.definitions import build_definitions
from orchestration.sensors import landing_requests, landing_sensor
from test_pipeline import assert_same_tables, materialize_all, snapshot
from transforms.outbox import check_outbox
from transforms.validation import sha256_of

REPO = Path(__file__).resolve().parents[1]
HELD = 2  # the book's last trade files, landed after the shared full run
COMMIT = re.compile(r"\d{20}\.json")
READY = b"CHILD READY\n"
CHILD_TIMEOUT = 240  # seconds: import plus one intraday run on a loaded 2-core machine

# The child: import the code location, say so, then run the intraday job once as ordered on
# stdin: {"data_dir": ..., "pause_after": <table> or null, "hold_before": [<table>, ...]}
# (tables as "layer/name"). With pause_after, the process sleeps right after that table's
# commit, so the parent kills it at exactly that point; before the commit of each table of
# hold_before, it says so and waits until the parent sends one more line.
CHILD = r"""
import json, sys, time
import dagster as dg
import assets.resources as resources
from orchestration.definitions import build_definitions

sys.stdout.buffer.write(b"CHILD READY\n"); sys.stdout.flush()
order = json.loads(sys.stdin.readline())
real_write = resources.write_deltalake

def is_table(target, table):
    # the lake writes through a table's handle once it exists (assets.table_handles), else its path
    uri = str(getattr(target, "table_uri", target)).replace("\\", "/").rstrip("/")
    return bool(table) and uri.endswith("/lake/" + table)

def write_with_hooks(uri, *args, **kwargs):
    held = [t for t in order["hold_before"] if is_table(uri, t)]
    if held:
        print(f"holding before the commit of {held[0]}", flush=True)
        sys.stdin.readline()
    out = real_write(uri, *args, **kwargs)
    if is_table(uri, order["pause_after"]):
        print(f"paused after the commit of {order['pause_after']}", flush=True)
        time.sleep(3600)  # the parent sends SIGKILL here
    return out

resources.write_deltalake = write_with_hooks
job = build_definitions(order["data_dir"]).resolve_job_def("intraday")
result = job.execute_in_process(instance=dg.DagsterInstance.ephemeral(), raise_on_error=False)
print("run success" if result.success else "run failed", flush=True)
sys.exit(0 if result.success else 1)
"""

# Children each test takes from the pool, by test name: the module starts that many at once.
CHILDREN_PER_TEST = {"test_kill_9_mid_run_then_rerun_equals_a_clean_run": 1,
                     "test_two_intraday_runs_at_once_leave_consistent_tables": 2}


class Child:
    """One child process: started at once, importing; ``go`` hands it its order."""

    def __init__(self, log_path: Path):
        self.log_path = log_path
        self._log = log_path.open("wb")
        self.proc = subprocess.Popen(
            [sys.executable, "-c", CHILD], cwd=REPO, stdin=subprocess.PIPE, stdout=self._log, stderr=subprocess.STDOUT
        )

    def output(self) -> str:
        return self.log_path.read_bytes().decode("utf-8", errors="replace")

    def wait_ready(self) -> None:
        deadline = time.monotonic() + CHILD_TIMEOUT
        while not self.log_path.read_bytes().startswith(READY):
            assert self.proc.poll() is None, f"child died while importing:\n{self.output()[-3000:]}"
            assert time.monotonic() < deadline, "child still importing after the timeout"
            time.sleep(0.05)

    def go(self, data_dir: Path, pause_after: str | None = None, hold_before: tuple[str, ...] = ()) -> None:
        order = {"data_dir": str(data_dir), "pause_after": pause_after, "hold_before": list(hold_before)}
        self.proc.stdin.write(json.dumps(order).encode() + b"\n")
        self.proc.stdin.flush()

    def wait_for(self, message: str) -> None:
        deadline = time.monotonic() + CHILD_TIMEOUT
        while message not in self.output():
            assert self.proc.poll() is None, f"the run ended before '{message}':\n{self.output()[-3000:]}"
            assert time.monotonic() < deadline, f"no '{message}' after {CHILD_TIMEOUT} s"
            time.sleep(0.005)

    def release(self) -> None:
        """Let a run held by ``hold_before`` go on."""
        self.proc.stdin.write(b"go on\n")
        self.proc.stdin.flush()

    def waits_on_a_lock(self) -> bool:
        """Whether the process is blocked on a file lock (a ``->`` waiter in /proc/locks)."""
        return any(line.split()[1:2] == ["->"] and line.split()[5:6] == [str(self.proc.pid)]
                   for line in Path("/proc/locks").read_text().splitlines())

    def wait(self) -> int:
        return self.proc.wait(timeout=CHILD_TIMEOUT)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
        if not self.proc.stdin.closed:
            self.proc.stdin.close()
        self._log.close()


class ChildPool:
    def __init__(self, folder: Path, count: int):
        self.folder = folder
        self.started: list[Child] = []
        self.idle = [self._start() for _ in range(count)]

    def _start(self) -> Child:
        child = Child(self.folder / f"child_{len(self.started)}.log")
        self.started.append(child)
        return child

    def take(self) -> Child:
        child = self.idle.pop(0) if self.idle else self._start()
        child.wait_ready()
        return child

    def close(self) -> None:
        for child in self.started:
            child.stop()


@pytest.fixture(scope="module")
def children(request, tmp_path_factory):
    """The children this module's selected tests will take, started now so that they import
    while the shared full runs are built."""
    count = sum(CHILDREN_PER_TEST.get(getattr(item, "originalname", ""), 0)
                for item in request.session.items if getattr(item, "module", None) is request.module)
    pool = ChildPool(tmp_path_factory.mktemp("children"), count)
    yield pool
    pool.close()


def held_names(tiny_landing: Path) -> list[str]:
    return [p.name for p in sorted((tiny_landing / "trades").iterdir())[-HELD:]]


@pytest.fixture(scope="module")
def clean(children, tmp_path_factory, tiny_landing) -> dict[str, pl.DataFrame]:
    """The snapshot of one full run over every landing file."""
    data_dir = tmp_path_factory.mktemp("clean")
    shutil.copytree(tiny_landing, data_dir / "landing")
    materialize_all(data_dir)
    return snapshot(data_dir)


@pytest.fixture(scope="module")
def base(children, tmp_path_factory, tiny_landing) -> Path:
    """A data folder after one full run without the book's last ``HELD`` trade files (read-only
    by convention: tests work on a copy, ``copy_of``)."""
    data_dir = tmp_path_factory.mktemp("base")
    shutil.copytree(tiny_landing, data_dir / "landing")
    for name in held_names(tiny_landing):
        (data_dir / "landing" / "trades" / name).unlink()
    materialize_all(data_dir)
    return data_dir


def copy_of(base: Path, tmp_path: Path, tiny_landing: Path, land: list[str] = ()) -> Path:
    """A copy of the base data folder with the held trade files ``land`` landed."""
    data_dir = tmp_path / "data"
    shutil.copytree(base, data_dir)
    for name in land:
        shutil.copy2(tiny_landing / "trades" / name, data_dir / "landing" / "trades" / name)
    return data_dir


def run_intraday(data_dir: Path) -> dg.ExecuteInProcessResult:
    result = build_definitions(str(data_dir)).resolve_job_def("intraday").execute_in_process(
        instance=dg.DagsterInstance.ephemeral())
    assert result.success
    return result


def commit_version(data_dir: Path, table: str) -> int:
    """The last commit number in ``lake/<table>/_delta_log`` (-1: no table)."""
    log = data_dir / "lake" / table / "_delta_log"
    return max((int(p.name[:20]) for p in log.glob("*.json") if COMMIT.fullmatch(p.name)), default=-1)


def sensor_tick(data_dir: Path, cursor: str | None) -> tuple[list[dg.RunRequest], str]:
    """One evaluation of the real sensor (it reads the ingestion log through the lake)."""
    with dg.build_sensor_context(cursor=cursor, resources=resources_for(data_dir)) as context:
        out = landing_sensor(context)
        return ([] if isinstance(out, dg.SkipReason) else list(out)), context.cursor


def without(tables: dict[str, pl.DataFrame], *names: str) -> dict[str, pl.DataFrame]:
    return {k: v for k, v in tables.items() if k not in names}


# --- a file still being written ----------------------------------------------------------------


def test_a_file_still_being_written_is_not_picked_up_until_complete(tmp_path, tiny_landing):
    """A CSV grown chunk by chunk between ticks is never requested while it grows; one tick
    after the last write (two looks agree) it is requested once, keyed by its final sha256.
    Uploads under ``.part``, ``.tmp`` or a dot-name are never requested, however long they
    sit; renamed into place, the file is requested like any other."""
    landing = tmp_path / "landing"
    (landing / "trades").mkdir(parents=True)
    content = (tiny_landing / "trades" / held_names(tiny_landing)[-1]).read_bytes()
    lines = content.splitlines(keepends=True)
    chunks = [b"".join(lines[i : i + 97]) for i in range(0, len(lines), 97)]
    assert len(chunks) >= 4

    growing = landing / "trades" / "growing.csv"
    partial = {name: landing / "trades" / name for name in ("upload.csv.part", "upload.csv.tmp", ".upload.csv")}
    cursor: dict = {}
    with growing.open("wb") as writer:
        for n, chunk in enumerate(chunks):
            writer.write(chunk)
            writer.flush()
            for path in partial.values():
                with path.open("ab") as f:
                    f.write(chunk)
            requests, cursor = landing_requests(landing, cursor, {})
            assert requests == [], f"requested while still being written (after chunk {n + 1} of {len(chunks)})"
            assert set(cursor["looks"]) == {"trades/growing.csv"}  # the partial uploads are not even looked at
    assert growing.read_bytes() == content

    requests, cursor = landing_requests(landing, cursor, {})  # the second look agrees with the first
    sha = sha256_of(content)
    assert [r.run_key for r in requests] == [f"trades/growing.csv@{sha}"]
    assert requests[0].tags["portfolio/sha256"] == sha
    for _ in range(3):  # complete partial uploads, seen over several more ticks: still never requested
        requests, cursor = landing_requests(landing, cursor, {})
        assert requests == []

    # the writer renames its upload into place: complete once two looks agree
    partial["upload.csv.part"].rename(landing / "trades" / "renamed.csv")
    requests, cursor = landing_requests(landing, cursor, {})
    assert requests == []
    requests, cursor = landing_requests(landing, cursor, {})
    assert [r.run_key for r in requests] == [f"trades/renamed.csv@{sha}"]
    assert landing_requests(landing, cursor, {})[0] == []


# --- kill -9 -------------------------------------------------------------------------------------

# kill point: (table whose commit the run is killed after, tables committed by then,
# tables the run would write later: untouched at kill time)
KILL_POINTS = {
    "after_bronze_trades": ("bronze/trades", ["bronze/trades"],
                            ["bronze/quarantine/trades", "bronze/ingestion_log/trades", "silver/trades", "silver/lots"]),
    "after_silver_lots": ("silver/lots", ["bronze/ingestion_log/trades", "silver/trades", "silver/lots"],
                          ["silver/realized_pnl", "silver/ledger_rejections", "silver/cash_ledger", "silver/positions",
                           "silver/portfolio_state"]),
    "during_rebalancing": ("gold/recommendations", ["silver/portfolio_state", "gold/drift_summary", "gold/recommendations"],
                           ["gold/rebalance_analysis", "gold/orders", "gold/rebalance_runs", "publish/outbox"]),
}
PER_RUN_GOLD = ("recommendations", "rebalance_analysis", "lot_sales", "orders", "order_allocations", "crossings")


@pytest.mark.parametrize("point", list(KILL_POINTS))
def test_kill_9_mid_run_then_rerun_equals_a_clean_run(point, children, base, clean, tmp_path, tiny_landing):
    """The held trade files land; an intraday run in a subprocess is SIGKILLed right after the
    kill point's commit (return code -9, the later tables not written yet); rerunning the job
    gives the tables of one clean full run, the outbox stays well numbered, and no rebalancing
    table keeps rows of a run that has no ``rebalance_runs`` row."""
    target, committed, later = KILL_POINTS[point]
    data_dir = copy_of(base, tmp_path, tiny_landing, held_names(tiny_landing))
    watched = [target, *committed, *later]
    before = {t: commit_version(data_dir, t) for t in watched}
    warehouse = data_dir / "warehouse.duckdb"
    warehouse_before = warehouse.stat().st_mtime_ns

    child = children.take()
    child.go(data_dir, pause_after=target)
    child.wait_for(f"paused after the commit of {target}")
    assert commit_version(data_dir, target) == before[target] + 1  # the commit is in the Delta log
    os.kill(child.proc.pid, signal.SIGKILL)
    assert child.wait() == -signal.SIGKILL

    at_kill = {t: commit_version(data_dir, t) for t in watched}
    assert [t for t in committed if at_kill[t] <= before[t]] == [], "the run was killed before it got this far"
    assert [t for t in later if at_kill[t] != before[t]] == [], "the run was killed too late"
    assert warehouse.stat().st_mtime_ns == warehouse_before  # nor published

    run_intraday(data_dir)
    assert_same_tables(snapshot(data_dir), clean)
    lake = resources_for(data_dir)["lake"]
    log = lake.read("bronze/ingestion_log/trades")
    assert log.select("source_file", "source_sha256").is_unique().all(), "a file version logged twice"
    check_outbox(lake.read(OUTBOX_TABLE))
    runs = set(lake.read("gold/rebalance_runs")["run_id"])
    orphans = {name: sorted(set(lake.read(f"gold/{name}")["run_id"]) - runs) for name in PER_RUN_GOLD}
    orphans = {f"gold/{k}": v for k, v in orphans.items() if v}
    # a rerun is a new run id, so a per-run replace cannot reach the killed attempt's rows
    assert orphans == {}, f"rows of rebalance runs that never finished (no gold/rebalance_runs row): {orphans}"


# --- the same file twice -------------------------------------------------------------------------


def test_the_same_file_landed_twice_is_processed_once(base, tmp_path, tiny_landing):
    """A trade file lands: the sensor asks for one run, the job ingests it. The same content
    landed again at the same path (rewritten, newer mtime) launches nothing, even for a sensor
    that restarts with no cursor, and a duplicate launch of the job leaves bronze as it was
    (no new Delta commit, no new log row). The same content under another name is a new file
    by design: one request (same sha256, new path, so a new run key), and ingesting it adds no
    bronze row: every row is quarantined as already ingested from another file, and the
    ingestion log records it with 0 rows accepted."""
    name = held_names(tiny_landing)[0]
    data_dir = copy_of(base, tmp_path, tiny_landing, [name])
    path = data_dir / "landing" / "trades" / name
    content = path.read_bytes()
    sha = sha256_of(content)
    rows = pl.read_csv(io.BytesIO(content), infer_schema=False).height

    requests, cursor = sensor_tick(data_dir, None)  # its two looks, a second apart, agree
    assert [r.run_key for r in requests] == [f"trades/{name}@{sha}"]
    run_intraday(data_dir)
    lake = resources_for(data_dir)["lake"]
    bronze_version = commit_version(data_dir, "bronze/trades")
    logged = lake.read("bronze/ingestion_log/trades")
    before = snapshot(data_dir)

    # the same content at the same path, written again
    path.write_bytes(content)
    later = path.stat().st_mtime_ns + 10**9
    os.utime(path, ns=(later, later))
    requests, cursor = sensor_tick(data_dir, cursor)
    assert requests == []  # complete, but this content is already in the ingestion log
    restarted, fresh = sensor_tick(data_dir, None)
    assert restarted == [] and sensor_tick(data_dir, fresh)[0] == []
    run_intraday(data_dir)  # launched anyway: ingests nothing
    assert commit_version(data_dir, "bronze/trades") == bronze_version
    assert lake.read("bronze/ingestion_log/trades").height == logged.height
    assert_same_tables(snapshot(data_dir), before)

    # the same content under another name
    again = path.with_name(f"{path.stem}_again.csv")
    again.write_bytes(content)
    requests, cursor = sensor_tick(data_dir, cursor)
    assert [r.run_key for r in requests] == [f"trades/{again.name}@{sha}"]
    run_intraday(data_dir)
    after = snapshot(data_dir)
    assert_same_tables(without(after, "bronze/quarantine/trades"), without(before, "bronze/quarantine/trades"))
    quarantine = after["bronze/quarantine/trades"]
    old = quarantine.filter(pl.col("source_file") != f"trades/{again.name}")
    assert_same_tables({"q": old}, {"q": before["bronze/quarantine/trades"]})
    new = quarantine.filter(pl.col("source_file") == f"trades/{again.name}")
    assert new.height == rows and new["source_row"].n_unique() == rows
    assert new["reason"].str.ends_with("(already ingested from another file)").all()
    entry = lake.read("bronze/ingestion_log/trades").filter(pl.col("source_file") == f"trades/{again.name}")
    assert entry.select("status", "source_sha256", "rows_read", "rows_accepted", "rows_quarantined").rows() == [
        ("INGESTED", sha, rows, 0, rows)]
    assert after["bronze/trades"]["trade_id"].is_unique().all()


# --- 100 malformed files -------------------------------------------------------------------------


def malformed_trade_files(template: dict[str, str], header: list[str], ingested_id: str) -> list[tuple[str, bytes, str, str]]:
    """100 distinct malformed trade files, each built to give exactly one quarantine record:
    (file name, bytes, expected stage, a fragment of the expected reason). Unreadable files are
    quarantined whole (one ``file`` record); a readable file holds one bad row (one ``row`` or
    ``reference`` record) and nothing good, so no good table changes."""

    def csv(rows: list[dict], columns: list[str] = header, sep: str = ",") -> bytes:
        lines = [sep.join(columns), *(sep.join(r.get(c) or "" for c in columns) for r in rows)]
        return ("\n".join(lines) + "\n").encode()

    def one(i: int, **changes: str) -> dict[str, str]:
        return {**template, "trade_id": f"BAD{i:03d}", **changes}

    def parquet(i: int) -> bytes:
        buffer = io.BytesIO()
        pl.DataFrame([one(i)]).write_parquet(buffer)
        return buffer.getvalue()

    kinds = [
        ("garbage", "csv", "file", "not UTF-8", lambda i: b"\xff\xfe\x00" + bytes([i]) * 16 + b"\x80garbage"),
        ("blank", "csv", "file", "only white space", lambda i: b" \t\r\n" * (i + 1)),
        ("wrong_columns", "csv", "file", "missing required column", lambda i: f"foo,bar_{i}\n".encode()),
        ("semicolons", "csv", "file", "';'-separated", lambda i: csv([one(i)], sep=";")),
        ("truncated", "parquet", "file", "corrupt or unreadable parquet", lambda i: parquet(i)[: len(parquet(i)) // 2]),
        ("csv_named_parquet", "parquet", "file", "corrupt or unreadable parquet", lambda i: csv([one(i)])),
        ("unsupported", "txt", "file", "unsupported file format", lambda i: csv([one(i)])),
        ("not_gzip", "csv.gz", "file", "not a valid gzip file", lambda i: csv([one(i)])),
        ("duplicate_column", "csv", "file", "duplicate column(s): trade_id", lambda i: csv([one(i)], [*header, "trade_id"])),
        ("open_quote", "csv", "file", "CSV cannot be parsed", lambda i: csv([one(i)]).replace(b"BAD", b'"BAD', 1)),
        ("bad_number", "csv", "row", "quantity: cannot parse", lambda i: csv([one(i, quantity=f"abc{i}")])),
        ("bad_number_gz", "csv.gz", "row", "price: cannot parse", lambda i: gzip.compress(csv([one(i, price=f"{i}.5.5")]), mtime=0)),
        ("bad_timestamp", "csv", "row", "trade_ts: cannot parse", lambda i: csv([one(i, trade_ts=f"yesterday {i}")])),
        ("negative_quantity", "csv", "row", "quantity: must be > 0", lambda i: csv([one(i, quantity=str(-1 - i))])),
        ("bad_side", "csv", "row", "side: must be one of", lambda i: csv([one(i, side=f"HOLD{i}")])),
        ("short_row", "csv", "row", "truncated row", lambda i: csv([one(i)]).rstrip(b"\n").rsplit(b",", 3)[0] + b"\n"),
        ("unknown_portfolio", "csv", "reference", "is not a known portfolio", lambda i: csv([one(i, portfolio_id=f"P_NONE_{i}")])),
        ("ingested_id", "csv", "row", "already ingested from another file",
         lambda i: csv([one(i, trade_id=ingested_id, quantity=str(1 + i))])),
    ]
    files = [("bad_000_empty.csv", b"", "file", "empty file (0 bytes)")]
    for i in range(1, 100):
        label, suffix, stage, reason, make = kinds[i % len(kinds)]
        files.append((f"bad_{i:03d}_{label}.{suffix}", make(i), stage, reason))
    return files


def test_100_malformed_files_give_no_crash_and_100_quarantine_records(base, tmp_path, tiny_landing):
    """100 distinct malformed trade files (garbage bytes, empty, blank, wrong columns, wrong
    delimiter, truncated parquet, a CSV named .parquet, unsupported suffix, bad gzip, a
    duplicate column, an open quote, bad numbers and timestamps, a rule broken, a short row, an
    unknown portfolio, an id already ingested) land together: the sensor asks for 100 runs; one
    intraday run succeeds and quarantines each file exactly once with the expected stage and
    reason; every file is logged with read = accepted + quarantined; the good tables do not
    change."""
    data_dir = copy_of(base, tmp_path, tiny_landing)
    trades = pl.read_csv(sorted((data_dir / "landing" / "trades").glob("*.csv"))[0], infer_schema=False)
    files = malformed_trade_files(trades.row(0, named=True), trades.columns, trades["trade_id"][1])
    assert len(files) == 100 and len({sha256_of(content) for _, content, _, _ in files}) == 100
    before = snapshot(data_dir)
    for name, content, _, _ in files:
        (data_dir / "landing" / "trades" / name).write_bytes(content)

    requests, _ = sensor_tick(data_dir, None)
    assert sorted(r.tags["portfolio/source_file"] for r in requests) == sorted(f"trades/{n}" for n, *_ in files)
    assert len({r.run_key for r in requests}) == 100

    run_intraday(data_dir)  # asserts success: no crash
    after = snapshot(data_dir)
    assert_same_tables(without(after, "bronze/quarantine/trades"), without(before, "bronze/quarantine/trades"))
    quarantine = after["bronze/quarantine/trades"]
    bad_names = [f"trades/{n}" for n, *_ in files]
    ours = quarantine.filter(pl.col("source_file").is_in(bad_names))
    assert_same_tables({"q": quarantine.filter(~pl.col("source_file").is_in(bad_names))}, {"q": before["bronze/quarantine/trades"]})
    assert ours.height == 100 and ours["source_file"].n_unique() == 100
    found = {r["source_file"]: r for r in ours.iter_rows(named=True)}
    for name, _, stage, reason in files:
        record = found[f"trades/{name}"]
        assert (record["stage"], reason in record["reason"]) == (stage, True), (name, record["stage"], record["reason"])
        assert (record["source_row"] is None) == (stage == "file"), name
    log = resources_for(data_dir)["lake"].read("bronze/ingestion_log/trades").filter(pl.col("source_file").is_in(bad_names))
    assert log.height == 100 and (log["rows_accepted"] == 0).all()
    assert (log["rows_read"] == log["rows_accepted"] + log["rows_quarantined"]).all()
    whole = {f"trades/{n}" for n, _, stage, _ in files if stage == "file"}
    assert set(log.filter(pl.col("status") == "QUARANTINED")["source_file"]) == whole


# --- two runs at once ----------------------------------------------------------------------------


def wait_until_done_or_waiting(child: Child) -> None:
    """Until the child's run has finished or it waits on a lake lock."""
    deadline = time.monotonic() + CHILD_TIMEOUT
    while child.proc.poll() is None and not child.waits_on_a_lock():
        assert time.monotonic() < deadline, "the run neither finished nor waited on a lock"
        time.sleep(0.01)


@pytest.mark.parametrize("interleaving", ["started_together", "one_overtakes_the_other"])
def test_two_intraday_runs_at_once_leave_consistent_tables(interleaving, children, base, clean, tmp_path, tiny_landing):
    """Two trade files land and two intraday runs (separate processes) work on the same lake at
    once. Either both start together over both files; or the first run, launched for the first
    file, is held just before its first silver commit (its ledger computed from the first file
    only) while the second file lands and the second run ingests it and goes on until it
    finishes or waits on a lake lock; the first run is then let go, and held again just before
    its outbox commit (its events computed) until the second run has finished or waits. Each
    run finishes, or a failed one is rerun as Dagster's run retry would; then the tables equal
    one clean full run, trade ids are unique in bronze and silver, each file version is logged
    once, and the outbox is well numbered (no sequence given twice)."""
    first, second = held_names(tiny_landing)
    pair = [children.take(), children.take()]  # both imported and waiting
    if interleaving == "started_together":
        data_dir = copy_of(base, tmp_path, tiny_landing, [first, second])
        for child in pair:
            child.go(data_dir)
    else:
        data_dir = copy_of(base, tmp_path, tiny_landing, [first])
        held, overtaking = pair
        held.go(data_dir, hold_before=("silver/trades", OUTBOX_TABLE))
        held.wait_for("holding before the commit of silver/trades")
        shutil.copy2(tiny_landing / "trades" / second, data_dir / "landing" / "trades" / second)
        overtaking.go(data_dir)
        wait_until_done_or_waiting(overtaking)
        held.release()
        held.wait_for(f"holding before the commit of {OUTBOX_TABLE}")
        wait_until_done_or_waiting(overtaking)
        held.release()
    codes = [child.wait() for child in pair]
    for code, child in zip(codes, pair):
        assert code in (0, 1), f"a run crashed (code {code}):\n{child.output()[-3000:]}"
        if code == 1:  # a failed run: Dagster's run retry reruns the job
            run_intraday(data_dir)

    assert_same_tables(snapshot(data_dir), clean)
    lake = resources_for(data_dir)["lake"]
    assert lake.read("bronze/trades")["trade_id"].is_unique().all()
    assert lake.read("silver/trades")["trade_id"].is_unique().all()
    log = lake.read("bronze/ingestion_log/trades")
    repeats = log.filter(pl.struct("source_file", "source_sha256").is_duplicated())
    assert repeats.height == 0, f"file versions logged twice: {repeats.select('source_file', 'version', 'run_id').rows()}"
    check_outbox(lake.read(OUTBOX_TABLE))
