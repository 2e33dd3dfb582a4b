"""A deterministic, fully vectorised generator of a synthetic portfolio book.

``generate_book(scale, seed)`` returns every landing kind of ``transforms.contract`` as a list of
``(file_stem, frame)`` pairs, ready for a caller to write into ``data/landing/<kind>/``. The
generator is pure: numpy ``Generator``s derived from the seed, no file system, no clock, no
dagster. The same ``(scale, seed)`` always gives identical frames.

How the book is built (everything is array arithmetic; there is no Python loop per trade,
per position or per day):

- **calendar**: Mon-Fri business days ending on ``scale.end_date`` (no holidays).
- **instruments**: asset classes from ``contract.ASSET_CLASSES``, 20 sectors (10 equity GICS
  sectors plus fixed-income, commodity, real-estate and money-market sectors), USD and EUR
  listings, lot sizes 1, 10 or 100.
- **prices**: a correlated factor model per business day: ``r = beta * market + gamma *
  sector + idio * eps + drift`` with betas and vols by asset class, compounded geometrically
  from a starting price and rounded to cents (never below 0.01); volumes are lognormal around
  an average daily volume per instrument, larger on big-move days.
- **fx_rates**: EURUSD as a mean-reverting log random walk around 1.08, one ``EUR`` row per
  business day (USD per EUR; USD itself is implied at 1 and not written).
- **portfolios**: every status; ACTIVE trade until the end, SUSPENDED stop trading at their
  suspension day, LIQUIDATING only reduce positions in the last ~10% of the calendar, CLOSED
  flatten every position by their closure day and withdraw their cash the next day.
- **trades**: positions are keys ``(portfolio, instrument)`` with one sleeve (strategy) each,
  mostly the members of the sleeve's target model. For each key a path of target positions
  (in lots) is drawn on distinct business days inside the portfolio's trading window; the
  trades are the differences of that path. Long keys hold ``q >= 0`` (diff > 0 BUY, < 0 SELL),
  short keys ``q <= 0`` (diff < 0 SELL_SHORT, > 0 BUY_TO_COVER), so a position can never cross
  zero under the replay order ``(trade_ts, opening before closing, trade_id)``. Trade ids
  are assigned in exactly that order. A key trades at most once per business day, so its own
  trades never share a timestamp; different keys of a portfolio often do (block executions).
- **cash_flows**: monthly INTEREST and management FEEs, random later DEPOSITs and
  WITHDRAWALs, quarterly DIVIDENDs on long positions held at the ex-date (in the instrument's
  currency), and an initial DEPOSIT at inception sized from the day-by-day cash need of the
  portfolio's trades and flows (converted to the base currency), so cash stays non-negative.
- **targets / benchmarks**: a handful of shared models (30-60 names each) assigned to each
  portfolio sleeve, and 3 benchmarks, each with two effective dates and weights summing to 1.
- **signals**: model and analyst signals with every column populated (a few nulls in the
  optional ones).
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import polars as pl
import pyarrow as pa

from transforms.contract import (
    ASSET_CLASSES,
    CASH_FLOW_TYPES,
    LANDING_KINDS,
    LANDING_SCHEMAS,
    LOT_METHODS,
    PORTFOLIO_STATUSES,
    TAX_STATUSES,
    TRADE_SIDES,
    TS,
)

__all__ = ["SCALES", "BookScale", "generate_book", "SLEEVES", "MODELS", "BENCHMARKS"]

Book = dict[str, list[tuple[str, pl.DataFrame]]]


@dataclass(frozen=True)
class BookScale:
    """The size of a generated book.

    ``portfolios``/``instruments`` are counts, ``years`` the length of the business-day
    calendar (260.9 business days per year, ending on ``end_date``), ``trades`` the target
    number of trades (the result lands within a few percent), ``signals`` the number of
    signal rows. ``include_bad_rows`` is the default for ``generate_book``'s argument of the
    same name.
    """

    portfolios: int
    instruments: int
    years: float
    trades: int
    signals: int = 3_000
    include_bad_rows: bool = False
    end_date: dt.date = dt.date(2026, 10, 30)
    name: str = "custom"

    @property
    def business_days(self) -> int:
        """Number of business days in the calendar (at least 20)."""
        return max(20, int(round(self.years * 260.9)))


SCALES: dict[str, BookScale] = {
    "tiny": BookScale(4, 20, 0.23, 1_500, signals=200, name="tiny"),
    "demo": BookScale(25, 300, 2.0, 100_000, signals=4_000, include_bad_rows=True, name="demo"),
    "standard": BookScale(1_000, 2_000, 5.0, 10_000_000, signals=20_000, name="standard"),
}

# --- static reference vocabulary -------------------------------------------------------------
SLEEVES = ("CORE", "TACTICAL", "INCOME")
MODELS = (
    "MODEL_US_CORE", "MODEL_GLOBAL_BALANCED", "MODEL_EU_CORE", "MODEL_TACTICAL", "MODEL_INCOME",
)
BENCHMARKS = ("BM_US_EQUITY", "BM_GLOBAL_60_40", "BM_EU_EQUITY")
CURRENCIES = ("USD", "EUR")
SIGNAL_SOURCES = ("momentum_model", "value_model", "risk_model", "analyst_desk")
HORIZONS = ("1D", "1W", "1M", "3M")

# asset class -> (share of instruments, sectors, start price median, annual vol, beta mean,
# lot sizes, lot-size probabilities, dividend payer share, dividend yield range)
_CLASS_SPEC = {
    "EQUITY": (
        0.60,
        (
            "Technology", "Financials", "Health Care", "Industrials", "Consumer Discretionary",
            "Consumer Staples", "Energy", "Utilities", "Materials", "Communication Services",
        ),
        60.0, 0.28, 1.0, (1, 100), (0.85, 0.15), 0.55, (0.01, 0.04),
    ),
    "FIXED_INCOME": (0.17, ("Government Bonds", "Corporate Bonds", "Municipal Bonds"),
                     100.0, 0.06, -0.05, (10,), (1.0,), 0.0, (0.0, 0.0)),
    "COMMODITY": (0.07, ("Energy Commodities", "Precious Metals", "Agriculture"),
                  40.0, 0.30, 0.35, (100,), (1.0,), 0.0, (0.0, 0.0)),
    "REAL_ESTATE": (0.09, ("Real Estate",), 35.0, 0.22, 0.8, (1,), (1.0,), 0.9, (0.03, 0.06)),
    "CASH_EQUIVALENT": (0.07, ("Money Market",), 100.0, 0.004, 0.0, (1,), (1.0,), 0.0, (0.0, 0.0)),
}
assert tuple(_CLASS_SPEC) == ASSET_CLASSES
_SECTORS = tuple(s for spec in _CLASS_SPEC.values() for s in spec[1])
_NAME_A = (
    "Atlas", "Boreal", "Cobalt", "Delta", "Ember", "Falcon", "Granite", "Harbor", "Iris",
    "Juniper", "Keystone", "Lumen", "Meridian", "Nova", "Orion", "Pinnacle", "Quartz", "Redwood",
    "Summit", "Tidal", "Umbra", "Vertex", "Willow", "Zenith",
)
_NAME_B = (
    "Systems", "Holdings", "Dynamics", "Networks", "Energy", "Health", "Capital", "Materials",
    "Logistics", "Foods", "Labs", "Power", "Media", "Industries", "Partners", "Resources",
)
_CLASS_SUFFIX = ("Corp", "Bond Fund", "Commodity Trust", "REIT", "Money Market Fund")
_EUR_COUNTRIES = ("DE", "FR", "NL", "IT", "ES")
_PORT_A = ("Aurora", "Beacon", "Cedar", "Dover", "Elm", "Fjord", "Glacier", "Heron", "Ivy", "Jade")
_PORT_B = ("Growth", "Income", "Balanced", "Value", "Core", "Opportunities", "Endowment", "Pension")

_US_OPEN_S, _US_CLOSE_S = 14 * 3600 + 1800, 20 * 3600  # 14:30-20:00 UTC (NYSE, both DST states)
_EU_OPEN_S, _EU_CLOSE_S = 8 * 3600, 15 * 3600 + 1800  # 08:00-15:30 UTC (Xetra/Euronext)
_DAY_US = 86_400_000_000
_MS = 1_000


# --- small helpers ---------------------------------------------------------------------------
def _typed(kind: str, columns: dict[str, object]) -> pl.DataFrame:
    """Build a frame of landing ``kind`` with exactly its contract columns, order and dtypes."""
    schema = LANDING_SCHEMAS[kind]
    missing = set(schema) - set(columns)
    extra = set(columns) - set(schema)
    if missing or extra:
        raise ValueError(f"{kind}: missing {sorted(missing)}, extra {sorted(extra)}")
    series = []
    for name, dtype in schema.items():
        value = columns[name]
        s = value.alias(name) if isinstance(value, pl.Series) else pl.Series(name, value)
        series.append(s.cast(dtype))
    return pl.DataFrame(series)


def _labels(values, idx: np.ndarray) -> pl.Series:
    """Strings ``values[idx]`` (a sequence or a String series) as a String series; null where
    ``idx < 0``. Gathering with a UInt32 series keeps this ~20 ms per 10M rows."""
    lab = values if isinstance(values, pl.Series) else pl.Series(list(values), dtype=pl.String)
    idx = np.asarray(idx)
    valid = idx >= 0
    out = lab.gather(pl.Series(np.where(valid, idx, 0).astype(np.uint32)))
    if not valid.all():
        out = pl.select(pl.when(pl.Series(valid)).then(out)).to_series()
    return out


_DIGITS = {
    k: np.array([f"{i:0{k}d}".encode() for i in range(10**k)], dtype=f"S{k}") for k in (1, 2, 3, 4)
}


def _ids(prefix: str, numbers: np.ndarray, width: int, mask: np.ndarray | None = None) -> pl.Series:
    """``prefix`` + zero-padded ``numbers`` (``T00000042``), built as one fixed-width byte
    buffer handed to Arrow (no Python string per row); null where ``mask`` is False."""
    numbers = np.asarray(numbers, dtype=np.int64)
    n = numbers.size
    if n and numbers.max() >= 10**width:
        width = len(str(int(numbers.max())))
    head, chunks = width % 4, width // 4
    fields = [("prefix", f"S{len(prefix)}")] if prefix else []
    fields += [("head", f"S{head}")] if head else []
    fields += [(f"c{k}", "S4") for k in range(chunks)]
    buf = np.empty(n, dtype=np.dtype(fields))
    if prefix:
        buf["prefix"] = prefix.encode()
    rest = np.maximum(numbers, 0)
    for k in reversed(range(chunks)):  # one iteration per 4 digits
        buf[f"c{k}"] = _DIGITS[4][rest % 10_000]
        rest = rest // 10_000
    if head:
        buf["head"] = _DIGITS[head][rest % 10**head]
    item = len(prefix) + width
    validity = None
    if mask is not None:
        validity = pa.py_buffer(np.packbits(np.asarray(mask, dtype=bool), bitorder="little"))
    arr = pa.Array.from_buffers(
        pa.large_string(), n,
        [validity, pa.py_buffer(np.arange(0, (n + 1) * item, item, dtype=np.int64)),
         pa.py_buffer(buf.view(np.uint8))])
    return pl.Series(pl.from_arrow(arr)).cast(pl.String)


def _code_ids(prefix: str, codes: np.ndarray, width: int) -> pl.Series:
    """Ids for 0-based ``codes`` (``prefix`` + zero-padded ``code + 1``; null where code < 0),
    by gathering from the distinct ids: fast for many rows over few entities."""
    codes = np.asarray(codes, dtype=np.int64)
    top = int(codes.max()) + 1 if codes.size else 0
    return _labels(_ids(prefix, np.arange(1, top + 1), width), codes)


def _dates(epoch_days: np.ndarray) -> pl.Series:
    """Epoch-day integers as a ``pl.Date`` series."""
    return pl.Series(np.asarray(epoch_days, dtype=np.int32)).cast(pl.Date)


def _timestamps(epoch_us: np.ndarray) -> pl.Series:
    """Epoch-microsecond integers as a UTC ``contract.TS`` series."""
    return pl.Series(np.asarray(epoch_us, dtype=np.int64)).cast(TS)


def _segment_starts(keys: np.ndarray) -> np.ndarray:
    """Boolean: first element of each run of equal ``keys`` (``keys`` sorted)."""
    first = np.ones(keys.size, dtype=bool)
    first[1:] = keys[1:] != keys[:-1]
    return first


def _segment_cummin(values: np.ndarray, keys: np.ndarray, big: int) -> np.ndarray:
    """Running minimum of int ``values`` (0 <= v < big) restarted at every new sorted key."""
    shifted = values - keys * big
    return np.minimum.accumulate(shifted) + keys * big


def _normalise(weights: np.ndarray, groups: np.ndarray, decimals: int) -> np.ndarray:
    """Round ``weights`` to ``decimals`` and put each group's rounding residue on its largest
    weight, so every group sums to 1 (within 1e-12). ``groups`` are dense ids 0..G-1."""
    n_groups = int(groups.max()) + 1
    total = np.bincount(groups, weights=weights, minlength=n_groups)
    w = np.round(weights / total[groups], decimals)
    order = np.lexsort((-w, groups))  # largest weight first within each group
    top = order[_segment_starts(groups[order])]
    residue = 1.0 - np.bincount(groups, weights=w, minlength=n_groups)
    w[top] = np.round(w[top] + residue[groups[top]], 12)
    return w


def _business_days(end: dt.date, n: int) -> np.ndarray:
    """The last ``n`` Mon-Fri days up to ``end`` (inclusive), as epoch-day int64."""
    last = np.busday_offset(np.datetime64(end, "D"), 0, roll="backward")
    first = np.busday_offset(last, -(n - 1), roll="backward")
    days = np.arange(first, last + np.timedelta64(1, "D"))
    return days[np.is_busday(days)].astype(np.int64)


def _split_by_month(
    df: pl.DataFrame, months: np.ndarray, stem: str
) -> list[tuple[str, pl.DataFrame]]:
    """Split a frame sorted by time into one frame per calendar month (``months``: months
    since 1970-01 of each row, non-decreasing), named ``<stem>_YYYY_MM``."""
    if df.height == 0:
        return [(stem, df)]
    bounds = np.flatnonzero(_segment_starts(months))
    ends = np.r_[bounds[1:], months.size]
    out = []
    for start, stop in zip(bounds, ends, strict=True):  # one iteration per month file
        year, month = divmod(int(months[start]), 12)
        name = f"{stem}_{1970 + year}_{month + 1:02d}"
        out.append((name, df.slice(int(start), int(stop - start))))
    return out


# --- the generator ---------------------------------------------------------------------------
def generate_book(
    scale: str | BookScale,
    seed: int = 7,
    *,
    progress: Callable[[str], None] | None = None,
    include_bad_rows: bool | None = None,
) -> Book:
    """Generate a synthetic book of every landing kind.

    Inputs: ``scale`` (a key of ``SCALES`` or a ``BookScale``), ``seed`` (all randomness comes
    from ``numpy.random.SeedSequence(seed)``), ``progress`` (optional callback receiving short
    status messages), ``include_bad_rows`` (default: the scale's; adds a ``trades_corrections``
    file of deliberately invalid trades for the validator to quarantine).

    Output: ``{kind: [(file_stem, frame), ...]}`` for every kind of ``contract.LANDING_KINDS``.
    Each frame has exactly the contract columns and dtypes of its kind. Files: one per
    calendar month for trades (``trades_2025_03``) and cash flows (``cash_flows_2025_03``),
    one per year for prices (``prices_2025``), one file for every other kind.

    Guarantees (the tests check them): identical output for identical inputs; unique ids;
    no long position goes below zero and no short position above zero when the trades are
    replayed in ``(trade_ts, opening side before closing side, trade_id)`` order; quantities
    are positive multiples of the instrument's lot size; trades happen only on calendar
    business days strictly after the portfolio's inception date and at or before its last
    trading day; ``settle_date`` is two business days after the trade date; a non-null
    ``lot_id`` names an earlier BUY of the same key that is still wholly open and at least as
    large as the SELL; target weights sum to 1 per (portfolio, strategy, effective_date) and
    benchmark weights per (benchmark, effective_date). The bad rows (if any) break these rules
    on purpose and live only in ``trades_corrections``.
    """
    if isinstance(scale, str):
        if scale not in SCALES:
            raise ValueError(f"unknown scale {scale!r}; expected one of {sorted(SCALES)}")
        scale = SCALES[scale]
    if scale.portfolios < 1 or scale.instruments < 5 or scale.trades < 1:
        raise ValueError(f"scale too small: {scale}")
    bad_rows = scale.include_bad_rows if include_bad_rows is None else include_bad_rows
    say = progress or (lambda _msg: None)
    streams = np.random.SeedSequence(seed).spawn(9)
    rng = {name: np.random.default_rng(s) for name, s in zip(
        ("instruments", "prices", "fx", "portfolios", "models", "trades", "flows", "signals",
         "bad"),
        streams, strict=True)}

    cal = _business_days(scale.end_date, scale.business_days)
    n_days = cal.size
    first_day, last_day = np.datetime64(int(cal[0]), "D"), np.datetime64(int(cal[-1]), "D")
    say(f"calendar: {n_days:,} business days {first_day} .. {last_day}")

    inst = _instruments(scale.instruments, rng["instruments"])
    say(f"instruments: {scale.instruments:,} in {len(set(inst['sector_idx'].tolist()))} sectors")
    say(f"prices: {scale.instruments:,} instruments × {n_days:,} days")
    closes, volumes = _price_paths(inst, n_days, rng["prices"])
    eurusd = _eurusd(n_days, rng["fx"])
    port = _portfolios(scale.portfolios, n_days, rng["portfolios"])
    say(f"portfolios: {scale.portfolios:,}")
    models = _models(inst, closes, rng["models"])
    keys = _position_keys(port, models, inst, n_days, rng["models"])
    say(f"trades: ~{scale.trades:,} on {keys['p'].size:,} positions")
    trades = _trades(scale, cal, inst, port, keys, closes, eurusd, rng["trades"])
    say(f"trades: {trades['n']:,} generated")
    flows = _cash_flows(cal, inst, port, keys, trades, closes, eurusd, rng["flows"])
    say(f"cash flows: {flows['n']:,}")

    book: Book = {kind: [] for kind in LANDING_KINDS}
    book["instruments"] = [("instruments", _instruments_frame(inst))]
    book["portfolios"] = [("portfolios", _portfolios_frame(port, cal))]
    book["prices"] = _prices_frames(inst, cal, closes, volumes)
    book["fx_rates"] = [("fx_rates", _typed("fx_rates", {
        "date": _dates(cal), "currency": _labels(CURRENCIES, np.ones(n_days, dtype=np.int64)),
        "usd_per_unit": eurusd}))]
    book["trades"] = trades["frames"]
    if bad_rows:
        bad = _bad_trades(cal, inst, port, keys, trades, closes)
        book["trades"].append(("trades_corrections", bad))
        say("trades_corrections: deliberate bad rows added")
    book["cash_flows"] = flows["frames"]
    book["targets"] = [("targets", _targets_frame(port, models, cal))]
    book["benchmarks"] = [("benchmarks", _benchmarks_frame(inst, closes, cal))]
    book["signals"] = [("signals", _signals_frame(scale.signals, cal, inst, port, rng["signals"]))]
    say("book complete")
    return book


# --- instruments and market data ---------------------------------------------------------------
def _instruments(n: int, rng: np.random.Generator) -> dict[str, np.ndarray]:
    """Draw instrument attributes: class, sector, currency, lot size, start price, vol, beta."""
    specs = list(_CLASS_SPEC.values())
    cls = rng.choice(len(specs), size=n, p=[s[0] for s in specs])
    cls[: len(specs)] = np.arange(len(specs))  # every asset class present even at tiny scale
    cls = rng.permutation(cls)
    n_sectors = np.array([len(s[1]) for s in specs])
    sector_offset = np.r_[0, np.cumsum(n_sectors)[:-1]]
    sector_idx = sector_offset[cls] + (rng.random(n) * n_sectors[cls]).astype(np.int64)
    is_eur = rng.random(n) < 0.15
    is_eur[np.flatnonzero(cls == 0)[:2]] = True  # at least two EUR equities
    currency = is_eur.astype(np.int64)
    country = np.where(is_eur, rng.integers(1, 1 + len(_EUR_COUNTRIES), n), 0)
    lot = np.ones(n, dtype=np.int64)
    for c, spec in enumerate(specs):  # one iteration per asset class (5)
        m = cls == c
        lot[m] = rng.choice(spec[5], size=int(m.sum()), p=spec[6])
    p0 = np.array([s[2] for s in specs])[cls] * rng.lognormal(0.0, 0.6, n)
    p0 = np.where(cls == 4, 100.0, p0)  # money-market funds start at par
    vol = np.array([s[3] for s in specs])[cls] * rng.lognormal(0.0, 0.25, n)
    beta = np.array([s[4] for s in specs])[cls] + rng.normal(0.0, 0.2, n) * (cls != 4)
    payer = rng.random(n) < np.array([s[7] for s in specs])[cls]
    lo = np.array([s[8][0] for s in specs])[cls]
    hi = np.array([s[8][1] for s in specs])[cls]
    div_yield = np.where(payer, lo + rng.random(n) * (hi - lo), 0.0)
    cap = rng.lognormal(np.log(2e10), 1.2, n)  # market cap (benchmark weights)
    adv = rng.lognormal(np.log(8e5), 0.8, n) / np.where(lot >= 100, 20, 1)
    return {
        "n": np.int64(n), "cls": cls, "sector_idx": sector_idx, "currency": currency,
        "country": country, "lot": lot, "p0": p0, "vol": vol, "beta": beta,
        "div_yield": div_yield, "div_offset": rng.integers(0, 10_000, n), "cap": cap, "adv": adv,
        "name_a": rng.integers(0, len(_NAME_A), n), "name_b": rng.integers(0, len(_NAME_B), n),
    }


def _price_paths(
    inst: dict, n_days: int, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray]:
    """Closes (days × instruments, cents) and volumes from a market + sector + idio model."""
    n = int(inst["n"])
    daily_vol = inst["vol"] / np.sqrt(252.0)
    mkt_vol, sec_vol = 0.010, 0.007
    market = rng.normal(0.0, mkt_vol, n_days)
    sector = rng.normal(0.0, sec_vol, (n_days, len(_SECTORS)))
    gamma = np.where(inst["cls"] == 4, 0.0, rng.uniform(0.5, 1.0, n))
    systematic = (inst["beta"] * mkt_vol) ** 2 + (gamma * sec_vol) ** 2
    idio = np.sqrt(np.maximum(daily_vol**2 - systematic, (0.3 * daily_vol) ** 2))
    total_vol = np.sqrt(systematic + idio**2)
    drift = 0.06 / 252.0 - 0.5 * total_vol**2
    eps = rng.standard_normal((n_days, n))
    ret = (market[:, None] * inst["beta"] + sector[:, inst["sector_idx"]] * gamma
           + eps * idio + drift)
    ret[0] = 0.0
    closes = np.maximum(np.round(inst["p0"] * np.exp(np.cumsum(ret, axis=0)), 2), 0.01)
    surprise = np.abs(ret) / np.maximum(total_vol, 1e-9)
    noise = rng.lognormal(-0.06, 0.35, (n_days, n))
    volumes = np.round(inst["adv"] * noise * (0.7 + 0.3 * surprise))
    return closes, volumes.astype(np.int64)


def _eurusd(n_days: int, rng: np.random.Generator) -> np.ndarray:
    """USD per EUR: AR(1) in logs around 1.08 (daily shock 0.4%, half-life ~140 days)."""
    shocks = rng.normal(0.0, 0.004, n_days)
    shocks[0] = rng.normal(0.0, 0.02)  # the starting deviation x_0
    # x_t = phi x_{t-1} + e_t  ==  phi^t * cumsum(e_s / phi^s): vectorised, and accurate for
    # these lengths (phi^-t stays below ~1e11 for 20 years of business days)
    powers = 0.995 ** np.arange(n_days)
    x = powers * np.cumsum(shocks / powers)
    return np.round(1.08 * np.exp(x), 6)


# --- portfolios, models, position keys -----------------------------------------------------------
def _portfolios(n: int, n_days: int, rng: np.random.Generator) -> dict[str, np.ndarray]:
    """Portfolio attributes and trading windows (day indices into the calendar)."""
    status = rng.choice(4, size=n, p=[0.76, 0.08, 0.08, 0.08])
    if n >= 4:
        status[rng.choice(n, 4, replace=False)] = np.arange(4)  # every status present
    base = np.zeros(n, dtype=np.int64)
    n_eur = max(1, round(0.08 * n)) if n >= 4 else 0
    base[rng.choice(n, n_eur, replace=False)] = 1
    tax = (rng.random(n) < 0.3).astype(np.int64)  # 0 TAXABLE, 1 EXEMPT
    lot_method = rng.choice(3, size=n, p=[0.5, 0.2, 0.3])
    bench = np.where(base == 1, 2, rng.integers(0, 2, n))
    if n >= 20:
        bench[rng.random(n) < 0.05] = -1  # a few portfolios without a benchmark
    inception = np.where(rng.random(n) < 0.4, 0, (rng.random(n) * 0.4 * n_days).astype(np.int64))
    last_trade = np.full(n, n_days - 1)
    suspended = status == 1
    last_trade[suspended] = (n_days * rng.uniform(0.8, 0.95, n)).astype(np.int64)[suspended]
    closed = status == 3
    last_trade[closed] = (n_days * rng.uniform(0.6, 0.9, n)).astype(np.int64)[closed]
    liq_start = np.where(status == 2, n_days - max(5, round(0.1 * n_days)), n_days + 1)
    aum = rng.lognormal(np.log(2e7), 0.7, n)
    sleeves = np.stack([np.ones(n, bool), rng.random(n) < 0.45, rng.random(n) < 0.35], axis=1)
    core_model = np.where(base == 1, 2, np.where(rng.random(n) < 0.6, 0, 1))
    return {
        "n": np.int64(n), "status": status, "base": base, "tax": tax, "lot_method": lot_method,
        "bench": bench, "inception": inception, "last_trade": last_trade, "liq_start": liq_start,
        "aum": aum, "sleeves": sleeves, "core_model": core_model,
        "name_a": rng.integers(0, len(_PORT_A), n), "name_b": rng.integers(0, len(_PORT_B), n),
    }


def _models(inst: dict, closes: np.ndarray, rng: np.random.Generator) -> dict[str, np.ndarray]:
    """Members and weights of the shared model portfolios (two effective dates each).

    Returns flat arrays ``model``, ``instrument``, ``w0``, ``w1`` (weights at the two dates),
    sorted by model.
    """
    cls, eur = inst["cls"], inst["currency"] == 1
    equity, fixed = cls == 0, cls == 1
    pools = [
        equity & ~eur,
        equity | fixed,
        (equity | fixed) & eur,
        equity | (cls == 2),
        fixed | (cls == 3) | (cls == 4),
    ]
    model, member = [], []
    for m, pool in enumerate(pools):  # one iteration per model (5)
        idx = np.flatnonzero(pool)
        if idx.size < 5:
            idx = np.arange(int(inst["n"]))
        size = min(idx.size, int(rng.integers(30, 61)))
        chosen = np.sort(rng.choice(idx, size, replace=False))
        model.append(np.full(size, m))
        member.append(chosen)
    model_arr, member_arr = np.concatenate(model), np.concatenate(member)
    raw0 = rng.gamma(2.0, 1.0, model_arr.size)
    raw1 = raw0 * rng.lognormal(0.0, 0.3, model_arr.size)
    return {
        "model": model_arr, "instrument": member_arr,
        "w0": _normalise(raw0, model_arr, 6), "w1": _normalise(raw1, model_arr, 6),
    }


def _sleeve_models(port: dict) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(portfolio, sleeve, model) triples for every sleeve every portfolio runs."""
    p, s = np.nonzero(port["sleeves"])
    model = np.choose(s, [port["core_model"][p], np.full(p.size, 3), np.full(p.size, 4)])
    return p, s, model


