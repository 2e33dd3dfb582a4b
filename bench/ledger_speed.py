"""Speed of ``transforms.lots.build_ledger`` on synthetic books.

    uv run python bench/ledger_speed.py [--keys 2000 --trades 500] [--json bench/results/ledger_speed.json]

A book is ``keys`` (portfolio, instrument) pairs with ``trades`` trades each. Each key follows a
random position path that never goes below zero (so every SELL is valid): the trades are the
path's steps, BUY when it rises and SELL when it falls; every 4th key is a short book
(SELL_SHORT / BUY_TO_COVER) instead. One trade per key per calendar day, so wash-sale windows
are full in TAXABLE runs (the worst case for the wash-sale rounds).

Prints trades/second for FIFO (EXEMPT: the closed form; TAXABLE: wash sales force the round
engine), LIFO and HIFO, best of ``--repeat`` runs.
"""

from __future__ import annotations

import argparse
import json
import time
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import polars as pl

from transforms.contract import TS
from transforms.lots import build_ledger


def synthetic_trades(
    keys: int, trades: int, seed: int = 0, portfolios: int = 100
) -> pl.DataFrame:
    """``keys * trades`` valid trades (contract columns), see the module docstring."""
    rng = np.random.default_rng(seed)
    walk = np.abs(np.cumsum(rng.normal(0, 50, size=(keys, trades + 1)), axis=1)).round()
    walk[:, 0] = 0.0
    step = np.diff(walk, axis=1)
    step[step == 0] = 1.0  # an extra BUY only raises every later position: still valid
    short_book = (np.arange(keys) % 4 == 3)[:, None]
    side = np.where(
        step > 0,
        np.where(short_book, "SELL_SHORT", "BUY"),
        np.where(short_book, "BUY_TO_COVER", "SELL"),
    )
    price = 100 * np.exp(np.cumsum(rng.normal(0, 0.02, size=(keys, trades)), axis=1))
    start = int(datetime(2020, 1, 1, tzinfo=UTC).timestamp() * 1_000_000)
    day = 86_400_000_000
    ts = (
        start
        + np.arange(trades)[None, :] * day
        + rng.integers(0, day // 2, size=(keys, trades))
    )
    key = np.repeat(np.arange(keys), trades)
    return pl.DataFrame(
        {
            "trade_id": [f"T{i}" for i in range(keys * trades)],
            "portfolio_id": [f"P{k % portfolios}" for k in key],
            "instrument_id": [f"I{k}" for k in key],
            "trade_ts": pl.Series(ts.ravel())
            .cast(pl.Datetime("us"))
            .dt.replace_time_zone("UTC")
            .cast(TS),
            "settle_date": pl.Series(ts.ravel()).cast(pl.Datetime("us")).dt.date(),
            "side": side.ravel(),
            "quantity": np.abs(step).ravel(),
            "price": price.round(2).ravel(),
            "fees": np.full(keys * trades, 1.0),
            "strategy_id": pl.Series([None] * (keys * trades), dtype=pl.String),
            "lot_id": pl.Series([None] * (keys * trades), dtype=pl.String),
        }
    )


def portfolios_frame(n: int, tax_status: str, lot_method: str) -> pl.DataFrame:
    return pl.DataFrame(
        {
            "portfolio_id": [f"P{i}" for i in range(n)],
            "tax_status": [tax_status] * n,
            "lot_method": [lot_method] * n,
        }
    )


def measure(trades: pl.DataFrame, portfolios: pl.DataFrame, repeat: int) -> dict:
    best = float("inf")
    for _ in range(repeat):
        t0 = time.perf_counter()
        ledger = build_ledger(trades, portfolios)
        best = min(best, time.perf_counter() - t0)
    return {
        "seconds": round(best, 3),
        "trades_per_second": round(trades.height / best),
        "lots": ledger.lots.height,
        "realized_rows": ledger.realized_pnl.height,
        "rejected": ledger.rejected_trades.height,
        "wash_sales": int((ledger.realized_pnl["disallowed_loss"] > 0).sum()),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--keys", type=int, default=2000)
    ap.add_argument("--trades", type=int, default=500)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument(
        "--cases",
        default="FIFO/EXEMPT,FIFO/TAXABLE,LIFO/EXEMPT,HIFO/EXEMPT,LIFO/TAXABLE,HIFO/TAXABLE",
    )
    ap.add_argument("--json", type=Path, default=None)
    args = ap.parse_args()

    trades = synthetic_trades(args.keys, args.trades)
    n_pf = 100
    results = {
        "keys": args.keys,
        "trades_per_key": args.trades,
        "trades": trades.height,
        "cases": {},
    }
    print(f"{trades.height:,} trades = {args.keys} keys x {args.trades}")
    for case in args.cases.split(","):
        method, tax = case.split("/")
        r = measure(trades, portfolios_frame(n_pf, tax, method), args.repeat)
        results["cases"][case] = r
        print(
            f"{case:14s} {r['seconds']:8.3f} s  {r['trades_per_second']:>12,} trades/s  "
            f"lots={r['lots']:,} realized={r['realized_rows']:,} wash={r['wash_sales']:,} "
            f"rejected={r['rejected']}"
        )
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
