"""The landing watch: files renamed into place are seen as they are renamed, and forgotten once
changed; the sensor asks for such a file at its first look, without waiting for it to settle."""

from __future__ import annotations

import os
import time

from orchestration.landing_watch import LandingWatch, landing_watch
from orchestration.sensors import landing_requests
from test_sensors import FakeClock


def _until(condition, timeout_s: float = 5.0) -> None:
    """Wait for the watch thread to have handled the events so far."""
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, "the watch reported nothing within 5 s"
        time.sleep(0.01)


def _rename_into_place(folder, name: str, text: str) -> None:
    partial = folder / f".{name}"
    partial.write_text(text)
    os.replace(partial, folder / name)


def test_a_rename_into_place_is_recorded_until_the_file_changes(tmp_path):
    watch = LandingWatch(tmp_path, ("trades", "prices"))
    try:
        trades = tmp_path / "trades"
        started = time.monotonic()
        _rename_into_place(trades, "a.csv", "trade_id\nT1\n")
        watch.wait(5.0)  # woken by the rename, long before 5 s
        assert time.monotonic() - started < 2.0
        _until(lambda: "trades/a.csv" in watch.renamed())
        stat = (trades / "a.csv").stat()
        assert watch.renamed() == {"trades/a.csv": [stat.st_size, stat.st_mtime_ns]}
        # a write after the rename: no longer as the rename left it
        with (trades / "a.csv").open("a") as f:
            f.write("T2\n")
        _until(lambda: watch.renamed() == {})
        # partial uploads, files written in place and other kinds are never recorded
        (trades / "b.csv.part").write_text("trade_id\n")
        (trades / "c.csv").write_text("trade_id\n")
        (tmp_path / "cash_flows").mkdir()
        _rename_into_place(tmp_path / "cash_flows", "f.csv", "flow_id\n")
        _rename_into_place(tmp_path / "prices", "p.csv", "date\n")  # the marker that the events above were handled
        _until(lambda: "prices/p.csv" in watch.renamed())
        assert set(watch.renamed()) == {"prices/p.csv"}
        (tmp_path / "prices" / "p.csv").unlink()
        _until(lambda: watch.renamed() == {})
    finally:
        watch.stop()


def test_the_sensor_asks_for_a_file_the_watch_saw_renamed_at_its_first_look(tmp_path):
    landing = tmp_path / "landing"
    watch = landing_watch(landing, ("trades", "prices"))
    assert landing_watch(landing, ("trades", "prices")) is watch  # one per folder and process
    clock = FakeClock()
    _, cursor = landing_requests(landing, {}, {}, settle_s=1.0, sleep=clock.sleep, clock=clock, renamed=watch.renamed)
    # renamed right after its last write: from the folder alone it would have to settle
    _rename_into_place(landing / "trades", "new.csv", "trade_id\nT1\n")
    (landing / "trades" / "in_place.csv").write_text("trade_id\nT2\n")
    _until(lambda: "trades/new.csv" in watch.renamed())
    clock.pauses.clear()
    requests, cursor = landing_requests(landing, cursor, {}, settle_s=1.0, watch_s=4.0, sleep=clock.sleep, clock=clock,
                                        renamed=watch.renamed)
    assert [r.tags["portfolio/source_file"] for r in requests] == ["trades/new.csv"] and clock.pauses == []
    # the file written in place still settles for a second
    requests, cursor = landing_requests(landing, cursor, {}, settle_s=1.0, watch_s=4.0, sleep=clock.sleep, clock=clock,
                                        renamed=watch.renamed)
    assert [r.tags["portfolio/source_file"] for r in requests] == ["trades/in_place.csv"] and sum(clock.pauses) >= 1.0
