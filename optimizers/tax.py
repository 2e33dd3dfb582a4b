"""Tax inputs of the rebalancing optimiser for TAXABLE portfolios (US rules): the tax cost of
selling each open LONG lot, that cost as a convex piecewise-linear function of the weight sold,
wash-sale windows, loss-harvest candidates, and the lots a sale takes.

Rules and formulas
------------------
- **Term.** A lot sold on ``as_of`` is LONG-term when ``as_of > holding_start + 1 calendar year``
  (Polars ``offset_by("1y")``; Feb 29 + 1y = Feb 28), else SHORT-term: the rule of
  ``transforms.lots`` (``_long_term``, the ledger's ``term``). A lot bought 2023-01-10 is SHORT
  sold on 2024-01-10 (365 days) and LONG on 2024-01-11; over a Feb 29 "one year" is 366 days.
  ``holding_start`` already carries wash-sale adjustments (``LOTS_SCHEMA``).
- **Tax per share** (local currency): ``basis_per_share = tax_basis / quantity`` (the TAX basis,
  wash-sale adjustments included, not the economic cost basis), ``gain_per_share = price -
  basis_per_share``, ``tax_per_share = rate(term) * gain_per_share`` with ``rate`` =
  ``TaxRates.short_term`` or ``.long_term``; negative for a loss (a tax saving).
  ``tax_per_value = tax_per_share / price``: the tax of selling one unit of value (the same in
  any currency, so also the tax as a fraction of NAV per unit of weight sold).
- **Sale order** (the tax-optimal lot choice) within a (portfolio, instrument): ascending
  ``tax_per_share`` (largest saving first, then the smallest tax), ties by ``holding_start`` then
  ``lot_id`` (FIFO). Selling ``q`` shares along it costs a sum of non-decreasing slopes, so the
  tax is a convex piecewise-linear function of ``q``.
- **Tax segments** (the optimiser's input, in weight units): lot ``i`` is a piece of length
  ``quantity * price * fx / nav`` with slope ``tax_per_value``; for instruments that may not
  harvest losses the slope is ``max(slope, 0)`` (a loss is worth nothing there, which keeps the
  problem convex). Consecutive pieces with equal slopes are joined (exact); beyond ``J``
  pieces, consecutive pieces are merged into at most ``J`` with the length-weighted mean slope
  (see ``tax_segments``).
- **Wash sales** (30 calendar days, ``WASH_SALE_DAYS``): a LONG lot closed at a taxable loss on
  day ``d`` blocks purchases until ``d + 30``; a LONG purchase within the last 30 days makes any
  loss sale now a wash sale, so that instrument cannot harvest.
- **Harvest candidates:** unrealised tax loss ``sum_lots -min(gain_per_share, 0) * quantity *
  fx`` (base currency) ``> threshold * nav``, with no recent purchase.

Currencies: ``price``, ``basis_per_share``, gains and taxes per lot are in the instrument's
local currency; ``fx_rate`` is base currency per local unit; ``nav`` is in base currency.
Lots whose instrument has no positive price stay in ``lot_tax_costs`` with null price-dependent
figures and a ``note``; every later function skips them.
"""

from __future__ import annotations

import transforms  # noqa: F401  (sets the Polars engine affinity)

import math
from dataclasses import dataclass
from datetime import date, datetime, timedelta

import polars as pl

from transforms.frame_checks import collected_with, require_finite, require_no_nulls, require_unique

WASH_SALE_DAYS = 30
KEYS = ["portfolio_id", "instrument_id"]
# a lot piece within this fraction of the lot's quantity is taken whole / not at all, as in
# transforms.lot_kernel; a sell within it above the open quantity sells it all
REL_TOL = 1e-9

NO_PRICE = "no price for the instrument"
PRICE_NOT_POSITIVE = "price is not positive"

WASH_SALE_BLOCKS_SCHEMA: dict[str, pl.DataType] = {
    "portfolio_id": pl.String,
    "instrument_id": pl.String,
    "last_loss_sale": pl.Date,  # latest LONG close at a taxable loss in [as_of - days, as_of]
    "blocked_until": pl.Date,  # last_loss_sale + days (inclusive)
    "loss": pl.Float64,  # > 0: summed -taxable_pnl of those closes in the window, local ccy
}

RECENT_PURCHASES_SCHEMA: dict[str, pl.DataType] = {
    "portfolio_id": pl.String,
    "instrument_id": pl.String,
    "last_purchase": pl.Date,  # latest LONG lot open date (UTC) in [as_of - days, as_of]
}

