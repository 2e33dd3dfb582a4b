"""Resources the assets read and write through: the Delta lake, the settings, the warehouse.

Everything about *where* data lives is here, so assets stay thin and transforms stay pure.
The lake root may be a local folder or any ``deltalake`` URI (``s3://…``, ``az://…``); cloud
credentials come from the environment as delta-rs reads them.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import shutil
import subprocess
import time
import uuid
from collections.abc import Callable, Iterator
from functools import cache
from importlib import metadata
from pathlib import Path
from typing import ClassVar

import dagster as dg
import duckdb
import polars as pl
import pyarrow as pa
import pyarrow.dataset  # noqa: F401  (pa.dataset)
from deltalake import CommitProperties, DeltaTable, write_deltalake
from deltalake.exceptions import CommitFailedError, TableNotFoundError

from assets.table_handles import current_table
from transforms.shards import SHARD_WORKERS

DEFAULT_DATA_DIR = "data"

# Point-in-time reconstruction reads old versions, so history must outlive the delta-rs
# defaults (30 days of log, 7 days of removed files).
TABLE_CONFIGURATION = {
    "delta.logRetentionDuration": "interval 3650 days",
    "delta.deletedFileRetentionDuration": "interval 3650 days",
}
COMMIT_RETRIES = 5
# Tables with this column are written in its order, in files of at most CLUSTER_FILE_BYTES, so
# each file holds a few portfolios and its statistics name them: a predicate write replacing a
# few portfolios then rewrites a few small files. With delta-rs's default (100 MiB files, rows in
# any order) every write of five portfolios' open lots rewrote a file of the standard book's
# 22M-row lot table: 2.2-2.5 s, against 0.45-0.6 s in 4 MiB files in portfolio order.
CLUSTER_COLUMN = "portfolio_id"
CLUSTER_FILE_BYTES = 4 << 20


def clustered(frame: pl.DataFrame) -> pl.DataFrame:
    """``frame`` in ``CLUSTER_COLUMN`` order (a stable sort, skipped when already in order), the
    order ``LakeResource.write`` writes rows in; unchanged without that column."""
    if CLUSTER_COLUMN in frame.columns and not frame[CLUSTER_COLUMN].is_sorted():
        return frame.sort(CLUSTER_COLUMN, maintain_order=True)
    return frame


def only_added_files(commit: dict) -> bool:
    """Whether a Delta commit (a ``history`` entry) only added data files: an append, or a
    predicate write that matched no row. Its new rows are then exactly its added files' rows."""
    return (commit.get("operationMetrics") or {}).get("num_removed_files", 1) == 0


def data_dir_from_env(data_dir: str | os.PathLike | None = None) -> Path:
    """Resolve the data folder: the argument, else ``$PORTFOLIO_DATA_DIR``, else ``data/``."""
    return Path(data_dir or os.environ.get("PORTFOLIO_DATA_DIR") or DEFAULT_DATA_DIR)


@cache
def code_version() -> str:
    """The package version plus the git commit when run from a checkout (for the audit trail)."""
    try:
        version = metadata.version("portfolio-pipeline")
    except metadata.PackageNotFoundError:
        version = "0+unknown"
    try:
        sha = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"],
            cwd=Path(__file__).resolve().parent,
            capture_output=True,
            text=True,
            timeout=5,
            check=True,
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        sha = ""
    return f"{version}+g{sha}" if sha else version


