"""From the book's tables to one ``RebalanceInputs`` per portfolio.

The policy (``OptimizerPolicy``, per portfolio with a default) sets the constraints; the
tables give the numbers:

- **universe**: the instruments the portfolio holds (LONG or SHORT) or targets; nothing else
  (an instrument neither held nor targeted is never bought);
- **weights**: ``positions.market_value / nav`` (base currency); a sleeve's share of a holding is
  its share of the open lots' quantity (``strategy_id``; null is ``UNASSIGNED``); targets are
  ``transforms.drift.targets_in_force``, sleeve by sleeve;
- **risk**: the base currency's factor model (``risk_model``: exposures, factor covariance,
  specific variance, per day, annualised here by 252). An instrument the model does not cover
  gets no factor exposure and the largest specific variance in the model, and may be sold but
  not bought (its risk is unknown);
- **market** (``market_snapshot``): one share's value in the base currency (``unit_value``),
  the average daily traded value over ``ADV_WINDOW`` days (``adv_value``, base currency) and the
  daily volatility of its returns over ``VOL_WINDOW`` days;
- **bounds**: long-only unless the portfolio holds a short (then ``lower = min(current, 0)``);
  ``upper = max(max_weight, target)`` so that the targets themselves are always allowed;
- **liquidity**: a trade is at most ``adv_share`` of the average daily traded value; an
  instrument without a price cannot trade; one without volume data trades without a liquidity
  cap or an impact cost (the recommendation says so);
- **caps**: sector and asset-class caps are ``max(cap, the targets' own sum)``;
- **tax** (TAXABLE portfolios): the lots' convex tax pieces (``optimizers.tax``); no purchase of
  an instrument inside a wash-sale window; losses above ``harvest_threshold`` of NAV on an
  instrument held at or above target (and not bought in the last 30 days) may be harvested,
  and such an instrument is then not bought;
- **LIQUIDATING** portfolios target all cash and only sell, with no cash buffer, no tracking-error
  limit and no turnover cap: the optimiser sheds risk at the least cost the liquidity allows.
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields
from datetime import date
from typing import Any, Mapping

import numpy as np
import polars as pl

import transforms  # noqa: F401  (sets the Polars engine)
from optimizers.costs import CostModel, impact_coefficients
from optimizers.problem import RebalanceInputs
from optimizers.tax import TaxRates
from transforms.conventions import PERIODS_PER_YEAR

ADV_WINDOW = 20  # business days of volume in the average daily traded value
VOL_WINDOW = 63  # business days of returns in the daily volatility
UNASSIGNED = "UNASSIGNED"
DEFAULT_POLICY = "default"
NO_VOLUME = "no volume data: liquidity and impact not estimated"
NO_PRICE = "no price: cannot trade"
NO_MODEL = "not in the risk model: may be sold, not bought"

MARKET_SNAPSHOT_SCHEMA: dict[str, pl.DataType] = {
    "base_currency": pl.String,
    "instrument_id": pl.String,
    "date": pl.Date,  # of unit_value
    "unit_value": pl.Float64,  # one share in the base currency
    "adv_value": pl.Float64,  # mean of volume * unit_value over the last ADV_WINDOW days; null without volume
    "daily_volatility": pl.Float64,  # sample std of daily returns over the last VOL_WINDOW days
}


@dataclass(frozen=True)
class OptimizerPolicy:
    """What a portfolio's rebalance may do. Weights and rates are fractions; ``None`` switches a
    constraint off. ``risk_aversion`` weighs the annualised tracking variance against costs."""

    risk_aversion: float = 25.0
    cash_buffer: float = 0.01
    max_weight: float | None = 0.10
    sector_cap: float | None = None
    class_cap: float | None = None
    turnover_max: float | None = None
    adv_share: float = 0.10
    te_max: float | None = None
    sector_te_budget: float | None = None
    half_spread: float = 0.0005
    commission: float = 0.0005
    impact: float = 1.0
    short_term_rate: float = 0.37
    long_term_rate: float = 0.20
    harvest_threshold: float = 0.005
    tax_segments: int = 4
    min_trade_value: float = 1_000.0

    def __post_init__(self) -> None:
        for f in fields(self):
            value = getattr(self, f.name)
            if value is None:
                continue
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not np.isfinite(value) or value < 0:
                raise ValueError(f"optimizer policy: {f.name} must be a number >= 0 (or null), got {value!r}")
        if self.risk_aversion <= 0:
            raise ValueError("optimizer policy: risk_aversion must be > 0")
        if self.tax_segments < 1 or int(self.tax_segments) != self.tax_segments:
            raise ValueError("optimizer policy: tax_segments must be a whole number >= 1")
        if self.cash_buffer >= 1:
            raise ValueError("optimizer policy: cash_buffer must be below 1")

    @property
    def costs(self) -> CostModel:
        return CostModel(self.half_spread, self.commission, self.impact)

    @property
    def tax_rates(self) -> TaxRates:
        return TaxRates(self.short_term_rate, self.long_term_rate)


def parse_optimizer_policies(spec: Mapping[str, Any] | None) -> dict[str, OptimizerPolicy]:
    """``{"default": {...}, "portfolios": {"P1": {...}}}`` (a parsed YAML mapping) to policies by
    portfolio id plus ``"default"``; a portfolio's entry overrides the default key by key.
    Unknown keys raise ``ValueError`` naming them."""
    spec = dict(spec or {})
    unknown = set(spec) - {"default", "portfolios"}
    if unknown:
        raise ValueError(f"optimizer policies: unknown section(s) {sorted(unknown)}")
    names = {f.name for f in fields(OptimizerPolicy)}

    def checked(entry: Mapping[str, Any] | None, where: str) -> dict[str, Any]:
        entry = dict(entry or {})
        bad = set(entry) - names
        if bad:
            raise ValueError(f"optimizer policies ({where}): unknown key(s) {sorted(bad)}")
        return entry

    default = checked(spec.get("default"), "default")
    out = {DEFAULT_POLICY: OptimizerPolicy(**default)}
    for pid, entry in dict(spec.get("portfolios") or {}).items():
        out[str(pid)] = OptimizerPolicy(**(default | checked(entry, str(pid))))
    return out


def policy_of(policies: Mapping[str, OptimizerPolicy] | None, portfolio_id: str) -> OptimizerPolicy:
    """The portfolio's policy, else the default, else ``OptimizerPolicy()``."""
    policies = policies or {}
    return policies.get(portfolio_id) or policies.get(DEFAULT_POLICY) or OptimizerPolicy()


