"""Tests of transforms.validation / transforms.schemas: one test per kind of bad input.

Every call goes through ``run``, which asserts the invariants of a result: exact schemas,
``rows_read == accepted + distinct quarantined rows`` (or one file row for a whole-file
quarantine), and every record number accounted for exactly once.
"""

from __future__ import annotations

import gzip
import io
import json
from datetime import date, datetime, timezone

import polars as pl
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from transforms import contract
from transforms.schemas import SCHEMAS
from transforms.validation import FileValidation, sha256_of, validate_file

UTC = timezone.utc

# One good row per kind (strings as they would appear in a CSV; "" is an empty field).
GOOD: dict[str, list[dict[str, str]]] = {
    "instruments": [
        dict(instrument_id="AAPL", name="Apple, Inc.", asset_class="EQUITY", sector="Tech", country="US",
             currency="USD", lot_size="1"),
        dict(instrument_id="BUND", name="Bund 2030", asset_class="FIXED_INCOME", sector="Govt", country="DE",
             currency="EUR", lot_size="100"),
    ],
    "portfolios": [
        dict(portfolio_id="P1", portfolio_name="Growth", status="ACTIVE", base_currency="USD", benchmark_id="B1",
             tax_status="TAXABLE", lot_method="FIFO", inception_date="2020-01-01"),
        dict(portfolio_id="P2", portfolio_name="Income", status="CLOSED", base_currency="EUR", benchmark_id="",
             tax_status="EXEMPT", lot_method="HIFO", inception_date="2021-06-30"),
    ],
    "prices": [
        dict(instrument_id="AAPL", date="2024-01-02", close="185.5", volume="1000"),
        dict(instrument_id="AAPL", date="2024-01-03", close="186", volume=""),
    ],
    "fx_rates": [
        dict(date="2024-01-02", currency="EUR", usd_per_unit="1.1"),
        dict(date="2024-01-02", currency="USD", usd_per_unit="1"),
    ],
    "trades": [
        dict(trade_id="T1", portfolio_id="P1", instrument_id="AAPL", trade_ts="2024-01-02T10:00:00Z",
             settle_date="2024-01-04", side="BUY", quantity="10", price="185.5", fees="1.0", strategy_id="S1",
             lot_id=""),
        dict(trade_id="T2", portfolio_id="P1", instrument_id="AAPL", trade_ts="2024-01-03T15:30:00.250+02:00",
             settle_date="2024-01-03", side="SELL", quantity="4", price="190", fees="", strategy_id="",
             lot_id="T1"),
    ],
    "cash_flows": [
        dict(flow_id="F1", portfolio_id="P1", ts="2024-01-01T00:00:00Z", type="DEPOSIT", amount="10000",
             currency="USD", instrument_id=""),
        dict(flow_id="F2", portfolio_id="P1", ts="2024-02-01 09:00:00", type="DIVIDEND", amount="12.5",
             currency="USD", instrument_id="AAPL"),
    ],
    "targets": [
        dict(portfolio_id="P1", strategy_id="S1", instrument_id="AAPL", target_weight="0.6",
             effective_date="2024-01-01"),
        dict(portfolio_id="P1", strategy_id="", instrument_id="BUND", target_weight="-0.2",
             effective_date="2024-01-01"),
    ],
    "benchmarks": [
        dict(benchmark_id="B1", instrument_id="AAPL", weight="0.7", effective_date="2024-01-01"),
        dict(benchmark_id="B1", instrument_id="BUND", weight="0.3", effective_date="2024-01-01"),
    ],
    "signals": [
        dict(signal_id="G1", source="momentum", ts="2024-01-02T08:00:00Z", instrument_id="AAPL", portfolio_id="P1",
             strategy_id="S1", score="1.7", confidence="0.9", horizon="1M", priority="1"),
        dict(signal_id="G2", source="value", ts="2024-01-02T08:00:00Z", instrument_id="BUND", portfolio_id="",
             strategy_id="", score="-0.3", confidence="", horizon="", priority=""),
    ],
}
KNOWN = {"instruments": pl.Series(["AAPL", "BUND"]), "portfolios": pl.Series(["P1", "P2"])}
LANDED = {**contract.LINEAGE}


