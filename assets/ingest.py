"""Bronze: one asset per landing kind, landing files → validated Delta tables.

For each kind the asset looks at ``landing/<kind>/``, skips every file whose content it has
already ingested (same path and sha256 in the ingestion log), validates the others with
``transforms.validation`` and commits, per table, one replace-by-``source_file`` write:

- ``bronze/<kind>``: accepted rows with their lineage (file, sha256, row number);
- ``bronze/quarantine/<kind>``: rejected rows (or whole files) with the reason;
- ``bronze/ingestion_log/<kind>``: one row per file version, written last, so a run that dies
  half-way is simply redone by the next one and gives the same tables.

One writer per table: the nine assets never share a table, so they may run in parallel.
"""


import time
from dataclasses import dataclass, replace
from datetime import datetime, timezone
from pathlib import Path

import dagster as dg
import polars as pl

from assets.metadata import markdown_preview
from assets.resources import LakeResource, PipelineSettings
from transforms import contract
from transforms.changes import CHANGED_KEY, encode_portfolios
from transforms.filters import in_values
from transforms.validation import cross_file_duplicates, sha256_of, validate_file


def bronze_table(kind: str) -> str:
    return f"bronze/{kind}"


def quarantine_table(kind: str) -> str:
    return f"bronze/quarantine/{kind}"


def ingestion_log_table(kind: str) -> str:
    return f"bronze/ingestion_log/{kind}"


@dataclass(frozen=True)
class LandingFile:
    source_file: str  # relative to the landing root, e.g. "trades/2024_01.csv"
    path: Path
    sha256: str
    version: int


def is_landing_candidate(path: Path) -> bool:
    """Not a hidden file or a partial upload (``.tmp``/``.part``): a writer that renames into
    place writes under such a name first, so these are never read half-written."""
    return not (path.name.startswith(".") or path.suffix in (".tmp", ".part"))


def landing_candidates(landing_dir: Path, kind: str) -> list[Path]:
    """The files of ``landing/<kind>/`` (any depth, sorted) that are not hidden or partial
    uploads (``is_landing_candidate``); any suffix is kept, so that validation can quarantine
    an unsupported format instead of it going unnoticed."""
    folder = landing_dir / kind
    if not folder.is_dir():
        return []
    return sorted(p for p in folder.rglob("*") if p.is_file() and is_landing_candidate(p))


def last_logged(log: pl.DataFrame) -> dict[str, tuple[str, int]]:
    """``{source_file: (sha256, version)}`` of each file's last logged version."""
    last = log.sort("version").group_by("source_file").agg(pl.col("source_sha256").last(), pl.col("version").last())
    return {r["source_file"]: (r["source_sha256"], r["version"]) for r in last.iter_rows(named=True)}


# sha256 by path, with the file's identity when it was taken (file_sha256)
_hashes: dict[Path, tuple[tuple[int, int, int, int], str]] = {}
# A file modified this recently is hashed every time: a file system stamps modification times
# at a coarse tick (milliseconds), so a same-size rewrite within one tick keeps its stamp.
HASH_KEPT_AFTER_NS = 2_000_000_000


def file_sha256(path: Path) -> str:
    """The sha256 of the file at ``path``, hashed again only when its size, inode, modification
    or change time differ from when this process last hashed it (or it had been modified less
    than ``HASH_KEPT_AFTER_NS`` before). Every run lists every landing file of its kinds: 0.4 s
    of hashing on the standard book's landing folder, which a run worker (executing run after
    run) now pays once."""
    info = path.stat()
    identity = (info.st_size, info.st_ino, info.st_mtime_ns, info.st_ctime_ns)
    known = _hashes.get(path)
    if known is not None and known[0] == identity:
        return known[1]
    sha = sha256_of(path.read_bytes())
    if time.time_ns() - info.st_mtime_ns > HASH_KEPT_AFTER_NS:
        _hashes[path] = (identity, sha)
    return sha


def pending_files(landing_dir: Path, kind: str, log: pl.DataFrame) -> list[LandingFile]:
    """Landing files of ``kind`` (``landing_candidates``) whose current content is not the last
    one logged."""
    seen = last_logged(log)
    out: list[LandingFile] = []
    for path in landing_candidates(landing_dir, kind):
        source_file = path.relative_to(landing_dir).as_posix()
        sha = file_sha256(path)
        previous = seen.get(source_file)
        if previous and previous[0] == sha:
            continue
        out.append(LandingFile(source_file, path, sha, (previous[1] + 1) if previous else 1))
    return out


