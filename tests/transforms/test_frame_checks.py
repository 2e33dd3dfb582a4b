"""Input checks (transforms.frame_checks): the sorted fast path of the uniqueness check agrees
with the general one, and every check names the frame and the problem."""

from datetime import date

import polars as pl
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from transforms.frame_checks import collected_with, require_finite, require_no_nulls, require_unique, strictly_increasing

KEY = ["portfolio_id", "date", "instrument_id"]


def _frame(rows):
    return pl.DataFrame(rows, schema={"portfolio_id": pl.String, "date": pl.Date, "instrument_id": pl.String}, orient="row")


@settings(max_examples=200, deadline=None)
@given(st.lists(st.tuples(st.sampled_from(["P1", "P2", "P10"]), st.dates(date(2026, 1, 1), date(2026, 1, 4)),
                          st.sampled_from(["A", "B", "CASH", "b"])), max_size=12))
def test_strictly_increasing_is_sorted_and_unique(rows):
    frame = _frame(rows)
    expected = frame.height < 2 or (frame.equals(frame.sort(KEY)) and not frame.is_duplicated().any())
    assert strictly_increasing(frame, KEY) == expected
    # the general check and the fast path agree on whether a key repeats
    if frame.is_duplicated().any():
        with pytest.raises(ValueError, match="duplicate key"):
            require_unique(frame, KEY, "holdings")
    else:
        require_unique(frame, KEY, "holdings")


def test_a_null_key_is_not_taken_as_increasing():
    frame = _frame([("P1", date(2026, 1, 1), "A"), ("P1", date(2026, 1, 1), None)])
    assert not strictly_increasing(frame, KEY)
    require_unique(frame, KEY, "holdings")  # one null is not a duplicate


def test_messages_name_the_frame_and_the_problem():
    frame = pl.DataFrame({"k": ["a", "a", None], "x": [1.0, float("nan"), 2.0]})
    with pytest.raises(ValueError, match="targets is missing column"):
        collected_with(frame.lazy(), ["k", "weight"], "targets")
    with pytest.raises(ValueError, match="targets has 1 row"):
        require_no_nulls(frame, ["k"], "targets")
    with pytest.raises(ValueError, match=r"targets has duplicate key \(k\): \('a',\)"):
        require_unique(frame, ["k"], "targets")
    with pytest.raises(ValueError, match="1 non-finite x"):
        require_finite(frame, ["x"], "targets")