LOT_TAX_COSTS_SCHEMA: dict[str, pl.DataType] = {
    "portfolio_id": pl.String,
    "instrument_id": pl.String,
    "lot_id": pl.String,
    "quantity": pl.Float64,  # open shares, > 0
    "price": pl.Float64,  # local, > 0; null when the note says so
    "fx_rate": pl.Float64,  # base per local unit, from the prices frame; null when not given
    "basis_per_share": pl.Float64,  # tax_basis / quantity, local
    "gain_per_share": pl.Float64,  # price - basis_per_share
    "term": pl.String,  # SHORT or LONG if sold on as_of
    "rate": pl.Float64,  # the term's tax rate
    "tax_per_share": pl.Float64,  # rate * gain_per_share (< 0: a saving)
    "tax_per_value": pl.Float64,  # tax_per_share / price
    "holding_start": pl.Date,
    "note": pl.String,  # null, or why the price-dependent figures are null
}

TAX_SEGMENTS_SCHEMA: dict[str, pl.DataType] = {
    "portfolio_id": pl.String,
    "instrument_id": pl.String,
    "segment": pl.Int64,  # 0 .. (at most J) - 1, in ascending slope
    "length": pl.Float64,  # weight (fraction of nav) sold along this piece, > 0
    "slope": pl.Float64,  # tax, as a fraction of nav, per unit of weight sold
}

HARVEST_CANDIDATES_SCHEMA: dict[str, pl.DataType] = {
    "portfolio_id": pl.String,
    "instrument_id": pl.String,
    "unrealized_loss": pl.Float64,  # > 0, base ccy: sum over lots of -min(gain, 0) * qty * fx
    "loss_share": pl.Float64,  # unrealized_loss / nav
    "purchase_blocked_until": pl.Date,  # an existing wash-sale block (wash_sale_blocks), or null
}

LOT_SALES_SCHEMA: dict[str, pl.DataType] = {
    "portfolio_id": pl.String,
    "instrument_id": pl.String,
    "lot_id": pl.String,
    "quantity": pl.Float64,  # shares sold from this lot, > 0
    "price": pl.Float64,  # local
    "basis_per_share": pl.Float64,
    "gain": pl.Float64,  # quantity * gain_per_share, local
    "term": pl.String,
    "tax": pl.Float64,  # quantity * tax_per_share, local
    "wash_sale": pl.Boolean,  # false here: the caller sets it
}


@dataclass(frozen=True)
class TaxRates:
    """US federal rates on realised gains: ``short_term`` (held <= 1 year, ordinary income) and
    ``long_term``. Each must be a finite number in [0, 1) (``ValueError`` otherwise)."""

    short_term: float = 0.37
    long_term: float = 0.20

    def __post_init__(self) -> None:
        for name in ("short_term", "long_term"):
            r = getattr(self, name)
            if isinstance(r, bool) or not isinstance(r, (int, float)) or not (0.0 <= r < 1.0):
                raise ValueError(f"TaxRates.{name} must be a number in [0, 1), got {r!r}")


# --- checks -------------------------------------------------------------------------------------


def _check_as_of(as_of: date) -> None:
    if isinstance(as_of, datetime) or not isinstance(as_of, date):
        raise ValueError(f"as_of must be a datetime.date, got {type(as_of).__name__}")


def _check_days(days: int) -> None:
    if isinstance(days, bool) or not isinstance(days, int) or days < 0:
        raise ValueError(f"days must be a non-negative integer, got {days!r}")


def _check_values(df: pl.DataFrame, column: str, allowed: tuple[str, ...], name: str) -> None:
    bad = df.filter(~pl.col(column).is_in(allowed))[column].unique().sort().to_list()
    if bad:
        raise ValueError(f"{name} has {column} value(s) {bad}; allowed: {list(allowed)}")


def _check_positive(df: pl.DataFrame, column: str, name: str, allow_zero: bool = False) -> None:
    bad = df.filter(pl.col(column) < 0 if allow_zero else pl.col(column) <= 0)
    if bad.height:
        what = "negative" if allow_zero else "non-positive"
        shown = bad.select(*[c for c in KEYS if c in bad.columns], column).row(0)
        raise ValueError(f"{name} has {bad.height} row(s) with a {what} {column}, e.g. {shown}")


def _name_groups(df: pl.DataFrame, limit: int = 5) -> str:
    rows = df.select(KEYS).unique().sort(KEYS)
    shown = ", ".join(f"{p}/{i}" for p, i in rows.head(limit).iter_rows())
    return shown + (f" and {rows.height - limit} more" if rows.height > limit else "")


