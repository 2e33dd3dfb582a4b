"""The research notebooks run: each is executed cell by cell on a warehouse built from the tiny book."""

from __future__ import annotations

import re
import sys
from pathlib import Path

import dagster as dg
import nbformat
import pytest
from jupyter_client.manager import KernelManager
from nbclient import NotebookClient

from assets.resources import resources_for
from orchestration.checks import ASSET_CHECKS
from orchestration.definitions import ALL_ASSETS

NOTEBOOKS = Path(__file__).resolve().parents[1] / "notebooks"
EXECUTED = {"attribution_research.ipynb"}  # the notebooks a test below executes


@pytest.fixture
def warehouse(data_dir) -> Path:
    """The tiny book's warehouse, every asset materialised."""
    dg.materialize([*ALL_ASSETS, *ASSET_CHECKS], resources=resources_for(data_dir), instance=dg.DagsterInstance.ephemeral())
    return data_dir / "warehouse.duckdb"


def execute(path: Path, warehouse: Path, monkeypatch) -> nbformat.NotebookNode:
    """The notebook at ``path`` executed on ``warehouse`` (CellExecutionError on a failing cell)."""
    # the kernel inherits this process's environment: the warehouse, and matplotlib's inline backend
    monkeypatch.setenv("PORTFOLIO_WAREHOUSE", str(warehouse))
    monkeypatch.delenv("MPLBACKEND", raising=False)
    nb = nbformat.read(path, as_version=4)
    NotebookClient(nb, kernel_name="python3", timeout=300, resources={"metadata": {"path": str(path.parent)}}).execute()
    return nb


def test_the_kernel_is_this_interpreter():
    # jupyter_client swaps a kernel spec's bare "python" for sys.executable: the venv's, under uv run
    assert KernelManager(kernel_name="python3").format_kernel_cmd()[0] == sys.executable


def test_every_notebook_has_a_test():
    # notebooks/README.md promises that the suite executes every notebook there
    assert {path.name for path in NOTEBOOKS.glob("*.ipynb")} == EXECUTED


def test_notebooks_are_committed_without_outputs():
    for path in sorted(NOTEBOOKS.glob("*.ipynb")):
        nb = nbformat.read(path, as_version=4)
        nbformat.validate(nb)
        assert nb.metadata.kernelspec.name == "python3", path.name
        for cell in nb.cells:
            if cell.cell_type == "code":
                assert not cell.outputs and cell.execution_count is None, f"{path.name}: clear the outputs before saving"


def test_attribution_notebook_runs_on_the_tiny_book(warehouse, monkeypatch):
    nb = execute(NOTEBOOKS / "attribution_research.ipynb", warehouse, monkeypatch)
    outputs = [output for cell in nb.cells if cell.cell_type == "code" for output in cell.outputs]
    assert not [o for o in outputs if o.output_type == "error"]
    images = [o for o in outputs if "image/png" in o.get("data", {})]
    assert len(images) >= 3, "the three charts"
    # the summary cell asserts |residual| < 1e-9 itself, and prints the largest one
    text = "".join(o.get("text", "") for o in outputs if o.output_type == "stream")
    residual = re.search(r"largest residual (\S+)", text)
    assert residual and float(residual.group(1)) < 1e-9, text
