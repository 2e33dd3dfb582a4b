"""The change log the incremental path reads: which portfolios commits changed, and the input
versions a build records."""

from __future__ import annotations

import pytest

from transforms.changes import (
    CHANGED_KEY,
    changed_portfolios,
    encode_portfolios,
    format_inputs,
    parse_inputs,
)


def _commit(version: int, ids: list[str] | None, operation: str = "WRITE") -> dict:
    commit = {"version": version, "operation": operation}
    if ids is not None:
        commit[CHANGED_KEY] = encode_portfolios(ids)
    return commit


def test_encoding_is_sorted_distinct_and_stable():
    assert encode_portfolios(["P2", "P1", "P2", None]) == '["P1","P2"]'
    assert encode_portfolios([]) == "[]"
    assert changed_portfolios([{CHANGED_KEY: encode_portfolios(["P'1", 'P"2', "P,3"])}]) == {"P'1", 'P"2', "P,3"}


def test_changed_portfolios_is_the_union_of_the_commits():
    commits = [_commit(3, ["P1"]), _commit(4, ["P2", "P3"]), _commit(5, [])]
    assert changed_portfolios(commits) == {"P1", "P2", "P3"}
    assert changed_portfolios(reversed(commits)) == {"P1", "P2", "P3"}  # order does not matter
    assert changed_portfolios([]) == frozenset()  # nothing after the recorded version: nothing to do
    assert changed_portfolios([_commit(6, [])]) == frozenset()  # rows rewritten, no portfolio changed


def test_a_commit_without_the_list_changed_every_portfolio():
    assert changed_portfolios([_commit(3, ["P1"]), _commit(4, None)]) is None
    # but a compaction or a property change moves no row
    assert changed_portfolios([_commit(3, ["P1"]), _commit(4, None, "OPTIMIZE"), _commit(5, None, "SET TBLPROPERTIES")]) == {"P1"}


@pytest.mark.parametrize("text", ["not json", '{"P1": 1}', "[1, 2]", '"P1"'])
def test_an_unreadable_change_list_is_an_error_never_nothing(text):
    with pytest.raises(ValueError, match="portfolios"):
        changed_portfolios([{"version": 7, "operation": "WRITE", CHANGED_KEY: text}])


def test_input_versions_round_trip():
    versions = {"bronze/trades": 12, "bronze/portfolios": 0, "gold/risk": None}
    text = format_inputs(versions)
    assert text == "bronze/trades@12,bronze/portfolios@0,gold/risk@-1"
    assert parse_inputs(text) == {"bronze/trades": 12, "bronze/portfolios": 0, "gold/risk": -1}
    assert parse_inputs(None) == {} and parse_inputs("") == {}
    # the format the lake writes through assets.state.input_versions is the same
    assert parse_inputs("silver/positions@3,bronze/targets@1") == {"silver/positions": 3, "bronze/targets": 1}


@pytest.mark.parametrize("text", ["bronze/trades", "bronze/trades@x", "@3"])
def test_malformed_input_versions_are_errors(text):
    with pytest.raises(ValueError, match="malformed"):
        parse_inputs(text)
