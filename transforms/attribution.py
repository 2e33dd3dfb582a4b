"""Performance attribution: Brinson sector attribution, multi-period linking of its effects, and
contribution to return by position.

Notation: per portfolio ``p`` and period ``t`` (a day, or any period the caller chooses), a
sector's portfolio and benchmark weights ``wp``, ``wb`` (weights at the start of the period; a
short position has a negative weight) and returns ``rp``, ``rb``; the period's totals
``R_t = sum(w * r)`` over the portfolio's holdings and ``B_t`` likewise over the benchmark's.
Over the ``T`` periods given: ``R = prod(1 + R_t) - 1`` and ``B = prod(1 + B_t) - 1``.

- ``sector_sums(holdings)`` (``SECTOR_SUMS_SCHEMA``): one side's holdings summed per sector
  and day, ``weight = sum(w)`` and ``earned = sum(w * r)``: all that the sector inputs and the
  totals below need of a side. A caller whose side is shared (a benchmark compared with many
  portfolios) sums it once and copies the sums, not the holdings.
- ``sector_inputs(portfolio, benchmark)`` (``SECTOR_INPUTS_SCHEMA``): per sector and day,
  ``w = sum(weight)`` and ``r = sum(weight * return) / sum(weight)`` on each side; a side holding
  nothing of the sector has weight 0 and a null return; a side whose weights in the sector net
  to zero (``|sum(weight)| <= WEIGHT_EPSILON``) has a null return too, and when its holdings
  still earned something (``sum(weight * return) != 0``, a long/short pair) the ``note`` says so
  (that contribution cannot be attributed by sector). Holdings without a sector go to the
  sector ``UNCLASSIFIED``.
  ``sector_inputs_from_sums`` takes the two sides' ``sector_sums`` instead.
- ``total_returns(portfolio, benchmark)`` (``TOTAL_RETURNS_SCHEMA``): ``R_t`` and ``B_t`` and the
  summed weights per portfolio and day (the day's sector sums added up); a side with no
  holdings that day has weight and return 0 and a ``note``. ``total_returns_from_sums`` takes
  the sides' ``sector_sums``.
- ``brinson(sectors, method, interaction)`` (``ATTRIBUTION_SCHEMA``), with
  ``B = sum(wb * rb)`` over the day's sectors:

  - Brinson-Fachler ``"BF"``: allocation ``(wp - wb)(rb - B)``;
  - Brinson-Hood-Beebower ``"BHB"``: allocation ``(wp - wb) rb``;
  - ``interaction="separate"``: selection ``wb (rp - rb)``, interaction ``(wp - wb)(rp - rb)``;
    ``interaction="in_selection"``: selection ``wp (rp - rb)``, interaction 0;
  - total_effect = allocation + selection + interaction. Summed over a day's sectors the
    effects equal ``R_t - B_t`` under BHB, and under BF when ``sum(wp) = sum(wb)`` (both 1).
  - Missing sides: rp null (the portfolio holds nothing of the sector) is taken as ``rb``, so
    its selection and interaction are 0; rb null (the benchmark holds nothing of it) is taken
    as ``B``, so its BF allocation is 0 and its stock picking shows as selection/interaction.

- ``link(daily, totals, method)`` (``ATTRIBUTION_LINKED_SCHEMA``): one effect per sector over
  all the periods given, ``e = sum_t e_t * f_t`` with ``d_t = R_t - B_t``:

  - ``"carino"`` (Carino 1999): ``f_t = k_t / K``, ``k_t = (ln(1 + R_t) - ln(1 + B_t)) / d_t``
    (``1 / (1 + R_t)`` when ``d_t = 0``), ``K`` the same over the whole period with ``R``, ``B``
    (as ``sum_t ln((1 + R_t) / (1 + B_t)) / (R - B)``, ``R - B`` evaluated as below);
  - ``"menchero"`` (Menchero 2000): ``f_t = M + a_t``,
    ``M = ((R - B) / T) / ((1 + R)^(1/T) - (1 + B)^(1/T))`` (its limit ``(1 + R)^((T-1)/T)``
    when ``R = B``), ``a_t = (R - B - M sum_s d_s) / sum_s d_s^2 * d_t`` (0 when every
    ``d_s = 0``: then 0/0, whose limit depends on how the ``d_s`` vanish, so the sectors' split
    is a convention; their sum is 0 either way). ``R - B`` is evaluated as
    ``(1 + B) expm1(sum_t log1p(d_t / (1 + B_t)))``, which keeps its digits when R and B are
    close (``a_t`` divides by ``sum d_s^2``);
  - ``"grap"`` (GRAP 1997): ``f_t = prod_{s<t}(1 + R_s) * prod_{s>t}(1 + B_s)``;
  - ``"frongello"`` (Frongello 2002): the recursion ``G_t = e_t prod_{s<t}(1 + R_s) +
    B_t sum_{s<t} G_s`` per sector and effect, ``e = sum_t G_t``. With ``Q_t = prod_{s<=t}(1 +
    B_s)`` the running sum solves to ``S_t = sum_{s<=t} G_s = Q_t sum_{u<=t} e_u prod_{s<u}(1 +
    R_s) / Q_u``, so the linked effect ``e = S_T`` is ``sum_t e_t f_t`` with ``f_t = prod_{s<t}(1 +
    R_s) * Q_T / Q_t``, which is how it is evaluated (no recursion, no (sector, period) grid).
    That factor is GRAP's (``Q_T / Q_t = prod_{s>t}(1 + B_s)``): linked over the whole period
    the two agree exactly (Bacon 2008 shows the same totals in his GRAP and Frongello tables);
    only the per-period split ``G_t``, which is not published, differs.

  Each method's linked effects sum over sectors and effects to ``R - B`` (when each period's
  effects sum to ``d_t``). Every period return must be known and above -100%
  (``1 + R_t > 0`` and ``1 + B_t > 0``; the logarithms and ``Q_t`` need it): otherwise the
  portfolio's linked effects are null and ``note`` says why.
- ``link_summary(linked, totals)`` (``LINK_SUMMARY_SCHEMA``): per portfolio ``R``, ``B``,
  ``R - B``, the linked effects summed and ``residual = (R - B) - sum of linked effects``.
- ``contribution(positions, linking)`` (``CONTRIBUTION_SCHEMA``): ``c_it = w_it r_it``,
  ``R_t = sum_i c_it``; ``"compound"``: ``c_i = sum_t c_it prod_{s<t}(1 + R_s)``; ``"carino"``:
  ``c_i = sum_t c_it k_t / K`` with ``B = 0`` (``k_t = ln(1 + R_t) / R_t``). Either way
  ``sum_i c_i = prod(1 + R_t) - 1``.

References: Bacon, *Practical Portfolio Performance Measurement and Attribution* (Wiley, 2nd ed.
2008), chapters 5 and 8; Carino, "Combining attribution effects over time" (JPM 1999); Menchero,
"An optimized approach to linking attribution effects over time" (JPM 2000); GRAP, "Synthèse
des modèles d'attribution de performance" (1997); Frongello, "Linking single period attribution
results" (JPM 2002).
"""

