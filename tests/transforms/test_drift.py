"""Drift against target weights, drift trend and drift alerts (transforms.drift), checked by
hand, against numpy.polyfit (the trend slope) and against an independent numpy computation
of the drift figure (half the L1 distance between actual and target weights)."""

from __future__ import annotations

from datetime import date, timedelta

import numpy as np
import polars as pl
import pytest

from transforms.drift import (
    closed_portfolios,
    DRIFT_ALERTS_SCHEMA,
    DRIFT_SCHEMA,
    DRIFT_SUMMARY_SCHEMA,
    DRIFT_TREND_SCHEMA,
    ISSUES_SCHEMA,
    NO_BAND,
    NO_NAV,
    NO_TARGETS,
    NOT_HELD,
    NOT_TARGETED,
    TARGETS_IN_FORCE_SCHEMA,
    drift,
    drift_alerts,
    drift_trend,
    targets_in_force,
)

D0 = date(2025, 3, 3)  # a Monday
D1 = date(2025, 6, 2)
AS_OF = date(2025, 6, 16)

TARGET_SCHEMA = {
    "portfolio_id": pl.String,
    "strategy_id": pl.String,
    "instrument_id": pl.String,
    "target_weight": pl.Float64,
    "effective_date": pl.Date,
}
HOLDING_SCHEMA = {
    "portfolio_id": pl.String,
    "strategy_id": pl.String,
    "instrument_id": pl.String,
    "sector": pl.String,
    "market_value": pl.Float64,
}
SECTORS = {"A": "Tech", "B": "Tech", "C": "Energy", "D": "Health", "E": "Health", "X": "Energy"}
INSTRUMENTS = pl.DataFrame({"instrument_id": list(SECTORS), "sector": list(SECTORS.values())})


def _targets(rows) -> pl.DataFrame:
    """(portfolio, sleeve, instrument, weight[, effective date]) -> landing target rows."""
    rows = [r if len(r) == 5 else (*r, D0) for r in rows]
    return pl.DataFrame(rows, schema=TARGET_SCHEMA, orient="row")


def _holdings(rows) -> pl.DataFrame:
    """(portfolio, sleeve, instrument, market value) -> holdings; the sector is the
    instrument's (null for cash)."""
    return pl.DataFrame(
        [(p, s, i, SECTORS.get(i), mv) for p, s, i, mv in rows], schema=HOLDING_SCHEMA, orient="row"
    )


def _navs(pairs) -> pl.DataFrame:
    return pl.DataFrame(pairs, schema={"portfolio_id": pl.String, "nav": pl.Float64}, orient="row")


def _run(targets, holdings, navs, as_of=AS_OF, **kwargs):
    t, issues = targets_in_force(targets, as_of)
    return drift(holdings, navs, t, INSTRUMENTS, as_of, target_issues=issues, **kwargs)


def _row(frame: pl.DataFrame, **where) -> dict:
    out = frame.filter(*(pl.col(k) == v for k, v in where.items()))
    assert out.height == 1, (where, out)
    return out.row(0, named=True)


# --- a two-sleeve portfolio by hand -------------------------------------------------------------

# CORE: A 0.6, B 0.4; TACTICAL: B 0.5, C 0.5. Each sleeve sums to 1, so S = 2 and each sleeve
# is half the portfolio: targets A 0.30, B 0.20 + 0.25 = 0.45, C 0.25.
TWO_SLEEVES = _targets(
    [
        ("P001", "CORE", "A", 0.6),
        ("P001", "CORE", "B", 0.4),
        ("P001", "TACTICAL", "B", 0.5),
        ("P001", "TACTICAL", "C", 0.5),
    ]
)
# nav 1,000: A 380 (CORE), B 200 (CORE) + 230 (TACTICAL), C 140 (TACTICAL), cash 50
TWO_SLEEVE_HOLDINGS = _holdings(
    [
        ("P001", "CORE", "A", 380.0),
        ("P001", "CORE", "B", 200.0),
        ("P001", "TACTICAL", "B", 230.0),
        ("P001", "TACTICAL", "C", 140.0),
        ("P001", None, "CASH:USD", 50.0),
    ]
)