class PipelineSettings(dg.ConfigurableResource):
    """Where the landing files are and the thresholds the checks use."""

    data_dir: str = DEFAULT_DATA_DIR
    quarantine_max_share: float = 0.05  # of rows read, across all kinds and the ledger
    # ledger shards computed at once (threads); memory grows by about 2 GB per extra worker
    # on a book with many wash-sale splits (see assets.state.LEDGER_SHARD_TRADES)
    shard_workers: int = SHARD_WORKERS
    # rebuild only the portfolios whose inputs changed since the last build (assets.scope);
    # False rebuilds every portfolio on every run
    incremental_state: bool = True
    # analytics (transforms.conventions, transforms.margin, transforms.drift)
    risk_free_rate: float = 0.0  # annual; compounded to a daily rate
    margin_long_initial: float = 0.50
    margin_long_maintenance: float = 0.25
    margin_short_initial: float = 1.50
    margin_short_maintenance: float = 0.30
    margin_portfolios: list[str] = []  # margin accounts (a portfolio holding a short is one anyway)
    drift_abs_band: float = 0.05  # the "5/25" rule
    drift_rel_band: float = 0.25
    drift_portfolio_band: float = 0.05  # on the portfolio drift figure
    drift_trend_window: int = 20  # business days
    stress_scenarios_file: str = ""  # a YAML file of named scenarios; empty: transforms.stress defaults
    rebalance_policy_file: str = ""  # YAML: trigger and optimizer policies (assets.rebalancing); empty: the defaults
    subscriptions_file: str = ""  # YAML: who gets which outbox events in exports/ (assets.outbox); empty: no export

    @property
    def landing_dir(self) -> Path:
        return Path(self.data_dir) / "landing"