from __future__ import annotations

import numpy as np
import polars as pl

from transforms.contract import UNCLASSIFIED
from transforms.frame_checks import strictly_increasing
from transforms.contract import ATTRIBUTION_SCHEMA, ATTRIBUTION_LINKED_SCHEMA, LINK_SUMMARY_SCHEMA, CONTRIBUTION_SCHEMA  # noqa: F401 (published schemas, defined in the contract)

# A side's weight in a sector at or below this (in absolute value) counts as zero: dividing by
# a float residue of cancelling weights would make an enormous, meaningless sector return.
WEIGHT_EPSILON = 1e-12
BRINSON_METHODS = ("BF", "BHB")
INTERACTIONS = ("separate", "in_selection")
LINK_METHODS = ("carino", "menchero", "grap", "frongello")
CONTRIBUTION_LINKINGS = ("compound", "carino")
EFFECTS = ("allocation", "selection", "interaction")

PORTFOLIO_NET_ZERO = "portfolio weights in the sector net to zero: its earnings there are not attributed"
BENCHMARK_NET_ZERO = "benchmark weights in the sector net to zero: its earnings there are not attributed"
NO_PORTFOLIO_HOLDINGS = "no portfolio holdings on the day"
NO_BENCHMARK_HOLDINGS = "no benchmark holdings on the day"
CANNOT_LINK = "a period return is unknown or at or below -100%: effects cannot be linked"
CANNOT_LINK_CONTRIBUTION = "a day's return is at or below -100%: Carino linking needs 1 + R_t > 0"

SECTOR_INPUTS_SCHEMA: dict[str, pl.DataType] = {
    "portfolio_id": pl.String,
    "date": pl.Date,
    "sector": pl.String,
    "portfolio_weight": pl.Float64,
    "benchmark_weight": pl.Float64,
    "portfolio_return": pl.Float64,  # null: the portfolio holds nothing of the sector
    "benchmark_return": pl.Float64,  # null: the benchmark holds nothing of the sector
    "note": pl.String,  # null, or why a side's earnings in the sector are not attributed
}

TOTAL_RETURNS_SCHEMA: dict[str, pl.DataType] = {
    "portfolio_id": pl.String,
    "date": pl.Date,
    "portfolio_weight": pl.Float64,  # sum of the portfolio's weights
    "benchmark_weight": pl.Float64,
    "portfolio_return": pl.Float64,  # R_t = sum(w * r)
    "benchmark_return": pl.Float64,  # B_t
    "note": pl.String,  # null, or which side has no holdings that day
}


SECTOR_SUMS_SCHEMA: dict[str, pl.DataType] = {
    "portfolio_id": pl.String,
    "date": pl.Date,
    "sector": pl.String,
    "weight": pl.Float64,  # sum(w) over the side's holdings in the sector
    "earned": pl.Float64,  # sum(w * r)
}

