"""The intraday benchmark's file and its apply step, on the tiny book (the figures themselves
come from `portfolio bench intraday` on the standard book)."""

from __future__ import annotations

import json
import shutil

import polars as pl

from assets.resources import resources_for
from assets.state import current_moment, read_silver
from bench.intraday import bench_trades, main
from test_pipeline import materialize_all


def test_the_bench_file_buys_and_sells_held_instruments_within_the_day(tmp_path, tiny_landing):
    shutil.copytree(tiny_landing, tmp_path / "landing")
    materialize_all(tmp_path)
    lake = resources_for(tmp_path)["lake"]
    moment, positions = current_moment(lake), read_silver(lake, "positions")
    trades = bench_trades(positions, moment, 2, 500, seed=3, tag="t")
    assert trades.height == 500 and trades["trade_id"].n_unique() == 500
    assert trades["portfolio_id"].n_unique() == 2
    held = positions.filter(pl.col("position_type") == "LONG").select("portfolio_id", "instrument_id", "quantity")
    joined = trades.join(held, on=["portfolio_id", "instrument_id"], how="left")
    assert joined["quantity_right"].null_count() == 0  # only held instruments
    sold = joined.filter(pl.col("side") == "SELL").group_by("portfolio_id", "instrument_id").agg(
        pl.col("quantity").sum(), pl.col("quantity_right").first())
    assert (sold["quantity"] <= sold["quantity_right"]).all()  # never an oversell
    ts = trades["trade_ts"].str.to_datetime(time_zone="UTC")
    assert (ts <= moment).all() and (ts.dt.date() == moment.date()).all()  # within the day the state describes

    out = tmp_path / "intraday.json"
    assert main(tmp_path, output=str(out), trades=300, daemon=False, spreads=(1, 2)) == 0
    figures = json.loads(out.read_text())
    for spread in ("1", "2"):
        apply = figures["apply"][spread]
        assert apply["success"] and apply["portfolios"] == int(spread) and apply["rebuild_s"] > 0
        assert apply["trades_replayed"] > apply["trades"] == 300
        carried = apply["carried"]  # every touched portfolio carried forward or replayed, both timed
        assert carried["portfolios"] == int(spread) and 0 <= carried["replayed"] <= int(spread)
        assert carried["carry_s"] > 0 and carried["replay_s"] >= 0
        assert apply["compute_s"] == carried["compute_s"]
        assert abs(carried["compute_s"] - carried["carry_s"] - carried["replay_s"]) < 2e-4
        # the file's trades are on the state's date: its valuation row is recomputed, none rebuilt
        assert carried["valuation_rows_recomputed"] == int(spread) - carried["replayed"]
        assert carried["valuations_rebuilt"] == 0
    assert set(figures["goals"]) == {"apply_compute_under_0.5_s"}
    # the files were applied: the book now holds their trades
    trades_now = read_silver(lake, "trades", ["trade_id"])
    assert trades_now.filter(pl.col("trade_id").str.starts_with("B")).height == 600