def _lot_costs(lot_costs: pl.DataFrame | pl.LazyFrame, name: str) -> pl.DataFrame:
    """The priced rows of a ``lot_tax_costs`` frame, checked."""
    needed = ["portfolio_id", "instrument_id", "lot_id", "quantity", "price", "basis_per_share", "gain_per_share",
              "term", "tax_per_share", "tax_per_value", "holding_start"]
    df = collected_with(lot_costs, needed, name)
    require_no_nulls(df, ["portfolio_id", "instrument_id", "lot_id", "quantity", "holding_start"], name)
    require_unique(df, ["portfolio_id", "lot_id"], name)
    df = df.filter(pl.col("price").is_not_null() & pl.col("tax_per_share").is_not_null())
    require_finite(df, ["quantity", "price", "basis_per_share", "gain_per_share", "tax_per_share", "tax_per_value"], name)
    _check_positive(df, "quantity", name)
    _check_positive(df, "price", name)
    return df


def _sale_order(df: pl.DataFrame) -> pl.DataFrame:
    return df.sort([*KEYS, "tax_per_share", "holding_start", "lot_id"], nulls_last=True)


def _with_fx(costs: pl.DataFrame, fx: pl.DataFrame | pl.LazyFrame | None, name: str) -> pl.DataFrame:
    """``costs`` with a checked ``fx_rate``: from ``fx`` when given (keyed by ``instrument_id``,
    or by (portfolio_id, instrument_id) when it has a ``portfolio_id`` column), else the
    ``fx_rate`` column of ``costs``. Every row must end with a finite positive rate."""
    if fx is not None:
        f = collected_with(fx, ["instrument_id", "fx_rate"], f"{name}: fx")
        on = KEYS if "portfolio_id" in f.columns else ["instrument_id"]
        require_no_nulls(f, on, f"{name}: fx")
        require_unique(f, on, f"{name}: fx")
        costs = costs.drop("fx_rate", strict=False).join(f.select(*on, pl.col("fx_rate").cast(pl.Float64)), on=on, how="left")
    elif "fx_rate" not in costs.columns:
        raise ValueError(f"{name}: no fx frame given and lot_costs has no fx_rate column")
    costs = costs.with_columns(pl.col("fx_rate").cast(pl.Float64))
    missing = costs.filter(pl.col("fx_rate").is_null())
    if missing.height:
        raise ValueError(f"{name}: no fx rate for {_name_groups(missing)}")
    require_finite(costs, ["fx_rate"], f"{name}: fx")
    _check_positive(costs, "fx_rate", f"{name}: fx")
    return costs


def _with_nav(costs: pl.DataFrame, nav: pl.DataFrame | pl.LazyFrame, name: str) -> pl.DataFrame:
    """``costs`` with its portfolio's ``nav`` (finite, > 0; every portfolio must have one)."""
    n = collected_with(nav, ["portfolio_id", "nav"], f"{name}: nav")
    require_no_nulls(n, ["portfolio_id"], f"{name}: nav")
    require_unique(n, ["portfolio_id"], f"{name}: nav")
    out = costs.join(n.select("portfolio_id", pl.col("nav").cast(pl.Float64)), on="portfolio_id", how="left")
    missing = out.filter(pl.col("nav").is_null())["portfolio_id"].unique().sort().to_list()
    if missing:
        raise ValueError(f"{name}: no nav for portfolio(s) {missing}")
    require_finite(out, ["nav"], f"{name}: nav")
    bad = out.filter(pl.col("nav") <= 0)["portfolio_id"].unique().sort().to_list()
    if bad:
        raise ValueError(f"{name}: nav must be positive, not for portfolio(s) {bad}")
    return out


def _key_frame(frame: pl.DataFrame | pl.LazyFrame, name: str, extra: list[str] | None = None) -> pl.DataFrame:
    """A (portfolio_id, instrument_id[, extra]) frame used as a set: nulls rejected, repeats
    collapsed (extra columns: their maximum)."""
    df = collected_with(frame, [*KEYS, *(extra or [])], name)
    require_no_nulls(df, KEYS, name)
    if extra:
        return df.group_by(KEYS).agg(pl.col(extra).max())
    return df.select(KEYS).unique()


# --- wash-sale windows --------------------------------------------------------------------------