HOLDINGS_SCHEMA: dict[str, pl.DataType] = {
    "portfolio_id": pl.String,
    "date": pl.Date,
    "instrument_id": pl.String,
    "sector": pl.String,
    "weight": pl.Float64,
    "return": pl.Float64,
}
_SECTOR_COLUMNS = {c: SECTOR_INPUTS_SCHEMA[c] for c in list(SECTOR_INPUTS_SCHEMA)[:7]}
_DAILY_COLUMNS: dict[str, pl.DataType] = {
    "portfolio_id": pl.String,
    "date": pl.Date,
    "sector": pl.String,
    **{e: pl.Float64 for e in EFFECTS},
}
_TOTALS_COLUMNS: dict[str, pl.DataType] = {
    "portfolio_id": pl.String,
    "date": pl.Date,
    "portfolio_return": pl.Float64,
    "benchmark_return": pl.Float64,
}
_LINKED_COLUMNS = {c: t for c, t in ATTRIBUTION_LINKED_SCHEMA.items() if c != "note"}
_SECTOR_KEYS = ["portfolio_id", "date", "sector"]
_DAY_KEYS = ["portfolio_id", "date"]


# --- input checks ---------------------------------------------------------------------------


def _read(frame: pl.DataFrame | pl.LazyFrame, columns: dict[str, pl.DataType], what: str) -> pl.DataFrame:
    """The named columns of ``frame`` cast to their types; ``ValueError`` when one is missing or
    cannot be cast."""
    if isinstance(frame, pl.LazyFrame):
        frame = frame.collect()
    missing = [c for c in columns if c not in frame.columns]
    if missing:
        raise ValueError(f"{what}: missing column(s) {missing}")
    read = {}
    for c, t in columns.items():
        try:
            read[c] = frame.get_column(c).cast(t)
        except pl.exceptions.PolarsError as exc:
            raise ValueError(f"{what}: column {c!r} cannot be read as {t}") from exc
    return pl.DataFrame(read)


def _check_values(frame: pl.DataFrame, columns: list[str], what: str, *, nullable: tuple[str, ...] = ()) -> None:
    """``ValueError`` naming the first column with a null (unless ``nullable``) or a NaN or
    infinite float."""
    bad = []
    for c in columns:
        expr = pl.lit(False) if c in nullable else pl.col(c).is_null()
        if frame.schema[c] == pl.Float64:
            expr = expr | (pl.col(c).is_not_null() & ~pl.col(c).is_finite())
        bad.append(expr.sum().alias(c))
    counts = frame.select(bad).row(0, named=True)
    for c, n in counts.items():
        if n:
            kind = "NaN or infinite" if c in nullable else "null, NaN or infinite"
            raise ValueError(f"{what}: column {c!r} has {n} {kind} value(s)")


def _check_unique(frame: pl.DataFrame, keys: list[str], what: str) -> None:
    if strictly_increasing(frame, keys):  # sorted and unique, as the transforms hand them over
        return
    dup = frame.group_by(keys).len().filter(pl.col("len") > 1)
    if dup.height:
        raise ValueError(f"{what}: {dup.height} duplicate {tuple(keys)} key(s), e.g. {dup.row(0)[:-1]}")


def _holdings(frame: pl.DataFrame | pl.LazyFrame, what: str) -> pl.DataFrame:
    holdings = _read(frame, HOLDINGS_SCHEMA, what)
    _check_values(holdings, [c for c in HOLDINGS_SCHEMA if c != "sector"], what)
    _check_unique(holdings, ["portfolio_id", "date", "instrument_id"], what)
    return holdings.with_columns(pl.col("sector").fill_null(UNCLASSIFIED))


def _totals(totals: pl.DataFrame | pl.LazyFrame) -> pl.DataFrame:
    # a null period return is data (a day without a return): the portfolio is flagged, not refused
    frame = _read(totals, _TOTALS_COLUMNS, "totals")
    _check_values(frame, list(_TOTALS_COLUMNS), "totals", nullable=("portfolio_return", "benchmark_return"))
    _check_unique(frame, _DAY_KEYS, "totals")
    return frame


def _join_notes(*notes: pl.Expr) -> pl.Expr:
    joined = pl.concat_str(list(notes), separator="; ", ignore_nulls=True)
    return pl.when(joined == "").then(None).otherwise(joined)


def _log_ratio(r: pl.Expr, b: pl.Expr) -> pl.Expr:
    """Carino's ``(ln(1 + r) - ln(1 + b)) / (r - b)``, ``1 / (1 + b)`` when ``r = b``. Written as
    ``log1p(x) / x / (1 + b)`` with ``x = (r - b) / (1 + b)`` so that nearly equal returns lose
    no digits to cancellation."""
    x = (r - b) / (1.0 + b)
    return pl.when(x == 0.0).then(1.0 / (1.0 + b)).otherwise(x.log1p() / x / (1.0 + b))


