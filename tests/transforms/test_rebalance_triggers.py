"""Rebalance triggers and decisions (transforms.rebalance_triggers): each trigger on a case worked
by hand, the volatility ratio against numpy's std on the same windows, the correlation distance
against a direct loop over pairs with numpy's corrcoef, the calendar rules on a small calendar
with a month end and a holiday, the status rules of the decisions, bad inputs and row order."""

from __future__ import annotations

import math
from datetime import date, datetime, timedelta, timezone

import numpy as np
import polars as pl
import pytest
from polars.testing import assert_frame_equal

import transforms  # noqa: F401 (engine affinity)
from transforms.contract import DRIFT_SUMMARY_SCHEMA, TS
from transforms.rebalance_triggers import (
    DECISIONS_SCHEMA,
    DEFAULT_POLICY,
    LIQUIDATING_REASON,
    NO_TRIGGER,
    PRIORITIES,
    TRIGGER_KINDS,
    TRIGGERS_SCHEMA,
    TriggerPolicy,
    all_triggers,
    calendar_due,
    calendar_triggers,
    cash_flow_triggers,
    correlation_triggers,
    drift_triggers,
    held_returns_matrix,
    manual_triggers,
    parse_policies,
    policy_for,
    rebalance_decisions,
    risk_budget_triggers,
    volatility_triggers,
)

NOW = datetime(2025, 1, 31, 21, 0, tzinfo=timezone.utc)


def _shuffled(frame: pl.DataFrame, seed: int = 7) -> pl.DataFrame:
    return frame.sample(fraction=1.0, shuffle=True, seed=seed)


def _check(out: pl.DataFrame, kind: str | None = None) -> None:
    """Every trigger frame: the schema, `now`, the kind's priority, finite numbers, the order."""
    assert out.schema == pl.Schema(TRIGGERS_SCHEMA)
    assert (out["triggered_at"] == NOW).all()
    if kind is not None:
        assert set(out["kind"]) <= {kind}
        assert (out["priority"] == PRIORITIES[kind]).all()
    assert not out.select(pl.col("value", "threshold").is_infinite().any() | pl.col("value", "threshold").is_nan().any()).to_numpy().any()
    assert_frame_equal(out, out.sort("portfolio_id", "priority", "kind", "note"))


# --- policies ---------------------------------------------------------------------------------


def test_policies_take_the_default_then_override_key_by_key():
    policies = parse_policies(
        {
            "default": {"calendar": "weekly", "vol_ratio": 2, "tracking_error_budget": 0.04},
            "portfolios": {"P1": {"calendar": "monthly", "var_budget": 0.02}, "P2": {"calendar": None}, "P3": None},
        }
    )
    assert set(policies) == {DEFAULT_POLICY, "P1", "P2", "P3"}
    assert policies["P1"] == TriggerPolicy(calendar="monthly", vol_ratio=2.0, tracking_error_budget=0.04, var_budget=0.02)
    assert isinstance(policies["P1"].vol_ratio, float)  # a YAML integer is taken as a float
    assert policies["P2"].calendar is None and policies["P2"].vol_ratio == 2.0
    assert policy_for(policies, "P3") == policies[DEFAULT_POLICY]
    assert policy_for(policies, "unlisted") == policies[DEFAULT_POLICY]
    assert policy_for({}, "P1") == TriggerPolicy()
    assert parse_policies(None) == {DEFAULT_POLICY: TriggerPolicy()}
    assert TriggerPolicy() == TriggerPolicy(
        calendar=None, vol_short_window=21, vol_long_window=252, vol_ratio=1.5, corr_short_window=63,
        corr_long_window=252, corr_threshold=0.25, tracking_error_budget=None, var_budget=None, cash_flow_threshold=0.05,
    )


