"""Stress tests: named scenarios (shocks by sector, asset class, currency or factor, read from
YAML text) and historical scenarios (the worst days of the price history), applied to today's
holdings as P&L per portfolio and scenario.

Scenario YAML (``parse_scenarios``): a mapping with one key ``scenarios``, a list of mappings
with ``name`` (required, unique), ``description`` (optional) and ``shocks``: a mapping from a
dimension (``sector``, ``asset_class``, ``currency``, ``factor``) to a mapping key -> return
(e.g. ``-0.20``; finite and > -1). Asset classes must be those of ``contract.ASSET_CLASSES``;
currencies ISO codes (three capital letters); factors the names of the factor model given to
``apply_scenarios``. Anything else raises a ``ValueError`` naming the scenario and the bad key
or value. ``DEFAULT_SCENARIOS_YAML`` is the default file's content.

How the shocks combine on one holding (``apply_scenarios``):

- **Price shock** ``p``: the scenario's shock of the holding's ``sector`` if it shocks that
  sector (the most specific), else its ``asset_class`` shock, else, when the scenario has
  factor shocks, the factor-implied return ``B_i . s`` (the holding's exposures in the factor
  model times the factor shocks, 0 for an unshocked factor), else 0. **Cash** (a holding whose
  sector is null) has no price shock.
- **Currency shock**: a shock ``s_C`` is the move of currency ``C`` against every currency the
  scenario does not shock (``EUR: -0.10``: the euro loses 10%, i.e. the dollar gains 11.1%
  against it). A holding in currency ``C`` of a portfolio with base currency ``B`` moves by
  ``fx = (1 + s_C) / (1 + s_B) - 1`` in base terms (0 when neither is shocked); cash in a
  foreign currency moves too.
- Together they compound: ``total = (1 + p) * (1 + fx) - 1``; ``pnl = market_value * total``;
  per portfolio the P&L is summed and ``pnl_pct_nav = pnl / nav`` (null when nav is unknown or
  <= 0, with a note).

Historical scenarios (``historical_scenarios``): for each portfolio, the ``worst`` days of the
P&L its **current** holdings would have made on each past day, ``pnl_t = sum_i
market_value_i * r_i,t`` (asset returns in base currency, so currency moves are inside), ranked
from the worst (``worst_day_1``; ``worst_day_01`` when ten or more are asked for). Each
portfolio gets its own worst days, not those of a common market index: the scenarios answer
"what is the worst day this book would have seen". Holdings without return history (see
``covariance.return_matrix``) are not replayed and the rows say so; a portfolio with nothing
to replay gets one ``worst_day_1`` row without a date (P&L 0 for cash only, null when its
risky holdings all lack history).

Output: ``STRESS_SCHEMA``, one row per (portfolio_id, kind, scenario); ``kind`` is ``named`` or
``historical``; ``scenario_date`` is the replayed day (null for named scenarios).
"""

from __future__ import annotations

import math
import re
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import polars as pl
import yaml

from transforms.contract import ASSET_CLASSES, STRESS_SCHEMA  # noqa: F401 (STRESS_SCHEMA: published, defined in the contract)
from transforms.frame_checks import collected_with, require_finite, require_no_nulls, require_unique
from transforms.covariance import (
    MIN_COVERAGE,
    MIN_HISTORY,
    FactorModel,
    ReturnMatrix,
    _column_index,
    return_matrix,
)

DIMENSIONS = ("sector", "asset_class", "currency", "factor")
SCENARIO_KEYS = ("name", "description", "shocks")
KINDS = ("named", "historical")
HOLDINGS_COLUMNS = ("portfolio_id", "instrument_id", "market_value", "sector", "asset_class", "currency", "nav")

NAV_UNKNOWN = "nav unknown"
NAV_NOT_POSITIVE = "nav is zero or negative"
CASH_ONLY = "cash only: no market risk to replay"
NO_COVERED = "no position with return history"


