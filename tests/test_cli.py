"""End to end: the `portfolio` command on a fresh data folder, as a user runs it."""

from __future__ import annotations

import shutil
import subprocess
import sys

import duckdb
import pytest

CLI = [sys.executable, "-m", "orchestration.cli"]


def run(*args: str, env=None) -> subprocess.CompletedProcess:
    return subprocess.run([*CLI, *args], capture_output=True, text=True, timeout=600, env=env)


@pytest.mark.slow
def test_generate_run_state_on_a_fresh_data_dir(tmp_path):
    data = tmp_path / "fresh"
    gen = run("generate", "--scale", "tiny", "--seed", "3", "--data-dir", str(data))
    assert gen.returncode == 0, gen.stderr
    assert (data / "landing" / "trades").is_dir()
    again = run("generate", "--scale", "tiny", "--data-dir", str(data))
    assert again.returncode == 1 and "--force" in again.stdout  # never overwrites landing silently

    result = run("run", "--data-dir", str(data))
    assert result.returncode == 0, result.stderr[-3000:]
    for line in ("Portfolios", "Positions", "Total NAV", "Quarantined rows", "Warehouse", "make ui"):
        assert line in result.stdout
    assert (data / "lake" / "silver" / "portfolio_state").is_dir()
    with duckdb.connect(str(data / "warehouse.duckdb"), read_only=True) as con:
        pid = con.execute("SELECT portfolio_id FROM portfolio_state ORDER BY total_value DESC LIMIT 1").fetchone()[0]
        first_day = con.execute("SELECT min(date) + 20 FROM daily_valuations").fetchone()[0]

    state = run("state", pid, "--data-dir", str(data))
    assert state.returncode == 0, state.stderr
    assert pid in state.stdout and "NAV" in state.stdout
    past = run("state", pid, "--as-of", f"{first_day}T23:00:00Z", "--data-dir", str(data))
    assert past.returncode == 0, past.stderr
    assert "as of" in past.stdout
    unknown = run("state", "NOPE", "--data-dir", str(data))
    assert unknown.returncode == 1

    sql = run("sql", "SELECT portfolio_id, total_value FROM portfolio_state ORDER BY total_value DESC", "--data-dir", str(data))
    assert sql.returncode == 0 and pid in sql.stdout
    bad = run("sql", "SELECT nope FROM nowhere", "--data-dir", str(data))
    assert bad.returncode == 1 and "Query failed" in bad.stdout
    write = run("sql", "DROP TABLE trades", "--data-dir", str(data))
    assert write.returncode == 1  # the warehouse is opened read-only


def test_run_without_landing_files_says_what_to_do(tmp_path):
    result = run("run", "--data-dir", str(tmp_path))
    assert result.returncode == 1
    assert "portfolio generate" in result.stdout


def test_data_dir_from_environment(tmp_path):
    import os

    env = {**os.environ, "PORTFOLIO_DATA_DIR": str(tmp_path / "env_dir")}
    result = run("generate", "--scale", "tiny", env=env)
    assert result.returncode == 0, result.stderr
    assert (tmp_path / "env_dir" / "landing" / "portfolios").is_dir()


def test_console_script_is_installed():
    assert shutil.which("portfolio"), "the `portfolio` console script is not on PATH"