def _finish(frame: pl.DataFrame | pl.LazyFrame, schema: dict[str, pl.DataType], keys: list[str]) -> pl.DataFrame:
    return frame.lazy().select([pl.col(c).cast(t) for c, t in schema.items()]).sort(keys).collect()


# --- single period --------------------------------------------------------------------------


def sector_sums(holdings: pl.DataFrame | pl.LazyFrame, what: str = "holdings") -> pl.DataFrame:
    """One side's holdings summed per (portfolio_id, date, sector) (``SECTOR_SUMS_SCHEMA``),
    sorted by them: ``weight = sum(w)``, ``earned = sum(w * r)``.

    Input, one row per (portfolio_id, date, instrument_id): portfolio_id (str), date (Date),
    instrument_id (str), sector (str; null goes to ``UNCLASSIFIED``), weight (f64, the
    holding's weight at the start of the day, negative when short), return (f64, the day's
    return in base currency). Weights and returns must be finite and keys unique
    (``ValueError`` naming ``what``).
    """
    holdings = _holdings(holdings, what)
    out = holdings.lazy().group_by(_SECTOR_KEYS).agg(
        pl.col("weight").sum(), (pl.col("weight") * pl.col("return")).sum().alias("earned")
    )
    return _finish(out, SECTOR_SUMS_SCHEMA, _SECTOR_KEYS)


def _sums(frame: pl.DataFrame | pl.LazyFrame, what: str) -> pl.DataFrame:
    sums = _read(frame, SECTOR_SUMS_SCHEMA, what)
    _check_values(sums, list(SECTOR_SUMS_SCHEMA), what)
    _check_unique(sums, _SECTOR_KEYS, what)
    return sums


def sector_inputs(portfolio: pl.DataFrame, benchmark: pl.DataFrame) -> pl.DataFrame:
    """Sector weights and returns of a portfolio and its benchmark, per day
    (``SECTOR_INPUTS_SCHEMA``), sorted by (portfolio_id, date, sector).

    Inputs: each side's holdings as ``sector_sums`` reads them, ``benchmark`` keyed by the
    portfolio it is compared with. Output and rules as ``sector_inputs_from_sums``.
    """
    return sector_inputs_from_sums(sector_sums(portfolio, "portfolio"), sector_sums(benchmark, "benchmark"))


def sector_inputs_from_sums(portfolio: pl.DataFrame | pl.LazyFrame, benchmark: pl.DataFrame | pl.LazyFrame) -> pl.DataFrame:
    """``SECTOR_INPUTS_SCHEMA`` from the two sides' ``sector_sums`` (``SECTOR_SUMS_SCHEMA``, keys
    unique, numbers finite, else ``ValueError``).

    Output: one row per (portfolio_id, date, sector) held on either side. Per side,
    ``weight = sum(w)`` (0 when the side holds none of the sector) and
    ``return = sum(w * r) / sum(w)``, null when ``|sum(w)| <= WEIGHT_EPSILON`` (no holding, or
    weights that net to zero). ``note`` flags a side whose weights net to zero while its
    holdings earned something (``sum(w * r) != 0``): that part of its return is lost to a
    sector attribution.
    """
    sides = []
    for side, frame in (("portfolio", portfolio), ("benchmark", benchmark)):
        sides.append(
            _sums(frame, side).lazy().select(
                *_SECTOR_KEYS, pl.col("weight").alias(f"{side}_weight"), pl.col("earned").alias(f"_{side}_earned")
            )
        )
    out = sides[0].join(sides[1], on=_SECTOR_KEYS, how="full", coalesce=True)
    returns, notes = [], []
    for side, flag in (("portfolio", PORTFOLIO_NET_ZERO), ("benchmark", BENCHMARK_NET_ZERO)):
        weight, earned = pl.col(f"{side}_weight"), pl.col(f"_{side}_earned")
        returns.append(pl.when(weight.abs() > WEIGHT_EPSILON).then(earned / weight).alias(f"{side}_return"))
        notes.append(pl.when(weight.abs() <= WEIGHT_EPSILON, earned != 0.0).then(pl.lit(flag)))
    out = out.with_columns(*returns, _join_notes(*notes).alias("note")).with_columns(
        pl.col("portfolio_weight", "benchmark_weight").fill_null(0.0)
    )
    return _finish(out, SECTOR_INPUTS_SCHEMA, _SECTOR_KEYS)


def total_returns(portfolio: pl.DataFrame, benchmark: pl.DataFrame) -> pl.DataFrame:
    """The day's total return of each portfolio and its benchmark (``TOTAL_RETURNS_SCHEMA``),
    sorted by (portfolio_id, date). Inputs as ``sector_inputs``; rules as
    ``total_returns_from_sums``."""
    return total_returns_from_sums(sector_sums(portfolio, "portfolio"), sector_sums(benchmark, "benchmark"))