def market_snapshot(instrument_returns: pl.DataFrame, prices: pl.DataFrame) -> pl.DataFrame:
    """``MARKET_SNAPSHOT_SCHEMA`` per (base currency, instrument) on each one's last valued day.

    Inputs: ``instrument_returns`` (``transforms.market_returns.INSTRUMENT_RETURNS_SCHEMA``:
    instrument_id, base_currency, date, value = close x fx, daily_return) and bronze ``prices``
    (instrument_id, date, volume). ``adv_value = mean(volume_t * value_t)`` over the last
    ``ADV_WINDOW`` days with a volume (null when there is none); ``daily_volatility`` the sample
    standard deviation of the last ``VOL_WINDOW`` daily returns."""
    volume = prices.select("instrument_id", "date", pl.col("volume").cast(pl.Float64))
    r = instrument_returns.join(volume, on=["instrument_id", "date"], how="left").sort("base_currency", "instrument_id", "date")
    keys = ["base_currency", "instrument_id"]
    traded = pl.col("volume") * pl.col("value")
    return (
        r.filter(pl.col("value").is_not_null())
        .group_by(keys)
        .agg(
            pl.col("date").last(),
            pl.col("value").last().alias("unit_value"),
            traded.drop_nulls().tail(ADV_WINDOW).mean().alias("adv_value"),
            pl.col("daily_return").drop_nulls().tail(VOL_WINDOW).std(ddof=1).alias("daily_volatility"),
        )
        .select(list(MARKET_SNAPSHOT_SCHEMA))
        .cast(MARKET_SNAPSHOT_SCHEMA)
        .sort(keys)
    )


