"""Rebalance triggers: the pure rules that decide when a portfolio should be rebalanced, and the
decision per portfolio that follows from them and its status.

Every trigger function returns rows of ``TRIGGERS_SCHEMA``, one per trigger that fired (a
portfolio that does not trigger has no row), stamped ``triggered_at = now`` (a naive ``now`` is
taken to be UTC) and sorted by (portfolio_id, priority, kind, note). ``value`` is the measured
figure and ``threshold`` the limit it passed (both null for calendar and manual triggers);
every comparison is strict: a figure exactly at its limit does not trigger.

Priorities (1 = most urgent), ``PRIORITIES``:

====================  ========  ================================================================
kind                  priority  fires when
====================  ========  ================================================================
risk_budget           1         annualised tracking error > ``tracking_error_budget``, or the
                                VaR as a share of nav > ``var_budget`` (one row per budget)
drift                 2         on the portfolio's latest drift date, ``breach`` (drift figure >
                                portfolio band) or ``instruments_breaching > 0``
cash_flow             3         ``|net external flow since since| / nav > cash_flow_threshold``
manual                3         requested by a person
volatility_regime     4         ``sigma_short / sigma_long > vol_ratio``
correlation_change    4         ``D > corr_threshold`` (below)
calendar              5         today is the policy's rebalancing day
====================  ========  ================================================================

Formulas and rules.

- **Volatility regime.** Per portfolio, over its non-null daily returns in date order:
  ``sigma_short`` = sample std (``conventions.DDOF``) of the last ``vol_short_window`` returns,
  ``sigma_long`` = that of the last ``vol_long_window``; ``value = sigma_short / sigma_long``,
  ``threshold = vol_ratio``. A portfolio with fewer than ``vol_long_window`` returns, or a zero
  ``sigma_long``, is not measured (no row).
- **Correlation change.** ``Cs`` and ``Cl`` are the Pearson correlation matrices of the
  instruments' daily returns over the last ``corr_short_window`` and ``corr_long_window`` rows
  of the return matrix. Per portfolio, over its held instruments (weight != 0) with a finite
  return on each of the last ``corr_long_window`` rows and a non-zero deviation in both
  windows, with ``w = |weight|``:
  ``D = sqrt( sum_{i != j} w_i w_j (Cs_ij - Cl_ij)^2 / sum_{i != j} w_i w_j )``, the weighted
  root-mean-square change of the pairwise correlations (0 <= D <= 2). Fewer than two such
  instruments: no row. Both matrices are computed once per distinct pair of windows, over
  every instrument that a portfolio with those windows holds, and each portfolio takes its
  submatrix.
- **Calendar** (``calendar_due``). A day is a business day when it is in ``business_days``;
  after the calendar's last day (the future it does not know yet) Monday to Friday are. Today
  must not precede the calendar's first day. ``daily``: today is a business day. ``weekly``:
  today is a business day and no later day of its ISO week (Monday to Sunday) is one, so a
  week whose Friday is a holiday rebalances on the Thursday. ``monthly``: today is a business
  day and no later day of its calendar month is one. ``None``: never.
- **Cash flow.** Per portfolio, the net external flow = sum of ``amount_base`` over the cash
  ledger's rows with ``is_external`` and ``ts >= since``; ``value = |net| / nav``,
  ``threshold = cash_flow_threshold``. Amounts are taken already converted to the portfolio's
  base currency (the caller adds ``amount_base``, e.g. with ``transforms.fx.base_per_local_on``
  at each entry's date): a flow is worth its base amount on the day it arrived. A portfolio
  whose window holds an external flow without a base amount, or whose nav is unknown or not
  positive while its net flow is not zero, cannot be measured; it gets a flagged row (value
  and threshold null, the note says why) so that someone looks at it, never a silent pass. A
  flagged row is a trigger like any other in the decisions (an ACTIVE portfolio rebalances:
  money it cannot size has come in or gone out).
- **Risk budget.** ``annualised_tracking_error > tracking_error_budget`` and
  ``var_pct_nav > var_budget`` (the VaR rows of one method, confidence and horizon, chosen by
  the caller); a null figure or budget does not trigger.
- **Decisions** (``rebalance_decisions``), from the status (``contract.PORTFOLIO_STATUSES``):
  ACTIVE with a trigger -> REBALANCE; ACTIVE without -> SKIP ("no trigger"); LIQUIDATING ->
  LIQUIDATE always (move toward cash at least cost), triggered or not; SUSPENDED and CLOSED ->
  SKIP ("portfolio is <status>") even when triggered. The kinds that fired are listed in every
  case.

Policies (``TriggerPolicy``, ``parse_policies``) come from a parsed YAML mapping
``{"default": {...}, "portfolios": {"P1": {...}}}``; a portfolio's entry overrides the default
key by key, and a portfolio without an entry takes the default.
"""

from __future__ import annotations

import calendar as _calendar
import dataclasses
import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import date, datetime, timedelta

import numpy as np
import polars as pl

from transforms.contract import DECISIONS_SCHEMA, PORTFOLIO_STATUSES, TRIGGERS_SCHEMA, TS  # noqa: F401  (schemas: published)
from transforms.conventions import DDOF, PERIODS_PER_YEAR
from transforms.frame_checks import collected_with, require_finite, require_no_nulls, require_unique
from transforms.fx import as_utc
from transforms.ordering import ordered_sum

TRIGGER_KINDS: tuple[str, ...] = (
    "drift",
    "calendar",
    "manual",
    "volatility_regime",
    "correlation_change",
    "risk_budget",
    "cash_flow",
)
PRIORITIES: dict[str, int] = {
    "risk_budget": 1,
    "drift": 2,
    "cash_flow": 3,
    "manual": 3,
    "volatility_regime": 4,
    "correlation_change": 4,
    "calendar": 5,
}
CALENDARS: tuple[str, ...] = ("daily", "weekly", "monthly")
ACTIONS: tuple[str, ...] = ("REBALANCE", "LIQUIDATE", "SKIP")
DEFAULT_POLICY = "default"  # the key of the default policy in parse_policies' result

