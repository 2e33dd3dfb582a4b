"""Open Delta tables kept by the process, current to the last commit.

Opening a Delta table replays its log from the last checkpoint: 20-40 ms for a table of the
standard book, and one intraday run asked for a table's version, history or rows 253 times
(4.7 s of a 15 s run). A run worker (orchestration.run_worker) executes run after run in one
process, so the handles are kept here, per table URI, and reused while they are current.

A handle at version ``v`` is current while ``_delta_log/<v+1>.json`` does not exist: Delta
commits are numbered one after another and each is created whole (put-if-absent), so a commit
by any process shows as that file. A table deleted and created again under the same path (tests
do it) starts a new ``…0.json``; its inode and change time are the table's identity, checked on
each use. Both checks are one ``stat`` each. Object-store tables (``s3://…``) are opened afresh
each time: a listing there costs what an open costs.

A stale handle is replaced by a fresh one, never updated in place (``update_incremental``),
since a frame read from it may be in use. The one change in place is a write:
``LakeResource.write`` commits through the table's handle, and delta-rs moves it to the version
committed. A lazy scan of the table still to be collected would then read that version; the
pipeline collects its scans before it writes.
"""

from __future__ import annotations

import os

from deltalake import DeltaTable

from assets.lru import LruMap

# Tables whose handles are kept; the least recently used beyond it is dropped. The pipeline has
# about 60 tables; tests create many lakes, one per temporary folder.
CAPACITY = 128

_handles: LruMap[tuple[tuple[int, int], DeltaTable]] = LruMap(CAPACITY)


def _commit_file(uri: str, version: int) -> str:
    return os.path.join(uri, "_delta_log", f"{version:020d}.json")


def _identity(uri: str) -> tuple[int, int] | None:
    """Inode and change time of the table's first commit file; None when it has none."""
    try:
        info = os.stat(_commit_file(uri, 0))
    except OSError:
        return None
    return info.st_ino, info.st_ctime_ns


def current_table(uri: str) -> DeltaTable | None:
    """The Delta table at ``uri`` at its latest version, or None when there is no table there.

    A local table's handle is reused while no later commit exists and the table is the same
    one (see the module docstring); otherwise a fresh one is opened and kept."""
    if "://" in uri:
        return DeltaTable(uri) if DeltaTable.is_deltatable(uri) else None
    identity = _identity(uri)
    if identity is None:
        # no first commit: no table, or one whose early log was cleaned up (not kept)
        _handles.pop(uri)
        return DeltaTable(uri) if DeltaTable.is_deltatable(uri) else None
    entry = _handles.get(uri)
    if entry is not None and entry[0] == identity and not os.path.exists(_commit_file(uri, entry[1].version() + 1)):
        return entry[1]
    table = DeltaTable(uri)
    _handles.put(uri, (identity, table))
    return table
