"""Files renamed into the landing folder, seen as they are renamed.

A writer that renames into place has finished the file before the rename, so the file is
complete the moment it appears under its final name. The landing folder read alone cannot tell
such a file from one still being written in place when the rename follows the last write
within the file system's timestamp tick (4 ms here: ``orchestration.sensors``), and then the
sensor waits a second to see it unchanged. The operating system can tell: ``watchdog``
(inotify on Linux, FSEvents on macOS, polling elsewhere) reports each rename within a watched
folder as a move to its final name. ``LandingWatch`` records, per file renamed into place, its
size and modification time right after the rename, and forgets the record when the file is
modified or deleted afterwards, so the sensor takes a file as renamed into place only while it
is as the rename left it.

What it does not see: files renamed while no watch ran (before the code server started, or
while it restarted), and files moved in from a folder outside the watched one, which inotify
reports as created, like a file opened to be written. Those take the sensor's other rules.
The watch lives in the process that evaluates the sensor (the code server), one per landing
folder, started by the first tick.
"""

from __future__ import annotations

import atexit
import os
import threading
from pathlib import Path

from watchdog.events import (
    FileCreatedEvent,
    FileDeletedEvent,
    FileModifiedEvent,
    FileMovedEvent,
    FileSystemEvent,
    FileSystemEventHandler,
)
from watchdog.observers import Observer

from assets.ingest import is_landing_candidate


class LandingWatch(FileSystemEventHandler):
    """Watches ``landing_dir/<kind>`` (any depth) for ``kinds``; ``renamed()`` gives
    ``{path relative to landing_dir: [size, mtime_ns]}`` of the files renamed into place and not
    changed since, and ``wait(seconds)`` sleeps until the next such rename or for ``seconds``."""

    def __init__(self, landing_dir: Path, kinds: tuple[str, ...]):
        super().__init__()
        self.landing_dir = Path(landing_dir).resolve()
        self._renamed: dict[str, list[int]] = {}
        self._lock = threading.Lock()
        self._arrived = threading.Event()
        self._observer = Observer()
        self._observer.daemon = True
        for kind in kinds:
            folder = self.landing_dir / kind
            folder.mkdir(parents=True, exist_ok=True)  # a kind's folder made later would go unwatched
            # not the opens and closes: the sensor's and the ingest's own reads would be reported
            self._observer.schedule(self, str(folder), recursive=True, event_filter=[
                FileMovedEvent, FileModifiedEvent, FileCreatedEvent, FileDeletedEvent])
        self._observer.start()

    def _relative(self, path: str | bytes) -> str | None:
        """``path`` relative to the landing folder, or None for a partial upload or a path outside it."""
        path = Path(os.fsdecode(path))
        if not is_landing_candidate(path):
            return None
        try:
            return path.resolve().relative_to(self.landing_dir).as_posix()
        except ValueError:
            return None

    def on_moved(self, event: FileSystemEvent) -> None:
        if event.is_directory:
            return
        with self._lock:
            self._renamed.pop(self._relative(event.src_path) or "", None)
        target = self._relative(event.dest_path)
        if target is None:
            return
        try:
            stat = os.stat(self.landing_dir / target)
        except OSError:
            return
        with self._lock:
            self._renamed[target] = [stat.st_size, stat.st_mtime_ns]
        self._arrived.set()

    def _forget(self, event: FileSystemEvent) -> None:
        path = self._relative(event.src_path)
        if path is not None:
            with self._lock:
                self._renamed.pop(path, None)

    # a write or truncation after the rename, or the file's removal: no longer as renamed
    on_modified = on_deleted = on_created = _forget

    def renamed(self) -> dict[str, list[int]]:
        """The files renamed into place and not changed since: ``{path: [size, mtime_ns]}``."""
        with self._lock:
            return dict(self._renamed)

    def wait(self, seconds: float) -> None:
        """Sleep ``seconds``, or less if a file is renamed into place meanwhile."""
        self._arrived.wait(seconds)
        self._arrived.clear()

    def alive(self) -> bool:
        return self._observer.is_alive()

    def stop(self) -> None:
        self._observer.stop()
        self._observer.join(5)


_WATCHES: dict[Path, LandingWatch] = {}
_WATCHES_LOCK = threading.Lock()


@atexit.register
def _stop_all() -> None:
    # a watch thread still running while the interpreter shuts down keeps native objects
    # alive past their modules (nanobind reports DuckDB's as leaked)
    for watch in list(_WATCHES.values()):
        watch.stop()


def landing_watch(landing_dir: Path, kinds: tuple[str, ...]) -> LandingWatch | None:
    """The process's watch of ``landing_dir`` (started on first use, and again if it died), or
    None when the folder cannot be watched (the sensor then goes by its other rules)."""
    key = Path(landing_dir).resolve()
    with _WATCHES_LOCK:
        watch = _WATCHES.get(key)
        if watch is not None and watch.alive():
            return watch
        try:
            watch = LandingWatch(key, kinds)
        except OSError:  # no such folder and none can be made, or out of inotify watches
            return None
        _WATCHES[key] = watch
        return watch
