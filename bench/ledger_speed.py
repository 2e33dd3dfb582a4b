"""Speed of ``transforms.lots.build_ledger`` on synthetic books.

    uv run python bench/ledger_speed.py [--keys 2000 --trades 500] [--json bench/results/ledger_speed.json]

A book is ``keys`` (portfolio, instrument) pairs with ``trades`` trades each. Each key follows a
random position path that never goes below zero (so every SELL is valid): the trades are the
path's steps, BUY when it rises and SELL when it falls; every 4th key is a short book
(SELL_SHORT / BUY_TO_COVER) instead. One trade per key per calendar day, so wash-sale windows
are full in TAXABLE runs (the worst case for wash-sale matching).

Prints trades/second for FIFO, LIFO and HIFO (EXEMPT and TAXABLE), best of ``--repeat`` runs.

``--demo`` (the default when no synthetic case is asked for) measures the generated demo book
instead: all portfolios forced to FIFO + EXEMPT (the same rules as the pandas baseline), the
book as generated (mixed lot methods, TAXABLE wash sales), and the straightforward pandas FIFO
loop (``bench.foundation.pandas_fifo_positions``) in the same run, with the ratio.
``--standard`` adds the as-generated standard book once (~10M trades, ~3 GB to generate).

    uv run python bench/ledger_speed.py --demo [--standard]
"""

from __future__ import annotations

import argparse
import json
import time
from datetime import UTC, datetime
from pathlib import Path

import orchestration  # noqa: F401  (first: the memory policy must precede Polars' import)

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


def demo_figures(repeat: int, standard: bool) -> dict:
    """Ledger speed on the generated demo book, beside the pandas FIFO baseline."""
    from bench.foundation import book_inputs_from, pandas_fifo_positions
    from transforms.sample_book import generate_book

    inputs = book_inputs_from(generate_book("demo", 7, include_bad_rows=False))
    trades, pf = inputs.trades, inputs.portfolios
    fifo = pf.with_columns(
        pl.lit("FIFO").alias("lot_method"), pl.lit("EXEMPT").alias("tax_status")
    )
    out: dict = {"demo_trades": trades.height}
    print(f"demo book: {trades.height:,} trades, {pf.height} portfolios")
    for label, portfolios in (("FIFO/EXEMPT", fifo), ("as generated", pf)):
        r = measure(trades, portfolios, repeat)
        out[label] = r
        print(
            f"  {label:14s} {r['seconds']:8.3f} s  {r['trades_per_second']:>12,} trades/s  "
            f"lots={r['lots']:,} realized={r['realized_rows']:,} wash={r['wash_sales']:,}"
        )
    trades_pd = trades.select(
        "trade_id", "portfolio_id", "instrument_id", "trade_ts", "side", "quantity",
        "price", "fees",
    ).to_pandas()
    prices_pd = inputs.prices.select("instrument_id", "date", "close").to_pandas()
    best = float("inf")
    for _ in range(max(1, repeat // 2)):
        t0 = time.perf_counter()
        pandas_fifo_positions(trades_pd, prices_pd)
        best = min(best, time.perf_counter() - t0)
    ratio = best / out["FIFO/EXEMPT"]["seconds"]
    out["pandas_fifo_seconds"] = round(best, 3)
    out["speedup_vs_pandas"] = round(ratio, 1)
    print(
        f"  {'pandas FIFO':14s} {best:8.3f} s  {trades.height / best:>12,.0f} trades/s  "
        f"-> ledger FIFO/EXEMPT is {ratio:.1f}x faster"
    )
    if standard:
        del inputs, trades_pd, prices_pd
        std = book_inputs_from(generate_book("standard", 7, include_bad_rows=False))
        r = measure(std.trades, std.portfolios, 1)
        out["standard as generated"] = {"trades": std.trades.height, **r}
        print(
            f"standard book: {std.trades.height:,} trades, as generated: {r['seconds']:.2f} s  "
            f"{r['trades_per_second']:,} trades/s  lots={r['lots']:,} "
            f"realized={r['realized_rows']:,} wash={r['wash_sales']:,}"
        )
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--keys", type=int, default=2000)
    ap.add_argument("--trades", type=int, default=500)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument(
        "--cases",
        default=None,
        help="synthetic cases, e.g. FIFO/EXEMPT,LIFO/TAXABLE (default: the demo book)",
    )
    ap.add_argument("--demo", action="store_true", help="the generated demo book figures")
    ap.add_argument("--standard", action="store_true", help="also the standard book, once")
    ap.add_argument("--json", type=Path, default=None)
    args = ap.parse_args()

    if args.demo or args.standard or args.cases is None:
        results = demo_figures(args.repeat, args.standard)
        if args.json:
            args.json.parent.mkdir(parents=True, exist_ok=True)
            args.json.write_text(json.dumps(results, indent=2))
        if args.cases is None:
            return

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
