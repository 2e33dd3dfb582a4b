"""The process's open Delta tables (``assets.table_handles``): reused while current, replaced
after any commit (by this lake resource or another writer) and when the table is deleted and
created again under the same path; bounded. And the values derived from them
(``assets.memo``), kept while those tables are unchanged."""

import shutil
import subprocess
import sys

import polars as pl
from deltalake import write_deltalake

from assets import table_handles
from assets.lru import LruMap
from assets.memo import derived
from assets.resources import LakeResource


def _frame(n: int, start: int = 0) -> pl.DataFrame:
    return pl.DataFrame({"portfolio_id": [f"P{i % 3}" for i in range(start, start + n)], "x": list(range(start, start + n))})


def test_a_handle_is_reused_until_a_commit_then_replaced(tmp_path):
    lake = LakeResource(root=str(tmp_path))
    assert lake.table("silver/t") is None and lake.version("silver/t") is None
    lake.write("silver/t", _frame(5), run_id="r1")
    first = lake.table("silver/t")
    assert lake.table("silver/t") is first and first.version() == 0

    # a commit by another writer (not through this resource) is seen at the next use
    write_deltalake(lake.uri("silver/t"), _frame(4, 5).to_arrow(), mode="append")
    assert lake.version("silver/t") == 1
    assert lake.table("silver/t") is not first
    assert lake.read("silver/t").height == 9
    assert lake.scan("silver/t").select(pl.len()).collect().item() == 9
    assert [c["version"] for c in lake.history("silver/t")] == [1, 0]

    # a write through the resource commits through the handle, which moves to the new version
    handle = lake.table("silver/t")
    assert lake.write("silver/t", _frame(2, 20), run_id="r2", mode="append") == 2
    assert lake.table("silver/t") is handle and handle.version() == 2
    assert lake.read("silver/t").height == 11
    assert lake.history("silver/t", 1)[0]["run_id"] == "r2"


def test_a_commit_by_another_process_is_seen(tmp_path):
    lake = LakeResource(root=str(tmp_path))
    lake.write("silver/t", _frame(3), run_id="r1")
    assert lake.read("silver/t").height == 3
    code = ("import polars as pl; from deltalake import write_deltalake; "
            f"write_deltalake({lake.uri('silver/t')!r}, pl.DataFrame({{'portfolio_id': ['P9'], 'x': [99]}}).to_arrow(), mode='append')")
    subprocess.run([sys.executable, "-c", code], check=True)
    assert sorted(lake.read("silver/t")["x"].to_list()) == [0, 1, 2, 99]
    assert lake.version("silver/t") == 1


def test_a_table_deleted_and_created_again_is_not_read_from_the_old_handle(tmp_path):
    lake = LakeResource(root=str(tmp_path))
    lake.write("silver/t", _frame(5), run_id="r1")
    lake.write("silver/t", _frame(5, 5), run_id="r2", mode="append")
    assert lake.version("silver/t") == 1 and lake.read("silver/t").height == 10
    # deleted and created again by another writer with as many commits, unseen in between:
    # version 2's commit file exists in neither table, so only the first commit's identity
    # tells them apart
    uri = lake.uri("silver/t")
    shutil.rmtree(uri)
    write_deltalake(uri, _frame(2, 100).to_arrow())
    write_deltalake(uri, _frame(1, 200).to_arrow(), mode="append")
    assert lake.version("silver/t") == 1
    assert sorted(lake.read("silver/t")["x"].to_list()) == [100, 101, 200]
    shutil.rmtree(uri)
    assert lake.table("silver/t") is None and lake.read("silver/t", {"x": pl.Int64}).height == 0


def test_handles_are_bounded(tmp_path, monkeypatch):
    monkeypatch.setattr(table_handles, "_handles", LruMap(3))
    lake = LakeResource(root=str(tmp_path))
    for n in range(5):
        lake.write(f"silver/t{n}", _frame(1), run_id="r")
        lake.table(f"silver/t{n}")
    kept = table_handles._handles.keys()
    assert kept == [lake.uri(f"silver/t{n}") for n in (2, 3, 4)]
    assert lake.read("silver/t0").height == 1  # a dropped handle is opened again


def test_a_derived_value_is_kept_while_its_tables_are_unchanged(tmp_path):
    lake = LakeResource(root=str(tmp_path))
    lake.write("bronze/a", _frame(3), run_id="r1")
    lake.write("bronze/b", _frame(2), run_id="r1")
    calls = []

    def total() -> int:
        calls.append(1)
        return int(lake.read("bronze/a")["x"].sum() + lake.read("bronze/b")["x"].sum())

    assert derived(lake, ["bronze/a", "bronze/b"], "total", total) == 3 + 1
    assert derived(lake, ["bronze/a", "bronze/b"], "total", total) == 4 and len(calls) == 1
    # another key is another value
    assert derived(lake, ["bronze/a"], ("total", "a only"), lambda: -1) == -1
    # a commit to either table, by anyone, is seen
    write_deltalake(lake.uri("bronze/b"), _frame(1, 10).to_arrow(), mode="append")
    assert derived(lake, ["bronze/a", "bronze/b"], "total", total) == 14 and len(calls) == 2
    # deleted and created again at the same version: a new table id
    shutil.rmtree(lake.uri("bronze/a"))
    write_deltalake(lake.uri("bronze/a"), _frame(1, 100).to_arrow())
    assert lake.version("bronze/a") == 0
    assert derived(lake, ["bronze/a", "bronze/b"], "total", total) == 100 + 11 and len(calls) == 3
    # a missing table is part of the stamp too
    shutil.rmtree(lake.uri("bronze/a"))
    assert derived(lake, ["bronze/a"], "missing", lambda: "none") == "none"