class LakeResource(dg.ConfigurableResource):
    """The Delta lake: one table per ``layer/name`` under ``root``.

    Writes are idempotent by construction: a full table is overwritten, a slice is replaced by
    a predicate (``source_file IN (…)``). Each commit records the run id, the code version and
    any caller metadata (source file hashes) in the Delta log, which is the audit trail.
    """

    root: str = f"{DEFAULT_DATA_DIR}/lake"

    def uri(self, name: str) -> str:
        if "://" in self.root:
            return f"{self.root.rstrip('/')}/{name}"
        return str(Path(self.root) / name)

    def exists(self, name: str) -> bool:
        return self.table(name) is not None

    def table(self, name: str) -> DeltaTable | None:
        """Table ``name`` at its latest version (a handle the process keeps while it is current:
        ``assets.table_handles``), or None when it does not exist."""
        return current_table(self.uri(name))

    def read(
        self,
        name: str,
        schema: dict[str, pl.DataType] | None = None,
        columns: list[str] | None = None,
        version: int | None = None,
    ) -> pl.DataFrame:
        """Read a table (or one ``version`` of it); a missing table reads as empty ``schema``."""
        table = self.table(name)
        if table is None:
            if schema is None:
                raise TableNotFoundError(f"no Delta table at {self.uri(name)}")
            frame = pl.DataFrame(schema=schema)
            return frame.select(columns) if columns else frame
        if version is None:
            frame = pl.read_delta(table, columns=columns)
        else:
            frame = pl.read_delta(self.uri(name), version=version, columns=columns)
        if schema is not None:
            wanted = [c for c in schema if columns is None or c in columns]
            frame = frame.select(wanted).cast({c: schema[c] for c in wanted})
        return frame

    def version(self, name: str) -> int | None:
        table = self.table(name)
        return None if table is None else table.version()

    def history(self, name: str, limit: int | None = None) -> list[dict]:
        table = self.table(name)
        return [] if table is None else table.history(limit)

    def write(
        self,
        name: str,
        frame: pl.DataFrame | pa.RecordBatchReader,
        *,
        run_id: str | None,
        predicate: str | None = None,
        mode: str = "overwrite",
        commit_metadata: dict[str, str] | None = None,
    ) -> int:
        """Write ``frame`` (a DataFrame, or an Arrow stream written batch by batch in one commit)
        to table ``name`` and return the new table version.

        ``predicate`` given: replace exactly the rows matching it (every row of ``frame`` must
        match it too); a column the table lacks is added (null in the rows kept), so a table
        that keeps every run's rows takes a new column without a rebuild. No predicate and
        ``mode="overwrite"``: replace the whole table, schema included. ``mode="append"``: add rows. Retries optimistic-concurrency conflicts.
        Rows with a ``CLUSTER_COLUMN`` are written in its order (a DataFrame is sorted, stably; a
        stream must come in that order) in files of at most ``CLUSTER_FILE_BYTES``.
        """
        custom = {"run_id": run_id or "", "code_version": code_version()}
        custom.update(commit_metadata or {})
        table = clustered(frame).to_arrow() if isinstance(frame, pl.DataFrame) else frame
        uri = self.uri(name)
        exists = self.exists(name)
        if not exists and "://" not in uri:
            Path(uri).mkdir(parents=True, exist_ok=True)
        kwargs: dict = {
            "mode": mode,
            "commit_properties": CommitProperties(custom_metadata=custom),
        }
        if CLUSTER_COLUMN in table.schema.names:
            kwargs["target_file_size"] = CLUSTER_FILE_BYTES
        if not exists:
            kwargs["configuration"] = TABLE_CONFIGURATION
        elif predicate is not None and mode == "overwrite":
            kwargs["predicate"] = predicate
            kwargs["schema_mode"] = "merge"
        elif mode == "overwrite":
            kwargs["schema_mode"] = "overwrite"
        for attempt in range(COMMIT_RETRIES):
            # through the kept handle (assets.table_handles), which delta-rs moves to the version
            # it commits: neither the write nor the next read opens the table again
            target = (self.table(name) if exists else None) or uri
            try:
                write_deltalake(target, table, **kwargs)
                break
            except CommitFailedError:
                if attempt == COMMIT_RETRIES - 1:
                    raise
                time.sleep(0.2 * (attempt + 1))
        return self.table(name).version()

    def rows_added(self, name: str, since: int, until: int) -> pl.DataFrame | None:
        """The rows table ``name`` gained from version ``since`` to ``until``, read from the data
        files those commits added, when every one of them only added files (an append, or a
        predicate write that matched no row); None when some commit removed or rewrote a file
        (its new rows cannot be told from the rows it rewrote)."""
        if until <= since:
            return pl.DataFrame()
        commits = [c for c in self.history(name, until - since + 1) if since < c.get("version", -1) <= until]
        if len(commits) != until - since:
            return None
        if not all(only_added_files(c) for c in commits):
            return None
        before = set(DeltaTable(self.uri(name), version=since).file_uris())
        latest = self.table(name)
        at_until = latest if latest is not None and latest.version() == until else DeltaTable(self.uri(name), version=until)
        added = [f for f in at_until.file_uris() if f not in before]
        if not added:
            return pl.DataFrame()
        return pl.concat([pl.read_parquet(f) for f in added], how="diagonal_relaxed")

    def scan(self, name: str, schema: dict[str, pl.DataType] | None = None) -> pl.LazyFrame:
        """A lazy scan of the table (filters and column choices are pushed down to the files);
        a missing table scans as empty ``schema``."""
        table = self.table(name)
        if table is None:
            if schema is None:
                raise TableNotFoundError(f"no Delta table at {self.uri(name)}")
            return pl.LazyFrame(schema=schema)
        return pl.scan_delta(table)

    @contextlib.contextmanager
    def writer_lock(self, name: str) -> Iterator[None]:
        """Hold the lake's lock named ``name`` (an exclusive ``flock`` on
        ``<root>/_locks/<name>.lock``) for the body: the read-compute-write of one table group,
        so two runs at once apply their changes one after the other and neither writes a table
        from inputs older than the other's.

        Why a lock as well as Dagster's one-writer run limit: that limit holds only for runs the
        daemon launches; runs started by hand or by tests are not queued. On an object-store
        root there is no shared file system and this is a no-op: there, the instance's
        ``tag_concurrency_limits`` (orchestration/dagster.yaml) is what serialises writers.
        """
        if "://" in self.root:
            yield
            return
        folder = Path(self.root) / "_locks"
        folder.mkdir(parents=True, exist_ok=True)
        with open(folder / f"{name.replace('/', '__')}.lock", "a+") as handle:
            fcntl.flock(handle, fcntl.LOCK_EX)  # released when the file is closed, even by kill -9
            try:
                yield
            finally:
                fcntl.flock(handle, fcntl.LOCK_UN)

    def dataset(self, name: str) -> pa.dataset.Dataset:
        """The table as an Arrow dataset, which DuckDB scans batch by batch (DuckDB's own delta
        extension is downloaded at run time, so it is not used)."""
        table = self.table(name)
        if table is None:
            raise TableNotFoundError(f"no Delta table at {self.uri(name)}")
        return table.to_pyarrow_dataset()


