"""The ``portfolio`` command: generate a sample book, run the pipeline, look up a state, benchmark.

Every command takes ``--data-dir`` (default ``$PORTFOLIO_DATA_DIR`` or ``data/``), laid out as
``landing/`` (input files), ``lake/`` (Delta tables) and ``warehouse.duckdb``.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from datetime import datetime
from pathlib import Path

import polars as pl

from assets.resources import data_dir_from_env

# Landing format per kind for the generated book: CSV where files are small (and to exercise
# the CSV path), Parquet where they are large.
PARQUET_KINDS_BY_SCALE = {"tiny": {"prices"}, "demo": {"prices"}, "standard": {"prices", "trades", "cash_flows"}}


def _say(message: str) -> None:
    print(message, flush=True)


def _landing_is_empty(landing: Path) -> bool:
    return not landing.exists() or not any(p.is_file() for p in landing.rglob("*"))


def write_landing(
    book: dict[str, list[tuple[str, pl.DataFrame]]], landing: Path, parquet_kinds: set[str]
) -> dict[str, int]:
    """Write a generated book as landing files (``<kind>/<stem>.csv|.parquet``); rows per kind."""
    rows: dict[str, int] = {}
    for kind, files in book.items():
        folder = landing / kind
        folder.mkdir(parents=True, exist_ok=True)
        for stem, frame in files:
            target = folder / f"{stem}.{'parquet' if kind in parquet_kinds else 'csv'}"
            # Written beside the target and renamed into place: a watcher never sees half a file.
            tmp = target.with_name(f".{target.name}.part")
            if kind in parquet_kinds:
                frame.write_parquet(tmp)
            else:
                frame.write_csv(tmp, datetime_format="%Y-%m-%dT%H:%M:%S%.6fZ")
            os.replace(tmp, target)
            rows[kind] = rows.get(kind, 0) + frame.height
    return rows


def cmd_generate(args: argparse.Namespace) -> int:
    from transforms.sample_book import generate_book

    landing = data_dir_from_env(args.data_dir) / "landing"
    if not _landing_is_empty(landing) and not args.force:
        _say(f"{landing} already holds files; use --force to add a generated book beside them.")
        return 1
    started = time.perf_counter()
    _say(f"Generating the {args.scale} book (seed {args.seed}) into {landing} …")
    book = generate_book(args.scale, args.seed, progress=lambda m: _say(f"  {m}"))
    rows = write_landing(book, landing, PARQUET_KINDS_BY_SCALE.get(args.scale, {"prices"}))
    for kind, n in rows.items():
        _say(f"  {kind:<12} {n:>12,} rows")
    _say(f"Done in {time.perf_counter() - started:.1f} s.")
    return 0


def run_pipeline(data_dir: str | Path | None = None, progress=_say) -> dict:
    """Materialise every asset in-process for one data folder, group by group, with progress.

    Returns a summary (portfolios, positions, NAV per base currency, quarantined rows,
    warehouse path, failed checks). Raises when an asset fails.
    """
    import dagster as dg

    from assets.resources import resources_for
    from orchestration.checks import ASSET_CHECKS
    from orchestration.definitions import ALL_ASSETS

    resources = resources_for(data_dir)
    instance = dg.DagsterInstance.get() if os.environ.get("DAGSTER_HOME") else dg.DagsterInstance.ephemeral()
    failed_checks: list[str] = []
    for group in ("ingest", "state", "analytics", "rebalancing", "publish"):
        started = time.perf_counter()
        progress(f"Materialising the {group} assets …")
        result = dg.materialize(
            [*ALL_ASSETS, *ASSET_CHECKS],
            selection=dg.AssetSelection.groups(group),
            resources=resources,
            instance=instance,
            tags={"portfolio/command": "run"},
            # The progress lines below say what happened; Dagster's event stream stays in the
            # run's logs (and in the UI with a persistent DAGSTER_HOME).
            run_config={"loggers": {"console": {"config": {"log_level": "WARNING"}}}},
        )
        for event in result.get_asset_materialization_events():
            mat = event.event_specific_data.materialization
            count = mat.metadata.get("dagster/row_count")
            extra = ""
            if "rows_quarantined" in mat.metadata:
                extra = f", {mat.metadata['rows_quarantined'].value:,} quarantined this run"
            progress(f"  {mat.asset_key.to_user_string():<28} {count.value if count else 0:>12,} rows{extra}")
        for evaluation in result.get_asset_check_evaluations():
            status = "passed" if evaluation.passed else "FAILED"
            progress(f"  check {evaluation.check_name:<36} {status}")
            if not evaluation.passed:
                failed_checks.append(evaluation.check_name)
        progress(f"  {group} done in {time.perf_counter() - started:.1f} s")
    return summarise(resources["warehouse"].path, failed_checks)


def summarise(warehouse_path: str, failed_checks: list[str]) -> dict:
    """The figures a user wants after a run, read back from the published warehouse."""
    import duckdb

    with duckdb.connect(warehouse_path, read_only=True) as con:
        nav = con.execute(
            "SELECT base_currency, count(*), sum(total_value) FROM portfolio_state GROUP BY 1 ORDER BY 1"
        ).fetchall()
        positions = con.execute("SELECT count(*) FROM positions WHERE position_type <> 'CASH'").fetchone()[0]
        quarantined = con.execute("SELECT count(*) FROM quarantine").fetchone()[0]
        by_stage = con.execute("SELECT stage, count(*) FROM quarantine GROUP BY 1 ORDER BY 1").fetchall()
    return {
        "portfolios": sum(n for _, n, _ in nav),
        "nav_by_currency": {ccy: total for ccy, _, total in nav},
        "positions": positions,
        "quarantined": quarantined,
        "quarantined_by_stage": dict(by_stage),
        "warehouse": str(Path(warehouse_path).resolve()),
        "failed_checks": failed_checks,
    }


def cmd_run(args: argparse.Namespace) -> int:
    data_dir = data_dir_from_env(args.data_dir)
    landing = data_dir / "landing"
    if _landing_is_empty(landing):
        _say(f"No landing files under {landing}: run `portfolio generate --data-dir {data_dir}` first.")
        return 1
    started = time.perf_counter()
    summary = run_pipeline(data_dir)
    _say("")
    _say(f"Portfolios        {summary['portfolios']:,}")
    _say(f"Positions         {summary['positions']:,} (excluding cash)")
    for ccy, total in summary["nav_by_currency"].items():
        _say(f"Total NAV ({ccy})   {total:,.2f}")
    stages = ", ".join(f"{k}: {v}" for k, v in summary["quarantined_by_stage"].items()) or "none"
    _say(f"Quarantined rows  {summary['quarantined']:,} ({stages}); see the `quarantine` table")
    if summary["failed_checks"]:
        _say(f"Failed checks     {', '.join(summary['failed_checks'])}")
    _say(f"Warehouse         {summary['warehouse']}")
    _say("                  query it: uv run portfolio sql \"FROM portfolio_state LIMIT 5\"  (or any DuckDB client, read-only)")
    _say("Dagster UI        make ui   (then open http://127.0.0.1:3000)")
    _say(f"Finished in {time.perf_counter() - started:.1f} s.")
    return 0


def cmd_state(args: argparse.Namespace) -> int:
    data_dir = data_dir_from_env(args.data_dir)
    with pl.Config(tbl_rows=args.rows, tbl_cols=12, tbl_width_chars=180, fmt_str_lengths=40, fmt_float="full", thousands_separator=","):
        if args.as_of:
            from assets.resources import resources_for
            from assets.state import read_book_inputs
            from transforms.book import build_book, to_utc

            moment = to_utc(datetime.fromisoformat(args.as_of.replace("Z", "+00:00")))
            book = build_book(read_book_inputs(resources_for(data_dir)["lake"]), moment, with_daily=False)
            state = book.portfolio_state.filter(pl.col("portfolio_id") == args.portfolio_id)
            positions = book.positions.filter(pl.col("portfolio_id") == args.portfolio_id)
        else:
            import duckdb

            path = data_dir / "warehouse.duckdb"
            if not path.exists():
                _say(f"No warehouse at {path}: run `portfolio run` first.")
                return 1
            with duckdb.connect(str(path), read_only=True) as con:
                state = con.sql("SELECT * FROM portfolio_state WHERE portfolio_id = ?", params=[args.portfolio_id]).pl()
                positions = con.sql("SELECT * FROM portfolio_positions(?)", params=[args.portfolio_id]).pl()
        if state.height == 0:
            _say(f"Unknown portfolio {args.portfolio_id!r}.")
            return 1
        row = state.row(0, named=True)
        _say(f"{row['portfolio_id']}  {row['portfolio_name']}  [{row['status']}]  as of {row['as_of']}")
        _say(f"  NAV {row['total_value']:,.2f} {row['base_currency']}   cash {row['cash_balance']:,.2f} "
             f"(settled {row['settled_cash']:,.2f}, pending {row['pending_cash']:,.2f})")
        _say(f"  long {row['long_market_value']:,.2f}  short {row['short_market_value']:,.2f}  "
             f"unrealised {row['unrealized_pnl']:,.2f}  realised {row['realized_pnl']:,.2f}")
        money = ("market_value", "cost_basis", "unrealized_pnl")
        _say(str(positions.select(
            "instrument_id", "position_type", "quantity", "price",
            *(pl.col(c).round(2) for c in money), pl.col("weight").round(4),
        ).sort(pl.col("market_value").abs(), descending=True)))
    return 0


def cmd_sql(args: argparse.Namespace) -> int:
    import duckdb

    path = data_dir_from_env(args.data_dir) / "warehouse.duckdb"
    if not path.exists():
        _say(f"No warehouse at {path}: run `portfolio run` first.")
        return 1
    with duckdb.connect(str(path), read_only=True) as con:
        try:
            result = con.sql(args.query)
        except duckdb.Error as error:
            _say(f"Query failed: {error}")
            return 1
        if result is None:  # a statement with no result set
            return 0
        with pl.Config(tbl_rows=args.rows, tbl_cols=-1, tbl_width_chars=200, fmt_str_lengths=60, fmt_float="full", thousands_separator=","):
            _say(str(result.limit(args.rows).pl()))
    return 0


def cmd_bench(args: argparse.Namespace) -> int:
    if args.suite == "intraday":
        from bench.intraday import main as intraday_main

        return intraday_main(data_dir_from_env(args.data_dir), output=args.output, daemon=not args.no_daemon,
                             run_up_to=args.run_up_to)
    if args.suite == "rebalance":
        from bench.rebalance import main as rebalance_main

        return rebalance_main(output=args.output)
    if args.suite == "analytics":
        from bench.analytics import main as analytics_main

        return analytics_main(standard=args.standard, output=args.output)
    from bench.foundation import main as bench_main

    return bench_main(data_dir=data_dir_from_env(args.data_dir), standard=args.standard, output=args.output)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="portfolio", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)

    def with_data_dir(p: argparse.ArgumentParser) -> argparse.ArgumentParser:
        p.add_argument("--data-dir", default=None, help="data folder (default $PORTFOLIO_DATA_DIR or data/)")
        return p

    g = with_data_dir(sub.add_parser("generate", help="write a deterministic sample book into landing/"))
    g.add_argument("--scale", choices=("tiny", "demo", "standard"), default="demo")
    g.add_argument("--seed", type=int, default=7)
    g.add_argument("--force", action="store_true", help="write even if landing/ already holds files")
    g.set_defaults(func=cmd_generate)

    r = with_data_dir(sub.add_parser("run", help="materialise every asset for the landing files"))
    r.set_defaults(func=cmd_run)

    s = with_data_dir(sub.add_parser("state", help="show one portfolio's state (now, or --as-of a moment)"))
    s.add_argument("portfolio_id")
    s.add_argument("--as-of", help="ISO timestamp (UTC if no offset), e.g. 2025-06-30T21:00:00Z")
    s.add_argument("--rows", type=int, default=25, help="positions to show")
    s.set_defaults(func=cmd_state)

    q = with_data_dir(sub.add_parser("sql", help="run a read-only SQL query on warehouse.duckdb"))
    q.add_argument("query", help='e.g. "SELECT * FROM portfolio_state ORDER BY total_value DESC"')
    q.add_argument("--rows", type=int, default=50, help="rows to show")
    q.set_defaults(func=cmd_sql)

    b = with_data_dir(sub.add_parser(
        "bench", help="benchmark the foundation (ledger, state, lookups), the analytics, the rebalance or the intraday path"))
    b.add_argument("suite", nargs="?", choices=("foundation", "analytics", "rebalance", "intraday"), default="foundation")
    b.add_argument("--standard", action="store_true", help="also the standard book (1,000 portfolios, 10M trades)")
    b.add_argument("--output", default=None, help="JSON results file (default bench/results/<suite>.json)")
    b.add_argument("--no-daemon", action="store_true", help="intraday: skip the part under dagster-daemon")
    b.add_argument("--run-up-to", type=int, default=None,
                   help="intraday: run the job only on files over at most this many portfolios (the others in memory only)")
    b.set_defaults(func=cmd_bench)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
