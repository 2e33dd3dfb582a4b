"""Which portfolios a table's commits changed: the change log the incremental path reads.

Every per-portfolio table (bronze trades and cash flows, the silver state) is written either
whole (a full rebuild) or by replacing the rows of some portfolios. A write of the second
kind records, in its Delta commit, the portfolios it replaced under ``CHANGED_KEY`` (a JSON
list of ids; ``[]``: rows were rewritten but no portfolio's content changed). A commit
without that key changed every portfolio.

A table built from others records the versions it read under ``INPUTS_KEY``
(``table@version,...``). The next build then needs only the portfolios changed in its inputs
since those versions (``changed_portfolios`` over the commits in between): this is how the
intraday path updates only the portfolios a new file touches, and how a run killed halfway
is caught up by the next one, whatever it is (each table catches up on its own inputs).

Rules (``changed_portfolios``): commits are the Delta ``history()`` entries after the
recorded version; a commit whose operation changes no data (``NEUTRAL_OPERATIONS``) is
skipped; one that lacks ``CHANGED_KEY`` makes the answer ``None`` (every portfolio); else
the answer is the union of the lists. Over-reporting is always safe (a rebuild of a
portfolio is idempotent); under-reporting never happens by construction.
"""

from __future__ import annotations

import json
from collections.abc import Iterable

CHANGED_KEY = "portfolios"
INPUTS_KEY = "inputs"
MOMENT_KEY = "moment"
# Written by every build that keeps this change log; a table last built without it (by an
# older version of the pipeline) is rebuilt whole once.
FORMAT_KEY = "change_log"
FORMAT = "1"
# Delta operations that rewrite or annotate files without changing any row's content.
NEUTRAL_OPERATIONS = frozenset({"OPTIMIZE", "VACUUM START", "VACUUM END", "SET TBLPROPERTIES", "ADD CONSTRAINT"})


def encode_portfolios(ids: Iterable[str]) -> str:
    """The ``CHANGED_KEY`` value for ``ids``: a JSON list of the distinct ids, sorted (so the
    same change always writes the same text)."""
    return json.dumps(sorted({str(i) for i in ids if i is not None}), separators=(",", ":"))


def changed_portfolios(commits: Iterable[dict]) -> frozenset[str] | None:
    """The portfolios changed by ``commits`` (Delta commit infos, any order), or ``None`` when
    one of them changed every portfolio (it records no ``CHANGED_KEY``). Rule in the module
    docstring. A malformed ``CHANGED_KEY`` value raises ``ValueError``: a change log that cannot
    be read must never be taken for "nothing changed"."""
    changed: set[str] = set()
    for commit in commits:
        if commit.get("operation") in NEUTRAL_OPERATIONS:
            continue
        text = commit.get(CHANGED_KEY)
        if text is None:
            return None
        try:
            ids = json.loads(text)
        except (TypeError, json.JSONDecodeError) as error:
            raise ValueError(f"commit {commit.get('version')}: unreadable {CHANGED_KEY!r} value {text!r}") from error
        if not isinstance(ids, list) or not all(isinstance(i, str) for i in ids):
            raise ValueError(f"commit {commit.get('version')}: {CHANGED_KEY!r} must be a list of ids, got {text!r}")
        changed.update(ids)
    return frozenset(changed)


def format_inputs(versions: dict[str, int | None]) -> str:
    """``table@version`` for each input, comma-separated (``INPUTS_KEY``); a missing table
    (version ``None``) is written ``table@-1``."""
    return ",".join(f"{table}@{-1 if version is None else version}" for table, version in versions.items())


def parse_inputs(text: str | None) -> dict[str, int]:
    """The versions recorded by ``format_inputs`` (an empty dict for ``None`` or ``""``).
    A malformed entry raises ``ValueError``."""
    versions: dict[str, int] = {}
    for entry in (text or "").split(","):
        if not entry:
            continue
        table, sep, version = entry.rpartition("@")
        if not sep or not table:
            raise ValueError(f"malformed input version {entry!r} in {text!r}")
        try:
            versions[table] = int(version)
        except ValueError as error:
            raise ValueError(f"malformed input version {entry!r} in {text!r}") from error
    return versions
