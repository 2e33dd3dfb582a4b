"""Drift against target weights: the targets in force on a day, actual against target weights
per instrument, sector and sleeve, tolerance bands (the "5/25" rule), the trend of the drift
figure and the alerts built on them.

Targets (landing kind ``targets``) are weights per (portfolio, sleeve ``strategy_id``,
instrument) with an ``effective_date``. Rules (``targets_in_force``):

- **In force on day d.** Per (portfolio, sleeve), the rows of the latest ``effective_date`` <= d.
  A newer effective date replaces the sleeve's whole set: an instrument absent from the newer
  set has target 0. A null ``strategy_id`` is a sleeve of its own (key ``"UNASSIGNED"``).
- **Valid.** Every weight is present and >= 0, and either every sleeve sums to 1 or the whole
  portfolio sums to 1 (each within ``TARGET_TOLERANCE`` = 1e-6). Otherwise the portfolio is
  listed in the issues frame (portfolio_id, date, reason) and its drift is not computed.
- **Normalised.** With ``S`` the sum of the portfolio's weights in force, an instrument's
  portfolio-level target is ``target_weight / S``. When every sleeve sums to 1 (``k`` sleeves,
  ``S = k``) the sleeves get equal shares ``1/k``; when the portfolio sums to 1 (``S = 1``) the
  weights are kept. A sleeve's target share is the sum of its normalised weights, ``s_k / S``.

Actual weights (``drift``): ``actual = market_value / nav``, cash rows (``CASH:<ccy>``) included,
so uninvested cash is an underweight of the invested targets (and an overweight of cash).
Per portfolio and level (instrument, sector, strategy):

- ``drift = actual - target``; ``abs_drift = |drift|``; ``relative_drift = drift / target``
  (null when the target is 0). Held but not targeted: target 0; targeted but not held: actual 0.
- **Sector** of an instrument: its sector in the holdings where held, else in ``instruments``;
  a null sector is ``"CASH"`` for a ``CASH:`` instrument and ``"UNCLASSIFIED"`` otherwise.
- **Strategy**: holdings by the lot's sleeve, targets by the sleeve's share; a null sleeve is
  ``"UNASSIGNED"`` (cash, whose strategy is null, lands there).
- **Portfolio drift figure** = ``0.5 * sum over instruments of |actual - target|`` (half the L1
  distance: the share of the portfolio that would have to trade to reach the targets).

Bands (the "5/25" rule). Defaults ``ABS_BAND`` = 0.05 and ``REL_BAND`` = 0.25, overridable per
portfolio. An instrument (or sector: same bands) breaches when ``|drift| > abs_band`` OR
(``target > 0`` and ``|drift| / target > rel_band``). The comparison is strict: a drift exactly
at the band is not a breach; "exactly" allows ``BAND_TOLERANCE`` = 1e-12 for the rounding of
``market_value / nav`` (0.40 - 0.35 is 0.05000000000000004 in binary floating point). The
portfolio breaches when its drift figure > ``portfolio_band`` (default ``PORTFOLIO_BAND`` = 0.05).
Sleeves (strategy level) are reported without a band.

Trend (``drift_trend``): per portfolio, the least-squares slope of the drift figure on the
business-day index (Monday to Friday less the given holidays) over its last ``window``
observations: ``slope = sum((x - mean x)(y - mean y)) / sum((x - mean x)^2)``, in drift per
business day; null below 3 observations.

Alerts (``drift_alerts``): one row per breach with a severity from ``ratio`` = how far past the
band, ``|drift| / abs_band`` (abs band) or ``(|drift| / target) / rel_band`` (rel band; when both
bands are breached the larger ratio is reported): ``ratio < 1.5`` LOW, ``< 2`` MEDIUM, else HIGH;
and one ``ERROR`` row per issue (targets invalid, no targets, nav unknown or <= 0, a market value
unknown), so no portfolio is skipped silently. A portfolio the caller skips by policy (``skipped``:
a CLOSED portfolio, all cash by design) is listed in the summary as "not measured" with its
reason, and raises no alert.

Sums over groups use ``ordering.ordered_sum`` on rows in a fixed order and quotients are
numpy's correctly rounded division (``_divide``), so the same input, in any row order and
whatever other portfolios come with it, gives the same bits.
"""

from __future__ import annotations

from collections.abc import Iterable
from datetime import date

import numpy as np
import polars as pl

from transforms.contract import UNCLASSIFIED
from transforms.frame_checks import collected_with, require_no_nulls, require_unique

from transforms.ordering import ordered_sum
from transforms.contract import DRIFT_SCHEMA, DRIFT_SUMMARY_SCHEMA, DRIFT_ALERTS_SCHEMA  # noqa: F401 (published schemas, defined in the contract)

ABS_BAND = 0.05
REL_BAND = 0.25
PORTFOLIO_BAND = 0.05
TARGET_TOLERANCE = 1e-6
BAND_TOLERANCE = 1e-12
MIN_TREND_OBSERVATIONS = 3
UNASSIGNED = "UNASSIGNED"
CASH_SECTOR = "CASH"
CASH_PREFIX = "CASH:"
LEVELS = ("instrument", "sector", "strategy")
SEVERITIES = ("LOW", "MEDIUM", "HIGH", "ERROR")
SEVERITY_MEDIUM_FROM = 1.5
SEVERITY_HIGH_FROM = 2.0

NO_TARGETS = "no targets"
NO_NAV = "no nav"
NOT_TARGETED = "not targeted"
NOT_HELD = "targeted, not held"
NO_BAND = "no band at strategy level"

