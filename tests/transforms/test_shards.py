import polars as pl
import pytest
from hypothesis import given, strategies as st

from transforms.shards import portfolio_shards


def test_shards_pack_portfolios_in_id_order():
    trades = pl.DataFrame({"portfolio_id": ["P1"] * 3 + ["P2"] * 2 + ["P3"] * 6 + ["P4"]})
    shards = portfolio_shards(trades, max_rows=4)
    # rows before: P1 0, P2 3, P3 5, P4 11 -> shard 0, 0, 1, 2
    assert [s.to_list() for s in shards] == [["P1", "P2"], ["P3"], ["P4"]]


def test_no_rows_no_shards_and_bad_size():
    assert portfolio_shards(pl.DataFrame({"portfolio_id": []}, schema={"portfolio_id": pl.String}), 10) == []
    with pytest.raises(ValueError):
        portfolio_shards(pl.DataFrame({"portfolio_id": ["P1"]}), 0)


@given(st.lists(st.sampled_from([f"P{i}" for i in range(30)]), min_size=1, max_size=300), st.integers(1, 50))
def test_every_portfolio_in_exactly_one_shard(ids, max_rows):
    frame = pl.DataFrame({"portfolio_id": ids})
    shards = portfolio_shards(frame, max_rows)
    flat = [p for s in shards for p in s.to_list()]
    assert sorted(flat) == sorted(set(ids)) and len(flat) == len(set(ids))
    counts = dict(frame.group_by("portfolio_id").len().iter_rows())
    for s in shards:
        rows = sum(counts[p] for p in s.to_list())
        # a shard stops before the portfolio that starts at the next multiple of max_rows
        assert rows - counts[s[-1]] < max_rows