def test_two_sleeve_portfolio_by_hand():
    t, issues = targets_in_force(TWO_SLEEVES, AS_OF)
    assert issues.is_empty() and t.schema == pl.Schema(TARGETS_IN_FORCE_SCHEMA)
    assert t["target_weight"].to_list() == pytest.approx([0.30, 0.20, 0.25, 0.25], abs=1e-15)
    assert t["sleeve_share"].to_list() == pytest.approx([0.5] * 4, abs=1e-15)

    out = drift(TWO_SLEEVE_HOLDINGS, _navs([("P001", 1000.0)]), t, INSTRUMENTS, AS_OF, target_issues=issues)
    rows, summary = out["drift"], out["summary"]
    assert rows.schema == pl.Schema(DRIFT_SCHEMA) and summary.schema == pl.Schema(DRIFT_SUMMARY_SCHEMA)
    assert out["issues"].is_empty()
    # (level, key) -> (actual, target, breach) worked by hand
    expected = {
        # A: 0.38 - 0.30 = +0.08 > 0.05 (abs band)
        ("instrument", "A"): (0.38, 0.30, True),
        # B: 0.43 - 0.45 = -0.02, relative -0.044: inside both bands
        ("instrument", "B"): (0.43, 0.45, False),
        # C: 0.14 - 0.25 = -0.11: past both bands
        ("instrument", "C"): (0.14, 0.25, True),
        # cash: 0.05 - 0 = 0.05, exactly at the abs band: not a breach (no relative band at 0)
        ("instrument", "CASH:USD"): (0.05, 0.0, False),
        ("sector", "Tech"): (0.81, 0.75, True),  # A + B: +0.06
        ("sector", "Energy"): (0.14, 0.25, True),
        ("sector", "CASH"): (0.05, 0.0, False),
        ("strategy", "CORE"): (0.58, 0.5, None),  # 380 + 200
        ("strategy", "TACTICAL"): (0.37, 0.5, None),  # 230 + 140
        ("strategy", "UNASSIGNED"): (0.05, 0.0, None),  # the cash
    }
    assert rows.height == len(expected)
    for (level, key), (actual, target, breach) in expected.items():
        r = _row(rows, level=level, key=key)
        assert r["actual_weight"] == pytest.approx(actual, abs=1e-15), key
        assert r["target_weight"] == pytest.approx(target, abs=1e-15), key
        assert r["drift"] == pytest.approx(actual - target, abs=1e-15), key
        assert r["abs_drift"] == pytest.approx(abs(actual - target), abs=1e-15), key
        assert r["breach"] is breach, key
        if target:
            assert r["relative_drift"] == pytest.approx((actual - target) / target, abs=1e-14), key
        else:
            assert r["relative_drift"] is None
    assert _row(rows, level="instrument", key="CASH:USD")["note"] == NOT_TARGETED
    assert _row(rows, level="strategy", key="CORE")["note"] == NO_BAND
    assert rows.filter(pl.col("level") == "strategy")["band_abs"].null_count() == 3

    # drift figure: 0.5 * (0.08 + 0.02 + 0.11 + 0.05) = 0.13 > 0.05
    s = summary.row(0, named=True)
    assert s["drift"] == pytest.approx(0.13, abs=1e-15) and s["breach"] is True
    assert (s["instruments_breaching"], s["sectors_breaching"]) == (2, 2)
    assert s["max_abs_drift"] == pytest.approx(0.11, abs=1e-15)
    assert s["nav"] == 1000.0 and s["note"] is None  # holdings add up to the nav

    alerts = drift_alerts(rows, summary, out["issues"])
    assert alerts.schema == pl.Schema(DRIFT_ALERTS_SCHEMA)
    got = {(a["level"], a["key"]): (a["band_type"], a["band"], a["severity"]) for a in alerts.iter_rows(named=True)}
    assert got == {
        # 0.08 / 0.05 = 1.6 (abs) beats 0.08 / 0.30 / 0.25 = 1.07 (rel): MEDIUM
        ("instrument", "A"): ("abs", 0.05, "MEDIUM"),
        # 0.11 / 0.05 = 2.2 (abs) beats 0.44 / 0.25 = 1.76 (rel): HIGH
        ("instrument", "C"): ("abs", 0.05, "HIGH"),
        ("sector", "Tech"): ("abs", 0.05, "LOW"),  # 0.06 / 0.05 = 1.2
        ("sector", "Energy"): ("abs", 0.05, "HIGH"),
        ("portfolio", "P001"): ("abs", 0.05, "HIGH"),  # 0.13 / 0.05 = 2.6
    }
    messages = dict(zip(alerts["key"], alerts["message"]))
    assert messages["A"] == "P001 instrument A is 8.0% over its 30.0% target (band 5/25)"
    assert messages["C"] == "P001 instrument C is 11.0% under its 25.0% target (band 5/25)"
    assert messages["P001"] == "P001 portfolio drift is 13.0% (band 5%)"
    assert alerts["rising"].null_count() == alerts.height  # no trend given


# --- bands --------------------------------------------------------------------------------------