def total_returns_from_sums(portfolio: pl.DataFrame | pl.LazyFrame, benchmark: pl.DataFrame | pl.LazyFrame) -> pl.DataFrame:
    """``TOTAL_RETURNS_SCHEMA`` from the two sides' ``sector_sums``: per (portfolio_id, date) on
    either side, ``portfolio_return`` ``R_t = sum(w * r)`` (the day's sector ``earned`` added
    up), ``benchmark_return`` ``B_t`` likewise, and the summed weights (Brinson's effects add up
    to ``R_t - B_t`` when both are 1). A side without holdings that day has weight and return 0
    and ``note`` says so.
    """
    sides = []
    for side, frame in (("portfolio", portfolio), ("benchmark", benchmark)):
        sides.append(
            _sums(frame, side)
            .lazy()
            .group_by(_DAY_KEYS)
            .agg(pl.col("weight").sum().alias(f"{side}_weight"), pl.col("earned").sum().alias(f"{side}_return"))
        )
    out = sides[0].join(sides[1], on=_DAY_KEYS, how="full", coalesce=True).with_columns(
        _join_notes(
            pl.when(pl.col("portfolio_return").is_null()).then(pl.lit(NO_PORTFOLIO_HOLDINGS)),
            pl.when(pl.col("benchmark_return").is_null()).then(pl.lit(NO_BENCHMARK_HOLDINGS)),
        ).alias("note")
    )
    out = out.with_columns(pl.col("portfolio_weight", "benchmark_weight", "portfolio_return", "benchmark_return").fill_null(0.0))
    return _finish(out, TOTAL_RETURNS_SCHEMA, _DAY_KEYS)


def brinson(sectors: pl.DataFrame, method: str = "BF", interaction: str = "separate") -> pl.DataFrame:
    """Brinson attribution per portfolio, day and sector (``ATTRIBUTION_SCHEMA``), sorted by
    (portfolio_id, date, sector).

    Input: ``sector_inputs`` rows, or any frame with portfolio_id (str), date (Date), sector
    (str), portfolio_weight and benchmark_weight (f64, not null), portfolio_return and
    benchmark_return (f64, null when that side holds none of the sector: a null return with a
    weight beyond ``WEIGHT_EPSILON`` is refused); an optional ``note`` is passed on. Keys must be
    unique.

    With ``wp, wb, rp, rb`` a sector's weights and returns and ``B = sum(wb * rb)`` over the
    day's sectors (a null ``rb`` counts 0):

    - missing sides: a null ``rp`` is taken as ``rb`` (the portfolio holds nothing of the
      sector: selection and interaction 0); a null ``rb`` is taken as ``B`` (the benchmark
      holds nothing of it: BF allocation 0, the portfolio's picking there shows as selection
      and interaction);
    - ``method="BF"`` (Brinson-Fachler): allocation = ``(wp - wb)(rb - B)``;
      ``method="BHB"`` (Brinson-Hood-Beebower): allocation = ``(wp - wb) rb``;
    - ``interaction="separate"``: selection = ``wb (rp - rb)``, interaction =
      ``(wp - wb)(rp - rb)``; ``interaction="in_selection"``: selection = ``wp (rp - rb)``,
      interaction = 0;
    - total_effect = allocation + selection + interaction.

    A day's effects sum to ``R_t - B_t`` under BHB, and under BF when the weights of the two
    sides have the same sum (both 1).
    """
    if method not in BRINSON_METHODS:
        raise ValueError(f"unknown Brinson method {method!r}; expected one of {BRINSON_METHODS}")
    if interaction not in INTERACTIONS:
        raise ValueError(f"unknown interaction {interaction!r}; expected one of {INTERACTIONS}")
    if isinstance(sectors, pl.LazyFrame):
        sectors = sectors.collect()
    frame = _read(sectors, _SECTOR_COLUMNS, "sectors").with_columns(
        (sectors["note"].cast(pl.String) if "note" in sectors.columns else pl.lit(None, pl.String)).alias("note")
    )
    _check_values(frame, list(_SECTOR_COLUMNS), "sectors", nullable=("portfolio_return", "benchmark_return"))
    _check_unique(frame, _SECTOR_KEYS, "sectors")
    for side in ("portfolio", "benchmark"):
        # a null return means "holds none of the sector"; with a weight it is a hole in the data
        unknown = frame.filter(pl.col(f"{side}_return").is_null(), pl.col(f"{side}_weight").abs() > WEIGHT_EPSILON)
        if unknown.height:
            raise ValueError(
                f"sectors: {unknown.height} row(s) with a {side}_weight but a null {side}_return, "
                f"e.g. {unknown.select(_SECTOR_KEYS).row(0)}"
            )

    wp, wb = pl.col("portfolio_weight"), pl.col("benchmark_weight")
    total_b = (wb * pl.col("benchmark_return").fill_null(0.0)).sum().over(_DAY_KEYS)
    rb = pl.col("benchmark_return").fill_null(pl.col("_B"))
    rp = pl.col("portfolio_return").fill_null(pl.col("_rb"))
    allocation = (wp - wb) * (pl.col("_rb") - pl.col("_B")) if method == "BF" else (wp - wb) * pl.col("_rb")
    picking = pl.col("_rp") - pl.col("_rb")
    if interaction == "separate":
        selection, interplay = wb * picking, (wp - wb) * picking
    else:
        selection, interplay = wp * picking, pl.lit(0.0)
    out = (
        frame.lazy()
        .with_columns(total_b.alias("_B"))
        .with_columns(rb.alias("_rb"))
        .with_columns(rp.alias("_rp"))
        .with_columns(allocation.alias("allocation"), selection.alias("selection"), interplay.alias("interaction"))
        .with_columns((pl.col("allocation") + pl.col("selection") + pl.col("interaction")).alias("total_effect"))
    )
    return _finish(out, ATTRIBUTION_SCHEMA, _SECTOR_KEYS)


