"""Which portfolios a state asset must rebuild: everything, or only the portfolios its inputs
changed since its own last build (the incremental path, ``transforms.changes``).

An asset names its per-portfolio inputs (tables whose writes record the portfolios they
changed) and its global inputs (reference and market data: any change there rebuilds every
portfolio). Its last commit recorded the versions it read; the scope is the union of the
portfolios the per-portfolio inputs' later commits changed. The asset then reads those
portfolios' rows only, replaces them in its tables by predicate and records the portfolios it
replaced, so the assets after it do the same.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from functools import cached_property

import polars as pl

from assets.ingest import in_predicate
from assets.resources import LakeResource
from transforms.filters import in_values
from transforms.changes import (
    CHANGED_KEY,
    FORMAT,
    FORMAT_KEY,
    INPUTS_KEY,
    MOMENT_KEY,
    NEUTRAL_OPERATIONS,
    changed_portfolios,
    encode_portfolios,
    format_inputs,
    parse_inputs,
)

# The job that decides for the changed portfolios alone (orchestration.jobs.intraday).
INTRADAY_JOB = "intraday"


def portfolio_filter(portfolios: frozenset[str] | None, column: str = "portfolio_id") -> pl.Expr | None:
    """The row filter keeping ``portfolios``' rows (``None``: every portfolio, no filter)."""
    return None if portfolios is None else in_values(column, portfolios)


@dataclass(frozen=True)
class Scope:
    """The portfolios to rebuild (``None``: every one) and the input versions they were
    planned from (recorded in the commit, so the next build starts from them).

    The versions are taken before the inputs are read, so a write landing in between is
    counted again by the next build: rebuilding a portfolio twice is harmless, missing one
    is not."""

    portfolios: frozenset[str] | None
    versions: dict[str, int | None]
    reason: str
    moment: datetime | None = None

    @cached_property
    def ids(self) -> list[str]:
        """The scope's portfolio ids, sorted (empty for a full scope)."""
        return sorted(self.portfolios) if self.portfolios is not None else []

    @property
    def full(self) -> bool:
        return self.portfolios is None

    @property
    def empty(self) -> bool:
        return self.portfolios is not None and not self.portfolios

    def where(self, column: str = "portfolio_id") -> pl.Expr | None:
        """The row filter of the scope (``None``: every row)."""
        return portfolio_filter(self.portfolios, column)

    def restrict(self, frame: pl.DataFrame, column: str = "portfolio_id") -> pl.DataFrame:
        """``frame``'s rows of the scope's portfolios."""
        return frame if self.full else frame.filter(self.where(column))

    def predicate(self) -> str | None:
        """The Delta predicate replacing the scope's rows (``None``: the whole table)."""
        if self.full:
            return None
        return in_predicate("portfolio_id", self.ids)

    def commit_metadata(self) -> dict[str, str]:
        """What the write records: the input versions, the moment it describes and (unless a
        full rebuild) the portfolios it replaced."""
        meta = {INPUTS_KEY: format_inputs(self.versions), FORMAT_KEY: FORMAT}
        if self.moment is not None:
            meta[MOMENT_KEY] = self.moment.isoformat()
        if not self.full:
            meta[CHANGED_KEY] = encode_portfolios(self.ids)
        return meta

    def describe(self) -> str:
        if self.full:
            return f"every portfolio ({self.reason})"
        return f"{len(self.ids)} portfolio(s) changed since the last build ({self.reason})"


def write_in_scope(lake: LakeResource, table: str, frame: pl.DataFrame, scope: Scope, run_id: str) -> int:
    """Replace the scope's portfolios in lake ``table`` with ``frame`` (the whole table for a
    full scope), recording the scope (``Scope.commit_metadata``); the new version."""
    return lake.write(table, frame, predicate=scope.predicate(), run_id=run_id, commit_metadata=scope.commit_metadata())


# How far back ``last_build`` looks past maintenance commits
MAINTENANCE_LOOKBACK = 100