def test_the_5_25_rule_at_its_edges():
    """A drift exactly at a band is not a breach (the comparison is strict; 1e-12 absorbs the
    rounding of market_value / nav: 400 / 1000 - 0.35 is 0.05000000000000004)."""
    # (portfolio, instrument) -> (target, market value of a 1,000 nav, breach)
    cases = {
        ("P1", "A"): (0.30, 350.0, False),  # +0.05 exactly at the abs band (0.0499999... in floats)
        ("P1", "B"): (0.35, 400.0, False),  # +0.05 exactly at the abs band (0.0500...04 in floats)
        ("P1", "D"): (0.10, 125.0, False),  # +0.025 = 25% of the target: at the rel band
        ("P1", "E"): (0.10, 126.0, True),  # +0.026 = 26% of the target: past the rel band only
        ("P1", "X"): (0.15, 0.0, True),  # targeted, not held: -0.15 (-100%)
        ("P2", "C"): (0.30, 350.1, True),  # +0.0501: past the abs band
        ("P2", "A"): (0.70, 649.9, True),  # -0.0501: the other side of the same trade
    }
    targets = _targets([(p, "CORE", i, t) for (p, i), (t, _, _) in cases.items()])
    held = [(p, "CORE", i, mv) for (p, i), (_, mv, _) in cases.items() if mv]
    # held, not targeted: 0.05 exactly (no rel band at target 0), then just past it
    navs = _navs([("P1", 1000.0), ("P2", 1000.0)])
    out = _run(targets, _holdings(held + [("P1", None, "CASH:USD", 50.0)]), navs)
    assert out["issues"].is_empty()
    rows = out["drift"].filter(pl.col("level") == "instrument")
    for (p, key), (_, _, breach) in cases.items():
        assert _row(rows, portfolio_id=p, key=key)["breach"] is breach, (p, key)
    assert _row(rows, key="CASH:USD")["breach"] is False
    assert _row(rows, key="X")["note"] == NOT_HELD
    out = _run(targets, _holdings(held + [("P1", None, "CASH:USD", 50.1)]), navs)
    assert _row(out["drift"], level="instrument", key="CASH:USD")["breach"] is True

    alerts = drift_alerts(out["drift"], out["summary"], out["issues"])
    e = _row(alerts, key="E")
    # 0.026 / 0.10 = 0.26 against 0.25: rel band, ratio 1.04
    assert (e["band_type"], e["band"], e["severity"]) == ("rel", 0.25, "LOW")
    assert e["message"] == "P1 instrument E is 2.6% over its 10.0% target (band 5/25)"


def test_band_overrides_fall_back_to_the_defaults():
    targets = _targets([(p, "CORE", i, 0.5) for p in ("P1", "P2", "P3") for i in ("A", "B")])
    # A +0.04 (8% of its target), B -0.04: inside 5/25
    holdings = _holdings([(p, "CORE", i, mv) for p in ("P1", "P2", "P3") for i, mv in (("A", 540.0), ("B", 460.0))])
    navs = _navs([("P1", 1000.0), ("P2", 1000.0), ("P3", 1000.0)])
    bands = pl.DataFrame(
        {
            "portfolio_id": ["P2", "P3"],
            "abs_band": [0.03, None],
            "rel_band": [None, 0.05],
            "portfolio_band": [None, 0.03],
        }
    )
    out = _run(targets, holdings, navs, bands=bands)
    a = out["drift"].filter((pl.col("level") == "instrument") & (pl.col("key") == "A"))
    assert a["breach"].to_list() == [False, True, True]  # defaults; abs 3%; rel 5%
    assert a["band_abs"].to_list() == [0.05, 0.03, 0.05]
    assert a["band_rel"].to_list() == [0.25, 0.25, 0.05]
    # drift figure 0.04: above P3's 3% portfolio band only
    assert out["summary"]["breach"].to_list() == [False, False, True]
    assert out["summary"]["portfolio_band"].to_list() == [0.05, 0.05, 0.03]
    with pytest.raises(ValueError, match="abs_band must be positive"):
        _run(targets, holdings, navs, bands=bands.with_columns(pl.lit(0.0).alias("abs_band")))
    with pytest.raises(ValueError, match="rel_band must be a positive number"):
        _run(targets, holdings, navs, rel_band=-0.1)
    with pytest.raises(ValueError, match="duplicate key"):
        _run(targets, holdings, navs, bands=pl.concat([bands, bands]))


# --- targets ------------------------------------------------------------------------------------


def test_a_newer_effective_date_replaces_the_sleeve_set():
    targets = _targets(
        [
            ("P1", "CORE", "A", 0.5, D0),
            ("P1", "CORE", "B", 0.5, D0),
            ("P1", "CORE", "A", 0.6, D1),  # replaces CORE: B is no longer a target
            ("P1", "CORE", "C", 0.4, D1),
            ("P1", "TACTICAL", "X", 1.0, D0),  # TACTICAL keeps its D0 set
            ("P1", "TACTICAL", "D", 1.0, date(2025, 12, 1)),  # not yet in force
        ]
    )
    before, _ = targets_in_force(targets, D1 - timedelta(days=1))
    assert before.select("strategy_id", "instrument_id", "raw_weight").rows() == [
        ("CORE", "A", 0.5),
        ("CORE", "B", 0.5),
        ("TACTICAL", "X", 1.0),
    ]
    after, issues = targets_in_force(targets, D1)
    assert issues.is_empty()
    assert after.select("strategy_id", "instrument_id", "effective_date", "target_weight").rows() == [
        ("CORE", "A", D1, 0.3),
        ("CORE", "C", D1, 0.2),
        ("TACTICAL", "X", D0, 0.5),
    ]
    assert targets_in_force(targets, D0 - timedelta(days=1))[0].is_empty()

    holdings = _holdings([("P1", "CORE", "A", 300.0), ("P1", "CORE", "B", 200.0), ("P1", "TACTICAL", "X", 500.0)])
    out = drift(holdings, _navs([("P1", 1000.0)]), after, INSTRUMENTS, D1)
    b, c = _row(out["drift"], level="instrument", key="B"), _row(out["drift"], level="instrument", key="C")
    assert (b["target_weight"], b["actual_weight"], b["note"]) == (0.0, 0.2, NOT_TARGETED)
    assert (c["target_weight"], c["actual_weight"], c["note"]) == (0.2, 0.0, NOT_HELD)
    assert out["summary"]["drift"][0] == pytest.approx(0.2, abs=1e-15)  # 0.5 * (0.2 + 0.2)