# --- multi-period linking -------------------------------------------------------------------


def _periods(totals: pl.DataFrame) -> tuple[pl.LazyFrame, pl.LazyFrame]:
    """(per period, per portfolio) linking quantities from validated totals.

    Per (portfolio_id, date): ``_d`` = R_t - B_t, Carino's ``_k``, ``_grown`` = prod_{s<t}(1 +
    R_s), ``_b_after`` = prod_{s>t}(1 + B_s), ``_q`` = prod_{s<=t}(1 + B_s). Per portfolio:
    start/end dates, ``periods``, ``_R``, ``_B``, ``_S`` = ln((1 + R) / (1 + B)), the excess
    ``_excess`` = R - B, Carino's ``_K``, Menchero's ``_M`` and the coefficient ``_c`` of
    ``a_t = _c * d_t``, and ``_ok`` (every period usable).

    ``_S`` sums ``log1p(d_t / (1 + B_t))`` and ``_excess`` = ``(1 + B) expm1(_S)``: both keep
    their relative precision when R and B are close, where ``prod(1 + R_t) - prod(1 + B_t)``
    would lose most digits to cancellation (Menchero's ``a_t`` divides by ``sum d_t^2``).
    """
    r, b = pl.col("portfolio_return"), pl.col("benchmark_return")
    per_period = (
        totals.lazy()
        .sort(_DAY_KEYS)
        .with_columns(
            (r - b).alias("_d"),
            _log_ratio(r, b).alias("_k"),
            (1.0 + r).cum_prod().shift(1, fill_value=1.0).over("portfolio_id").alias("_grown"),
            (1.0 + b).cum_prod(reverse=True).shift(-1, fill_value=1.0).over("portfolio_id").alias("_b_after"),
            (1.0 + b).cum_prod().over("portfolio_id").alias("_q"),
        )
    )
    per_portfolio = (
        per_period.group_by("portfolio_id")
        .agg(
            pl.col("date").min().alias("start_date"),
            pl.col("date").max().alias("end_date"),
            pl.len().cast(pl.Int64).alias("periods"),
            ((1.0 + r).product() - 1.0).alias("_R"),
            ((1.0 + b).product() - 1.0).alias("_B"),
            ((r - b) / (1.0 + b)).log1p().sum().alias("_S"),
            pl.col("_d").sum().alias("_sum_d"),
            (pl.col("_d") ** 2).sum().alias("_sum_d2"),
            (r.is_not_null() & b.is_not_null() & (1.0 + r > 0.0) & (1.0 + b > 0.0)).all().alias("_ok"),
            # a null return makes the products above wrong, not null: _ok masks them
            (r.null_count() + b.null_count()).alias("_nulls"),
        )
        .with_columns(pl.col("_ok") & (pl.col("_nulls") == 0))
    )
    big_r, big_b, log_gap, t = pl.col("_R"), pl.col("_B"), pl.col("_S"), pl.col("periods").cast(pl.Float64)
    excess = (1.0 + big_b) * np.expm1(log_gap)
    carino_k = pl.when(log_gap == 0.0).then(1.0 / (1.0 + big_b)).otherwise(log_gap / pl.col("_excess"))
    # (1+R)^(1/T) - (1+B)^(1/T) = (1+B)^(1/T) * expm1(S / T), without cancellation when R ~ B
    root_gap = (1.0 + big_b) ** (1.0 / t) * np.expm1(log_gap / t)
    menchero_m = (
        pl.when(log_gap == 0.0).then((1.0 + big_r) ** ((t - 1.0) / t)).otherwise(pl.col("_excess") / t / root_gap)
    )
    per_portfolio = (
        per_portfolio.with_columns(excess.alias("_excess"))
        .with_columns(carino_k.alias("_K"), menchero_m.alias("_M"))
        .with_columns(
            # every d_t = 0: the day's effects cancel over sectors, so a_t changes no total; 0
            pl.when(pl.col("_sum_d2") > 0.0)
            .then((pl.col("_excess") - pl.col("_M") * pl.col("_sum_d")) / pl.col("_sum_d2"))
            .otherwise(0.0)
            .alias("_c")
        )
    )
    return per_period, per_portfolio


