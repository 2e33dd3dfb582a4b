"""The event outbox (transforms.outbox): payloads and fingerprints checked against documents
written out by hand and hashed here with hashlib, emission only on a change, per-portfolio
sequences across event types, exactly-once reads, outbox checks, subscriptions, JSON Lines."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import uuid
from datetime import date, datetime, timezone

import polars as pl
import pytest

from transforms.outbox import (
    EVENT_ID_NAMESPACE,
    LAST_SCHEMA,
    NEXT_SEQUENCE_SCHEMA,
    ORDER_PUBLISHED,
    OUTBOX_SCHEMA,
    RECOMMENDATION_PUBLISHED,
    STATE_UPDATED,
    Subscription,
    check_outbox,
    events_after,
    latest_events,
    next_sequences,
    order_events,
    parse_subscriptions,
    recommendation_events,
    select_events,
    state_events,
    to_json_lines,
)

UPDATED = datetime(2025, 3, 3, 15, 30, tzinfo=timezone.utc)
UPDATED_TEXT = "2025-03-03T15:30:00.000000Z"
RUN1 = datetime(2025, 3, 4, 6, 0, tzinfo=timezone.utc)
RUN2 = datetime(2025, 3, 5, 6, 0, 0, 250000, tzinfo=timezone.utc)
FLOATS = ("quantity", "market_value", "weight", "unrealized_pnl")


def _state() -> pl.DataFrame:
    # NAV = cash + sum of the non-cash market values: 20,000 + 90,000 - 10,000 and 5,000 + 45,000
    return pl.DataFrame(
        {
            "portfolio_id": ["P0002", "P0001"],
            "total_value": [50_000.0, 100_000.0],
            "cash_balance": [5_000.0, 20_000.0],
            "last_updated": [UPDATED, UPDATED],
        }
    )


def _positions() -> pl.DataFrame:
    return pl.DataFrame(
        {
            "portfolio_id": ["P0001", "P0001", "P0001", "P0002", "P0002"],
            "instrument_id": ["BBB", "AAA", "CASH:USD", "CCC", "CASH:USD"],
            "position_type": ["SHORT", "LONG", "CASH", "LONG", "CASH"],
            "quantity": [-50.0, 100.0, 20_000.0, 300.0, 5_000.0],
            "market_value": [-10_000.0, 90_000.0, 20_000.0, 45_000.0, 5_000.0],
            "weight": [-0.1, 0.9, 0.2, 0.9, 0.1],
            "unrealized_pnl": [-500.0, 1_000.0, 0.0, 0.0, 0.0],
            "last_updated": [UPDATED] * 5,
        }
    )


def _sha(document) -> str:
    text = json.dumps(document, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()


def _first_run() -> pl.DataFrame:
    return state_events(_state(), _positions(), None, run_id="run-1", emitted_at=RUN1)


# --- state events ---------------------------------------------------------------------------------


def test_first_run_emits_one_event_per_portfolio_with_the_documented_payload():
    out = _first_run()
    assert out.schema == pl.Schema(OUTBOX_SCHEMA)
    assert out["portfolio_id"].to_list() == ["P0001", "P0002"]
    assert out["sequence"].to_list() == [1, 1]
    assert out["event_type"].to_list() == [STATE_UPDATED] * 2
    assert out["run_id"].to_list() == ["run-1"] * 2
    assert out["timestamp"].to_list() == [RUN1, RUN1]
    # event ids: uuid5 of "<portfolio_id>:<sequence>"
    assert out["event_id"].to_list() == [str(uuid.uuid5(EVENT_ID_NAMESPACE, f"P000{i}:1")) for i in (1, 2)]

    p1 = json.loads(out["payload"][0])
    assert set(p1) == {"event_id", "timestamp", "portfolio_id", "total_value", "cash_balance", "positions", "last_updated"}
    assert p1["event_id"] == out["event_id"][0]
    assert p1["timestamp"] == "2025-03-04T06:00:00.000000Z"
    assert (p1["portfolio_id"], p1["total_value"], p1["cash_balance"], p1["last_updated"]) == ("P0001", 100_000.0, 20_000.0, UPDATED_TEXT)
    # the CASH row is not a position; the rest sorted by instrument_id, the SHORT signed
    positions = [
        {"instrument_id": "AAA", "quantity": 100.0, "market_value": 90_000.0, "weight": 0.9, "unrealized_pnl": 1_000.0, "last_updated": UPDATED_TEXT},
        {"instrument_id": "BBB", "quantity": -50.0, "market_value": -10_000.0, "weight": -0.1, "unrealized_pnl": -500.0, "last_updated": UPDATED_TEXT},
    ]
    assert p1["positions"] == positions
    assert all(list(p) == sorted(p) for p in p1["positions"])
    # canonical text: sorted keys, no whitespace
    assert out["payload"][0] == json.dumps(p1, sort_keys=True, separators=(",", ":"))
    assert " " not in out["payload"][0] and "\n" not in out["payload"][0]
    assert out["payload"][0].startswith('{"cash_balance":20000.0,"event_id":')

    # fingerprint: the content (payload without event_id and timestamp); these values sit on
    # the fingerprint grid already, so quantising leaves them as they are
    content = {"portfolio_id": "P0001", "total_value": 100_000.0, "cash_balance": 20_000.0, "positions": positions, "last_updated": UPDATED_TEXT}
    assert out["fingerprint"][0] == _sha(content)
    p2 = json.loads(out["payload"][1])
    assert [p["instrument_id"] for p in p2["positions"]] == ["CCC"]
    assert out["fingerprint"][1] == _sha({k: v for k, v in p2.items() if k not in ("event_id", "timestamp")})


def test_same_input_again_emits_nothing_whatever_the_run_or_time():
    first = _first_run()
    again = state_events(_state(), _positions(), first, run_id="run-2", emitted_at=RUN2)
    assert again.height == 0 and again.schema == pl.Schema(OUTBOX_SCHEMA)
    # replaying against the outbox before the run gives the same events, ids included
    assert state_events(_state(), _positions(), None, run_id="run-1", emitted_at=RUN1).equals(first)


def test_a_changed_position_emits_one_event_for_that_portfolio_only():
    first = _first_run()
    positions = _positions().with_columns(
        pl.when(pl.col("instrument_id") == "CCC").then(310.0).otherwise(pl.col("quantity")).alias("quantity")
    )
    out = state_events(_state(), positions, first, run_id="run-2", emitted_at=RUN2)
    assert out["portfolio_id"].to_list() == ["P0002"]
    assert out["sequence"].to_list() == [2]
    assert out["event_id"][0] == str(uuid.uuid5(EVENT_ID_NAMESPACE, "P0002:2"))
    payload = json.loads(out["payload"][0])
    assert payload["positions"][0]["quantity"] == 310.0
    assert payload["timestamp"] == "2025-03-05T06:00:00.250000Z"
    check_outbox(pl.concat([first, out]))


def test_last_bit_noise_emits_nothing_but_a_cent_does():
    first = _first_run()
    noisy_state = _state().with_columns(pl.col("total_value", "cash_balance") * (1 + 1e-15))
    noisy = _positions().with_columns(*[pl.col(c) * (1 + 1e-15) for c in FLOATS]).with_columns(
        # values that should be zero carry absolute noise on either side of it
        pl.when(pl.col("unrealized_pnl") == 0.0).then(-1e-12).otherwise(pl.col("unrealized_pnl")).alias("unrealized_pnl"),
    )
    assert noisy["market_value"].to_list() != _positions()["market_value"].to_list()
    assert state_events(noisy_state, noisy, first, run_id="run-2", emitted_at=RUN2).height == 0
    # the payload keeps the numbers as given: only the fingerprint is quantised
    replay = state_events(noisy_state, noisy, None, run_id="run-2", emitted_at=RUN2)
    assert json.loads(replay["payload"][0])["total_value"] == 100_000.0 * (1 + 1e-15)
    assert replay["fingerprint"].to_list() == first["fingerprint"].to_list()

    cent = _positions().with_columns(
        pl.when(pl.col("instrument_id") == "AAA").then(pl.col("market_value") + 0.01).otherwise(pl.col("market_value")).alias("market_value")
    )
    assert state_events(_state(), cent, first, run_id="run-2", emitted_at=RUN2)["portfolio_id"].to_list() == ["P0001"]


def test_row_order_does_not_change_the_output():
    out = _first_run()
    shuffled = state_events(
        _state().reverse(), _positions().sample(fraction=1.0, shuffle=True, seed=3), None, run_id="run-1", emitted_at=RUN1
    )
    assert shuffled.equals(out)


def test_portfolio_without_positions_and_positions_of_other_portfolios():
    state = pl.concat([_state(), pl.DataFrame({"portfolio_id": ["P0003"], "total_value": [1.0], "cash_balance": [1.0], "last_updated": [UPDATED]})])
    stray = pl.DataFrame({**{c: [v] for c, v in _positions().row(0, named=True).items()}, "portfolio_id": ["P0009"]})
    out = state_events(state, pl.concat([_positions(), stray.select(_positions().columns)]), None, run_id="r", emitted_at=RUN1)
    assert out["portfolio_id"].to_list() == ["P0001", "P0002", "P0003"]
    assert json.loads(out["payload"][2])["positions"] == []


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda s, p: (s, p.drop("weight")), "positions is missing column"),
        (lambda s, p: (s.drop("cash_balance"), p), "state is missing column"),
        (lambda s, p: (s, pl.concat([p, p.head(1)])), r"duplicate key \(portfolio_id, instrument_id\)"),
        (lambda s, p: (pl.concat([s, s.head(1)]), p), r"duplicate key \(portfolio_id\)"),
        (lambda s, p: (s, p.with_columns(pl.lit("OPTION").alias("position_type"))), "unknown position_type"),
        (lambda s, p: (s, p.with_columns(pl.lit(None, pl.String).alias("instrument_id"))), "null instrument_id"),
        (lambda s, p: (s.with_columns(pl.lit(float("nan")).alias("total_value")), p), "non-finite total_value"),
        (lambda s, p: (s, p.with_columns(pl.lit("x").alias("quantity"))), "quantity cannot be read"),
    ],
)
def test_bad_state_inputs_raise(change, message):
    state, positions = change(_state(), _positions())
    with pytest.raises(ValueError, match=message):
        state_events(state, positions, None, run_id="r", emitted_at=RUN1)


def test_bad_run_arguments_and_bad_last_raise():
    with pytest.raises(ValueError, match="run_id"):
        state_events(_state(), _positions(), None, run_id="", emitted_at=RUN1)
    with pytest.raises(ValueError, match="emitted_at"):
        state_events(_state(), _positions(), None, run_id="r", emitted_at=date(2025, 3, 4))
    with pytest.raises(ValueError, match="last is missing column"):
        state_events(_state(), _positions(), _first_run().drop("fingerprint"), run_id="r", emitted_at=RUN1)


# --- recommendations, orders and the chain ------------------------------------------------------------


def _recommendations(run: str = "rb-7") -> pl.DataFrame:
    rows = [("P0001", "S1", "AAA", 0.9, 0.8, 0.8, -10.0, -9000.0), ("P0001", "S1", "DDD", 0.0, 0.1, 0.1, 20.0, 10000.0),
            ("P0002", "S2", "CCC", 0.9, 0.95, 0.95, 16.0, 2400.0)]
    return pl.DataFrame(
        {
            "run_id": [run] * 3,
            "as_of": [date(2025, 3, 4)] * 3,
            "portfolio_id": [r[0] for r in rows],
            "strategy_id": [r[1] for r in rows],
            "instrument_id": [r[2] for r in rows],
            "current_weight": [r[3] for r in rows],
            "target_weight": [r[4] for r in rows],
            "recommended_weight": [r[5] for r in rows],
            "trade_quantity": [r[6] for r in rows],
            "trade_value": [r[7] for r in rows],
            "estimated_spread": [4.5, 5.0, 1.2],
            "estimated_commission": [1.0, 1.0, 1.0],
            "estimated_impact": [0.5, 0.6, 0.1],
            "estimated_tax": [-12.5, 0.0, 0.0],
            "solver_status": ["optimal"] * 3,
        }
    )


def _allocations_and_orders(run: str = "rb-7") -> tuple[pl.DataFrame, pl.DataFrame]:
    allocations = pl.DataFrame(
        {
            "run_id": [run] * 2,
            "portfolio_id": ["P0001", "P0001"],
            "instrument_id": ["DDD", "AAA"],
            "side": ["BUY", "SELL"],
            "quantity": [20.0, 10.0],
            "crossed_quantity": [0.0, 10.0],
            "external_quantity": [20.0, 0.0],
            "order_id": [f"{run}-DDD-BUY-001", None],
        }
    )
    orders = pl.DataFrame(
        {
            "run_id": [run],
            "order_id": [f"{run}-DDD-BUY-001"],
            "instrument_id": ["DDD"],
            "side": ["BUY"],
            "quantity": [20.0],
            "price": [500.0],
            "currency": ["USD"],
            "notional": [10000.0],
            "wave": [2],
            "batch": [1],
            "batches": [1],
        }
    )
    return allocations, orders


def _chain(previous: pl.DataFrame, run_id: str = "run-2", rebalance: str = "rb-7"):
    """State, then recommendations, then orders in one run, each step given the events before it."""
    positions = _positions().with_columns(
        pl.when(pl.col("instrument_id") == "AAA").then(101.0).otherwise(pl.col("quantity")).alias("quantity")
    )
    last = latest_events(previous)
    states = state_events(_state(), positions, last, run_id=run_id, emitted_at=RUN2)
    last = latest_events(last, states)
    recs = recommendation_events(_recommendations(rebalance), last, run_id=run_id, emitted_at=RUN2)
    last = latest_events(last, recs)
    allocations, orders = _allocations_and_orders(rebalance)
    ords = order_events(allocations, orders, last, run_id=run_id, emitted_at=RUN2)
    return states, recs, ords


def test_state_then_recommendations_then_orders_number_consecutively():
    first = _first_run()
    states, recs, ords = _chain(first)
    assert [(r["portfolio_id"], r["sequence"]) for r in states.iter_rows(named=True)] == [("P0001", 2)]
    assert [(r["portfolio_id"], r["sequence"]) for r in recs.iter_rows(named=True)] == [("P0001", 3), ("P0002", 2)]
    assert [(r["portfolio_id"], r["sequence"]) for r in ords.iter_rows(named=True)] == [("P0001", 4)]
    outbox = pl.concat([first, states, recs, ords])
    check_outbox(outbox)
    assert outbox.filter(pl.col("portfolio_id") == "P0001").sort("sequence")["event_type"].to_list() == [
        STATE_UPDATED, STATE_UPDATED, RECOMMENDATION_PUBLISHED, ORDER_PUBLISHED,
    ]
    # the next numbers, and an unchanged state after events of other types emits nothing
    assert next_sequences(outbox).rows() == [("P0001", 5), ("P0002", 3)]
    assert next_sequences(outbox).schema == pl.Schema(NEXT_SEQUENCE_SCHEMA)
    positions = _positions().with_columns(
        pl.when(pl.col("instrument_id") == "AAA").then(101.0).otherwise(pl.col("quantity")).alias("quantity")
    )
    assert state_events(_state(), positions, outbox, run_id="run-3", emitted_at=RUN2).height == 0
    # the latest event per (portfolio, type) is all a run needs
    latest = latest_events(outbox)
    assert latest.schema == pl.Schema(LAST_SCHEMA)
    assert latest.select("portfolio_id", "event_type", "sequence").rows() == [
        ("P0001", ORDER_PUBLISHED, 4), ("P0001", STATE_UPDATED, 2), ("P0001", RECOMMENDATION_PUBLISHED, 3),
        ("P0002", STATE_UPDATED, 1), ("P0002", RECOMMENDATION_PUBLISHED, 2),
    ]
    assert [e.equals(f) for e, f in zip(_chain(first), _chain(latest_events(first)))] == [True, True, True]


def test_recommendation_and_order_payloads():
    _, recs, ords = _chain(_first_run())
    rec = json.loads(recs["payload"][0])
    assert set(rec) == {"event_id", "timestamp", "portfolio_id", "rebalance_run_id", "as_of", "recommendations"}
    assert (rec["portfolio_id"], rec["rebalance_run_id"], rec["as_of"]) == ("P0001", "rb-7", "2025-03-04")
    assert [r["instrument_id"] for r in rec["recommendations"]] == ["AAA", "DDD"]
    assert rec["recommendations"][0] == {
        "instrument_id": "AAA", "strategy_id": "S1", "current_weight": 0.9, "target_weight": 0.8, "recommended_weight": 0.8,
        "trade_quantity": -10.0, "trade_value": -9000.0, "estimated_spread": 4.5, "estimated_commission": 1.0,
        "estimated_impact": 0.5, "estimated_tax": -12.5, "solver_status": "optimal",
    }
    assert recs["fingerprint"][0] == _sha({k: v for k, v in rec.items() if k not in ("event_id", "timestamp")})

    order = json.loads(ords["payload"][0])
    assert set(order) == {"event_id", "timestamp", "portfolio_id", "rebalance_run_id", "orders"}
    # the fully crossed allocation (no order) first within its instrument; sorted by instrument
    assert order["orders"] == [
        {"order_id": None, "instrument_id": "AAA", "side": "SELL", "quantity": 10.0, "crossed_quantity": 10.0,
         "external_quantity": 0.0, "price": None, "currency": None, "wave": None, "batch": None},
        {"order_id": "rb-7-DDD-BUY-001", "instrument_id": "DDD", "side": "BUY", "quantity": 20.0, "crossed_quantity": 0.0,
         "external_quantity": 20.0, "price": 500.0, "currency": "USD", "wave": 2, "batch": 1},
    ]


def test_a_replayed_rebalance_run_publishes_once_and_a_new_one_publishes_again():
    first = _first_run()
    states, recs, ords = _chain(first)
    outbox = pl.concat([first, states, recs, ords])
    assert recommendation_events(_recommendations(), outbox, run_id="run-2", emitted_at=RUN2).height == 0
    allocations, orders = _allocations_and_orders()
    assert order_events(allocations, orders, outbox, run_id="run-2", emitted_at=RUN2).height == 0
    again = recommendation_events(_recommendations("rb-8"), outbox, run_id="run-3", emitted_at=RUN2)
    assert again.select("portfolio_id", "sequence").rows() == [("P0001", 5), ("P0002", 3)]


def test_bad_recommendation_and_order_inputs_raise():
    with pytest.raises(ValueError, match="duplicate key"):
        recommendation_events(pl.concat([_recommendations(), _recommendations().head(1)]), None, run_id="r", emitted_at=RUN1)
    two_runs = pl.concat([_recommendations(), _recommendations("rb-9").with_columns(pl.col("instrument_id") + "2")])
    with pytest.raises(ValueError, match="several run_id values for portfolio P0001"):
        recommendation_events(two_runs, None, run_id="r", emitted_at=RUN1)
    with pytest.raises(ValueError, match="recommendations is missing column"):
        recommendation_events(_recommendations().drop("solver_status"), None, run_id="r", emitted_at=RUN1)
    allocations, orders = _allocations_and_orders()
    with pytest.raises(ValueError, match="not in orders"):
        order_events(allocations, orders.head(0), None, run_id="r", emitted_at=RUN1)
    with pytest.raises(ValueError, match="duplicate key"):
        order_events(pl.concat([allocations, allocations.tail(1)]), orders, None, run_id="r", emitted_at=RUN1)


# --- reading and checking ----------------------------------------------------------------------------


def test_events_after_reads_every_event_exactly_once_in_order():
    first = _first_run()
    outbox = pl.concat([first, *_chain(first)])
    after = events_after(outbox.sample(fraction=1.0, shuffle=True, seed=1), "P0001", 2)
    assert after.schema == pl.Schema(OUTBOX_SCHEMA)
    assert after["sequence"].to_list() == [3, 4]
    assert events_after(outbox, "P0001", 4).height == 0
    assert events_after(outbox, "P0009", 0).height == 0

    # a consumer reads after 0 once the first run is out, then after the last sequence it saw
    seen = events_after(first, "P0001", 0)
    second = events_after(outbox, "P0001", seen["sequence"].max())
    read = pl.concat([seen, second])
    assert read["sequence"].to_list() == [1, 2, 3, 4]
    assert read["event_id"].n_unique() == read.height
    assert set(read["event_id"]) == set(outbox.filter(pl.col("portfolio_id") == "P0001")["event_id"])


def test_check_outbox_catches_gaps_duplicates_and_repeated_ids():
    first = _first_run()
    outbox = pl.concat([first, *_chain(first)])
    check_outbox(outbox)
    gap = outbox.filter(~((pl.col("portfolio_id") == "P0001") & (pl.col("sequence") == 3)))
    with pytest.raises(ValueError, match="gap for portfolio P0001: sequence 4 follows 2"):
        check_outbox(gap)
    with pytest.raises(ValueError, match="gap for portfolio P0001: sequence 2 follows 0"):
        check_outbox(outbox.filter(~((pl.col("portfolio_id") == "P0001") & (pl.col("sequence") == 1))))
    # archived old events: consecutive is enough when asked
    check_outbox(outbox.filter(pl.col("sequence") > 1), from_start=False)
    duplicate = pl.concat([outbox, outbox.head(1).with_columns(pl.lit("another-id").alias("event_id"))])
    with pytest.raises(ValueError, match="duplicate sequence 1 for portfolio P0001"):
        check_outbox(duplicate)
    repeated = outbox.with_columns(pl.when(pl.col("sequence") == 2).then(pl.lit(outbox["event_id"][0])).otherwise(pl.col("event_id")).alias("event_id"))
    with pytest.raises(ValueError, match="duplicate event_id"):
        check_outbox(repeated)
    with pytest.raises(ValueError, match="unknown event_type"):
        check_outbox(outbox.with_columns(pl.lit("other").alias("event_type")))


# --- subscriptions and exports ------------------------------------------------------------------------

SPEC = {
    "subscribers": [
        {"name": "risk-desk", "events": [STATE_UPDATED], "portfolios": ["P0001", "P0003"], "format": "jsonl"},
        {"name": "ops", "events": [ORDER_PUBLISHED, RECOMMENDATION_PUBLISHED], "portfolios": "*", "format": "parquet"},
        {"name": "desk_2", "events": list((STATE_UPDATED, RECOMMENDATION_PUBLISHED)), "portfolios": "P*2", "format": "jsonl"},
    ]
}


def test_subscriptions_parse():
    subs = parse_subscriptions(SPEC)
    assert subs[0] == Subscription("risk-desk", (STATE_UPDATED,), ("P0001", "P0003"), "jsonl")
    assert subs[1].portfolios == ("*",) and subs[1].format == "parquet"
    assert [s.name for s in subs] == ["risk-desk", "ops", "desk_2"]
    with pytest.raises(dataclasses.FrozenInstanceError):
        subs[0].name = "other"
    assert parse_subscriptions(None) == () and parse_subscriptions({"subscribers": []}) == ()


def _with(**changes):
    entry = {"name": "a", "events": [STATE_UPDATED], "portfolios": "*", "format": "jsonl"} | changes
    return {"subscribers": [{k: v for k, v in entry.items() if v is not ...}]}


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        (_with(color="red"), "unknown key"),
        (_with(events=["trade_done"]), "unknown event type 'trade_done'"),
        (_with(events=STATE_UPDATED), "events must be a list"),
        (_with(events=[]), "events is empty"),
        (_with(format="csv"), "unknown format 'csv'"),
        (_with(name=""), "empty or missing name"),
        (_with(name=...), "empty or missing name"),
        (_with(name="../x"), "name '../x' must be"),
        (_with(portfolios=[]), "portfolios is empty"),
        (_with(portfolios=[1]), "not a non-empty string"),
        (_with(format=...), "missing key"),
        ({"subscribers": SPEC["subscribers"] + [SPEC["subscribers"][0]]}, "duplicate subscriber name 'risk-desk'"),
        ({"subscriber": []}, "unknown top-level key"),
        ({"subscribers": {"name": "a"}}, "must be a list"),
        (["a"], "must be a mapping"),
    ],
)
def test_bad_subscription_specs_raise(spec, message):
    with pytest.raises(ValueError, match=message):
        parse_subscriptions(spec)


def test_select_events_by_type_and_portfolio():
    first = _first_run()
    outbox = pl.concat([first, *_chain(first)]).sample(fraction=1.0, shuffle=True, seed=5)
    risk, ops, desk = parse_subscriptions(SPEC)
    got = select_events(risk, outbox)
    assert got.schema == pl.Schema(OUTBOX_SCHEMA)
    assert got.select("portfolio_id", "sequence", "event_type").rows() == [("P0001", 1, STATE_UPDATED), ("P0001", 2, STATE_UPDATED)]
    assert select_events(ops, outbox).select("portfolio_id", "sequence").rows() == [("P0001", 3), ("P0001", 4), ("P0002", 2)]
    assert select_events(desk, outbox).select("portfolio_id", "sequence").rows() == [("P0002", 1), ("P0002", 2)]
    assert desk.matches("P0002") and not desk.matches("P0001")


def test_json_lines_round_trip_and_are_deterministic():
    first = _first_run()
    outbox = pl.concat([first, *_chain(first)])
    text = to_json_lines(outbox)
    assert text.endswith("\n") and to_json_lines(outbox.head(0)) == ""
    lines = text.splitlines()
    assert len(lines) == outbox.height
    objects = [json.loads(line) for line in lines]
    assert [(o["portfolio_id"], o["sequence"]) for o in objects] == sorted(outbox.select("portfolio_id", "sequence").rows())
    by_id = {r["event_id"]: r for r in outbox.iter_rows(named=True)}
    for o in objects:
        assert set(o) == {"event_id", "event_type", "portfolio_id", "sequence", "timestamp", "run_id", "payload"}
        row = by_id[o["event_id"]]
        assert (o["event_type"], o["portfolio_id"], o["sequence"], o["run_id"]) == (row["event_type"], row["portfolio_id"], row["sequence"], row["run_id"])
        assert o["payload"] == json.loads(row["payload"])
        assert o["timestamp"] == o["payload"]["timestamp"]
    assert objects[0]["timestamp"] == "2025-03-04T06:00:00.000000Z"
    assert to_json_lines(outbox.reverse()) == text
