"""Shared fixtures: a tiny generated book written as landing files in a fresh data folder."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest
from hypothesis import settings

# CI runs the same examples every time (a landing never depends on luck); local runs explore
# new ones, and print the blob that reproduces any failure they find.
settings.register_profile("ci", derandomize=True, print_blob=True)
settings.register_profile("dev", print_blob=True)
settings.load_profile("ci" if os.environ.get("CI") else "dev")

from orchestration.cli import write_landing
from transforms.sample_book import generate_book


@pytest.fixture(scope="session")
def tiny_book():
    """The generated tiny book: kind -> [(file stem, frame)]."""
    return generate_book("tiny", 11)


@pytest.fixture(scope="session")
def tiny_landing(tmp_path_factory, tiny_book) -> Path:
    """A landing folder holding the tiny book (read-only by convention: copy it to change it)."""
    root = tmp_path_factory.mktemp("tiny_landing")
    write_landing(tiny_book, root, {"prices"})
    return root


@pytest.fixture
def data_dir(tmp_path, tiny_landing) -> Path:
    """A fresh data folder whose landing/ holds a copy of the tiny book."""
    shutil.copytree(tiny_landing, tmp_path / "landing")
    return tmp_path