def _position_keys(port: dict, models: dict, inst: dict, n_days: int,
                   rng: np.random.Generator) -> dict[str, np.ndarray]:
    """Position keys (portfolio, instrument) with their sleeve, side and trading window."""
    sp, ss, sm = _sleeve_models(port)
    counts = np.bincount(models["model"], minlength=len(MODELS))
    starts = np.r_[0, np.cumsum(counts)[:-1]]
    # cross each sleeve with its model's members (vectorised repeat + offsets), keep ~80%
    reps = counts[sm]
    row = np.repeat(np.arange(sp.size), reps)
    within = np.arange(row.size) - np.repeat(np.cumsum(reps) - reps, reps)
    cand_i = models["instrument"][starts[sm[row]] + within]
    keep = rng.random(row.size) < 0.8
    # plus two off-model names per sleeve
    extra_row = np.repeat(np.arange(sp.size), 2)
    extra_i = rng.integers(0, int(inst["n"]), extra_row.size)
    row = np.r_[row[keep], extra_row]
    ins = np.r_[cand_i[keep], extra_i]
    p, s = sp[row], ss[row]
    code = (p * int(inst["n"]) + ins) * len(SLEEVES) + s
    code = np.unique(code)  # sorted by (portfolio, instrument, sleeve)
    pi = code // len(SLEEVES)
    first = _segment_starts(pi)  # one sleeve per (portfolio, instrument): the first
    pi, s = pi[first], (code % len(SLEEVES))[first]
    p, ins = pi // int(inst["n"]), pi % int(inst["n"])
    short_p = np.choose(s, [0.03, 0.25, 0.0]) * (inst["cls"][ins] == 0)
    short = rng.random(p.size) < short_p
    if not short.any():
        short[0] = True  # at least one short position in every book
    span = port["last_trade"][p] - port["inception"][p]
    late = rng.random(p.size) < 0.3
    delay = np.where(late, (rng.random(p.size) * 0.5 * span).astype(np.int64), 0)
    start = port["inception"][p] + 1 + delay
    start = np.minimum(start, port["last_trade"][p])
    return {"p": p, "i": ins, "sleeve": s, "short": short, "start": start,
            "end": port["last_trade"][p],
            "activity": rng.lognormal(0.0, 0.6, p.size)}


