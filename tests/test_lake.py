"""The lake's write layout (``assets.resources.LakeResource.write``): per-portfolio tables are
clustered by portfolio in small files, so replacing a few portfolios rewrites a few files; and
maintenance commits that re-cluster them (OPTIMIZE) are not taken for builds."""

import numpy as np
import polars as pl
import pyarrow as pa
from deltalake import DeltaTable

from assets.ingest import in_predicate
from assets.resources import CLUSTER_FILE_BYTES, LakeResource, clustered
from assets.scope import last_build


def _files(lake: LakeResource, table: str) -> pl.DataFrame:
    adds = pl.from_arrow(pa.table(DeltaTable(lake.uri(table)).get_add_actions(flatten=True)))
    return adds.select("path", "size_bytes", lo=pl.col("min.portfolio_id"), hi=pl.col("max.portfolio_id")).sort("lo")


def _book(portfolios: int, rows_each: int, seed: int = 1) -> pl.DataFrame:
    """Random rows of ``portfolios`` portfolios, in random order: incompressible values, so the
    bytes per portfolio are known (about 16 bytes a row)."""
    rng = np.random.default_rng(seed)
    ids = np.repeat([f"P{i:03d}" for i in range(portfolios)], rows_each)
    frame = pl.DataFrame({"portfolio_id": ids, "x": rng.random(ids.size), "y": rng.random(ids.size)})
    return frame.sample(fraction=1.0, shuffle=True, seed=seed)


def test_a_table_with_portfolios_is_written_in_portfolio_order_in_small_files(tmp_path):
    lake = LakeResource(root=str(tmp_path))
    book = _book(portfolios=12, rows_each=120_000)  # about 23 MB of values: several files
    lake.write("silver/t", book, run_id="r1")
    files = _files(lake, "silver/t")
    assert files.height >= 4
    assert files["size_bytes"].max() <= 2 * CLUSTER_FILE_BYTES
    # in portfolio order: no file's range overlaps the next one's, except where one portfolio
    # spans both
    assert (files["hi"].head(-1) <= files["lo"].tail(-1)).all()
    assert lake.read("silver/t").sort("portfolio_id", "x").equals(book.sort("portfolio_id", "x"))

    # replacing one portfolio rewrites only the files that hold it
    holding = files.filter((pl.col("lo") <= "P005") & (pl.col("hi") >= "P005")).height
    new = book.filter(pl.col("portfolio_id") == "P005").with_columns(pl.col("x") * 0)
    lake.write("silver/t", new, run_id="r2", predicate=in_predicate("portfolio_id", ["P005"]))
    metrics = DeltaTable(lake.uri("silver/t")).history(1)[0]["operationMetrics"]
    assert metrics["num_removed_files"] == holding < files.height
    expected = pl.concat([book.filter(pl.col("portfolio_id") != "P005"), new])
    assert lake.read("silver/t").sort("portfolio_id", "x", "y").equals(expected.sort("portfolio_id", "x", "y"))


def test_clustered_is_a_stable_sort_and_leaves_other_frames_alone():
    frame = pl.DataFrame({"portfolio_id": ["B", "A", "B", "A"], "n": [1, 2, 3, 4]})
    assert clustered(frame).to_dict(as_series=False) == {"portfolio_id": ["A", "A", "B", "B"], "n": [2, 4, 1, 3]}
    other = pl.DataFrame({"n": [3, 1, 2]})
    assert clustered(other) is other


def test_last_build_passes_over_optimize_commits(tmp_path):
    lake = LakeResource(root=str(tmp_path))
    lake.write("silver/t", _book(3, 1000), run_id="r1", commit_metadata={"inputs": "bronze/x@1"})
    lake.write("silver/t", _book(3, 1000, seed=2).filter(pl.col("portfolio_id") == "P001"), run_id="r2",
               predicate=in_predicate("portfolio_id", ["P001"]), commit_metadata={"inputs": "bronze/x@2"})
    DeltaTable(lake.uri("silver/t")).optimize.z_order(["portfolio_id"])
    assert lake.history("silver/t", 1)[0]["operation"] == "OPTIMIZE"
    last = last_build(lake, "silver/t")
    assert last["run_id"] == "r2" and last["inputs"] == "bronze/x@2"
    assert last_build(lake, "silver/none") is None
