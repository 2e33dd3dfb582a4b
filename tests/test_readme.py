"""The README's promises: its two commands come first, and every SQL example runs."""

from __future__ import annotations

import re
from pathlib import Path

import dagster as dg
import duckdb

from assets.resources import resources_for
from orchestration.checks import ASSET_CHECKS
from orchestration.definitions import ALL_ASSETS

README = Path(__file__).resolve().parents[1] / "README.md"


def readme_sql() -> list[str]:
    blocks = re.findall(r"```sql\n(.*?)```", README.read_text(), flags=re.S)
    statements = []
    for block in blocks:
        text = "\n".join(line for line in block.splitlines() if not line.strip().startswith("--"))
        statements += [s.strip() for s in text.split(";") if s.strip()]
    return statements


def test_readme_opens_with_the_two_commands():
    head = README.read_text().split("\n## ")[0]
    assert head.index("make demo") < head.index("make test")


def test_every_readme_query_runs_on_the_warehouse(data_dir):
    dg.materialize([*ALL_ASSETS, *ASSET_CHECKS], resources=resources_for(data_dir), instance=dg.DagsterInstance.ephemeral())
    statements = readme_sql()
    assert len(statements) >= 8
    with duckdb.connect(str(data_dir / "warehouse.duckdb"), read_only=True) as con:
        pid = con.sql("SELECT portfolio_id FROM portfolio_state ORDER BY portfolio_id LIMIT 1").fetchall()[0][0]
        # Each statement must run (a renamed column or table raises here) and return rows,
        # except those about what a healthy 60-day book may not have: wash-sale lots, this
        # year's realised gains, days without a return, margin calls, bad rows (the tiny book has none).
        may_be_empty = ("wash_sale_adjustment > 0", "close_ts >= DATE", "return_note IS NOT NULL", "margin_call OR", "FROM quarantine")
        for statement in statements:
            rows = con.sql(statement.replace("'P001'", f"'{pid}'")).fetchall()
            assert rows or any(marker in statement for marker in may_be_empty), statement
