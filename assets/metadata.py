"""Metadata the assets attach to their materialisations: row counts and a preview table."""

from __future__ import annotations

import dagster as dg
import polars as pl


def markdown_preview(frame: pl.DataFrame, rows: int = 10) -> dg.MetadataValue:
    """The first ``rows`` rows of ``frame`` as a Markdown table for the Dagster UI."""
    head = frame.head(rows)
    if head.width == 0:
        return dg.MetadataValue.md("_(no columns)_")
    cells = [[_cell(v) for v in row] for row in head.iter_rows()]
    lines = ["| " + " | ".join(head.columns) + " |", "|" + "---|" * head.width]
    lines += ["| " + " | ".join(row) + " |" for row in cells]
    if frame.height > rows:
        lines.append(f"\n_{rows} of {frame.height:,} rows_")
    return dg.MetadataValue.md("\n".join(lines))


def _cell(value: object) -> str:
    if isinstance(value, float):
        return f"{value:,.4f}"
    text = str(value) if value is not None else ""
    return text.replace("|", "\\|")[:60]


def table_metadata(frame: pl.DataFrame, rows: int = 10) -> dict[str, object]:
    """Standard metadata for a written table: its row count and a preview."""
    return {"dagster/row_count": frame.height, "preview": markdown_preview(frame, rows)}
