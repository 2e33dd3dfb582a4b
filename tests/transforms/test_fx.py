"""FX lookups: forward fill, back fill before the first quote, USD implied, never-quoted
currencies null, and the same answers for eager and lazy frames and a prebuilt table."""

from datetime import date

import numpy as np
import polars as pl
import pytest

from transforms.fx import UsdTable, base_per_local_on, cross_rates, usd_per_unit_on

RATES = pl.DataFrame(
    {
        "date": [date(2025, 1, 2), date(2025, 1, 6), date(2025, 1, 2)],
        "currency": ["EUR", "EUR", "GBP"],
        "usd_per_unit": [1.10, 1.20, 1.25],
    }
)


def rows(dates, currencies):
    return pl.DataFrame({"d": dates, "c": currencies}, schema={"d": pl.Date, "c": pl.String})


def test_forward_fill_back_fill_usd_and_unknown():
    frame = rows(
        [date(2025, 1, 1), date(2025, 1, 2), date(2025, 1, 3), date(2025, 1, 6), date(2025, 2, 1), date(2025, 1, 3), date(2025, 1, 3), None],
        ["EUR", "EUR", "EUR", "EUR", "EUR", "USD", "JPY", "EUR"],
    )
    out = usd_per_unit_on(frame, RATES, date_col="d", currency_col="c")["usd_per_unit"].to_list()
    # back fill before the first quote, then forward fill; USD 1; JPY never quoted; null date
    assert out[:6] == [1.10, 1.10, 1.10, 1.20, 1.20, 1.0]
    assert out[6] is None and out[7] is None


def test_base_per_local_is_a_cross_rate_and_one_for_same_currency():
    frame = pl.DataFrame(
        {"d": [date(2025, 1, 6)] * 3, "local": ["EUR", "GBP", "EUR"], "base": ["GBP", "GBP", "USD"]}
    )
    out = base_per_local_on(frame, RATES, date_col="d", local_col="local", base_col="base")["fx_rate"].to_list()
    assert out == pytest.approx([1.20 / 1.25, 1.0, 1.20])


def test_eager_lazy_and_prebuilt_table_agree():
    frame = rows([date(2025, 1, d) for d in range(1, 9)] * 2, ["EUR"] * 8 + ["GBP"] * 8)
    eager = usd_per_unit_on(frame, RATES, date_col="d", currency_col="c")
    lazy = usd_per_unit_on(frame.lazy(), RATES, date_col="d", currency_col="c").collect()
    table = usd_per_unit_on(frame, UsdTable(RATES), date_col="d", currency_col="c")
    assert eager.equals(lazy) and eager.equals(table)
    assert eager.height == frame.height and eager.select("d", "c").equals(frame)  # row order kept


def test_many_rows_over_few_days_match_one_by_one():
    days = [date(2025, 1, 1 + i % 10) for i in range(500)]
    many = usd_per_unit_on(rows(days, ["EUR"] * 500), RATES, date_col="d", currency_col="c")["usd_per_unit"]
    single = [usd_per_unit_on(rows([d], ["EUR"]), RATES, date_col="d", currency_col="c")["usd_per_unit"][0] for d in days[:10]]
    assert many.head(10).to_list() == single


def test_until_answers_as_the_rates_filtered_to_that_day():
    frame = rows([date(2025, 1, 1), date(2025, 1, 3), date(2025, 1, 9)] * 3, ["EUR"] * 3 + ["GBP"] * 3 + ["USD"] * 3)
    full = UsdTable(RATES)
    for day in (date(2025, 1, 1), date(2025, 1, 2), date(2025, 1, 5), date(2025, 1, 6), date(2025, 2, 1)):
        cut = full.until(day).usd_per_unit(frame["d"], frame["c"])
        direct = UsdTable(RATES.filter(pl.col("date") <= day)).usd_per_unit(frame["d"], frame["c"])
        np.testing.assert_array_equal(cut, direct)


def test_cross_rates_per_row_equal_the_frame_conversion():
    """Codes outside the currency list (negative, too large) and a currency never quoted give
    NaN; the same currency gives 1.0 even when never quoted; otherwise local / base."""
    names = ["EUR", "GBP", "JPY", "USD"]  # JPY is never quoted
    rng = np.random.default_rng(5)
    n = 400
    local, base = rng.integers(-2, 6, n), rng.integers(-1, 5, n)
    day = rng.integers(0, 12, n) + int(pl.Series([date(2024, 12, 30)]).cast(pl.Int32)[0])
    got = cross_rates(UsdTable(RATES), names, local, base, day)

    def name(code):
        return names[code] if 0 <= code < len(names) else None

    frame = pl.DataFrame(
        {"d": pl.Series(day).cast(pl.Int32).cast(pl.Date), "local": [name(c) for c in local], "base": [name(c) for c in base]},
        schema_overrides={"local": pl.String, "base": pl.String},
    )
    expected = base_per_local_on(frame, RATES, date_col="d", local_col="local", base_col="base")["fx_rate"]
    np.testing.assert_array_equal(got, expected.fill_null(np.nan).to_numpy())
    assert np.isnan(cross_rates(UsdTable(RATES), names, local[:0], base[:0], day[:0])).size == 0