def _checked_daily(daily: pl.DataFrame | pl.LazyFrame, totals: pl.DataFrame) -> pl.DataFrame:
    frame = _read(daily, _DAILY_COLUMNS, "daily")
    _check_values(frame, list(_DAILY_COLUMNS), "daily")
    _check_unique(frame, _SECTOR_KEYS, "daily")
    orphans = frame.select(_DAY_KEYS).unique().join(totals.select(_DAY_KEYS), on=_DAY_KEYS, how="anti")
    if orphans.height:
        raise ValueError(
            f"daily: {orphans.height} (portfolio_id, date) pair(s) have no row in totals, e.g. {orphans.sort(_DAY_KEYS).row(0)}"
        )
    return frame


def link(daily: pl.DataFrame, totals: pl.DataFrame, method: str) -> pl.DataFrame:
    """Per-period effects linked over all the periods given (``ATTRIBUTION_LINKED_SCHEMA``), one
    row per (portfolio_id, sector), sorted by them.

    Inputs: ``daily``, ``ATTRIBUTION_SCHEMA`` rows (portfolio_id, date, sector, allocation,
    selection, interaction are used; effects finite, keys unique); ``totals``, one row per
    (portfolio_id, date) with portfolio_return ``R_t`` and benchmark_return ``B_t``
    (``total_returns``). The periods of a portfolio are the dates of its ``totals`` rows (a
    period without ``daily`` rows still compounds); every ``daily`` day must be among them
    (``ValueError``). ``method``: ``"carino"``, ``"menchero"``, ``"grap"`` or ``"frongello"``,
    formulas in the module docstring. total_effect = the three linked effects summed;
    start_date, end_date and periods describe the portfolio's periods. A portfolio with an
    unknown period return or one at or below -100% gets null effects and a ``note``.
    """
    if method not in LINK_METHODS:
        raise ValueError(f"unknown linking method {method!r}; expected one of {LINK_METHODS}")
    totals = _totals(totals)
    frame = _checked_daily(daily, totals)
    per_period, per_portfolio = _periods(totals)
    keys = ["portfolio_id", "sector"]

    if method == "carino":
        factor = pl.col("_k") / pl.col("_K")
    elif method == "menchero":
        factor = pl.col("_M") + pl.col("_c") * pl.col("_d")
    elif method == "grap":
        factor = pl.col("_grown") * pl.col("_b_after")
    else:  # frongello: S_T = Q_T sum_t e_t grown_t / Q_t (module docstring)
        factor = pl.col("_grown") * (1.0 + pl.col("_B")) / pl.col("_q")
    factors = per_period.join(per_portfolio, on="portfolio_id").select(*_DAY_KEYS, factor.alias("_f"))
    linked = (
        frame.lazy()
        .join(factors, on=_DAY_KEYS)
        .group_by(keys)
        .agg([(pl.col(e) * pl.col("_f")).sum().alias(e) for e in EFFECTS])
    )
    ok = pl.col("_ok")
    out = (
        linked.join(per_portfolio, on="portfolio_id")
        .with_columns([pl.when(ok).then(pl.col(e)).alias(e) for e in EFFECTS])
        .with_columns(
            pl.lit(method).alias("method"),
            pl.sum_horizontal(EFFECTS).alias("total_effect"),
            pl.when(~ok).then(pl.lit(CANNOT_LINK)).alias("note"),
        )
        .with_columns(pl.when(ok).then(pl.col("total_effect")).alias("total_effect"))
    )
    return _finish(out, ATTRIBUTION_LINKED_SCHEMA, keys)


def link_summary(linked: pl.DataFrame, totals: pl.DataFrame) -> pl.DataFrame:
    """Per portfolio and method, the linked effects against the period's returns
    (``LINK_SUMMARY_SCHEMA``), sorted by (portfolio_id, method).

    Inputs: ``link``'s output and the same ``totals`` it was given (the periods must agree:
    ``ValueError`` otherwise). Output: start_date, end_date, periods; portfolio_return
    ``R = prod(1 + R_t) - 1``, benchmark_return ``B``, excess_return ``R - B``; allocation,
    selection, interaction and total_effect summed over sectors; residual = excess_return -
    total_effect (zero up to rounding for every method when each period's effects sum to
    ``R_t - B_t``). Null effects (a portfolio that could not be linked) give null sums and
    residual, with the ``note``.
    """
    frame = _read(linked, _LINKED_COLUMNS, "linked")
    _, per_portfolio = _periods(_totals(totals))
    sums = [pl.when(pl.col(c).null_count() == 0).then(pl.col(c).sum()).alias(c) for c in (*EFFECTS, "total_effect")]
    out = frame.lazy().group_by("portfolio_id", "method").agg(
        pl.col("start_date", "end_date", "periods").first(),
        (pl.max_horizontal(pl.col(c).n_unique() for c in ("start_date", "end_date", "periods")) > 1).alias("_mixed"),
        *sums,
    )
    out = out.join(
        per_portfolio.rename({"start_date": "_start", "end_date": "_end", "periods": "_periods"}),
        on="portfolio_id",
        how="left",
    ).collect()
    mismatch = out.filter(
        pl.col("_mixed")
        | pl.col("_periods").is_null()
        | (pl.col("_start") != pl.col("start_date"))
        | (pl.col("_end") != pl.col("end_date"))
        | (pl.col("_periods") != pl.col("periods"))
    )
    if mismatch.height:
        raise ValueError(
            f"totals do not cover the periods the effects were linked over, e.g. portfolio {mismatch['portfolio_id'][0]!r}"
        )
    out = out.with_columns(
        pl.col("_R").alias("portfolio_return"),
        pl.col("_B").alias("benchmark_return"),
        pl.when(pl.col("_nulls") == 0).then(pl.col("_R") - pl.col("_B")).alias("excess_return"),
        pl.when(~pl.col("_ok")).then(pl.lit(CANNOT_LINK)).alias("note"),
    ).with_columns(
        [pl.when(pl.col("_nulls") == 0).then(pl.col(c)).alias(c) for c in ("portfolio_return", "benchmark_return")]
    ).with_columns((pl.col("excess_return") - pl.col("total_effect")).alias("residual"))
    return _finish(out, LINK_SUMMARY_SCHEMA, ["portfolio_id", "method"])