NO_TRIGGER = "no trigger"
LIQUIDATING_REASON = "portfolio is LIQUIDATING: move toward cash at least cost"
NAV_NOT_MEASURABLE = "nav unknown or not positive"
NO_BASE_AMOUNT = "external flow(s) without a base-currency amount"

_SORT = ["portfolio_id", "priority", "kind", "note"]


# --- policies ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class TriggerPolicy:
    """One portfolio's trigger settings (the defaults are the firm's).

    - ``calendar``: "daily", "weekly", "monthly" or None (no calendar trigger);
    - ``vol_short_window`` / ``vol_long_window`` (returns, 2 <= short < long) and ``vol_ratio``
      (> 0): the volatility regime rule;
    - ``corr_short_window`` / ``corr_long_window`` (days, 2 <= short < long) and
      ``corr_threshold`` (>= 0): the correlation change rule;
    - ``tracking_error_budget`` (annualised) and ``var_budget`` (share of nav): None for no
      budget, else > 0;
    - ``cash_flow_threshold`` (share of nav, >= 0).

    Raises ``ValueError`` on a value out of range or of the wrong type; integers given for
    the float fields are taken as floats."""

    calendar: str | None = None
    vol_short_window: int = 21
    vol_long_window: int = 252
    vol_ratio: float = 1.5
    corr_short_window: int = 63
    corr_long_window: int = 252
    corr_threshold: float = 0.25
    tracking_error_budget: float | None = None
    var_budget: float | None = None
    cash_flow_threshold: float = 0.05

    def __post_init__(self) -> None:
        if self.calendar is not None and self.calendar not in CALENDARS:
            raise ValueError(f"calendar must be one of {', '.join(CALENDARS)} or None, got {self.calendar!r}")
        for short, long in (("vol_short_window", "vol_long_window"), ("corr_short_window", "corr_long_window")):
            for name in (short, long):
                v = getattr(self, name)
                if isinstance(v, bool) or not isinstance(v, int):
                    raise ValueError(f"{name} must be an integer, got {v!r}")
            if not 2 <= getattr(self, short) < getattr(self, long):
                raise ValueError(
                    f"{short} and {long} must satisfy 2 <= short < long, got {getattr(self, short)} and {getattr(self, long)}"
                )
        for name, optional, positive in (
            ("vol_ratio", False, True),
            ("corr_threshold", False, False),
            ("tracking_error_budget", True, True),
            ("var_budget", True, True),
            ("cash_flow_threshold", False, False),
        ):
            v = getattr(self, name)
            if v is None and optional:
                continue
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
                raise ValueError(f"{name} must be a finite number{' or None' if optional else ''}, got {v!r}")
            if v < 0 or (positive and v == 0):
                raise ValueError(f"{name} must be {'> 0' if positive else '>= 0'}, got {v!r}")
            object.__setattr__(self, name, float(v))


_POLICY_FIELDS: dict[str, pl.DataType] = {
    f.name: (pl.String if f.name == "calendar" else pl.Int64 if "window" in f.name else pl.Float64)
    for f in dataclasses.fields(TriggerPolicy)
}


def parse_policies(spec: Mapping | None) -> dict[str, TriggerPolicy]:
    """Trigger policies from a parsed YAML mapping.

    Input: ``{"default": {field: value}, "portfolios": {portfolio_id: {field: value}}}``, both
    parts optional (None or an empty mapping: the defaults of ``TriggerPolicy``); fields are
    those of ``TriggerPolicy``. A portfolio's policy is the default's fields overridden by its
    own. Output: ``{DEFAULT_POLICY: default policy, portfolio_id: policy, ...}`` (read it with
    ``policy_for``). ``ValueError`` names any unknown key (top level, default or portfolio), a
    portfolio id that is not a string (quote it in YAML) or is ``"default"``, and a bad value.
    """
    if spec is None:
        spec = {}
    if not isinstance(spec, Mapping):
        raise ValueError(f"a policy spec must be a mapping, got {type(spec).__name__}")
    unknown = sorted(map(str, set(spec) - {"default", "portfolios"}))
    if unknown:
        raise ValueError(f"policy spec: unknown top-level key(s) {', '.join(unknown)} (allowed: default, portfolios)")
    fields = set(_POLICY_FIELDS)

    def settings(entry: object, where: str) -> dict:
        if entry is None:
            return {}
        if not isinstance(entry, Mapping):
            raise ValueError(f"policy spec: {where} must be a mapping, got {type(entry).__name__}")
        bad = sorted(map(str, set(entry) - fields))
        if bad:
            raise ValueError(f"policy spec: {where} has unknown key(s) {', '.join(bad)} (allowed: {', '.join(_POLICY_FIELDS)})")
        return dict(entry)

    def policy(values: dict, where: str) -> TriggerPolicy:
        try:
            return TriggerPolicy(**values)
        except ValueError as e:
            raise ValueError(f"policy spec: {where}: {e}") from None

    default = settings(spec.get("default"), "default")
    out = {DEFAULT_POLICY: policy(default, "default")}
    portfolios = spec.get("portfolios")
    if portfolios is None:
        return out
    if not isinstance(portfolios, Mapping):
        raise ValueError(f"policy spec: portfolios must be a mapping, got {type(portfolios).__name__}")
    for pid, entry in portfolios.items():
        if not isinstance(pid, str):
            raise ValueError(f"policy spec: portfolio id {pid!r} is not a string (quote it in YAML)")
        if pid == DEFAULT_POLICY:
            raise ValueError(f"policy spec: a portfolio may not be named {DEFAULT_POLICY!r} (the default's key)")
        where = f"portfolios.{pid}"
        out[pid] = policy(default | settings(entry, where), where)
    return out