def test_targets_summing_to_one_per_sleeve_or_per_portfolio_are_both_accepted():
    targets = _targets(
        [
            # per sleeve: CORE 1, TACTICAL 1, a null sleeve 1 -> each a third of the portfolio
            ("PS", "CORE", "A", 0.7),
            ("PS", "CORE", "B", 0.3),
            ("PS", "TACTICAL", "C", 1.0),
            ("PS", None, "D", 1.0),
            # per portfolio: CORE 0.6, INCOME 0.4 -> kept as sent
            ("PP", "CORE", "A", 0.3),
            ("PP", "CORE", "B", 0.3),
            ("PP", "INCOME", "E", 0.4),
        ]
    )
    t, issues = targets_in_force(targets, AS_OF)
    assert issues.is_empty()
    ps = t.filter(pl.col("portfolio_id") == "PS")
    assert ps["target_weight"].to_list() == pytest.approx([1 / 3, 0.7 / 3, 0.3 / 3, 1 / 3], abs=1e-15)
    assert ps["strategy_id"].to_list() == [None, "CORE", "CORE", "TACTICAL"]
    assert ps["sleeve_share"].to_list() == pytest.approx([1 / 3] * 4, abs=1e-15)
    pp = t.filter(pl.col("portfolio_id") == "PP")
    assert pp["target_weight"].to_list() == pytest.approx([0.3, 0.3, 0.4], abs=1e-15)
    assert pp["sleeve_share"].to_list() == pytest.approx([0.6, 0.6, 0.4], abs=1e-15)
    for _, frame in t.group_by("portfolio_id"):
        assert frame["target_weight"].sum() == pytest.approx(1.0, abs=1e-14)


def test_the_sample_book_targets_are_valid_and_sleeves_equal(tiny_book):
    targets = pl.concat([f for _, f in tiny_book["targets"]])
    first, middle = sorted(targets["effective_date"].unique())
    for as_of in (first, middle):
        t, issues = targets_in_force(targets, as_of)
        assert issues.is_empty()
        assert t["effective_date"].unique().to_list() == [as_of]
        check = t.group_by("portfolio_id").agg(
            pl.col("target_weight").sum().alias("total"),
            pl.col("strategy_id").n_unique().alias("k"),
            pl.col("sleeve_share").first(),
        )
        assert check["total"].to_list() == pytest.approx([1.0] * check.height, abs=1e-12)
        assert check["sleeve_share"].to_list() == pytest.approx((1.0 / check["k"]).to_list(), abs=1e-12)


def test_bad_targets_are_reported_and_their_drift_is_not_computed():
    targets = _targets(
        [
            ("P1", "CORE", "A", 0.5),
            ("P1", "CORE", "B", 0.5),
            ("P1", "TACTICAL", "C", 0.53),  # TACTICAL sums to 0.93, the portfolio to 1.93
            ("P1", "TACTICAL", "X", 0.40),
            ("P2", "CORE", "A", 1.1),
            ("P2", "CORE", "B", -0.1),  # sums to 1, but a negative target is invalid
            ("P3", "CORE", "A", 1.0),  # fine
        ]
    )
    t, issues = targets_in_force(targets, AS_OF)
    assert issues.schema == pl.Schema(ISSUES_SCHEMA)
    assert t["portfolio_id"].unique().to_list() == ["P3"]
    assert issues.rows() == [
        (
            "P1",
            AS_OF,
            "targets sum to 0.930000 (sleeve TACTICAL); 1.930000 over the portfolio "
            "(each sleeve or the whole portfolio must sum to 1)",
        ),
        ("P2", AS_OF, "negative target weight -0.100000 (instrument B, sleeve CORE)"),
    ]
    holdings = _holdings([(p, "CORE", "A", 100.0) for p in ("P1", "P2", "P3", "P4")])  # P4: no targets
    navs = _navs([(p, 100.0) for p in ("P1", "P2", "P3", "P4")])
    out = drift(holdings, navs, t, INSTRUMENTS, AS_OF, target_issues=issues)
    assert out["drift"]["portfolio_id"].unique().to_list() == ["P3"]
    assert out["issues"]["portfolio_id"].to_list() == ["P1", "P2", "P4"]
    assert out["issues"]["reason"][2] == NO_TARGETS
    summary = out["summary"]
    assert summary["portfolio_id"].to_list() == ["P1", "P2", "P3", "P4"]
    assert summary["drift"].to_list() == [None, None, 0.0, None]
    assert summary["note"][1] == "drift not computed: negative target weight -0.100000 (instrument B, sleeve CORE)"
    alerts = drift_alerts(out["drift"], summary, out["issues"])
    errors = alerts.filter(pl.col("severity") == "ERROR")
    assert errors["portfolio_id"].to_list() == ["P1", "P2", "P4"]
    assert errors["message"][2] == "P4: drift not computed: no targets"
    assert errors.select(pl.col("drift", "band").null_count()).row(0) == (3, 3)
    # without the target issues the portfolios are still reported, as having no targets
    alone = drift(holdings, navs, t, INSTRUMENTS, AS_OF)
    assert alone["issues"]["reason"].to_list() == [NO_TARGETS] * 3