def wash_sale_blocks(realized_pnl: pl.DataFrame | pl.LazyFrame, as_of: date, days: int = WASH_SALE_DAYS) -> pl.DataFrame:
    """Purchases a wash sale forbids: one row per (portfolio, instrument) with a recent loss sale
    (``WASH_SALE_BLOCKS_SCHEMA``, sorted by portfolio_id, instrument_id).

    Input: ``REALIZED_PNL_SCHEMA`` rows (at least portfolio_id, instrument_id, position_type,
    close_ts, taxable_pnl). Rule: a LONG close with ``taxable_pnl < 0`` on the (UTC) date ``d``,
    ``as_of - days <= d <= as_of``, forbids buying the instrument in that portfolio until
    ``d + days`` inclusive (a purchase then would be a replacement and disallow the loss).
    ``last_loss_sale`` = the latest such ``d``, ``blocked_until`` = it + ``days``, ``loss`` =
    ``-sum(taxable_pnl)`` of those closes (local currency, > 0). Gains never block; SHORT closes
    never block (short sales are outside the ledger's wash-sale rule); a loss fully disallowed
    by an earlier wash sale (``taxable_pnl == 0``) was already deferred and does not block; a
    partly disallowed one blocks with its remaining taxable loss.
    """
    _check_as_of(as_of)
    _check_days(days)
    name = "wash_sale_blocks: realized_pnl"
    df = collected_with(realized_pnl, ["portfolio_id", "instrument_id", "position_type", "close_ts", "taxable_pnl"], name)
    require_no_nulls(df, ["portfolio_id", "instrument_id", "position_type", "close_ts", "taxable_pnl"], name)
    _check_values(df, "position_type", ("LONG", "SHORT"), name)
    require_finite(df, ["taxable_pnl"], name)
    day = pl.col("close_ts").dt.date()
    start = as_of - timedelta(days=days)
    out = (
        df.filter((pl.col("position_type") == "LONG") & (pl.col("taxable_pnl") < 0) & day.is_between(start, as_of))
        .group_by(KEYS)
        .agg(day.max().alias("last_loss_sale"), (-pl.col("taxable_pnl").cast(pl.Float64)).sum().alias("loss"))
        .with_columns(pl.col("last_loss_sale").dt.offset_by(f"{days}d").alias("blocked_until"))
    )
    return out.select([pl.col(c).cast(t) for c, t in WASH_SALE_BLOCKS_SCHEMA.items()]).sort(KEYS)


def recent_purchases(lots: pl.DataFrame | pl.LazyFrame, as_of: date, days: int = WASH_SALE_DAYS) -> pl.DataFrame:
    """Instruments bought in the last ``days`` days (``RECENT_PURCHASES_SCHEMA``, sorted by
    portfolio_id, instrument_id).

    Input: ``LOTS_SCHEMA`` rows (at least portfolio_id, instrument_id, position_type, open_ts),
    open or closed. Rule: a LONG lot whose open date (``open_ts``, UTC date; not
    ``holding_start``, which a wash sale moves back) is in ``[as_of - days, as_of]`` is a recent
    purchase; ``last_purchase`` is the latest. Selling any lot of such an instrument at a loss
    now would be a wash sale (the purchase is a replacement), so it cannot harvest losses. This
    is conservative: the ledger does not count the lots a sale itself consumes as replacements,
    so selling exactly the recently bought shares would not be a wash sale.
    """
    _check_as_of(as_of)
    _check_days(days)
    name = "recent_purchases: lots"
    df = collected_with(lots, ["portfolio_id", "instrument_id", "position_type", "open_ts"], name)
    require_no_nulls(df, ["portfolio_id", "instrument_id", "position_type", "open_ts"], name)
    _check_values(df, "position_type", ("LONG", "SHORT"), name)
    day = pl.col("open_ts").dt.date()
    out = (
        df.filter((pl.col("position_type") == "LONG") & day.is_between(as_of - timedelta(days=days), as_of))
        .group_by(KEYS)
        .agg(day.max().alias("last_purchase"))
    )
    return out.select([pl.col(c).cast(t) for c, t in RECENT_PURCHASES_SCHEMA.items()]).sort(KEYS)


# --- per-lot tax ----------------------------------------------------------------------------------


def long_term_expr(holding_start: pl.Expr, as_of: date) -> pl.Expr:
    """True where a lot sold on ``as_of`` is LONG-term: ``as_of > holding_start + 1 calendar
    year`` (``offset_by("1y")``, Feb 29 + 1y = Feb 28), the rule of ``transforms.lots``."""
    return pl.lit(as_of, dtype=pl.Date) > holding_start.dt.offset_by("1y")


