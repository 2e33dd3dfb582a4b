"""The book's price table: which closes count, forward fill, later duplicate wins, truncation to
a day, rows and latest closes of instruments with and without closes."""

from datetime import date, datetime

import numpy as np
import polars as pl
import pytest

from transforms.prices import PriceTable, day_numbers, price_table

D1, D2, D3, D4 = date(2025, 1, 2), date(2025, 1, 3), date(2025, 1, 6), date(2025, 1, 7)

PRICES = pl.DataFrame(
    {
        "instrument_id": ["B", "A", "A", "B", "A", "C", "A", None, "B"],
        "date": [D1, D1, D2, D3, D3, D3, D4, D4, D4],
        "close": [20.0, 10.0, 11.0, 21.0, 12.0, float("nan"), None, 99.0, 22.0],
        "volume": [1] * 9,
    },
    schema_overrides={"close": pl.Float64},
)


def test_calendar_and_forward_fill():
    t = PriceTable(PRICES)
    # C's only close is NaN and the null-instrument row does not count; D4 is a day (B has one)
    assert t.instruments.to_list() == ["A", "B"]
    assert t.days.to_list() == [D1, D2, D3, D4]
    np.testing.assert_array_equal(t.close, [[10.0, 11.0, 12.0, 12.0], [20.0, 20.0, 21.0, 22.0]])
    np.testing.assert_array_equal(t.quoted, [[0, 1, 2, 2], [0, 0, 2, 3]])


def test_a_later_duplicate_row_wins():
    dup = pl.concat([PRICES, pl.DataFrame({"instrument_id": ["A"], "date": [D2], "close": [15.0], "volume": [1]})])
    assert PriceTable(dup).close[0, 1] == 15.0


def test_until_is_the_table_of_the_earlier_closes():
    t = PriceTable(PRICES)
    for day in (D1, D2, date(2025, 1, 5), D4, date(2030, 1, 1)):
        cut, direct = t.until(day), PriceTable(PRICES.filter(pl.col("date") <= day))
        assert cut.days.equals(direct.days)
        close, quoted = cut.rows(direct.instruments)
        np.testing.assert_array_equal(close, direct.close)
        np.testing.assert_array_equal(quoted, direct.quoted)
    before = t.until(date(2024, 12, 31))
    assert before.days.len() == 0 and before.calendar is None
    assert np.isnan(before.latest(pl.Series(["A"]), D4)[0]).all()


def test_rows_of_instruments_without_closes_are_empty():
    close, quoted = PriceTable(PRICES).rows(pl.Series(["B", "Z", "A"]))
    np.testing.assert_array_equal(close[0], [20.0, 20.0, 21.0, 22.0])
    assert np.isnan(close[1]).all() and (quoted[1] == -1).all()
    np.testing.assert_array_equal(quoted[2], [0, 1, 2, 2])


def _day(d: date) -> int:
    return (d - date(1970, 1, 1)).days


def test_latest_close_on_or_before_a_day():
    t = PriceTable(PRICES)
    close, quoted = t.latest(pl.Series(["A", "B", "Z", "A", None]), date(2025, 1, 5))
    np.testing.assert_array_equal(close, [11.0, 20.0, np.nan, 11.0, np.nan])
    assert quoted[[0, 1, 3]].tolist() == [_day(D2), _day(D1), _day(D2)]
    assert np.isnan(t.latest(pl.Series(["A"]), date(2024, 1, 1))[0]).all()


def test_empty_prices_and_a_prepared_table_is_reused():
    empty = PriceTable(PRICES.clear())
    assert empty.calendar is None and empty.close.shape == (0, 0) and empty.last_day is None
    assert np.isnan(empty.latest(pl.Series(["A"]), D1)[0]).all()
    t = PriceTable(PRICES)
    assert price_table(t) is t
    assert t.last_day == D4


@pytest.mark.parametrize("lazy", [False, True])
def test_lazy_and_eager_frames_agree(lazy):
    t = PriceTable(PRICES.lazy() if lazy else PRICES)
    np.testing.assert_array_equal(t.close, PriceTable(PRICES).close)


@pytest.mark.parametrize("unit", ["us", "ns", "ms"])
@pytest.mark.parametrize("zone", [None, "UTC", "America/New_York"])
def test_day_numbers_are_the_calendar_days_a_cast_gives(unit, zone):
    moments = pl.Series(
        [datetime(1969, 12, 31, 23, 59, 59, 999999), datetime(1970, 1, 1), datetime(2024, 2, 29, 23, 30), datetime(1900, 3, 1, 1)]
    ).cast(pl.Datetime(unit)).dt.replace_time_zone(zone)
    for series in (moments, moments.append(pl.Series([None], dtype=moments.dtype))):
        expected = series.cast(pl.Date).to_physical().cast(pl.Int64).to_numpy()
        np.testing.assert_array_equal(day_numbers(series), expected)
    dates = pl.Series([date(1969, 12, 31), date(2024, 1, 2)])
    assert day_numbers(dates).tolist() == [-1, 19724]


@pytest.mark.parametrize("years_apart", [0, 60])
def test_business_days_are_the_distinct_close_dates_dense_or_sparse(years_apart):
    # dense: the days of the range are marked; sparse (decades between closes): sorted instead
    dates = [date(1964 + 60 - years_apart, 5, 4), date(2024, 1, 3), date(2024, 1, 2), date(2024, 1, 3), date(2024, 1, 5)]
    prices = pl.DataFrame(
        {"instrument_id": ["A", "A", "B", "B", "A"], "date": dates, "close": [1.0, 2.0, 3.0, 4.0, 5.0]}
    )
    table = PriceTable(prices)
    assert table.days.to_list() == sorted(set(dates))
    assert table.days.dtype == pl.Date