def test_missing_weights_and_rounding_within_the_tolerance():
    targets = _targets(
        [("P1", "CORE", "A", 0.5), ("P1", "CORE", "B", None), ("P2", "CORE", "A", 0.6), ("P2", "CORE", "B", 0.4000004)]
    )
    t, issues = targets_in_force(targets, AS_OF)
    assert issues.rows() == [("P1", AS_OF, "target weight missing or not a number (instrument B, sleeve CORE)")]
    # 1.0000004 is within 1e-6 of 1: accepted, and normalised to sum to 1
    assert t["target_weight"].sum() == pytest.approx(1.0, abs=1e-15)


# --- nav and holdings ---------------------------------------------------------------------------


def test_nav_zero_negative_or_missing_and_unknown_values_are_reported():
    targets = _targets([(p, "CORE", "A", 1.0) for p in ("P0", "PN", "PM", "PV", "OK")])
    holdings = _holdings(
        [
            ("P0", "CORE", "A", 0.0),
            ("PN", "CORE", "A", -5.0),
            ("PM", "CORE", "A", 10.0),
            ("PV", "CORE", "A", None),
            ("OK", "CORE", "A", 10.0),
        ]
    )
    navs = _navs([("P0", 0.0), ("PN", -5.0), ("PV", 10.0), ("OK", 10.0)])  # PM has no nav
    out = _run(targets, holdings, navs)
    assert out["issues"].select("portfolio_id", "reason").rows() == [
        ("P0", "nav 0.0 is zero or negative"),
        ("PM", NO_NAV),
        ("PN", "nav -5.0 is zero or negative"),
        ("PV", "1 holding(s) without a market value (first: A)"),
    ]
    assert out["drift"]["portfolio_id"].unique().to_list() == ["OK"]
    summary = out["summary"]
    assert summary.filter(pl.col("drift").is_null())["portfolio_id"].to_list() == ["P0", "PM", "PN", "PV"]
    assert _row(summary, portfolio_id="OK")["drift"] == 0.0
    for frame in (out["drift"], summary):
        floats = [c for c, t in frame.schema.items() if t == pl.Float64]
        assert not frame.select(pl.any_horizontal(pl.col(floats).is_nan() | pl.col(floats).is_infinite()).any()).item()


def test_skipped_portfolios_are_listed_unmeasured_and_raise_no_alert():
    # CL is closed: all cash, so measured it would be a 100% underweight of its targets; NT is
    # closed without targets (no "no targets" issue either); OK is measured as before
    targets = _targets([("CL", "CORE", "A", 1.0), ("OK", "CORE", "A", 1.0)])
    holdings = _holdings([("CL", None, "CASH:USD", 10.0), ("NT", None, "CASH:USD", 5.0), ("OK", "CORE", "A", 10.0)])
    navs = _navs([("CL", 10.0), ("NT", 5.0), ("OK", 10.0)])
    portfolios = pl.DataFrame({"portfolio_id": ["CL", "NT", "OK"], "status": ["CLOSED", "CLOSED", "ACTIVE"]})
    assert closed_portfolios(portfolios).rows() == [("CL", "portfolio is CLOSED"), ("NT", "portfolio is CLOSED")]
    skipped = pl.concat([closed_portfolios(portfolios), closed_portfolios(portfolios).tail(1)])  # a repeat is harmless
    out = _run(targets, holdings, navs, skipped=skipped)
    assert out["issues"].is_empty()
    assert out["drift"]["portfolio_id"].unique().to_list() == ["OK"]
    summary = out["summary"]
    assert summary["portfolio_id"].to_list() == ["CL", "NT", "OK"]
    assert _row(summary, portfolio_id="CL")["drift"] is None
    assert _row(summary, portfolio_id="CL")["note"] == "not measured: portfolio is CLOSED"
    assert _row(summary, portfolio_id="NT")["note"] == "not measured: portfolio is CLOSED"
    assert _row(summary, portfolio_id="OK")["drift"] == 0.0
    alerts = drift_alerts(out["drift"], summary, out["issues"])
    assert set(alerts["portfolio_id"]) <= {"OK"}
    # unmeasured is not the same as measured without a breach: without the skip, CL alerts
    unskipped = _run(targets, holdings, navs)
    assert _row(unskipped["summary"], portfolio_id="CL")["drift"] == pytest.approx(1.0)
    with pytest.raises(ValueError, match="skipped has 1 row"):
        _run(targets, holdings, navs, skipped=pl.DataFrame({"portfolio_id": ["CL"], "reason": [None]}, schema_overrides={"reason": pl.String}))