class WarehouseResource(dg.ConfigurableResource):
    """The analysts' DuckDB file, double-buffered: refreshed in place of its previous version and
    swapped in atomically.

    Two files live side by side: the published ``warehouse.duckdb`` and the shadow
    ``.warehouse.shadow.duckdb``, which holds the previous published version. ``publish`` brings
    the shadow up to date (the caller's ``write``, told ``incremental=True``), then swaps:
    ``os.link(published, tmp)``, ``os.replace(shadow, published)``, ``os.replace(tmp, shadow)``.
    Every rename is atomic, so a reader opening ``warehouse.duckdb`` gets a complete file, and a
    reader with the old file open keeps reading it: nobody writes a file a reader may hold.

    Why the shadow can be written: DuckDB takes an exclusive ``fcntl`` lock to open a file
    read-write, which fails while another process has it open, even read-only and even after a
    rename. A reader who opened the warehouse before the last swap holds the shadow's inode, so
    the open fails and the file is left alone. ``fcntl`` locks do not conflict within one
    process, so a connection of this process to the shadow's inode is looked for among the
    process's open files as well. Either way, and when the shadow is missing, unreadable, of an
    unknown format or changed since this pipeline wrote it (a reader that opened the
    warehouse read-write and edited it; each file's inode, size and modification time are
    recorded in ``.warehouse.lock`` when written), the warehouse is built whole under a
    temporary name (``write`` told ``incremental=False``) and swapped in the same way. When a
    reader held the shadow, the previous published file becomes the next shadow (the held file
    leaves the rotation, so a long-lived reader forces one full build, not one per run);
    otherwise the next shadow is a copy of the new file (paid once, to resume incremental
    refreshes at the next run).

    Each file records in ``_warehouse._sources`` (``SOURCES``; a schema of its own, so
    ``SHOW TABLES`` does not list it) the lake version of every table it was built from; the
    caller reads and writes it. Publishers take turns on an exclusive ``flock`` of
    ``.warehouse.lock``. The warehouse is always a local file, whatever the lake's root.
    """

    path: str = f"{DEFAULT_DATA_DIR}/warehouse.duckdb"

    SOURCES: ClassVar[str] = "_warehouse._sources"
    SOURCES_COLUMNS: ClassVar[tuple[tuple[str, str], ...]] = (
        ("table_name", "VARCHAR"),  # the published table
        ("lake_table", "VARCHAR"),  # one lake table it is built from
        ("table_id", "VARCHAR"),  # that Delta table's id (a re-created table gets a new one); null: missing
        ("version", "BIGINT"),  # its Delta version the file holds; -1: the table was missing
    )

    @property
    def shadow_path(self) -> Path:
        target = Path(self.path)
        return target.with_name(f".{target.stem}.shadow{target.suffix}")

    @property
    def lock_path(self) -> Path:
        target = Path(self.path)
        return target.with_name(f".{target.stem}.lock")

    def publish(self, write: Callable[[duckdb.DuckDBPyConnection, bool], dict]) -> dict:
        """Refresh the warehouse through ``write`` and swap it in; what was done.

        ``write(con, incremental)`` fills the open file: with ``incremental`` the file is the
        shadow (its ``SOURCES`` say which lake versions it holds) to be brought up to date,
        otherwise an empty file whose ``SOURCES`` table exists and is empty. It returns a
        report (JSON-able), returned under ``"tables"`` with ``mode`` (``incremental`` or
        ``full``), ``reason`` (why a full build), ``shadow`` (what the shadow is now) and
        ``seconds``.
        """
        target, shadow = Path(self.path), self.shadow_path
        target.parent.mkdir(parents=True, exist_ok=True)
        started = time.perf_counter()
        with self._lock() as registry:
            stamps = self._read_stamps(registry)
            self._remove_leftovers()
            con, reason, held = self._open_shadow(stamps)
            written: list[Path] = []
            if con is not None:
                try:
                    report = write(con, True)
                    con.execute("CHECKPOINT")
                finally:
                    con.close()
                    # the shadow is this pipeline's work even when ``write`` failed (it commits
                    # table by table), so it is stamped and the next run resumes from it
                    stamps[self._inode(shadow)] = self._stamp(shadow)
                    self._write_stamps(registry, stamps)
                kept = self._swap_in(shadow, keep_old=True)
                mode = "incremental"
            else:
                tmp = self._tmp_name()
                try:
                    con = duckdb.connect(str(tmp))
                    try:
                        con.execute(f"CREATE SCHEMA {self.SOURCES.split('.')[0]}")
                        columns = ", ".join(f"{name} {kind}" for name, kind in self.SOURCES_COLUMNS)
                        con.execute(f"CREATE TABLE {self.SOURCES} ({columns})")
                        con.execute(f"COMMENT ON TABLE {self.SOURCES} IS 'Refresh bookkeeping: the lake version of each "
                                    "table this file was built from (not analyst data)'")
                        report = write(con, False)
                        con.execute("CHECKPOINT")
                    finally:
                        con.close()
                    # readers hold the shadow: the old published file becomes the shadow; when
                    # there is no usable one, the shadow is a copy of the new file
                    kept = self._swap_in(tmp, keep_old=held)
                finally:
                    self._remove(tmp)
                mode = "full"
            written.append(target)
            if kept == "copy":
                written.append(shadow)
            live = {self._inode(p) for p in (target, shadow) if p.exists()}
            stamps = {k: v for k, v in stamps.items() if k in live}
            stamps.update({self._inode(p): self._stamp(p) for p in written})
            self._write_stamps(registry, stamps)
        shadow_is = {"old": "the previous published file", "copy": "a copy of the new file (made once)"}[kept]
        return {"mode": mode, "reason": reason, "shadow": shadow_is, "seconds": round(time.perf_counter() - started, 3),
                "tables": report}

    # --- the shadow ----------------------------------------------------------------------

    def _open_shadow(self, stamps: dict[str, dict]) -> tuple[duckdb.DuckDBPyConnection | None, str, bool]:
        """A read-write connection to the shadow when it can be refreshed, else ``None``, why
        not, and whether that is because a reader holds it (then the old published file is
        kept as the next shadow rather than paying for a copy)."""
        target, shadow = Path(self.path), self.shadow_path
        if not target.exists():
            return None, "no published warehouse yet", False
        if not shadow.exists():
            return None, "no shadow file", False
        recorded = stamps.get(self._inode(shadow))
        if recorded is None:
            return None, "the shadow was not written by this pipeline", False
        if recorded != self._stamp(shadow):
            return None, "the shadow changed since this pipeline wrote it (opened read-write?)", False
        if self._open_in_this_process(shadow):
            return None, "a connection of this process still reads the shadow (an earlier version)", True
        try:
            con = duckdb.connect(str(shadow))
        except duckdb.Error as error:
            if "Could not set lock" in str(error):
                return None, "another process still reads the shadow (an earlier version)", True
            return None, f"the shadow does not open: {str(error).splitlines()[0][:200]}", False
        try:
            schema, table = self.SOURCES.split(".")
            found = con.execute(
                "SELECT column_name, data_type FROM information_schema.columns WHERE table_schema = ? AND table_name = ? "
                "ORDER BY ordinal_position", [schema, table]).fetchall()
        except duckdb.Error:
            found = None
        if found is None or tuple(found) != self.SOURCES_COLUMNS:
            con.close()
            return None, f"the shadow has no {self.SOURCES} table of this format", False
        return con, "", False

    @staticmethod
    def _open_in_this_process(path: Path) -> bool:
        """Whether a file descriptor of this process points at ``path``'s inode (``/proc/self/fd``
        on Linux, ``/dev/fd`` on BSD and macOS). Only ``fstat`` is used: opening and closing the
        file here would drop this process's ``fcntl`` locks on it."""
        try:
            st = path.stat()
        except FileNotFoundError:
            return False
        for folder in ("/proc/self/fd", "/dev/fd"):
            try:
                fds = os.listdir(folder)
            except OSError:
                continue
            for fd in fds:
                try:
                    other = os.fstat(int(fd))
                except (OSError, ValueError):
                    continue
                if (other.st_dev, other.st_ino) == (st.st_dev, st.st_ino):
                    return True
            return False
        return False

    def _swap_in(self, new: Path, keep_old: bool) -> str:
        """Move ``new`` to the published name. With ``keep_old`` the previous published file
        becomes the shadow (through a hard link, so ``warehouse.duckdb`` is never missing);
        else, or when there is none or the file system has no hard links, the shadow is a copy
        of ``new``. Returns ``"old"`` or ``"copy"``."""
        target, shadow = Path(self.path), self.shadow_path
        self._remove(shadow.with_name(shadow.name + ".wal"))  # never replayed into another file
        if keep_old:
            previous = self._tmp_name()
            try:
                os.link(target, previous)
            except OSError:
                pass
            else:
                os.replace(new, target)
                os.replace(previous, shadow)
                return "old"
        copy = self._tmp_name()
        try:
            shutil.copyfile(new, copy)
            os.replace(new, target)
            os.replace(copy, shadow)
        finally:
            self._remove(copy)
        return "copy"

    # --- files, stamps and the lock -----------------------------------------------------

    def _tmp_name(self) -> Path:
        target = Path(self.path)
        return target.with_name(f".{target.name}.{os.getpid()}.{uuid.uuid4().hex[:8]}.tmp")

    @staticmethod
    def _remove(path: Path) -> None:
        for leftover in (path, path.with_name(path.name + ".wal")):
            leftover.unlink(missing_ok=True)

    def _remove_leftovers(self) -> None:
        """Temporary files of a publish that was killed (called under the lock, so none is in use)."""
        target = Path(self.path)
        for leftover in target.parent.glob(f".{target.name}.*.tmp*"):
            leftover.unlink(missing_ok=True)

    @staticmethod
    def _inode(path: Path) -> str:
        return str(path.stat().st_ino)

    @staticmethod
    def _stamp(path: Path) -> dict:
        st = path.stat()
        return {"size": st.st_size, "mtime_ns": st.st_mtime_ns}

    @contextlib.contextmanager
    def _lock(self) -> Iterator:
        """An exclusive ``flock`` of the lock file, which also holds the stamps (JSON)."""
        fd = os.open(self.lock_path, os.O_RDWR | os.O_CREAT, 0o644)
        with os.fdopen(fd, "r+") as handle:
            fcntl.flock(handle, fcntl.LOCK_EX)  # released when the file is closed, even by kill -9
            try:
                yield handle
            finally:
                fcntl.flock(handle, fcntl.LOCK_UN)

    @staticmethod
    def _read_stamps(handle) -> dict[str, dict]:
        handle.seek(0)
        try:
            stamps = json.loads(handle.read() or "{}").get("files", {})
        except (json.JSONDecodeError, AttributeError):
            return {}
        return stamps if isinstance(stamps, dict) else {}

    @staticmethod
    def _write_stamps(handle, stamps: dict[str, dict]) -> None:
        handle.seek(0)
        handle.truncate()
        handle.write(json.dumps({"files": stamps}, sort_keys=True))
        handle.flush()
        os.fsync(handle.fileno())


def resources_for(data_dir: str | os.PathLike | None = None) -> dict[str, dg.ConfigurableResource]:
    """The resources for one data folder (``PORTFOLIO_LAKE_ROOT`` may move the lake elsewhere)."""
    base = data_dir_from_env(data_dir)
    lake_root = os.environ.get("PORTFOLIO_LAKE_ROOT") or str(base / "lake")
    return {
        "settings": PipelineSettings(data_dir=str(base)),
        "lake": LakeResource(root=lake_root),
        "warehouse": WarehouseResource(path=str(base / "warehouse.duckdb")),
    }