DEFAULT_SCENARIOS_YAML = """\
# Named stress scenarios: shocks are returns (-0.35 = -35%). Per holding, a sector shock
# overrides its asset class's; a currency shock (the currency's move against every unshocked
# currency) compounds with the price shock: (1 + price)(1 + fx) - 1. Cash takes fx shocks only.
scenarios:
  - name: equity_crash_2008_style
    description: >-
      Global financial crisis: equities -35% (financials -50%, real estate -40%), credit
      spreads widen, government bonds rally, commodities fall, USD up 10% against EUR.
    shocks:
      asset_class: {EQUITY: -0.35, FIXED_INCOME: 0.02, COMMODITY: -0.30, REAL_ESTATE: -0.40}
      sector:
        Financials: -0.50
        Consumer Staples: -0.15
        Health Care: -0.20
        Government Bonds: 0.06
        Corporate Bonds: -0.08
        Municipal Bonds: -0.03
        Precious Metals: 0.05
        Money Market: 0.0
      currency: {EUR: -0.10}
  - name: rates_up_200bp
    description: >-
      Parallel rise of 200bp in yields: bonds lose about duration x 2%, rate-sensitive equity
      sectors and real estate fall, long-duration growth stocks de-rate.
    shocks:
      asset_class: {EQUITY: -0.08, REAL_ESTATE: -0.15}
      sector:
        Government Bonds: -0.10
        Corporate Bonds: -0.12
        Municipal Bonds: -0.11
        Money Market: 0.0
        Utilities: -0.12
        Technology: -0.15
        Financials: 0.02
  - name: tech_selloff_2000_style
    description: >-
      Technology bubble bursts: technology -40%, communication services -30%, the rest of the
      equity market -10%, a flight to quality into government bonds.
    shocks:
      asset_class: {EQUITY: -0.10}
      sector:
        Technology: -0.40
        Communication Services: -0.30
        Consumer Discretionary: -0.15
        Consumer Staples: 0.02
        Government Bonds: 0.03
  - name: oil_shock_stagflation
    description: >-
      Supply shock: oil +40%, energy equities +15%, inflation lifts yields (bonds -5%), equities
      -10% (consumer discretionary and industrials worse), gold and crops up.
    shocks:
      asset_class: {EQUITY: -0.10, FIXED_INCOME: -0.05, REAL_ESTATE: -0.08}
      sector:
        Energy: 0.15
        Energy Commodities: 0.40
        Precious Metals: 0.10
        Agriculture: 0.15
        Consumer Discretionary: -0.18
        Industrials: -0.14
        Money Market: 0.0
  - name: pandemic_crash_2020_style
    description: >-
      Sudden global shutdown: equities -30% (energy -50%), oil -60%, credit -10%, government
      bonds rally, real estate -35%.
    shocks:
      asset_class: {EQUITY: -0.30, COMMODITY: -0.20, REAL_ESTATE: -0.35}
      sector:
        Energy: -0.50
        Energy Commodities: -0.60
        Health Care: -0.12
        Consumer Staples: -0.10
        Government Bonds: 0.04
        Corporate Bonds: -0.10
        Municipal Bonds: -0.06
        Precious Metals: -0.03
        Money Market: 0.0
  - name: usd_rally
    description: The dollar gains 11% against the euro (EUR -10%); prices unchanged.
    shocks:
      currency: {EUR: -0.10}
"""


@dataclass(frozen=True)
class Scenario:
    """A named scenario: ``shocks`` maps a dimension (``DIMENSIONS``) to key -> return."""

    name: str
    description: str
    shocks: dict[str, dict[str, float]] = field(default_factory=dict)


# --- parsing --------------------------------------------------------------------------------------