@pytest.mark.parametrize(
    "spec, message",
    [
        ({"defaults": {}}, "unknown top-level key(s) defaults"),
        ({"default": {"calender": "daily"}}, "default has unknown key(s) calender"),
        ({"portfolios": {"P1": {"vol_window": 5, "cash_threshold": 0.1}}}, "portfolios.P1 has unknown key(s) cash_threshold, vol_window"),
        ({"default": {"calendar": "hourly"}}, "calendar must be one of daily, weekly, monthly"),
        ({"portfolios": {"P1": {"calendar": "quarterly"}}}, "portfolios.P1: calendar must be one of"),
        ({"default": {"vol_short_window": 300}}, "vol_short_window and vol_long_window must satisfy"),
        ({"default": {"corr_short_window": 1}}, "corr_short_window and corr_long_window must satisfy"),
        ({"default": {"vol_long_window": 252.0}}, "vol_long_window must be an integer"),
        ({"default": {"vol_ratio": 0}}, "vol_ratio must be > 0"),
        ({"default": {"var_budget": -0.01}}, "var_budget must be > 0"),
        ({"default": {"cash_flow_threshold": "5%"}}, "cash_flow_threshold must be a finite number"),
        ({"portfolios": {101: {}}}, "portfolio id 101 is not a string"),
        ({"portfolios": {"default": {}}}, "may not be named 'default'"),
        (["default"], "must be a mapping"),
    ],
)
def test_bad_policy_specs_are_named(spec, message):
    with pytest.raises(ValueError, match=message.replace("(", r"\(").replace(")", r"\)")):
        parse_policies(spec)


# --- drift ------------------------------------------------------------------------------------


def _summary(rows) -> pl.DataFrame:
    """(date, portfolio, drift, band, breach, instruments breaching) -> DRIFT_SUMMARY rows."""
    frame = pl.DataFrame(
        rows, schema=["date", "portfolio_id", "drift", "portfolio_band", "breach", "instruments_breaching"], orient="row"
    )
    return frame.with_columns(
        pl.lit(1e6).alias("nav"), pl.lit(0).alias("sectors_breaching"), pl.lit(None).alias("max_abs_drift"), pl.lit(None).alias("note")
    ).select([pl.col(c).cast(t) for c, t in DRIFT_SUMMARY_SCHEMA.items()])


def test_drift_triggers_on_the_latest_date_only():
    d1, d2 = date(2025, 1, 30), date(2025, 1, 31)
    summary = _summary(
        [
            (d1, "A", 0.09, 0.05, True, 3),  # breached yesterday, fine today: no trigger
            (d2, "A", 0.01, 0.05, False, 0),
            (d2, "B", 0.072, 0.05, True, 2),  # 0.072 > 0.05: the portfolio band is breached
            (d2, "C", 0.031, 0.05, False, 1),  # within the band, but one instrument breaches
            (d1, "D", 0.02, 0.05, False, 0),
            (d2, "D", 0.06, 0.04, True, 0),  # a per-portfolio band of 4%
            (d2, "E", None, None, None, None),  # not measured (e.g. CLOSED): no trigger
        ]
    )
    out = drift_triggers(summary, NOW)
    _check(out, "drift")
    assert out["portfolio_id"].to_list() == ["B", "C", "D"]
    assert out["value"].to_list() == [0.072, 0.031, 0.06]
    assert out["threshold"].to_list() == [0.05, 0.05, 0.04]
    assert out["note"].to_list() == [
        "drift 7.2% above band 5.0%; 2 instrument(s) breaching their bands",
        "drift 3.1% within band 5.0%; 1 instrument(s) breaching their bands",
        "drift 6.0% above band 4.0%",
    ]
    assert_frame_equal(drift_triggers(_shuffled(summary), NOW), out)


def test_drift_triggers_reject_a_duplicate_day_and_missing_columns():
    d = date(2025, 1, 31)
    with pytest.raises(ValueError, match="duplicate key"):
        drift_triggers(_summary([(d, "A", 0.1, 0.05, True, 0), (d, "A", 0.1, 0.05, True, 0)]), NOW)
    with pytest.raises(ValueError, match="missing column.*breach"):
        drift_triggers(_summary([(d, "A", 0.1, 0.05, True, 0)]).drop("breach"), NOW)


# --- calendar ---------------------------------------------------------------------------------

# Mon 27 .. Thu 30 January 2025; Friday 31 January (the month end) is a holiday; Mon 3 .. Fri 7
# February; Mon 10 February is the calendar's last day.
CAL = pl.Series(
    "date",
    [date(2025, 1, d) for d in (27, 28, 29, 30)] + [date(2025, 2, d) for d in (3, 4, 5, 6, 7, 10)],
    dtype=pl.Date,
)