TARGETS_IN_FORCE_SCHEMA: dict[str, pl.DataType] = {
    "date": pl.Date,
    "portfolio_id": pl.String,
    "strategy_id": pl.String,
    "instrument_id": pl.String,
    "effective_date": pl.Date,
    "raw_weight": pl.Float64,  # the weight as sent
    "target_weight": pl.Float64,  # raw_weight / (sum of the portfolio's weights in force)
    "sleeve_share": pl.Float64,  # the sleeve's share of the portfolio: sum of its target_weight
}

ISSUES_SCHEMA: dict[str, pl.DataType] = {
    "portfolio_id": pl.String,
    "date": pl.Date,
    "reason": pl.String,
}


DRIFT_TREND_SCHEMA: dict[str, pl.DataType] = {
    "portfolio_id": pl.String,
    "first_date": pl.Date,
    "last_date": pl.Date,
    "observations": pl.Int64,
    "slope": pl.Float64,  # drift per business day
    "note": pl.String,
}


_TARGET_COLUMNS = ("portfolio_id", "strategy_id", "instrument_id", "target_weight", "effective_date")
_HOLDING_COLUMNS = ("portfolio_id", "strategy_id", "instrument_id", "sector", "market_value")


# --- helpers ----------------------------------------------------------------------------------


def _finite(e: pl.Expr) -> pl.Expr:
    """True where ``e`` is a number (not null, NaN or infinite)."""
    return e.is_not_null() & e.is_finite().fill_null(False)


def _cast(frame: pl.DataFrame, schema: dict[str, pl.DataType], keys: list[str]) -> pl.DataFrame:
    return frame.select([pl.col(c).cast(t) for c, t in schema.items()]).sort(keys, nulls_last=False)


def _exact_quotient(columns: list[pl.Series]) -> pl.Series:
    with np.errstate(divide="ignore", invalid="ignore"):
        q = columns[0].cast(pl.Float64).to_numpy() / columns[1].cast(pl.Float64).to_numpy()
    return pl.Series(np.where(np.isfinite(q), q, np.nan), dtype=pl.Float64, nan_to_null=True)


def _divide(num: pl.Expr, den: pl.Expr) -> pl.Expr:
    """``num / den`` correctly rounded (numpy's IEEE 754 division); null where either is null
    or the quotient is not finite.

    Polars divides a column by a scalar (a literal, or a column it holds as one value, e.g.
    after a join with a one-row frame) as a product with the reciprocal, one unit in the last
    place off the quotient (pola-rs/polars#23741, #27753): a portfolio's weights would then
    depend on whether it was computed alone or with others."""
    return pl.map_batches([num, den], _exact_quotient, return_dtype=pl.Float64, is_elementwise=True)


def _pct(e: pl.Expr) -> pl.Expr:
    """A fraction as a percentage with one decimal, e.g. 0.0625 -> "6.2"."""
    return (e * 100.0).round(1).cast(pl.String)