@dataclass
class RiskModel:
    """One base currency's factor model, annualised, with a row index by instrument id."""

    instrument_ids: tuple[str, ...]
    exposures: np.ndarray  # (N, K)
    factor_covariance: np.ndarray  # (K, K), annual
    specific_variance: np.ndarray  # (N,), annual
    index: dict[str, int] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.index = {i: k for k, i in enumerate(self.instrument_ids)}


def risk_models(risk_model: pl.DataFrame) -> dict[str, RiskModel]:
    """``risk_model`` rows (``transforms.contract.RISK_MODEL_SCHEMA``: per day) to annualised
    ``RiskModel`` by base currency. Exposures absent from the rows are 0 (the table drops zeros)."""
    out = {}
    for (base,), rows in risk_model.partition_by("base_currency", as_dict=True, maintain_order=True).items():
        spec = rows.filter(pl.col("matrix") == "specific_variance").sort("row_id")
        ids = tuple(spec["row_id"].to_list())
        fac = rows.filter(pl.col("matrix") == "factor_covariance")
        factors = sorted(set(fac["row_id"].to_list()))
        fidx = {f: j for j, f in enumerate(factors)}
        F = np.zeros((len(factors), len(factors)))
        F[[fidx[f] for f in fac["row_id"]], [fidx[f] for f in fac["column_id"]]] = fac["value"].to_numpy()
        iidx = {i: k for k, i in enumerate(ids)}
        ex = rows.filter((pl.col("matrix") == "exposures") & pl.col("row_id").is_in(list(ids)) & pl.col("column_id").is_in(factors))
        X = np.zeros((len(ids), len(factors)))
        X[[iidx[i] for i in ex["row_id"]], [fidx[f] for f in ex["column_id"]]] = ex["value"].to_numpy()
        out[base] = RiskModel(ids, X, F * PERIODS_PER_YEAR, spec["value"].to_numpy() * PERIODS_PER_YEAR)
    return out


@dataclass
class PortfolioBook:
    """Everything about one portfolio that its problem needs, already filtered to it."""

    portfolio_id: str
    status: str
    base_currency: str
    taxable: bool
    nav: float
    cash: float  # weight
    holdings: pl.DataFrame  # instrument_id, strategy_id, weight (per sleeve; no cash rows)
    targets: pl.DataFrame  # strategy_id, instrument_id, target_weight
    tax_segments: pl.DataFrame | None = None  # instrument_id, segment, length, slope
    no_buy: frozenset[str] = frozenset()  # wash-sale windows and harvested instruments
    harvestable: frozenset[str] = frozenset()


@dataclass
class ProblemMeta:
    """What the caller needs beside the problem to turn weights into trades and explain them."""

    portfolio_id: str
    nav: float
    unit_value: np.ndarray  # base currency per share (NaN: no price)
    lot_size: np.ndarray
    notes: list[str]  # per instrument, "" when none
    sleeves: tuple[str, ...]