def lot_tax_costs(
    lots: pl.DataFrame | pl.LazyFrame,
    prices: pl.DataFrame | pl.LazyFrame,
    as_of: date,
    rates: TaxRates = TaxRates(),
) -> pl.DataFrame:
    """The tax of selling each open LONG lot on ``as_of`` (``LOT_TAX_COSTS_SCHEMA``), sorted by
    portfolio_id, instrument_id, then the sale order.

    Inputs:
        lots: ``LOTS_SCHEMA`` rows (at least portfolio_id, instrument_id, lot_id, position_type,
            quantity, tax_basis, holding_start, status). SHORT and CLOSED rows are ignored; the
            OPEN LONG ones need quantity > 0 and a finite tax_basis >= 0. (portfolio_id,
            lot_id) must be unique over all rows.
        prices: ``instrument_id``, ``price`` (local, per share) and optionally ``fx_rate``
            (base per local unit, carried to the output for ``tax_segments`` and
            ``harvest_candidates``) and ``portfolio_id`` (then keyed per portfolio, e.g.
            POSITIONS rows).
        rates: the short- and long-term rates.

    Per lot: ``basis_per_share = tax_basis / quantity``, ``gain_per_share = price -
    basis_per_share``, ``term`` LONG when ``as_of > holding_start + 1 year`` (else SHORT),
    ``rate`` of the term, ``tax_per_share = rate * gain_per_share``, ``tax_per_value =
    tax_per_share / price``. Sale order within (portfolio, instrument): ascending
    ``tax_per_share``, then ``holding_start``, then ``lot_id``.

    A lot whose instrument has no price (or a price <= 0) is kept with null price, gain and
    tax figures and ``note`` = ``NO_PRICE`` (or ``PRICE_NOT_POSITIVE``), placed after the
    priced lots of its group in FIFO order; the other functions of this module skip it.
    """
    _check_as_of(as_of)
    if not isinstance(rates, TaxRates):
        raise ValueError(f"rates must be a TaxRates, got {type(rates).__name__}")
    name = "lot_tax_costs: lots"
    cols = ["portfolio_id", "instrument_id", "lot_id", "position_type", "quantity", "tax_basis", "holding_start", "status"]
    df = collected_with(lots, cols, name)
    require_no_nulls(df, ["portfolio_id", "instrument_id", "lot_id", "position_type", "status"], name)
    _check_values(df, "position_type", ("LONG", "SHORT"), name)
    _check_values(df, "status", ("OPEN", "CLOSED"), name)
    require_unique(df, ["portfolio_id", "lot_id"], name)
    df = df.filter((pl.col("position_type") == "LONG") & (pl.col("status") == "OPEN")).select(
        "portfolio_id", "instrument_id", "lot_id", pl.col("quantity").cast(pl.Float64),
        pl.col("tax_basis").cast(pl.Float64), pl.col("holding_start").cast(pl.Date),
    )
    require_no_nulls(df, ["quantity", "tax_basis", "holding_start"], f"{name} (open LONG rows)")
    require_finite(df, ["quantity", "tax_basis"], f"{name} (open LONG rows)")
    _check_positive(df, "quantity", f"{name} (open LONG rows)")
    _check_positive(df, "tax_basis", f"{name} (open LONG rows)", allow_zero=True)

    pname = "lot_tax_costs: prices"
    p = collected_with(prices, ["instrument_id", "price"], pname)
    on = KEYS if "portfolio_id" in p.columns else ["instrument_id"]
    require_no_nulls(p, on, pname)
    require_unique(p, on, pname)
    fx = pl.col("fx_rate").cast(pl.Float64) if "fx_rate" in p.columns else pl.lit(None, pl.Float64).alias("fx_rate")
    p = p.select(*on, pl.col("price").cast(pl.Float64), fx)
    require_finite(p, ["price", "fx_rate"], pname)

    price = pl.col("price")
    long_term = long_term_expr(pl.col("holding_start"), as_of)
    out = (
        df.join(p, on=on, how="left")
        .with_columns(
            pl.when(price.is_null()).then(pl.lit(NO_PRICE)).when(price <= 0).then(pl.lit(PRICE_NOT_POSITIVE)).alias("note"),
            (pl.col("tax_basis") / pl.col("quantity")).alias("basis_per_share"),
            pl.when(long_term).then(pl.lit("LONG")).otherwise(pl.lit("SHORT")).alias("term"),
            pl.when(long_term).then(pl.lit(rates.long_term)).otherwise(pl.lit(rates.short_term)).alias("rate"),
        )
        .with_columns(pl.when(pl.col("note").is_null()).then(price).alias("price"))
        .with_columns((price - pl.col("basis_per_share")).alias("gain_per_share"))
        .with_columns((pl.col("rate") * pl.col("gain_per_share")).alias("tax_per_share"))
        .with_columns((pl.col("tax_per_share") / price).alias("tax_per_value"))
    )
    return _sale_order(out.select([pl.col(c).cast(t) for c, t in LOT_TAX_COSTS_SCHEMA.items()]))


# --- the optimiser's tax function -----------------------------------------------------------------


