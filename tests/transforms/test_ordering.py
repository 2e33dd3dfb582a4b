"""Row orders on packed integer keys: the same order as a plain sort, ties broken by strings."""

import numpy as np
import polars as pl
import pytest

from transforms.ordering import order_by_key_then, time_offsets


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_order_by_key_then_is_the_sort_by_key_then_string(seed):
    rng = np.random.default_rng(seed)
    n = 2_000
    key = rng.integers(0, 300, n)  # many ties
    names = [None if k % 97 == 0 else f"id{k % 41:02d}-{k % 7}" for k in rng.integers(0, 10_000, n)]
    tie = pl.Series(names, dtype=pl.String)
    expected = pl.DataFrame({"k": key, "t": tie}).with_row_index().sort("k", "t", nulls_last=False)
    got = order_by_key_then(key, tie)
    frame = pl.DataFrame({"k": key, "t": tie})
    assert frame[got].equals(expected.drop("index"))
    # with ``rows``: the key of position k reads its string at rows[k]
    rows = rng.permutation(n)
    got_rows = order_by_key_then(key, tie.gather(np.argsort(rows)), rows)
    assert frame[got_rows].equals(expected.drop("index"))


def test_time_offsets_use_the_coarsest_whole_unit_and_keep_order_and_ties():
    seconds = np.array([5_000_000, 3_000_000, 3_000_000, 9_000_000])
    assert time_offsets(seconds).tolist() == [2, 0, 0, 6]
    millis = seconds + np.array([0, 1_000, 0, 0])
    assert time_offsets(millis).tolist() == [2_000, 1, 0, 6_000]
    micros = np.array([-7, 10, 3])  # before 1970 too
    assert time_offsets(micros).tolist() == [0, 17, 10]
    rng = np.random.default_rng(4)
    us = rng.integers(0, 10**15, 500) // 1_000 * 1_000
    out = time_offsets(us)
    assert np.array_equal(np.argsort(out, kind="stable"), np.argsort(us, kind="stable"))
    assert np.array_equal(out[:, None] == out[None, :], us[:, None] == us[None, :])


@pytest.mark.parametrize("wide", [False, True])
def test_order_by_key_then_checks_ties_already_in_order_and_repairs_one_that_is_not(wide):
    # ids given in time order: the tied runs come in tie-break order and are only checked
    rng = np.random.default_rng(5)
    n = 3_000
    key = rng.integers(0, 200, n) + ((1 << 62) - 400 if wide else 0)  # wide: no room for row numbers
    base = pl.Series([f"T{k:05d}" for k in range(n)])
    frame = pl.DataFrame({"k": key, "t": base})
    expected = frame.sort("k", "t")
    assert frame[order_by_key_then(key, base)].equals(expected)
    # one pair swapped inside a tied run, and a null among them: the run is re-sorted
    key[11] = key[10]
    swapped = base.scatter([10, 11], [base[11], base[10]]).scatter([20], [None])
    frame = pl.DataFrame({"k": key, "t": swapped})
    assert frame[order_by_key_then(key, swapped)].equals(frame.sort("k", "t", nulls_last=False))


def test_ordered_sum_adds_a_groups_values_in_row_order():
    """Sums per group agree with Python's row-order sums (to 1e-12: the list sum may pair its
    additions differently) and repeated runs give the same bits; nulls add nothing and an
    empty selection is 0.0, not -0.0."""
    import math

    import numpy as np

    from transforms.ordering import ordered_sum

    rng = np.random.default_rng(3)
    keys = rng.integers(0, 40, 20_000)
    values = rng.normal(0, 1e6, 20_000)
    frame = pl.DataFrame({"k": keys, "v": values})
    expected = {k: 0.0 for k in range(40)}
    for k, v in zip(keys.tolist(), values.tolist()):
        expected[k] += v

    def run() -> pl.DataFrame:
        return frame.group_by("k").agg(ordered_sum(pl.col("v")).alias("s")).sort("k")

    first = run()
    assert all(run().equals(first) for _ in range(20))
    for k, s in first.iter_rows():
        assert math.isclose(s, expected[k], rel_tol=1e-12, abs_tol=1e-6)

    odd = pl.DataFrame({"k": [1, 1, 2], "v": [None, 2.5, None]}, schema={"k": pl.Int64, "v": pl.Float64})
    out = odd.group_by("k").agg(
        ordered_sum(pl.col("v")).alias("s"), ordered_sum(pl.col("v").filter(pl.col("v") > 10)).alias("none")
    ).sort("k")
    assert out["s"].to_list() == [2.5, 0.0]
    assert [math.copysign(1.0, x) for x in out["none"].to_list()] == [1.0, 1.0]