def run(kind: str, content: bytes, name: str | None = None, **kw) -> FileValidation:
    """validate_file plus the invariants every result must satisfy."""
    name = name or f"{kind}/f.csv"
    r = validate_file(kind, name, content, **kw)
    assert dict(r.accepted.schema) == {**contract.LANDING_SCHEMAS[kind], **contract.LINEAGE}
    assert dict(r.quarantine.schema) == contract.QUARANTINE_SCHEMA
    q = r.quarantine
    assert (q["kind"] == kind).all() and (q["source_file"] == name).all()
    assert (q["source_sha256"] == sha256_of(content)).all()
    if r.file_error is not None:
        assert r.accepted.height == 0
        assert q.height == 1 and q["source_row"][0] is None and q["stage"][0] == "file"
        assert q["reason"][0] == r.file_error
    else:
        rows = q["source_row"]
        assert rows.null_count() == 0 and rows.is_unique().all(), "one quarantine row per record"
        assert r.rows_read == r.accepted.height + rows.n_unique()
        seen = sorted(r.accepted["source_row"].to_list() + rows.to_list())
        assert seen == list(range(1, r.rows_read + 1)), "every record accounted for once"
        assert set(q["stage"]) <= {"row", "reference"}
        assert (r.accepted["source_file"] == name).all()
    return r


def csv_bytes(rows: list[dict[str, str]], columns: list[str] | None = None, sep: str = ",") -> bytes:
    """A CSV with the given columns (default: the first row's keys); values quoted when needed."""
    columns = columns or list(rows[0])

    def cell(v: str) -> str:
        return f'"{v.replace(chr(34), chr(34) * 2)}"' if any(c in v for c in f'{sep}"\n') else v

    lines = [sep.join(columns)] + [sep.join(cell(r.get(c, "")) for c in columns) for r in rows]
    return ("\n".join(lines) + "\n").encode()


def good_csv(kind: str, **changes: str) -> bytes:
    """The good rows of ``kind`` with ``changes`` applied to the last one."""
    rows = [dict(r) for r in GOOD[kind]]
    rows[-1].update(changes)
    return csv_bytes(rows)


def one_reason(r: FileValidation) -> tuple[int, str | None, str, str]:
    """(source_row, column, reason, stage) of the single quarantined row."""
    assert r.quarantine.height == 1, r.quarantine
    q = r.quarantine.row(0, named=True)
    return q["source_row"], q["column"], q["reason"], q["stage"]


# --- whole files -------------------------------------------------------------------------------


def test_empty_file_is_quarantined_whole():
    r = run("trades", b"")
    assert r.file_error == "empty file (0 bytes)" and r.rows_read == 0


def test_header_only_is_an_empty_good_file():
    r = run("trades", ",".join(contract.LANDING_SCHEMAS["trades"]).encode() + b"\n")
    assert r.file_error is None and r.rows_read == 0 and r.quarantine.height == 0


def test_non_utf8_bytes_quarantine_the_file():
    name = "Soci\u00e9t\u00e9"
    content = good_csv("instruments", name=name).replace(name.encode(), name.encode("latin-1"))  # a latin-1 file
    r = run("instruments", content)
    assert r.file_error.startswith("not UTF-8 text: invalid byte(s) e9") and "(line 3)" in r.file_error


def test_semicolon_delimiter_reports_missing_columns_and_hints():
    r = run("prices", csv_bytes(GOOD["prices"], sep=";"))
    assert "missing required column(s): instrument_id, date, close" in r.file_error
    assert "';'-separated" in r.file_error
    assert r.rows_read == 2  # the records could be counted


def test_missing_required_column_is_listed():
    columns = [c for c in contract.LANDING_SCHEMAS["trades"] if c != "side"]
    r = run("trades", csv_bytes(GOOD["trades"], columns))
    assert r.file_error == "missing required column(s): side"


def test_missing_optional_column_is_null():
    columns = [c for c in contract.LANDING_SCHEMAS["trades"] if c not in ("fees", "lot_id")]
    r = run("trades", csv_bytes(GOOD["trades"], columns), known_ids=KNOWN)
    assert r.accepted.height == 2 and r.accepted["fees"].null_count() == 2