def _checked_policies(policies: Mapping[str, TriggerPolicy] | None) -> Mapping[str, TriggerPolicy]:
    if policies is None:
        return {}
    if not isinstance(policies, Mapping):
        raise ValueError(f"policies must be a mapping of portfolio id to TriggerPolicy, got {type(policies).__name__}")
    bad = [k for k, v in policies.items() if not isinstance(v, TriggerPolicy)]
    if bad:
        raise ValueError(f"policies: the value of {', '.join(map(str, bad))} is not a TriggerPolicy")
    return policies


def policy_for(policies: Mapping[str, TriggerPolicy] | None, portfolio_id: str) -> TriggerPolicy:
    """The policy of ``portfolio_id``: its own entry in ``policies`` (``parse_policies``), else
    the ``DEFAULT_POLICY`` entry, else ``TriggerPolicy()``."""
    policies = _checked_policies(policies)
    return policies.get(portfolio_id) or policies.get(DEFAULT_POLICY) or TriggerPolicy()


def _policy_table(policies: Mapping[str, TriggerPolicy] | None, ids: pl.Series) -> pl.DataFrame:
    """One row per distinct id of ``ids``: portfolio_id and every policy field (``policy_for``
    as a frame, by a join on the configured portfolios rather than a lookup per portfolio)."""
    policies = _checked_policies(policies)
    default = policy_for(policies, DEFAULT_POLICY)
    explicit = {k: v for k, v in policies.items() if k != DEFAULT_POLICY}
    table = pl.DataFrame(
        {"portfolio_id": list(explicit), **{f: [getattr(p, f) for p in explicit.values()] for f in _POLICY_FIELDS}},
        schema={"portfolio_id": pl.String, **_POLICY_FIELDS},
    ).with_columns(pl.lit(True).alias("_explicit"))
    return (
        ids.cast(pl.String).unique().to_frame("portfolio_id")
        .join(table, on="portfolio_id", how="left")
        .with_columns(
            pl.when(pl.col("_explicit")).then(pl.col(f)).otherwise(pl.lit(getattr(default, f), dtype=t)).alias(f)
            for f, t in _POLICY_FIELDS.items()
        )
        .drop("_explicit")
    )


# --- output helpers ---------------------------------------------------------------------------