def test_held_not_targeted_targeted_not_held_shorts_and_lots():
    targets = _targets([("P1", "CORE", "A", 0.5), ("P1", "CORE", "C", 0.3), ("P1", "CORE", "D", 0.2)])
    holdings = _holdings(
        [
            ("P1", "CORE", "A", 300.0),
            ("P1", "CORE", "A", 250.0),  # a second lot of A
            ("P1", "CORE", "B", 200.0),  # held, not targeted
            ("P1", "CORE", "E", -100.0),  # a short, not targeted
            ("P1", "CORE", "D", 150.0),
            ("P1", None, "CASH:USD", 200.0),
        ]  # C: targeted, not held
    )
    out = _run(targets, holdings, _navs([("P1", 1000.0)]))
    inst = out["drift"].filter(pl.col("level") == "instrument")
    got = {r["key"]: (r["actual_weight"], r["target_weight"], r["note"]) for r in inst.iter_rows(named=True)}
    assert got == {
        "A": (0.55, 0.5, None),
        "B": (0.2, 0.0, NOT_TARGETED),
        "C": (0.0, 0.3, NOT_HELD),
        "D": (0.15, 0.2, None),
        "E": (-0.1, 0.0, NOT_TARGETED),
        "CASH:USD": (0.2, 0.0, NOT_TARGETED),
    }
    sectors = out["drift"].filter(pl.col("level") == "sector")
    # Health: D 0.15 and the short E -0.10 against D's 0.20
    expected = {"CASH": (0.2, 0.0), "Energy": (0.0, 0.3), "Health": (0.05, 0.2), "Tech": (0.75, 0.5)}
    assert sectors["key"].to_list() == list(expected)
    assert sectors["actual_weight"].to_list() == pytest.approx([a for a, _ in expected.values()], abs=1e-15)
    assert sectors["target_weight"].to_list() == pytest.approx([t for _, t in expected.values()], abs=1e-15)
    # 0.5 * (0.05 + 0.2 + 0.3 + 0.05 + 0.1 + 0.2) = 0.45
    assert out["summary"]["drift"][0] == pytest.approx(0.45, abs=1e-15)


# --- invariants ---------------------------------------------------------------------------------


def _random_book(rng, n_portfolios=6):
    names = list(SECTORS)
    t_rows, h_rows, navs = [], [], []
    for p in range(n_portfolios):
        pid = f"P{p:03d}"
        sleeves = list(rng.choice(["CORE", "TACTICAL", "INCOME"], size=rng.integers(1, 4), replace=False))
        per_sleeve = bool(rng.integers(2))
        for s in sleeves:
            ids = rng.choice(names, size=rng.integers(1, 5), replace=False)
            w = rng.dirichlet(np.ones(ids.size)) * (1.0 if per_sleeve else 1.0 / len(sleeves))
            t_rows += [(pid, s, str(i), float(x)) for i, x in zip(ids, w)]
        for _ in range(rng.integers(2, 9)):
            h_rows.append((pid, str(rng.choice(sleeves)), str(rng.choice(names)), float(rng.uniform(-50, 500))))
        h_rows.append((pid, None, "CASH:USD", float(rng.uniform(0, 100))))
        navs.append((pid, sum(r[3] for r in h_rows if r[0] == pid) * float(rng.uniform(0.97, 1.03))))
    return _targets(t_rows), _holdings(h_rows), _navs(navs)


def test_drift_figure_is_half_the_l1_distance_by_numpy():
    targets, holdings, navs = _random_book(np.random.default_rng(7), 8)
    out = _run(targets, holdings, navs)
    assert out["issues"].is_empty()
    rows, summary = out["drift"], out["summary"]
    for pid in navs["portfolio_id"]:
        # independently: raw weights normalised by their total, market values over the nav
        t = targets.filter(pl.col("portfolio_id") == pid)
        h = holdings.filter(pl.col("portfolio_id") == pid)
        nav = navs.filter(pl.col("portfolio_id") == pid)["nav"][0]
        ids = sorted(set(t["instrument_id"]) | set(h["instrument_id"]))
        tw, mv = t["target_weight"].to_numpy(), h["market_value"].to_numpy()
        target = np.array([tw[(t["instrument_id"] == i).to_numpy()].sum() for i in ids]) / tw.sum()
        actual = np.array([mv[(h["instrument_id"] == i).to_numpy()].sum() for i in ids]) / nav
        s = _row(summary, portfolio_id=pid)
        assert s["drift"] == pytest.approx(0.5 * np.abs(actual - target).sum(), rel=1e-12, abs=1e-15)
        assert s["max_abs_drift"] == pytest.approx(np.abs(actual - target).max(), rel=1e-12)
        # the three levels split the same weights
        mine = rows.filter(pl.col("portfolio_id") == pid)
        for level in ("instrument", "sector", "strategy"):
            lv = mine.filter(pl.col("level") == level)
            assert lv["actual_weight"].sum() == pytest.approx(mv.sum() / nav, rel=1e-12), level
            assert lv["target_weight"].sum() == pytest.approx(1.0, rel=1e-12), level
        if abs(mv.sum() / nav - 1.0) > 1e-6:
            assert s["note"].startswith("holdings add up to ")


def test_portfolios_are_independent_and_row_order_does_not_matter():
    targets, holdings, navs = _random_book(np.random.default_rng(3), 6)
    out = _run(targets, holdings, navs)
    shuffled = _run(*(f.sample(fraction=1.0, shuffle=True, seed=5) for f in (targets, holdings, navs)))
    for key in ("drift", "summary", "issues"):
        assert out[key].equals(shuffled[key]), key
    one = pl.col("portfolio_id") == "P002"
    alone = _run(targets.filter(one), holdings.filter(one), navs.filter(one))
    assert alone["drift"].equals(out["drift"].filter(one))
    assert alone["summary"].equals(out["summary"].filter(one))
    alerts = drift_alerts(out["drift"], out["summary"], out["issues"])
    frames = (shuffled["drift"], shuffled["summary"], shuffled["issues"])
    assert alerts.equals(drift_alerts(*(f.sample(fraction=1.0, shuffle=True, seed=2) for f in frames)))