def test_duplicate_contract_column_quarantines_the_file():
    content = good_csv("prices").replace(b"close,volume", b"close,close", 1)
    assert run("prices", content).file_error == "duplicate column(s): close"


def test_extra_column_is_dropped_and_reported_but_kept_in_raw():
    rows = [dict(r, note="hello", desk="eq") for r in GOOD["prices"]]
    rows[1]["close"] = "-1"
    r = run("prices", csv_bytes(rows))
    assert r.extra_columns == ("note", "desk")
    assert "note" not in r.accepted.columns and r.accepted.height == 1
    assert json.loads(r.quarantine["raw"][0])["note"] == "hello"


def test_truncated_last_line_quarantines_only_that_row():
    content = good_csv("trades").rstrip(b"\n")
    content = content[: content.rindex(b",190,")]  # cut mid-record, no final newline
    r = run("trades", content, known_ids=KNOWN)
    assert r.accepted["trade_id"].to_list() == ["T1"]
    row, column, reason, stage = one_reason(r)
    assert (row, column, stage) == (2, None, "row")
    assert reason.startswith("row has 7 field(s), the header has 11 (truncated row?)")


def test_truncated_row_missing_only_optional_fields_is_still_quarantined():
    content = good_csv("trades").rstrip(b"\n")
    content = content[: content.rindex(b",,T1")]  # strategy_id and lot_id fields are gone
    r = run("trades", content)
    assert one_reason(r)[2] == "row has 9 field(s), the header has 11 (truncated row?)"


def test_row_with_too_many_fields_is_quarantined_not_truncated():
    content = good_csv("prices").replace(b"186,\n", b"186,,surplus\n")
    r = run("prices", content)
    assert r.accepted.height == 1 and one_reason(r)[2] == "row has 5 fields, the header has 4"


def test_quoted_separators_and_newlines_are_one_field():
    rows = [dict(GOOD["instruments"][0], name='Apple, "the"\nfruit company')]
    r = run("instruments", csv_bytes(rows))
    assert r.accepted["name"].to_list() == ['Apple, "the"\nfruit company']


def test_blank_lines_are_not_records():
    content = b"\r\n" + good_csv("prices").replace(b"\n", b"\n\n", 1) + b"\n"
    r = run("prices", content)
    assert r.rows_read == 2 and r.accepted.height == 2
    assert r.accepted["source_row"].to_list() == [1, 2]


def test_unterminated_quote_quarantines_the_file():
    content = good_csv("prices").replace(b"185.5", b'"185.5')
    assert run("prices", content).file_error.startswith("CSV cannot be parsed")