def tax_segments(
    lot_costs: pl.DataFrame | pl.LazyFrame,
    nav: pl.DataFrame | pl.LazyFrame,
    fx: pl.DataFrame | pl.LazyFrame | None,
    segments: int,
    harvestable: pl.DataFrame | pl.LazyFrame,
) -> pl.DataFrame:
    """The convex tax of selling each (portfolio, instrument), in weight units, in at most
    ``segments`` pieces (``TAX_SEGMENTS_SCHEMA``, sorted by portfolio_id, instrument_id,
    segment).

    Inputs:
        lot_costs: ``lot_tax_costs`` output (rows with a note, i.e. without a price, are
            skipped: their instrument gets no segment).
        nav: ``portfolio_id``, ``nav`` (base currency, > 0) for every portfolio in lot_costs.
        fx: ``instrument_id``, ``fx_rate`` (base per local unit, > 0), or with ``portfolio_id``
            too (keyed per portfolio, since the base currency is the portfolio's); ``None``
            uses the ``fx_rate`` column of lot_costs. Every priced lot needs a rate.
        segments: ``J`` >= 1, the optimiser's number of segment variables per instrument.
        harvestable: (portfolio_id, instrument_id) allowed to realise losses for a benefit
            (repeats are ignored).

    Rule: in sale order, lot ``i`` is a piece of length ``l_i = quantity * price * fx / nav``
    with slope ``s_i = tax_per_value`` (tax as a fraction of nav per unit of weight sold), or
    ``max(s_i, 0)`` when the instrument is not harvestable. Selling weight ``w`` costs
    ``T(w) = sum_i s_i * clip(w - L_i, 0, l_i)`` with ``L_i`` the lengths before ``i``: convex
    because the slopes are non-decreasing. Pieces with equal slopes are joined (exact). When
    more than ``J`` remain, consecutive pieces are merged into ``J``, each with the
    length-weighted mean slope ``sum(l s) / sum(l)``: the secant (chord) interpolation of ``T``
    at the merged pieces' ends. It equals ``T`` at every segment end and, ``T`` being convex, is
    never below it in between (an upper approximation; the lower one would need tangents, not
    chords); it is still convex and its lengths still sum to the instrument's weight.

    Merging never mixes slopes of different sign when ``J`` allows it: pieces are split into
    negative, zero (one piece after joining) and positive slopes; the zero class gets one
    segment and the rest of the budget is shared between the negative and positive classes in
    proportion to their piece counts (at least one each, at most their count). Within a class
    of ``k`` pieces given ``b`` segments, piece ``i`` (0-based, slope order) goes to segment
    ``floor(i * b / k)`` (about equal numbers of pieces each). With ``J`` = 2 and all three
    signs, zero joins the positive class; with ``J`` = 1 all pieces merge. An instrument gets
    fewer than ``J`` rows when it has fewer distinct slopes: the caller pads with zero lengths.
    """
    if isinstance(segments, bool) or not isinstance(segments, int) or segments < 1:
        raise ValueError(f"segments must be a positive integer, got {segments!r}")
    name = "tax_segments"
    costs = _with_nav(_with_fx(_lot_costs(lot_costs, f"{name}: lot_costs"), fx, name), nav, name)
    h = _key_frame(harvestable, f"{name}: harvestable").with_columns(pl.lit(True).alias("_harvest"))
    slope = pl.col("tax_per_value")
    pieces = (
        costs.join(h, on=KEYS, how="left")
        .select(
            *KEYS,
            (pl.col("quantity") * pl.col("price") * pl.col("fx_rate") / pl.col("nav")).alias("length"),
            # + 0.0 turns a -0.0 into 0.0, so every zero slope joins one piece
            (pl.when(pl.col("_harvest").fill_null(False)).then(slope).otherwise(slope.clip(lower_bound=0.0)) + 0.0)
            .alias("slope"),
        )
        # equal slopes join exactly; the slope order is the sale order (one price per group)
        .group_by([*KEYS, "slope"])
        .agg(pl.col("length").sum())
        .sort([*KEYS, "slope"])
    )
    J = segments
    s = pl.col("slope")
    sign = pl.when(s < 0).then(0).when(s == 0).then(1).otherwise(2)

    def count(c: int, cls: pl.Expr) -> pl.Expr:
        return (cls == c).sum().over(KEYS).cast(pl.Int64)

    pieces = pieces.with_columns(sign.alias("_sign"))
    classes = sum(((count(c, pl.col("_sign")) > 0).cast(pl.Int64) for c in range(3)), pl.lit(0, pl.Int64))
    # fewer segments than signs: zero joins the positive class (J = 2), or everything merges (J = 1)
    cls = (
        pl.when(classes <= J).then(pl.col("_sign"))
        .when(pl.lit(J) >= 2).then(pl.when(s < 0).then(0).otherwise(2))
        .otherwise(0)
    )
    pieces = pieces.with_columns(cls.alias("_cls")).with_columns(
        count(0, pl.col("_cls")).alias("_c0"), count(1, pl.col("_cls")).alias("_c1"), count(2, pl.col("_cls")).alias("_c2")
    )
    c0, c1, c2 = pl.col("_c0"), pl.col("_c1"), pl.col("_c2")
    b1 = (c1 > 0).cast(pl.Int64)  # the zero class (one piece after joining) gets one segment
    budget = pl.lit(J, pl.Int64) - b1
    fits = (c0 + c2) <= budget
    share = (budget.cast(pl.Float64) * c0 / (c0 + c2).clip(lower_bound=1)).round().cast(pl.Int64)
    b0 = pl.min_horizontal(share.clip(lower_bound=(c0 > 0).cast(pl.Int64)), c0, budget - (c2 > 0).cast(pl.Int64))
    pieces = pieces.with_columns(pl.when(fits).then(c0).otherwise(b0).alias("_b0"))
    pieces = pieces.with_columns(pl.when(fits).then(c2).otherwise(pl.min_horizontal(c2, budget - pl.col("_b0"))).alias("_b2"))
    # budget the positive class could not use goes back to the negative one
    pieces = pieces.with_columns(pl.when(fits).then(c0).otherwise(pl.min_horizontal(c0, budget - pl.col("_b2"))).alias("_b0"))
    k = pl.when(pl.col("_cls") == 0).then(c0).when(pl.col("_cls") == 1).then(c1).otherwise(c2)
    b = pl.when(pl.col("_cls") == 0).then(pl.col("_b0")).when(pl.col("_cls") == 1).then(b1).otherwise(pl.col("_b2"))
    offset = pl.when(pl.col("_cls") == 0).then(0).when(pl.col("_cls") == 1).then(pl.col("_b0")).otherwise(pl.col("_b0") + b1)
    index = pl.int_range(pl.len(), dtype=pl.Int64).over([*KEYS, "_cls"])
    out = (
        pieces.with_columns((offset + (index * b) // k).alias("segment"))
        .group_by([*KEYS, "segment"])
        .agg(pl.col("length").sum(), ((pl.col("length") * s).sum() / pl.col("length").sum()).alias("slope"))
    )
    return out.select([pl.col(c).cast(t) for c, t in TAX_SEGMENTS_SCHEMA.items()]).sort([*KEYS, "segment"])


def harvest_candidates(
    lot_costs: pl.DataFrame | pl.LazyFrame,
    nav: pl.DataFrame | pl.LazyFrame,
    blocks: pl.DataFrame | pl.LazyFrame,
    purchases: pl.DataFrame | pl.LazyFrame,
    threshold: float,
    fx: pl.DataFrame | pl.LazyFrame | None = None,
) -> pl.DataFrame:
    """Instruments worth selling for their tax loss (``HARVEST_CANDIDATES_SCHEMA``, sorted by
    portfolio_id, instrument_id).

    Inputs:
        lot_costs: ``lot_tax_costs`` output (unpriced rows skipped), with its ``fx_rate``
            column, or ``fx`` as in ``tax_segments``.
        nav: ``portfolio_id``, ``nav`` (base, > 0) for every portfolio in lot_costs.
        blocks: ``wash_sale_blocks`` output (portfolio_id, instrument_id, blocked_until).
        purchases: ``recent_purchases`` output (portfolio_id, instrument_id).
        threshold: >= 0, a fraction of nav.

    Rule: ``unrealized_loss = sum over open lots of -min(gain_per_share, 0) * quantity *
    fx_rate`` (base currency; gains on other lots do not offset it, the loss lots are the ones
    sold first), kept when ``unrealized_loss > threshold * nav`` (strictly) and the instrument
    is not in ``purchases`` (a loss sale now would be a wash sale). ``loss_share =
    unrealized_loss / nav``. A harvested instrument must not be bought back within the wash-sale
    window: the optimiser forbids buying every candidate it sells. ``blocks`` do not exclude a
    candidate (selling more at a loss after a recent loss sale is no wash sale; only a purchase
    is): ``purchase_blocked_until`` reports an existing block, which the caller must honour
    too.
    """
    if isinstance(threshold, bool) or not isinstance(threshold, (int, float)) or not (0.0 <= threshold < math.inf):
        raise ValueError(f"threshold must be a finite number >= 0, got {threshold!r}")
    name = "harvest_candidates"
    costs = _with_fx(_lot_costs(lot_costs, f"{name}: lot_costs"), fx, name)
    bl = _key_frame(blocks, f"{name}: blocks", ["blocked_until"])
    pu = _key_frame(purchases, f"{name}: purchases")
    loss = (-pl.col("gain_per_share").clip(upper_bound=0.0) * pl.col("quantity") * pl.col("fx_rate")).sum()
    per = costs.group_by(KEYS).agg(loss.alias("unrealized_loss"))
    per = _with_nav(per, nav, name)
    out = (
        per.filter(pl.col("unrealized_loss") > threshold * pl.col("nav"))
        .join(pu, on=KEYS, how="anti")
        .join(bl.rename({"blocked_until": "purchase_blocked_until"}), on=KEYS, how="left")
        .with_columns((pl.col("unrealized_loss") / pl.col("nav")).alias("loss_share"))
    )
    return out.select([pl.col(c).cast(t) for c, t in HARVEST_CANDIDATES_SCHEMA.items()]).sort(KEYS)


# --- after the solve ------------------------------------------------------------------------------


def select_lots(lot_costs: pl.DataFrame | pl.LazyFrame, sells: pl.DataFrame | pl.LazyFrame) -> pl.DataFrame:
    """The lots each sell takes, in sale order (``LOT_SALES_SCHEMA``, sorted by portfolio_id,
    instrument_id, then sale order).

    Inputs:
        lot_costs: ``lot_tax_costs`` output.
        sells: ``portfolio_id``, ``instrument_id``, ``quantity`` (shares to sell, finite, > 0),
            one row per (portfolio, instrument).

    Rule: with ``before_i`` = the quantity of the lots ahead of lot ``i`` in sale order
    (ascending tax_per_share, holding_start, lot_id; a cumulative sum per group), lot ``i``
    sells ``min(quantity_i, max(sell - before_i, 0))``: whole lots, then part of the last one.
    A piece within ``1e-9`` of its lot's quantity is taken whole, one below ``1e-9`` of it is
    not taken. ``gain = quantity * gain_per_share``, ``tax = quantity * tax_per_share`` (local
    currency); ``wash_sale`` is false (the caller sets it). A sell of more than the open
    quantity (beyond a relative ``1e-9``), of an instrument without open lots, or of one without
    a price is a ``ValueError`` naming the portfolio and instrument: the optimiser never sells
    more than is held, and a short sale is not a lot sale.
    """
    name = "select_lots"
    everything = collected_with(lot_costs, ["portfolio_id", "instrument_id", "price"], f"{name}: lot_costs")
    costs = _lot_costs(everything, f"{name}: lot_costs")
    sname = f"{name}: sells"
    sv = collected_with(sells, [*KEYS, "quantity"], sname)
    require_no_nulls(sv, [*KEYS, "quantity"], sname)
    require_unique(sv, KEYS, sname)
    sv = sv.select(*KEYS, pl.col("quantity").cast(pl.Float64))
    require_finite(sv, ["quantity"], sname)
    _check_positive(sv, "quantity", sname)
    sv = sv.rename({"quantity": "_sell"})

    unpriced = sv.join(everything.filter(pl.col("price").is_null()).select(KEYS).unique(), on=KEYS, how="semi")
    if unpriced.height:
        raise ValueError(f"{name}: no price for the lots of {_name_groups(unpriced)}")
    open_qty = costs.group_by(KEYS).agg(pl.col("quantity").sum().alias("_open"))
    checked = sv.join(open_qty, on=KEYS, how="left").with_columns(pl.col("_open").fill_null(0.0))
    over = checked.filter(pl.col("_sell") > pl.col("_open") * (1.0 + REL_TOL))
    if over.height:
        p, i, q, o = over.sort(KEYS).row(0)
        raise ValueError(
            f"{name}: the sell of {q} shares of {p}/{i} exceeds its open LONG quantity {o}"
            + (f" (and {over.height - 1} more over-sell(s): {_name_groups(over)})" if over.height > 1 else "")
        )

    q = pl.col("quantity")
    before = (q.cum_sum() - q).over(KEYS)
    take = pl.min_horizontal(q, (pl.col("_sell") - pl.col("_before")).clip(lower_bound=0.0))
    out = (
        _sale_order(costs.join(sv, on=KEYS, how="inner"))
        .with_columns(before.alias("_before"))
        .with_columns(take.alias("_take"))
        .with_columns(pl.when(pl.col("_take") >= q * (1.0 - REL_TOL)).then(q).otherwise(pl.col("_take")).alias("_take"))
        .filter(pl.col("_take") > q * REL_TOL)
        .with_columns(
            pl.col("_take").alias("quantity"),
            (pl.col("_take") * pl.col("gain_per_share")).alias("gain"),
            (pl.col("_take") * pl.col("tax_per_share")).alias("tax"),
            pl.lit(False).alias("wash_sale"),
        )
    )
    return out.select([pl.col(c).cast(t) for c, t in LOT_SALES_SCHEMA.items()])