# --- trades ----------------------------------------------------------------------------------
def _trades(scale: BookScale, cal: np.ndarray, inst: dict, port: dict, keys: dict,
            closes: np.ndarray, eurusd: np.ndarray, rng: np.random.Generator) -> dict:
    """Trades as the differences of per-key target-position paths (see module docstring).

    Returns the key-major arrays the cash flows need (``key``, ``day``, ``q`` = magnitude of
    the position in lots after the trade, ``p``, ``i``, ``cash_local``) and ``frames``: the
    trades frame in trade-id order, split per month.
    """
    n_days, n_keys = cal.size, keys["p"].size
    kp, ki = keys["p"], keys["i"]
    length = keys["end"] - keys["start"] + 1
    # 1. event days: distinct business days per key, count ~ activity × window length
    want = keys["activity"] * length
    want = scale.trades * 1.03 * want / want.sum()
    want = np.clip(want, 2.0, 0.85 * length)
    # draws with replacement whose expected number of distinct days equals ``want``
    with np.errstate(divide="ignore", invalid="ignore"):
        draws = np.where(length > 1, np.log1p(-want / length) / np.log1p(-1.0 / length), 1.0)
    draws = np.maximum(1, np.round(draws)).astype(np.int64)
    key = np.repeat(np.arange(n_keys), draws)
    code = key * n_days + keys["start"][key] + (rng.random(key.size) * length[key]).astype(np.int64)
    del key
    code.sort()
    code = code[_segment_starts(code)]  # distinct (key, day), sorted by key then day
    key, day = code // n_days, code % n_days
    del code
    first = _segment_starts(key)
    last = np.r_[first[1:], True]
    j = np.arange(key.size) - np.flatnonzero(first)[np.cumsum(first) - 1]
    # 2. target positions in lots: lognormal around the key's base size; consecutive non-zero
    #    targets alternate parity so they always differ; full closes (q = 0) never repeat.
    fx_to_usd = np.where(inst["currency"] == 1, eurusd[0], 1.0)
    base_fx = np.where(port["base"] == 1, eurusd[0], 1.0)
    n_keys_p = np.bincount(kp, minlength=int(port["n"]))
    value = port["aum"][kp] * base_fx[kp] * 0.9 / n_keys_p[kp] * rng.lognormal(0.0, 0.5, n_keys)
    base_lots = np.maximum(1.0, value / (inst["p0"][ki] * fx_to_usd[ki] * inst["lot"][ki]))
    q = base_lots[key] * rng.lognormal(0.0, 0.45, key.size)
    q = 2 * (q * 0.5).astype(np.int64) + 1 + (j & 1)
    del j
    zero = rng.random(key.size) < 0.1
    zero[1:] &= ~zero[:-1] | first[1:]  # a close never follows a close
    q[zero & ~first] = 0
    del zero
    # 3. LIQUIDATING: from liq_start on, positions only shrink (running minimum), some to zero
    kpe = kp[key]
    post = day >= port["liq_start"][kpe]
    if post.any():
        big = np.int64(1) << 40
        last_pre = ~post & np.r_[post[1:], False] & ~last
        shrunk = (q * rng.uniform(0.3, 0.9, key.size)).astype(np.int64)
        w = np.where(post, shrunk, np.where(last_pre, q, big - 1))
        q = np.where(post, _segment_cummin(w, key, big), q)
        q[post & last & (rng.random(key.size) < 0.5)] = 0
        del last_pre, shrunk, w
    del post
    # 4. CLOSED: every position is flat on its last event; single-event keys do not trade
    closed = port["status"][kpe] == 3
    q[closed & last] = 0
    keep = ~(closed & first & last)
    del closed, last, kpe
    # 5. trades = diffs; drop no-change events
    d = np.diff(q, prepend=0)
    d[first] = q[first]
    keep &= d != 0
    key, day, q, d = key[keep], day[keep], q[keep], d[keep]
    del keep, first
    n = key.size
    first = _segment_starts(key)
    kpe, kie = kp[key], ki[key]
    # side codes follow contract.TRADE_SIDES: 0 BUY, 1 SELL, 2 SELL_SHORT, 3 BUY_TO_COVER
    # (q is the position's magnitude: d > 0 opens/increases, d < 0 closes/reduces)
    side = ((d < 0) + 2 * keys["short"][key]).astype(np.int8)
    closing = (side == 1) | (side == 3)
    lots = np.abs(d)
    del d
    qty = (lots * inst["lot"][kie]).astype(np.float64)
    # 6. timestamps: market hours by listing currency; ~35% at the portfolio's block time
    eur = inst["currency"][kie] == 1
    open_ms = np.where(eur, _EU_OPEN_S, _US_OPEN_S) * 1000
    window_ms = np.where(eur, _EU_CLOSE_S - _EU_OPEN_S, _US_CLOSE_S - _US_OPEN_S) * 1000
    block = rng.random(n) < 0.35
    u = np.where(block, _block_fraction(kpe, day, eur), rng.random(n))
    offset_ms = open_ms + np.minimum((u * window_ms).astype(np.int64), window_ms - 1)
    offset_ms = np.where(block, offset_ms // 60_000 * 60_000, offset_ms)  # blocks on the minute
    del eur, open_ms, window_ms, block, u
    # 7. prices (close ± slippage against the trader), fees (some zero)
    close = closes.reshape(-1)[day * closes.shape[1] + kie]
    buying = (side == 0) | (side == 3)
    price = np.round(close * (1.0 + np.where(buying, 1.0, -1.0) * rng.uniform(0.0, 0.0015, n)), 4)
    del close
    notional = qty * price
    fees = np.round(np.maximum(1.0, notional * rng.uniform(0.0001, 0.0008, n)), 2)
    fees[rng.random(n) < 0.12] = 0.0
    cash_local = np.where(buying, -notional, notional) - fees
    del notional, buying
    # 8. replay order == id order: (ts, opening before closing, key). Sorting on the business
    #    day index orders like the timestamp (one calendar day per index).
    sort_ms = day * 86_400_000 + offset_ms
    if np.int64(n_days) * 86_400_000 * 2 * max(n_keys, 1) < np.iinfo(np.int64).max // 2:
        order = np.argsort((sort_ms * 2 + closing) * n_keys + key)
    else:
        order = np.lexsort((key, closing, sort_ms))
    del sort_ms
    rank = np.empty(n, dtype=np.int64)
    rank[order] = np.arange(n)
    # 9. lot_id on ~12% of eligible SELLs: the first closing trade of an episode (position
    #    opened from flat, nothing sold since) naming the episode's opening BUY when it is
    #    large enough, and the opening BUY came > 31 days after the key's previous trade, so
    #    no earlier wash sale can have split it.
    ep_start = np.r_[True, q[:-1] == 0] | first
    ep_first = np.flatnonzero(ep_start)[np.cumsum(ep_start) - 1]
    del ep_start
    cc = np.cumsum(closing)
    closes_in_ep = cc - cc[ep_first]
    del cc
    gap_ok = first[ep_first] | (cal[day[ep_first]] - cal[day[np.maximum(ep_first - 1, 0)]] > 31)
    named = ((side == 1) & (closes_in_ep == 1) & (lots <= lots[ep_first]) & gap_ok
             & (rng.random(n) < 0.12))
    lot_ref = np.where(named, rank[ep_first], -1)
    del closes_in_ep, gap_ok, named, rank, ep_first, lots
    # 10. frame in id order, split per month
    o = order
    trade_ids = _ids("T", np.arange(1, n + 1), 8)
    ts_us = (cal[day] * _DAY_US + offset_ms * _MS)[o]
    frame = _typed("trades", {
        "trade_id": trade_ids,
        "portfolio_id": _code_ids("P", kpe[o], 3),
        "instrument_id": _code_ids("I", kie[o], 4),
        "trade_ts": _timestamps(ts_us),
        "settle_date": _dates(np.r_[cal, _business_days_after(cal[-1], 2)][day[o] + 2]),
        "side": _labels(TRADE_SIDES, side[o]),
        "quantity": qty[o],
        "price": price[o],
        "fees": fees[o],
        "strategy_id": _labels(SLEEVES, keys["sleeve"][key[o]]),
        "lot_id": _labels(trade_ids, lot_ref[o]),
    })
    month = _calendar_months(cal)[day[o]]
    return {
        "n": n, "key": key, "day": day, "q": q, "p": kpe, "i": kie, "cash_local": cash_local,
        "frames": _split_by_month(frame, month, "trades"),
    }


def _calendar_months(cal: np.ndarray) -> np.ndarray:
    """Months since 1970-01 of each calendar day."""
    return cal.astype("datetime64[D]").astype("datetime64[M]").astype(np.int64)


def _block_fraction(p: np.ndarray, day: np.ndarray, eur: np.ndarray) -> np.ndarray:
    """A deterministic pseudo-random fraction of the session per (portfolio, day, market):
    every block trade of that portfolio on that day and market shares one timestamp."""
    h = (p.astype(np.uint64) * np.uint64(0x9E3779B97F4A7C15)
         + day.astype(np.uint64) * np.uint64(0xBF58476D1CE4E5B9)
         + eur.astype(np.uint64) * np.uint64(0x94D049BB133111EB))
    h ^= h >> np.uint64(31)
    h *= np.uint64(0xD6E8FEB86659FD93)
    h ^= h >> np.uint64(32)
    return (h % np.uint64(1_000_003)).astype(np.float64) / 1_000_003.0


def _business_days_after(last: int, n: int) -> np.ndarray:
    """The ``n`` Mon-Fri days after epoch day ``last`` (settlement beyond the calendar)."""
    start = np.datetime64(int(last), "D")
    return np.busday_offset(start, np.arange(1, n + 1), roll="forward").astype(np.int64)


# --- cash flows --------------------------------------------------------------------------------
def _cash_flows(cal: np.ndarray, inst: dict, port: dict, keys: dict, trades: dict,
                closes: np.ndarray, eurusd: np.ndarray, rng: np.random.Generator) -> dict:
    """Deposits, withdrawals, dividends, interest and fees; the inception deposit covers the
    lowest running cash balance (base currency, by day) of everything else."""
    n_days, n_p = cal.size, int(port["n"])
    base = port["base"]
    flow_end = np.where(port["status"] == 3, port["last_trade"], n_days - 1)
    aum = port["aum"]
    # month-end business days
    month = cal.astype("datetime64[D]").astype("datetime64[M]").astype(np.int64)
    month_end = np.flatnonzero(np.r_[month[1:] != month[:-1], True])
    month_start = np.flatnonzero(_segment_starts(month))
    parts_p, parts_day, parts_type, parts_amt, parts_inst, parts_sec = [], [], [], [], [], []

    def add(p, day, ftype, amount, instrument=None, second=0):
        parts_p.append(p)
        parts_day.append(day)
        parts_type.append(np.full(p.size, ftype))
        parts_amt.append(amount)
        parts_inst.append(np.full(p.size, -1) if instrument is None else instrument)
        parts_sec.append(np.full(p.size, second) if np.isscalar(second) else second)

    def gathered():
        """The flows added so far: (portfolio, day, type, amount, instrument, second)."""
        parts = (parts_p, parts_day, parts_type, parts_amt, parts_inst, parts_sec)
        return tuple(np.concatenate(part) for part in parts)

    # monthly INTEREST and management FEE (0.75% a year) at month end, within the flow window
    pm_p = np.repeat(np.arange(n_p), month_end.size)
    pm_d = np.tile(month_end, n_p)
    live = (pm_d > port["inception"][pm_p]) & (pm_d <= flow_end[pm_p])
    pm_p, pm_d = pm_p[live], pm_d[live]
    interest = np.round(aum[pm_p] * rng.uniform(0.0002, 0.0015, pm_p.size), 2)
    add(pm_p, pm_d, 3, interest, second=77_400)
    add(pm_p, pm_d, 4, np.round(aum[pm_p] * 0.0075 / 12 * rng.uniform(0.9, 1.1, pm_p.size), 2),
        second=78_300)
    # later DEPOSITs and WITHDRAWALs: ~20% of months each, on a random day of the month
    for ftype in (0, 1):  # two iterations
        pm_p = np.repeat(np.arange(n_p), month_start.size)
        m_idx = np.tile(np.arange(month_start.size), n_p)
        span = np.r_[month_start[1:], n_days][m_idx] - month_start[m_idx]
        d = month_start[m_idx] + (rng.random(pm_p.size) * span).astype(np.int64)
        hit = (rng.random(pm_p.size) < 0.2) & (d > port["inception"][pm_p]) & (d < flow_end[pm_p])
        pm_p, d = pm_p[hit], d[hit]
        amount = np.round(aum[pm_p] * rng.lognormal(np.log(0.02), 0.5, pm_p.size), -2)
        add(pm_p, d, ftype, amount, second=46_800)
    # quarterly DIVIDENDs on long positions held at the end of the ex-date
    period = int(min(63, max(10, n_days // 4)))
    payer_keys = np.flatnonzero((inst["div_yield"][keys["i"]] > 0) & ~keys["short"])
    n_q = -(-n_days // period)
    dk = np.repeat(payer_keys, n_q)
    dd = (inst["div_offset"][keys["i"][dk]] % period
          + period * np.tile(np.arange(n_q), payer_keys.size))
    dk, dd = dk[dd < n_days], dd[dd < n_days]
    codes = trades["key"] * n_days + trades["day"]  # trades are sorted by (key, day)
    at = np.searchsorted(codes, dk * n_days + dd, side="right") - 1
    held = (at >= 0) & (trades["key"][np.maximum(at, 0)] == dk)
    lots_held = np.where(held, trades["q"][np.maximum(at, 0)], 0)
    di = keys["i"][dk]
    dps = closes[dd, di] * inst["div_yield"][di] / 4
    amount = np.round(lots_held * inst["lot"][di] * dps, 2)
    ok = (lots_held > 0) & (amount >= 0.01)
    add(keys["p"][dk[ok]], dd[ok], 2, amount[ok], di[ok], second=79_200)

    p, day, ftype, amt, fi, sec = gathered()
    # base-currency cash by (portfolio, day): trades and the flows above
    flow_ccy = np.where(fi >= 0, inst["currency"][np.maximum(fi, 0)], base[p])
    signed = np.where(np.isin(ftype, (1, 4)), -amt, amt)
    flow_base = signed * _to_base(flow_ccy, base[p], eurusd[day])
    t_base = trades["cash_local"] * _to_base(inst["currency"][trades["i"]], base[trades["p"]],
                                             eurusd[trades["day"]])
    grid = np.bincount(trades["p"] * n_days + trades["day"], weights=t_base, minlength=n_p * n_days)
    grid += np.bincount(p * n_days + day, weights=flow_base, minlength=n_p * n_days)
    running = np.cumsum(grid.reshape(n_p, n_days), axis=1)
    need = np.maximum(0.0, -running.min(axis=1))
    deposit0 = np.ceil((need * 1.05 + 0.02 * aum) / 1000.0) * 1000.0
    # initial DEPOSIT at inception (06:00 UTC, before any trade)
    ps = np.arange(n_p)
    add(ps, port["inception"], 0, deposit0, second=21_600)
    # CLOSED: withdraw ~98% of the remaining cash the next business day
    closed = np.flatnonzero(port["status"] == 3)
    cd = port["last_trade"][closed]
    left = deposit0[closed] + running[closed, cd]
    nxt = np.minimum(cd + 1, n_days - 1)
    ok = left > 1.0
    add(closed[ok], nxt[ok], 1, np.floor(left[ok] * 98.0) / 100.0,
        second=np.where(nxt[ok] > cd[ok], 46_800, 84_600))
    p, day, ftype, amt, fi, sec = gathered()
    ccy = np.where(fi >= 0, inst["currency"][np.maximum(fi, 0)], base[p])
    ts_us = cal[day] * _DAY_US + sec.astype(np.int64) * 1_000_000
    order = np.lexsort((fi, ftype, p, ts_us))
    n = p.size
    frame = _typed("cash_flows", {
        "flow_id": _ids("F", np.arange(1, n + 1), 8),
        "portfolio_id": _code_ids("P", p[order], 3),
        "ts": _timestamps(ts_us[order]),
        "type": _labels(CASH_FLOW_TYPES, ftype[order]),
        "amount": amt[order],
        "currency": _labels(CURRENCIES, ccy[order]),
        "instrument_id": _code_ids("I", fi[order], 4),
    })
    months = _calendar_months(cal)[day[order]]
    return {"n": n, "frames": _split_by_month(frame, months, "cash_flows")}


def _to_base(ccy: np.ndarray, base: np.ndarray, eurusd: np.ndarray) -> np.ndarray:
    """Multiplier from ``ccy`` (0 USD, 1 EUR) to ``base`` given USD per EUR."""
    return np.where(ccy == base, 1.0, np.where(ccy == 1, eurusd, 1.0 / eurusd))


# --- frames for the reference kinds ------------------------------------------------------------
def _instruments_frame(inst: dict) -> pl.DataFrame:
    """The instruments file: ids ``I0001``.., generated names, class, sector, listing."""
    n = int(inst["n"])
    cls = inst["cls"]
    name = pl.select(pl.concat_str(
        _labels(_NAME_A, inst["name_a"]), pl.lit(" "), _labels(_NAME_B, inst["name_b"]),
        pl.lit(" "),
        _labels(_CLASS_SUFFIX, cls))).to_series()
    return _typed("instruments", {
        "instrument_id": _ids("I", np.arange(1, n + 1), 4),
        "name": name,
        "asset_class": _labels(ASSET_CLASSES, cls),
        "sector": _labels(_SECTORS, inst["sector_idx"]),
        "country": _labels(("US", *_EUR_COUNTRIES), inst["country"]),
        "currency": _labels(CURRENCIES, inst["currency"]),
        "lot_size": inst["lot"],
    })


def _portfolios_frame(port: dict, cal: np.ndarray) -> pl.DataFrame:
    """The portfolios file: ids ``P001``.. with status, base currency, benchmark, tax data."""
    n = int(port["n"])
    name = pl.select(pl.concat_str(
        _labels(_PORT_A, port["name_a"]), pl.lit(" "), _labels(_PORT_B, port["name_b"]),
        pl.lit(" Portfolio "), pl.Series(np.arange(1, n + 1)).cast(pl.String))).to_series()
    return _typed("portfolios", {
        "portfolio_id": _ids("P", np.arange(1, n + 1), 3),
        "portfolio_name": name,
        "status": _labels(PORTFOLIO_STATUSES, port["status"]),
        "base_currency": _labels(CURRENCIES, port["base"]),
        "benchmark_id": _labels(BENCHMARKS, port["bench"]),
        "tax_status": _labels(TAX_STATUSES, port["tax"]),
        "lot_method": _labels(LOT_METHODS, port["lot_method"]),
        "inception_date": _dates(cal[port["inception"]]),
    })


def _prices_frames(inst: dict, cal: np.ndarray, closes: np.ndarray,
                   volumes: np.ndarray) -> list[tuple[str, pl.DataFrame]]:
    """Prices in (date, instrument) order, one file per calendar year (``prices_2025``)."""
    n_days, n = closes.shape
    frame = _typed("prices", {
        "instrument_id": _code_ids("I", np.tile(np.arange(n), n_days), 4),
        "date": _dates(np.repeat(cal, n)),
        "close": closes.reshape(-1),
        "volume": volumes.reshape(-1),
    })
    years = cal.astype("datetime64[D]").astype("datetime64[Y]").astype(np.int64) + 1970
    out = []
    for year in np.unique(years):  # one iteration per yearly file
        rows = np.flatnonzero(years == year)
        out.append((f"prices_{year}", frame.slice(int(rows[0]) * n, rows.size * n)))
    return out


def _targets_frame(port: dict, models: dict, cal: np.ndarray) -> pl.DataFrame:
    """Every portfolio sleeve gets its model's weights at the first and middle calendar day."""
    sp, ss, sm = _sleeve_models(port)
    counts = np.bincount(models["model"], minlength=len(MODELS))
    starts = np.r_[0, np.cumsum(counts)[:-1]]
    reps = counts[sm]
    row = np.repeat(np.arange(sp.size), reps)
    member = starts[sm[row]] + np.arange(row.size) - np.repeat(np.cumsum(reps) - reps, reps)
    eff = np.array([cal[0], cal[cal.size // 2]])
    both = np.r_[member, member]
    row2 = np.r_[row, row]
    return _typed("targets", {
        "portfolio_id": _code_ids("P", sp[row2], 3),
        "strategy_id": _labels(SLEEVES, ss[row2]),
        "instrument_id": _code_ids("I", models["instrument"][both], 4),
        "target_weight": np.r_[models["w0"][member], models["w1"][member]],
        "effective_date": _dates(np.repeat(eff, row.size)),
    })


def _benchmarks_frame(inst: dict, closes: np.ndarray, cal: np.ndarray) -> pl.DataFrame:
    """Cap-weighted benchmarks at the first and middle calendar day (caps drift with prices)."""
    cls, eur = inst["cls"], inst["currency"] == 1
    equity, fixed = cls == 0, cls == 1

    def top(mask: np.ndarray, k: int) -> np.ndarray:
        idx = np.flatnonzero(mask)
        if idx.size == 0:  # only possible for tiny custom scales
            idx = np.flatnonzero(equity)
        return idx[np.argsort(-inst["cap"][idx], kind="stable")[:k]]

    us, eu = top(equity & ~eur, 50), top(equity & eur, 30)
    g_eq, g_fi = top(equity, 60), top(fixed, 20)
    bm = np.r_[np.zeros(us.size), np.ones(g_eq.size + g_fi.size), np.full(eu.size, 2)]
    bm = bm.astype(np.int64)
    member = np.r_[us, g_eq, g_fi, eu]
    sleeve_share = np.r_[np.ones(us.size), np.full(g_eq.size, 0.6), np.full(g_fi.size, 0.4),
                         np.ones(eu.size)]
    group = np.r_[np.zeros(us.size), np.ones(g_eq.size), np.full(g_fi.size, 2), np.full(eu.size, 3)]
    mid = cal.size // 2
    out_w = []
    for t in (0, mid):  # two effective dates
        cap = inst["cap"][member] * closes[t, member] / closes[0, member]
        gsum = np.bincount(group.astype(np.int64), weights=cap)
        out_w.append(_normalise(cap / gsum[group.astype(np.int64)] * sleeve_share, bm, 8))
    eff = np.array([cal[0], cal[mid]])
    return _typed("benchmarks", {
        "benchmark_id": _labels(BENCHMARKS, np.r_[bm, bm]),
        "instrument_id": _code_ids("I", np.r_[member, member], 4),
        "weight": np.r_[out_w[0], out_w[1]],
        "effective_date": _dates(np.repeat(eff, member.size)),
    })


def _signals_frame(n: int, cal: np.ndarray, inst: dict, port: dict,
                   rng: np.random.Generator) -> pl.DataFrame:
    """``n`` signals sorted by time; ~40% name a portfolio (most of those also a sleeve);
    a few nulls in confidence, horizon and priority."""
    day = rng.integers(0, cal.size, n)
    ts_us = cal[day] * _DAY_US + rng.integers(12 * 3600 * 1000, 22 * 3600 * 1000, n) * _MS
    order = np.argsort(ts_us, kind="stable")
    sp, ss, _ = _sleeve_models(port)
    pick = rng.integers(0, sp.size, n)  # a random (portfolio, sleeve)
    has_p = rng.random(n) < 0.4
    has_s = has_p & (rng.random(n) < 0.7)
    p = np.where(has_p, sp[pick], -1)
    s = np.where(has_s, ss[pick], -1)
    ins = rng.integers(0, int(inst["n"]), n)
    score = np.round(np.clip(rng.normal(0.0, 1.0, n), -3.0, 3.0), 4)
    conf = np.round(rng.uniform(0.3, 1.0, n), 3)
    conf_ok = rng.random(n) >= 0.05
    horizon = np.where(rng.random(n) < 0.05, -1, rng.integers(0, len(HORIZONS), n))
    priority = rng.integers(1, 6, n)
    prio_ok = rng.random(n) >= 0.1
    o = order
    return _typed("signals", {
        "signal_id": _ids("S", np.arange(1, n + 1), 7),
        "source": _labels(SIGNAL_SOURCES, rng.integers(0, len(SIGNAL_SOURCES), n)[o]),
        "ts": _timestamps(ts_us[o]),
        "instrument_id": _code_ids("I", ins[o], 4),
        "portfolio_id": _code_ids("P", p[o], 3),
        "strategy_id": _labels(SLEEVES, s[o]),
        "score": score[o],
        "confidence": pl.Series(np.where(conf_ok, conf, np.nan)[o]).fill_nan(None),
        "horizon": _labels(HORIZONS, horizon[o]),
        "priority": pl.Series(priority[o]).scatter(np.flatnonzero(~prio_ok[o]), None),
    })


# --- deliberately bad trades ----------------------------------------------------------------------
def _bad_trades(cal: np.ndarray, inst: dict, port: dict, keys: dict, trades: dict,
                closes: np.ndarray) -> pl.DataFrame:
    """~12 trades, each breaking exactly one rule, for the validator to quarantine.

    All on the last business day of the calendar at 19:30 UTC (US market hours), on a long key
    of an ACTIVE portfolio in a USD-listed instrument that still holds a position at the end
    (``pid``/``iid`` below), so each row has exactly its one stated defect.
    """
    n_days = cal.size
    last_of_key = np.r_[trades["key"][1:] != trades["key"][:-1], True]
    open_long = np.flatnonzero(last_of_key & (trades["q"] > 0)
                               & ~keys["short"][trades["key"]]
                               & (inst["currency"][trades["i"]] == 0)
                               & (port["status"][trades["p"]] == 0))
    row = open_long[0] if open_long.size else int(np.flatnonzero(last_of_key)[0])
    p, i = int(trades["p"][row]), int(trades["i"][row])
    held = float(trades["q"][row] * inst["lot"][i])
    lot = float(inst["lot"][i])
    day = n_days - 1
    date = int(cal[day])
    settle = int(_business_days_after(cal[-1], 2)[-1])
    ts = date * _DAY_US + (19 * 3600 + 1800) * 1_000_000
    px = float(np.round(closes[day, i], 4))
    pid, iid = f"P{p + 1:03d}", f"I{i + 1:04d}"
    sleeve = SLEEVES[int(keys["sleeve"][trades["key"][row]])]
    rows = [
        # (trade_id, portfolio, instrument, ts, settle, side, quantity, price, fees)
        ("T99000001", pid, "I_UNKNOWN", ts, settle, "BUY", lot, px, 1.0),  # unknown instrument_id
        ("T99000002", "P_UNKNOWN", iid, ts, settle, "BUY", lot, px, 1.0),  # unknown portfolio_id
        ("T99000003", pid, iid, ts, settle, "BUY", -lot, px, 1.0),  # negative quantity
        ("T99000004", pid, iid, ts, settle, "BUY", 0.0, px, 1.0),  # zero quantity
        ("T99000005", pid, iid, ts, settle, "HOLD", lot, px, 1.0),  # side not in TRADE_SIDES
        ("T99000006", pid, iid, ts, settle, "buy", lot, px, 1.0),  # side in the wrong case
        ("T99000007", pid, iid, ts, settle, "BUY", lot, -px, 1.0),  # negative price
        ("T99000008", pid, iid, ts, settle, "BUY", lot, px, -5.0),  # negative fees
        ("T99000009", pid, iid, ts, date - 3, "BUY", lot, px, 1.0),  # settle_date before trade date
        # duplicate: reuses the id of the first real trade
        ("T00000001", pid, iid, ts, settle, "BUY", lot, px, 1.0),
        (None, pid, iid, ts, settle, "BUY", lot, px, 1.0),  # null trade_id (required column)
        # oversell: a SELL of 1,000 × the whole held quantity (passes row checks; the ledger
        # must quarantine it)
        ("T99000012", pid, iid, ts, settle, "SELL", held * 1000.0, px, 1.0),
    ]
    cols = list(zip(*rows, strict=True))
    return _typed("trades", {
        "trade_id": pl.Series(cols[0], dtype=pl.String),
        "portfolio_id": pl.Series(cols[1], dtype=pl.String),
        "instrument_id": pl.Series(cols[2], dtype=pl.String),
        "trade_ts": _timestamps(np.array(cols[3])),
        "settle_date": _dates(np.array(cols[4])),
        "side": pl.Series(cols[5], dtype=pl.String),
        "quantity": pl.Series(cols[6], dtype=pl.Float64),
        "price": pl.Series(cols[7], dtype=pl.Float64),
        "fees": pl.Series(cols[8], dtype=pl.Float64),
        "strategy_id": pl.Series([sleeve] * len(rows), dtype=pl.String),
        "lot_id": pl.Series([None] * len(rows), dtype=pl.String),
    })
