"""Resources the assets read and write through: the Delta lake, the settings, the warehouse.

Everything about *where* data lives is here, so assets stay thin and transforms stay pure.
The lake root may be a local folder or any ``deltalake`` URI (``s3://…``, ``az://…``); cloud
credentials come from the environment as delta-rs reads them.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import subprocess
import time
import uuid
from collections.abc import Callable, Iterator
from functools import cache
from importlib import metadata
from pathlib import Path

import dagster as dg
import duckdb
import polars as pl
import pyarrow as pa
import pyarrow.dataset  # noqa: F401  (pa.dataset)
from deltalake import CommitProperties, DeltaTable, write_deltalake
from deltalake.exceptions import CommitFailedError, TableNotFoundError

from transforms.shards import SHARD_WORKERS

DEFAULT_DATA_DIR = "data"

# Point-in-time reconstruction reads old versions, so history must outlive the delta-rs
# defaults (30 days of log, 7 days of removed files).
TABLE_CONFIGURATION = {
    "delta.logRetentionDuration": "interval 3650 days",
    "delta.deletedFileRetentionDuration": "interval 3650 days",
}
COMMIT_RETRIES = 5


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
        return DeltaTable.is_deltatable(self.uri(name))

    def read(
        self,
        name: str,
        schema: dict[str, pl.DataType] | None = None,
        columns: list[str] | None = None,
        version: int | None = None,
    ) -> pl.DataFrame:
        """Read a table (or one ``version`` of it); a missing table reads as empty ``schema``."""
        if not self.exists(name):
            if schema is None:
                raise TableNotFoundError(f"no Delta table at {self.uri(name)}")
            frame = pl.DataFrame(schema=schema)
            return frame.select(columns) if columns else frame
        frame = pl.read_delta(self.uri(name), version=version, columns=columns)
        if schema is not None:
            wanted = [c for c in schema if columns is None or c in columns]
            frame = frame.select(wanted).cast({c: schema[c] for c in wanted})
        return frame

    def version(self, name: str) -> int | None:
        return DeltaTable(self.uri(name)).version() if self.exists(name) else None

    def history(self, name: str, limit: int | None = None) -> list[dict]:
        return DeltaTable(self.uri(name)).history(limit) if self.exists(name) else []

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
        """
        custom = {"run_id": run_id or "", "code_version": code_version()}
        custom.update(commit_metadata or {})
        table = frame.to_arrow() if isinstance(frame, pl.DataFrame) else frame
        uri = self.uri(name)
        exists = self.exists(name)
        if not exists and "://" not in uri:
            Path(uri).mkdir(parents=True, exist_ok=True)
        kwargs: dict = {
            "mode": mode,
            "commit_properties": CommitProperties(custom_metadata=custom),
        }
        if not exists:
            kwargs["configuration"] = TABLE_CONFIGURATION
        elif predicate is not None and mode == "overwrite":
            kwargs["predicate"] = predicate
            kwargs["schema_mode"] = "merge"
        elif mode == "overwrite":
            kwargs["schema_mode"] = "overwrite"
        for attempt in range(COMMIT_RETRIES):
            try:
                write_deltalake(uri, table, **kwargs)
                break
            except CommitFailedError:
                if attempt == COMMIT_RETRIES - 1:
                    raise
                time.sleep(0.2 * (attempt + 1))
        return DeltaTable(uri).version()

    def scan(self, name: str, schema: dict[str, pl.DataType] | None = None) -> pl.LazyFrame:
        """A lazy scan of the table (filters and column choices are pushed down to the files);
        a missing table scans as empty ``schema``."""
        if not self.exists(name):
            if schema is None:
                raise TableNotFoundError(f"no Delta table at {self.uri(name)}")
            return pl.LazyFrame(schema=schema)
        return pl.scan_delta(self.uri(name))

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
        return DeltaTable(self.uri(name)).to_pyarrow_dataset()


class WarehouseResource(dg.ConfigurableResource):
    """The analysts' DuckDB file, rebuilt whole and swapped in atomically.

    DuckDB allows one writer and a reader blocks a writer, so the new file is built under a
    temporary name beside the old one, checkpointed, closed and moved over it with
    ``os.replace``: a reader sees the old file or the new one, never half of either.
    """

    path: str = f"{DEFAULT_DATA_DIR}/warehouse.duckdb"

    def publish(
        self,
        tables: dict[str, Callable[[], object]],
        statements: list[str] = (),
        order_by: dict[str, str] | None = None,
    ) -> dict[str, int]:
        """Write ``tables`` and run ``statements`` (views, macros) into a new warehouse file,
        then swap it in. Returns the row count of each table.

        ``tables`` maps a name to a loader of anything DuckDB can scan (a Polars frame, an
        Arrow table or dataset); each is loaded, written and released in turn, so memory
        holds one table at a time. ``order_by`` names the column a table is sorted by.
        """
        target = Path(self.path)
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp = target.with_name(f".{target.name}.{os.getpid()}.{uuid.uuid4().hex[:8]}.tmp")
        counts: dict[str, int] = {}
        try:
            con = duckdb.connect(str(tmp))
            try:
                for name, load in tables.items():
                    table = load()
                    con.register("_incoming", table)
                    order = f' ORDER BY "{order_by[name]}"' if order_by and name in order_by else ""
                    con.execute(f'CREATE TABLE "{name}" AS SELECT * FROM _incoming{order}')
                    con.unregister("_incoming")
                    counts[name] = con.execute(f'SELECT count(*) FROM "{name}"').fetchall()[0][0]
                    del table
                for statement in statements:
                    con.execute(statement)
                con.execute("CHECKPOINT")
            finally:
                con.close()
            os.replace(tmp, target)
        finally:
            for leftover in (tmp, tmp.with_name(tmp.name + ".wal")):
                leftover.unlink(missing_ok=True)
        return counts


def resources_for(data_dir: str | os.PathLike | None = None) -> dict[str, dg.ConfigurableResource]:
    """The resources for one data folder (``PORTFOLIO_LAKE_ROOT`` may move the lake elsewhere)."""
    base = data_dir_from_env(data_dir)
    lake_root = os.environ.get("PORTFOLIO_LAKE_ROOT") or str(base / "lake")
    return {
        "settings": PipelineSettings(data_dir=str(base)),
        "lake": LakeResource(root=lake_root),
        "warehouse": WarehouseResource(path=str(base / "warehouse.duckdb")),
    }
