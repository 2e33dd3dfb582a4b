"""Wash-sale matching for one round of the lot ledger (see ``transforms.lots``).

A round closes at most one trade per book, so within a round "the book" and "the sale" are the
same key. This module takes the round's allocation rows (one row per sold lot) and the book's
lots *after* the round's consumption, and returns the disallowed loss per sold lot plus the
replacement lots with their wash-sale adjustment, moved holding start and, where only part of a
lot is a replacement, the split-off pieces. Everything is a frame operation over all books of the
round at once: no Python loop per sale or per book.

The rule (TAXABLE portfolios, LONG lots only):

- Each (SELL, lot) allocation row whose taxable result ``proceeds - (cost_basis +
  wash_sale_adjustment)`` is a loss is a loss row. The loss is judged per lot sold, not netted
  over the whole SELL: a gain on one lot does not shelter a loss on another (the IRS applies the
  rule to the shares sold at a loss). With one lot per SELL this is the same as netting.
- Replacement shares: the still-held shares of LONG lots of the same portfolio and instrument
  opened within 30 calendar days before or after the sale date (inclusive), excluding every lot
  of an opening trade this SELL itself consumed, and excluding shares that already absorbed an
  earlier disallowed loss. Shares acquired earlier in the window but sold before this sale are
  gone and cannot be replacements (a simplification: the IRS would also look at them).
- Matching: sold loss shares (in the order the SELL consumed them) are paired one to one with
  replacement shares in order of acquisition (event order, then piece number), by overlap of
  the two cumulative-quantity sequences. Each replacement share absorbs at most one loss.
- A matched piece of ``m`` shares disallows ``loss_per_share * m``; that amount is added to the
  replacement piece's ``wash_sale_adjustment`` (so to its tax basis) and the piece's
  ``holding_start`` moves back by the days the sold lot was held (sale date - its holding start).
- A replacement lot fully covered by one piece is adjusted in place. Otherwise each piece
  becomes a new lot ``<lot_id>~W<n>`` (n counts the lot's pieces so far), and the parent keeps
  the unmatched remainder; if the pieces cover the whole lot the last piece stays in the parent.
  Original quantity and remaining cost basis are split pro-rata, so per-share figures stay exact.

Short sales are not subject to wash-sale processing here (a simplification: the short-sale
rules of IRC 1091(e) and 1233 are out of scope), and EXEMPT portfolios never have wash sales.
"""

from __future__ import annotations

import polars as pl

EPS = 1e-9
WASH_WINDOW_DAYS = 30


def loss_rows_expr() -> pl.Expr:
    """True for allocation rows that are a taxable loss of a wash-eligible (TAXABLE LONG) lot.

    Needs the allocation columns ``wash``, ``tax_res`` (proceeds - tax basis released),
    ``cost_rel`` and ``wadj_rel``. A small relative tolerance keeps float noise on a break-even
    sale from creating a 1e-14 "disallowed loss".
    """
    return pl.col("wash") & (
        pl.col("tax_res") < -EPS * (pl.col("cost_rel") + pl.col("wadj_rel"))
    )


