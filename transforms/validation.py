"""Parse and validate one landing file: bytes in, accepted rows and quarantine rows out.

Pure functions: no file system, no Dagster. The caller (``assets.ingest``) reads the bytes,
passes the ids already known in bronze, and writes what comes back.

Pipeline of :func:`validate_file`
---------------------------------
1. **Format** from the ``source_file`` suffix (case-insensitive): ``.csv``, ``.csv.gz`` or
   ``.parquet``. Anything else is quarantined whole.
2. **Parse.**

   - CSV: UTF-8 (a leading BOM is fine), ``,`` delimiter, ``"`` quoting, ``\\n`` or ``\\r\\n``
     line ends, a header row. Every column is read as a *string* (no type inference), so no
     value is ever cast behind our back. Empty fields (``,,`` or ``""``) are null.
   - Parquet: read as stored; every column is converted below like a CSV string would be.
   - Blank lines (zero characters) in a CSV are not records: they are skipped and not counted
     (before the header too), and ``source_row`` numbers the non-blank records (1 = the first
     record after the header).
     A record spanning several lines (quoted newline) is one row.
3. **File checks** (whole file quarantined, one quarantine row, ``stage="file"``,
   ``source_row`` null, ``raw`` = the first 500 characters of the file): empty file (0 bytes),
   not UTF-8 (the byte offset and line are reported), not valid gzip, corrupt or truncated
   parquet, a CSV polars cannot parse (e.g. an unterminated quote), a file holding only white
   space, duplicate contract column names, missing required columns (listed; when the header
   looks ``;``/tab/``|``-separated the reason says so; a header name that differs only by
   case or spaces is pointed out). A header-only file is fine: 0 rows read, nothing quarantined.
   ``rows_read`` of a quarantined file is the number of records that could be parsed (so the
   missing-column case counts its rows), and 0 when the bytes could not be parsed at all.
4. **Shape of each CSV record** (``stage="row"``): a record with fewer fields than the header
   (e.g. a truncated last line) or more fields is quarantined, even when the missing fields are
   optional ones. Polars would fill a short row with nulls and would silently drop the surplus
   fields of a long one (``truncate_ragged_lines``), so the fields of every record are counted
   separately, vectorised with numpy on the bytes (a ``,`` or newline counts only outside
   quotes). If that count cannot be matched to polars' records (a file ending inside a quote,
   a leading blank line), the count is not used: short rows are then caught by the
   required-column checks only, and a file with a long row is quarantined whole (polars
   refuses it). A quote inside an unquoted field (``5" screen``) makes polars refuse the
   file: it is quarantined whole.
5. **Typing** (``stage="row"``): each contract column is cast to its contract dtype with
   ``strict=False``; a non-null raw value that comes out null failed, and the row is
   quarantined with e.g. ``quantity: cannot parse 'abc' as Float64``. Rules:

   - surrounding white space is ignored for numbers, dates and timestamps (never for strings);
   - Float64: anything polars parses as a float (``1``, ``1.5``, ``1e3``); ``nan``/``inf``
     parse but the schema rejects them (must be finite);
   - Int64: an integer literal; ``1.0`` is *not* an integer (no silent truncation);
   - Date: exactly ``YYYY-MM-DD`` (a real calendar day);
   - timestamps: ISO 8601 ``YYYY-MM-DDTHH:MM:SS[.ffffff]`` (``T`` or a space) followed by
     ``Z``, ``±HH:MM`` or ``±HHMM`` (converted to UTC), or by nothing: **a naive timestamp is
     UTC**. A date alone is not a timestamp. Microsecond precision (extra digits truncated).
   - Parquet columns: a string column is parsed as above; a native column is converted only
     when lossless: integers to Float64 (exact below 2**53, else refused), integral floats to
     Int64 (``1.5`` refused), Date or midnight Datetime to Date, naive Datetime (taken as UTC)
     or zoned Datetime to UTC microseconds; ids given as numbers become strings. Booleans,
     lists and structs are refused.
6. **Row rules** (``stage="row"``): the pandera schema of ``transforms.schemas`` validated on
   the data (``lazy=True``: every failure of every row is collected; the failure ``index`` is
   the row position, mapped back to ``source_row``).
7. **Uniqueness** of ``UNIQUE_KEYS[kind]`` (``stage="row"``), among rows that passed 5-6: every
   repeat after the first is quarantined (``duplicate trade_id T1 (first at row 3)``); and a key
   already in ``existing_keys`` (the table's keys from *other* files) is quarantined
   (``... already ingested from another file``). Null key parts compare equal.
8. **References** (``stage="reference"``), among rows that passed 5-7: for each
   ``REFERENCES[kind]`` column, a non-null id not in ``known_ids[<referenced kind>]`` is
   quarantined. A referenced kind missing from ``known_ids`` is not checked.

Quarantine rows
---------------
One row per bad record, at the first stage it fails (row → uniqueness → reference), with all
the reasons of that stage joined by ``"; "`` in column order. ``column`` is the column when all
of the reasons concern one column, null when they concern several or the record as a whole
(the reasons are each prefixed by their column, so nothing is lost). ``raw`` is the record as
read, a JSON object of strings (extra columns included; a CSV record's surplus fields are not
kept by polars). ``run_id`` and ``quarantined_at`` are left null for the caller.

Invariant: ``rows_read == accepted.height + quarantine["source_row"].n_unique()`` for every
file that is not quarantined whole. Nothing is dropped or cast silently.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import zlib
from dataclasses import dataclass

import numpy as np
import polars as pl
from pandera.config import ValidationDepth, config_context
from pandera.errors import SchemaErrors

from transforms import contract
from transforms.filters import in_values
from transforms.schemas import row_rule_columns, schema_for

SUPPORTED_SUFFIXES = (".csv", ".csv.gz", ".parquet")
EXCERPT_CHARS = 500

# Helper column names: prefixed so that they cannot collide with a column of the file.
_ROW = "__pv_source_row"
_SHAPE = "__pv_shape_error"
_ISSUE_SCHEMA = {_ROW: pl.Int64, "column": pl.String, "reason": pl.String, "order": pl.Int64}

# Human names of the contract dtypes, used in reasons.
_TYPE_NAMES = {
    pl.String: "String",
    pl.Float64: "Float64",
    pl.Int64: "Int64",
    pl.Date: "Date (YYYY-MM-DD)",
    contract.TS: "timestamp (ISO 8601)",
}

# Accepted timestamp shapes, tried in turn (``%#z`` takes Z, +HH:MM and +HHMM).
_TS_AWARE_FORMATS = ("%Y-%m-%dT%H:%M:%S%.f%#z", "%Y-%m-%d %H:%M:%S%.f%#z")
_TS_NAIVE_FORMATS = ("%Y-%m-%dT%H:%M:%S%.f", "%Y-%m-%d %H:%M:%S%.f")
_DATE_SHAPE = r"^\d{4}-\d{2}-\d{2}$"
_COMMA, _NEWLINE, _QUOTE, _CARRIAGE = b",\n\"\r"


@dataclass(frozen=True)
class FileValidation:
    """What :func:`validate_file` found in one file.

    - ``accepted``: the good rows, contract columns typed exactly as
      ``LANDING_SCHEMAS[kind]`` followed by the ``LINEAGE`` columns;
    - ``quarantine``: ``QUARANTINE_SCHEMA`` rows, one per bad record (or one for a bad file);
      ``run_id`` and ``quarantined_at`` are null (the caller fills them);
    - ``rows_read``: data records read; ``accepted.height`` + distinct quarantined
      ``source_row`` when the file is not quarantined whole;
    - ``extra_columns``: columns of the file unknown to the contract (dropped, reported);
    - ``file_error``: the reason, when the whole file was quarantined, else None.
    """

    accepted: pl.DataFrame
    quarantine: pl.DataFrame
    rows_read: int
    extra_columns: tuple[str, ...]
    file_error: str | None


class _FileError(Exception):
    """The file as a whole cannot be used: ``reason`` says why; ``rows`` could be counted."""

    def __init__(self, reason: str, rows: int = 0):
        super().__init__(reason)
        self.reason = reason
        self.rows = rows


def sha256_of(content: bytes) -> str:
    """Return the hex SHA-256 of ``content`` (the file identity recorded in lineage)."""
    return hashlib.sha256(content).hexdigest()


# --- parsing -----------------------------------------------------------------------------------


def _format_of(source_file: str) -> str:
    name = source_file.lower()
    for suffix in (".csv.gz", ".csv", ".parquet"):
        if name.endswith(suffix):
            return suffix
    found = name.rsplit("/", 1)[-1]
    found = found[found.find(".") :] if "." in found else "(none)"
    raise _FileError(f"unsupported file format '{found}': expected one of {', '.join(SUPPORTED_SUFFIXES)}")


def _decode_utf8(content: bytes) -> str:
    try:
        return content.decode("utf-8")
    except UnicodeDecodeError as e:
        line = content.count(b"\n", 0, e.start) + 1
        bad = content[e.start : e.end].hex(" ")
        raise _FileError(f"not UTF-8 text: invalid byte(s) {bad} at byte offset {e.start} (line {line})") from None


def _field_counts(content: bytes) -> pl.Series | None:
    """Number of fields of every record after the header (0 for a blank line), vectorised.

    Works on the bytes with numpy: a ``,`` or a newline counts only outside quotes, i.e. where
    the number of ``"`` before it is even (an escaped ``""`` toggles twice, so it is neutral).
    Returns None when the file ends inside a quote: then the count cannot be trusted.
    """
    a = np.frombuffer(content, dtype=np.uint8)
    sep = a == _COMMA
    newline = a == _NEWLINE
    quote = a == _QUOTE
    if quote.any():
        inside = np.bitwise_xor.accumulate(quote.view(np.uint8))  # 1 inside quotes (uint8: no big cumsum)
        if inside[-1]:
            return None
        outside = inside == 0
        sep &= outside
        newline &= outside
    ends = np.flatnonzero(newline)
    if ends.size == 0 or ends[-1] != a.size - 1:
        ends = np.append(ends, a.size)  # the last record has no final newline
    starts = np.concatenate(([0], ends[:-1] + 1))
    # Separators before each record end, differenced: separators per record.
    per_record = np.diff(np.searchsorted(np.flatnonzero(sep), ends), prepend=0)
    length = ends - starts
    carriage = a[np.minimum(starts, a.size - 1)] == _CARRIAGE
    blank = (length == 0) | ((length == 1) & carriage)
    return pl.Series("fields", np.where(blank, 0, per_record + 1)[1:], dtype=pl.Int64)


def _polars_error(e: Exception) -> str:
    """The first line of a polars error (the rest is advice about inference options)."""
    return str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__


def _read_csv(content: bytes) -> tuple[list[str], pl.DataFrame]:
    """Parse CSV bytes: (header names as written, all-string frame with _ROW and _SHAPE)."""
    text = _decode_utf8(content)
    if not text.strip("\ufeff \t\r\n"):
        raise _FileError("no header: the file holds only white space")
    # Blank lines before the header are not part of the table (and would be taken for it).
    content = content.removeprefix(b"\xef\xbb\xbf").lstrip(b"\r\n")
    src = io.BytesIO(content)
    try:
        # The header as written (polars renames duplicate names when it reads a header).
        header = [str(v) if v is not None else "" for v in
                  pl.read_csv(src, has_header=False, n_rows=1, infer_schema=False, truncate_ragged_lines=True).row(0)]
        counts = _field_counts(content)
        n = len(header)
        ragged = counts is not None and bool((counts > n).any())
        src.seek(0)
        df = pl.read_csv(src, infer_schema=False, truncate_ragged_lines=ragged, raise_if_empty=False)
    except _FileError:
        raise
    except Exception as e:  # noqa: BLE001 - any parser failure makes the file unusable
        raise _FileError(f"CSV cannot be parsed: {_polars_error(e)}") from None
    if counts is not None and counts.len() != df.height:
        if ragged:
            raise _FileError(
                "CSV has records with more fields than the header, and its quoting could not be followed"
            )
        counts = None
    if counts is None:
        # Without the field count no record is known to be ragged: nulls catch short rows.
        df = df.with_columns(pl.lit(None, pl.String).alias(_SHAPE))
    else:
        shape = (
            pl.when(counts == 0)
            .then(pl.lit("blank"))
            .when(counts < n)
            .then(pl.format("row has {} field(s), the header has {} (truncated row?)", counts, pl.lit(n)))
            .when(counts > n)
            .then(pl.format("row has {} fields, the header has {}", counts, pl.lit(n)))
        )
        df = df.with_columns(pl.select(shape).to_series().alias(_SHAPE))
        # Blank lines are not records (see module docstring): neither counted nor numbered.
        df = df.filter(pl.col(_SHAPE).ne_missing("blank"))
    df = df.with_row_index(_ROW, offset=1).with_columns(pl.col(_ROW).cast(pl.Int64))
    return header, df


def _read_parquet(content: bytes) -> tuple[list[str], pl.DataFrame]:
    """Parse parquet bytes: (column names, frame as stored with _ROW and a null _SHAPE)."""
    try:
        df = pl.read_parquet(io.BytesIO(content))
    except Exception as e:  # noqa: BLE001 - a corrupt or truncated file is unusable
        raise _FileError(f"corrupt or unreadable parquet: {_polars_error(e)}") from None
    header = list(df.columns)
    df = df.with_columns(pl.lit(None, pl.String).alias(_SHAPE))
    df = df.with_row_index(_ROW, offset=1).with_columns(pl.col(_ROW).cast(pl.Int64))
    return header, df


def _parse(source_file: str, content: bytes) -> tuple[list[str], pl.DataFrame]:
    fmt = _format_of(source_file)
    if len(content) == 0:
        raise _FileError("empty file (0 bytes)")
    if fmt == ".csv.gz":
        try:
            content = gzip.decompress(content)
        except (OSError, EOFError, zlib.error) as e:
            raise _FileError(f"not a valid gzip file: {e}") from None
        if len(content) == 0:
            raise _FileError("empty file (0 bytes once decompressed)")
    if fmt == ".parquet":
        return _read_parquet(content)
    return _read_csv(content)


def _check_header(kind: str, header: list[str], rows: int) -> tuple[str, ...]:
    """Raise _FileError for duplicate or missing contract columns; return the extra columns."""
    schema = contract.LANDING_SCHEMAS[kind]
    dupes = sorted({c for c in header if c in schema and header.count(c) > 1})
    if dupes:
        raise _FileError(f"duplicate column(s): {', '.join(dupes)}", rows)
    optional = set(contract.OPTIONAL_COLUMNS[kind])
    missing = [c for c in schema if c not in optional and c not in header]
    if missing:
        reason = f"missing required column(s): {', '.join(missing)}"
        joined = ",".join(header)
        hint = next((d for d in (";", "\t", "|") if d in joined), None)
        if hint is not None:
            shown = "tab" if hint == "\t" else f"'{hint}'"
            reason += f" (the header looks {shown}-separated; only ',' is supported)"
        else:
            near = {h.strip().lower(): h for h in header}
            renamed = [f"'{near[c]}'" for c in missing if c in near]
            if renamed:
                reason += f" (found {', '.join(renamed)}: names must match exactly)"
        raise _FileError(reason, rows)
    seen: dict[str, None] = {}
    for c in header:
        if c not in schema:
            seen.setdefault(c, None)
    return tuple(seen)


# --- typing ------------------------------------------------------------------------------------


def _parse_string(s: pl.Expr, target: pl.DataType) -> pl.Expr:
    """Parse a string expression into ``target`` (null where it does not parse)."""
    if target == pl.String:
        return s
    s = s.str.strip_chars()
    if target == pl.Float64 or target == pl.Int64:
        return s.cast(target, strict=False)
    if target == pl.Date:
        return pl.when(s.str.contains(_DATE_SHAPE)).then(s.str.to_date("%Y-%m-%d", strict=False))
    if target == contract.TS:
        # The shape (offset or not, "T" or space) picks the one format a value must match.
        aware = s.str.contains(r"(?:Z|[+-]\d{2}:?\d{2})$")
        spaced = s.str.slice(10, 1) == " "
        opts = {"time_unit": "us", "time_zone": "UTC", "strict": False}
        return (
            pl.when(aware & ~spaced).then(s.str.to_datetime(_TS_AWARE_FORMATS[0], **opts))
            .when(aware).then(s.str.to_datetime(_TS_AWARE_FORMATS[1], **opts))
            .when(~spaced).then(s.str.to_datetime(_TS_NAIVE_FORMATS[0], **opts))
            .otherwise(s.str.to_datetime(_TS_NAIVE_FORMATS[1], **opts))
        )
    raise ValueError(f"no parser for {target}")


def _convert(name: str, src: pl.DataType, target: pl.DataType) -> tuple[pl.Expr, pl.Expr, str]:
    """(typed value, "a value was given" mask, verb) for column ``name`` stored as ``src``.

    The value is null wherever the raw value cannot be converted to ``target`` losslessly, so
    a row failed exactly where a value was given and the typed value is null.
    """
    raw = pl.col(name)
    if src == pl.String:
        given = raw.is_not_null() & (raw != "")  # an empty string is null, in parquet too
        return pl.when(given).then(_parse_string(raw, target)), given, "parse"
    given = raw.is_not_null()
    if src == target and target != contract.TS:
        return raw, given, "convert"
    value: pl.Expr = pl.lit(None, target)  # every other pair is refused
    if target == pl.String and (src.is_numeric() or isinstance(src, (pl.Categorical, pl.Enum))):
        value = raw.cast(pl.String)
    elif target == pl.Float64 and src.is_numeric():
        value = raw.cast(pl.Float64, strict=False)
        if src.is_integer():  # 2**53 + 1 has no Float64: refuse rather than round
            value = pl.when(value.cast(src, strict=False) == raw).then(value)
    elif target == pl.Int64 and src.is_numeric():
        value = raw.cast(pl.Int64, strict=False)
        if src.is_float() or src.is_decimal():  # 1.5 must not become 1
            value = pl.when(value.cast(src, strict=False) == raw).then(value)
    elif target == pl.Date and src == pl.Date:
        value = raw
    elif target == pl.Date and isinstance(src, pl.Datetime):
        utc = raw.dt.convert_time_zone("UTC") if src.time_zone else raw
        value = pl.when(utc.dt.time() == pl.time(0)).then(utc.dt.date())
    elif target == contract.TS and isinstance(src, pl.Datetime):
        utc = raw.dt.convert_time_zone("UTC") if src.time_zone else raw.dt.replace_time_zone("UTC")
        value = utc.cast(target)
        if src.time_unit == "ns":  # sub-microsecond digits would be lost
            value = pl.when(utc.dt.nanosecond() % 1000 == 0).then(value)
    return value, given, "convert"


def _type_rows(kind: str, frame: pl.DataFrame) -> tuple[pl.DataFrame, pl.DataFrame]:
    """Cast the contract columns: (typed frame with _ROW/_SHAPE, one issue per failed value)."""
    schema = contract.LANDING_SCHEMAS[kind]
    exprs, typed_cols, issues = [], [], []
    for pos, (name, target) in enumerate(schema.items()):
        tmp = f"__pv_typed_{pos}"
        typed_cols.append(pl.col(tmp).alias(name))
        if name not in frame.columns:  # an optional column absent from the file: null
            exprs.append(pl.lit(None, target).alias(tmp))
            continue
        src = frame.schema[name]
        value, given, verb = _convert(name, src, target)
        exprs.append(value.alias(tmp))
        failed = given & pl.col(tmp).is_null()
        shown = pl.lit("<nested value>") if src.is_nested() else pl.col(name).cast(pl.String, strict=False)
        what = "" if src == pl.String else f"{src} value "
        prep = "as" if verb == "parse" else "to"
        reason = pl.format(f"{name}: cannot {verb} {what}'{{}}' {prep} {_TYPE_NAMES[target]}", shown)
        issues.append((failed, reason, name, pos))
    # One pass computes every typed column; the failure filters then read the result.
    work = frame.with_columns(exprs)
    typed = work.select(*typed_cols, pl.col(_ROW), pl.col(_SHAPE))
    return typed, _concat_issues(
        [
            work.lazy()
            .filter(failed)
            .select(pl.col(_ROW), pl.lit(name).alias("column"), reason.alias("reason"), pl.lit(pos + 1).alias("order"))
            for failed, reason, name, pos in issues
        ]
    )


def _concat_issues(parts: list) -> pl.DataFrame:
    frames = [p if isinstance(p, pl.LazyFrame) else p.lazy() for p in parts]
    if not frames:
        return pl.DataFrame(schema=_ISSUE_SCHEMA)
    return pl.concat([f.cast(_ISSUE_SCHEMA) for f in frames]).collect()


# --- row rules (pandera) -----------------------------------------------------------------------


def _schema_issues(kind: str, typed: pl.DataFrame) -> pl.DataFrame:
    """Validate the typed contract columns with pandera; return one issue per failure case."""
    columns = list(contract.LANDING_SCHEMAS[kind])
    positions = {c: i + 1 for i, c in enumerate(columns)}
    # Validation must run on the data whatever the environment (PANDERA_VALIDATION_* vars).
    with config_context(validation_enabled=True, validation_depth=ValidationDepth.SCHEMA_AND_DATA):
        try:
            schema_for(kind).validate(typed.select(columns), lazy=True)
            return pl.DataFrame(schema=_ISSUE_SCHEMA)
        except SchemaErrors as e:
            cases = e.failure_cases
    if cases["index"].null_count():
        # Not a row failure (dtype, missing column, a check that crashed): a bug, not data.
        raise RuntimeError(f"pandera reported a failure without a row: {cases.filter(pl.col('index').is_null())}")
    rule_columns = row_rule_columns(kind)
    frame_level = pl.col("schema_context") == "DataFrameSchema"
    # For a frame-level rule pandera's "column" is the schema name: report the rule's column.
    column = (
        pl.when(frame_level)
        .then(pl.col("check").replace_strict(rule_columns, default=None, return_dtype=pl.String))
        .otherwise(pl.col("column"))
    )
    got = pl.col("failure_case").fill_null("null")
    reason = (
        pl.when(frame_level)
        .then(pl.format("{}: {}", column, pl.col("check")))
        .when((pl.col("check") == "not_nullable") & pl.col("failure_case").is_null())
        .then(pl.format("{}: missing required value", column))
        .when(pl.col("check") == "not_nullable")  # pandera counts NaN as null
        .then(pl.format("{}: must be a finite number (got '{}')", column, got))
        .otherwise(pl.format("{}: {} (got '{}')", column, pl.col("check"), got))
    )
    rows = typed[_ROW].gather(cases["index"].cast(pl.Int64))
    return cases.select(
        rows.alias(_ROW),
        column.alias("column"),
        reason.alias("reason"),
        column.replace_strict(positions, default=len(columns) + 1).cast(pl.Int64).alias("order"),
    )


def _row_issues(kind: str, typed: pl.DataFrame, cast_issues: pl.DataFrame) -> pl.DataFrame:
    """All row-stage issues: shape, casts, pandera rules (minus echoes of cast failures)."""
    shape = typed.lazy().filter(pl.col(_SHAPE).is_not_null()).select(
        pl.col(_ROW), pl.lit(None, pl.String).alias("column"), pl.col(_SHAPE).alias("reason"), pl.lit(0).alias("order")
    )
    schema_issues = _schema_issues(kind, typed)
    # A value that failed to parse is null in the typed frame; "missing required value" for
    # it would only repeat the parse failure.
    schema_issues = schema_issues.join(cast_issues.select(_ROW, "column"), on=[_ROW, "column"], how="anti")
    return _concat_issues([shape, cast_issues, schema_issues])


# --- uniqueness and references -----------------------------------------------------------------


def _key_text(keys: list[str]) -> tuple[str, pl.Expr]:
    """(label of the key, the key's values as text) for reasons."""
    shown = [pl.col(k).cast(pl.String).fill_null("null") for k in keys]
    if len(keys) == 1:
        return keys[0], shown[0]
    return f"({', '.join(keys)})", pl.format("(" + ", ".join(["{}"] * len(keys)) + ")", *shown)


def _unique_issues(kind: str, rows: pl.DataFrame,
                   existing_keys: pl.DataFrame | pl.LazyFrame | None) -> pl.DataFrame:
    """Duplicates of the unique key within ``rows`` (after the first) and against existing keys
    (a frame, or a lazy scan of the table: only the rows each of whose key parts the file
    holds are read)."""
    keys = list(contract.UNIQUE_KEYS[kind])
    label, value = _key_text(keys)
    column = pl.lit(keys[0] if len(keys) == 1 else None, pl.String)
    first = pl.col(_ROW).min().over(keys)  # rows are in file order, so min = first occurrence
    within = (
        rows.lazy()
        .select(keys + [_ROW])
        .with_columns(first.alias("__pv_first"))
        .filter(pl.col(_ROW) != pl.col("__pv_first"))
        .select(
            pl.col(_ROW),
            column.alias("column"),
            pl.format(f"duplicate {label} {{}} (first at row {{}})", value, pl.col("__pv_first")).alias("reason"),
            pl.lit(1).alias("order"),
        )
    )
    parts = [within]
    if existing_keys is not None and rows.height:
        dtypes = contract.LANDING_SCHEMAS[kind]
        # only the existing keys each of whose parts the file holds can match: as list literals
        # the filters reach a lazy scan's file statistics, which skip the files whose key ranges
        # hold none of them (a new file's trade ids, or a new day's prices, usually come after
        # every stored one), so the table's millions of keys are not read
        could_match = [in_values(k, rows[k].cast(dtypes[k]).to_list(), dtypes[k]) for k in keys]
        known = (existing_keys.lazy().filter(*could_match)
                 .select([pl.col(k).cast(dtypes[k]) for k in keys]).collect())
        parts.append(
            rows.lazy()
            .select(keys + [_ROW])
            .join(known.lazy(), on=keys, how="semi", nulls_equal=True)
            .select(
                pl.col(_ROW),
                column.alias("column"),
                pl.format(f"duplicate {label} {{}} (already ingested from another file)", value).alias("reason"),
                pl.lit(0).alias("order"),
            )
        )
    return _concat_issues(parts)


def cross_file_duplicates(kind: str, accepted: pl.DataFrame) -> tuple[pl.DataFrame, pl.DataFrame]:
    """Split a batch of accepted rows from several files into (kept, quarantine rows).

    ``accepted`` is the concatenation, in ingestion order, of the ``accepted`` frames of
    :func:`validate_file` for the files of one batch (each already unique within itself and
    against the table's other files). A key that appears in more than one file of the batch
    is kept at its first occurrence in that order; every later occurrence becomes a
    quarantine row (``QUARANTINE_SCHEMA``, stage ``row``) with reason ``duplicate trade_id T1
    (first in trades/a.csv row 3)`` and the row's values as JSON in ``raw``.

    One pass over the batch instead of checking each file against all the files before it,
    which grows quadratically with the number of files in a batch.
    """
    keys = list(contract.UNIQUE_KEYS[kind])
    label, value = _key_text(keys)
    indexed = accepted.with_row_index("__pv_pos")
    # Null key parts compare equal, as in the within-file check (window groups treat nulls alike).
    marked = indexed.with_columns(pl.col("__pv_pos").min().over(keys).alias("__pv_first"))
    dupes = marked.filter(pl.col("__pv_pos") != pl.col("__pv_first"))
    if dupes.height == 0:
        return accepted, pl.DataFrame(schema=contract.QUARANTINE_SCHEMA)
    firsts = indexed.select(
        pl.col("__pv_pos").alias("__pv_first"),
        pl.col("source_file").alias("__pv_first_file"),
        pl.col("source_row").alias("__pv_first_row"),
    )
    dupes = dupes.join(firsts, on="__pv_first", how="left")
    data_columns = [c for c in contract.LANDING_SCHEMAS[kind] if c in accepted.columns]
    quarantine = dupes.select(
        pl.lit(kind).alias("kind"),
        pl.col("source_file"),
        pl.col("source_sha256"),
        pl.col("source_row").cast(pl.Int64),
        pl.lit(keys[0] if len(keys) == 1 else None, pl.String).alias("column"),
        pl.format(f"duplicate {label} {{}} (first in {{}} row {{}})", value, pl.col("__pv_first_file"), pl.col("__pv_first_row")).alias("reason"),
        _raw_json(dupes, data_columns).alias("raw"),
        pl.lit("row").alias("stage"),
        pl.lit(None, pl.String).alias("run_id"),
        pl.lit(None, contract.TS).alias("quarantined_at"),
    ).cast(contract.QUARANTINE_SCHEMA)
    kept = marked.filter(pl.col("__pv_pos") == pl.col("__pv_first")).drop("__pv_pos", "__pv_first")
    return kept, quarantine


def _reference_issues(kind: str, rows: pl.DataFrame, known_ids: dict[str, pl.Series] | None) -> pl.DataFrame:
    """Non-null ids of ``REFERENCES[kind]`` columns that are not in ``known_ids``."""
    parts = []
    columns = list(contract.LANDING_SCHEMAS[kind])
    for column, ref_kind in contract.REFERENCES.get(kind, {}).items():
        if known_ids is None or ref_kind not in known_ids:
            continue  # the caller has no list of this kind: nothing to check against
        known = known_ids[ref_kind].cast(pl.String).drop_nulls().unique()
        parts.append(
            rows.lazy()
            .filter(pl.col(column).is_not_null() & ~pl.col(column).is_in(known.implode()))
            .select(
                pl.col(_ROW),
                pl.lit(column).alias("column"),
                pl.format(f"{column}: '{{}}' is not a known {ref_kind.removesuffix('s')}", pl.col(column)).alias(
                    "reason"
                ),
                pl.lit(columns.index(column) + 1).alias("order"),
            )
        )
    return _concat_issues(parts)


# --- assembling the result ---------------------------------------------------------------------


def _summarise(issues: pl.DataFrame, stage: str) -> pl.DataFrame:
    """One row per record: reasons joined in column order, the column if only one is named."""
    return (
        issues.sort([_ROW, "order"], maintain_order=True)
        .group_by(_ROW, maintain_order=True)
        .agg(
            # unique: e.g. a NaN is reported by pandera as null and by the finite check.
            pl.col("reason").unique(maintain_order=True).str.join("; ").alias("reason"),
            pl.when(pl.col("column").null_count() == 0, pl.col("column").n_unique() == 1)
            .then(pl.col("column").first())
            .alias("column"),
        )
        .with_columns(pl.lit(stage).alias("stage"))
    )


def _raw_json(frame: pl.DataFrame, original: list[str]) -> pl.Expr:
    """The record as read, a JSON object (strings for CSV; native values rendered as text)."""
    fields = []
    for name in original:
        dtype = frame.schema[name]
        fields.append(pl.col(name) if dtype.is_nested() else pl.col(name).cast(pl.String, strict=False))
    return pl.struct(fields).struct.json_encode() if fields else pl.lit("{}")


def _raw_rows(frame: pl.DataFrame, original: list[str], rows: pl.Series) -> pl.DataFrame:
    """(_ROW, raw) of the given rows only: JSON-encoding every accepted row would be waste."""
    bad = frame.filter(pl.col(_ROW).is_in(rows.implode()))
    return bad.select(_ROW, _raw_json(bad, original).alias("raw"))


def _file_result(kind: str, source_file: str, sha: str, content: bytes, error: _FileError, extras=()) -> FileValidation:
    excerpt = content[:EXCERPT_CHARS * 4].decode("utf-8", errors="backslashreplace")[:EXCERPT_CHARS]
    quarantine = pl.DataFrame(
        [{"kind": kind, "source_file": source_file, "source_sha256": sha, "source_row": None, "column": None,
          "reason": error.reason, "raw": excerpt, "stage": "file", "run_id": None, "quarantined_at": None}],
        schema=contract.QUARANTINE_SCHEMA,
    )
    return FileValidation(
        accepted=contract.landing_frame(kind, with_lineage=True),
        quarantine=quarantine,
        rows_read=error.rows,
        extra_columns=tuple(extras),
        file_error=error.reason,
    )


def validate_file(
    kind: str,
    source_file: str,
    content: bytes,
    *,
    known_ids: dict[str, pl.Series] | None = None,
    existing_keys: pl.DataFrame | pl.LazyFrame | None = None,
) -> FileValidation:
    """Parse and validate one landing file of ``kind``.

    Inputs: ``kind`` (a key of ``contract.LANDING_SCHEMAS``), ``source_file`` (its path
    relative to the landing root: recorded in lineage, and its suffix gives the format),
    ``content`` (the file's bytes), ``known_ids`` (referenced kind -> Series of its known ids;
    a kind absent is not checked) and ``existing_keys`` (the ``UNIQUE_KEYS[kind]`` columns
    already in the table from other files; of a lazy scan of them only the rows each of whose
    key parts the file holds are read).

    Output: a :class:`FileValidation`. Every record read is either accepted or quarantined
    (one quarantine row per record, at its first failing stage: row, then uniqueness, then
    reference), or the whole file is quarantined (``file_error``). See the module docstring
    for each rule. Raises ``KeyError`` for an unknown kind (a caller bug, not bad data).
    """
    schema = contract.LANDING_SCHEMAS[kind]
    sha = sha256_of(content)
    try:
        header, frame = _parse(source_file, content)
        extras = _check_header(kind, header, frame.height)
    except _FileError as e:
        return _file_result(kind, source_file, sha, content, e)
    original = [c for c in frame.columns if c not in (_ROW, _SHAPE)]

    typed, cast_issues = _type_rows(kind, frame)
    row_issues = _row_issues(kind, typed, cast_issues)
    remaining = typed.join(row_issues.select(_ROW).unique(), on=_ROW, how="anti", maintain_order="left")
    unique_issues = _unique_issues(kind, remaining, existing_keys)
    remaining = remaining.join(unique_issues.select(_ROW).unique(), on=_ROW, how="anti", maintain_order="left")
    ref_issues = _reference_issues(kind, remaining, known_ids)
    remaining = remaining.join(ref_issues.select(_ROW).unique(), on=_ROW, how="anti", maintain_order="left")

    accepted = remaining.select(
        *[pl.col(c) for c in schema],
        pl.lit(source_file, pl.String).alias("source_file"),
        pl.lit(sha, pl.String).alias("source_sha256"),
        pl.col(_ROW).alias("source_row"),
    )
    summary = pl.concat(
        [
            _summarise(row_issues, "row"),
            _summarise(unique_issues, "row"),
            _summarise(ref_issues, "reference"),
        ]
    )
    quarantine = (
        summary.join(_raw_rows(frame, original, summary[_ROW]), on=_ROW, how="left")
        .sort(_ROW)
        .select(
            pl.lit(kind, pl.String).alias("kind"),
            pl.lit(source_file, pl.String).alias("source_file"),
            pl.lit(sha, pl.String).alias("source_sha256"),
            pl.col(_ROW).alias("source_row"),
            pl.col("column"),
            pl.col("reason"),
            pl.col("raw"),
            pl.col("stage"),
            pl.lit(None, pl.String).alias("run_id"),
            pl.lit(None, contract.TS).alias("quarantined_at"),
        )
        .cast(contract.QUARANTINE_SCHEMA)
    )
    return FileValidation(
        accepted=accepted.cast({**schema, **contract.LINEAGE}),
        quarantine=quarantine,
        rows_read=frame.height,
        extra_columns=extras,
        file_error=None,
    )