def portfolio_problem(
    book: PortfolioBook, instruments: pl.DataFrame, model: RiskModel, snapshot: pl.DataFrame, policy: OptimizerPolicy
) -> tuple[RebalanceInputs, ProblemMeta]:
    """The ``RebalanceInputs`` of one portfolio (rules in the module docstring) and its meta.

    ``instruments``: bronze instruments (instrument_id, sector, asset_class, lot_size);
    ``snapshot``: ``market_snapshot`` rows of the portfolio's base currency."""
    liquidating = book.status == "LIQUIDATING"
    held, tgt = book.holdings, book.targets
    ids = sorted(set(held["instrument_id"].to_list()) | set(tgt["instrument_id"].to_list()))
    sleeves = sorted(set(held["strategy_id"].to_list()) | set(tgt["strategy_id"].to_list())) or [UNASSIGNED]
    n, S = len(ids), len(sleeves)
    iidx, sidx = {i: k for k, i in enumerate(ids)}, {s: k for k, s in enumerate(sleeves)}
    current, target = np.zeros((n, S)), np.zeros((n, S))
    if held.height:
        np.add.at(current, ([iidx[i] for i in held["instrument_id"]], [sidx[s] for s in held["strategy_id"]]), held["weight"].to_numpy())
    if tgt.height and not liquidating:
        np.add.at(target, ([iidx[i] for i in tgt["instrument_id"]], [sidx[s] for s in tgt["strategy_id"]]), tgt["target_weight"].to_numpy())

    universe = pl.DataFrame({"instrument_id": ids})
    ref = universe.join(instruments.select("instrument_id", "sector", "asset_class", "lot_size"), on="instrument_id", how="left")
    mkt = universe.join(snapshot.select("instrument_id", "unit_value", "adv_value", "daily_volatility"), on="instrument_id", how="left")
    unit_value = mkt["unit_value"].fill_null(np.nan).to_numpy().astype(float)
    adv = mkt["adv_value"].fill_null(np.nan).to_numpy().astype(float)
    sigma = mkt["daily_volatility"].fill_null(np.nan).to_numpy().astype(float)
    lot_size = ref["lot_size"].fill_null(1).to_numpy().astype(float)

    rows = np.array([model.index.get(i, -1) for i in ids])
    covered = rows >= 0
    k = model.exposures.shape[1]
    X = np.zeros((n, k))
    X[covered] = model.exposures[rows[covered]]
    spec = np.full(n, float(model.specific_variance.max()) if model.specific_variance.size else 0.0)
    spec[covered] = model.specific_variance[rows[covered]]

    w0 = current.sum(axis=1)
    t = target.sum(axis=1)
    short = bool((w0 < 0).any() or (t < 0).any())
    lower = np.minimum(w0, 0.0) if short else np.zeros(n)
    upper = np.full(n, np.inf) if policy.max_weight is None else np.maximum(policy.max_weight, t)
    upper = np.maximum(upper, 0.0)
    priced = np.isfinite(unit_value) & (unit_value > 0)
    has_volume = np.isfinite(adv) & (adv > 0)
    cap = np.where(has_volume, policy.adv_share * np.where(has_volume, adv, 0.0) / book.nav, np.inf)
    buy_cap, sell_cap = cap.copy(), cap.copy()
    buy_cap[~priced] = sell_cap[~priced] = 0.0
    buy_cap[~covered] = 0.0
    no_buy = np.array([i in book.no_buy for i in ids], dtype=bool)
    buy_cap[no_buy] = 0.0
    if liquidating:  # toward cash only: a purchase that hedges the rest is still not a liquidation
        buy_cap[:] = 0.0
    notes = np.select([~priced, ~has_volume, ~covered], [NO_PRICE, NO_VOLUME, NO_MODEL], "").tolist()
    # What cannot trade stays where it is, even if that is outside the bounds.
    frozen = (buy_cap == 0) & (sell_cap == 0)
    lower = np.where(frozen | (buy_cap == 0), np.minimum(lower, w0), lower)
    upper = np.where(frozen | (sell_cap == 0), np.maximum(upper, w0), upper)

    costs = policy.costs
    impact = impact_coefficients(np.where(np.isfinite(sigma), sigma, 0.0), np.where(has_volume, adv, 0.0), book.nav, costs.impact)
    sector_labels, sector_caps = _labels(ref["sector"].fill_null("UNCLASSIFIED"), t, policy.sector_cap)
    class_labels, class_caps = _labels(ref["asset_class"].fill_null("UNCLASSIFIED"), t, policy.class_cap)
    x = RebalanceInputs(
        instrument_ids=tuple(ids), sleeves=tuple(sleeves), current=current, target=target, cash=book.cash,
        exposures=X, factor_covariance=model.factor_covariance, specific_variance=spec,
        lower=lower, upper=upper, buy_cap=buy_cap, sell_cap=sell_cap,
        linear=np.full(n, costs.linear), impact=impact, sector=sector_labels, asset_class=class_labels,
        sector_cap=sector_caps, class_cap=class_caps,
        sector_risk_budget=None if policy.sector_te_budget is None or liquidating else np.full(int(sector_labels.max(initial=-1)) + 1, policy.sector_te_budget),
        turnover_max=None if liquidating else policy.turnover_max,
        cash_min=0.0 if liquidating else policy.cash_buffer,
        te_max=None if liquidating else policy.te_max,
        risk_aversion=policy.risk_aversion, long_only=not short,
    )
    if book.taxable and book.tax_segments is not None:
        x.tax_lengths, x.tax_slopes = _tax_arrays(book.tax_segments, iidx, w0, policy.tax_segments)
        harvest = np.array([i in book.harvestable for i in ids], dtype=bool)
        x.tax_slopes[~harvest] = np.maximum(x.tax_slopes[~harvest], 0.0)
        x.buy_cap[(x.tax_slopes < 0).any(axis=1)] = 0.0
    return x, ProblemMeta(book.portfolio_id, book.nav, unit_value, lot_size, notes, tuple(sleeves))


