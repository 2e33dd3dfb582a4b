"""Pandera (``pandera.polars``) schemas of the landing kinds: the row rules of the data contract.

One ``DataFrameSchema`` per kind in :data:`transforms.contract.LANDING_SCHEMAS`. A schema
validates a frame that is already *typed* exactly as the contract says (``validation`` parses
and casts first, so a value that cannot be parsed never reaches the schema as a wrong value);
what the schema adds are the rules on the values:

- **dtype** of every contract column, exactly ``LANDING_SCHEMAS[kind]`` (no coercion here);
- **nullability**: required columns are non-null, ``OPTIONAL_COLUMNS`` may be null. Empty
  strings were turned into nulls while parsing, so "required" also means "not empty". For
  floats pandera also counts NaN as missing;
- **ranges** (documented here, checked on non-null values):

  ============================  =================  ========================================
  column                        rule               why
  ============================  =================  ========================================
  every Float64                 finite             ``nan``/``inf`` parse as floats but are
                                                   never a quantity, price or weight
  trades.quantity               > 0                the side gives the direction
  trades.price                  > 0
  trades.fees                   >= 0               a rebate is not a fee
  prices.close                  > 0
  prices.volume                 >= 0
  fx_rates.usd_per_unit         > 0; == 1 for USD  USD is the quote currency
  instruments.lot_size          >= 1
  targets.target_weight         in [-1, 1]         shorts allowed, no leverage beyond 100 %
                                                   of NAV in one name
  benchmarks.weight             in [0, 1]          benchmarks are long-only indices
  signals.confidence            in [0, 1]          a probability-like confidence
  signals.priority              >= 0
  signals.score                 finite only        scores are model-specific (z-scores ...)
  cash_flows.amount             > 0                a positive magnitude for every type:
                                                   the type gives the direction
                                                   (DEPOSIT/DIVIDEND/INTEREST add cash,
                                                   WITHDRAWAL/FEE remove it; this is what
                                                   ``transforms.cash`` applies). So 0 and
                                                   negative amounts are rejected
  every Date / timestamp        1900-01-01 ..      sanity bounds that catch typed-in years
                                2100-12-31         such as 0202 or 2204
  ============================  =================  ========================================

- **allowed values**: ``status``, ``tax_status``, ``lot_method``, ``side``, cash-flow
  ``type`` and ``asset_class`` from the contract tuples; every currency column is three
  upper-case letters (ISO 4217 shape, not the list of codes: new codes need no deploy);
- **ids** (every ``*_id`` column) have no leading or trailing white space: ``"AAPL "`` would
  otherwise silently fail every join;
- **cross-field rules** (frame-level checks):

  - trades: ``settle_date >= trade_ts`` date (in UTC);
  - cash_flows: a ``DIVIDEND`` names its ``instrument_id``;
  - fx_rates: the ``USD`` rate is 1.

Every check carries an ``error`` text, which pandera reports in its failure cases; the
validation module turns those into quarantine reasons ("<column>: <error>"). The frame-level
checks are not about one pandera column, so :func:`row_rule_columns` says which column each one
is reported against.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import date, datetime, timezone

import pandera.polars as pa
import polars as pl

from transforms import contract

DATE_MIN = date(1900, 1, 1)
DATE_MAX = date(2100, 12, 31)
TS_MIN = datetime(1900, 1, 1, tzinfo=timezone.utc)
TS_MAX = datetime(2101, 1, 1, tzinfo=timezone.utc)  # exclusive: any moment of 2100-12-31
CURRENCY_PATTERN = r"^[A-Z]{3}$"

# Columns holding a currency code, per kind.
CURRENCY_COLUMNS: dict[str, tuple[str, ...]] = {
    "instruments": ("currency",),
    "portfolios": ("base_currency",),
    "fx_rates": ("currency",),
    "cash_flows": ("currency",),
}

# Allowed values, per (kind, column).
ALLOWED_VALUES: dict[tuple[str, str], tuple[str, ...]] = {
    ("instruments", "asset_class"): contract.ASSET_CLASSES,
    ("portfolios", "status"): contract.PORTFOLIO_STATUSES,
    ("portfolios", "tax_status"): contract.TAX_STATUSES,
    ("portfolios", "lot_method"): contract.LOT_METHODS,
    ("trades", "side"): contract.TRADE_SIDES,
    ("cash_flows", "type"): contract.CASH_FLOW_TYPES,
}

# Numeric ranges, per (kind, column): (lower, upper, lower inclusive, upper inclusive);
# None means unbounded on that side.
RANGES: dict[tuple[str, str], tuple[float | None, float | None, bool, bool]] = {
    ("instruments", "lot_size"): (1, None, True, True),
    ("prices", "close"): (0, None, False, True),
    ("prices", "volume"): (0, None, True, True),
    ("fx_rates", "usd_per_unit"): (0, None, False, True),
    ("trades", "quantity"): (0, None, False, True),
    ("trades", "price"): (0, None, False, True),
    ("trades", "fees"): (0, None, True, True),
    ("cash_flows", "amount"): (0, None, False, True),
    ("targets", "target_weight"): (-1, 1, True, True),
    ("benchmarks", "weight"): (0, 1, True, True),
    ("signals", "confidence"): (0, 1, True, True),
    ("signals", "priority"): (0, None, True, True),
}


@dataclass(frozen=True)
class RowRule:
    """A frame-level (cross-field) rule: ``passes`` is true where the row is fine.

    ``passes`` must be true (not null) for rows the rule does not apply to, so that the rule
    only ever fails on purpose. ``column`` is the column the failure is reported against.
    """

    column: str
    error: str
    passes: pl.Expr


ROW_RULES: dict[str, tuple[RowRule, ...]] = {
    "trades": (
        RowRule(
            "settle_date",
            "must not be before the trade date (trade_ts, UTC)",
            # Null on either side is the nullability check's business, not this rule's.
            (pl.col("settle_date") >= pl.col("trade_ts").dt.date()).fill_null(True),
        ),
    ),
    "cash_flows": (
        RowRule(
            "instrument_id",
            "is required for a DIVIDEND",
            ~((pl.col("type") == "DIVIDEND") & pl.col("instrument_id").is_null()).fill_null(False),
        ),
    ),
    "fx_rates": (
        RowRule(
            "usd_per_unit",
            f"must be 1 for {contract.BASE_CURRENCY}",
            ((pl.col("currency") != contract.BASE_CURRENCY) | (pl.col("usd_per_unit") == 1.0)).fill_null(True),
        ),
    ),
}


def _range_check(lo: float | None, hi: float | None, lo_inc: bool, hi_inc: bool) -> pa.Check:
    if lo is not None and hi is not None:
        return pa.Check.in_range(
            lo, hi, include_min=lo_inc, include_max=hi_inc,
            error=f"must be in {'[' if lo_inc else '('}{lo}, {hi}{']' if hi_inc else ')'}",
        )
    if lo is not None:
        return pa.Check.ge(lo, error=f"must be >= {lo}") if lo_inc else pa.Check.gt(lo, error=f"must be > {lo}")
    assert hi is not None
    return pa.Check.le(hi, error=f"must be <= {hi}") if hi_inc else pa.Check.lt(hi, error=f"must be < {hi}")


def _expr_check(expr_of_column, error: str) -> pa.Check:
    """A column check from a function of the column expression (vectorised, lazy)."""
    return pa.Check(lambda data: data.lazyframe.select(expr_of_column(pl.col(data.key))), error=error)


def _column_checks(kind: str, column: str, dtype: pl.DataType) -> list[pa.Check]:
    checks: list[pa.Check] = []
    if dtype == pl.Float64:
        checks.append(_expr_check(lambda c: c.is_finite(), "must be a finite number"))
    if dtype == pl.Date:
        checks.append(pa.Check.in_range(DATE_MIN, DATE_MAX, error=f"must be between {DATE_MIN} and {DATE_MAX}"))
    if dtype == contract.TS:
        checks.append(_expr_check(lambda c: (c >= TS_MIN) & (c < TS_MAX), f"must be between {DATE_MIN} and {DATE_MAX}"))
    if (kind, column) in RANGES:
        checks.append(_range_check(*RANGES[(kind, column)]))
    if (kind, column) in ALLOWED_VALUES:
        allowed = ALLOWED_VALUES[(kind, column)]
        checks.append(pa.Check.isin(list(allowed), error=f"must be one of {', '.join(allowed)}"))
    if column in CURRENCY_COLUMNS.get(kind, ()):
        checks.append(pa.Check.str_matches(CURRENCY_PATTERN, error="must be a 3-letter upper-case currency code"))
    if column.endswith("_id"):
        checks.append(_expr_check(lambda c: c.str.strip_chars() == c, "must not have leading or trailing spaces"))
    return checks


def _row_check(rule: RowRule) -> pa.Check:
    return pa.Check(lambda data: data.lazyframe.select(rule.passes), error=rule.error)


def build_schema(kind: str) -> pa.DataFrameSchema:
    """Build the pandera schema of landing ``kind``.

    Input: a kind of ``contract.LANDING_SCHEMAS``. Output: a ``DataFrameSchema`` over the
    contract columns with exact dtypes (``coerce=False``), nullability from
    ``OPTIONAL_COLUMNS``, the column checks and the frame-level :data:`ROW_RULES`. The schema is
    not strict, so a frame may carry helper columns (which are not checked).
    """
    optional = set(contract.OPTIONAL_COLUMNS[kind])
    columns = {
        name: pa.Column(dtype, checks=_column_checks(kind, name, dtype), nullable=name in optional, coerce=False)
        for name, dtype in contract.LANDING_SCHEMAS[kind].items()
    }
    return pa.DataFrameSchema(
        columns,
        checks=[_row_check(rule) for rule in ROW_RULES.get(kind, ())],
        name=kind,
        strict=False,
        coerce=False,
    )


SCHEMAS: dict[str, pa.DataFrameSchema] = {kind: build_schema(kind) for kind in contract.LANDING_KINDS}


def schema_for(kind: str) -> pa.DataFrameSchema:
    """Return the pandera schema of landing ``kind`` (KeyError for an unknown kind)."""
    return SCHEMAS[kind]


def row_rule_columns(kind: str) -> dict[str, str]:
    """Map each frame-level rule's error text of ``kind`` to the column it is reported against."""
    return {rule.error: rule.column for rule in ROW_RULES.get(kind, ())}