def _fixed6(e: pl.Expr) -> pl.Expr:
    """A number with six decimals, e.g. 0.93 -> "0.930000" (the precision of the tolerance)."""
    micro = (e * 1e6).round().cast(pl.Int64, strict=False)
    whole = (micro.abs() // 1_000_000).cast(pl.String)
    frac = (micro.abs() % 1_000_000).cast(pl.String).str.zfill(6)
    return pl.format("{}{}.{}", pl.when(micro < 0).then(pl.lit("-")).otherwise(pl.lit("")), whole, frac)


def _band_label(e: pl.Expr) -> pl.Expr:
    """A band as a whole percentage where it is one: 0.05 -> "5", 0.025 -> "2.5"."""
    return (e * 100.0).round(4).cast(pl.String).str.replace(r"\.0$", "")


# --- targets ------------------------------------------------------------------------------------


def targets_in_force(
    targets: pl.DataFrame | pl.LazyFrame, as_of: date, *, tolerance: float = TARGET_TOLERANCE
) -> tuple[pl.DataFrame, pl.DataFrame]:
    """The normalised portfolio-level targets in force on ``as_of`` and the portfolios whose
    targets are invalid.

    Input: landing ``targets`` rows: portfolio_id (str), strategy_id (str, may be null),
    instrument_id (str), target_weight (f64), effective_date (date). The key (portfolio_id,
    strategy_id, instrument_id, effective_date) must be unique and portfolio_id, instrument_id
    and effective_date present, else ``ValueError``.

    Rule: per (portfolio, sleeve) the rows of the latest effective_date <= ``as_of``; a
    portfolio's set is valid when every weight is present, finite and >= 0 and either every
    sleeve or the whole portfolio sums to 1 (within ``tolerance``). Valid portfolios get
    ``target_weight = raw_weight / S`` (``S`` the sum of their weights in force) and
    ``sleeve_share = (sum of the sleeve's raw weights) / S``.

    Returns ``(targets, issues)``: ``TARGETS_IN_FORCE_SCHEMA`` rows of the valid portfolios,
    sorted by (portfolio_id, strategy_id, instrument_id), and ``ISSUES_SCHEMA`` rows (one per
    problem of an invalid portfolio, e.g. "targets sum to 0.930000 (sleeve TACTICAL)"), sorted
    by (portfolio_id, date, reason).
    """
    t = collected_with(targets, _TARGET_COLUMNS, "targets").select(_TARGET_COLUMNS)
    require_no_nulls(t, ("portfolio_id", "instrument_id", "effective_date"), "targets")
    require_unique(t, ["portfolio_id", "strategy_id", "instrument_id", "effective_date"], "targets")
    if not isinstance(as_of, date):
        raise ValueError(f"as_of must be a date, got {as_of!r}")
    sleeve = pl.col("strategy_id").fill_null(UNASSIGNED)
    w = pl.col("target_weight")
    t = (
        t.with_columns(w.cast(pl.Float64))
        .filter(pl.col("effective_date") <= as_of)
        .filter(pl.col("effective_date") == pl.col("effective_date").max().over("portfolio_id", "strategy_id"))
        .sort("portfolio_id", "strategy_id", "instrument_id", nulls_last=False)
    )
    where = pl.format("(instrument {}, sleeve {})", pl.col("instrument_id"), sleeve)
    bad_rows = t.filter(~_finite(w) | (w < 0)).select(
        "portfolio_id",
        pl.when(~_finite(w))
        .then(pl.format("target weight missing or not a number {}", where))
        .otherwise(pl.format("negative target weight {} {}", _fixed6(w), where))
        .alias("reason"),
    )
    sleeves = t.group_by("portfolio_id", "strategy_id", maintain_order=True).agg(ordered_sum(w).alias("sleeve_sum"))
    totals = sleeves.group_by("portfolio_id", maintain_order=True).agg(
        ordered_sum(pl.col("sleeve_sum")).alias("total"),
        ((pl.col("sleeve_sum") - 1.0).abs() <= tolerance).all().alias("sleeves_ok"),
        pl.len().alias("sleeves"),
    )
    off = sleeves.join(totals, on="portfolio_id", maintain_order="left").filter(
        ~pl.col("sleeves_ok") & ((pl.col("total") - 1.0).abs() > tolerance)
    )
    # a sum over a missing weight means nothing: that portfolio is reported for the weight
    unknown_weight = t.filter(~_finite(w))["portfolio_id"].implode()
    sum_rows = (
        off.filter(((pl.col("sleeve_sum") - 1.0).abs() > tolerance) & ~pl.col("portfolio_id").is_in(unknown_weight))
        .group_by("portfolio_id", maintain_order=True)
        .agg(
            pl.format("targets sum to {} (sleeve {})", _fixed6(pl.col("sleeve_sum")), sleeve)
            .str.join("; ")
            .alias("sums"),
            pl.col("total").first(),
            pl.col("sleeves").first(),
        )
        .select(
            "portfolio_id",
            pl.when(pl.col("sleeves") > 1)
            .then(
                pl.format(
                    "{}; {} over the portfolio (each sleeve or the whole portfolio must sum to 1)",
                    pl.col("sums"),
                    _fixed6(pl.col("total")),
                )
            )
            .otherwise(pl.col("sums"))
            .alias("reason"),
        )
    )
    issues = pl.concat([bad_rows, sum_rows]).with_columns(pl.lit(as_of).alias("date"))
    bad = issues["portfolio_id"].unique()
    valid = (
        t.filter(~pl.col("portfolio_id").is_in(bad.implode()))
        .join(sleeves, on=["portfolio_id", "strategy_id"], nulls_equal=True)
        .join(totals.select("portfolio_id", "total"), on="portfolio_id")
        .with_columns(
            pl.lit(as_of).alias("date"),
            w.alias("raw_weight"),
            _divide(w, pl.col("total")).alias("target_weight"),
            _divide(pl.col("sleeve_sum"), pl.col("total")).alias("sleeve_share"),
        )
    )
    return (
        _cast(valid, TARGETS_IN_FORCE_SCHEMA, ["portfolio_id", "strategy_id", "instrument_id"]),
        _cast(issues, ISSUES_SCHEMA, ["portfolio_id", "date", "reason"]),
    )


# --- drift --------------------------------------------------------------------------------------


def _bands(
    bands: pl.DataFrame | pl.LazyFrame | None,
    portfolios: pl.DataFrame,
    abs_band: float,
    rel_band: float,
    portfolio_band: float,
) -> pl.DataFrame:
    """Per portfolio of ``portfolios``: band_abs, band_rel, portfolio_band (overrides, their
    nulls falling back to the defaults)."""
    for name, value in (("abs_band", abs_band), ("rel_band", rel_band), ("portfolio_band", portfolio_band)):
        if not (isinstance(value, (int, float)) and np.isfinite(value) and value > 0):
            raise ValueError(f"{name} must be a positive number, got {value!r}")
    columns = ("portfolio_id", "abs_band", "rel_band")
    if bands is None:
        b = pl.DataFrame(schema={c: pl.String if c == "portfolio_id" else pl.Float64 for c in columns})
    else:
        b = collected_with(bands, columns, "bands")
    if "portfolio_band" not in b.columns:
        b = b.with_columns(pl.lit(None, dtype=pl.Float64).alias("portfolio_band"))
    b = b.select("portfolio_id", pl.col("abs_band", "rel_band", "portfolio_band").cast(pl.Float64))
    require_no_nulls(b, ("portfolio_id",), "bands")
    require_unique(b, ["portfolio_id"], "bands")
    for c in ("abs_band", "rel_band", "portfolio_band"):
        wrong = b.filter(pl.col(c).is_not_null() & ~(_finite(pl.col(c)) & (pl.col(c) > 0)))
        if wrong.height:
            raise ValueError(f"bands: {c} must be positive, got {wrong[c][0]} for {wrong['portfolio_id'][0]}")
    return portfolios.join(b, on="portfolio_id", how="left").select(
        "portfolio_id",
        pl.col("abs_band").fill_null(abs_band).alias("band_abs"),
        pl.col("rel_band").fill_null(rel_band).alias("band_rel"),
        pl.col("portfolio_band").fill_null(portfolio_band),
    )


def _levels_joined(actual: pl.DataFrame, target: pl.DataFrame, keys: list[str]) -> pl.DataFrame:
    """Actual and target weights side by side: a side that lacks a key counts 0 (and the note
    says which side lacked it)."""
    both = actual.join(target, on=keys, how="full", coalesce=True)
    return both.select(
        *keys,
        pl.col("actual_weight").fill_null(0.0),
        pl.col("target_weight").fill_null(0.0),
        pl.when(pl.col("actual_weight").is_null())
        .then(pl.lit(NOT_HELD))
        .when(pl.col("target_weight").is_null())
        .then(pl.lit(NOT_TARGETED))
        .alias("note"),
    )


CLOSED_REASON = "portfolio is CLOSED"


def closed_portfolios(portfolios: pl.DataFrame | pl.LazyFrame) -> pl.DataFrame:
    """The ``skipped`` frame of ``drift`` for a portfolios table (portfolio_id, status): one row
    (portfolio_id, reason) per CLOSED portfolio, which holds only cash by design (measured, it
    would show as entirely off its targets)."""
    return (
        portfolios.lazy()
        .filter(pl.col("status") == "CLOSED")
        .select(pl.col("portfolio_id").cast(pl.String), pl.lit(CLOSED_REASON).alias("reason"))
        .collect()
    )


def drift(
    holdings: pl.DataFrame | pl.LazyFrame,
    navs: pl.DataFrame | pl.LazyFrame,
    targets: pl.DataFrame | pl.LazyFrame,
    instruments: pl.DataFrame | pl.LazyFrame,
    as_of: date,
    *,
    target_issues: pl.DataFrame | pl.LazyFrame | None = None,
    skipped: pl.DataFrame | pl.LazyFrame | None = None,
    bands: pl.DataFrame | pl.LazyFrame | None = None,
    abs_band: float = ABS_BAND,
    rel_band: float = REL_BAND,
    portfolio_band: float = PORTFOLIO_BAND,
) -> dict[str, pl.DataFrame]:
    """Drift of actual against target weights on ``as_of``, per instrument, sector and sleeve.

    Inputs:

    - ``holdings``: portfolio_id, strategy_id (the lot's sleeve, may be null), instrument_id,
      sector (null for cash), market_value (f64, base currency, shorts negative); cash is a
      row ``CASH:<ccy>`` with null strategy and sector. Several rows of one (portfolio, sleeve,
      instrument), e.g. lots, are added up.
    - ``navs``: portfolio_id (unique), nav (f64).
    - ``targets``: the first frame of ``targets_in_force(.., as_of)`` (``TARGETS_IN_FORCE_SCHEMA``).
    - ``target_issues``: its second frame; those portfolios are reported with their reasons
      (not as having no targets).
    - ``skipped``: optional portfolio_id, reason: portfolios not to be measured by policy (a
      CLOSED portfolio is all cash by design, not an underweight). They are listed in the
      summary with null figures and ``note`` = "not measured: <reason>", and raise no issue
      (so no alert), whatever else is wrong with them.
    - ``instruments``: instrument_id (unique), sector: the sector of targeted instruments that
      are not held (``ValueError`` when a targeted instrument is in neither).
    - ``bands``: optional per-portfolio overrides: portfolio_id, abs_band, rel_band and
      optionally portfolio_band; nulls (and portfolios absent) take ``abs_band``, ``rel_band``,
      ``portfolio_band``.

    Rule: ``actual = market_value / nav``; ``drift = actual - target``; instrument and sector
    rows breach when ``|drift| > band_abs`` or (``target > 0`` and ``|drift| / target >
    band_rel``), strictly (a drift at the band is not a breach); sleeves have no band. The
    portfolio figure ``drift = 0.5 * sum_instruments |actual - target|`` breaches when above
    ``portfolio_band``. A portfolio (of holdings, navs, targets or target issues) is not
    computed, and is listed in ``issues``, when its targets are invalid or absent, its nav is
    missing, not a number or <= 0, or a holding's market value is missing or not a number.

    Returns a dict of frames:

    - ``"drift"``: ``DRIFT_SCHEMA``, one row per (portfolio_id, level, key), sorted so;
    - ``"summary"``: ``DRIFT_SUMMARY_SCHEMA``, one row per portfolio (null figures and the
      reasons in ``note`` for a portfolio with an issue), sorted by portfolio_id;
    - ``"issues"``: ``ISSUES_SCHEMA``, sorted by (portfolio_id, date, reason).
    """
    h = collected_with(holdings, _HOLDING_COLUMNS, "holdings").select(_HOLDING_COLUMNS)
    require_no_nulls(h, ("portfolio_id", "instrument_id"), "holdings")
    n = collected_with(navs, ("portfolio_id", "nav"), "navs").select("portfolio_id", pl.col("nav").cast(pl.Float64))
    require_no_nulls(n, ("portfolio_id",), "navs")
    require_unique(n, ["portfolio_id"], "navs")
    t = collected_with(targets, TARGETS_IN_FORCE_SCHEMA, "targets").select(list(TARGETS_IN_FORCE_SCHEMA))
    require_no_nulls(t, ("portfolio_id", "instrument_id", "target_weight"), "targets")
    require_unique(t, ["portfolio_id", "strategy_id", "instrument_id"], "targets")
    other_days = t.filter(pl.col("date") != as_of)
    if other_days.height:
        raise ValueError(f"targets are those in force on {other_days['date'][0]}, not on {as_of}")
    inst = collected_with(instruments, ("instrument_id", "sector"), "instruments").select("instrument_id", "sector")
    require_no_nulls(inst, ("instrument_id",), "instruments")
    require_unique(inst, ["instrument_id"], "instruments")
    if target_issues is None:
        ti = pl.DataFrame(schema=ISSUES_SCHEMA)
    else:
        ti = collected_with(target_issues, ISSUES_SCHEMA, "target_issues").select(list(ISSUES_SCHEMA))
    if skipped is None:
        sk = pl.DataFrame(schema={"portfolio_id": pl.String, "reason": pl.String})
    else:
        sk = collected_with(skipped, ("portfolio_id", "reason"), "skipped").select(
            pl.col("portfolio_id").cast(pl.String), pl.col("reason").cast(pl.String)
        )
        require_no_nulls(sk, ("portfolio_id", "reason"), "skipped")
        sk = sk.group_by("portfolio_id").agg(pl.col("reason").unique().sort().str.join("; "))

    mv = pl.col("market_value")
    # one row order for every sum, whatever the input order
    h = h.with_columns(mv.cast(pl.Float64)).sort(
        "portfolio_id", "instrument_id", "strategy_id", "market_value", nulls_last=False
    )
    t = t.sort("portfolio_id", "instrument_id", "strategy_id", nulls_last=False)
    universe = (
        pl.concat([f.select("portfolio_id") for f in (h, n, t, ti, sk)])
        .unique()
        .sort("portfolio_id")
    )

    # --- portfolios that cannot be computed
    nav = pl.col("nav")
    nav_issues = (
        universe.join(n, on="portfolio_id", how="left")
        .filter(~_finite(nav) | (nav <= 0))
        .select(
            "portfolio_id",
            pl.when(nav.is_null())
            .then(pl.lit(NO_NAV))
            .when(~_finite(nav))
            .then(pl.lit("nav is not a number"))
            .otherwise(pl.format("nav {} is zero or negative", nav.round(2)))
            .alias("reason"),
        )
    )
    value_issues = (
        h.filter(~_finite(mv))
        .group_by("portfolio_id", maintain_order=True)
        .agg(pl.len(), pl.col("instrument_id").first())
        .select(
            "portfolio_id",
            pl.format("{} holding(s) without a market value (first: {})", pl.col("len"), pl.col("instrument_id")).alias(
                "reason"
            ),
        )
    )
    known = pl.concat([t.select("portfolio_id"), ti.select("portfolio_id")])["portfolio_id"].implode()
    no_targets = universe.filter(~pl.col("portfolio_id").is_in(known)).with_columns(pl.lit(NO_TARGETS).alias("reason"))
    issues = pl.concat(
        [
            ti.select("portfolio_id", "date", "reason"),
            *(
                f.select("portfolio_id", pl.lit(as_of).alias("date"), "reason")
                for f in (no_targets, nav_issues, value_issues)
            ),
        ]
    )
    skipped_ids = sk["portfolio_id"].implode()
    issues = _cast(issues.filter(~pl.col("portfolio_id").is_in(skipped_ids)), ISSUES_SCHEMA, ["portfolio_id", "date", "reason"])
    ok_ids = universe.filter(
        ~pl.col("portfolio_id").is_in(issues["portfolio_id"].implode()) & ~pl.col("portfolio_id").is_in(skipped_ids)
    )
    ok = pl.col("portfolio_id").is_in(ok_ids["portfolio_id"].implode())
    band_frame = _bands(bands, universe, abs_band, rel_band, portfolio_band)

    hk = h.filter(ok).join(n, on="portfolio_id", maintain_order="left")
    tk = t.filter(ok)
    weight = _divide(pl.col("mv"), pl.col("nav")).alias("actual_weight")

    # --- instrument level
    held = (
        hk.group_by("portfolio_id", "instrument_id", maintain_order=True)
        .agg(ordered_sum(mv).alias("mv"), nav.first())
        .select("portfolio_id", "instrument_id", weight)
    )
    targeted = tk.group_by("portfolio_id", "instrument_id", maintain_order=True).agg(
        ordered_sum(pl.col("target_weight")).alias("target_weight")
    )
    by_instrument = _levels_joined(held, targeted, ["portfolio_id", "instrument_id"]).sort(
        "portfolio_id", "instrument_id"
    )

    # --- sector level: one sector per instrument, the holdings' where held
    held_sector = (
        h.filter(pl.col("sector").is_not_null())
        .group_by("instrument_id")
        .agg(pl.col("sector").n_unique().alias("sectors"), pl.col("sector").min().alias("held_sector"))
    )
    conflict = held_sector.filter(pl.col("sectors") > 1)
    if conflict.height:
        raise ValueError(f"holdings give instrument {conflict['instrument_id'].sort()[0]} more than one sector")
    sectors = inst.join(held_sector.drop("sectors"), on="instrument_id", how="full", coalesce=True).select(
        "instrument_id", pl.coalesce("held_sector", "sector").alias("sector")
    )
    by_instrument = by_instrument.join(sectors, on="instrument_id", how="left", maintain_order="left")
    unknown = by_instrument.filter(
        (pl.col("note") == NOT_HELD)
        & ~pl.col("instrument_id").is_in(sectors["instrument_id"].implode())
        & ~pl.col("instrument_id").str.starts_with(CASH_PREFIX)
    )
    if unknown.height:
        missing = ", ".join(unknown["instrument_id"].unique().sort().head(5).to_list())
        raise ValueError(f"targeted instruments missing from instruments (no sector): {missing}")
    by_instrument = by_instrument.with_columns(
        pl.when(pl.col("sector").is_not_null())
        .then(pl.col("sector"))
        .when(pl.col("instrument_id").str.starts_with(CASH_PREFIX))
        .then(pl.lit(CASH_SECTOR))
        .otherwise(pl.lit(UNCLASSIFIED))
        .alias("sector_key")
    )
    by_sector = (
        by_instrument.group_by("portfolio_id", "sector_key", maintain_order=True)
        .agg(
            ordered_sum(pl.col("actual_weight")).alias("actual_weight"),
            ordered_sum(pl.col("target_weight")).alias("target_weight"),
        )
        .with_columns(pl.lit(None, dtype=pl.String).alias("note"))
    )

    # --- strategy level
    skey = pl.col("strategy_id").fill_null(UNASSIGNED).alias("strategy_key")
    held_s = (
        hk.with_columns(skey)
        .sort("portfolio_id", "strategy_key", "instrument_id", "strategy_id", "market_value", nulls_last=False)
        .group_by("portfolio_id", "strategy_key", maintain_order=True)
        .agg(ordered_sum(mv).alias("mv"), nav.first())
        .select("portfolio_id", "strategy_key", weight)
    )
    targeted_s = (
        tk.with_columns(skey)
        .sort("portfolio_id", "strategy_key", "instrument_id", "strategy_id", nulls_last=False)
        .group_by("portfolio_id", "strategy_key", maintain_order=True)
        .agg(ordered_sum(pl.col("target_weight")).alias("target_weight"))
    )
    by_strategy = _levels_joined(held_s, targeted_s, ["portfolio_id", "strategy_key"])

    levels = (
        ("instrument", by_instrument, "instrument_id"),
        ("sector", by_sector, "sector_key"),
        ("strategy", by_strategy, "strategy_key"),
    )
    rows = pl.concat(
        [
            frame.select(
                "portfolio_id",
                pl.lit(level).alias("level"),
                pl.col(key).alias("key"),
                "actual_weight",
                "target_weight",
                "note",
            )
            for level, frame, key in levels
        ]
    ).join(band_frame, on="portfolio_id", how="left")
    a, tw = pl.col("actual_weight"), pl.col("target_weight")
    d, ad = pl.col("drift"), pl.col("abs_drift")
    banded = pl.col("level") != "strategy"
    rows = (
        rows.with_columns((a - tw).alias("drift"))
        .with_columns(
            d.abs().alias("abs_drift"),
            pl.when(tw != 0).then(_divide(d, tw)).alias("relative_drift"),
            pl.when(banded).then(pl.col("band_abs")).alias("band_abs"),
            pl.when(banded).then(pl.col("band_rel")).alias("band_rel"),
            pl.when(banded)
            .then(pl.col("note"))
            .when(pl.col("note").is_null())
            .then(pl.lit(NO_BAND))
            .otherwise(pl.format("{}; {}", pl.col("note"), pl.lit(NO_BAND)))
            .alias("note"),
        )
        .with_columns(
            pl.when(banded)
            .then(
                (ad > pl.col("band_abs") + BAND_TOLERANCE)
                | (pl.col("relative_drift").abs() > pl.col("band_rel") + BAND_TOLERANCE).fill_null(False)
            )
            .alias("breach"),
            pl.lit(as_of).alias("date"),
        )
    )
    rows = _cast(rows, DRIFT_SCHEMA, ["portfolio_id", "level", "key"])

    # --- one figure per portfolio
    instrument_rows = rows.filter(pl.col("level") == "instrument")
    figures = instrument_rows.group_by("portfolio_id", maintain_order=True).agg(
        (0.5 * ordered_sum(ad)).alias("drift"),
        pl.col("breach").sum().cast(pl.Int64).alias("instruments_breaching"),
        ad.max().alias("max_abs_drift"),
    )
    sector_breaches = (
        rows.filter(pl.col("level") == "sector")
        .group_by("portfolio_id", maintain_order=True)
        .agg(pl.col("breach").sum().cast(pl.Int64).alias("sectors_breaching"))
    )
    coverage = hk.group_by("portfolio_id", maintain_order=True).agg(ordered_sum(mv).alias("held"))
    reasons = issues.group_by("portfolio_id", maintain_order=True).agg(pl.col("reason").str.join("; "))
    held_share = _divide(pl.col("held").fill_null(0.0), nav)
    summary = (
        universe.join(n, on="portfolio_id", how="left")
        .join(band_frame.select("portfolio_id", "portfolio_band"), on="portfolio_id", how="left")
        .join(figures, on="portfolio_id", how="left")
        .join(sector_breaches, on="portfolio_id", how="left")
        .join(coverage, on="portfolio_id", how="left")
        .join(reasons, on="portfolio_id", how="left")
        .join(sk.rename({"reason": "_skipped"}), on="portfolio_id", how="left")
        .with_columns(
            pl.lit(as_of).alias("date"),
            pl.when(pl.col("drift").is_not_null())
            .then(pl.col("drift") > pl.col("portfolio_band") + BAND_TOLERANCE)
            .alias("breach"),
            pl.when(pl.col("_skipped").is_not_null())
            .then(pl.format("not measured: {}", pl.col("_skipped")))
            .when(pl.col("reason").is_not_null())
            .then(pl.format("drift not computed: {}", pl.col("reason")))
            .when((held_share - 1.0).abs() > TARGET_TOLERANCE)
            .then(pl.format("holdings add up to {} of nav", _fixed6(held_share)))
            .alias("note"),
            # a portfolio with an issue has no figures, nor a nav that is not a number
            pl.when(_finite(nav)).then(nav).alias("nav"),
        )
    )
    summary = _cast(summary, DRIFT_SUMMARY_SCHEMA, ["portfolio_id"])
    return {"drift": rows, "summary": summary, "issues": issues}


# --- trend --------------------------------------------------------------------------------------


def history_date(as_of: date, *, holidays: Iterable[date] = ()) -> date:
    """The business day a drift figure of the state at ``as_of`` is filed under in the history:
    ``as_of`` when it is a business day (Monday to Friday, not in ``holidays``), else the last
    business day before it. A weekend booking updates that Friday's figure; the trend, which
    counts business days, never sees a Saturday."""
    holiday_days = np.array(sorted(holidays), dtype="datetime64[D]")
    return np.busday_offset(np.datetime64(as_of, "D"), 0, roll="backward", holidays=holiday_days).astype(date)


def drift_trend(
    history: pl.DataFrame | pl.LazyFrame, window: int = 20, *, holidays: Iterable[date] = ()
) -> pl.DataFrame:
    """Per portfolio, the least-squares slope of the drift figure over its last ``window``
    observations.

    Input ``history``: portfolio_id (str), date (date, a business day), drift (f64, the
    portfolio drift figure; null where it was not computed, and such rows are skipped). The key
    (portfolio_id, date) must be unique, and every date a business day (Monday to Friday, not
    in ``holidays``), else ``ValueError``; ``window`` >= 3.

    Rule: ``x`` = the business-day index of the date (``numpy.busday_count`` with
    ``holidays``, so a missing day leaves a gap), ``y`` = drift; over the portfolio's last
    ``window`` observations ``slope = sum((x - mean x)(y - mean y)) / sum((x - mean x)^2)``
    (ordinary least squares, drift per business day).

    Output ``DRIFT_TREND_SCHEMA`` sorted by portfolio_id: first_date and last_date of the
    window, observations used, slope (null, with a note, below 3 observations).
    """
    if not isinstance(window, int) or isinstance(window, bool) or window < MIN_TREND_OBSERVATIONS:
        raise ValueError(f"window must be an integer >= {MIN_TREND_OBSERVATIONS}, got {window!r}")
    df = collected_with(history, ("portfolio_id", "date", "drift"), "history").select(
        "portfolio_id", pl.col("date").cast(pl.Date), pl.col("drift").cast(pl.Float64)
    )
    require_no_nulls(df, ("portfolio_id", "date"), "history")
    require_unique(df, ["portfolio_id", "date"], "history")
    days = df["date"].to_numpy().astype("datetime64[D]")
    holiday_days = np.array(sorted(holidays), dtype="datetime64[D]")
    off = ~np.is_busday(days, holidays=holiday_days)
    if off.any():
        first = df["date"][int(np.flatnonzero(off)[0])]
        raise ValueError(f"history has dates that are not business days, e.g. {first}")
    origin = days.min() if days.size else np.datetime64("1970-01-01", "D")
    x = np.busday_count(origin, days, holidays=holiday_days).astype(np.float64)
    portfolios = df.select("portfolio_id").unique()
    y = pl.col("drift")
    obs = (
        df.with_columns(pl.Series("x", x))
        .filter(_finite(y))
        .sort("portfolio_id", "date")
        # the last ``window`` rows of each portfolio (lengths are unsigned: compare, never subtract)
        .filter(pl.int_range(pl.len()).over("portfolio_id") + window >= pl.len().over("portfolio_id"))
    )
    means = obs.group_by("portfolio_id", maintain_order=True).agg(
        pl.len().cast(pl.Int64).alias("observations"),
        pl.col("date").first().alias("first_date"),
        pl.col("date").last().alias("last_date"),
        ordered_sum(pl.col("x")).alias("sx"),
        ordered_sum(y).alias("sy"),
    ).with_columns(
        _divide(pl.col("sx"), pl.col("observations")).alias("mx"),
        _divide(pl.col("sy"), pl.col("observations")).alias("my"),
    )
    dx, dy = pl.col("x") - pl.col("mx"), y - pl.col("my")
    moments = (
        obs.join(means.select("portfolio_id", "mx", "my"), on="portfolio_id", maintain_order="left")
        .group_by("portfolio_id", maintain_order=True)
        .agg(ordered_sum(dx * dy).alias("sxy"), ordered_sum(dx * dx).alias("sxx"))
    )
    enough = pl.col("observations") >= MIN_TREND_OBSERVATIONS
    out = (
        portfolios.join(means, on="portfolio_id", how="left")
        .join(moments, on="portfolio_id", how="left")
        .with_columns(pl.col("observations").fill_null(0))
        .with_columns(
            pl.when(enough & (pl.col("sxx") > 0)).then(_divide(pl.col("sxy"), pl.col("sxx"))).alias("slope"),
            pl.when(~enough)
            .then(pl.format("fewer than {} observations ({})", pl.lit(MIN_TREND_OBSERVATIONS), pl.col("observations")))
            .alias("note"),
        )
    )
    return _cast(out, DRIFT_TREND_SCHEMA, ["portfolio_id"])


# --- alerts -------------------------------------------------------------------------------------


def _severity(ratio: pl.Expr) -> pl.Expr:
    return (
        pl.when(ratio < SEVERITY_MEDIUM_FROM)
        .then(pl.lit("LOW"))
        .when(ratio < SEVERITY_HIGH_FROM)
        .then(pl.lit("MEDIUM"))
        .otherwise(pl.lit("HIGH"))
    )


def drift_alerts(
    drift_rows: pl.DataFrame | pl.LazyFrame,
    summary: pl.DataFrame | pl.LazyFrame,
    issues: pl.DataFrame | pl.LazyFrame,
    trend: pl.DataFrame | pl.LazyFrame | None = None,
) -> pl.DataFrame:
    """One alert per breach and one ``ERROR`` alert per issue (``DRIFT_ALERTS_SCHEMA``),
    sorted by (portfolio_id, date, level, key, severity, message).

    Inputs: ``drift_rows`` (``DRIFT_SCHEMA``), ``summary`` (``DRIFT_SUMMARY_SCHEMA``) and
    ``issues`` (``ISSUES_SCHEMA``), as ``drift`` returns them; ``trend`` (optional,
    ``DRIFT_TREND_SCHEMA``: portfolio_id, slope).

    Rule: an instrument or sector row with ``breach`` gives an alert on the band it breached:
    ``abs`` with ``ratio = |drift| / band_abs`` or ``rel`` with ``ratio = (|drift| / target) /
    band_rel`` (both breached: the larger ratio); a portfolio whose summary breaches gives an
    ``abs`` alert with ``ratio = drift / portfolio_band``. Severity: ratio < 1.5 LOW, < 2
    MEDIUM, else HIGH. Each issue gives an ``ERROR`` row (level "portfolio", no drift, no
    band) whose message is the reason. ``rising`` = trend slope > 0 (null without a slope).
    Messages read e.g. "P001 instrument I0042 is 6.2% over its 3.0% target (band 5/25)".
    """
    r = collected_with(drift_rows, DRIFT_SCHEMA, "drift_rows")
    s = collected_with(summary, ("date", "portfolio_id", "drift", "portfolio_band", "breach"), "summary")
    iss = collected_with(issues, ISSUES_SCHEMA, "issues")
    ad, tw = pl.col("abs_drift"), pl.col("target_weight")
    rel = pl.col("relative_drift").abs()  # null when the target is 0
    abs_ratio = _divide(ad, pl.col("band_abs"))
    rel_ratio = _divide(rel, pl.col("band_rel"))
    abs_hit = ad > pl.col("band_abs") + BAND_TOLERANCE
    rel_hit = (rel > pl.col("band_rel") + BAND_TOLERANCE).fill_null(False)
    use_rel = rel_hit & (~abs_hit | (rel_ratio > abs_ratio))
    ratio = pl.when(use_rel).then(rel_ratio).otherwise(abs_ratio)
    weights = r.filter(pl.col("breach").fill_null(False) & pl.col("level").is_in(["instrument", "sector"])).select(
        "portfolio_id",
        "date",
        "level",
        "key",
        "drift",
        pl.when(use_rel).then(pl.lit("rel")).otherwise(pl.lit("abs")).alias("band_type"),
        pl.when(use_rel).then(pl.col("band_rel")).otherwise(pl.col("band_abs")).alias("band"),
        _severity(ratio).alias("severity"),
        pl.format(
            "{} {} {} is {}% {} its {}% target (band {}/{})",
            pl.col("portfolio_id"),
            pl.col("level"),
            pl.col("key"),
            _pct(ad),
            pl.when(pl.col("drift") > 0).then(pl.lit("over")).otherwise(pl.lit("under")),
            _pct(tw),
            _band_label(pl.col("band_abs")),
            _band_label(pl.col("band_rel")),
        ).alias("message"),
    )
    d, band = pl.col("drift"), pl.col("portfolio_band")
    portfolios = s.filter(pl.col("breach").fill_null(False)).select(
        "portfolio_id",
        "date",
        pl.lit("portfolio").alias("level"),
        pl.col("portfolio_id").alias("key"),
        "drift",
        pl.lit("abs").alias("band_type"),
        band.alias("band"),
        _severity(_divide(d, band)).alias("severity"),
        pl.format("{} portfolio drift is {}% (band {}%)", pl.col("portfolio_id"), _pct(d), _band_label(band)).alias(
            "message"
        ),
    )
    errors = iss.select(
        "portfolio_id",
        "date",
        pl.lit("portfolio").alias("level"),
        pl.col("portfolio_id").alias("key"),
        pl.lit(None, dtype=pl.Float64).alias("drift"),
        pl.lit(None, dtype=pl.String).alias("band_type"),
        pl.lit(None, dtype=pl.Float64).alias("band"),
        pl.lit("ERROR").alias("severity"),
        pl.format("{}: drift not computed: {}", pl.col("portfolio_id"), pl.col("reason")).alias("message"),
    )
    schema = {c: t for c, t in DRIFT_ALERTS_SCHEMA.items() if c != "rising"}
    alerts = pl.concat([f.cast(schema) for f in (weights, portfolios, errors)])
    if trend is None:
        alerts = alerts.with_columns(pl.lit(None, dtype=pl.Boolean).alias("rising"))
    else:
        slopes = collected_with(trend, ("portfolio_id", "slope"), "trend").select("portfolio_id", "slope")
        require_unique(slopes, ["portfolio_id"], "trend")
        alerts = alerts.join(slopes, on="portfolio_id", how="left").with_columns(
            (pl.col("slope") > 0).alias("rising")
        )
    return _cast(alerts, DRIFT_ALERTS_SCHEMA, ["portfolio_id", "date", "level", "key", "severity", "message"])


def holdings_by_sleeve(lots: pl.DataFrame, positions: pl.DataFrame, instruments: pl.DataFrame) -> pl.DataFrame:
    """The ``holdings`` input of ``drift`` from the current state: each open lot (``LOTS_SCHEMA``)
    valued at its position's price and rate (``POSITIONS_SCHEMA``): ``market_value = ±quantity *
    price * fx_rate`` (SHORT negative), under the lot's ``strategy_id``, with the instrument's
    sector; plus the positions' CASH rows (no sleeve, no sector). Columns: portfolio_id,
    strategy_id, instrument_id, sector, market_value."""
    priced = positions.filter(pl.col("position_type") != "CASH").select("portfolio_id", "instrument_id", "position_type", "price", "fx_rate")
    sign = pl.when(pl.col("position_type") == "SHORT").then(-1.0).otherwise(1.0)
    lots_valued = (
        lots.filter((pl.col("status") == "OPEN") & (pl.col("quantity") > 0))
        .join(priced, on=["portfolio_id", "instrument_id", "position_type"], how="inner")
        .join(instruments.select("instrument_id", "sector").unique("instrument_id", keep="first"), on="instrument_id", how="left")
        .select("portfolio_id", "strategy_id", "instrument_id", "sector",
                (sign * pl.col("quantity") * pl.col("price") * pl.col("fx_rate")).alias("market_value"))
    )
    cash = positions.filter(pl.col("position_type") == "CASH").select(
        "portfolio_id", pl.lit(None, dtype=pl.String).alias("strategy_id"), "instrument_id",
        pl.lit(None, dtype=pl.String).alias("sector"), "market_value",
    )
    return pl.concat([lots_valued, cash]).sort("portfolio_id", "instrument_id", "strategy_id", nulls_last=True)