# --- contribution to return -----------------------------------------------------------------


def contribution(positions: pl.DataFrame, linking: str = "compound") -> pl.DataFrame:
    """Contribution to return of each position over the periods given
    (``CONTRIBUTION_SCHEMA``), sorted by (portfolio_id, instrument_id).

    Input, one row per (portfolio_id, date, instrument_id): portfolio_id (str), date (Date),
    instrument_id (str), weight and return (f64, finite). A portfolio's periods are its dates in
    ``positions``. Daily ``c_it = w_it r_it`` and ``R_t = sum_i c_it``; linked:

    - ``"compound"``: ``c_i = sum_t c_it prod_{s<t}(1 + R_s)`` (each day's contribution grown
      by the portfolio's return before it);
    - ``"carino"``: ``c_i = sum_t c_it k_t / K``, ``k_t = ln(1 + R_t) / R_t`` (1 when
      ``R_t = 0``) and ``K`` the same for ``R``; needs every ``1 + R_t > 0``, else the
      portfolio's contributions are null with a ``note``.

    Both make the contributions sum to ``prod(1 + R_t) - 1``. average_weight = the sum of the
    position's weights / the portfolio's number of periods (a day without the position counts
    0); start_date and end_date are the portfolio's first and last dates.
    """
    if linking not in CONTRIBUTION_LINKINGS:
        raise ValueError(f"unknown contribution linking {linking!r}; expected one of {CONTRIBUTION_LINKINGS}")
    columns = {c: t for c, t in HOLDINGS_SCHEMA.items() if c != "sector"}
    frame = _read(positions, columns, "positions")
    _check_values(frame, list(columns), "positions")
    _check_unique(frame, ["portfolio_id", "date", "instrument_id"], "positions")
    frame = frame.lazy().with_columns((pl.col("weight") * pl.col("return")).alias("_c"))
    r = pl.col("_R_t")
    days = (
        frame.group_by(_DAY_KEYS)
        .agg(pl.col("_c").sum().alias("_R_t"))
        .sort(_DAY_KEYS)
        .with_columns(
            (1.0 + r).cum_prod().shift(1, fill_value=1.0).over("portfolio_id").alias("_grown"),
            _log_ratio(r, pl.lit(0.0)).alias("_k"),
        )
    )
    per_portfolio = days.group_by("portfolio_id").agg(
        pl.col("date").min().alias("start_date"),
        pl.col("date").max().alias("end_date"),
        pl.len().alias("_periods"),
        ((1.0 + r).product() - 1.0).alias("_R"),
        (1.0 + r > 0.0).all().alias("_ok"),
    )
    per_portfolio = per_portfolio.with_columns(_log_ratio(pl.col("_R"), pl.lit(0.0)).alias("_K"))
    days = days.join(per_portfolio, on="portfolio_id")
    if linking == "compound":
        days, ok = days.with_columns(pl.col("_grown").alias("_f")), pl.lit(True)
    else:
        days, ok = days.with_columns((pl.col("_k") / pl.col("_K")).alias("_f")), pl.col("_ok")
    out = (
        frame.join(days.select(*_DAY_KEYS, "_f"), on=_DAY_KEYS)
        .group_by("portfolio_id", "instrument_id")
        .agg((pl.col("_c") * pl.col("_f")).sum().alias("contribution"), pl.col("weight").sum().alias("_weights"))
        .join(per_portfolio, on="portfolio_id")
        .with_columns(
            (pl.col("_weights") / pl.col("_periods")).alias("average_weight"),
            pl.when(ok).then(pl.col("contribution")).alias("contribution"),
            pl.when(~ok).then(pl.lit(CANNOT_LINK_CONTRIBUTION)).alias("note"),
        )
    )
    return _finish(out, CONTRIBUTION_SCHEMA, ["portfolio_id", "instrument_id"])