@pytest.mark.parametrize(
    "today, daily, weekly, monthly",
    [
        (date(2025, 1, 29), True, False, False),  # Wednesday: Thursday follows in week and month
        (date(2025, 1, 30), True, True, True),  # Friday the 31st is a holiday: Thursday ends both
        (date(2025, 1, 31), False, False, False),  # the holiday itself
        (date(2025, 2, 1), False, False, False),  # Saturday
        (date(2025, 2, 6), True, False, False),  # Friday the 7th follows
        (date(2025, 2, 7), True, True, False),  # ends ISO week 6; February goes on (the 10th)
        (date(2025, 2, 10), True, False, False),  # the calendar's last day: Tue-Fri assumed open
        (date(2025, 2, 14), True, True, False),  # past the calendar: a Friday, Mon-Fri rule
        (date(2025, 2, 15), False, False, False),  # past the calendar: a Saturday
        (date(2025, 2, 28), True, True, True),  # past the calendar: the month's last weekday
        (date(2025, 2, 27), True, False, False),
    ],
)
def test_calendar_rules(today, daily, weekly, monthly):
    assert calendar_due("daily", CAL, today) is daily
    assert calendar_due("weekly", CAL, today) is weekly
    assert calendar_due("monthly", CAL, today) is monthly
    assert calendar_due(None, CAL, today) is False
    # the calendar's order does not matter
    assert calendar_due("weekly", CAL.shuffle(seed=3), today) is weekly


def test_calendar_triggers_follow_each_portfolio_policy():
    policies = parse_policies(
        {
            "default": {"calendar": "weekly"},
            "portfolios": {"M": {"calendar": "monthly"}, "D": {"calendar": "daily"}, "N": {"calendar": None}},
        }
    )
    ids = ["W", "M", "D", "N"]
    out = calendar_triggers(ids, policies, CAL, date(2025, 2, 7), NOW)  # Friday of week 6
    _check(out, "calendar")
    assert out["portfolio_id"].to_list() == ["D", "W"]
    assert out["value"].null_count() == 2 and out["threshold"].null_count() == 2
    assert out["note"].to_list() == [
        "daily rebalance: 2025-02-07 is a business day",
        "weekly rebalance: 2025-02-07 is the last business day of its ISO week",
    ]
    month_end = calendar_triggers(ids[::-1], policies, CAL, date(2025, 1, 30), NOW)
    assert month_end["portfolio_id"].to_list() == ["D", "M", "W"]
    assert calendar_triggers(ids, policies, CAL, date(2025, 1, 31), NOW).height == 0
    with pytest.raises(ValueError, match="before the calendar's first day"):
        calendar_triggers(ids, policies, CAL, date(2025, 1, 24), NOW)
    with pytest.raises(ValueError, match="calendar must be one of"):
        calendar_due("fortnightly", CAL, date(2025, 1, 30))
    with pytest.raises(ValueError, match="dtype Date"):
        calendar_triggers(ids, policies, CAL.cast(pl.String), date(2025, 1, 30), NOW)


# --- manual -----------------------------------------------------------------------------------


def test_manual_triggers_one_row_per_requested_portfolio():
    out = manual_triggers(["P2", "P1", "P2"], ["P1", "P2", "P3"], datetime(2025, 1, 31, 21))  # naive: UTC
    _check(out, "manual")
    assert out["portfolio_id"].to_list() == ["P1", "P2"]
    assert out["note"].to_list() == ["manual rebalance requested"] * 2
    assert manual_triggers([], ["P1"], NOW).height == 0
    with pytest.raises(ValueError, match="unknown portfolio\\(s\\): P8, P9"):
        manual_triggers(["P9", "P1", "P8"], ["P1", "P2"], NOW)


# --- volatility -------------------------------------------------------------------------------


def _returns(series: dict[str, list[float | None]]) -> pl.DataFrame:
    start = date(2024, 1, 1)
    return pl.DataFrame(
        [(p, start + timedelta(days=i), r) for p, rs in series.items() for i, r in enumerate(rs)],
        schema={"portfolio_id": pl.String, "date": pl.Date, "daily_return": pl.Float64},
        orient="row",
    )


def test_volatility_ratio_by_hand():
    # windows 2 and 4. Long: [0, 0, 0.03, -0.03], mean 0, sum of squares 0.0018, var 0.0018/3
    # = 0.0006. Short: [0.03, -0.03], var 0.0018/1. Ratio sqrt(0.0018 / 0.0006) = sqrt(3)
    # = 1.7320508 > 1.5. B: the same with a null inside (left out, so the same windows).
    # C: three returns only, fewer than the long window of 4: not measured.
    # D inherits the default's windows and sets its own ratio
    policies = parse_policies({"default": {"vol_short_window": 2, "vol_long_window": 4}, "portfolios": {"D": {"vol_ratio": 1.8}}})
    frame = _returns(
        {
            "A": [0.5, 0.0, 0.0, 0.03, -0.03],
            "B": [0.0, 0.0, None, 0.03, -0.03],
            "C": [0.0, 0.03, -0.03],
            "D": [0.0, 0.0, 0.03, -0.03],  # sqrt(3) < 1.8: no trigger
        }
    )
    out = volatility_triggers(frame, policies, NOW)
    _check(out, "volatility_regime")
    assert out["portfolio_id"].to_list() == ["A", "B"]
    assert out["value"].to_list() == pytest.approx([math.sqrt(3.0)] * 2, rel=1e-12)
    assert out["threshold"].to_list() == [1.5, 1.5]
    # annualised: sqrt(0.0018) * sqrt(252) = 67.3%; sqrt(0.0006) * sqrt(252) = 38.9%
    assert out["note"][0] == "2-day volatility 67.3% is 1.73x the 4-day 38.9% (limit 1.50x)"
    assert_frame_equal(volatility_triggers(_shuffled(frame), policies, NOW), out)