def apply_wash_sales(
    alloc: pl.DataFrame, active: pl.DataFrame, next_lk: int
) -> tuple[pl.DataFrame, pl.DataFrame, int]:
    """Apply the wash-sale rule to one round.

    Inputs:
        alloc: the round's allocation rows (one per sold lot; columns ``bk``, ``lk``,
            ``oseq``, ``take``, ``tax_res``, ``cost_rel``, ``wadj_rel``, ``wash``,
            ``hstart``, ``c_date``, ``alloc_idx``).
        active: the lot state after this round's consumption (internal lot columns, ``lk``
            unique).
        next_lk: the first free internal lot key for split-off pieces.
    Returns:
        (new active lot state, frame ``lk, disallowed`` per sold lot with a disallowance,
        next free lot key).
    """
    empty_dis = pl.DataFrame(schema={"lk": pl.Int64, "disallowed": pl.Float64})
    loss = (
        alloc.filter(loss_rows_expr())
        .select(
            "bk",
            pl.col("lk").alias("lk_s"),
            pl.col("take").alias("take_s"),
            (-pl.col("tax_res")).alias("loss_s"),
            pl.col("hstart").alias("hstart_s"),
            "c_date",
            "alloc_idx",
        )
        .sort("bk", "alloc_idx")
        .with_columns(a1=pl.col("take_s").cum_sum().over("bk"))
        .with_columns(a0=pl.col("a1") - pl.col("take_s"))
    )
    if loss.height == 0:
        return active, empty_dis, next_lk

    sale_dates = loss.select("bk", "c_date").unique("bk")
    consumed = alloc.select("bk", "oseq").unique()
    repl = (
        active.join(sale_dates, on="bk", how="inner")
        .filter(
            pl.col("wash")
            & ~pl.col("used")
            & (pl.col("rem") > 0)
            & (
                pl.col("open_date")
                >= pl.col("c_date") - pl.duration(days=WASH_WINDOW_DAYS)
            )
            & (
                pl.col("open_date")
                <= pl.col("c_date") + pl.duration(days=WASH_WINDOW_DAYS)
            )
        )
        # shares from a lot this sale consumed are not replacements for it
        .join(consumed, on=["bk", "oseq"], how="anti")
        .sort("bk", "oseq", "split")
        .select(
            "bk",
            "lk",
            "rem",
            "hstart",
            c1=pl.col("rem").cum_sum().over("bk"),
        )
        .with_columns(c0=pl.col("c1") - pl.col("rem"))
    )
    if repl.height == 0:
        return active, empty_dis, next_lk

    # pair loss shares with replacement shares by overlap of the cumulative intervals
    pieces = (
        loss.join(repl, on="bk", how="inner")
        .with_columns(
            m=pl.min_horizontal("a1", "c1") - pl.max_horizontal("a0", "c0"),
        )
        .filter(pl.col("m") > EPS * pl.col("take_s"))
        .with_columns(
            dis=pl.col("loss_s") * pl.col("m") / pl.col("take_s"),
            # the replacement inherits the sold lot's holding period
            new_hstart=pl.col("hstart")
            - pl.duration(days=(pl.col("c_date") - pl.col("hstart_s")).dt.total_days()),
        )
        .sort("lk", "a0")
        .with_columns(
            piece_idx=pl.int_range(pl.len()).over("lk"),
            n_pieces=pl.len().over("lk"),
            full=pl.col("m").sum().over("lk") >= pl.col("rem") * (1 - EPS),
        )
        .with_columns(
            in_place=pl.col("full") & (pl.col("piece_idx") == pl.col("n_pieces") - 1)
        )
    )
    if pieces.height == 0:
        return active, empty_dis, next_lk

    disallowed = (
        pieces.group_by("lk_s")
        .agg(pl.col("dis").sum().alias("disallowed"))
        .rename({"lk_s": "lk"})
    )

    # split-off pieces become new lots that copy the parent's identity
    child_pieces = pieces.filter(~pl.col("in_place"))
    parent_cols = active.columns
    children = (
        child_pieces.select("lk", "piece_idx", "m", "dis", "new_hstart")
        .join(active, on="lk", how="inner")
        .with_columns(
            split=pl.col("nsplit") + pl.col("piece_idx") + 1,
            cost=pl.col("cost") * pl.col("m") / pl.col("rem"),
            orig=pl.col("m"),
            rem=pl.col("m"),
            wadj=pl.col("dis"),
            hstart=pl.col("new_hstart"),
            used=pl.lit(True),
            nsplit=pl.lit(0, pl.Int64),
        )
        .sort("lk", "piece_idx")
        .with_columns(lk=pl.int_range(next_lk, next_lk + pl.len(), dtype=pl.Int64))
        .select(parent_cols)
    )
    next_lk += children.height

    parent_upd = pieces.group_by("lk").agg(
        child_m=pl.col("m").filter(~pl.col("in_place")).sum(),
        n_child=(~pl.col("in_place")).sum().cast(pl.Int64),
        ip_dis=pl.col("dis").filter(pl.col("in_place")).first(),
        ip_hstart=pl.col("new_hstart").filter(pl.col("in_place")).first(),
        has_ip=pl.col("in_place").any(),
    )
    new_rem = pl.col("rem") - pl.col("child_m").fill_null(0.0)
    active = (
        active.join(parent_upd, on="lk", how="left")
        .with_columns(
            cost=pl.when(pl.col("child_m").is_not_null())
            .then(pl.col("cost") * new_rem / pl.col("rem"))
            .otherwise(pl.col("cost")),
            orig=pl.col("orig") - pl.col("child_m").fill_null(0.0),
            nsplit=pl.col("nsplit") + pl.col("n_child").fill_null(0),
            wadj=pl.when(pl.col("has_ip").fill_null(False))
            .then(pl.col("wadj") + pl.col("ip_dis"))
            .otherwise(pl.col("wadj")),
            hstart=pl.when(pl.col("has_ip").fill_null(False))
            .then(pl.col("ip_hstart"))
            .otherwise(pl.col("hstart")),
            used=pl.col("used") | pl.col("has_ip").fill_null(False),
        )
        .with_columns(rem=new_rem)
        .select(parent_cols)
    )
    active = pl.concat([active, children], how="vertical")
    return active, disallowed, next_lk