# --- trend --------------------------------------------------------------------------------------


def test_drift_trend_slope_equals_numpy_polyfit():
    rng = np.random.default_rng(17)
    days = np.busday_offset(np.datetime64(D0), np.arange(60), roll="forward")
    rows = []
    lengths = {"P1": 60, "P2": 12, "P3": 2}
    for pid, n in lengths.items():
        keep = np.sort(rng.choice(60, size=n, replace=False))  # gaps: missing days
        y = 0.02 + 0.0007 * np.arange(n) + rng.normal(0, 0.003, n)
        rows += [(pid, d.astype(object), float(v)) for d, v in zip(days[keep], y)]
    rows.append(("P1", (days[-1] + np.timedelta64(3, "D")).astype(object), None))  # not computed: skipped
    history = pl.DataFrame(rows, schema={"portfolio_id": pl.String, "date": pl.Date, "drift": pl.Float64}, orient="row")
    trend = drift_trend(history.sample(fraction=1.0, shuffle=True, seed=1), window=20)
    assert trend.schema == pl.Schema(DRIFT_TREND_SCHEMA)
    for pid in ("P1", "P2"):
        h = history.filter((pl.col("portfolio_id") == pid) & pl.col("drift").is_not_null()).sort("date").tail(20)
        d = h["date"].to_numpy().astype("datetime64[D]")
        x = np.busday_count(d[0], d)
        r = _row(trend, portfolio_id=pid)
        assert r["slope"] == pytest.approx(np.polyfit(x, h["drift"].to_numpy(), 1)[0], rel=1e-9, abs=1e-15)
        assert (r["observations"], r["first_date"], r["last_date"]) == (h.height, h["date"][0], h["date"][-1])
    p3 = _row(trend, portfolio_id="P3")
    assert p3["slope"] is None and p3["observations"] == 2 and p3["note"] == "fewer than 3 observations (2)"


def test_drift_trend_counts_business_days_and_holidays():
    # Fri 7 Mar, Mon 10 Mar, Wed 12 Mar (Tue 11 Mar a holiday): x = 0, 1, 2
    history = pl.DataFrame(
        {
            "portfolio_id": ["P"] * 3,
            "date": [date(2025, 3, 7), date(2025, 3, 10), date(2025, 3, 12)],
            "drift": [0.01, 0.02, 0.03],
        }
    )
    assert drift_trend(history, holidays=[date(2025, 3, 11)])["slope"][0] == pytest.approx(0.01, abs=1e-15)
    # without the holiday Wednesday is day 3: slope = polyfit([0, 1, 3], ...)
    assert drift_trend(history)["slope"][0] == pytest.approx(np.polyfit([0, 1, 3], [0.01, 0.02, 0.03], 1)[0], abs=1e-15)
    with pytest.raises(ValueError, match="not business days"):
        drift_trend(history.with_columns(pl.Series("date", [date(2025, 3, 8), date(2025, 3, 10), date(2025, 3, 12)])))
    with pytest.raises(ValueError, match="duplicate key"):
        drift_trend(pl.concat([history, history]))
    with pytest.raises(ValueError, match="window must be an integer >= 3"):
        drift_trend(history, window=2)


def test_alerts_rise_with_a_positive_trend_slope():
    t = targets_in_force(TWO_SLEEVES, AS_OF)[0]
    out = drift(TWO_SLEEVE_HOLDINGS, _navs([("P001", 1000.0)]), t, INSTRUMENTS, AS_OF)
    up = pl.DataFrame({"portfolio_id": ["P001"], "slope": [0.001]})
    alerts = drift_alerts(out["drift"], out["summary"], out["issues"], up)
    assert alerts["rising"].to_list() == [True] * alerts.height
    down = drift_alerts(out["drift"], out["summary"], out["issues"], up.with_columns(pl.lit(-0.001).alias("slope")))
    assert down["rising"].to_list() == [False] * alerts.height
    assert alerts.drop("rising").equals(down.drop("rising"))


# --- bad input ----------------------------------------------------------------------------------