def test_volatility_ratio_matches_numpy_std_on_the_same_windows():
    rng = np.random.default_rng(11)
    policies = parse_policies(
        {
            "default": {"vol_short_window": 5, "vol_long_window": 30, "vol_ratio": 1e-9},
            "portfolios": {"Q": {"vol_short_window": 10, "vol_long_window": 40}},
        }
    )
    series: dict[str, list[float | None]] = {}
    for pid, n in (("P", 60), ("Q", 45), ("R", 31), ("S", 29)):
        r = rng.normal(0.0, 0.01, n)
        r[-10:] *= 3.0  # a calmer past and a rougher present
        values: list[float | None] = list(r)
        values[n // 2] = None  # a day without a return
        series[pid] = values
    frame = _returns(series)
    out = volatility_triggers(frame, policies, NOW)
    expected = {}
    for pid, values in series.items():
        r = np.array([v for v in values if v is not None])
        p = policy_for(policies, pid)
        if r.size >= p.vol_long_window:
            expected[pid] = np.std(r[-p.vol_short_window :], ddof=1) / np.std(r[-p.vol_long_window :], ddof=1)
    assert sorted(expected) == ["P", "Q", "R"]  # S has 28 returns, fewer than 30
    assert out["portfolio_id"].to_list() == sorted(expected)
    assert out["value"].to_list() == pytest.approx([expected[k] for k in sorted(expected)], rel=1e-12)
    # each portfolio on its own gives the same figure
    alone = volatility_triggers(frame.filter(pl.col("portfolio_id") == "Q"), policies, NOW)
    assert_frame_equal(alone, out.filter(pl.col("portfolio_id") == "Q"))
    assert_frame_equal(volatility_triggers(_shuffled(frame, 3), policies, NOW), out)


def test_volatility_bad_inputs():
    frame = _returns({"A": [0.01, 0.02]})
    with pytest.raises(ValueError, match="duplicate key"):
        volatility_triggers(pl.concat([frame, frame]), None, NOW)
    with pytest.raises(ValueError, match="non-finite daily_return"):
        volatility_triggers(frame.with_columns(pl.lit(float("nan")).alias("daily_return")), None, NOW)
    with pytest.raises(ValueError, match="missing column"):
        volatility_triggers(frame.drop("date"), None, NOW)
    with pytest.raises(ValueError, match="not a TriggerPolicy"):
        volatility_triggers(frame, {"A": {"vol_ratio": 2}}, NOW)


# --- correlation ------------------------------------------------------------------------------


def test_correlation_change_by_hand():
    # windows 3 and 5. x = [0, 0, 1, 0, -1], y = [1, -1, 1, 0, -1]. Long: means 0, Sxy = 2,
    # Sxx = 2, Syy = 4: corr 2 / sqrt(8) = 1/sqrt(2). Short (last 3): x = y = [1, 0, -1]: corr 1.
    # Two instruments: D = |1 - 1/sqrt(2)| = 0.2928932 whatever the weights (> 0.25, < 0.3).
    x = np.array([[0.0, 1.0, 5.0], [0.0, -1.0, 5.0], [1.0, 1.0, 5.0], [0.0, 0.0, 5.0], [-1.0, -1.0, 5.0]])
    ids = ["X", "Y", "FLAT"]  # FLAT does not move: no correlation, left out
    weights = pl.DataFrame(
        {
            "portfolio_id": ["A", "A", "A", "A", "B", "B", "C", "C"],
            "instrument_id": ["X", "Y", "FLAT", "CASH:USD", "X", "Y", "X", "FLAT"],
            "weight": [0.7, -0.2, 0.05, 0.05, 0.5, 0.5, 0.9, 0.1],
        }
    )
    policies = parse_policies({"default": {"corr_short_window": 3, "corr_long_window": 5}, "portfolios": {"B": {"corr_threshold": 0.3}}})
    out = correlation_triggers(weights, x, ids, policies, NOW)
    _check(out, "correlation_change")
    assert out["portfolio_id"].to_list() == ["A"]  # B: 0.293 < 0.3; C: one instrument with data
    assert out["value"][0] == pytest.approx(1.0 - 1.0 / math.sqrt(2.0), rel=1e-12)
    assert out["note"][0] == "correlations moved by 0.293 (weighted RMS, 3-day vs 5-day, 2 instruments) above 0.250"
    # a gap in the long window leaves the instrument out: A has one instrument left, no row
    gap = x.copy()
    gap[1, 1] = np.nan
    assert correlation_triggers(weights, gap, ids, policies, NOW).height == 0
    # a gap before the long window does not matter
    longer = np.vstack([np.full((1, 3), np.nan), x])
    assert_frame_equal(correlation_triggers(weights, longer, ids, policies, NOW), out)
    # fewer rows than the long window: nothing measured
    assert correlation_triggers(weights, x[1:], ids, policies, NOW).height == 0


def test_the_held_returns_matrix_equals_the_held_columns_of_every_instrument_pivoted():
    # Z is held by nobody and alone has a return on the 6th: that date stays a row (a gap for
    # X and Y), so the windows end on the same rows as in the whole pivot
    days = [date(2026, 1, d) for d in range(1, 7)]
    returns = pl.DataFrame({
        "instrument_id": ["X"] * 5 + ["Y"] * 5 + ["Z"] * 6,
        "date": days[:5] + days[:5] + days,
        "daily_return": [0.0, 0.0, 1.0, 0.0, -1.0, 1.0, -1.0, 1.0, 0.0, -1.0, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6],
    })
    weights = pl.DataFrame({"portfolio_id": ["A", "A", "A"], "instrument_id": ["Y", "X", "CASH:USD"], "weight": [0.5, 0.4, 0.1]})
    matrix, ids = held_returns_matrix(returns, weights)
    whole = returns.pivot(on="instrument_id", index="date", values="daily_return").sort("date")
    assert sorted(ids) == ["X", "Y"] and matrix.shape == (6, 2)
    np.testing.assert_array_equal(matrix, whole.select(ids).to_numpy().astype(float))
    assert np.isnan(matrix[-1]).all()
    policies = parse_policies({"default": {"corr_short_window": 3, "corr_long_window": 5}})
    all_ids = [c for c in whole.columns if c != "date"]
    assert_frame_equal(correlation_triggers(weights, matrix, ids, policies, NOW),
                       correlation_triggers(weights, whole.select(all_ids).to_numpy().astype(float), all_ids, policies, NOW))
    # nobody holds an instrument with returns: no column, every date a row
    matrix, ids = held_returns_matrix(returns, weights.filter(pl.col("instrument_id") == "CASH:USD"))
    assert ids == [] and matrix.shape == (6, 0)


def _distance_by_pairs(x: np.ndarray, ids: list[str], holdings: dict[str, float], short: int, long: int) -> float | None:
    """The definition, pair by pair, with numpy's corrcoef of each pair's two columns."""
    col = {k: i for i, k in enumerate(ids)}
    names = [k for k, w in holdings.items() if w != 0 and k in col]
    names = [k for k in names if np.isfinite(x[-long:, col[k]]).all() and np.std(x[-short:, col[k]]) > 0]
    if len(names) < 2:
        return None
    num = den = 0.0
    for a in names:
        for b in names:
            if a == b:
                continue
            ww = abs(holdings[a]) * abs(holdings[b])
            cs = np.corrcoef(x[-short:, col[a]], x[-short:, col[b]])[0, 1]
            cl = np.corrcoef(x[-long:, col[a]], x[-long:, col[b]])[0, 1]
            num += ww * (cs - cl) ** 2
            den += ww
    return math.sqrt(num / den)


def test_correlation_distance_matches_a_loop_over_pairs():
    rng = np.random.default_rng(5)
    t, n = 90, 9
    x = rng.normal(0.0, 0.01, (t, n))
    x[-20:, 1] = 0.8 * x[-20:, 0] + 0.2 * x[-20:, 1]  # a pair that moves together lately
    x[-7, 3] = np.nan  # a gap inside every long window: instrument 3 is left out
    x[2, 4] = np.nan  # a gap before every long window: instrument 4 counts
    ids = [f"I{i}" for i in range(n)]
    rows = [
        ("P1", {"I0": 0.3, "I1": 0.3, "I2": -0.2, "I3": 0.1, "I4": 0.1, "CASH:USD": 0.0}),
        ("P2", {"I0": 0.5, "I1": 0.5}),
        ("P3", {"I2": 0.25, "I4": 0.25, "I5": 0.2, "I6": 0.2, "I7": 0.1, "UNKNOWN": 0.1}),
        ("P4", {"I8": 1.0, "I3": 0.0}),  # one instrument with data: no row
        ("P5", {"I1": 0.4, "I5": 0.3, "I6": 0.0, "I8": 0.3}),  # a zero weight is not held
    ]
    weights = pl.DataFrame(
        [(p, k, w) for p, holdings in rows for k, w in holdings.items()],
        schema={"portfolio_id": pl.String, "instrument_id": pl.String, "weight": pl.Float64},
        orient="row",
    )
    policies = parse_policies(
        {
            "default": {"corr_short_window": 15, "corr_long_window": 60, "corr_threshold": 0.0},
            "portfolios": {"P5": {"corr_short_window": 20, "corr_long_window": 80}},  # its own matrices
        }
    )
    out = correlation_triggers(weights, x, ids, policies, NOW)
    expected = {}
    for pid, holdings in rows:
        p = policy_for(policies, pid)
        d = _distance_by_pairs(x, ids, holdings, p.corr_short_window, p.corr_long_window)
        if d is not None:
            expected[pid] = d
    assert sorted(expected) == ["P1", "P2", "P3", "P5"]
    assert out["portfolio_id"].to_list() == sorted(expected)
    assert out["value"].to_list() == pytest.approx([expected[k] for k in sorted(expected)], rel=1e-10)
    # row order of the weights does not matter; neither does the order of the matrix's columns
    assert_frame_equal(correlation_triggers(_shuffled(weights), x, ids, policies, NOW), out)
    perm = rng.permutation(n)
    permuted = correlation_triggers(weights, x[:, perm], [ids[i] for i in perm], policies, NOW)
    assert permuted["portfolio_id"].to_list() == out["portfolio_id"].to_list()
    assert permuted["value"].to_list() == pytest.approx(out["value"].to_list(), rel=1e-12)


def test_correlation_bad_inputs():
    x = np.zeros((5, 2))
    w = pl.DataFrame({"portfolio_id": ["A", "A"], "instrument_id": ["X", "Y"], "weight": [0.5, 0.5]})
    with pytest.raises(ValueError, match="2 ids, returns 3 columns"):
        correlation_triggers(w, np.zeros((5, 3)), ["X", "Y"], None, NOW)
    with pytest.raises(ValueError, match="duplicate ids"):
        correlation_triggers(w, x, ["X", "X"], None, NOW)
    with pytest.raises(ValueError, match="2-D"):
        correlation_triggers(w, np.zeros(5), ["X"], None, NOW)
    with pytest.raises(ValueError, match="duplicate key"):
        correlation_triggers(pl.concat([w, w]), x, ["X", "Y"], None, NOW)


# --- risk budget ------------------------------------------------------------------------------


def test_risk_budget_one_row_per_budget_breached():
    policies = parse_policies(
        {
            "default": {"tracking_error_budget": 0.05, "var_budget": 0.02},
            "portfolios": {"NOBUDGET": {"tracking_error_budget": None, "var_budget": None}},
        }
    )
    risk = pl.DataFrame(
        {
            "portfolio_id": ["A", "B", "C", "NOBUDGET", "E"],
            # 0.06 > 0.05; 0.05 is at the budget (strict: no); null: no benchmark
            "annualised_tracking_error": [0.06, 0.05, None, 0.5, 0.01],
        }
    )
    var = pl.DataFrame(
        {
            "portfolio_id": ["A", "B", "C", "NOBUDGET"],
            "method": ["historical"] * 4,
            "confidence": [0.95] * 4,
            "horizon_days": [1] * 4,
            "var_pct_nav": [0.031, 0.01, 0.025, 0.5],  # A and C over 0.02
        }
    )
    out = risk_budget_triggers(risk, var, policies, NOW)
    _check(out, "risk_budget")
    assert out.select("portfolio_id", "value", "threshold").rows() == [
        ("A", 0.031, 0.02), ("A", 0.06, 0.05), ("C", 0.025, 0.02)
    ]
    assert out["note"].to_list() == [
        "historical 95% 1-day VaR 3.1% of nav above budget 2.0%",
        "tracking error 6.0% above budget 5.0%",
        "historical 95% 1-day VaR 2.5% of nav above budget 2.0%",
    ]
    assert_frame_equal(risk_budget_triggers(_shuffled(risk), _shuffled(var), policies, NOW), out)
    # without a budget nothing triggers
    assert risk_budget_triggers(risk, var, None, NOW).height == 0
    two_methods = pl.concat([var, var.with_columns(pl.lit("parametric").alias("method"))])
    with pytest.raises(ValueError, match="filtered to one"):
        risk_budget_triggers(risk, two_methods, policies, NOW)
    with pytest.raises(ValueError, match="var has duplicate key"):
        risk_budget_triggers(risk, pl.concat([var, var]).drop("method", "confidence", "horizon_days"), policies, NOW)


# --- cash flow --------------------------------------------------------------------------------


def test_cash_flows_against_nav():
    since = datetime(2025, 1, 1, tzinfo=timezone.utc)
    t_in, t_before = datetime(2025, 1, 15, tzinfo=timezone.utc), datetime(2024, 12, 31, 23, tzinfo=timezone.utc)
    ledger = pl.DataFrame(
        [
            # A: deposit 100 and withdrawal 20 in the window -> net +80; 80 / 1,000 = 8% > 5%.
            # The 500 before `since` and the dividend (not external) do not count.
            ("A", "f1", t_in, True, "USD", 100.0),
            ("A", "f2", t_in, True, "USD", -20.0),
            ("A", "f3", t_before, True, "USD", 500.0),
            ("A", "d1", t_in, False, "USD", 1000.0),
            # B: withdrawal 60 -> 60 / 1,000 = 6% > 5%: an outflow
            ("B", "f4", t_in, True, "USD", -60.0),
            # C: 50 / 1,000 = 5%: at the threshold, no trigger
            ("C", "f5", t_in, True, "USD", 50.0),
            # D: a flow without a base amount (no fx rate): flagged
            ("D", "f6", t_in, True, "EUR", None),
            ("D", "f7", t_in, True, "USD", 1.0),
            # E: no nav: flagged; F: nav 0: flagged; G: flows that cancel out with nav 0: no row
            ("E", "f8", t_in, True, "USD", 10.0),
            ("F", "f9", t_in, True, "USD", -10.0),
            ("G", "f10", t_in, True, "USD", 10.0),
            ("G", "f11", t_in, True, "USD", -10.0),
            # H: 30 / 1,000 = 3% over its own threshold of 2%
            ("H", "f12", since, True, "USD", 30.0),
        ],
        schema={
            "portfolio_id": pl.String, "entry_id": pl.String, "ts": TS, "is_external": pl.Boolean,
            "currency": pl.String, "amount_base": pl.Float64,
        },
        orient="row",
    )
    nav = pl.DataFrame({"portfolio_id": ["A", "B", "C", "D", "F", "G", "H"], "nav": [1000.0, 1000.0, 1000.0, 1000.0, 0.0, 0.0, 1000.0]})
    policies = parse_policies({"portfolios": {"H": {"cash_flow_threshold": 0.02}}})
    out = cash_flow_triggers(ledger, nav, since, policies, NOW)
    _check(out, "cash_flow")
    assert out["portfolio_id"].to_list() == ["A", "B", "D", "E", "F", "H"]
    assert out["value"].to_list() == [0.08, 0.06, None, None, None, 0.03]  # quotients of round numbers: exact
    assert out["threshold"].to_list() == [0.05, 0.05, None, None, None, 0.02]
    assert out["note"].to_list() == [
        "net external inflow 8.0% of nav above 5.0%",
        "net external outflow 6.0% of nav above 5.0%",
        "1 external flow(s) without a base-currency amount (EUR) since 2025-01-01 00:00 UTC: share of nav unknown",
        "net external inflow of 10.00 (base currency) but nav unknown or not positive: share of nav unknown",
        "net external outflow of 10.00 (base currency) but nav unknown or not positive: share of nav unknown",
        "net external inflow 3.0% of nav above 2.0%",
    ]
    assert_frame_equal(cash_flow_triggers(_shuffled(ledger), _shuffled(nav), since, policies, NOW), out)
    with pytest.raises(ValueError, match="missing column.*amount_base"):
        cash_flow_triggers(ledger.drop("amount_base"), nav, since, policies, NOW)
    with pytest.raises(ValueError, match="nav has duplicate key"):
        cash_flow_triggers(ledger, pl.concat([nav, nav]), since, policies, NOW)


# --- all triggers and decisions ---------------------------------------------------------------


def test_all_triggers_concatenates_checks_and_sorts():
    drift = drift_triggers(_summary([(date(2025, 1, 31), "B", 0.1, 0.05, True, 0)]), NOW)
    manual = manual_triggers(["B", "A"], ["A", "B"], NOW)
    out = all_triggers(manual, drift)
    _check(out)
    assert out.select("portfolio_id", "kind", "priority").rows() == [("A", "manual", 3), ("B", "drift", 2), ("B", "manual", 3)]
    assert all_triggers().schema == pl.Schema(TRIGGERS_SCHEMA)
    with pytest.raises(ValueError, match="unknown trigger kind\\(s\\) hunch"):
        all_triggers(manual, manual.with_columns(pl.lit("hunch").alias("kind")))
    with pytest.raises(ValueError, match="a drift trigger has priority 9"):
        all_triggers(drift.with_columns(pl.lit(9).cast(pl.Int64).alias("priority")))
    with pytest.raises(ValueError, match="missing column"):
        all_triggers(manual.drop("note"))


def test_decisions_for_every_status_with_and_without_a_trigger():
    statuses = ["ACTIVE", "LIQUIDATING", "SUSPENDED", "CLOSED"]
    portfolios = pl.DataFrame(
        {"portfolio_id": [f"{s[:3]}-{t}" for s in statuses for t in ("T", "N")], "status": [s for s in statuses for _ in range(2)]}
    )
    triggered = [p for p in portfolios["portfolio_id"] if p.endswith("-T")]
    triggers = all_triggers(
        manual_triggers(triggered, triggered, NOW),
        calendar_triggers(triggered, parse_policies({"default": {"calendar": "daily"}}), CAL, date(2025, 1, 30), NOW),
        drift_triggers(_summary([(date(2025, 1, 31), "ACT-T", 0.1, 0.05, True, 0)]), NOW),
    )
    out = rebalance_decisions(triggers, portfolios)
    assert out.schema == pl.Schema(DECISIONS_SCHEMA)
    rows = {r["portfolio_id"]: r for r in out.iter_rows(named=True)}
    assert out["portfolio_id"].to_list() == sorted(rows)
    expected = {
        "ACT-T": ("REBALANCE", "triggered by drift, manual, calendar", ["drift", "manual", "calendar"], 2),
        "ACT-N": ("SKIP", NO_TRIGGER, [], None),
        "LIQ-T": ("LIQUIDATE", LIQUIDATING_REASON, ["manual", "calendar"], 3),
        "LIQ-N": ("LIQUIDATE", LIQUIDATING_REASON, [], None),
        "SUS-T": ("SKIP", "portfolio is SUSPENDED", ["manual", "calendar"], 3),
        "SUS-N": ("SKIP", "portfolio is SUSPENDED", [], None),
        "CLO-T": ("SKIP", "portfolio is CLOSED", ["manual", "calendar"], 3),
        "CLO-N": ("SKIP", "portfolio is CLOSED", [], None),
    }
    for pid, (action, reason, kinds, top) in expected.items():
        row = rows[pid]
        assert (row["action"], row["reason"], row["trigger_kinds"], row["top_priority"]) == (action, reason, kinds, top), pid
    # the same decisions whatever the order of the rows
    assert_frame_equal(rebalance_decisions(_shuffled(triggers), _shuffled(portfolios)), out)


def test_decisions_bad_inputs():
    portfolios = pl.DataFrame({"portfolio_id": ["A"], "status": ["ACTIVE"]})
    with pytest.raises(ValueError, match="unknown portfolio\\(s\\): Z"):
        rebalance_decisions(manual_triggers(["Z"], ["Z"], NOW), portfolios)
    with pytest.raises(ValueError, match="unknown status\\(es\\) DORMANT"):
        rebalance_decisions(manual_triggers([], ["A"], NOW), portfolios.with_columns(pl.lit("DORMANT").alias("status")))
    with pytest.raises(ValueError, match="duplicate key"):
        rebalance_decisions(manual_triggers([], ["A"], NOW), pl.concat([portfolios, portfolios]))
    with pytest.raises(ValueError, match="unknown trigger kind"):
        rebalance_decisions(manual_triggers(["A"], ["A"], NOW).with_columns(pl.lit("gut").alias("kind")), portfolios)


def test_kinds_and_priorities_are_documented_together():
    assert set(PRIORITIES) == set(TRIGGER_KINDS)
    assert PRIORITIES == {
        "risk_budget": 1, "drift": 2, "cash_flow": 3, "manual": 3, "volatility_regime": 4, "correlation_change": 4, "calendar": 5
    }