def in_predicate(column: str, values: list[str]) -> str:
    """The Delta predicate ``column IN ('v1', ...)``, quotes escaped."""
    quoted = ", ".join("'" + v.replace("'", "''") + "'" for v in values)
    return f"{column} IN ({quoted})"


def ingest_kind(
    kind: str,
    lake: LakeResource,
    landing_dir: Path,
    run_id: str,
    log: dg.DagsterLogManager | None = None,
) -> dict:
    """Ingest every new file version of ``kind``; return the figures for the asset metadata.

    Under the lake's lock of the kind's table: two runs at once (two sensor-launched files)
    ingest one after the other, so the second sees the first's log and never ingests a file
    twice."""
    with lake.writer_lock(bronze_table(kind)):
        return _ingest_kind(kind, lake, landing_dir, run_id, log)


def _ingest_kind(kind: str, lake: LakeResource, landing_dir: Path, run_id: str, log) -> dict:
    started = time.perf_counter()
    now = datetime.now(timezone.utc)
    ingestion_log = lake.read(ingestion_log_table(kind), contract.INGESTION_LOG_SCHEMA)
    files = pending_files(landing_dir, kind, ingestion_log)
    bronze_schema = bronze_schema_of(kind)

    known_ids: dict[str, pl.Series] = {}
    for ref_kind in set(contract.REFERENCES.get(kind, {}).values()):
        id_col = contract.UNIQUE_KEYS[ref_kind][0]
        known_ids[ref_kind] = lake.read(bronze_table(ref_kind), bronze_schema_of(ref_kind), [id_col])[id_col]

    key_cols = list(contract.UNIQUE_KEYS[kind])
    batch_files = [f.source_file for f in files]
    # the keys of the table's other files, as a lazy scan: validation reads only those that
    # could repeat a file's keys (transforms.validation), not the table's millions
    existing_keys = (lake.scan(bronze_table(kind), bronze_schema)
                     .filter(~in_values("source_file", batch_files)).select(key_cols))

    accepted_parts, quarantine_parts, results = [], [], []
    for i, f in enumerate(files):
        content = f.path.read_bytes()
        # The lineage must name the bytes validated, even if the file changed since listing.
        files[i] = f = replace(f, sha256=sha256_of(content))
        result = validate_file(kind, f.source_file, content, known_ids=known_ids, existing_keys=existing_keys)
        results.append(result)
        accepted_parts.append(result.accepted.with_columns(pl.lit(f.sha256).alias("source_sha256")))
        quarantine_parts.append(result.quarantine.with_columns(pl.lit(f.sha256).alias("source_sha256")))
    # Ids repeated across the files of this batch: first file (in name order) wins.
    accepted_all, cross_dupes = cross_file_duplicates(
        kind, pl.concat(accepted_parts) if accepted_parts else pl.DataFrame(schema=bronze_schema)
    )
    quarantine_all = (
        pl.concat([*quarantine_parts, cross_dupes])
        .with_columns(pl.lit(run_id).alias("run_id"), pl.lit(now).cast(contract.TS).alias("quarantined_at"))
        .select(list(contract.QUARANTINE_SCHEMA))
        .cast(contract.QUARANTINE_SCHEMA)
    )
    accepted_per_file = dict(accepted_all.group_by("source_file").len().iter_rows())

    log_rows = []
    for f, result in zip(files, results):
        accepted_n = accepted_per_file.get(f.source_file, 0)
        # A whole-file quarantine keeps every row it could count, so read = accepted + quarantined.
        quarantined_n = result.rows_read if result.file_error else result.rows_read - accepted_n
        log_rows.append(
            {
                "kind": kind,
                "source_file": f.source_file,
                "source_sha256": f.sha256,
                "version": f.version,
                "status": "QUARANTINED" if result.file_error else "INGESTED",
                "rows_read": result.rows_read,
                "rows_accepted": accepted_n,
                "rows_quarantined": quarantined_n,
                "extra_columns": ",".join(result.extra_columns) or None,
                "message": result.file_error
                or (f"ignored extra columns: {', '.join(result.extra_columns)}" if result.extra_columns else None),
                "run_id": run_id,
                "ingested_at": now,
            }
        )
        if log is not None:
            log.info(
                f"{f.source_file} v{f.version}: {result.rows_read} read, {accepted_n} accepted, "
                f"{quarantined_n} quarantined"
                + (f"; whole file quarantined: {result.file_error}" if result.file_error else "")
                + (f"; extra columns ignored: {', '.join(result.extra_columns)}" if result.extra_columns else "")
            )

    hashes = ",".join(f"{f.source_file}@{f.sha256[:12]}" for f in files)
    meta = {"kind": kind, "source_files": hashes[:4000]}
    if files:
        predicate = in_predicate("source_file", batch_files)
        accepted_all = accepted_all.select(list(bronze_schema)).cast(bronze_schema)
        bronze_meta = dict(meta)
        if "portfolio_id" in bronze_schema:
            # the portfolios whose rows this commit replaces (the file's old rows and its new
            # ones): what the state assets after it rebuild (transforms.changes)
            replaced = (
                lake.scan(bronze_table(kind), bronze_schema)
                .filter(pl.col("source_file").is_in(batch_files))
                .select(pl.col("portfolio_id").unique())
                .collect()["portfolio_id"]
            )
            bronze_meta[CHANGED_KEY] = encode_portfolios([*replaced, *accepted_all["portfolio_id"]])
        lake.write(bronze_table(kind), accepted_all, run_id=run_id, predicate=predicate, commit_metadata=bronze_meta)
        lake.write(quarantine_table(kind), quarantine_all, run_id=run_id, predicate=predicate, commit_metadata=meta)
        log_frame = pl.DataFrame(log_rows, schema=contract.INGESTION_LOG_SCHEMA)
        lake.write(ingestion_log_table(kind), log_frame, run_id=run_id, mode="append", commit_metadata=meta)
    else:
        # Create empty tables so that downstream readers see the kind's schema.
        for name, schema in (
            (bronze_table(kind), bronze_schema),
            (quarantine_table(kind), contract.QUARANTINE_SCHEMA),
            (ingestion_log_table(kind), contract.INGESTION_LOG_SCHEMA),
        ):
            if not lake.exists(name):
                lake.write(name, pl.DataFrame(schema=schema), run_id=run_id, commit_metadata=meta)

    new_log = pl.DataFrame(log_rows, schema=contract.INGESTION_LOG_SCHEMA)
    return {
        "files_ingested": len(files),
        "rows_read": int(new_log["rows_read"].sum() or 0),
        "rows_accepted": int(new_log["rows_accepted"].sum() or 0),
        "rows_quarantined": int(new_log["rows_quarantined"].sum() or 0),
        "files_quarantined": int((new_log["status"] == "QUARANTINED").sum()),
        "table_rows": lake.scan(bronze_table(kind), bronze_schema).select(pl.len()).collect().item(),
        "seconds": round(time.perf_counter() - started, 3),
        "log": new_log,
    }