def test_corrupt_parquet_is_quarantined_whole():
    content = parquet_bytes("prices")
    r = run("prices", content[: len(content) // 2], name="prices/p.parquet")
    assert r.file_error.startswith("corrupt or unreadable parquet") and r.rows_read == 0


def test_unsupported_suffix_is_quarantined_whole():
    r = run("prices", good_csv("prices"), name="prices/p.xlsx")
    assert r.file_error == "unsupported file format '.xlsx': expected one of .csv, .csv.gz, .parquet"


def test_gzipped_csv_is_read_and_bad_gzip_quarantined():
    r = run("prices", gzip.compress(good_csv("prices")), name="prices/p.csv.gz")
    assert r.accepted.height == 2
    assert run("prices", b"not gzip", name="prices/p.csv.gz").file_error.startswith("not a valid gzip file")


# --- values ------------------------------------------------------------------------------------


def test_unparseable_number():
    r = run("trades", good_csv("trades", quantity="1,000"), known_ids=KNOWN)
    assert one_reason(r) == (2, "quantity", "quantity: cannot parse '1,000' as Float64", "row")


def test_integer_column_refuses_a_decimal():
    r = run("instruments", good_csv("instruments", lot_size="1.5"))
    assert one_reason(r)[2] == "lot_size: cannot parse '1.5' as Int64"


def test_unparseable_timestamp():
    r = run("trades", good_csv("trades", trade_ts="03/01/2024 10:00"))
    assert one_reason(r) == (2, "trade_ts", "trade_ts: cannot parse '03/01/2024 10:00' as timestamp (ISO 8601)", "row")


def test_unparseable_date():
    r = run("prices", good_csv("prices", date="2024-02-30"))
    assert one_reason(r)[1:3] == ("date", "date: cannot parse '2024-02-30' as Date (YYYY-MM-DD)")


def test_timestamps_with_z_offset_or_naive_are_utc():
    rows = [dict(GOOD["cash_flows"][0], flow_id=f"F{i}", ts=ts) for i, ts in enumerate(
        ["2024-01-02T10:00:00Z", "2024-01-02T12:00:00+02:00", "2024-01-02T10:00:00", "2024-01-02 05:00:00-0500",
         "2024-01-02T10:00:00.000001Z"])]
    r = run("cash_flows", csv_bytes(rows))
    expected = datetime(2024, 1, 2, 10, tzinfo=UTC)
    assert r.accepted["ts"].to_list() == [expected] * 4 + [expected.replace(microsecond=1)]


def test_negative_quantity():
    r = run("trades", good_csv("trades", quantity="-4"), known_ids=KNOWN)
    assert one_reason(r) == (2, "quantity", "quantity: must be > 0 (got '-4.0')", "row")


def test_zero_price():
    r = run("trades", good_csv("trades", price="0"), known_ids=KNOWN)
    assert one_reason(r)[1:3] == ("price", "price: must be > 0 (got '0.0')")


def test_nan_and_inf_are_not_numbers():
    r = run("trades", good_csv("trades", price="inf"))
    assert one_reason(r)[2] == "price: must be a finite number (got 'inf')"
    r = run("signals", good_csv("signals", confidence="NaN"))  # optional column: still refused
    assert one_reason(r)[2].startswith("confidence: must be a finite number (got 'NaN')")


def test_bad_side():
    r = run("trades", good_csv("trades", side="buy"))
    assert one_reason(r)[1:3] == ("side", "side: must be one of BUY, SELL, SELL_SHORT, BUY_TO_COVER (got 'buy')")


def test_bad_status_enum():
    r = run("portfolios", good_csv("portfolios", status="OPEN"))
    assert one_reason(r)[1:3] == ("status", "status: must be one of ACTIVE, SUSPENDED, LIQUIDATING, CLOSED (got 'OPEN')")


def test_bad_currency_and_weight_ranges():
    assert one_reason(run("fx_rates", good_csv("fx_rates", currency="usd")))[1] == "currency"
    assert one_reason(run("targets", good_csv("targets", target_weight="1.5")))[2] == (
        "target_weight: must be in [-1, 1] (got '1.5')"
    )
    assert one_reason(run("benchmarks", good_csv("benchmarks", weight="-0.1")))[1] == "weight"


def test_settle_before_trade():
    r = run("trades", good_csv("trades", settle_date="2024-01-02"), known_ids=KNOWN)
    assert one_reason(r) == (2, "settle_date", "settle_date: must not be before the trade date (trade_ts, UTC)", "row")


def test_settle_date_compares_with_the_utc_trade_date():
    # 2024-01-03T01:00+02:00 is 2024-01-02 23:00 UTC: settling on the 2nd is fine.
    r = run("trades", good_csv("trades", trade_ts="2024-01-03T01:00:00+02:00", settle_date="2024-01-02"))
    assert r.quarantine.height == 0


def test_dividend_without_instrument():
    r = run("cash_flows", good_csv("cash_flows", instrument_id=""), known_ids=KNOWN)
    assert one_reason(r) == (2, "instrument_id", "instrument_id: is required for a DIVIDEND", "row")


def test_cash_flow_amount_is_a_positive_magnitude():
    r = run("cash_flows", good_csv("cash_flows", type="WITHDRAWAL", amount="-5", instrument_id=""))
    assert one_reason(r)[2] == "amount: must be > 0 (got '-5.0')"


def test_missing_required_value():
    r = run("trades", good_csv("trades", portfolio_id=""))
    assert one_reason(r)[1:3] == ("portfolio_id", "portfolio_id: missing required value")


def test_id_with_surrounding_spaces():
    r = run("prices", good_csv("prices", instrument_id="AAPL "))
    assert one_reason(r)[2] == "instrument_id: must not have leading or trailing spaces (got 'AAPL ')"


def test_several_failures_of_one_row_are_one_quarantine_row():
    r = run("trades", good_csv("trades", quantity="abc", side="HOLD", price="-1"))
    row, column, reason, stage = one_reason(r)
    assert column is None  # several columns
    assert reason == (
        "side: must be one of BUY, SELL, SELL_SHORT, BUY_TO_COVER (got 'HOLD'); "
        "quantity: cannot parse 'abc' as Float64; price: must be > 0 (got '-1.0')"
    )


# --- uniqueness and references -----------------------------------------------------------------


def test_duplicate_id_within_file():
    rows = GOOD["trades"] + [dict(GOOD["trades"][0], quantity="3")] + [GOOD["trades"][0]]
    r = run("trades", csv_bytes(rows), known_ids=KNOWN)
    assert r.accepted["source_row"].to_list() == [1, 2]
    assert r.quarantine["reason"].to_list() == ["duplicate trade_id T1 (first at row 1)"] * 2
    assert r.quarantine["column"].to_list() == ["trade_id"] * 2


def test_duplicate_composite_key_within_file():
    r = run("targets", csv_bytes(GOOD["targets"] + [GOOD["targets"][1]]))
    assert one_reason(r)[1:3] == (
        None, "duplicate (portfolio_id, strategy_id, instrument_id, effective_date) (P1, null, BUND, 2024-01-01) "
        "(first at row 2)")


@pytest.mark.parametrize("lazy", [False, True], ids=["frame", "lazy scan"])
def test_duplicate_id_against_existing_keys(lazy, tmp_path):
    existing = pl.DataFrame({"trade_id": ["T2", "T9", None]})
    if lazy:  # a Delta table's scan, as ingestion passes it: filtered to the file's keys before it is read
        existing.write_delta(tmp_path / "keys")
        existing = pl.scan_delta(str(tmp_path / "keys"))
    r = run("trades", good_csv("trades"), known_ids=KNOWN, existing_keys=existing)
    assert one_reason(r) == (2, "trade_id", "duplicate trade_id T2 (already ingested from another file)", "row")


def test_duplicate_date_key_against_existing_keys():
    existing = pl.DataFrame({"instrument_id": ["AAPL"], "date": [date(2024, 1, 3)]})
    r = run("prices", good_csv("prices"), existing_keys=existing)
    assert one_reason(r)[0] == 2


def test_unknown_instrument():
    r = run("trades", good_csv("trades", instrument_id="ZZZ"), known_ids=KNOWN)
    assert one_reason(r) == (2, "instrument_id", "instrument_id: 'ZZZ' is not a known instrument", "reference")


def test_unknown_portfolio():
    r = run("cash_flows", good_csv("cash_flows", portfolio_id="P9"), known_ids=KNOWN)
    assert one_reason(r) == (2, "portfolio_id", "portfolio_id: 'P9' is not a known portfolio", "reference")


def test_references_are_skipped_without_known_ids_and_null_ids_pass():
    assert run("trades", good_csv("trades", instrument_id="ZZZ")).quarantine.height == 0
    r = run("signals", good_csv("signals"), known_ids={"instruments": KNOWN["instruments"]})
    assert r.accepted.height == 2  # G2 has no portfolio_id; portfolios are not checked anyway


# --- good files --------------------------------------------------------------------------------


def parquet_bytes(kind: str) -> bytes:
    """The good rows of ``kind`` as a parquet file typed by the contract."""
    typed = run(kind, csv_bytes(GOOD[kind]), known_ids=KNOWN).accepted
    buf = io.BytesIO()
    typed.select(list(contract.LANDING_SCHEMAS[kind])).write_parquet(buf)
    return buf.getvalue()


@pytest.mark.parametrize("kind", contract.LANDING_KINDS)
def test_good_file_of_every_kind_is_accepted_fully(kind):
    csv_result = run(kind, csv_bytes(GOOD[kind]), known_ids=KNOWN)
    assert csv_result.file_error is None and csv_result.quarantine.height == 0
    assert csv_result.accepted.height == len(GOOD[kind]) == csv_result.rows_read
    assert csv_result.accepted["source_row"].to_list() == [1, 2]
    pq_result = run(kind, parquet_bytes(kind), name=f"{kind}/f.parquet", known_ids=KNOWN)
    assert pq_result.quarantine.height == 0
    assert pq_result.accepted.drop(LANDED).equals(csv_result.accepted.drop(LANDED))


def test_good_values_are_typed_exactly():
    r = run("trades", good_csv("trades"))
    row = r.accepted.row(1, named=True)
    assert row["trade_ts"] == datetime(2024, 1, 3, 13, 30, 0, 250000, tzinfo=UTC)
    assert row["settle_date"] == date(2024, 1, 3) and row["fees"] is None and row["quantity"] == 4.0
    assert row["source_sha256"] == sha256_of(good_csv("trades"))


def test_parquet_values_are_cast_only_when_lossless():
    frame = pl.DataFrame({
        "instrument_id": ["AAPL", "AAPL", "AAPL"],
        "date": ["2024-01-02", "2024-01-03", "2024-01-04"],  # strings parse like CSV
        "close": ["12", "x", "13"],
        "volume": [100.0, 5.0, 1.5],  # integral floats become Int64, 1.5 does not
    })
    buf = io.BytesIO()
    frame.write_parquet(buf)
    r = run("prices", buf.getvalue(), name="prices/p.parquet")
    assert r.accepted["close"].to_list() == [12.0]
    assert r.quarantine["reason"].to_list() == [
        "close: cannot parse 'x' as Float64", "volume: cannot convert Float64 value '1.5' to Int64"]


def test_parquet_naive_datetimes_are_utc():
    typed = run("signals", csv_bytes(GOOD["signals"])).accepted.select(list(contract.LANDING_SCHEMAS["signals"]))
    buf = io.BytesIO()
    typed.with_columns(pl.col("ts").dt.replace_time_zone(None).cast(pl.Datetime("ns"))).write_parquet(buf)
    r = run("signals", buf.getvalue(), name="signals/s.parquet")
    assert r.accepted["ts"].to_list() == typed["ts"].to_list()


def test_schemas_cover_every_kind():
    assert set(SCHEMAS) == set(contract.LANDING_KINDS)


# --- property: random mixes of good and corrupted rows ------------------------------------------

CORRUPTIONS = {
    "bad number": {"quantity": "1O"},
    "bad timestamp": {"trade_ts": "2024-13-01T00:00:00Z"},
    "negative quantity": {"quantity": "-1"},
    "zero price": {"price": "0"},
    "bad side": {"side": "HOLD"},
    "settle before trade": {"settle_date": "2023-12-31"},
    "missing portfolio": {"portfolio_id": ""},
    "unknown instrument": {"instrument_id": "ZZZ"},
    "negative fees": {"fees": "-0.5"},
}


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    plan=st.lists(st.sampled_from(["good", *CORRUPTIONS, "short", "long"]), min_size=0, max_size=25),
    truncate_last=st.booleans(),
)
def test_property_mixes_of_good_and_bad_rows(plan, truncate_last):
    columns = list(contract.LANDING_SCHEMAS["trades"])
    lines, good_ids = [",".join(columns)], []
    for i, what in enumerate(plan):
        row = dict(GOOD["trades"][0], trade_id=f"T{i}")
        row.update(CORRUPTIONS.get(what, {}))
        fields = [row[c] for c in columns]
        if what == "short":
            fields = fields[:-2]
        elif what == "long":
            fields = fields + ["x"]
        elif what == "good":
            good_ids.append(f"T{i}")
        lines.append(",".join(fields))
    content = "\n".join(lines).encode()
    if truncate_last and plan:
        # Cut the last record after its quantity: it must be quarantined, not accepted.
        last = lines[-1]
        content = "\n".join(lines[:-1] + [",".join(last.split(",")[:7])]).encode()
        if plan[-1] == "good":
            good_ids.pop()
    r = run("trades", content, known_ids=KNOWN)
    assert r.rows_read == len(plan)
    assert r.accepted["trade_id"].to_list() == good_ids
