"""The foundation benchmark's own computations: our side of the pandas comparison, and a
whole (tiny) run of the rebuild figures."""

from __future__ import annotations

import polars as pl
import pytest
from polars.testing import assert_frame_equal

import bench.foundation as foundation
from bench.foundation import book_inputs_from, fifo_positions_by_shard
from transforms.book import BookInputs, book_moment
from transforms.cash import cash_ledger
from transforms.shards import portfolio_shards

SMALL_SHARD = 150  # trades per shard: the tiny book splits into several


@pytest.fixture(scope="module")
def inputs(tiny_book) -> BookInputs:
    return book_inputs_from(tiny_book)


def _shards(inputs: BookInputs, shard_trades: int) -> list[BookInputs]:
    return [inputs.for_portfolios(ids) for ids in portfolio_shards(inputs.trades, shard_trades)]


def _positions(inputs: BookInputs, shards: list[BookInputs]) -> pl.DataFrame:
    cash = [cash_ledger(s.trades, s.cash_flows, s.instruments) for s in shards]
    order = ["portfolio_id", "position_type", "instrument_id"]
    return fifo_positions_by_shard(shards, cash, inputs, book_moment(inputs)).sort(order)


def test_positions_by_shard_equal_the_whole_book_in_one_shard(inputs):
    shards = _shards(inputs, SMALL_SHARD)
    assert len(shards) > 2
    by_shard = _positions(inputs, shards)
    assert_frame_equal(by_shard, _positions(inputs, [inputs]), check_exact=False, rel_tol=1e-12, abs_tol=1e-9)
    # every portfolio's cash once: each shard holds its own portfolios' cash only
    cash = by_shard.filter(pl.col("position_type") == "CASH")
    assert not cash.select(pl.struct("portfolio_id", "instrument_id").is_duplicated().any()).item()
    assert set(cash["portfolio_id"]) == set(cash_ledger(inputs.trades, inputs.cash_flows, inputs.instruments)["portfolio_id"])


def test_shard_cash_must_match_the_shards(inputs):
    shards = _shards(inputs, SMALL_SHARD)
    with pytest.raises(ValueError):
        fifo_positions_by_shard(shards, [], inputs, book_moment(inputs))


def test_rebuild_figures_of_a_sharded_book(inputs, monkeypatch, capsys):
    monkeypatch.setattr(foundation, "LEDGER_SHARD_TRADES", SMALL_SHARD)
    figures = foundation.bench_rebuild(inputs, "tiny", pandas_baseline=True, repeat=2, warmup=1)
    assert figures["shards"] > 2 and figures["trades"] == inputs.trades.height
    assert len(figures["full_rebuild_runs_seconds"]) == 2 and len(figures["full_rebuild_warmup_seconds"]) == 1
    assert figures["full_rebuild_seconds"] == min(figures["full_rebuild_runs_seconds"])
    assert figures["full_rebuild_median_seconds"] >= figures["full_rebuild_seconds"]
    # the ratio means something only when both sides hold the same positions
    assert figures["pandas_quantity_mismatches"] == 0
    assert "full rebuild median" in capsys.readouterr().out