def bronze_schema_of(kind: str) -> dict[str, pl.DataType]:
    return {**contract.LANDING_SCHEMAS[kind], **contract.LINEAGE}


def build_ingest_asset(kind: str) -> dg.AssetsDefinition:
    """The bronze asset of one landing kind (depends on the kinds it must reference)."""
    refs = sorted(set(contract.REFERENCES.get(kind, {}).values()) - {kind})

    @dg.asset(
        name=kind,
        key_prefix=["bronze"],
        group_name="ingest",
        kinds={"polars", "delta"},
        deps=[dg.AssetKey(["bronze", r]) for r in refs],
        description=(
            f"Validated `{kind}` rows from `landing/{kind}/` (CSV or Parquet), with lineage. "
            "Bad rows and unreadable files go to the kind's quarantine table with a reason."
        ),
    )
    def _ingest(context: dg.AssetExecutionContext, lake: LakeResource, settings: PipelineSettings):
        figures = ingest_kind(kind, lake, settings.landing_dir, context.run.run_id, context.log)
        log = figures.pop("log")
        return dg.MaterializeResult(
            metadata={
                **figures,
                "dagster/row_count": figures["table_rows"],
                "files": markdown_preview(log.drop("run_id", "ingested_at"), rows=20),
            }
        )

    return _ingest


INGEST_ASSETS = [build_ingest_asset(kind) for kind in contract.INGEST_ORDER]