def last_build(lake: LakeResource, table: str) -> dict | None:
    """The commit info of ``table``'s last build: its newest commit that changed rows, past the
    maintenance commits after it (``NEUTRAL_OPERATIONS``: OPTIMIZE compacts or re-clusters
    files and records no build); None when it has none within ``MAINTENANCE_LOOKBACK``."""
    commits = lake.history(table, 1)
    if commits and commits[0].get("operation") in NEUTRAL_OPERATIONS:
        commits = lake.history(table, MAINTENANCE_LOOKBACK)
    return next((c for c in commits if c.get("operation") not in NEUTRAL_OPERATIONS), None)


def rows_since_last_build(lake: LakeResource, output: str, source: str, until: int | None,
                          schema: dict[str, pl.DataType]) -> pl.DataFrame | None:
    """The rows lake table ``source`` gained after the version ``output``'s last commit
    recorded reading, up to version ``until`` (``LakeResource.rows_added``), with the columns
    and types of ``schema``; None when they cannot be told: no recorded version, or some
    commit in between rewrote rows (a rebuild), so the caller rebuilds instead."""
    last = last_build(lake, output)
    since = parse_inputs(last.get(INPUTS_KEY)).get(source) if last else None
    if since is None or until is None or since < 0:
        return None
    rows = lake.rows_added(source, since, until)
    if rows is None:
        return None
    rows = rows.with_columns(pl.lit(None, dtype).alias(c) for c, dtype in schema.items() if c not in rows.columns)
    return rows.select(list(schema)).cast(schema)


def commits_after(lake: LakeResource, table: str, version: int) -> list[dict]:
    """The commit infos of ``table`` after ``version`` (newest first)."""
    current = lake.version(table)
    if current is None or current <= version:
        return []
    return [c for c in lake.history(table, current - version) if c.get("version", version + 1) > version]


def plan_scope(
    lake: LakeResource,
    outputs: list[str],
    per_portfolio: list[str],
    global_inputs: list[str],
    *,
    moment: datetime | None = None,
    incremental: bool = True,
) -> Scope:
    """The scope of a build of ``outputs`` (lake tables written together) from ``per_portfolio``
    and ``global_inputs`` (lake tables), described at ``moment`` if it depends on one.

    Every portfolio when: ``incremental`` is False; an output has no previous build or its
    last commit recorded no change log or input versions; a global input changed since; the moment moved to
    another date (cash settles and prices roll by date) or backwards; a per-portfolio input
    was rebuilt whole or went back in version. Otherwise the portfolios the per-portfolio
    inputs' commits changed since each output's recorded versions (``changed_portfolios``).
    """
    tables = per_portfolio + global_inputs
    versions = {t: lake.version(t) for t in tables}

    def everything(reason: str) -> Scope:
        return Scope(None, versions, reason, moment)

    if not incremental:
        return everything("a full rebuild was asked for")
    changed: set[str] = set()
    for output in outputs:
        last = last_build(lake, output)
        if not last:
            return everything(f"{output} has no previous build")
        if last.get(FORMAT_KEY) != FORMAT:
            return everything(f"{output} was last built without the change log")
        recorded = parse_inputs(last.get(INPUTS_KEY))
        if any(t not in recorded for t in tables):
            return everything(f"{output}'s last build recorded no version of some input")
        for t in global_inputs:
            if recorded[t] != (versions[t] if versions[t] is not None else -1):
                return everything(f"{t} changed")
        if moment is not None:
            before = last.get(MOMENT_KEY)
            if before is None:
                return everything(f"{output}'s last build recorded no moment")
            before = datetime.fromisoformat(before)
            if before.date() != moment.date() or moment < before:
                return everything(f"the state moved from {before.isoformat()} to {moment.isoformat()}")
        for t in per_portfolio:
            now = versions[t] if versions[t] is not None else -1
            if now < recorded[t]:
                return everything(f"{t} went back from version {recorded[t]} to {now}")
            portfolios = changed_portfolios(commits_after(lake, t, recorded[t]))
            if portfolios is None:
                return everything(f"{t} was rebuilt whole")
            changed |= portfolios
    return Scope(frozenset(changed), versions, "changes recorded in the inputs' commits", moment)