def test_bad_input_raises_a_clear_value_error():
    t, issues = targets_in_force(TWO_SLEEVES, AS_OF)
    navs = _navs([("P001", 1000.0)])
    with pytest.raises(ValueError, match="targets is missing column.*effective_date"):
        targets_in_force(TWO_SLEEVES.drop("effective_date"), AS_OF)
    with pytest.raises(ValueError, match="targets has duplicate key"):
        targets_in_force(pl.concat([TWO_SLEEVES, TWO_SLEEVES.head(1)]), AS_OF)
    with pytest.raises(ValueError, match="holdings is missing column.*sector"):
        drift(TWO_SLEEVE_HOLDINGS.drop("sector"), navs, t, INSTRUMENTS, AS_OF)
    with pytest.raises(ValueError, match="navs has duplicate key"):
        drift(TWO_SLEEVE_HOLDINGS, pl.concat([navs, navs]), t, INSTRUMENTS, AS_OF)
    with pytest.raises(ValueError, match="targets is missing column.*raw_weight"):
        drift(TWO_SLEEVE_HOLDINGS, navs, TWO_SLEEVES, INSTRUMENTS, AS_OF)  # not the in-force frame
    with pytest.raises(ValueError, match=f"in force on {AS_OF}, not on {D1}"):
        drift(TWO_SLEEVE_HOLDINGS, navs, t, INSTRUMENTS, D1)
    with pytest.raises(ValueError, match="missing from instruments.*: C"):
        no_c = pl.col("instrument_id") != "C"
        drift(TWO_SLEEVE_HOLDINGS.filter(no_c), navs, t, INSTRUMENTS.filter(no_c), AS_OF)
    with pytest.raises(ValueError, match="instrument A more than one sector"):
        # A is Tech in its TACTICAL lot, Energy in its CORE lot
        relabelled = pl.when(pl.col("strategy_id") == "CORE").then(pl.lit("Energy")).otherwise("sector")
        two_sectors = TWO_SLEEVE_HOLDINGS.with_columns(relabelled.alias("sector"))
        drift(two_sectors.vstack(_holdings([("P001", "TACTICAL", "A", 1.0)])), navs, t, INSTRUMENTS, AS_OF)
    with pytest.raises(ValueError, match="holdings has 1 row"):
        drift(_holdings([(None, "CORE", "A", 1.0)]), navs, t, INSTRUMENTS, AS_OF)
    with pytest.raises(ValueError, match="drift_rows is missing column"):
        drift_alerts(pl.DataFrame({"portfolio_id": ["P"]}), pl.DataFrame(), issues)


def test_empty_inputs_give_empty_frames_with_the_schemas():
    t, issues = targets_in_force(pl.DataFrame(schema=TARGET_SCHEMA), AS_OF)
    navs = pl.DataFrame(schema={"portfolio_id": pl.String, "nav": pl.Float64})
    out = drift(pl.DataFrame(schema=HOLDING_SCHEMA), navs, t, INSTRUMENTS, AS_OF, target_issues=issues)
    trend = drift_trend(pl.DataFrame(schema={"portfolio_id": pl.String, "date": pl.Date, "drift": pl.Float64}))
    alerts = drift_alerts(out["drift"], out["summary"], out["issues"], trend)
    frames = (t, issues, out["drift"], out["summary"], out["issues"], trend, alerts)
    schemas = (
        TARGETS_IN_FORCE_SCHEMA,
        ISSUES_SCHEMA,
        DRIFT_SCHEMA,
        DRIFT_SUMMARY_SCHEMA,
        ISSUES_SCHEMA,
        DRIFT_TREND_SCHEMA,
        DRIFT_ALERTS_SCHEMA,
    )
    for frame, schema in zip(frames, schemas):
        assert frame.is_empty() and frame.schema == pl.Schema(schema)


def test_holdings_by_sleeve_value_each_lot_at_its_position():
    from transforms.drift import holdings_by_sleeve

    lots = pl.DataFrame({
        "portfolio_id": ["P", "P", "P", "P"], "instrument_id": ["A", "A", "B", "A"],
        "position_type": ["LONG", "LONG", "SHORT", "LONG"], "strategy_id": ["CORE", "TACTICAL", "CORE", "CORE"],
        "quantity": [10.0, 5.0, 4.0, 0.0], "status": ["OPEN", "OPEN", "OPEN", "CLOSED"],
    })
    positions = pl.DataFrame({
        "portfolio_id": ["P", "P", "P"], "instrument_id": ["A", "B", "CASH:EUR"], "position_type": ["LONG", "SHORT", "CASH"],
        "price": [20.0, 50.0, 1.0], "fx_rate": [1.0, 1.0, 1.1], "market_value": [300.0, -200.0, 110.0],
    })
    instruments = pl.DataFrame({"instrument_id": ["A", "B"], "sector": ["Technology", "Energy"]})
    out = holdings_by_sleeve(lots, positions, instruments)
    assert out.rows() == [
        ("P", "CORE", "A", "Technology", 200.0), ("P", "TACTICAL", "A", "Technology", 100.0),
        ("P", "CORE", "B", "Energy", -200.0), ("P", None, "CASH:EUR", None, 110.0),
    ]
    # the sleeves add up to the positions: nothing lost or counted twice
    assert out["market_value"].sum() == positions["market_value"].sum()


def test_history_date_is_the_business_day_at_or_before():
    from transforms.drift import history_date

    assert history_date(date(2026, 10, 30)) == date(2026, 10, 30)  # a Friday
    assert history_date(date(2026, 10, 31)) == date(2026, 10, 30)  # Saturday files under Friday
    assert history_date(date(2026, 11, 1)) == date(2026, 10, 30)
    assert history_date(date(2026, 11, 2)) == date(2026, 11, 2)
    assert history_date(date(2026, 12, 25), holidays=[date(2026, 12, 25)]) == date(2026, 12, 24)
    assert isinstance(history_date(date(2026, 10, 31)), date)