def _fixed(e: pl.Expr, decimals: int) -> pl.Expr:
    """A number written with exactly ``decimals`` decimals, e.g. (0.5, 2) -> "0.50"."""
    scale = 10**decimals
    units = (e * scale).round().cast(pl.Int64, strict=False)
    whole = (units.abs() // scale).cast(pl.String)
    sign = pl.when(units < 0).then(pl.lit("-")).otherwise(pl.lit(""))
    if decimals == 0:
        return pl.format("{}{}", sign, whole)
    frac = (units.abs() % scale).cast(pl.String).str.zfill(decimals)
    return pl.format("{}{}.{}", sign, whole, frac)


def _pct(e: pl.Expr) -> pl.Expr:
    """A share as a percentage with one decimal: 0.072 -> "7.2"."""
    return _fixed(e * 100.0, 1)


def _now(now: datetime) -> datetime:
    if not isinstance(now, datetime):
        raise ValueError(f"now must be a datetime, got {type(now).__name__}")
    return as_utc(now)


def _finish(frame: pl.DataFrame | pl.LazyFrame, kind: str, now: datetime) -> pl.DataFrame:
    """``frame`` (portfolio_id, value, threshold, note) as ``TRIGGERS_SCHEMA`` rows of ``kind``."""
    out = frame.lazy().with_columns(
        pl.lit(kind).alias("kind"),
        pl.lit(PRIORITIES[kind], dtype=pl.Int64).alias("priority"),
        pl.lit(_now(now), dtype=TS).alias("triggered_at"),
    )
    return out.select([pl.col(c).cast(t) for c, t in TRIGGERS_SCHEMA.items()]).sort(_SORT).collect()


def _ids(values: Iterable[str] | pl.Series, name: str) -> list[str]:
    if isinstance(values, str):
        raise ValueError(f"{name} must be a sequence of portfolio ids, not one string")
    ids = list(values)
    bad = [v for v in ids if not isinstance(v, str)]
    if bad:
        raise ValueError(f"{name} holds non-string id(s): {bad[:5]}")
    return ids


# --- the triggers -----------------------------------------------------------------------------


def drift_triggers(drift_summary: pl.DataFrame | pl.LazyFrame, now: datetime) -> pl.DataFrame:
    """Drift triggers (``TRIGGERS_SCHEMA``, kind ``drift``).

    Input: ``DRIFT_SUMMARY_SCHEMA`` rows (at least date, portfolio_id, drift, portfolio_band,
    breach, instruments_breaching; one row per (date, portfolio)). Only each portfolio's latest
    date counts. Rule: ``breach`` is true (drift figure > portfolio band) or
    ``instruments_breaching > 0``; nulls (a portfolio not measured) do not trigger. value =
    drift, threshold = portfolio_band; note e.g. "drift 7.2% above band 5.0%; 2 instrument(s)
    breaching their bands".
    """
    columns = ("date", "portfolio_id", "drift", "portfolio_band", "breach", "instruments_breaching")
    df = collected_with(drift_summary, columns, "drift_summary").select(columns)
    require_no_nulls(df, ["date", "portfolio_id"], "drift_summary")
    require_unique(df, ["portfolio_id", "date"], "drift_summary")
    require_finite(df, ["drift", "portfolio_band"], "drift_summary")
    drift, band, n = pl.col("drift"), pl.col("portfolio_band"), pl.col("instruments_breaching")
    breach = pl.col("breach").fill_null(False)
    figure = (
        pl.when(drift.is_null()).then(pl.lit("drift unknown"))
        .when(breach).then(pl.format("drift {}% above band {}%", _pct(drift), _pct(band)))
        .when(band.is_not_null()).then(pl.format("drift {}% within band {}%", _pct(drift), _pct(band)))
        .otherwise(pl.format("drift {}%", _pct(drift)))
    )
    instruments = pl.when(n.fill_null(0) > 0).then(pl.format("; {} instrument(s) breaching their bands", n)).otherwise(pl.lit(""))
    rows = (
        df.lazy()
        .filter(pl.col("date") == pl.col("date").max().over("portfolio_id"))
        .filter(breach | (n.fill_null(0) > 0))
        .select("portfolio_id", drift.alias("value"), band.alias("threshold"), pl.concat_str(figure, instruments).alias("note"))
    )
    return _finish(rows, "drift", now)


def _is_business_day(day: date, days: set[date], last: date | None) -> bool:
    if last is None or day > last:
        return day.weekday() < 5
    return day in days


def calendar_due(schedule: str | None, business_days: pl.Series, today: date) -> bool:
    """Whether ``today`` is a rebalancing day of ``schedule`` ("daily", "weekly", "monthly" or
    None) on the calendar ``business_days`` (a ``pl.Date`` series). Rules: see the module
    docstring (after the calendar's last day, Monday to Friday are business days).
    ``ValueError`` on an unknown schedule, a calendar that is not of dates or holds a null, or
    ``today`` before the calendar's first day."""
    if schedule is not None and schedule not in CALENDARS:
        raise ValueError(f"calendar must be one of {', '.join(CALENDARS)} or None, got {schedule!r}")
    if not isinstance(business_days, pl.Series) or business_days.dtype != pl.Date:
        raise ValueError("business_days must be a pl.Series of dtype Date")
    if business_days.null_count():
        raise ValueError("business_days holds a null date")
    if not isinstance(today, date) or isinstance(today, datetime):
        raise ValueError(f"today must be a date, got {type(today).__name__}")
    if schedule is None:
        return False
    first, last = business_days.min(), business_days.max()
    if first is not None and today < first:
        raise ValueError(f"today ({today}) is before the calendar's first day ({first})")
    # only the days from today to the end of its month (at most 31) are ever looked at
    days = set(business_days.filter(business_days >= today).to_list())
    if not _is_business_day(today, days, last):
        return False
    if schedule == "daily":
        return True
    if schedule == "weekly":
        period_end = today + timedelta(days=6 - today.weekday())
    else:
        period_end = today.replace(day=_calendar.monthrange(today.year, today.month)[1])
    later = (today + timedelta(days=k) for k in range(1, (period_end - today).days + 1))
    return not any(_is_business_day(d, days, last) for d in later)


def calendar_triggers(
    portfolio_ids: Sequence[str] | pl.Series,
    policies: Mapping[str, TriggerPolicy] | None,
    business_days: pl.Series,
    today: date,
    now: datetime,
) -> pl.DataFrame:
    """Calendar triggers (``TRIGGERS_SCHEMA``, kind ``calendar``): one row per portfolio of
    ``portfolio_ids`` whose policy's ``calendar`` is due today (``calendar_due``: daily = a
    business day; weekly = the last business day of the ISO week; monthly = the last business
    day of the month; after the calendar's last day Monday to Friday are business days). value
    and threshold are null; note e.g. "weekly rebalance: 2025-01-30 is the last business day of
    its ISO week"."""
    ids = pl.Series("portfolio_id", _ids(portfolio_ids, "portfolio_ids"), dtype=pl.String)
    due = [c for c in CALENDARS if calendar_due(c, business_days, today)]
    what = {
        "daily": "is a business day",
        "weekly": "is the last business day of its ISO week",
        "monthly": "is the last business day of its month",
    }
    notes = pl.DataFrame(
        {"calendar": due, "note": [f"{c} rebalance: {today.isoformat()} {what[c]}" for c in due]},
        schema={"calendar": pl.String, "note": pl.String},
    )
    rows = (
        _policy_table(policies, ids)
        .join(notes, on="calendar", how="inner")
        .select("portfolio_id", pl.lit(None, dtype=pl.Float64).alias("value"), pl.lit(None, dtype=pl.Float64).alias("threshold"), "note")
    )
    return _finish(rows, "calendar", now)


def manual_triggers(
    portfolio_ids_requested: Sequence[str] | pl.Series,
    known_portfolio_ids: Sequence[str] | pl.Series,
    now: datetime,
) -> pl.DataFrame:
    """Manual triggers (``TRIGGERS_SCHEMA``, kind ``manual``): one row per distinct requested
    id, value and threshold null, note "manual rebalance requested". ``ValueError`` lists the
    requested ids not in ``known_portfolio_ids``."""
    requested = _ids(portfolio_ids_requested, "portfolio_ids_requested")
    known = set(_ids(known_portfolio_ids, "known_portfolio_ids"))
    unknown = sorted(set(requested) - known)
    if unknown:
        raise ValueError(f"manual rebalance requested for unknown portfolio(s): {', '.join(unknown)}")
    rows = pl.DataFrame({"portfolio_id": sorted(set(requested))}, schema={"portfolio_id": pl.String}).with_columns(
        pl.lit(None, dtype=pl.Float64).alias("value"),
        pl.lit(None, dtype=pl.Float64).alias("threshold"),
        pl.lit("manual rebalance requested").alias("note"),
    )
    return _finish(rows, "manual", now)


def volatility_triggers(
    returns_daily: pl.DataFrame | pl.LazyFrame,
    policies: Mapping[str, TriggerPolicy] | None,
    now: datetime,
) -> pl.DataFrame:
    """Volatility regime triggers (``TRIGGERS_SCHEMA``, kind ``volatility_regime``).

    Input: ``returns_daily`` with portfolio_id, date (unique per portfolio), daily_return
    (f64, nullable: null days are left out). Per portfolio, with its policy's windows, over
    the non-null returns in date order: ``sigma_short`` = std(ddof=DDOF) of the last
    ``vol_short_window``, ``sigma_long`` = std of the last ``vol_long_window``; triggers when
    ``sigma_short / sigma_long > vol_ratio`` (value = the ratio, threshold = vol_ratio). Fewer
    returns than ``vol_long_window`` or ``sigma_long = 0``: no row. Note e.g. "21-day
    volatility 30.2% is 2.10x the 252-day 14.4% (limit 1.50x)" (annualised by
    sqrt(PERIODS_PER_YEAR) for reading; the ratio is the same daily or annualised).
    """
    columns = ("portfolio_id", "date", "daily_return")
    df = collected_with(returns_daily, columns, "returns_daily").select(columns)
    require_no_nulls(df, ["portfolio_id", "date"], "returns_daily")
    require_unique(df, ["portfolio_id", "date"], "returns_daily")
    require_finite(df, ["daily_return"], "returns_daily")
    rows = df.filter(pl.col("daily_return").is_not_null()).with_columns(pl.col("daily_return").cast(pl.Float64))
    policy = _policy_table(policies, rows["portfolio_id"]).select("portfolio_id", "vol_short_window", "vol_long_window", "vol_ratio")
    r, short_n, long_n = pl.col("daily_return"), pl.col("vol_short_window").first(), pl.col("vol_long_window").first()
    stats = (
        rows.lazy()
        .sort("portfolio_id", "date")
        .join(policy.lazy(), on="portfolio_id", how="left", maintain_order="left")
        .group_by("portfolio_id")
        .agg(
            pl.len().alias("_n"),
            short_n.alias("_short_n"),
            long_n.alias("_long_n"),
            pl.col("vol_ratio").first().alias("threshold"),
            r.tail(short_n).std(ddof=DDOF).alias("_short"),
            r.tail(long_n).std(ddof=DDOF).alias("_long"),
        )
        .filter((pl.col("_n") >= pl.col("_long_n")) & (pl.col("_long") > 0))
        .with_columns((pl.col("_short") / pl.col("_long")).alias("value"))
        .filter(pl.col("value").is_finite() & (pl.col("value") > pl.col("threshold")))
    )
    annual = math.sqrt(PERIODS_PER_YEAR)
    note = pl.format(
        "{}-day volatility {}% is {}x the {}-day {}% (limit {}x)",
        pl.col("_short_n"),
        _pct(pl.col("_short") * annual),
        _fixed(pl.col("value"), 2),
        pl.col("_long_n"),
        _pct(pl.col("_long") * annual),
        _fixed(pl.col("threshold"), 2),
    )
    return _finish(stats.select("portfolio_id", "value", "threshold", note.alias("note")), "volatility_regime", now)


def held_returns_matrix(returns: pl.DataFrame, weights: pl.DataFrame) -> tuple[np.ndarray, list[str]]:
    """The ``returns`` argument of ``correlation_triggers`` and its instrument ids, built for the
    instruments ``weights`` holds only.

    Inputs: ``returns`` (instrument_id, date, daily_return: long, one row per instrument and
    day) and ``weights`` (instrument_id, ...). Output: a ``T x N`` float matrix, one row per
    date of ``returns`` (every instrument's dates, in order: the correlation windows are the
    last rows of that calendar, held or not) and one column per held instrument with returns,
    NaN where it has none that day. Equal to pivoting every instrument and taking the held
    columns, without pivoting the instruments nobody holds (seconds on a large universe)."""
    held = returns.filter(pl.col("instrument_id").is_in(weights["instrument_id"].unique().implode()))
    wide = (returns.select(pl.col("date").unique())
            .join(held.pivot(on="instrument_id", index="date", values="daily_return"), on="date", how="left")
            .sort("date"))
    ids = [c for c in wide.columns if c != "date"]
    # (a frame without columns converts to 0 rows)
    return (wide.select(ids).to_numpy().astype(float) if ids else np.empty((wide.height, 0))), ids


def _correlation(x: np.ndarray) -> np.ndarray:
    """Pearson correlation of the columns of a finite ``x`` whose columns all vary."""
    z = x - x.mean(axis=0)
    z /= np.sqrt((z * z).sum(axis=0))
    c = z.T @ z
    np.fill_diagonal(c, 1.0)
    return np.clip(c, -1.0, 1.0)


def correlation_triggers(
    weights: pl.DataFrame | pl.LazyFrame,
    returns: np.ndarray,
    instrument_ids: Sequence[str],
    policies: Mapping[str, TriggerPolicy] | None,
    now: datetime,
) -> pl.DataFrame:
    """Correlation change triggers (``TRIGGERS_SCHEMA``, kind ``correlation_change``).

    Inputs: ``weights`` (portfolio_id, instrument_id, weight: f64 share of nav, shorts
    negative; one row per holding); ``returns`` a ``T x N`` matrix of daily instrument returns,
    rows in date order, NaN where missing, whose columns are ``instrument_ids`` (unique).
    Per portfolio, over its held instruments (weight != 0; cash and instruments not in
    ``instrument_ids`` have no data) whose last ``corr_long_window`` returns are all finite and
    vary in both windows, with ``w = |weight|``:
    ``D = sqrt( sum_{i != j} w_i w_j (Cs_ij - Cl_ij)^2 / sum_{i != j} w_i w_j )``,
    ``Cs`` / ``Cl`` the correlations over the last ``corr_short_window`` / ``corr_long_window``
    rows. Triggers when ``D > corr_threshold`` (value = D, threshold = corr_threshold); fewer
    than two such instruments: no row. The two matrices are computed once per distinct pair of
    windows among the portfolios' policies; each portfolio takes its submatrices.
    """
    x = np.asarray(returns, dtype=np.float64)
    if x.ndim != 2:
        raise ValueError(f"returns must be a 2-D T x N matrix, got {x.ndim} dimension(s)")
    ids = list(instrument_ids)
    if len(ids) != x.shape[1]:
        raise ValueError(f"instrument_ids has {len(ids)} ids, returns {x.shape[1]} columns")
    if len(set(ids)) != len(ids):
        raise ValueError("instrument_ids holds duplicate ids")
    columns = ("portfolio_id", "instrument_id", "weight")
    w = collected_with(weights, columns, "weights").select(columns)
    require_no_nulls(w, columns, "weights")
    require_unique(w, ["portfolio_id", "instrument_id"], "weights")
    require_finite(w, ["weight"], "weights")
    index = pl.DataFrame(
        {"instrument_id": ids, "_col": np.arange(len(ids), dtype=np.int64)}, schema={"instrument_id": pl.String, "_col": pl.Int64}
    )
    policy = _policy_table(policies, w["portfolio_id"]).select("portfolio_id", "corr_short_window", "corr_long_window", "corr_threshold")
    held = (
        w.filter(pl.col("weight") != 0)
        .join(index, on="instrument_id", how="inner")
        .join(policy, on="portfolio_id", how="left")
        .sort("portfolio_id", "instrument_id")
    )
    out: list[pl.DataFrame] = []
    pairs = held.select("corr_short_window", "corr_long_window").unique().sort("corr_short_window", "corr_long_window")
    for short_n, long_n in pairs.iter_rows():  # a handful of distinct window settings
        part = held.filter((pl.col("corr_short_window") == short_n) & (pl.col("corr_long_window") == long_n))
        if x.shape[0] < long_n:
            continue  # no instrument has a complete long window
        cols = np.unique(part["_col"].to_numpy())
        long_x, short_x = x[-long_n:, cols], x[-short_n:, cols]
        usable = np.isfinite(long_x).all(axis=0)
        usable &= np.ptp(np.where(np.isfinite(long_x), long_x, 0.0), axis=0) > 0
        usable &= np.ptp(np.where(np.isfinite(short_x), short_x, 0.0), axis=0) > 0
        cols = cols[usable]
        if cols.size < 2:
            continue
        cs, cl = _correlation(x[-short_n:, cols]), _correlation(x[-long_n:, cols])
        position = pl.DataFrame({"_col": cols, "_pos": np.arange(cols.size, dtype=np.int64)})
        part = part.join(position, on="_col", how="inner").sort("portfolio_id", "instrument_id")
        counts = part.group_by("portfolio_id", maintain_order=True).agg(pl.len().alias("_k"), pl.col("corr_threshold").first())
        pos, weight = part["_pos"].to_numpy(), np.abs(part["weight"].to_numpy())
        bounds = np.concatenate([[0], np.cumsum(counts["_k"].to_numpy().astype(np.int64))]).astype(np.int64)
        distance = np.full(counts.height, np.nan)
        for p in range(counts.height):  # one small submatrix per portfolio
            idx, wp = pos[bounds[p] : bounds[p + 1]], weight[bounds[p] : bounds[p + 1]]
            if idx.size < 2:
                continue
            pair_w = np.outer(wp, wp)
            np.fill_diagonal(pair_w, 0.0)
            total = pair_w.sum()
            if total > 0:
                change = cs[np.ix_(idx, idx)] - cl[np.ix_(idx, idx)]
                distance[p] = math.sqrt(float((pair_w * change * change).sum() / total))
        out.append(
            counts.with_columns(
                pl.Series("value", distance, dtype=pl.Float64, nan_to_null=True),
                pl.lit(short_n, dtype=pl.Int64).alias("_short_n"),
                pl.lit(long_n, dtype=pl.Int64).alias("_long_n"),
            )
        )
    schema = {
        "portfolio_id": pl.String, "_k": pl.UInt32, "corr_threshold": pl.Float64, "value": pl.Float64,
        "_short_n": pl.Int64, "_long_n": pl.Int64,
    }
    found = pl.concat([f.cast(schema) for f in out]) if out else pl.DataFrame(schema=schema)
    note = pl.format(
        "correlations moved by {} (weighted RMS, {}-day vs {}-day, {} instruments) above {}",
        _fixed(pl.col("value"), 3),
        pl.col("_short_n"),
        pl.col("_long_n"),
        pl.col("_k"),
        _fixed(pl.col("corr_threshold"), 3),
    )
    rows = found.filter(pl.col("value") > pl.col("corr_threshold")).select(
        "portfolio_id", "value", pl.col("corr_threshold").alias("threshold"), note.alias("note")
    )
    return _finish(rows, "correlation_change", now)


def risk_budget_triggers(
    risk: pl.DataFrame | pl.LazyFrame,
    var: pl.DataFrame | pl.LazyFrame,
    policies: Mapping[str, TriggerPolicy] | None,
    now: datetime,
) -> pl.DataFrame:
    """Risk budget triggers (``TRIGGERS_SCHEMA``, kind ``risk_budget``), one row per budget
    breached.

    Inputs: ``risk`` (``RISK_SCHEMA``: portfolio_id unique, annualised_tracking_error) and
    ``var`` (``VAR_SCHEMA`` rows the caller filtered to one method, confidence and horizon:
    portfolio_id unique, var_pct_nav; when method, confidence and horizon_days are present
    they must hold one combination, named in the note). Rules: ``annualised_tracking_error >
    tracking_error_budget`` (value = the tracking error) and ``var_pct_nav > var_budget``
    (value = var_pct_nav); a null figure or a policy without the budget does not trigger.
    """
    te = collected_with(risk, ("portfolio_id", "annualised_tracking_error"), "risk")
    v = collected_with(var, ("portfolio_id", "var_pct_nav"), "var")
    label = "VaR"
    described = [c for c in ("method", "confidence", "horizon_days") if c in v.columns]
    if v.height and described:
        combos = v.select(described).unique()
        if combos.height > 1:
            raise ValueError(f"var must be filtered to one ({', '.join(described)}); it holds {combos.height}")
        row = combos.row(0, named=True)
        parts = [str(row["method"])] if "method" in row else []
        if row.get("confidence") is not None:
            parts.append(f"{row['confidence'] * 100:g}%")
        if row.get("horizon_days") is not None:
            parts.append(f"{row['horizon_days']}-day")
        label = " ".join([*parts, "VaR"])
    te, v = te.select("portfolio_id", "annualised_tracking_error"), v.select("portfolio_id", "var_pct_nav")
    for frame, name in ((te, "risk"), (v, "var")):
        require_no_nulls(frame, ["portfolio_id"], name)
        require_unique(frame, ["portfolio_id"], name)
    require_finite(te, ["annualised_tracking_error"], "risk")
    require_finite(v, ["var_pct_nav"], "var")
    policy = _policy_table(policies, pl.concat([te["portfolio_id"], v["portfolio_id"]]))
    te_rows = (
        te.join(policy, on="portfolio_id", how="left")
        .filter(pl.col("annualised_tracking_error") > pl.col("tracking_error_budget"))
        .select(
            "portfolio_id",
            pl.col("annualised_tracking_error").alias("value"),
            pl.col("tracking_error_budget").alias("threshold"),
            pl.format(
                "tracking error {}% above budget {}%", _pct(pl.col("annualised_tracking_error")), _pct(pl.col("tracking_error_budget"))
            ).alias("note"),
        )
    )
    var_rows = (
        v.join(policy, on="portfolio_id", how="left")
        .filter(pl.col("var_pct_nav") > pl.col("var_budget"))
        .select(
            "portfolio_id",
            pl.col("var_pct_nav").alias("value"),
            pl.col("var_budget").alias("threshold"),
            pl.format(f"{label} {{}}% of nav above budget {{}}%", _pct(pl.col("var_pct_nav")), _pct(pl.col("var_budget"))).alias("note"),
        )
    )
    return _finish(pl.concat([te_rows, var_rows]), "risk_budget", now)


def cash_flow_triggers(
    cash_ledger: pl.DataFrame | pl.LazyFrame,
    nav: pl.DataFrame | pl.LazyFrame,
    since: datetime,
    policies: Mapping[str, TriggerPolicy] | None,
    now: datetime,
) -> pl.DataFrame:
    """Cash flow triggers (``TRIGGERS_SCHEMA``, kind ``cash_flow``).

    Inputs: ``cash_ledger`` (``CASH_LEDGER_SCHEMA`` rows plus ``amount_base``: the signed
    amount in the portfolio's base currency, null where it could not be converted; needs
    portfolio_id, ts, is_external, amount_base, and uses currency in notes when present);
    ``nav`` (portfolio_id unique, nav: the current nav, base currency); ``since`` (a naive
    datetime is UTC). Per portfolio, ``net`` = sum of amount_base over rows with
    ``is_external`` and ``ts >= since``. Rule: ``|net| / nav > cash_flow_threshold`` (value =
    ``|net| / nav``, threshold = cash_flow_threshold). Flagged rows (value and threshold null,
    the note says why): an external flow in the window without ``amount_base``; a non-zero net
    flow with nav unknown (absent or null) or <= 0. Sums run over the rows in a fixed order,
    so the same rows in any order give the same bits.
    """
    needed = ("portfolio_id", "ts", "is_external", "amount_base")
    ledger = collected_with(cash_ledger, needed, "cash_ledger")
    has_currency = "currency" in ledger.columns
    ledger = ledger.select(*needed, *(["currency"] if has_currency else []))
    require_no_nulls(ledger, ["portfolio_id", "ts", "is_external"], "cash_ledger")
    require_finite(ledger, ["amount_base"], "cash_ledger")
    navs = collected_with(nav, ("portfolio_id", "nav"), "nav").select("portfolio_id", pl.col("nav").cast(pl.Float64))
    require_no_nulls(navs, ["portfolio_id"], "nav")
    require_unique(navs, ["portfolio_id"], "nav")
    require_finite(navs, ["nav"], "nav")
    if not isinstance(since, datetime):
        raise ValueError(f"since must be a datetime, got {type(since).__name__}")
    amount = pl.col("amount_base").cast(pl.Float64)
    unconverted = amount.is_null()
    flows = (
        ledger.lazy()
        .with_columns(pl.col("ts").cast(TS))
        .filter(pl.col("is_external") & (pl.col("ts") >= pl.lit(as_utc(since), dtype=TS)))
        .sort("portfolio_id", "ts", "amount_base", nulls_last=True)
        .group_by("portfolio_id")
        .agg(
            ordered_sum(amount).alias("_net"),
            unconverted.sum().alias("_unconverted"),
            (
                pl.col("currency").filter(unconverted).unique().sort().str.join(", ")
                if has_currency
                else pl.lit("")
            ).alias("_currencies"),
        )
    )
    policy = _policy_table(policies, ledger["portfolio_id"]).select("portfolio_id", "cash_flow_threshold").lazy()
    net, nav_col, thr = pl.col("_net"), pl.col("nav"), pl.col("cash_flow_threshold")
    share = (net.abs() / nav_col).alias("_share")
    rows = (
        flows.join(navs.lazy(), on="portfolio_id", how="left")
        .join(policy, on="portfolio_id", how="left")
        .with_columns(pl.when(nav_col > 0).then(share).alias("_share"))
        .with_columns(
            (pl.col("_unconverted") > 0).alias("_no_base"),
            ((net != 0) & pl.col("_share").is_null()).alias("_no_nav"),
        )
        .filter(pl.col("_no_base") | pl.col("_no_nav") | (pl.col("_share") > thr))
    )
    direction = pl.when(net > 0).then(pl.lit("inflow")).otherwise(pl.lit("outflow"))
    flagged = pl.col("_no_base") | pl.col("_no_nav")
    note = (
        pl.when(pl.col("_no_base"))
        .then(
            pl.format(
                "{} {}{} since {}: share of nav unknown",
                pl.col("_unconverted"),
                pl.lit(NO_BASE_AMOUNT),
                pl.when(pl.col("_currencies") != "").then(pl.format(" ({})", pl.col("_currencies"))).otherwise(pl.lit("")),
                pl.lit(as_utc(since).strftime("%Y-%m-%d %H:%M UTC")),
            )
        )
        .when(pl.col("_no_nav"))
        .then(
            pl.format(
                "net external {} of {} (base currency) but {}: share of nav unknown",
                direction, _fixed(net.abs(), 2), pl.lit(NAV_NOT_MEASURABLE),
            )
        )
        .otherwise(pl.format("net external {} {}% of nav above {}%", direction, _pct(pl.col("_share")), _pct(thr)))
    )
    out = rows.select(
        "portfolio_id",
        pl.when(~flagged).then(pl.col("_share")).alias("value"),
        pl.when(~flagged).then(thr).alias("threshold"),
        note.alias("note"),
    )
    return _finish(out, "cash_flow", now)


# --- combining --------------------------------------------------------------------------------


def _checked_triggers(frame: pl.DataFrame | pl.LazyFrame, name: str) -> pl.DataFrame:
    df = collected_with(frame, TRIGGERS_SCHEMA, name).select([pl.col(c).cast(t) for c, t in TRIGGERS_SCHEMA.items()])
    require_no_nulls(df, ["portfolio_id", "kind", "priority"], name)
    require_finite(df, ["value", "threshold"], name)
    unknown = sorted(set(df["kind"].unique().to_list()) - set(TRIGGER_KINDS))
    if unknown:
        raise ValueError(f"{name} holds unknown trigger kind(s) {', '.join(unknown)} (allowed: {', '.join(TRIGGER_KINDS)})")
    expected = pl.DataFrame(
        {"kind": list(PRIORITIES), "_expected": list(PRIORITIES.values())}, schema={"kind": pl.String, "_expected": pl.Int64}
    )
    wrong = df.join(expected, on="kind").filter(pl.col("priority") != pl.col("_expected"))
    if wrong.height:
        kind, priority, want = wrong.select("kind", "priority", "_expected").row(0)
        raise ValueError(f"{name}: a {kind} trigger has priority {priority}, the documented priority is {want}")
    return df


def all_triggers(*frames: pl.DataFrame | pl.LazyFrame) -> pl.DataFrame:
    """The trigger frames (``TRIGGERS_SCHEMA`` columns) concatenated, checked and sorted by
    (portfolio_id, priority, kind, note). ``ValueError`` on a missing column, a null id, kind
    or priority, a kind not in ``TRIGGER_KINDS``, or a priority other than ``PRIORITIES``'."""
    checked = [_checked_triggers(f, f"trigger frame {i + 1}") for i, f in enumerate(frames)]
    if not checked:
        return pl.DataFrame(schema=TRIGGERS_SCHEMA)
    return pl.concat(checked).sort(_SORT)


def rebalance_decisions(triggers: pl.DataFrame | pl.LazyFrame, portfolios: pl.DataFrame | pl.LazyFrame) -> pl.DataFrame:
    """One decision per portfolio of ``portfolios`` (``DECISIONS_SCHEMA``, sorted by
    portfolio_id).

    Inputs: ``triggers`` (``TRIGGERS_SCHEMA``, e.g. ``all_triggers``' result) and
    ``portfolios`` (portfolio_id unique, status in ``contract.PORTFOLIO_STATUSES``). Rules:
    ACTIVE with a trigger -> REBALANCE ("triggered by <kinds>"); ACTIVE without -> SKIP
    ("no trigger"); LIQUIDATING -> LIQUIDATE, triggered or not (``LIQUIDATING_REASON``);
    SUSPENDED / CLOSED -> SKIP ("portfolio is SUSPENDED" / "... CLOSED") even when triggered.
    trigger_kinds: the distinct kinds that fired, by priority then kind (empty when none);
    top_priority: their smallest priority (null when none). ``ValueError`` on a trigger for a
    portfolio not in ``portfolios``, an unknown status, or a duplicate portfolio.
    """
    t = _checked_triggers(triggers, "triggers")
    p = collected_with(portfolios, ("portfolio_id", "status"), "portfolios").select("portfolio_id", "status")
    require_no_nulls(p, ["portfolio_id", "status"], "portfolios")
    require_unique(p, ["portfolio_id"], "portfolios")
    bad = sorted(set(p["status"].unique().to_list()) - set(PORTFOLIO_STATUSES))
    if bad:
        raise ValueError(f"portfolios holds unknown status(es) {', '.join(bad)} (allowed: {', '.join(PORTFOLIO_STATUSES)})")
    unknown = sorted(set(t["portfolio_id"].unique().to_list()) - set(p["portfolio_id"].to_list()))
    if unknown:
        raise ValueError(f"triggers name unknown portfolio(s): {', '.join(unknown[:20])}")
    fired = (
        t.select("portfolio_id", "kind", "priority")
        .unique()
        .sort("portfolio_id", "priority", "kind")
        .group_by("portfolio_id", maintain_order=True)
        .agg(pl.col("kind").alias("trigger_kinds"), pl.col("priority").min().alias("top_priority"))
    )
    status, kinds = pl.col("status"), pl.col("trigger_kinds")
    triggered = kinds.list.len() > 0
    out = (
        p.join(fired, on="portfolio_id", how="left")
        .with_columns(kinds.fill_null(pl.lit([], dtype=pl.List(pl.String))))
        .with_columns(
            pl.when(status == "LIQUIDATING").then(pl.lit("LIQUIDATE"))
            .when((status == "ACTIVE") & triggered).then(pl.lit("REBALANCE"))
            .otherwise(pl.lit("SKIP"))
            .alias("action"),
            pl.when(status == "LIQUIDATING").then(pl.lit(LIQUIDATING_REASON))
            .when(status != "ACTIVE").then(pl.format("portfolio is {}", status))
            .when(triggered).then(pl.format("triggered by {}", kinds.list.join(", ")))
            .otherwise(pl.lit(NO_TRIGGER))
            .alias("reason"),
        )
    )
    return out.select([pl.col(c).cast(dtype) for c, dtype in DECISIONS_SCHEMA.items()]).sort("portfolio_id")