def _labels(values: pl.Series, target: np.ndarray, cap: float | None) -> tuple[np.ndarray, np.ndarray | None]:
    """Integer labels of ``values`` and, with a ``cap``, each label's cap: ``max(cap, the
    targets' own sum in it)`` so that the targets are never outside the caps."""
    names = sorted(set(values.to_list()))
    code = {v: k for k, v in enumerate(names)}
    labels = np.array([code[v] for v in values.to_list()], dtype=np.int64)
    if cap is None:
        return labels, None
    sums = np.bincount(labels, weights=np.maximum(target, 0.0), minlength=len(names))
    return labels, np.maximum(cap, sums)


def _tax_arrays(segments: pl.DataFrame, index: dict[str, int], held: np.ndarray, J: int) -> tuple[np.ndarray, np.ndarray]:
    """(n, J) lengths and slopes from ``optimizers.tax.tax_segments`` rows. A holding whose lots
    do not cover it (a lot without a price) gets the uncovered part on its costliest piece, so
    the optimiser can still sell all of it; an instrument without any piece is taxed at 0."""
    n = len(index)
    lengths, slopes = np.zeros((n, J)), np.zeros((n, J))
    seg = segments.filter(pl.col("instrument_id").is_in(list(index)) & (pl.col("segment") < J))
    if seg.height:
        rows = np.array([index[i] for i in seg["instrument_id"]])
        cols = seg["segment"].to_numpy()
        lengths[rows, cols] = seg["length"].to_numpy()
        slopes[rows, cols] = seg["slope"].to_numpy()
        # a short instrument list leaves later pieces empty: give them the last slope so the
        # slopes stay non-decreasing
        last = np.zeros(n, dtype=np.int64)
        np.maximum.at(last, rows, cols)
        for j in range(1, J):
            fill = j > last
            slopes[fill, j] = slopes[fill, last[fill]]
    gap = np.maximum(held, 0.0) - lengths.sum(axis=1)
    lengths[:, J - 1] += np.maximum(gap, 0.0)
    return lengths, slopes


def sleeve_holdings(positions: pl.DataFrame, lots: pl.DataFrame) -> pl.DataFrame:
    """Each non-cash position's weight split over sleeves by its open lots' quantity:
    (portfolio_id, instrument_id, strategy_id, weight). A position without open lots (should
    not happen) stays whole in ``UNASSIGNED``."""
    pos = positions.filter(pl.col("position_type") != "CASH").select("portfolio_id", "instrument_id", "weight")
    open_lots = (
        lots.filter(pl.col("status") == "OPEN")
        .group_by("portfolio_id", "instrument_id", pl.col("strategy_id").fill_null(UNASSIGNED))
        .agg(pl.col("quantity").sum())
        .with_columns((pl.col("quantity") / pl.col("quantity").sum().over("portfolio_id", "instrument_id")).alias("share"))
    )
    return (
        pos.join(open_lots, on=["portfolio_id", "instrument_id"], how="left")
        .select(
            "portfolio_id", "instrument_id", pl.col("strategy_id").fill_null(UNASSIGNED),
            (pl.col("weight") * pl.col("share").fill_null(1.0)).alias("weight"),
        )
        .sort("portfolio_id", "instrument_id", "strategy_id")
    )


def as_of_day(positions: pl.DataFrame) -> date | None:
    """The latest price date of the positions: the day the rebalance is priced on."""
    return positions["price_date"].max() if positions.height else None