def _shock_value(name: str, dim: str, key: str, value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ValueError(f"scenario {name!r}: shock {dim}.{key} must be a number (a return such as -0.20), got {value!r}")
    v = float(value)
    if not math.isfinite(v):
        raise ValueError(f"scenario {name!r}: shock {dim}.{key} is not finite: {value!r}")
    if v <= -1.0:
        raise ValueError(f"scenario {name!r}: shock {dim}.{key} = {value!r} is at or below -100%")
    return v


def _check_key(name: str, dim: str, key: Any, sectors: Collection[str] | None) -> str:
    if not isinstance(key, str) or not key:
        raise ValueError(f"scenario {name!r}: {dim} keys must be non-empty strings, got {key!r}")
    if dim == "asset_class" and key not in ASSET_CLASSES:
        raise ValueError(f"scenario {name!r}: unknown asset_class {key!r} (allowed: {', '.join(ASSET_CLASSES)})")
    if dim == "currency" and not re.fullmatch(r"[A-Z]{3}", key):
        raise ValueError(f"scenario {name!r}: currency {key!r} is not an ISO code of three capital letters")
    if dim == "sector" and sectors is not None and key not in sectors:
        raise ValueError(f"scenario {name!r}: unknown sector {key!r}")
    return key


def parse_scenarios(text: str | Mapping[str, Any], sectors: Collection[str] | None = None) -> list[Scenario]:
    """Named scenarios from YAML text (``yaml.safe_load``) or its parsed mapping, in file order.

    Format and rules: the module docstring. ``sectors``, when given, lists the sectors a
    scenario may shock (a typo would otherwise shock nothing). Raises ``ValueError`` naming the
    scenario and the bad key or value: YAML that does not parse, no ``scenarios`` list, a
    missing or duplicate name, an unknown key or dimension, no shocks, an unknown asset class,
    sector or malformed currency, a shock that is not a number or is <= -100%.
    """
    if isinstance(text, str):
        try:
            doc = yaml.safe_load(text)
        except yaml.YAMLError as e:
            raise ValueError(f"scenarios YAML does not parse: {e}") from e
    else:
        doc = text
    if not isinstance(doc, Mapping) or not isinstance(doc.get("scenarios"), list):
        raise ValueError("scenarios YAML must be a mapping with a 'scenarios' list")
    extra = [k for k in doc if k != "scenarios"]
    if extra:
        raise ValueError(f"scenarios YAML has unknown top-level key(s) {', '.join(map(repr, extra))}")
    out: list[Scenario] = []
    seen: set[str] = set()
    for i, entry in enumerate(doc["scenarios"], start=1):
        if not isinstance(entry, Mapping):
            raise ValueError(f"scenario #{i} must be a mapping with name, description and shocks")
        name = entry.get("name")
        if not isinstance(name, str) or not name.strip():
            raise ValueError(f"scenario #{i} has no name")
        if name in seen:
            raise ValueError(f"duplicate scenario name {name!r}")
        seen.add(name)
        unknown = [k for k in entry if k not in SCENARIO_KEYS]
        if unknown:
            listed = ", ".join(map(repr, unknown))
            raise ValueError(f"scenario {name!r}: unknown key(s) {listed} (allowed: {', '.join(SCENARIO_KEYS)})")
        description = entry.get("description") or ""
        if not isinstance(description, str):
            raise ValueError(f"scenario {name!r}: description must be text, got {description!r}")
        raw = entry.get("shocks")
        if not isinstance(raw, Mapping) or not raw:
            raise ValueError(f"scenario {name!r}: shocks must be a non-empty mapping of {', '.join(DIMENSIONS)}")
        shocks: dict[str, dict[str, float]] = {}
        for dim, values in raw.items():
            if dim not in DIMENSIONS:
                raise ValueError(f"scenario {name!r}: unknown shock dimension {dim!r} (allowed: {', '.join(DIMENSIONS)})")
            if not isinstance(values, Mapping) or not values:
                raise ValueError(f"scenario {name!r}: shocks.{dim} must be a non-empty mapping key -> return")
            shocks[dim] = {_check_key(name, dim, k, sectors): _shock_value(name, dim, k, v) for k, v in values.items()}
        out.append(Scenario(name, description.strip(), shocks))
    return out


# --- applying --------------------------------------------------------------------------------------


def _holdings(holdings: pl.DataFrame | pl.LazyFrame, columns: Sequence[str]) -> pl.DataFrame:
    df = collected_with(holdings, columns, "holdings")
    df = df.select(
        [pl.col(c).cast(pl.Float64 if c in ("market_value", "nav") else pl.String) for c in columns]
    )
    require_no_nulls(df, ("portfolio_id", "instrument_id", "market_value"), "holdings")
    require_unique(df, ["portfolio_id", "instrument_id"], "holdings")
    require_finite(df, ("market_value", "nav"), "holdings")
    navs = df.group_by("portfolio_id").agg(pl.col("nav").n_unique().alias("n"))
    if (navs["n"] > 1).any():
        raise ValueError(f"holdings give portfolio {navs.filter(pl.col('n') > 1)['portfolio_id'][0]!r} more than one nav")
    return df


def _pct_and_notes(frame: pl.DataFrame, *notes: pl.Expr) -> pl.DataFrame:
    nav = pl.col("nav")
    ok = nav.is_not_null() & (nav > 0)
    joined = pl.concat_str(
        [*notes, pl.when(nav.is_null()).then(pl.lit(NAV_UNKNOWN)).when(nav <= 0).then(pl.lit(NAV_NOT_POSITIVE))],
        separator="; ",
        ignore_nulls=True,
    )
    return frame.with_columns(
        pl.when(ok).then(pl.col("pnl") / nav).alias("pnl_pct_nav"),
        pl.when(joined == "").then(None).otherwise(joined).alias("note"),
    )


def _cast(frame: pl.DataFrame) -> pl.DataFrame:
    return frame.select([pl.col(c).cast(t) for c, t in STRESS_SCHEMA.items()]).sort("portfolio_id", "kind", "scenario")


def apply_scenarios(
    holdings: pl.DataFrame | pl.LazyFrame,
    scenarios: Sequence[Scenario] | str,
    factor_model: FactorModel | None = None,
) -> pl.DataFrame:
    """The P&L of every portfolio under every named scenario (``STRESS_SCHEMA``, kind
    ``named``), sorted by (portfolio_id, kind, scenario).

    Input: ``holdings`` rows portfolio_id, instrument_id, market_value (f64, base currency,
    shorts negative), sector (null for cash), asset_class, currency, nav (f64, the same on each
    of a portfolio's rows) and, when a scenario shocks currencies, base_currency;
    ``scenarios`` from ``parse_scenarios`` (or YAML text, parsed here); ``factor_model`` gives
    the exposures when a scenario shocks factors. Rule: the combination of the module
    docstring; ``pnl = sum(market_value * total shock)``, ``pnl_pct_nav = pnl / nav``. A
    holding a factor scenario cannot shock (no sector or asset-class shock, not in the factor
    model) is counted in the note.
    """
    if isinstance(scenarios, str):
        scenarios = parse_scenarios(scenarios)
    names = [s.name for s in scenarios]
    if len(set(names)) != len(names):
        raise ValueError("scenarios have duplicate names")
    for s in scenarios:  # a Scenario built by hand has not been through parse_scenarios
        for dim, values in s.shocks.items():
            if dim not in DIMENSIONS:
                raise ValueError(f"scenario {s.name!r}: unknown shock dimension {dim!r} (allowed: {', '.join(DIMENSIONS)})")
            for key, v in values.items():
                _shock_value(s.name, dim, _check_key(s.name, dim, key, None), v)
    has_fx = any("currency" in s.shocks for s in scenarios)
    columns = list(HOLDINGS_COLUMNS) + (["base_currency"] if has_fx else [])
    h = collected_with(holdings, HOLDINGS_COLUMNS, "holdings")
    if has_fx and "base_currency" not in h.columns:
        raise ValueError("holdings need a base_currency column to apply currency shocks")
    h = _holdings(h, columns)
    if not has_fx:
        h = h.with_columns(pl.lit(None, pl.String).alias("base_currency"))
    if not scenarios or h.height == 0:
        return pl.DataFrame(schema=STRESS_SCHEMA)
    rows = [(s.name, dim, key, v) for s in scenarios for dim, values in s.shocks.items() for key, v in values.items()]
    shocks = pl.DataFrame(
        rows, schema={"scenario": pl.String, "dimension": pl.String, "key": pl.String, "shock": pl.Float64}, orient="row"
    )

    def by(dim: str, column: str, alias: str) -> pl.DataFrame:
        """(scenario, ``column``, ``alias``): the scenarios' shocks of one dimension."""
        return shocks.filter(pl.col("dimension") == dim).select(
            "scenario", pl.col("key").alias(column), pl.col("shock").alias(alias)
        )

    factor_shocks = _factor_shocks(scenarios, factor_model)
    frame = (
        h.join(pl.DataFrame({"scenario": names}, schema={"scenario": pl.String}), how="cross")
        .join(by("sector", "sector", "_sector"), on=["scenario", "sector"], how="left")
        .join(by("asset_class", "asset_class", "_asset"), on=["scenario", "asset_class"], how="left")
        .join(by("currency", "currency", "_fx"), on=["scenario", "currency"], how="left")
        .join(by("currency", "base_currency", "_base"), on=["scenario", "base_currency"], how="left")
        .join(factor_shocks, on=["scenario", "instrument_id"], how="left")
        .join(pl.DataFrame({"scenario": names, "_uses_factors": ["factor" in s.shocks for s in scenarios]}), on="scenario")
    )
    cash = pl.col("sector").is_null()
    price = pl.when(cash).then(0.0).otherwise(pl.coalesce("_sector", "_asset", "_factor", pl.lit(0.0)))
    fx = (1.0 + pl.col("_fx").fill_null(0.0)) / (1.0 + pl.col("_base").fill_null(0.0)) - 1.0
    no_shock = pl.col("_sector").is_null() & pl.col("_asset").is_null() & pl.col("_factor").is_null()
    unshocked = pl.col("_uses_factors") & ~cash & no_shock
    total = (1.0 + price) * (1.0 + fx) - 1.0
    out = (
        frame.with_columns((pl.col("market_value") * total).alias("pnl"), unshocked.alias("_unshocked"))
        .group_by("portfolio_id", "scenario")
        .agg(pl.col("pnl").sum(), pl.col("nav").first(), pl.col("_unshocked").sum().alias("_unshocked"))
        .with_columns(pl.lit("named").alias("kind"), pl.lit(None, pl.Date).alias("scenario_date"))
    )
    out = _pct_and_notes(
        out,
        pl.when(pl.col("_unshocked") > 0).then(
            pl.format("{} position(s) without factor exposures not shocked", pl.col("_unshocked"))
        ),
    )
    return _cast(out)


def _factor_shocks(scenarios: Sequence[Scenario], model: FactorModel | None) -> pl.DataFrame:
    """(scenario, instrument_id, _factor): each model instrument's factor-implied return
    ``B_i . s`` under each scenario that shocks factors."""
    schema = {"scenario": pl.String, "instrument_id": pl.String, "_factor": pl.Float64}
    pieces = []
    for s in scenarios:
        if "factor" not in s.shocks:
            continue
        if model is None:
            raise ValueError(f"scenario {s.name!r} shocks factors: apply_scenarios needs a factor_model")
        index = {f: j for j, f in enumerate(model.factor_names)}
        vector = np.zeros(len(index))
        for f, v in s.shocks["factor"].items():
            if f not in index:
                raise ValueError(f"scenario {s.name!r}: unknown factor {f!r} (the model's: {', '.join(model.factor_names)})")
            vector[index[f]] = v
        implied = model.exposures @ vector
        frame = {"scenario": s.name, "instrument_id": list(model.instrument_ids), "_factor": implied}
        pieces.append(pl.DataFrame(frame, schema=schema))
    return pl.concat(pieces) if pieces else pl.DataFrame(schema=schema)


def historical_scenarios(
    holdings: pl.DataFrame | pl.LazyFrame,
    returns: pl.DataFrame | pl.LazyFrame | ReturnMatrix,
    worst: int = 5,
    *,
    min_history: int = MIN_HISTORY,
    min_coverage: float = MIN_COVERAGE,
) -> pl.DataFrame:
    """Each portfolio's ``worst`` historical days replayed on its current holdings
    (``STRESS_SCHEMA``, kind ``historical``), sorted by (portfolio_id, kind, scenario).

    Input: ``holdings`` rows portfolio_id, instrument_id, market_value (f64, base currency),
    sector (null for cash), nav; ``returns`` the daily asset returns in base currency, a long
    frame (instrument_id, date, return: turned into a matrix by ``return_matrix`` with
    ``min_history`` and ``min_coverage``) or a ``ReturnMatrix``. Rule: ``pnl_t = sum_i
    market_value_i * r_i,t`` over the non-cash holdings with return history; the ``worst``
    smallest (ties: the earlier day first) become ``worst_day_1`` .. ``worst_day_k``
    (``k = min(worst, days)``; ranks zero-padded to the width of ``k``, so they sort) with
    their ``scenario_date``; ``pnl_pct_nav = pnl / nav``.
    """
    if int(worst) != worst or worst < 1:
        raise ValueError(f"worst must be a whole number >= 1, got {worst}")
    h = _holdings(holdings, ("portfolio_id", "instrument_id", "market_value", "sector", "nav"))
    if h.height == 0:
        return pl.DataFrame(schema=STRESS_SCHEMA)
    risky = h.filter(pl.col("sector").is_not_null())
    if isinstance(returns, ReturnMatrix):
        matrix = returns
    else:
        matrix = return_matrix(returns, risky["instrument_id"].unique().to_list(), min_history, min_coverage=min_coverage)
    rows = h.join(_column_index(matrix.ids), on="instrument_id", how="left").with_columns(
        pl.when(pl.col("sector").is_null()).then(None).otherwise(pl.col("_col")).alias("_col")
    )
    portfolios = rows["portfolio_id"].unique().sort()
    rows = rows.with_columns(portfolios.search_sorted(rows["portfolio_id"]).cast(pl.Int64).alias("_p"))
    stats = (
        rows.group_by("_p")
        .agg(
            pl.col("nav").first(),
            pl.col("sector").is_not_null().sum().alias("_positions"),
            (pl.col("sector").is_not_null() & pl.col("_col").is_null()).sum().alias("_excluded"),
        )
        .sort("_p")
        .with_columns(pl.Series("portfolio_id", portfolios))
    )
    covered = rows.filter(pl.col("_col").is_not_null())
    cols = np.unique(covered["_col"].to_numpy())
    mv = np.zeros((portfolios.len(), cols.size))
    at = (covered["_p"].to_numpy(), np.searchsorted(cols, covered["_col"].to_numpy()))
    np.add.at(mv, at, covered["market_value"].to_numpy())
    x = np.asarray(matrix.values, dtype=np.float64)
    pnl = mv @ x[:, cols].T  # portfolios x days
    k = min(int(worst), x.shape[0])
    replayable = (stats["_positions"] > stats["_excluded"]).to_numpy() & (k > 0)
    p_idx = np.flatnonzero(replayable)
    order = np.argsort(pnl[p_idx], axis=1, kind="stable")[:, :k]
    days = matrix.dates.gather(order.ravel()) if order.size else pl.Series("date", [], pl.Date)
    found = pl.DataFrame(
        {
            "_p": np.repeat(p_idx, k).astype(np.int64),
            # zero-padded ranks sort as numbers: worst_day_01 .. worst_day_12
            "scenario": [f"worst_day_{r:0{len(str(k))}d}" for r in range(1, k + 1)] * p_idx.size,
            "scenario_date": days,
            "pnl": np.take_along_axis(pnl[p_idx], order, axis=1).ravel(),
        },
        schema={"_p": pl.Int64, "scenario": pl.String, "scenario_date": pl.Date, "pnl": pl.Float64},
    )
    blank = stats.filter(pl.Series(~replayable)).select(
        "_p",
        pl.lit("worst_day_1").alias("scenario"),
        pl.lit(None, pl.Date).alias("scenario_date"),
        pl.when(pl.col("_positions") == 0).then(0.0).otherwise(None).cast(pl.Float64).alias("pnl"),
    )
    out = pl.concat([found, blank]).join(stats, on="_p").with_columns(pl.lit("historical").alias("kind"))
    out = _pct_and_notes(
        out,
        pl.when(pl.col("_positions") == 0)
        .then(pl.lit(CASH_ONLY))
        .when((pl.col("_positions") == pl.col("_excluded")) | pl.lit(k == 0))
        .then(pl.lit(NO_COVERED)),
        pl.when((pl.col("_excluded") > 0) & (pl.col("_positions") > pl.col("_excluded")) & pl.lit(k > 0)).then(
            pl.format("{} position(s) without return history not replayed", pl.col("_excluded"))
        ),
    )
    return _cast(out)
